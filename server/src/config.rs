//! Server configuration and the listening socket.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{
    bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};

use crate::ServerError;

/// Where the server listens.
#[derive(Debug)]
pub enum Listen {
    /// A socket file at this path, created with mode `0600`. A stale socket file (nobody
    /// answers) is replaced; a live one is an error.
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
            max_handshakes: 256,
            key: None,
            kill_children_with_server: false,
            prefork: 0,
        }
    }
}

/// The default socket: `$XDG_RUNTIME_DIR/forkserver.sock` when that directory exists (it is
/// private to the user by the XDG spec), else `<tmp>/forkserver-<uid>/forkserver.sock`, in a
/// `0700` directory that the server creates and checks.
pub fn default_socket_path() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        let dir = PathBuf::from(dir);
        if dir.is_absolute() && dir.is_dir() {
            return dir.join("forkserver.sock");
        }
    }
    std::env::temp_dir()
        .join(format!("forkserver-{}", nix::unistd::getuid()))
        .join("forkserver.sock")
}

/// Makes sure `dir` is a directory owned by us with mode `0700`, creating it if missing.
///
/// # Errors
/// [`ServerError::Insecure`] when it exists with another owner or looser permissions.
pub fn ensure_private_dir(dir: &Path) -> Result<(), ServerError> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(ServerError::Io(format!("creating {}", dir.display()), e)),
    }
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| ServerError::Io(format!("checking {}", dir.display()), e))?;
    if !meta.is_dir()
        || meta.uid() != nix::unistd::getuid().as_raw()
        || meta.permissions().mode() & 0o077 != 0
    {
        return Err(ServerError::Insecure(dir.to_owned()));
    }
    Ok(())
}

pub(crate) fn bind_listener(what: Listen) -> Result<(OwnedFd, Option<PathBuf>), ServerError> {
    let sys = |what: &str| {
        let what = what.to_owned();
        move |e: nix::errno::Errno| ServerError::Sys(what, e)
    };
    match what {
        Listen::Fd(fd) => {
            let flags =
                nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL).map_err(sys("F_GETFL"))?;
            let flags =
                nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
            nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(sys("F_SETFL"))?;
            Ok((fd, None))
        }
        Listen::Abstract(name) => {
            let sock = new_socket()?;
            let addr = UnixAddr::new_abstract(&name).map_err(sys("abstract address"))?;
            bind(std::os::fd::AsRawFd::as_raw_fd(&sock), &addr).map_err(sys("bind"))?;
            listen(&sock, Backlog::MAXCONN).map_err(sys("listen"))?;
            Ok((sock, None))
        }
        Listen::Path(path) => {
            if let Some(dir) = path.parent() {
                if path == default_socket_path() && std::env::var_os("XDG_RUNTIME_DIR").is_none() {
                    ensure_private_dir(dir)?;
                }
            }
            remove_stale(&path)?;
            let sock = new_socket()?;
            let addr = UnixAddr::new(&path).map_err(sys("socket path"))?;
            // Create the file 0600 from the start: no window in which others could connect.
            let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
            let r = bind(std::os::fd::AsRawFd::as_raw_fd(&sock), &addr);
            nix::sys::stat::umask(old);
            r.map_err(|e| ServerError::Sys(format!("bind {}", path.display()), e))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| ServerError::Io(format!("chmod {}", path.display()), e))?;
            listen(&sock, Backlog::MAXCONN).map_err(sys("listen"))?;
            Ok((sock, Some(path)))
        }
    }
}

fn new_socket() -> Result<OwnedFd, ServerError> {
    socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| ServerError::Sys("socket".into(), e))
}

/// Removes a socket file nobody answers on; refuses to touch a live one or a non-socket.
fn remove_stale(path: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::InUse(path.to_owned()));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ServerError::InUse(path.to_owned()));
    }
    std::fs::remove_file(path)
        .map_err(|e| ServerError::Io(format!("removing stale {}", path.display()), e))
}

/// The uid of the peer of a connected Unix socket (`SO_PEERCRED`).
pub(crate) fn peer_uid(fd: impl AsFd) -> Result<u32, nix::errno::Errno> {
    let cred = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::PeerCredentials)?;
    Ok(cred.uid())
}
