//! [`Client`]: a handle on one server, by socket path or launched by this process.

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use forkserver_protocol::{Message, Status};
use nix::libc;

use crate::command::{Call, Command};
use crate::conn::{Conn, ConnectError};
use crate::connector::Connector;
use crate::error::{Error, Result};
use crate::launch::{Launcher, Managed};

/// A handle on a forkserver.
///
/// Cheap to clone (an [`Arc`] inside) and `Send + Sync`: every method can be called from any
/// number of threads at once.
///
/// **Connections are reused.** A request takes an idle connection to the server if the client
/// keeps one, or opens (and authenticates) a new one. A child's connection goes back to the
/// client once its exit status has been read (`KEEP_CONNECTION`, PROTOCOL.md §6.6), so a
/// steady stream of spawns pays the connection setup once, not per spawn. At most
/// [`Client::set_max_idle_connections`] (default
/// [`DEFAULT_MAX_IDLE_CONNECTIONS`](Client::DEFAULT_MAX_IDLE_CONNECTIONS)) are kept; each is one
/// fd here and one in the server. A kept connection that the server has closed meanwhile is
/// noticed before it is used, and a new one is opened.
///
/// A client made by [`Client::launch`] owns the server process: the server lives as long as
/// any clone of the client (or any [`crate::Child`] spawned through it) does, and is started
/// again by the next request if it has died.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Shared>,
}

struct Shared {
    target: Inner,
    /// Idle connections, handshake done; each knows the generation of the server it reaches.
    idle: Mutex<Pool>,
    max_idle: AtomicUsize,
}

/// The idle connections, and the process they belong to: after a `fork()` the child must not
/// share its parent's connections (their frames would interleave), so it drops its copies.
struct Pool {
    owner: u32,
    conns: Vec<Conn>,
}

impl Pool {
    /// The connections, emptied first if this is not the process that made them.
    fn conns(&mut self) -> &mut Vec<Conn> {
        let me = std::process::id();
        if self.owner != me {
            self.owner = me;
            self.conns.clear();
        }
        &mut self.conns
    }
}

impl Shared {
    fn new(target: Inner) -> Arc<Self> {
        Arc::new(Shared {
            target,
            idle: Mutex::new(Pool {
                owner: std::process::id(),
                conns: Vec::new(),
            }),
            max_idle: AtomicUsize::new(Client::DEFAULT_MAX_IDLE_CONNECTIONS),
        })
    }
}

enum Inner {
    /// A server someone else runs, the key to authenticate with, if any, and the uid the
    /// server must run as.
    Path(PathBuf, Option<Vec<u8>>, u32),
    /// A server this client launched.
    Launched(Mutex<Managed>),
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let idle = self.idle_connections();
        match &self.inner.target {
            Inner::Path(p, ..) => f
                .debug_struct("Client")
                .field("path", p)
                .field("idle_connections", &idle)
                .finish_non_exhaustive(),
            Inner::Launched(m) => f
                .debug_struct("Client")
                .field("launched", &*lock(m))
                .field("idle_connections", &idle)
                .finish(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state stays consistent across a panic (each field is replaced whole).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Client {
    /// How many idle connections a client keeps for reuse unless told otherwise.
    pub const DEFAULT_MAX_IDLE_CONNECTIONS: usize = 8;

    /// A client for the server listening at `path`, which must run as this process's
    /// effective uid (see [`Connector`] for another uid, a key, or both).
    ///
    /// Before anything is sent on a connection, the server is verified (PROTOCOL.md §9.3):
    /// the socket's directory must be owned by the server's uid and closed to group and
    /// others, and the process listening must run as that uid (`SO_PEERCRED`). The server is
    /// checked eagerly: this connects once and completes a handshake, so a wrong path or a
    /// socket that does not speak the protocol fails here. The connection is then kept for
    /// the first request.
    ///
    /// # Errors
    /// [`Error::Connect`] if nothing listens at `path`; [`Error::Untrusted`] if the socket
    /// fails the checks; [`Error::ServerGone`], [`Error::Protocol`], [`Error::Server`] or
    /// [`Error::AuthRequired`] if the handshake fails.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client> {
        Connector::new(path).connect()
    }

    /// A client for the server listening at `path` that requires the authentication step
    /// (PROTOCOL.md §9) with `key`: every connection proves to the server that it holds the key,
    /// and checks that the server holds it too before sending anything else.
    ///
    /// # Errors
    /// As [`Client::connect`], plus [`Error::ServerNotAuthenticated`] when the server offers
    /// no authentication or answers our challenge wrongly, and [`Error::Server`] with
    /// `AuthFailed` when it refuses our key.
    pub fn connect_with_key(path: impl AsRef<Path>, key: impl Into<Vec<u8>>) -> Result<Client> {
        Connector::new(path).key(key).connect()
    }

    /// A [`Connector`] for the server at `path`: to set the key and the server's uid.
    pub fn connector(path: impl AsRef<Path>) -> Connector {
        Connector::new(path)
    }

    /// A client for a server at a path, with its handshake checked.
    pub(crate) fn for_path(path: PathBuf, key: Option<Vec<u8>>, server_uid: u32) -> Result<Client> {
        let client = Client {
            inner: Shared::new(Inner::Path(path, key, server_uid)),
        };
        client.ping()?;
        Ok(client)
    }

    /// Starts `program` as the server (typically [`std::env::current_exe`], whose `main`
    /// serves when `FORKSERVER_LISTEN_FD` is set) and returns a client for it.
    ///
    /// Every later request first checks that the server is still running, and starts it again
    /// if it has died (once per request). Dropping the last clone of the client closes the
    /// server's alive pipe, waits up to one second for it to exit, and removes its socket
    /// directory. See [`Launcher`] for the launch convention and for arguments.
    ///
    /// # Errors
    /// As [`Launcher::launch`].
    pub fn launch(program: impl AsRef<OsStr>) -> Result<Client> {
        Launcher::new(program).launch()
    }

    /// A [`Launcher`] for `program`, to pass arguments or environment before launching.
    pub fn launcher(program: impl AsRef<OsStr>) -> Launcher {
        Launcher::new(program)
    }

    pub(crate) fn from_managed(managed: Managed) -> Client {
        Client {
            inner: Shared::new(Inner::Launched(Mutex::new(managed))),
        }
    }

    /// A builder for an exec job: the server forks a child that runs `program` (searched in
    /// the child's `PATH` if it holds no `/`), like [`std::process::Command`].
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        Command::new(self.clone(), program.as_ref())
    }

    /// A builder for an entry-point job: the server forks a child that runs the entry point
    /// registered under `name`, handing it `payload`.
    pub fn call(&self, name: impl Into<String>, payload: impl Into<Vec<u8>>) -> Call {
        Call::new(self.clone(), name.into(), payload.into())
    }

    /// The server's status: its pid, live children, connections, total spawns, version.
    ///
    /// # Errors
    /// [`Error::Connect`], [`Error::Launch`] (relaunch failed), [`Error::ServerGone`],
    /// [`Error::Server`], [`Error::Protocol`], [`Error::AuthRequired`], [`Error::Io`].
    pub fn status(&self) -> Result<Status> {
        let mut may_reuse = true;
        loop {
            let request = || Ok((Some((Message::StatusRequest, Vec::new())), ()));
            let (mut conn, ()) = self.request(may_reuse, request)?;
            match conn.recv()?.message {
                Message::Status(s) => {
                    // READY before, READY after: the connection can serve the next request.
                    self.put_idle(conn);
                    return Ok(s);
                }
                // A kept connection the server closed on its own as the request went out
                // (PROTOCOL.md §6.6): asked again on a new connection, once.
                Message::Error(e) if may_reuse && conn.closed_without_acting(&e) => {
                    may_reuse = false;
                }
                Message::Error(e) => return Err(e.into()),
                other => return Err(Error::unexpected(other.tag(), "Status")),
            }
        }
    }

    /// The path of the server's socket. For a launched server, the current one's (a relaunch
    /// makes a new one).
    pub fn socket_path(&self) -> PathBuf {
        match &self.inner.target {
            Inner::Path(p, ..) => p.clone(),
            Inner::Launched(m) => lock(m).socket_path(),
        }
    }

    /// The pid of the server process this client launched (the current one); `None` for a
    /// client made by [`Client::connect`].
    pub fn launched_server_pid(&self) -> Option<u32> {
        match &self.inner.target {
            Inner::Path(..) => None,
            Inner::Launched(m) => Some(lock(m).pid()),
        }
    }

    /// The key connections authenticate with: the one given to [`Client::connect_with_key`],
    /// or the one a launched server was given. Hand it to another process of yours that must
    /// reach the same server through a pipe or a file of mode 0600, never argv or the
    /// environment (PROTOCOL.md §9.1).
    pub fn auth_key(&self) -> Option<Vec<u8>> {
        match &self.inner.target {
            Inner::Path(_, key, _) => key.clone(),
            Inner::Launched(m) => lock(m).current_key().1,
        }
    }

    /// Sets how many idle connections the client keeps for reuse (see [`Client`]); 0 turns
    /// reuse off: every request then opens, authenticates and closes its own connection.
    /// Applies to all clones of this client; connections kept beyond the new limit are closed.
    pub fn set_max_idle_connections(&self, max: usize) {
        self.inner.max_idle.store(max, Ordering::Relaxed);
        let surplus: Vec<Conn> = {
            let mut pool = lock(&self.inner.idle);
            let idle = pool.conns();
            let keep = idle.len().min(max);
            idle.drain(keep..).collect()
        };
        drop(surplus);
    }

    /// The number of idle connections kept for reuse right now.
    pub fn idle_connections(&self) -> usize {
        lock(&self.inner.idle).conns().len()
    }

    /// Closes the idle connections kept for reuse, e.g. so that a server with an idle timeout
    /// sees no client, or before counting this process's fds. Later requests open new ones.
    pub fn close_idle_connections(&self) {
        let idle = std::mem::take(lock(&self.inner.idle).conns());
        drop(idle);
    }

    /// Whether spawns ask the server to keep their connection for reuse.
    pub(crate) fn reuses_connections(&self) -> bool {
        self.inner.max_idle.load(Ordering::Relaxed) > 0
    }

    /// Takes back a connection that is READY (handshake done, no request outstanding), if
    /// fewer than the maximum are kept; closes it otherwise.
    pub(crate) fn put_idle(&self, conn: Conn) {
        let max = self.inner.max_idle.load(Ordering::Relaxed);
        let mut pool = lock(&self.inner.idle);
        let idle = pool.conns();
        if idle.len() < max {
            idle.push(conn);
        }
    }

    /// An idle connection to the server of `generation` that is still open and has nothing
    /// pending, if one is kept. Stale ones (an older server, closed by the server) are closed;
    /// those to a newer server (another thread relaunched it meanwhile) are left alone.
    fn take_idle(&self, generation: u64) -> Option<Conn> {
        let mut stale = Vec::new();
        let found = {
            let mut pool = lock(&self.inner.idle);
            let idle = pool.conns();
            let mut found = None;
            let mut i = idle.len();
            while i > 0 {
                i -= 1;
                if idle[i].generation > generation {
                    continue;
                }
                let mut conn = idle.swap_remove(i);
                if conn.generation == generation && conn.is_idle_and_open() {
                    conn.reused = true;
                    found = Some(conn);
                    break;
                }
                stale.push(conn);
            }
            found
        };
        drop(stale);
        found
    }

    /// For a launched client with `warm_connections`: opens a ready connection for the next
    /// request if none is kept. Errors are ignored: the next request connects anew.
    pub(crate) fn warm_up(&self) {
        let Inner::Launched(m) = &self.inner.target else {
            return;
        };
        if !self.reuses_connections() || self.idle_connections() > 0 {
            return;
        }
        let Some((path, key, generation)) = lock(m).warm_target() else {
            return;
        };
        if let Ok(mut conn) = attempt(&path, own_uid(), key.as_deref(), None) {
            conn.generation = generation;
            self.put_idle(conn);
        }
    }

    /// One handshake on a fresh connection, which is then kept for reuse.
    pub(crate) fn ping(&self) -> Result<()> {
        let (conn, ()) = self.request(false, || Ok((None, ())))?;
        self.put_idle(conn);
        Ok(())
    }

    /// One handshake with the server just launched, without relaunching it if it fails.
    pub(crate) fn ping_launched(&self) -> Result<()> {
        let (path, key, uid) = match &self.inner.target {
            Inner::Launched(m) => {
                let (path, key) = lock(m).current_key();
                (path, key, own_uid())
            }
            Inner::Path(p, key, uid) => (p.clone(), key.clone(), *uid),
        };
        attempt(&path, uid, key.as_deref(), None)
            .map(drop)
            .map_err(|f| f.into_error(path))
    }

    /// Sends the request made by `build` on a kept connection (if `may_reuse`), or on a new one
    /// behind `Hello` (and the authentication); the reply is left for the caller, with the
    /// extra value `build` returned.
    ///
    /// `build` runs before any connection is used, so that invalid requests never reach the
    /// socket. It runs again (the first request's fds went with it) each time a request was
    /// not delivered: a kept connection that refused the send (its server gone), and, for a
    /// launched server, a first attempt that found the server dead: connect refused
    /// (`ECONNREFUSED`, `ENOENT`), or the connection closed before the request could be
    /// answered (a server exiting between our check and our connect); the server is then
    /// relaunched. So at most three times.
    pub(crate) fn request<T>(
        &self,
        may_reuse: bool,
        mut build: impl FnMut() -> Result<(Option<(Message, Vec<OwnedFd>)>, T)>,
    ) -> Result<(Conn, T)> {
        let (mut request, mut extra) = build()?;
        // For a launched server: relaunched first if it has died.
        let launched = match &self.inner.target {
            Inner::Path(..) => None,
            Inner::Launched(m) => Some(lock(m).ensure_running().map_err(Error::Launch)?),
        };
        let generation = launched.as_ref().map_or(0, |(.., g)| *g);
        if request.is_some() && may_reuse {
            if let Some(mut conn) = self.take_idle(generation) {
                let Some((message, fds)) = request.take() else {
                    unreachable!("checked above")
                };
                // The handshake is done: one round trip. A connection whose server has gone
                // refuses the send at once (EPIPE): nothing was delivered, and the request is
                // made anew below, on a new connection.
                match conn.send(&message, fds) {
                    Ok(()) => return Ok((conn, extra)),
                    Err(e) => tracing::debug!(error = %e, "kept connection unusable"),
                }
                self.close_idle_connections();
                // Built anew: the first request's fds (and piped stdio) went with it.
                let (again, again_extra) = build()?;
                request = again;
                extra = again_extra;
            }
        }
        let fresh = |path: &Path, uid, key: Option<&[u8]>, request, generation| {
            attempt(path, uid, key, request).map(|mut conn| {
                conn.generation = generation;
                conn
            })
        };
        match &self.inner.target {
            Inner::Path(path, key, uid) => fresh(path, *uid, key.as_deref(), request, generation)
                .map(|conn| (conn, extra))
                .map_err(|f| f.into_error(path.clone())),
            Inner::Launched(m) => {
                let Some((path, key, generation)) = launched else {
                    unreachable!("set above for a launched server")
                };
                match fresh(&path, own_uid(), key.as_deref(), request, generation) {
                    Ok(conn) => return Ok((conn, extra)),
                    Err(Failure::Refused(e)) => {
                        tracing::warn!(error = %e, "forkserver not listening; relaunching");
                    }
                    Err(Failure::Gone(e)) => {
                        tracing::warn!(error = %e, "forkserver gone before replying; relaunching");
                    }
                    Err(Failure::Connect(source)) => return Err(Error::Connect { path, source }),
                    Err(f @ Failure::Untrusted(_)) => return Err(f.into_error(path)),
                    Err(Failure::Other(e)) => return Err(e),
                }
                let (path, key, generation) =
                    lock(m).relaunch(generation).map_err(Error::Launch)?;
                let (request, extra) = build()?;
                fresh(&path, own_uid(), key.as_deref(), request, generation)
                    .map(|conn| (conn, extra))
                    .map_err(|f| f.into_error(path))
            }
        }
    }
}

/// This process's effective uid: the uid a launched server runs as, and the default for one
/// at a path.
pub(crate) fn own_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// How one connection attempt failed.
enum Failure {
    /// The socket failed the checks made before anything is sent.
    Untrusted(String),
    /// Nobody listens at the path (`ECONNREFUSED`, `ENOENT`).
    Refused(io::Error),
    /// `connect` failed otherwise.
    Connect(io::Error),
    /// The server closed before answering the handshake or taking the request; the request
    /// was not acted on.
    Gone(Error),
    /// Anything else.
    Other(Error),
}

impl Failure {
    /// The error the caller sees when no retry is left.
    fn into_error(self, path: PathBuf) -> Error {
        match self {
            Failure::Refused(source) | Failure::Connect(source) => Error::Connect { path, source },
            Failure::Untrusted(reason) => Error::Untrusted { path, reason },
            Failure::Gone(e) | Failure::Other(e) => e,
        }
    }
}

fn attempt(
    path: &Path,
    server_uid: u32,
    key: Option<&[u8]>,
    request: Option<(Message, Vec<OwnedFd>)>,
) -> std::result::Result<Conn, Failure> {
    let mut conn = Conn::connect(path, server_uid).map_err(|e| match e {
        ConnectError::Io(e)
            if matches!(e.raw_os_error(), Some(libc::ECONNREFUSED | libc::ENOENT)) =>
        {
            Failure::Refused(e)
        }
        ConnectError::Io(e) => Failure::Connect(e),
        ConnectError::Untrusted(e) => Failure::Untrusted(e.to_string()),
        ConnectError::PeerUid { uid, expected } => Failure::Untrusted(format!(
            "the process listening on it runs as uid {uid}, not uid {expected} (name the \
             server's uid explicitly to trust it)"
        )),
    })?;
    // Within the handshake, "closed" means our request was not read, or not answered at
    // all: the server sends `HelloOk` before it acts on a request, and queued replies are
    // read before the end of the stream.
    let (message, fds) = match request {
        Some((m, fds)) => (Some(m), fds),
        None => (None, Vec::new()),
    };
    conn.handshake(key, message.as_ref(), fds)
        .map_err(|e| match e {
            Error::ServerGone => Failure::Gone(e),
            e => Failure::Other(e),
        })?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + Clone>() {}

    #[test]
    fn client_is_send_sync_clone() {
        assert_send_sync::<Client>();
    }

    #[test]
    fn connect_to_nothing_is_a_connect_error() {
        let err = Client::connect("/nonexistent/forkserver.sock").unwrap_err();
        match err {
            Error::Connect { path, source } => {
                assert_eq!(path, Path::new("/nonexistent/forkserver.sock"));
                assert_eq!(source.raw_os_error(), Some(libc::ENOENT));
            }
            other => panic!("{other:?}"),
        }
    }
}
