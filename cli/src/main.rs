//! `forkserver`: run the server, or run a command through it.
//!
//! ```text
//! forkserver serve [--socket PATH | --abstract NAME] [--idle-timeout SECS] [--allow-uid UID]...
//!                  [--key-file PATH] [--kill-children-with-server] [--prefork N]
//!                  [--max-children N] [--shutdown-timeout SECS] [--log-format text|json]
//! forkserver run [--socket PATH] [--key-file PATH] [--server-uid UID] [--fd N]...
//!                [--deadline SECS] [--time] [--rlimit NAME=SOFT[:HARD]]...
//!                [--umask MODE] [--nice N] [--no-new-privs] [--oom-score-adj N]
//!                [--grace SECS] [--seccomp-filter FILE] [--landlock-allow-write DIR]...
//!                -- CMD [ARGS...]
//! forkserver status [--socket PATH] [--key-file PATH] [--server-uid UID]
//!                   [--format text|json|prometheus]
//! ```
//!
//! `serve` started by a service manager (systemd socket activation, `sd_listen_fds(3)`) serves
//! on the socket it is passed and notifies the manager (`sd_notify(3)`: `READY=1`, `STATUS=`,
//! `WATCHDOG=1`, `STOPPING=1`); see `contrib/systemd/` and PROTOCOL.md §9.4.
//!
//! `run` and `status` are clients of the `forkserver-client` crate: they verify the server
//! (socket directory, `SO_PEERCRED`, the key) before sending anything (PROTOCOL.md §9.3).
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(clippy::multiple_unsafe_ops_per_block)]

mod controls;
mod landlock;
mod report;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use forkserver_protocol::MAX_TARGET_FD;
use forkserver_server::{
    default_socket_path, Activation, Config, Listen, Server, ServerError, ServiceEnv,
    DEFAULT_MAX_CHILDREN, DEFAULT_SHUTDOWN_TIMEOUT, MAX_PREFORK,
};

/// The longest `--shutdown-timeout`: a year.
const MAX_SHUTDOWN_TIMEOUT_SECS: u64 = 365 * 24 * 3600;

/// The longest time any `SECS` option takes: ten years, far below what `Instant` and the
/// wire's millisecond deadlines can hold.
const MAX_SECS: u64 = 10 * 365 * 24 * 3600;

#[derive(Parser, Debug)]
#[command(
    name = "forkserver",
    version,
    about = "A fork server: spawn processes cheaply from a small, single-threaded server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the server is and whom to trust there (`run`, `status`).
#[derive(Args, Debug)]
struct ClientArgs {
    /// Socket path of the server [default: as for `serve`].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Authenticate with the key in this file (PROTOCOL.md §9), and require the server to
    /// prove it holds it too. The file must be ours and private.
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// The uid the server must run as [default: ours]. Its socket directory must belong to
    /// that uid and be writable by nobody else.
    #[arg(long, value_name = "UID")]
    server_uid: Option<u32>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server in the foreground until SIGTERM (or the idle timeout).
    Serve {
        /// Socket path [default: the socket passed by a service manager (LISTEN_FDS), else
        /// $XDG_RUNTIME_DIR/forkserver.sock, else a private 0700 directory under the temp
        /// dir]. Its directory must be ours and closed to group and others (readable by
        /// others with --allow-uid).
        #[arg(long, conflicts_with = "abstract_name")]
        socket: Option<PathBuf>,
        /// Listen on a Linux abstract socket instead of a file. Any local user can reach it;
        /// only the peer-uid check guards it.
        #[arg(long = "abstract", value_name = "NAME")]
        abstract_name: Option<String>,
        /// Exit after this many seconds with no connection and no child (at most ten years).
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=MAX_SECS))]
        idle_timeout: Option<u64>,
        /// Also accept clients running as this uid (repeatable). By default only the server's
        /// own uid is accepted.
        #[arg(long = "allow-uid", value_name = "UID")]
        allow_uid: Vec<u32>,
        /// Require the HMAC authentication step (PROTOCOL.md §9) with the key in this file
        /// (16 to 1024 raw bytes; the file must be owned by the server's uid and not
        /// accessible to group or others).
        #[arg(long, value_name = "PATH")]
        key_file: Option<PathBuf>,
        /// Children die (SIGKILL) when the server dies, instead of running on, reparented.
        #[arg(long)]
        kill_children_with_server: bool,
        /// Close a connection that has not completed its handshake, or has held part of a frame,
        /// for this many seconds (PROTOCOL.md §6.3).
        #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
        handshake_timeout: Duration,
        /// Keep N children forked and waiting for a job, so that a request does not wait for
        /// fork() (a replacement is forked after the reply). Worth it when spawn latency
        /// matters more than N idle processes.
        /// At most 64.
        #[arg(long, value_name = "N", default_value_t = 0,
              value_parser = clap::value_parser!(u16).range(0..=MAX_PREFORK as i64))]
        prefork: u16,
        /// Most children running at once; a spawn beyond it is refused (ResourceExhausted).
        /// Pooled children waiting for a job do not count.
        #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CHILDREN as u32,
              value_parser = clap::value_parser!(u32).range(1..))]
        max_children: u32,
        /// After SIGTERM, wait this long for the running children, then SIGKILL those left
        /// (their clients get Exit -9) and exit.
        #[arg(long, value_name = "SECS", default_value_t = DEFAULT_SHUTDOWN_TIMEOUT.as_secs(),
              value_parser = clap::value_parser!(u64).range(0..=MAX_SHUTDOWN_TIMEOUT_SECS))]
        shutdown_timeout: u64,
        /// `text` for people, `json` for a log collector: one JSON object per line, with the
        /// fields conn, peer_uid, serial, pid, stage, errno where an event has them (the names
        /// of the metrics and the spec). Filtered by RUST_LOG (default `warn`).
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Run a command through the server with this terminal's stdin, stdout and stderr, and exit
    /// with its status (128+N when killed by signal N). Starts a server on the default socket
    /// when none answers (it exits after 60 s idle).
    Run {
        #[command(flatten)]
        target: ClientArgs,
        /// Also pass this fd of ours to the command, at the same number (repeatable).
        #[arg(long = "fd", value_name = "N", value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_TARGET_FD)))]
        fds: Vec<u32>,
        /// Kill the command after this many seconds (a decimal number above 0, at most ten
        /// years).
        #[arg(long, value_name = "SECS", value_parser = parse_secs)]
        deadline: Option<Duration>,
        /// Print the command's CPU times, peak RSS and wall clock time to stderr when it ends,
        /// as `time -v` does (the server measures them with `wait4`; rev 0.6).
        #[arg(long)]
        time: bool,
        #[command(flatten)]
        controls: controls::Controls,
        /// The command and its arguments.
        #[arg(required = true, last = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// Print the server's status.
    Status {
        #[command(flatten)]
        target: ClientArgs,
        /// `text` for people, `json` (one object, the spec's field names), `prometheus` (the
        /// text exposition format, for a node_exporter textfile collector).
        #[arg(long, value_enum, default_value = "text")]
        format: report::Format,
    },
}

/// A positive, finite number of seconds of at most [`MAX_SECS`].
fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !secs.is_finite() || secs <= 0.0 || secs > MAX_SECS as f64 {
        return Err(format!("must be above 0 and at most {MAX_SECS} seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    // `forkserver` launched by a client library hands us our socket in the environment.
    forkserver_server::Zygote::new().serve_if_requested();
    let cli = Cli::parse();
    init_logging(match &cli.command {
        Command::Serve { log_format, .. } => *log_format,
        _ => LogFormat::Text,
    });
    match cli.command {
        Command::Serve {
            socket,
            abstract_name,
            idle_timeout,
            allow_uid,
            key_file,
            kill_children_with_server,
            prefork,
            max_children,
            shutdown_timeout,
            handshake_timeout,
            log_format: _,
        } => {
            // The service manager's variables (LISTEN_*, NOTIFY_SOCKET, WATCHDOG_*) leave the
            // environment before anything else is done, so that no child inherits them.
            // SAFETY: single-threaded (clap and the stderr subscriber start no thread), and
            // nothing so far has opened or taken an fd: a passed fd is owned by nothing else.
            let mut service = unsafe { ServiceEnv::take() };
            let key = match key_file.as_deref().map(load_key).transpose() {
                Ok(k) => k,
                Err(e) => return fail(&e, ExitCode::FAILURE),
            };
            let activated = match service.take_listener(!allow_uid.is_empty()) {
                Ok(fd) => fd,
                Err(e) => return fail(&ServerError::from(e), ExitCode::FAILURE),
            };
            if let Ok(Activation::OtherProcess(pid)) = service.activation() {
                tracing::info!("LISTEN_PID={pid} is not us: the passed fds are ignored");
            }
            let listen = match (activated, socket, abstract_name) {
                (Some(fd), None, None) => Listen::Fd(fd),
                (Some(_), _, _) => {
                    let e = "a socket is passed by the service manager (LISTEN_FDS): \
                             --socket and --abstract cannot be used with it";
                    return fail(&e, ExitCode::from(2));
                }
                (None, _, Some(name)) => Listen::Abstract(name.into_bytes()),
                (None, Some(p), None) => Listen::Path(p),
                (None, None, None) => Listen::Path(default_socket_path()),
            };
            let mut config = Config::default();
            config.listen = listen;
            config.idle_timeout = idle_timeout.map(Duration::from_secs);
            config.allowed_uids = allow_uid;
            config.key = key;
            config.kill_children_with_server = kill_children_with_server;
            config.prefork = prefork.into();
            config.max_children = max_children as usize;
            config.shutdown_timeout = Some(Duration::from_secs(shutdown_timeout));
            config.handshake_timeout = handshake_timeout;
            config.notify = service.notifier();
            match Server::bind(config).and_then(Server::run) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e, ExitCode::FAILURE),
            }
        }
        Command::Run {
            target,
            fds,
            deadline,
            time,
            controls,
            command,
        } => {
            let target = match resolve(target) {
                Ok(t) => t,
                Err(e) => return fail(&e, ExitCode::from(125)),
            };
            let args = run::RunArgs {
                target,
                fds,
                deadline,
                time,
                controls,
                command,
            };
            match run::run(&args) {
                Ok(code) => ExitCode::from(code),
                Err(e) => fail(&e, ExitCode::from(e.exit_code())),
            }
        }
        Command::Status { target, format } => {
            let status = resolve(target).and_then(|t| run::status(&t).map_err(|e| e.to_string()));
            match status {
                Ok((s, m)) => {
                    print!("{}", report::status(format, &s, m.as_ref()));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e, ExitCode::FAILURE),
            }
        }
    }
}

fn fail(e: &dyn std::fmt::Display, code: ExitCode) -> ExitCode {
    eprintln!("forkserver: {e}");
    code
}

/// The client's target from its flags: the default socket (started on demand by `run`) when
/// none is named, and the key read from its file.
fn resolve(args: ClientArgs) -> Result<run::Target, String> {
    let key = args.key_file.as_deref().map(load_key).transpose()?;
    Ok(run::Target {
        auto_start: args.socket.is_none(),
        socket: args.socket.unwrap_or_else(default_socket_path),
        key_file: args.key_file,
        key,
        server_uid: args.server_uid,
    })
}

/// Reads a key file, refusing one that is not ours or that others could read.
fn load_key(path: &std::path::Path) -> Result<Vec<u8>, String> {
    forkserver_server::read_key_file(path).map_err(|e| e.to_string())
}

/// How `serve` writes its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Installs a `tracing` subscriber writing to stderr in `format`, filtered by `RUST_LOG`
/// (default `warn`).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
