//! Where a server's socket lives, and the checks both ends make on its directory before they
//! trust it (PROTOCOL.md §9.3).
//!
//! A socket file is only as private as the directory that holds it: whoever can write to that
//! directory can replace the socket with their own (a fake server that collects the fds and
//! environment of every request) or point it elsewhere. So the server binds, and the client
//! connects, only inside a directory that
//!
//! * is a real directory (a symbolic link to it is followed only when the link's owner is the
//!   expected owner or root),
//! * is owned by the uid the socket must belong to (the server's), and
//! * gives group and others no access at all (mode `& 0o077 == 0`); when a client has been
//!   told to trust a server of *another* uid, read and search access for others is allowed
//!   (they need it to reach the socket), write access never.
//!
//! The check is made on an open descriptor of the directory (`O_PATH`), and the socket is then
//! reached through `/proc/self/fd/N/<name>`: the directory that was checked is the one used,
//! even if someone renames things meanwhile.
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag};

/// File name of the socket in its directory, for the default locations.
pub const SOCKET_NAME: &str = "forkserver.sock";

/// The default socket path: `$XDG_RUNTIME_DIR/forkserver.sock` when `XDG_RUNTIME_DIR` is set
/// to an absolute path (that directory must then exist and be private; nothing falls back
/// silently), else `<tmp>/forkserver-<euid>/forkserver.sock`, in a directory the server
/// creates with mode `0700`.
pub fn default_socket_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        // The XDG base directory spec: a relative path is invalid and must be ignored.
        Some(dir) if Path::new(&dir).is_absolute() => Path::new(&dir).join(SOCKET_NAME),
        _ => std::env::temp_dir()
            .join(format!("forkserver-{}", nix::unistd::geteuid()))
            .join(SOCKET_NAME),
    }
}

/// Whether `dir` is the per-user fallback directory of [`default_socket_path`] (under the
/// temp dir, which the server may create) rather than one someone else must provide.
pub fn is_default_fallback_dir(dir: &Path) -> bool {
    let xdg_set = std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| Path::new(&d).is_absolute());
    !xdg_set && default_socket_path().parent() == Some(dir)
}

/// What the directory's mode may grant to group and others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Nothing: `mode & 0o077 == 0` (the default for both ends).
    Private,
    /// Read and search, never write: `mode & 0o022 == 0`. For servers that serve other uids
    /// (`--allow-uid`) and for clients of such a server.
    Readable,
}

/// Why a socket directory is not trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirError {
    /// The directory could not be opened or examined.
    Io {
        /// The directory.
        dir: PathBuf,
        /// The error of `open`/`fstat`/`lstat`.
        errno: Errno,
    },
    /// It is not a directory.
    NotADirectory(PathBuf),
    /// It is a symbolic link owned by someone who is neither the expected owner nor root.
    ForeignSymlink {
        /// The link.
        dir: PathBuf,
        /// The link's owner.
        owner: u32,
    },
    /// It is owned by another uid.
    WrongOwner {
        /// The directory.
        dir: PathBuf,
        /// Its owner.
        owner: u32,
        /// The uid it must belong to.
        expected: u32,
    },
    /// Group or others have access they must not have.
    UnsafeMode {
        /// The directory.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

impl fmt::Display for DirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirError::Io { dir, errno } => {
                write!(f, "socket directory {}: {}", dir.display(), errno.desc())
            }
            DirError::NotADirectory(dir) => {
                write!(f, "socket directory {} is not a directory", dir.display())
            }
            DirError::ForeignSymlink { dir, owner } => write!(
                f,
                "socket directory {} is a symbolic link owned by uid {owner}: refused",
                dir.display()
            ),
            DirError::WrongOwner {
                dir,
                owner,
                expected,
            } => write!(
                f,
                "unsafe permissions on socket directory {}: owned by uid {owner}, not uid \
                 {expected}",
                dir.display()
            ),
            DirError::UnsafeMode { dir, mode } => write!(
                f,
                "unsafe permissions on socket directory {}: mode {mode:04o} gives group or \
                 others access (chmod 700 it)",
                dir.display()
            ),
        }
    }
}

impl std::error::Error for DirError {}

/// A socket directory that passed the checks, held open so that the directory checked is the
/// directory used.
#[derive(Debug)]
pub struct SocketDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl SocketDir {
    /// Opens `dir` and checks it: a directory owned by `owner`, with no more access for group
    /// and others than `sharing` allows.
    ///
    /// # Errors
    /// A [`DirError`] naming the directory and what is wrong with it.
    pub fn open(dir: &Path, owner: u32, sharing: Sharing) -> Result<SocketDir, DirError> {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let io = |errno| DirError::Io {
            dir: dir.to_owned(),
            errno,
        };
        let link = nix::sys::stat::lstat(dir).map_err(io)?;
        if SFlag::from_bits_truncate(link.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK
            && link.st_uid != owner
            && link.st_uid != 0
        {
            return Err(DirError::ForeignSymlink {
                dir: dir.to_owned(),
                owner: link.st_uid,
            });
        }
        let fd = nix::fcntl::open(
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::ENOTDIR => DirError::NotADirectory(dir.to_owned()),
            e => io(e),
        })?;
        let st = nix::sys::stat::fstat(&fd).map_err(io)?;
        check(dir, st.st_uid, st.st_mode, owner, sharing)?;
        Ok(SocketDir {
            fd,
            path: dir.to_owned(),
        })
    }

    /// The directory's path, as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path that reaches `name` inside *this* directory (the one checked) whatever happens
    /// to the directory's own path: `/proc/self/fd/N/name`, or `dir/name` where `/proc` is not
    /// mounted or that path would not fit in a socket address.
    pub fn entry(&self, name: &OsStr) -> PathBuf {
        let via_proc = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd())).join(name);
        // sun_path holds 108 bytes, the NUL included.
        if via_proc.as_os_str().as_bytes().len() < 108 && Path::new("/proc/self/fd").is_dir() {
            via_proc
        } else {
            self.path.join(name)
        }
    }
}

/// The ownership and mode rule, without I/O.
fn check(dir: &Path, uid: u32, mode: u32, owner: u32, sharing: Sharing) -> Result<(), DirError> {
    if uid != owner {
        return Err(DirError::WrongOwner {
            dir: dir.to_owned(),
            owner: uid,
            expected: owner,
        });
    }
    let forbidden = match sharing {
        Sharing::Private => 0o077,
        Sharing::Readable => 0o022,
    };
    if mode & forbidden != 0 {
        return Err(DirError::UnsafeMode {
            dir: dir.to_owned(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

/// Splits a socket path into its directory and file name.
///
/// # Errors
/// [`DirError::NotADirectory`] for a path with no file name (`/`, `..`).
pub fn split(path: &Path) -> Result<(&Path, &OsStr), DirError> {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => Ok((dir, name)),
        _ => Err(DirError::NotADirectory(path.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        let d = Path::new("/x");
        assert!(check(d, 5, 0o40700, 5, Sharing::Private).is_ok());
        assert!(matches!(
            check(d, 6, 0o40700, 5, Sharing::Private),
            Err(DirError::WrongOwner { owner: 6, .. })
        ));
        for bad in [0o710, 0o701, 0o750, 0o777, 0o1777] {
            assert!(check(d, 5, bad, 5, Sharing::Private).is_err(), "{bad:o}");
        }
        assert!(check(d, 5, 0o755, 5, Sharing::Readable).is_ok());
        for bad in [0o775, 0o757, 0o1777] {
            assert!(check(d, 5, bad, 5, Sharing::Readable).is_err(), "{bad:o}");
        }
    }

    #[test]
    fn real_directories() {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let me = nix::unistd::geteuid().as_raw();
        let base = std::env::temp_dir().join(format!("fs-sockdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&base)
            .unwrap();
        let dir = SocketDir::open(&base, me, Sharing::Private).unwrap();
        let entry = dir.entry(OsStr::new("s"));
        std::fs::write(&entry, b"x").unwrap();
        assert_eq!(std::fs::read(base.join("s")).unwrap(), b"x");

        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = SocketDir::open(&base, me, Sharing::Private).unwrap_err();
        assert!(e.to_string().contains("unsafe permissions"), "{e}");
        assert!(e.to_string().contains(&*base.to_string_lossy()), "{e}");
        assert!(SocketDir::open(&base, me, Sharing::Readable).is_ok());
        assert!(matches!(
            SocketDir::open(&base, me + 1, Sharing::Readable),
            Err(DirError::WrongOwner { .. })
        ));
        assert!(matches!(
            SocketDir::open(&base.join("s"), me, Sharing::Private),
            Err(DirError::NotADirectory(_))
        ));
        assert!(matches!(
            SocketDir::open(&base.join("missing"), me, Sharing::Private),
            Err(DirError::Io {
                errno: Errno::ENOENT,
                ..
            })
        ));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
