//! Starting the server as a child of this process, and restarting it when it has died
//! (CPython's `forkserver.ensure_running`).
//!
//! The launch convention, which the server implements as is:
//!
//! 1. The client makes a private directory (mode 0700) under `$XDG_RUNTIME_DIR` if usable, else
//!    under [`std::env::temp_dir`], named `forkserver-<pid>-<random>`, and binds a listening
//!    socket at `<dir>/sock` (mode 0600).
//! 2. It makes an "alive" pipe and starts the program with `FORKSERVER_LISTEN_FD` (the
//!    listener's fd number) and `FORKSERVER_ALIVE_FD` (the pipe's read end) in its environment,
//!    those two fds inherited and no other; stdin `/dev/null`, stdout and stderr inherited.
//!    Every other fd of the client is made close-on-exec first, so the server inherits no stray
//!    fd of the client's.
//!    With authentication on (the default), a third fd, `FORKSERVER_KEY_FD`, is the read end of
//!    a pipe holding a fresh random 32-byte key, written and closed before the server starts:
//!    the key never appears in argv or the environment (PROTOCOL.md §9.1).
//! 3. The client keeps the pipe's write end open while it lives. When the client process exits
//!    (or drops its last [`crate::Client`]), the server reads EOF and exits.
//! 4. The client removes the directory; the server never does.

use std::ffi::{OsStr, OsString};
use std::fs::DirBuilder;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};

use crate::client::Client;
use crate::error::{Error, Result};

pub use forkserver_protocol::launch::{ALIVE_FD_ENV, KEY_FD_ENV, LISTEN_FD_ENV};

/// How long dropping the last [`Client`] waits for launched servers to exit.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

/// A builder for [`Client::launch`] with arguments and environment for the server program.
///
/// ```no_run
/// use forkserver_client::Client;
///
/// let client = Client::launcher(std::env::current_exe()?)
///     .arg("--serve")
///     .env("RUST_LOG", "info")
///     .launch()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Launcher {
    spec: LaunchSpec,
}

/// What to start: kept so that a dead server can be started again the same way.
#[derive(Clone, Debug)]
pub(crate) struct LaunchSpec {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    authenticate: bool,
    warm: bool,
}

impl Launcher {
    /// A launcher for `program` (a path, or a name searched in `PATH`).
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            spec: LaunchSpec {
                program: program.as_ref().to_owned(),
                args: Vec::new(),
                envs: Vec::new(),
                authenticate: true,
                warm: false,
            },
        }
    }

    /// Adds an argument for the server program.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.spec.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments for the server program.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.spec
            .args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the server program (on top of this process's
    /// environment, which it inherits). Exec jobs inherit the server's environment.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.spec
            .envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Whether the server is given a fresh random key and every connection authenticates with
    /// it (PROTOCOL.md §9). Default `true`; turn it off only for a server program that cannot
    /// read `FORKSERVER_KEY_FD`.
    pub fn authenticate(mut self, on: bool) -> Self {
        self.spec.authenticate = on;
        self
    }

    /// Whether the client also opens a connection ahead of need (handshake and authentication
    /// done) while a [`crate::Child::wait`] waits and no idle connection is kept. Connections
    /// are reused anyway (see [`Client`]); this covers the first spawns and bursts from more
    /// threads than there are idle connections. Default `false`: a warm connection counts as
    /// a connection of the server's. Without effect once reuse is off
    /// ([`Client::set_max_idle_connections`]`(0)`).
    pub fn warm_connections(mut self, on: bool) -> Self {
        self.spec.warm = on;
        self
    }

    /// Starts the server and returns a client for it. The server is checked with one
    /// handshake, so a program that does not serve fails here rather than at the first spawn.
    ///
    /// # Errors
    /// [`Error::Launch`] if this process is itself a launched server that did not serve
    /// (`FORKSERVER_LISTEN_FD` set: a `main` without `serve_if_requested`), the socket
    /// directory cannot be made, the program cannot be
    /// started, or it does not answer a handshake on the socket (then the [`Error`] of the
    /// handshake is the `io::Error`'s inner error); [`Error::AuthRequired`] if it demands a key.
    pub fn launch(self) -> Result<Client> {
        // A program launched as a server that did not serve would launch another copy of
        // itself, which would do the same, without end.
        if std::env::var_os(LISTEN_FD_ENV).is_some() {
            return Err(Error::Launch(io::Error::other(format!(
                "this process was launched as a forkserver ({LISTEN_FD_ENV} is set) but did \
                 not serve: call `Zygote::new()...serve_if_requested()` first thing in `main`, \
                 before any `Client::launch`"
            ))));
        }
        let managed = Managed::new(self.spec).map_err(Error::Launch)?;
        let client = Client::from_managed(managed);
        match client.ping_launched() {
            Ok(()) => Ok(client),
            Err(Error::AuthRequired) => Err(Error::AuthRequired),
            Err(e) => Err(Error::Launch(io::Error::other(e))),
        }
    }
}

/// The server this client launched, and older ones not yet reaped.
#[derive(Debug)]
pub(crate) struct Managed {
    spec: LaunchSpec,
    current: Server,
    /// Bumped at each relaunch, so that threads that saw the same dead server relaunch once.
    generation: u64,
    retired: Vec<Server>,
    /// The process that launched the servers: a child forked from it (without exec) that
    /// drops its copy must not stop them or remove their sockets.
    owner: u32,
}

impl Managed {
    fn new(spec: LaunchSpec) -> io::Result<Self> {
        let current = Server::start(&spec)?;
        Ok(Self {
            spec,
            current,
            generation: 0,
            retired: Vec::new(),
            owner: std::process::id(),
        })
    }

    /// The socket path and key of a running server, and its generation. Relaunches first if
    /// the server process has exited.
    pub(crate) fn ensure_running(&mut self) -> io::Result<(PathBuf, Option<Vec<u8>>, u64)> {
        self.reap_retired();
        if self.current.has_exited() {
            tracing::warn!(pid = self.current.pid(), "forkserver exited; relaunching");
            return self.relaunch(self.generation);
        }
        Ok(self.current_with_generation())
    }

    fn current_with_generation(&self) -> (PathBuf, Option<Vec<u8>>, u64) {
        let (path, key) = self.current_key();
        (path, key, self.generation)
    }

    /// The current server's socket path and key (`None` when authentication is off).
    pub(crate) fn current_key(&self) -> (PathBuf, Option<Vec<u8>>) {
        (self.current.sock.clone(), self.current.key.clone())
    }

    /// Relaunches the server if `generation` is still the current one (another thread may have
    /// relaunched it already), and returns the socket path and generation to use.
    pub(crate) fn relaunch(
        &mut self,
        generation: u64,
    ) -> io::Result<(PathBuf, Option<Vec<u8>>, u64)> {
        if generation == self.generation {
            let new = Server::start(&self.spec)?;
            let mut old = std::mem::replace(&mut self.current, new);
            self.generation += 1;
            tracing::debug!(
                old = old.pid(),
                new = self.current.pid(),
                "forkserver relaunched"
            );
            old.close_alive();
            if old.has_exited() {
                old.remove_dir();
            } else {
                self.retired.push(old);
            }
        }
        Ok(self.current_with_generation())
    }

    /// With `warm_connections`: where to open a connection ahead of need (path, key,
    /// generation).
    pub(crate) fn warm_target(&self) -> Option<(PathBuf, Option<Vec<u8>>, u64)> {
        self.spec.warm.then(|| self.current_with_generation())
    }

    /// The current server's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.current.pid()
    }

    /// The current server's socket path.
    pub(crate) fn socket_path(&self) -> PathBuf {
        self.current.sock.clone()
    }

    fn reap_retired(&mut self) {
        self.retired.retain_mut(|s| {
            if s.has_exited() {
                s.remove_dir();
                false
            } else {
                true
            }
        });
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        if std::process::id() != self.owner {
            // A forked copy: its fds close with it; the servers are the launcher's.
            return;
        }
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        let servers = std::iter::once(&mut self.current).chain(self.retired.iter_mut());
        for s in servers {
            s.close_alive();
            s.wait_until(deadline);
            s.remove_dir();
        }
    }
}

/// One launched server process.
#[derive(Debug)]
struct Server {
    dir: PathBuf,
    sock: PathBuf,
    process: std::process::Child,
    /// The alive pipe's write end; the server exits when it is closed.
    alive: Option<OwnedFd>,
    /// The key this server was given.
    key: Option<Vec<u8>>,
}

impl Server {
    fn start(spec: &LaunchSpec) -> io::Result<Self> {
        let (dir, listener) = make_socket_dir()?;
        let sock = dir.join("sock");
        let key = match spec.authenticate {
            true => Some(forkserver_protocol::auth::random_challenge()?.to_vec()),
            false => None,
        };
        match spawn_server(spec, listener, key.as_deref()) {
            Ok((process, alive)) => {
                tracing::debug!(pid = process.id(), sock = %sock.display(), "forkserver launched");
                Ok(Self {
                    dir,
                    sock,
                    process,
                    alive: Some(alive),
                    key,
                })
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Whether the process has exited (and is now reaped). An error from `waitpid` (say,
    /// `SIGCHLD` ignored) counts as "still running": a dead server then shows as a refused
    /// connection.
    fn has_exited(&mut self) -> bool {
        matches!(self.process.try_wait(), Ok(Some(_)))
    }

    fn close_alive(&mut self) {
        self.alive = None;
    }

    fn wait_until(&mut self, deadline: Instant) {
        while !self.has_exited() {
            if Instant::now() >= deadline {
                tracing::warn!(pid = self.pid(), "forkserver still running after shutdown");
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn remove_dir(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove socket dir");
            }
        }
    }
}

/// Makes the private directory and binds the listener in it; tries `$XDG_RUNTIME_DIR`, then
/// the temp dir (a long base path can make the socket path exceed `sun_path`).
fn make_socket_dir() -> io::Result<(PathBuf, UnixListener)> {
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

/// Starts the server program with the listener and the alive pipe's read end; returns the
/// process and the pipe's write end. Our copies of the listener and read end are closed on
/// return.
fn spawn_server(
    spec: &LaunchSpec,
    listener: UnixListener,
    key: Option<&[u8]>,
) -> io::Result<(std::process::Child, OwnedFd)> {
    let listen_fd = above_stdio(OwnedFd::from(listener))?;
    let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let read_end = above_stdio(read_end)?;
    let mut inherited = vec![listen_fd, read_end];
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

    let mut cmd = std::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(spec.envs.iter().map(|(k, v)| (k, v)))
        .env(LISTEN_FD_ENV, inherited[0].as_raw_fd().to_string())
        .env(ALIVE_FD_ENV, inherited[1].as_raw_fd().to_string())
        .stdin(Stdio::null());
    match &key_env {
        Some(fd) => cmd.env(KEY_FD_ENV, fd),
        None => cmd.env_remove(KEY_FD_ENV),
    };
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed. It makes two kinds of system call, close_range(2) and fcntl(2) (nix's
    // wrapper neither allocates nor locks), on fd numbers only, and builds an io::Error from a
    // raw errno, which does not allocate either.
    unsafe {
        cmd.pre_exec(move || {
            // This process may hold fds that are not close-on-exec (std's Command passes them
            // all on): mark every fd from 3 up close-on-exec, so that the server gets exactly
            // the launch fds. Kernels before 5.11 lack the flag; then this is skipped.
            let _ = nix::libc::syscall(
                nix::libc::SYS_close_range,
                3u32,
                u32::MAX,
                nix::libc::CLOSE_RANGE_CLOEXEC,
            );
            for fd in &inherited {
                fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
            }
            Ok(())
        });
    }
    let process = cmd.spawn()?;
    // Dropping the command closes our copies of the listener and the read end (the closure
    // owns them), so the server holds the only ones.
    drop(cmd);
    Ok((process, write_end))
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

    /// Run in a child process by the test below, with `FORKSERVER_LISTEN_FD` set.
    #[test]
    fn launch_from_a_launched_server_role() {
        if std::env::var_os("FS_TEST_LAUNCH_ROLE").is_none() {
            return;
        }
        let err = Launcher::new("/bin/true").launch().unwrap_err();
        assert!(err.to_string().contains("serve_if_requested"), "{err}");
        println!("ROLE-OK");
    }

    #[test]
    fn a_launched_server_that_does_not_serve_is_told_and_launches_nothing() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "launch::tests::launch_from_a_launched_server_role",
            ])
            .args(["--nocapture", "--test-threads", "1"])
            .env("FS_TEST_LAUNCH_ROLE", "1")
            .env(LISTEN_FD_ENV, "3")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("ROLE-OK"), "{text}");
    }

    #[test]
    fn launch_of_a_missing_program_fails() {
        let err = Launcher::new("/nonexistent/forkserver-test-program")
            .launch()
            .unwrap_err();
        assert!(matches!(err, Error::Launch(ref e) if e.kind() == io::ErrorKind::NotFound));
    }
}
