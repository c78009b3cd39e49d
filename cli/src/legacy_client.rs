//! The command line's own small client: `run` and `status` speak the protocol directly (the
//! server crate may not depend on the client crate).

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use forkserver_protocol::{
    send_message, ErrorCode, ExecJob, FdBundle, FrameReader, Hello, Job, Message, Signal, Spawn,
    SpawnOptions, Status, TransportError,
};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal as Sig};
use nix::sys::signalfd::{SfdFlags, SignalFd};

#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    #[error("cannot reach a server at {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("{0}")]
    Transport(#[from] TransportError),
    #[error("{0}")]
    Server(forkserver_protocol::ErrorReply),
    #[error("{0}")]
    Usage(String),
    #[error("unexpected reply: {0:?}")]
    Unexpected(forkserver_protocol::Tag),
}

impl CliError {
    /// Exit status as a shell would give it: 127 for a command that cannot be run.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            CliError::Server(e) if e.code() == ErrorCode::ExecFailed => {
                if e.errno() == nix::errno::Errno::ENOENT as i32 {
                    127
                } else {
                    126
                }
            }
            _ => 125,
        }
    }
}

fn connect(socket: &Path) -> Result<(UnixStream, FrameReader), CliError> {
    let s = UnixStream::connect(socket)
        .map_err(|e| CliError::Connect(socket.display().to_string(), e))?;
    send_message(s.as_fd(), &Message::Hello(Hello::current()), vec![])?;
    let mut reader = FrameReader::new();
    match reader.read_frame(s.as_fd())?.message {
        Message::HelloOk(_) => Ok((s, reader)),
        Message::Error(e) => Err(CliError::Server(e)),
        m => Err(CliError::Unexpected(m.tag())),
    }
}

/// Connects, starting a server on `socket` first if none answers and `auto_start` is set.
fn connect_or_start(
    socket: &Path,
    auto_start: bool,
) -> Result<(UnixStream, FrameReader), CliError> {
    match connect(socket) {
        Err(CliError::Connect(_, e))
            if auto_start
                && matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
        {
            start_server(socket)?;
            let until = Instant::now() + Duration::from_secs(5);
            loop {
                match connect(socket) {
                    Err(CliError::Connect(..)) if Instant::now() < until => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    r => return r,
                }
            }
        }
        r => r,
    }
}

/// Starts `forkserver serve` on `socket`, detached from our process group, exiting after 60 s
/// of idleness (as sccache's server does).
fn start_server(socket: &Path) -> Result<(), CliError> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|e| CliError::Usage(format!("current_exe: {e}")))?;
    std::process::Command::new(exe)
        .arg("serve")
        .arg("--socket")
        .arg(socket)
        .arg("--idle-timeout")
        .arg("60")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        // Detached: our stderr may be a pipe someone waits on to close.
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| CliError::Usage(format!("starting a server: {e}")))?;
    Ok(())
}

pub(crate) fn status(socket: &Path) -> Result<Status, CliError> {
    let (s, mut reader) = connect(socket)?;
    send_message(s.as_fd(), &Message::StatusRequest, vec![])?;
    match reader.read_frame(s.as_fd())?.message {
        Message::Status(st) => Ok(st),
        Message::Error(e) => Err(CliError::Server(e)),
        m => Err(CliError::Unexpected(m.tag())),
    }
}

/// Runs `command` through the server with our fds 0-2 (and `extra`), forwarding SIGINT,
/// SIGTERM, SIGHUP and SIGQUIT to it; returns the exit status a shell would give.
pub(crate) fn run(
    socket: &Path,
    auto_start: bool,
    extra: &[u32],
    deadline: Option<Duration>,
    command: &[OsString],
) -> Result<u8, CliError> {
    let usage = |e: forkserver_protocol::BuildError| CliError::Usage(e.to_string());
    let mut job = ExecJob::new(command[0].as_bytes()).map_err(usage)?;
    for a in &command[1..] {
        job.push_arg(a.as_bytes()).map_err(usage)?;
    }
    // The command gets our environment and working directory, not the server's.
    job.set_env_clear(true);
    for (k, v) in std::env::vars_os() {
        job.push_env(k.as_bytes(), v.as_bytes()).map_err(usage)?;
    }
    if let Ok(cwd) = std::env::current_dir() {
        job.set_cwd(Some(cwd.as_os_str().as_bytes().to_vec()))
            .map_err(usage)?;
    }
    let mut bundle = FdBundle::new();
    for fd in [0u32, 1, 2].iter().chain(extra) {
        // SAFETY-free: borrow our own fd for the duration of the dup; a closed one is an error.
        let dup = dup_own(*fd).map_err(|e| CliError::Usage(format!("--fd {fd}: {e}")))?;
        bundle.push(*fd, dup).map_err(usage)?;
    }
    let options = SpawnOptions {
        pid_after_exec: true,
        kill_on_disconnect: true,
        deadline_ms: deadline.and_then(|d| std::num::NonZeroU64::new(d.as_millis().max(1) as u64)),
        ..SpawnOptions::default()
    };
    let (map, fds) = bundle.into_parts();
    let spawn = Spawn::new(options, map, Job::Exec(job)).map_err(usage)?;

    // Forwarded signals are read from a signalfd while we wait.
    let mut mask = SigSet::empty();
    for s in [Sig::SIGINT, Sig::SIGTERM, Sig::SIGHUP, Sig::SIGQUIT] {
        mask.add(s);
    }
    mask.thread_block()
        .map_err(|e| CliError::Usage(format!("sigprocmask: {e}")))?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| CliError::Usage(format!("signalfd: {e}")))?;

    let (s, mut reader) = connect_or_start(socket, auto_start)?;
    send_message(s.as_fd(), &Message::Spawn(spawn), fds)?;
    loop {
        let mut pfds = [
            PollFd::new(s.as_fd(), PollFlags::POLLIN),
            PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut pfds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(CliError::Usage(format!("poll: {e}"))),
        }
        let sig_ready = pfds[1].revents().is_some_and(|r| !r.is_empty());
        let sock_ready = pfds[0].revents().is_some_and(|r| !r.is_empty());
        if sig_ready {
            while let Ok(Some(info)) = sigfd.read_signal() {
                if let Ok(sig) = Signal::new(info.ssi_signo) {
                    send_message(s.as_fd(), &Message::Signal(sig), vec![])?;
                }
            }
        }
        if sock_ready {
            reader.recv(s.as_fd()).or_else(|e| match e {
                TransportError::Io(nix::errno::Errno::EAGAIN) => Ok(0),
                e => Err(e),
            })?;
            while let Some(frame) = reader.next_frame()? {
                match frame.message {
                    Message::Pid(_) | Message::Signaled => {}
                    Message::Exit(e) => {
                        let code = e.code();
                        return Ok(if code >= 0 {
                            code as u8
                        } else {
                            (128 - code) as u8
                        });
                    }
                    Message::Error(e) if e.code() == ErrorCode::SignalFailed => {}
                    Message::Error(e) => return Err(CliError::Server(e)),
                    m => return Err(CliError::Unexpected(m.tag())),
                }
            }
        }
    }
}

fn dup_own(fd: u32) -> Result<OwnedFd, nix::errno::Errno> {
    // SAFETY: the fd is only borrowed for F_DUPFD_CLOEXEC, which fails with EBADF if it is not
    // open; the duplicate is a new fd we own.
    let b = unsafe { BorrowedFd::borrow_raw(fd as i32) };
    b.try_clone_to_owned()
        .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)))
}
