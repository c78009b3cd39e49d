//! The listening socket: bound only in a directory that passed the checks of PROTOCOL.md
//! §9.3, created with its final mode, and removed again by whoever bound it.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use forkserver_protocol::socket_dir::{self, Sharing, SocketDir};
use nix::sys::socket::{
    bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};

use crate::config::Listen;
use crate::error::{sys, ServerError};

/// A socket file this process bound. Dropping it removes the file, if it is still the one we
/// bound and this is still the process that bound it (a forked child drops nothing of the
/// server's, but if it did, the server's socket would survive).
#[derive(Debug)]
pub(crate) struct BoundPath {
    dir: SocketDir,
    name: OsString,
    path: PathBuf,
    inode: (u64, u64),
    owner: u32,
}

impl BoundPath {
    /// The path the socket was asked to be bound at.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BoundPath {
    fn drop(&mut self) {
        if std::process::id() != self.owner {
            return;
        }
        let entry = self.dir.entry(&self.name);
        // Nothing is removed that another server put there after us.
        if std::fs::symlink_metadata(&entry).is_ok_and(|m| (m.dev(), m.ino()) == self.inode) {
            let _ = std::fs::remove_file(entry);
        }
    }
}

/// Binds and listens as `what` says. `shared`: other uids are allowed to connect, so the
/// socket directory may be readable (never writable) by others.
pub(crate) fn bind_listener(
    what: Listen,
    shared: bool,
) -> Result<(OwnedFd, Option<BoundPath>), ServerError> {
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
            bind(sock.as_raw_fd(), &addr).map_err(sys("bind"))?;
            listen(&sock, Backlog::MAXCONN).map_err(sys("listen"))?;
            Ok((sock, None))
        }
        Listen::Path(path) => {
            let (dir, name) = socket_dir::split(&path)?;
            if socket_dir::is_default_fallback_dir(dir) {
                create_private_dir(dir)?;
            }
            let sharing = if shared {
                Sharing::Readable
            } else {
                Sharing::Private
            };
            let dir = SocketDir::open(dir, nix::unistd::geteuid().as_raw(), sharing)?;
            let entry = dir.entry(name);
            remove_stale(&entry, &path)?;
            let sock = new_socket()?;
            let addr = UnixAddr::new(&entry).map_err(sys("socket path"))?;
            // The file gets its mode before it exists: bind(2) gives it the socket's own mode
            // (set here on the descriptor) less the umask, so there is no window in which others
            // could connect and no chmod by path afterwards. With other uids allowed
            // (`--allow-uid`) it is 0666: connect(2) needs write permission on the file, and
            // SO_PEERCRED decides at accept who is served (PROTOCOL.md §9.3). The umask would
            // take bits off (0666 becoming 0644): it is zero for the bind (the server is
            // single-threaded, so no other file is created meanwhile).
            let mode = if shared { 0o666 } else { 0o600 };
            nix::sys::stat::fchmod(&sock, nix::sys::stat::Mode::from_bits_truncate(mode))
                .map_err(sys("fchmod"))?;
            let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
            let r = bind(sock.as_raw_fd(), &addr);
            nix::sys::stat::umask(old);
            r.map_err(|errno| ServerError::SysAt {
                call: "bind",
                path: path.clone(),
                errno,
            })?;
            let meta = std::fs::symlink_metadata(&entry).map_err(|error| ServerError::Io {
                op: "stat",
                path: path.clone(),
                error,
            })?;
            let bound = BoundPath {
                dir,
                name: name.to_owned(),
                path: path.clone(),
                inode: (meta.dev(), meta.ino()),
                owner: std::process::id(),
            };
            listen(&sock, Backlog::MAXCONN).map_err(sys("listen"))?;
            Ok((sock, Some(bound)))
        }
    }
}

/// Creates the per-user fallback directory with mode `0700` if it is missing; whether it is
/// fit is checked by [`SocketDir::open`] either way.
fn create_private_dir(dir: &Path) -> Result<(), ServerError> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(ServerError::Io {
            op: "creating",
            path: dir.to_owned(),
            error,
        }),
    }
}

fn new_socket() -> Result<OwnedFd, ServerError> {
    socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(sys("socket"))
}

/// Removes a socket file nobody answers on; refuses to touch a live one or a non-socket.
/// `entry` reaches the file through the checked directory; `path` names it in errors.
fn remove_stale(entry: &Path, path: &Path) -> Result<(), ServerError> {
    let Ok(meta) = std::fs::symlink_metadata(entry) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::InUse(path.to_owned()));
    }
    if std::os::unix::net::UnixStream::connect(entry).is_ok() {
        return Err(ServerError::InUse(path.to_owned()));
    }
    std::fs::remove_file(entry).map_err(|error| ServerError::Io {
        op: "removing stale",
        path: path.to_owned(),
        error,
    })
}

/// The uid of the peer of a connected Unix socket (`SO_PEERCRED`).
pub(crate) fn peer_uid(fd: impl AsFd) -> Result<u32, nix::errno::Errno> {
    let cred = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::PeerCredentials)?;
    Ok(cred.uid())
}
