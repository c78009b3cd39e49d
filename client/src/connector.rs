//! [`Connector`]: how to reach, and whom to trust at, a server someone else runs.

use std::path::{Path, PathBuf};

use crate::client::{own_uid, Client};
use crate::error::Result;

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

    /// Makes the client, checking the server with one handshake (kept for the first request).
    ///
    /// # Errors
    /// As [`Client::connect`] and [`Client::connect_with_key`].
    pub fn connect(self) -> Result<Client> {
        Client::for_path(self.path, self.key, self.server_uid)
    }
}
