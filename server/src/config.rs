//! Server configuration and the listening socket.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

pub use forkserver_protocol::socket_dir::default_socket_path;

/// Where the server listens.
#[derive(Debug)]
pub enum Listen {
    /// A socket file at this path, created with mode `0600`, in a directory that must be
    /// owned by the server's uid and closed to group and others (readable by others when
    /// `allowed_uids` is set), checked on an open descriptor of the directory
    /// ([`forkserver_protocol::socket_dir`]). The per-user fallback directory of
    /// [`default_socket_path`] is created (`0700`) if missing. A stale socket file (nobody
    /// answers) is replaced; a live one is an error. The file is removed when the server
    /// ends, or fails to start after binding.
    Path(PathBuf),
    /// A Linux abstract socket (no file, no permissions: any local user can connect, so the
    /// peer uid check is all that guards it). Only when asked for explicitly.
    Abstract(Vec<u8>),
    /// An already bound and listening socket, inherited from a launcher.
    Fd(OwnedFd),
}

/// Server settings. [`Config::default`] listens on [`default_socket_path`].
#[derive(Debug)]
pub struct Config {
    /// Where to listen.
    pub listen: Listen,
    /// The read end of the owner's "alive" pipe: EOF on it ends the server.
    pub alive_fd: Option<OwnedFd>,
    /// Exit after this long with no connection and no child.
    pub idle_timeout: Option<Duration>,
    /// Close connections that have not completed the handshake after this long (§6.3).
    pub handshake_timeout: Duration,
    /// Peer uids allowed besides the server's own.
    pub allowed_uids: Vec<u32>,
    /// Most connections served at once; more are answered `ResourceExhausted` and closed.
    pub max_connections: usize,
    /// The shared key of the authentication step (PROTOCOL.md §9): when set, no request is
    /// read from a client before it has proven it holds the key.
    pub key: Option<Vec<u8>>,
    /// Children get `PR_SET_PDEATHSIG(SIGKILL)`: they die with the server instead of running on
    /// (reparented) when it dies.
    pub kill_children_with_server: bool,
    /// Children kept forked and waiting for a job (Android's USAP pool): a request takes one,
    /// so the fork is off its critical path, and a replacement is forked after the reply.
    pub prefork: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: Listen::Path(default_socket_path()),
            alive_fd: None,
            idle_timeout: None,
            handshake_timeout: Duration::from_secs(10),
            allowed_uids: Vec::new(),
            max_connections: 1024,
            key: None,
            kill_children_with_server: false,
            prefork: 0,
        }
    }
}
