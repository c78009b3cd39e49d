//! [`Client`]: a handle on one server, by socket path or launched by this process.

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use forkserver_protocol::{Message, Status};
use nix::libc;

use crate::command::{Call, Command};
use crate::conn::Conn;
use crate::error::{Error, Result};
use crate::launch::{Launcher, Managed};

/// A handle on a forkserver.
///
/// Cheap to clone (an [`Arc`] inside) and `Send + Sync`: every method can be called from any
/// number of threads at once. Each request opens its own connection to the server; nothing is
/// shared between requests but the socket path.
///
/// A client made by [`Client::launch`] owns the server process: the server lives as long as
/// any clone of the client (or any [`crate::Child`] spawned through it) does, and is started
/// again by the next request if it has died.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

enum Inner {
    /// A server someone else runs, and the key to authenticate with, if any.
    Path(PathBuf, Option<Vec<u8>>),
    /// A server this client launched.
    Launched(Mutex<Managed>),
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.inner {
            Inner::Path(p, _) => f
                .debug_struct("Client")
                .field("path", p)
                .finish_non_exhaustive(),
            Inner::Launched(m) => f
                .debug_struct("Client")
                .field("launched", &*lock(m))
                .finish(),
        }
    }
}

fn lock(m: &Mutex<Managed>) -> MutexGuard<'_, Managed> {
    // The state stays consistent across a panic (each field is replaced whole).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Client {
    /// A client for the server listening at `path`.
    ///
    /// The server is checked eagerly: this connects once and completes a handshake, so a wrong
    /// path or a socket that does not speak the protocol fails here. Later requests each open a
    /// new connection; if the server has gone away by then they fail with [`Error::Connect`].
    ///
    /// # Errors
    /// [`Error::Connect`] if nothing listens at `path`; [`Error::ServerGone`],
    /// [`Error::Protocol`], [`Error::Server`] or [`Error::AuthRequired`] if the handshake fails.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client> {
        let client = Client {
            inner: Arc::new(Inner::Path(path.as_ref().to_owned(), None)),
        };
        client.ping()?;
        Ok(client)
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
        let client = Client {
            inner: Arc::new(Inner::Path(path.as_ref().to_owned(), Some(key.into()))),
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
            inner: Arc::new(Inner::Launched(Mutex::new(managed))),
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
        let (mut conn, ()) =
            self.request(|| Ok((Some((Message::StatusRequest, Vec::new())), ())))?;
        match conn.recv()?.message {
            Message::Status(s) => Ok(s),
            Message::Error(e) => Err(e.into()),
            other => Err(Error::unexpected(other.tag(), "Status")),
        }
    }

    /// The path of the server's socket. For a launched server, the current one's (a relaunch
    /// makes a new one).
    pub fn socket_path(&self) -> PathBuf {
        match &*self.inner {
            Inner::Path(p, _) => p.clone(),
            Inner::Launched(m) => lock(m).socket_path(),
        }
    }

    /// The pid of the server process this client launched (the current one); `None` for a
    /// client made by [`Client::connect`].
    pub fn launched_server_pid(&self) -> Option<u32> {
        match &*self.inner {
            Inner::Path(..) => None,
            Inner::Launched(m) => Some(lock(m).pid()),
        }
    }

    /// The key connections authenticate with: the one given to [`Client::connect_with_key`],
    /// or the one a launched server was given. Hand it to another process of yours that must
    /// reach the same server through a pipe or a file of mode 0600, never argv or the
    /// environment (PROTOCOL.md §9.1).
    pub fn auth_key(&self) -> Option<Vec<u8>> {
        match &*self.inner {
            Inner::Path(_, key) => key.clone(),
            Inner::Launched(m) => lock(m).current_key().1,
        }
    }

    /// For a launched client with `warm_connections`: opens a ready connection for the next
    /// request, if fewer than two are kept. Errors are ignored: the next request connects anew.
    pub(crate) fn warm_up(&self) {
        let Inner::Launched(m) = &*self.inner else {
            return;
        };
        let Some((path, key, generation)) = lock(m).spare_wanted() else {
            return;
        };
        if let Ok(conn) = attempt(&path, key.as_deref(), None) {
            lock(m).put_spare(generation, conn);
        }
    }

    /// One handshake on a fresh connection.
    pub(crate) fn ping(&self) -> Result<()> {
        self.request(|| Ok((None, ()))).map(drop)
    }

    /// One handshake with the server just launched, without relaunching it if it fails.
    pub(crate) fn ping_launched(&self) -> Result<()> {
        let (path, key) = match &*self.inner {
            Inner::Launched(m) => lock(m).current_key(),
            Inner::Path(p, key) => (p.clone(), key.clone()),
        };
        attempt(&path, key.as_deref(), None)
            .map(drop)
            .map_err(|f| f.into_error(path))
    }

    /// Connects and performs the handshake, with the request made by `build` pipelined behind
    /// `Hello`; the reply is left for the caller, with the extra value `build` returned.
    ///
    /// `build` runs before connecting, so that invalid requests never reach the socket. For a
    /// launched server it runs once more if the first attempt found the server dead: connect
    /// refused (`ECONNREFUSED`, `ENOENT`), or the connection closed before the request could
    /// be answered (a server exiting between our check and our connect). The server is then
    /// relaunched and the request made anew (its fds were consumed by the first attempt).
    pub(crate) fn request<T>(
        &self,
        mut build: impl FnMut() -> Result<(Option<(Message, Vec<OwnedFd>)>, T)>,
    ) -> Result<(Conn, T)> {
        let (request, mut extra) = build()?;
        match &*self.inner {
            Inner::Path(path, key) => attempt(path, key.as_deref(), request)
                .map(|conn| (conn, extra))
                .map_err(|f| f.into_error(path.clone())),
            Inner::Launched(m) => {
                let (path, key, generation, spare) = {
                    let mut managed = lock(m);
                    let (path, key, generation) =
                        managed.ensure_running().map_err(Error::Launch)?;
                    let spare = if request.is_some() {
                        managed.take_spare()
                    } else {
                        None
                    };
                    (path, key, generation, spare)
                };
                let mut request = request;
                if let Some(mut conn) = spare {
                    let Some((message, fds)) = request.take() else {
                        unreachable!("spares are taken only for requests")
                    };
                    // The handshake is done: one round trip. A spare whose server has gone
                    // refuses the send at once (EPIPE); then the request is made anew below.
                    match conn.send(&message, fds) {
                        Ok(()) => return Ok((conn, extra)),
                        Err(e) => tracing::debug!(error = %e, "spare connection unusable"),
                    }
                    // Built anew: the first request's fds (and piped stdio) went with it.
                    let (again, again_extra) = build()?;
                    request = again;
                    extra = again_extra;
                }
                match attempt(&path, key.as_deref(), request) {
                    Ok(conn) => return Ok((conn, extra)),
                    Err(Failure::Refused(e)) => {
                        tracing::warn!(error = %e, "forkserver not listening; relaunching");
                    }
                    Err(Failure::Gone(e)) => {
                        tracing::warn!(error = %e, "forkserver gone before replying; relaunching");
                    }
                    Err(Failure::Connect(source)) => return Err(Error::Connect { path, source }),
                    Err(Failure::Other(e)) => return Err(e),
                }
                let (path, key, _) = lock(m).relaunch(generation).map_err(Error::Launch)?;
                let (request, extra) = build()?;
                attempt(&path, key.as_deref(), request)
                    .map(|conn| (conn, extra))
                    .map_err(|f| f.into_error(path))
            }
        }
    }
}

/// How one connection attempt failed.
enum Failure {
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
            Failure::Gone(e) | Failure::Other(e) => e,
        }
    }
}

fn attempt(
    path: &Path,
    key: Option<&[u8]>,
    request: Option<(Message, Vec<OwnedFd>)>,
) -> std::result::Result<Conn, Failure> {
    let mut conn = Conn::connect(path).map_err(|e| {
        if matches!(e.raw_os_error(), Some(libc::ECONNREFUSED | libc::ENOENT)) {
            Failure::Refused(e)
        } else {
            Failure::Connect(e)
        }
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
