//! Why the server could not start or had to stop: [`ServerError`], with the context of each
//! failure as typed fields (the call, the path, the variable and its value) rather than
//! formatted strings; `Display` writes them out as one line for an operator.

use std::ffi::OsString;
use std::ops::RangeInclusive;
use std::path::PathBuf;

use forkserver_protocol::socket_dir::DirError;

use crate::activation::ActivationError;
use nix::errno::Errno;

/// Why the server could not start or had to stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A system call failed.
    #[error("{call}: {errno}")]
    Sys {
        /// The call (or the step of the setup) that failed, e.g. `epoll_create`.
        call: &'static str,
        /// Its errno.
        errno: Errno,
    },
    /// A system call on a path failed.
    #[error("{call} {}: {errno}", .path.display())]
    SysAt {
        /// The call, e.g. `bind`.
        call: &'static str,
        /// The path it was given.
        path: PathBuf,
        /// Its errno.
        errno: Errno,
    },
    /// A file operation failed.
    #[error("{op} {}: {error}", .path.display())]
    Io {
        /// What was being done, e.g. `removing stale`.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        error: std::io::Error,
    },
    /// Another server answers on the socket path (or the path is not a socket).
    #[error("{} is in use", .0.display())]
    InUse(PathBuf),
    /// The socket directory is not fit to hold the socket (owner, mode, a foreign symbolic
    /// link; PROTOCOL.md §9.3).
    #[error("{0}")]
    Insecure(#[from] DirError),
    /// The process has more than one thread: forking it would be unsafe.
    #[error("the server must be single-threaded, this process has {0} threads")]
    Threads(usize),
    /// The key file is not owned by the server's effective uid, or grants access to group or
    /// others.
    #[error(
        "{}: the key file must be owned by uid {euid} and closed to group and others, \
         it is owned by uid {owner} with mode {mode:o}",
        .path.display()
    )]
    InsecureKeyFile {
        /// The key file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its permission bits.
        mode: u32,
        /// The server's effective uid.
        euid: u32,
    },
    /// The key file holds a key of a length out of bounds (PROTOCOL.md §9.1).
    #[error("{}: {}", .path.display(), key_length(*.len, .allowed))]
    KeyFileLength {
        /// The key file.
        path: PathBuf,
        /// The bytes it holds, or (past the bound) how many were read.
        len: usize,
        /// The lengths a key may have.
        allowed: RangeInclusive<usize>,
    },
    /// The launch environment (`FORKSERVER_LISTEN_FD`, `FORKSERVER_ALIVE_FD`, the key pipe)
    /// is wrong.
    #[error("launch: {0}")]
    Launch(LaunchError),
    /// A setting of the [`Config`](crate::Config) is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(ConfigError),
    /// The socket a service manager passed cannot be used (PROTOCOL.md §9.4).
    #[error("socket activation: {0}")]
    Activation(#[from] ActivationError),
}

/// What is wrong with the environment a launched server was given (PROTOCOL.md §9.4).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// A variable that must be set is not.
    #[error("{0} is not set")]
    NotSet(&'static str),
    /// A variable does not name an open fd (above 2) of this process.
    #[error("{var}={value:?} is not an open fd")]
    NotAnFd {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: OsString,
    },
    /// A variable does not hold a count.
    #[error("{var}={value:?} is not a count")]
    NotACount {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// The key pipe could not be read.
    #[error("reading the key: {0}")]
    ReadKey(#[source] std::io::Error),
    /// The key read from the pipe has a length out of bounds (PROTOCOL.md §9.1).
    #[error("{}", key_length(*.len, .allowed))]
    KeyLength {
        /// The bytes read, or (past the bound) how many were.
        len: usize,
        /// The lengths a key may have.
        allowed: RangeInclusive<usize>,
    },
}

/// A setting of the [`Config`](crate::Config) that is out of range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `prefork` is more than its maximum.
    #[error("prefork {count} is more than {max}")]
    Prefork {
        /// The count asked for.
        count: usize,
        /// [`MAX_PREFORK`](crate::MAX_PREFORK).
        max: usize,
    },
    /// `max_children` is 0.
    #[error("max_children must be at least 1")]
    NoChildren,
}

/// A system call failed: the error naming it, for `map_err`.
pub(crate) fn sys(call: &'static str) -> impl Fn(Errno) -> ServerError {
    move |errno| ServerError::Sys { call, errno }
}

/// "the key must be 16 to 1024 bytes, got 3" (a key read past the bound is "more than" it).
fn key_length(len: usize, allowed: &RangeInclusive<usize>) -> String {
    let (min, max) = (allowed.start(), allowed.end());
    match len > *max {
        true => format!("the key must be {min} to {max} bytes, got more than {max}"),
        false => format!("the key must be {min} to {max} bytes, got {len}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_the_call_the_path_and_the_value() {
        let e = ServerError::Sys {
            call: "epoll_create",
            errno: Errno::EMFILE,
        };
        assert_eq!(e.to_string(), "epoll_create: EMFILE: Too many open files");
        let e = ServerError::SysAt {
            call: "bind",
            path: "/run/x.sock".into(),
            errno: Errno::EACCES,
        };
        assert_eq!(e.to_string(), "bind /run/x.sock: EACCES: Permission denied");
        let e = ServerError::Launch(LaunchError::NotAnFd {
            var: "FORKSERVER_LISTEN_FD",
            value: "x".into(),
        });
        assert_eq!(
            e.to_string(),
            r#"launch: FORKSERVER_LISTEN_FD="x" is not an open fd"#
        );
        let e = ServerError::InvalidConfig(ConfigError::Prefork {
            count: 5000,
            max: 1024,
        });
        assert_eq!(
            e.to_string(),
            "invalid configuration: prefork 5000 is more than 1024"
        );
        let allowed = 16..=1024;
        let e = ServerError::KeyFileLength {
            path: "/k".into(),
            len: 3,
            allowed: allowed.clone(),
        };
        assert_eq!(e.to_string(), "/k: the key must be 16 to 1024 bytes, got 3");
        let e = ServerError::Launch(LaunchError::KeyLength { len: 1025, allowed });
        assert_eq!(
            e.to_string(),
            "launch: the key must be 16 to 1024 bytes, got more than 1024"
        );
    }
}
