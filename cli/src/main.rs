//! `forkserver`: run the server, or run a command through it.
//!
//! ```text
//! forkserver serve [--socket PATH | --abstract NAME] [--idle-timeout SECS] [--allow-uid UID]...
//! forkserver run [--socket PATH] [--fd N]... -- CMD [ARGS...]
//! forkserver status [--socket PATH]
//! ```

mod legacy_client;
use legacy_client as cli;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use forkserver_server::{default_socket_path, Config, Listen, Server};

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

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server in the foreground until SIGTERM (or the idle timeout).
    Serve {
        /// Socket path [default: $XDG_RUNTIME_DIR/forkserver.sock, else a private 0700
        /// directory under the temp dir].
        #[arg(long, conflicts_with = "abstract_name")]
        socket: Option<PathBuf>,
        /// Listen on a Linux abstract socket instead of a file. Any local user can reach it;
        /// only the peer-uid check guards it.
        #[arg(long = "abstract", value_name = "NAME")]
        abstract_name: Option<String>,
        /// Exit after this many seconds with no connection and no child.
        #[arg(long, value_name = "SECS")]
        idle_timeout: Option<u64>,
        /// Also accept clients running as this uid (repeatable). By default only the server's
        /// own uid is accepted.
        #[arg(long = "allow-uid", value_name = "UID")]
        allow_uid: Vec<u32>,
        /// Require the HMAC authentication step (PROTOCOL.md §9) with the key in this file
        /// (16 to 1024 raw bytes; the file must not be readable by group or others).
        #[arg(long, value_name = "PATH")]
        key_file: Option<PathBuf>,
        /// Children die (SIGKILL) when the server dies, instead of running on, reparented.
        #[arg(long)]
        kill_children_with_server: bool,
        /// Close a connection that has not completed its handshake, or has held part of a frame,
        /// for this many seconds (PROTOCOL.md §6.3).
        #[arg(long, value_name = "SECS", default_value_t = 10.0)]
        handshake_timeout: f64,
        /// Keep N children forked and waiting for a job, so that a request does not wait for
        /// fork() (a replacement is forked after the reply). Worth it when spawn latency
        /// matters more than N idle processes.
        #[arg(long, value_name = "N", default_value_t = 0)]
        prefork: usize,
    },
    /// Run a command through the server with this terminal's stdin, stdout and stderr, and exit
    /// with its status (128+N when killed by signal N). Starts a server on the default socket
    /// when none answers (it exits after 60 s idle).
    Run {
        /// Socket path of the server [default: as for `serve`].
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Also pass this fd of ours to the command, at the same number (repeatable).
        #[arg(long = "fd", value_name = "N")]
        fds: Vec<u32>,
        /// Kill the command after this many seconds.
        #[arg(long, value_name = "SECS")]
        deadline: Option<f64>,
        /// The command and its arguments.
        #[arg(required = true, last = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// Print the server's status.
    Status {
        /// Socket path of the server [default: as for `serve`].
        #[arg(long)]
        socket: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    // `forkserver` launched by a client library hands us our socket in the environment.
    forkserver_server::Zygote::new().serve_if_requested();
    init_logging();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            socket,
            abstract_name,
            idle_timeout,
            allow_uid,
            key_file,
            kill_children_with_server,
            prefork,
            handshake_timeout,
        } => {
            let key = match key_file.as_deref().map(load_key).transpose() {
                Ok(k) => k,
                Err(e) => {
                    eprintln!("forkserver: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let listen = match (socket, abstract_name) {
                (_, Some(name)) => Listen::Abstract(name.into_bytes()),
                (Some(p), None) => Listen::Path(p),
                (None, None) => Listen::Path(default_socket_path()),
            };
            let config = Config {
                listen,
                idle_timeout: idle_timeout.map(Duration::from_secs),
                allowed_uids: allow_uid,
                key,
                kill_children_with_server,
                prefork,
                handshake_timeout: Duration::from_secs_f64(handshake_timeout.clamp(0.001, 1e9)),
                ..Config::default()
            };
            match Server::bind(config).and_then(Server::run) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("forkserver: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run {
            socket,
            fds,
            deadline,
            command,
        } => {
            let auto_start = socket.is_none();
            let socket = socket.unwrap_or_else(default_socket_path);
            let deadline = deadline.map(Duration::from_secs_f64);
            match cli::run(&socket, auto_start, &fds, deadline, &command) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("forkserver: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Command::Status { socket } => {
            let socket = socket.unwrap_or_else(default_socket_path);
            match cli::status(&socket) {
                Ok(s) => {
                    println!("server:          {}", s.server_version());
                    println!("protocol:        {}", s.protocol_version());
                    println!("pid:             {}", s.server_pid());
                    println!("live children:   {}", s.live_children());
                    println!("connections:     {}", s.connections());
                    println!("spawned (total): {}", s.spawned_total());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("forkserver: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Reads a key file, refusing one that others could read.
fn load_key(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::PermissionsExt;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "{}: the key file must not be accessible to group or others (mode {:o})",
            path.display(),
            mode & 0o777
        ));
    }
    forkserver_server::read_key(file).map_err(|e| e.to_string())
}

/// Installs a `tracing` subscriber writing to stderr, filtered by `RUST_LOG` (default `warn`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
