//! Starting one server process by the launch convention (PROTOCOL.md §9.4): its private
//! socket directory and listener, its fds and environment, and the wait until it says it is
//! ready.

use std::ffi::OsString;
use std::fs::DirBuilder;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use forkserver_protocol::launch::{
    ALIVE_FD_ENV, KEY_FD_ENV, KILL_CHILDREN_ENV, LISTEN_FD_ENV, MAX_REASON_LEN, READY, READY_FD_ENV,
};
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};

use crate::pinned::Pinned;

/// What to start: kept (by `Managed`) so that a dead server can be started again the
/// same way.
#[derive(Clone, Debug)]
pub(crate) struct LaunchSpec {
    pub(crate) program: OsString,
    pub(crate) args: Vec<OsString>,
    pub(crate) envs: Vec<(OsString, OsString)>,
    pub(crate) authenticate: bool,
    pub(crate) warm: bool,
    /// How long the server may take to say it is ready (its preloads run before).
    pub(crate) ready_timeout: Duration,
    /// Its children die with it (`PR_SET_PDEATHSIG`).
    pub(crate) kill_children: bool,
    /// The binary, held open at the first launch (`pinned.rs`): every launch execs it, and
    /// `program` is only its `argv[0]`. `None` before the first launch, for a script, and
    /// without `/proc`.
    pub(crate) pinned: Option<Arc<Pinned>>,
}

impl LaunchSpec {
    /// Pins the binary `program` names now (`pinned.rs`), unless it is pinned already: found
    /// in the server's `PATH` (ours, or the one given with `Launcher::env`) as `exec` would.
    ///
    /// # Errors
    /// As [`Pinned::open`].
    pub(crate) fn pin(&mut self) -> io::Result<()> {
        if self.pinned.is_none() {
            let path = self.envs.iter().rev().find(|(k, _)| k == "PATH");
            let path = path
                .map(|(_, v)| v.clone())
                .or_else(|| std::env::var_os("PATH"));
            self.pinned = Pinned::open(&self.program, path.as_deref())?.map(Arc::new);
        }
        Ok(())
    }
}

/// Makes the private directory and binds the listener in it; tries `$XDG_RUNTIME_DIR`, then
/// the temp dir (a long base path can make the socket path exceed `sun_path`).
pub(crate) fn make_socket_dir() -> io::Result<(PathBuf, UnixListener)> {
    let mut bases = Vec::new();
    if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        if xdg.is_absolute() && xdg.is_dir() {
            bases.push(xdg);
        }
    }
    bases.push(std::env::temp_dir());
    let mut last_err = io::Error::from(io::ErrorKind::NotFound);
    for base in &bases {
        match bind_in(base) {
            Ok(r) => return Ok(r),
            Err(e) => {
                tracing::debug!(base = %base.display(), error = %e, "cannot make socket dir");
                last_err = e;
            }
        }
    }
    Err(last_err)
}

fn bind_in(base: &Path) -> io::Result<(PathBuf, UnixListener)> {
    let dir = create_private_dir(base)?;
    let sock = dir.join("sock");
    match bind_private(&sock) {
        Ok(l) => Ok((dir, l)),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

/// A listener at `path` whose file is created with mode 0600: bind(2) gives the file the
/// socket's own mode (less the umask), set on the descriptor first. No chmod by path, and no
/// umask change, which would race other threads (PROTOCOL.md §9.3).
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType};
    let sock = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    nix::sys::stat::fchmod(&sock, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
    bind(sock.as_raw_fd(), &nix::sys::socket::UnixAddr::new(path)?)?;
    listen(&sock, Backlog::MAXCONN)?;
    Ok(UnixListener::from(sock))
}

fn create_private_dir(base: &Path) -> io::Result<PathBuf> {
    let pid = std::process::id();
    for _ in 0..16 {
        let dir = base.join(format!("forkserver-{pid}-{:016x}", random_u64()));
        match DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::from(io::ErrorKind::AlreadyExists))
}

/// A name component nobody can guess in advance (the directory is created exclusively, so
/// this only needs to avoid collisions and squatting, not to be a key).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // RandomState is seeded from the OS's random source once per process, then incremented.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}

/// An fd numbered 3 or above: std's `Command` puts the child's stdio on 0-2 before `pre_exec`
/// runs, which would clobber an fd there (possible when this process has 0-2 closed).
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // `try_clone` is F_DUPFD_CLOEXEC with a minimum of 3.
    let dup = fd.try_clone()?;
    if dup.as_raw_fd() > 2 {
        Ok(dup)
    } else {
        Err(io::Error::other(
            "cannot move a launch fd above the stdio fds",
        ))
    }
}

/// What the server has said on its ready pipe so far (PROTOCOL.md §9.4), and what it means:
/// the decisions of the wait for readiness, apart from how the pipe is read (blocking here,
/// on tokio's reactor in `async_launch.rs`).
#[derive(Debug, Default)]
pub(crate) struct ReadyPipe {
    said: Vec<u8>,
}

impl ReadyPipe {
    /// Takes bytes read from the pipe; `true` once the server has said [`READY`].
    pub(crate) fn on_bytes(&mut self, bytes: &[u8]) -> bool {
        if self.said.len() < MAX_REASON_LEN {
            self.said.extend_from_slice(bytes);
        }
        self.said == READY
    }

    /// Whether nothing has come yet.
    pub(crate) fn said_nothing(&self) -> bool {
        self.said.is_empty()
    }

    /// The error for the end of the pipe before [`READY`]; `status` is how the server ended,
    /// when known.
    pub(crate) fn on_eof(&self, status: Option<std::process::ExitStatus>) -> io::Error {
        if self.said.is_empty() {
            let status =
                status.map_or_else(|| "closed its ready pipe".to_owned(), |s| s.to_string());
            return io::Error::other(format!(
                "the server exited before it was ready ({status}); does its main call \
                 Zygote::serve_if_requested first?"
            ));
        }
        let reason = String::from_utf8_lossy(&self.said);
        io::Error::other(format!("the server refused to start: {reason}"))
    }

    /// The error for a server not ready within `timeout`.
    pub(crate) fn timed_out(timeout: Duration) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the server did not become ready within {timeout:?} (a slow preload? see \
                 Launcher::ready_timeout); it was killed"
            ),
        )
    }
}

/// Waits until the server says it serves (PROTOCOL.md §9.4: [`READY`] on the ready pipe), for
/// at most `timeout`.
///
/// # Errors
/// The reason the server wrote, an exit before it was ready, or `TimedOut`.
pub(crate) fn wait_ready(
    process: &mut std::process::Child,
    ready: OwnedFd,
    timeout: Duration,
) -> io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::io::Read;
    let deadline = Instant::now() + timeout;
    let mut state = ReadyPipe::default();
    let mut pipe = std::fs::File::from(ready);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadyPipe::timed_out(timeout));
        }
        let ms = PollTimeout::try_from(left.as_millis().clamp(1, 60_000) as i32)
            .unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(&pipe),
            PollFlags::POLLIN,
        )];
        match poll(&mut fds, ms) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let mut chunk = [0u8; 512];
        match pipe.read(&mut chunk) {
            Ok(0) => {
                // Nothing said: it is exiting, and its status says why. After a reason it is
                // killed by the caller.
                let status = match state.said_nothing() {
                    true => process.wait().ok(),
                    false => None,
                };
                return Err(state.on_eof(status));
            }
            Ok(n) if state.on_bytes(&chunk[..n]) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Starts the server program with the listener and the alive pipe's read end; returns the
/// process and the pipe's write end. Our copies of the listener and read end are closed on
/// return.
pub(crate) fn spawn_server(
    spec: &LaunchSpec,
    listener: UnixListener,
    key: Option<&[u8]>,
) -> io::Result<(std::process::Child, OwnedFd, OwnedFd)> {
    let listen_fd = above_stdio(OwnedFd::from(listener))?;
    let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let read_end = above_stdio(read_end)?;
    let (ready_read, ready_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let ready_write = above_stdio(ready_write)?;
    let mut inherited = vec![listen_fd, read_end, ready_write];
    let mut key_env = None;
    if let Some(key) = key {
        // The key goes through a pipe: written whole (it is far below the pipe's capacity) and
        // closed, so the server reads it to EOF.
        let (key_read, key_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let key_read = above_stdio(key_read)?;
        std::io::Write::write_all(&mut std::fs::File::from(key_write), key)?;
        key_env = Some(key_read.as_raw_fd().to_string());
        inherited.push(key_read);
    }

    let mut cmd = match &spec.pinned {
        Some(pinned) => {
            let mut cmd = std::process::Command::new(pinned.exec_path());
            cmd.arg0(&spec.program);
            cmd
        }
        None => std::process::Command::new(&spec.program),
    };
    cmd.args(&spec.args)
        .envs(spec.envs.iter().map(|(k, v)| (k, v)))
        .env(LISTEN_FD_ENV, inherited[0].as_raw_fd().to_string())
        .env(ALIVE_FD_ENV, inherited[1].as_raw_fd().to_string())
        .env(READY_FD_ENV, inherited[2].as_raw_fd().to_string())
        .stdin(Stdio::null());
    if spec.kill_children {
        cmd.env(KILL_CHILDREN_ENV, "1");
    }
    match &key_env {
        Some(fd) => cmd.env(KEY_FD_ENV, fd),
        None => cmd.env_remove(KEY_FD_ENV),
    };
    // Runs in the forked child before exec, where only async-signal-safe calls are allowed:
    // two kinds of system call, close_range(2) and fcntl(2) (nix's wrapper neither allocates
    // nor locks), on fd numbers only, and an io::Error built from a raw errno, which does not
    // allocate either.
    let hook = move || {
        // This process may hold fds that are not close-on-exec (std's Command passes them all
        // on): mark every fd from 3 up close-on-exec, so that the server gets exactly the
        // launch fds. Kernels before 5.11 lack the flag; then this is skipped.
        // SAFETY: close_range takes integers only and, with CLOSE_RANGE_CLOEXEC, closes
        // nothing: it only sets a flag on fd table entries.
        let _ = unsafe {
            nix::libc::syscall(
                nix::libc::SYS_close_range,
                3u32,
                u32::MAX,
                nix::libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        for fd in &inherited {
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
        }
        Ok(())
    };
    // SAFETY: `hook` makes only async-signal-safe calls (see above), as pre_exec requires.
    unsafe { cmd.pre_exec(hook) };
    let process = cmd.spawn()?;
    // Dropping the command closes our copies of the listener and the read end (the closure
    // owns them), so the server holds the only ones.
    drop(cmd);
    Ok((process, write_end, ready_read))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn socket_dir_is_private() {
        let (dir, _listener) = make_socket_dir().unwrap();
        let name = dir.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with(&format!("forkserver-{}-", std::process::id())));
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let sock = std::fs::metadata(dir.join("sock")).unwrap();
        assert_eq!(sock.mode() & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
