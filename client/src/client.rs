//! [`Client`]: a handle on one server, by socket path ([`Client::connect`], see
//! `connector.rs`) or launched by this process ([`Client::launch`], see `launch.rs`). The
//! connections themselves are the engine's (`engine.rs`).

use std::ffi::OsStr;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use forkserver_protocol::{Metrics, Status};

use crate::command::{Call, Command};
use crate::engine::{Engine, DEFAULT_MAX_IDLE};
use crate::error::Result;

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
    engine: Arc<Engine>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.engine.fmt(f)
    }
}

impl Client {
    /// How many idle connections a client keeps for reuse unless told otherwise.
    pub const DEFAULT_MAX_IDLE_CONNECTIONS: usize = DEFAULT_MAX_IDLE;

    pub(crate) fn from_engine(engine: Engine) -> Client {
        Client {
            engine: Arc::new(engine),
        }
    }

    /// The engine every clone shares.
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A builder for an exec job: the server forks a child that runs `program` (searched in
    /// the child's `PATH` if it holds no `/`), like [`std::process::Command`].
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        Command::new(self.engine.clone(), program.as_ref())
    }

    /// A builder for an entry-point job: the server forks a child that runs the entry point
    /// registered under `name`, handing it `payload`.
    pub fn call(&self, name: impl Into<String>, payload: impl Into<Vec<u8>>) -> Call {
        Call::new(self.engine.clone(), name.into(), payload.into())
    }

    /// A builder for a typed call of the entry registered as `name` with `Zygote::typed`:
    /// `A` is the argument's type, `R` the value's (PROTOCOL.md §11).
    #[cfg(feature = "typed")]
    pub fn typed<A, R>(&self, name: impl Into<String>) -> crate::TypedCall<A, R>
    where
        A: serde::Serialize + ?Sized,
        R: serde::de::DeserializeOwned,
    {
        crate::TypedCall::new(self.engine.clone(), name.into())
    }

    /// A builder for a long-lived worker of the entry registered as `name` with
    /// `Zygote::worker`: `Req` is the requests' type, `Resp` the responses' (PROTOCOL.md
    /// §11.7). For many workers shared by threads, see [`crate::WorkerPool`].
    #[cfg(feature = "typed")]
    pub fn worker<Req, Resp>(&self, name: impl Into<String>) -> crate::WorkerBuilder<Req, Resp>
    where
        Req: serde::Serialize + ?Sized,
        Resp: serde::de::DeserializeOwned,
    {
        crate::WorkerBuilder::new(self.engine.clone(), name.into())
    }

    /// The server's status: its pid, live children, connections, total spawns, version.
    ///
    /// # Errors
    /// [`crate::Error::Connect`], [`crate::Error::Launch`] (relaunch failed),
    /// [`crate::Error::ServerGone`], [`crate::Error::Server`], [`crate::Error::Protocol`],
    /// [`crate::Error::AuthRequired`], [`crate::Error::Io`].
    pub fn status(&self) -> Result<Status> {
        self.engine.status()
    }

    /// The server's counters (PROTOCOL.md §5.16): spawns by kind and result, kills, refusals,
    /// authentication failures, the pool, orphans reaped, uptime.
    ///
    /// # Errors
    /// As [`Client::status`], and [`crate::Error::Unsupported`] for a server before rev 0.6,
    /// which has no `MetricsRequest` (nothing is sent).
    pub fn metrics(&self) -> Result<Metrics> {
        self.engine.metrics()
    }

    /// The path of the server's socket. For a launched server, the current one's (a relaunch
    /// makes a new one).
    pub fn socket_path(&self) -> PathBuf {
        self.engine.socket_path()
    }

    /// The pid of the server process this client launched (the current one); `None` for a
    /// client made by [`Client::connect`].
    pub fn launched_server_pid(&self) -> Option<u32> {
        self.engine.launched_server_pid()
    }

    /// The key connections authenticate with: the one given to [`Client::connect_with_key`],
    /// or the one a launched server was given. Hand it to another process of yours that must
    /// reach the same server through a pipe or a file of mode 0600, never argv or the
    /// environment (PROTOCOL.md §9.1).
    pub fn auth_key(&self) -> Option<Vec<u8>> {
        self.engine.auth_key()
    }

    /// Sets how many idle connections the client keeps for reuse (see [`Client`]); 0 turns
    /// reuse off: every request then opens, authenticates and closes its own connection.
    /// Applies to all clones of this client; connections kept beyond the new limit are closed.
    pub fn set_max_idle_connections(&self, max: usize) {
        self.engine.set_max_idle_connections(max)
    }

    /// The number of idle connections kept for reuse right now.
    pub fn idle_connections(&self) -> usize {
        self.engine.idle_connections()
    }

    /// Closes the idle connections kept for reuse, e.g. so that a server with an idle timeout
    /// sees no client, or before counting this process's fds. Later requests open new ones.
    pub fn close_idle_connections(&self) {
        self.engine.close_idle_connections()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use nix::libc;
    use std::path::Path;

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
