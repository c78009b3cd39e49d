//! [`Client::connect`] and [`Connector`]: how to reach, and whom to trust at, a server someone
//! else runs.

use std::path::{Path, PathBuf};

use crate::client::Client;
use crate::engine::Engine;
use crate::error::Result;
use crate::handshake::own_uid;

impl Client {
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
    /// [`crate::Error::Connect`] if nothing listens at `path`; [`crate::Error::Untrusted`] if
    /// the socket fails the checks; [`crate::Error::ServerGone`], [`crate::Error::Protocol`],
    /// [`crate::Error::Server`] or [`crate::Error::AuthRequired`] if the handshake fails.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client> {
        Connector::new(path).connect()
    }

    /// A client for the server listening at `path` that requires the authentication step
    /// (PROTOCOL.md §9) with `key`: every connection proves to the server that it holds the
    /// key, and checks that the server holds it too before sending anything else.
    ///
    /// # Errors
    /// As [`Client::connect`], plus [`crate::Error::ServerNotAuthenticated`] when the server
    /// offers no authentication or answers our challenge wrongly, and [`crate::Error::Server`]
    /// with `AuthFailed` when it refuses our key.
    pub fn connect_with_key(path: impl AsRef<Path>, key: impl Into<Vec<u8>>) -> Result<Client> {
        Connector::new(path).key(key).connect()
    }

    /// A [`Connector`] for the server at `path`: to set the key and the server's uid.
    pub fn connector(path: impl AsRef<Path>) -> Connector {
        Connector::new(path)
    }
}

/// Options for a [`Client`] of a server at a socket path: the authentication key and the uid
/// the server must run as. Made by [`Client::connector`].
///
/// ```no_run
/// use forkserver_client::Client;
///
/// let key = std::fs::read("/run/forkserver/key")?;
/// let client = Client::connector("/run/forkserver/forkserver.sock")
///     .key(key)
///     .server_uid(0) // a server run by root, for a client that is not
///     .connect()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Connector {
    path: PathBuf,
    key: Option<Vec<u8>>,
    server_uid: u32,
}

impl Connector {
    pub(crate) fn new(path: impl AsRef<Path>) -> Self {
        Self {
            path: path.as_ref().to_owned(),
            key: None,
            server_uid: own_uid(),
        }
    }

    /// Authenticate with `key` (PROTOCOL.md §9): each connection proves it holds the key, and
    /// requires the server to prove it too before anything else is sent.
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The uid the server must run as (default: this process's effective uid). The socket's
    /// directory must then be owned by that uid and not writable by anyone else (it may be
    /// readable and searchable by others, who need to reach the socket), and the listening
    /// process must run as that uid.
    pub fn server_uid(mut self, uid: u32) -> Self {
        self.server_uid = uid;
        self
    }

    /// Makes the client, checking the server with one handshake, with the server's `Features`
    /// asked behind it (PROTOCOL.md §5.14; the connection is kept for the first request).
    ///
    /// # Errors
    /// As [`Client::connect`] and [`Client::connect_with_key`].
    pub fn connect(self) -> Result<Client> {
        let engine = Engine::for_path(self.path, self.key, self.server_uid);
        engine.features()?;
        Ok(Client::from_engine(engine))
    }
}
