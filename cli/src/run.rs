//! `forkserver run` and `forkserver status`: clients of the client crate, verified and
//! authenticated like any other (PROTOCOL.md §9.3).

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use forkserver_client::{Client, Error, ExitStatus, Metrics, Status};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// How to reach the server: where, whom to trust, the key.
#[derive(Debug)]
pub(crate) struct Target {
    pub socket: PathBuf,
    /// Start a server on `socket` when none answers (the default socket only).
    pub auto_start: bool,
    pub key_file: Option<PathBuf>,
    pub key: Option<Vec<u8>>,
    pub server_uid: Option<u32>,
}

/// Why `run` or `status` failed, with the exit status a shell would give.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    #[error("{0}")]
    Client(#[from] Error),
    #[error("{0}")]
    Setup(String),
}

impl CliError {
    /// 127 for a command that was not found, 126 for one that could not be run, 125 for
    /// every other failure (as `env`, `nice` and `timeout` do).
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            CliError::Client(e) if e.is_exec_failure() => {
                if e.errno() == Some(nix::libc::ENOENT) {
                    127
                } else {
                    126
                }
            }
            _ => 125,
        }
    }
}

fn connect(target: &Target) -> Result<Client, Error> {
    let mut c = Client::connector(&target.socket);
    if let Some(key) = &target.key {
        c = c.key(key.clone());
    }
    if let Some(uid) = target.server_uid {
        c = c.server_uid(uid);
    }
    c.connect()
}

/// How long `run` waits for a server it started to answer before giving up.
const STARTUP_BOUND: Duration = Duration::from_secs(60);

/// Connects, starting a server on the socket first if none answers and `auto_start` is set.
fn connect_or_start(target: &Target) -> Result<Client, CliError> {
    match connect(target) {
        Err(Error::Connect { source, .. })
            if target.auto_start
                && matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
        {
            let mut server = start_server(target)?;
            // Only a bound on a hang: a server that fails says so at once (its exit is seen
            // below), and one on a loaded machine may take seconds to bind.
            let until = Instant::now() + STARTUP_BOUND;
            loop {
                match connect(target) {
                    Err(Error::Connect { .. }) if Instant::now() < until => {
                        if let Ok(Some(status)) = server.try_wait() {
                            return Err(CliError::Setup(format!(
                                "the server started on {} failed ({status}); run `forkserver \
                                 serve` to see why",
                                target.socket.display()
                            )));
                        }
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    r => return Ok(r?),
                }
            }
        }
        r => Ok(r?),
    }
}

/// Starts `forkserver serve` on the socket, detached from our process group, exiting after
/// 60 s of idleness (as sccache's server does), with our key file if we have one.
fn start_server(target: &Target) -> Result<std::process::Child, CliError> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|e| CliError::Setup(format!("current_exe: {e}")))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("serve")
        .arg("--socket")
        .arg(&target.socket)
        .arg("--idle-timeout")
        .arg("60");
    if let Some(key_file) = &target.key_file {
        cmd.arg("--key-file").arg(key_file);
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        // Detached: our stderr may be a pipe someone waits on to close.
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| CliError::Setup(format!("starting a server: {e}")))
}

/// The server's `Status`, and its `Metrics` (`None` from a server before rev 0.6).
pub(crate) fn status(target: &Target) -> Result<(Status, Option<Metrics>), CliError> {
    let client = connect(target)?;
    let status = client.status()?;
    let metrics = match client.metrics() {
        Ok(m) => Some(m),
        Err(Error::Unsupported { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    Ok((status, metrics))
}

/// What `forkserver run` was asked to do.
#[derive(Debug)]
pub(crate) struct RunArgs {
    /// The server to run it through.
    pub target: Target,
    /// Our fds the command also gets, at the same numbers (`--fd`), beside 0-2.
    pub fds: Vec<u32>,
    /// Killed (SIGKILL) after this long (`--deadline`).
    pub deadline: Option<Duration>,
    /// Print the child's resource usage to stderr when it ends (`--time`).
    pub time: bool,
    /// Limits and other per-child controls (`--rlimit`, ...).
    pub controls: crate::controls::Controls,
    /// The program and its arguments; not empty.
    pub command: Vec<OsString>,
}

/// Runs the command through the server with our environment, working directory, fds 0-2 and
/// `args.fds` (at the same numbers), forwarding SIGINT, SIGTERM, SIGHUP and SIGQUIT to it;
/// returns the exit status a shell would give (128+N for signal N).
pub(crate) fn run(args: &RunArgs) -> Result<u8, CliError> {
    let RunArgs {
        target,
        fds: extra,
        deadline,
        time,
        controls,
        command,
    } = args;
    // Forwarded signals are read from a signalfd while we wait; blocked before anything can
    // arrive, so none is lost or acted on here.
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        mask.add(s);
    }
    mask.thread_block()
        .map_err(|e| CliError::Setup(format!("sigprocmask: {e}")))?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| CliError::Setup(format!("signalfd: {e}")))?;

    let client = connect_or_start(target)?;
    let mut cmd = client.command(&command[0]);
    cmd.args(&command[1..])
        // The command gets our environment and working directory, not the server's.
        .env_clear()
        .envs(std::env::vars_os())
        .kill_on_disconnect(true);
    if let Ok(cwd) = std::env::current_dir() {
        cmd.current_dir(cwd);
    }
    for &fd in extra {
        // SAFETY: the fd is only borrowed for the `F_DUPFD_CLOEXEC` that `fd_borrowed` makes
        // at once; a closed one makes that fail with EBADF, which `spawn` reports.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd as i32) };
        cmd.fd_borrowed(fd, borrowed);
    }
    if let Some(d) = *deadline {
        cmd.deadline(d);
    }
    cmd.resource_usage(*time);
    controls.apply(&mut cmd).map_err(CliError::Setup)?;
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| match e {
        Error::Io(io) if io.raw_os_error() == Some(nix::libc::EBADF) => {
            CliError::Setup(format!("--fd: one of {extra:?} is not open here"))
        }
        e => CliError::Client(e),
    })?;
    loop {
        // Frames already read (an Exit that crossed a Signal) are seen by try_wait before we
        // poll the socket for more.
        if let Some(status) = child.try_wait()? {
            if *time {
                let line: Vec<_> = command.iter().map(|a| a.to_string_lossy()).collect();
                let elapsed = started.elapsed();
                eprint!(
                    "{}",
                    crate::report::time_v(&line.join(" "), &status, elapsed)
                );
            }
            return Ok(shell_status(status));
        }
        let sig_ready = {
            let Some(conn) = child.connection_fd() else {
                continue;
            };
            wait_readable(conn, sigfd.as_fd())?
        };
        if sig_ready {
            while let Ok(Some(info)) = sigfd.read_signal() {
                match child.signal(info.ssi_signo as i32) {
                    Ok(()) | Err(Error::AlreadyExited) => {}
                    // The child may be gone already (ESRCH): its Exit follows.
                    Err(e) if e.server_code().is_some() => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}

/// Polls the child's connection and the signalfd; returns whether a signal is waiting.
fn wait_readable(conn: BorrowedFd<'_>, sigfd: BorrowedFd<'_>) -> Result<bool, CliError> {
    let mut pfds = [
        PollFd::new(sigfd, PollFlags::POLLIN),
        PollFd::new(conn, PollFlags::POLLIN),
    ];
    match poll(&mut pfds, PollTimeout::NONE) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
        Err(e) => return Err(CliError::Setup(format!("poll: {e}"))),
    }
    Ok(pfds[0].revents().is_some_and(|r| !r.is_empty()))
}

/// The status a shell gives: the exit code, or 128+N for signal N.
fn shell_status(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => (128 + sig) as u8,
        (None, None) => 125,
    }
}
