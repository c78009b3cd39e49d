//! Server configuration: where to listen ([`Listen`]) and the settings ([`Config`]). The
//! socket itself is bound elsewhere, when the server starts.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

pub use forkserver_protocol::socket_dir::default_socket_path;

use crate::error::{ConfigError, ServerError};
use crate::notify::Notifier;

/// The largest prefork pool (`Config::prefork`): each pooled child is an idle process.
pub const MAX_PREFORK: usize = 64;
/// The default of [`Config::max_children`].
pub const DEFAULT_MAX_CHILDREN: usize = 4096;
/// The default of [`Config::shutdown_timeout`].
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the server listens.
#[derive(Debug)]
pub enum Listen {
    /// A socket file at this path, created with mode `0600` (`0666` when `allowed_uids` is
    /// set: the peer-uid check decides), in a directory that must be
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
    /// An already bound and listening socket, inherited from a launcher (PROTOCOL.md §9.4) or
    /// passed by a service manager ([`crate::ServiceEnv::take_listener`]). It is never
    /// unlinked.
    Fd(OwnedFd),
}

/// Server settings. [`Config::default`] listens on [`default_socket_path`]; set the fields
/// you need on it (the struct is `#[non_exhaustive]`: settings may be added).
///
/// ```
/// let mut config = forkserver_server::Config::default();
/// config.prefork = 4;
/// config.idle_timeout = Some(std::time::Duration::from_secs(60));
/// assert!(config.validate().is_ok());
/// ```
#[non_exhaustive]
pub struct Config {
    /// Where to listen.
    pub listen: Listen,
    /// The read end of the owner's "alive" pipe: EOF on it ends the server.
    pub alive_fd: Option<OwnedFd>,
    /// Exit after this long with no connection and no child.
    pub idle_timeout: Option<Duration>,
    /// Close connections that have not completed the handshake after this long, and those
    /// that hold part of a frame for this long (§6.3).
    pub handshake_timeout: Duration,
    /// Peer uids allowed besides the server's own.
    pub allowed_uids: Vec<u32>,
    /// Most connections served at once; more are answered `ResourceExhausted` and closed.
    pub max_connections: usize,
    /// Most connections in the handshake at once (counted in `max_connections` too); when a
    /// new one comes, the oldest that has sent nothing (else the oldest) is closed (§6.3).
    pub max_handshakes: usize,
    /// The shared key of the authentication step (PROTOCOL.md §9): when set, no request is
    /// read from a client before it has proven it holds the key.
    pub key: Option<Vec<u8>>,
    /// Children get `PR_SET_PDEATHSIG(SIGKILL)`: they die with the server instead of running on
    /// (reparented) when it dies.
    pub kill_children_with_server: bool,
    /// Children kept forked and waiting for a job (Android's USAP pool): a request takes one,
    /// so the fork is off its critical path, and a replacement is forked after the reply.
    /// At most [`MAX_PREFORK`].
    pub prefork: usize,
    /// Most children running at once (at least 1). A `Spawn` beyond it is answered
    /// `ResourceExhausted`. Pooled children still waiting for a job do not count; children
    /// whose client is gone do, until they are reaped.
    pub max_children: usize,
    /// How long a `SIGTERM`ed server waits for its running children: at the timeout it sends
    /// `SIGKILL` to those left (their clients get `Exit` with code -9, as for any death by
    /// signal), reaps them and exits. `None`: wait for them however long they run.
    pub shutdown_timeout: Option<Duration>,
    /// The service manager to notify (`READY=1` once bound and the pool filled, `STATUS=`,
    /// `WATCHDOG=1`, `STOPPING=1`; [`crate::ServiceEnv::notifier`]).
    pub notify: Option<Notifier>,
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
            max_handshakes: 256,
            key: None,
            kill_children_with_server: false,
            prefork: 0,
            max_children: DEFAULT_MAX_CHILDREN,
            shutdown_timeout: Some(DEFAULT_SHUTDOWN_TIMEOUT),
            notify: None,
        }
    }
}

impl Config {
    /// Checks the limits: `prefork` at most [`MAX_PREFORK`], `max_children` at least 1.
    ///
    /// # Errors
    /// [`ServerError::InvalidConfig`] naming the setting that is out of range ([`ConfigError`]).
    pub fn validate(&self) -> Result<(), ServerError> {
        if self.prefork > MAX_PREFORK {
            return Err(ServerError::InvalidConfig(ConfigError::Prefork {
                count: self.prefork,
                max: MAX_PREFORK,
            }));
        }
        if self.max_children == 0 {
            return Err(ServerError::InvalidConfig(ConfigError::NoChildren));
        }
        Ok(())
    }
}

impl std::fmt::Debug for Config {
    /// Every setting but the key, which is shown only as present or absent.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("alive_fd", &self.alive_fd)
            .field("idle_timeout", &self.idle_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("allowed_uids", &self.allowed_uids)
            .field("max_connections", &self.max_connections)
            .field("max_handshakes", &self.max_handshakes)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("kill_children_with_server", &self.kill_children_with_server)
            .field("prefork", &self.prefork)
            .field("max_children", &self.max_children)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("notify", &self.notify)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_validated() {
        assert!(Config::default().validate().is_ok());
        let max = Config {
            prefork: MAX_PREFORK,
            max_children: 1,
            ..Config::default()
        };
        assert!(max.validate().is_ok());
        for bad in [
            Config {
                prefork: MAX_PREFORK + 1,
                ..Config::default()
            },
            Config {
                max_children: 0,
                ..Config::default()
            },
        ] {
            let e = bad.validate().unwrap_err();
            assert!(matches!(e, ServerError::InvalidConfig(_)), "{e}");
        }
    }
}
