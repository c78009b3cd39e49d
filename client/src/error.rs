//! The client's error type: what the caller asked wrongly ([`Error::InvalidRequest`],
//! [`Error::TooManyFds`]), what the server refused ([`Error::Server`]), and what went wrong on the
//! way ([`Error::Connect`], [`Error::ServerGone`], [`Error::Protocol`], [`Error::Io`]).

use std::io;
use std::path::PathBuf;

use forkserver_protocol::{BuildError, ErrorCode, ErrorReply, Tag, TransportError};
use nix::errno::Errno;

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Everything a client call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No server answers at the socket path (refused, no such socket, permission denied).
    #[error("cannot connect to the forkserver at {}: {source}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// Why `connect(2)` failed.
        source: io::Error,
    },
    /// The socket at `path` is not to be trusted: its directory is not private to the server's
    /// uid, or the process listening on it runs as another uid (PROTOCOL.md §9.3). Nothing
    /// was sent to it.
    #[error("refusing the forkserver at {}: {reason}", path.display())]
    Untrusted {
        /// The socket path.
        path: PathBuf,
        /// What the check found.
        reason: String,
    },
    /// The server closed the connection, or died, while a reply was awaited.
    #[error("the forkserver closed the connection")]
    ServerGone,
    /// More than [`forkserver_protocol::MAX_FDS`] fds in one request; caught before anything is
    /// sent.
    #[error("{0} fds in one request, at most {max} allowed", max = forkserver_protocol::MAX_FDS)]
    TooManyFds(usize),
    /// The request cannot be expressed on the wire (NUL byte in an argument, duplicate target
    /// fd, over-long path, ...); caught before anything is sent.
    #[error("invalid request: {0}")]
    InvalidRequest(BuildError),
    /// The server answered with an error reply.
    #[error("forkserver error {}{}: {message}", code.name(), errno_suffix(*errno))]
    Server {
        /// The error code (PROTOCOL.md §7).
        code: ErrorCode,
        /// The OS error behind it, or 0.
        errno: i32,
        /// The server's human-readable message.
        message: String,
    },
    /// The server sent something this client cannot accept: a malformed frame, or a valid
    /// message out of place.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// A system call of the client failed (socket I/O, `dup`, `pipe`, opening `/dev/null`).
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// Starting the server process (or its socket directory) failed.
    #[error("cannot launch the forkserver: {0}")]
    Launch(#[source] io::Error),
    /// The server demands authentication and this client has no key
    /// ([`crate::Client::connect_with_key`]).
    #[error("the forkserver requires authentication, and this client has no key")]
    AuthRequired,
    /// The server did not prove it holds the key: it offered no authentication, or its answer
    /// to our challenge was wrong (PROTOCOL.md §9.2). Nothing was sent to it.
    #[error("the forkserver did not authenticate itself: {0}")]
    ServerNotAuthenticated(&'static str),
    /// The server does not implement an option the request uses: its `Features` (PROTOCOL.md
    /// §5.14) lack the option's `Spawn.flags` bit, or it predates them (rev 0.6; it is then
    /// taken to implement the options of the first revisions only). Nothing was sent.
    #[error("the forkserver ({}) does not implement the option {option}", server_revision(*server))]
    Unsupported {
        /// The option's name in the spec's flag table, e.g. `SET_UID`, or the request's
        /// (`MetricsRequest`).
        option: &'static str,
        /// The revision the server named in its `Features`; `None` for a server before
        /// rev 0.6.
        server: Option<forkserver_protocol::Revision>,
    },
    /// The child had already ended when a signal was to be sent to it.
    #[error("the child has already exited")]
    AlreadyExited,
}

fn server_revision(rev: Option<forkserver_protocol::Revision>) -> String {
    rev.map_or_else(|| "before rev 0.6".to_owned(), |r| r.to_string())
}

fn errno_suffix(errno: i32) -> String {
    if errno == 0 {
        String::new()
    } else {
        format!(" ({})", Errno::from_raw(errno).desc())
    }
}

/// How the server broke the protocol (the variant of [`Error::Protocol`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame could not be decoded, or its fds did not match its header.
    #[error("bad frame: {0}")]
    Transport(TransportError),
    /// A valid message that is not allowed at this point of the connection.
    #[error("unexpected {got:?} message while waiting for {expected}")]
    Unexpected {
        /// The tag of the message received.
        got: Tag,
        /// What the client was waiting for.
        expected: &'static str,
    },
    /// The server chose a protocol version this client did not offer.
    #[error("the server chose protocol version {0}, which this client does not speak")]
    Version(u16),
}

impl Error {
    /// True for an exec job whose `execve` failed in the child ([`ErrorCode::ExecFailed`]);
    /// [`Error::errno`] says why (e.g. `ENOENT` for a missing program).
    pub fn is_exec_failure(&self) -> bool {
        matches!(
            self,
            Error::Server {
                code: ErrorCode::ExecFailed,
                ..
            }
        )
    }

    /// The OS error number behind this error, if there is one: the `errno` of a server error
    /// reply (when not 0), or the raw OS error of an I/O, connect or launch failure.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Server { errno, .. } => (*errno != 0).then_some(*errno),
            Error::Connect { source: e, .. } | Error::Io(e) | Error::Launch(e) => e.raw_os_error(),
            _ => None,
        }
    }

    /// The server's error code, for [`Error::Server`].
    pub fn server_code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Maps a transport error met while sending a request or reading its reply.
    pub(crate) fn from_transport(e: TransportError) -> Self {
        match e {
            TransportError::Closed
            | TransportError::ClosedMidFrame
            | TransportError::Io(Errno::EPIPE | Errno::ECONNRESET) => Error::ServerGone,
            TransportError::Io(errno) => Error::Io(io::Error::from(errno)),
            TransportError::TooManyFds(n) => Error::TooManyFds(n),
            other => Error::Protocol(ProtocolError::Transport(other)),
        }
    }

    /// An [`Error::Protocol`] for an out-of-place message.
    pub(crate) fn unexpected(got: Tag, expected: &'static str) -> Self {
        Error::Protocol(ProtocolError::Unexpected { got, expected })
    }
}

impl From<ErrorReply> for Error {
    fn from(e: ErrorReply) -> Self {
        Error::Server {
            code: e.code(),
            errno: e.errno(),
            message: e.message().to_owned(),
        }
    }
}

impl From<BuildError> for Error {
    fn from(e: BuildError) -> Self {
        match e {
            BuildError::TooManyFds(n) => Error::TooManyFds(n),
            other => Error::InvalidRequest(other),
        }
    }
}

impl From<Errno> for Error {
    fn from(e: Errno) -> Self {
        Error::Io(io::Error::from(e))
    }
}

impl From<Error> for io::Error {
    /// For callers that speak `io::Result`, as code written for `std::process::Command` does:
    /// an error with an OS error number becomes that OS error (so a missing program is
    /// `ErrorKind::NotFound`, as with std), the rest `ErrorKind::Other`.
    fn from(e: Error) -> Self {
        match e {
            Error::Io(e) | Error::Launch(e) => e,
            Error::Connect { ref source, .. } => io::Error::new(source.kind(), e),
            Error::Server { errno, .. } if errno != 0 => io::Error::from_raw_os_error(errno),
            other => io::Error::other(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_failure_maps_to_io_not_found() {
        let e = Error::from(ErrorReply::new(
            ErrorCode::ExecFailed,
            nix::libc::ENOENT,
            "execve",
        ));
        assert!(e.is_exec_failure());
        assert_eq!(e.errno(), Some(nix::libc::ENOENT));
        assert_eq!(e.server_code(), Some(ErrorCode::ExecFailed));
        assert!(e.to_string().contains("ExecFailed"), "{e}");
        let io: io::Error = e.into();
        assert_eq!(io.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn transport_errors_map_to_server_gone() {
        for t in [
            TransportError::Closed,
            TransportError::ClosedMidFrame,
            TransportError::Io(Errno::EPIPE),
            TransportError::Io(Errno::ECONNRESET),
        ] {
            assert!(
                matches!(Error::from_transport(t), Error::ServerGone),
                "{t:?}"
            );
        }
        assert!(matches!(
            Error::from_transport(TransportError::ControlTruncated),
            Error::Protocol(ProtocolError::Transport(_))
        ));
    }
}
