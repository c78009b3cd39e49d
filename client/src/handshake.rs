//! The handshake on a new connection (PROTOCOL.md §6.1, §6.6, §9.2): its decisions, made on
//! the frames read whatever the I/O, and the blocking driver; the async driver is
//! `conn_async.rs`'s. One attempt at a connection ([`attempt`]) and how it can fail
//! ([`Failure`]) live here too, as both drivers share them.
//!
//! Without a key the client pipelines: it sends `Hello` and its request back to back, then reads
//! `HelloOk` and the reply, saving a round trip per request. With a key it authenticates first
//! (PROTOCOL.md §9.2) and sends its request only once the server has proven it holds the key.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use forkserver_protocol::{
    auth, Auth, AuthMethod, Hello, Message, CHALLENGE_LEN, PROTOCOL_VERSION,
};

use crate::conn::{Conn, ConnectError};
use crate::error::{Error, ProtocolError, Result};

/// How long the server may take to answer the handshake (its own limit is 10 s, §6.3).
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The first frame of every connection.
pub(crate) fn hello() -> Message {
    Message::Hello(Hello::current())
}

/// What the client sends after `HelloOk` (or the `Error` in its place): nothing more before
/// the request, or its `Auth`, with the challenge the server must answer.
pub(crate) enum AfterHello {
    Request,
    Auth(Auth, [u8; CHALLENGE_LEN]),
}

/// The reply to `Hello`, checked.
///
/// # Errors
/// [`Error::AuthRequired`] if the server demands authentication and there is no key,
/// [`Error::ServerNotAuthenticated`] if there is a key and the server offers none (§6.6: it
/// could be an impostor), [`Error::Server`] for an error reply, [`Error::Protocol`].
pub(crate) fn on_hello_reply(reply: Message, key: Option<&[u8]>) -> Result<AfterHello> {
    let method = match reply {
        Message::HelloOk(ok) if ok.version() != PROTOCOL_VERSION => {
            return Err(ProtocolError::Version(ok.version()).into())
        }
        Message::HelloOk(ok) => ok.auth(),
        Message::Error(e) => return Err(e.into()),
        other => return Err(Error::unexpected(other.tag(), "HelloOk")),
    };
    match (method, key) {
        (AuthMethod::HmacSha256 { .. }, None) => Err(Error::AuthRequired),
        (AuthMethod::None, None) => Ok(AfterHello::Request),
        (AuthMethod::None, Some(_)) => Err(Error::ServerNotAuthenticated(
            "it offered no authentication",
        )),
        (AuthMethod::HmacSha256 { challenge }, Some(key)) => {
            let ours = auth::random_challenge()?;
            let response = auth::client_response(key, &challenge);
            let auth = Auth {
                response,
                challenge: ours,
            };
            Ok(AfterHello::Auth(auth, ours))
        }
    }
}

/// The reply to `Auth`, checked against our challenge `ours` (§9.2 step 4).
///
/// # Errors
/// [`Error::ServerNotAuthenticated`] for a wrong answer, [`Error::Server`] for an error
/// reply, [`Error::Protocol`].
pub(crate) fn on_auth_reply(reply: Message, key: &[u8], ours: &[u8; CHALLENGE_LEN]) -> Result<()> {
    match reply {
        Message::AuthOk(ok) if auth::verify_server(key, ours, &ok.response) => Ok(()),
        Message::AuthOk(_) => Err(Error::ServerNotAuthenticated(
            "its answer to our challenge is wrong",
        )),
        Message::Error(e) => Err(e.into()),
        other => Err(Error::unexpected(other.tag(), "AuthOk")),
    }
}

/// Performs the handshake (and the authentication step when `key` is given) on a blocking
/// connection, with `request` (and its fds) sent behind it; returns once the handshake is
/// complete. The reply to `request` is left for the caller.
///
/// # Errors
/// As [`on_hello_reply`] and [`on_auth_reply`]; [`Error::ServerGone`], [`Error::Io`]
/// (`TimedOut` after [`HANDSHAKE_TIMEOUT`]).
pub(crate) fn handshake(
    conn: &mut Conn,
    key: Option<&[u8]>,
    request: Option<&Message>,
    fds: Vec<OwnedFd>,
) -> Result<()> {
    // A server that accepted (its listen backlog does that for it) but never answers, or a
    // launched program that is no server at all, must not hang the caller forever.
    conn.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let r = handshake_inner(conn, key, request, fds);
    conn.set_read_timeout(None)?;
    r.map_err(|e| match e {
        Error::Io(io) if io.kind() == io::ErrorKind::WouldBlock => timed_out(),
        e => e,
    })
}

/// The error of a handshake not answered within [`HANDSHAKE_TIMEOUT`].
pub(crate) fn timed_out() -> Error {
    Error::Io(io::Error::new(
        io::ErrorKind::TimedOut,
        "the forkserver did not answer the handshake in time",
    ))
}

fn handshake_inner(
    conn: &mut Conn,
    key: Option<&[u8]>,
    request: Option<&Message>,
    fds: Vec<OwnedFd>,
) -> Result<()> {
    conn.send(&hello(), Vec::new())?;
    if key.is_none() {
        // If the server has already refused the hello and closed, this send fails; its
        // reply to the hello (read below) is then the better error to report.
        let sent = match request {
            Some(message) => conn.send(message, fds),
            None => Ok(()),
        };
        on_hello_reply(conn.recv()?.message, None)?;
        return sent;
    }
    if let (AfterHello::Auth(auth, ours), Some(key)) =
        (on_hello_reply(conn.recv()?.message, key)?, key)
    {
        conn.send(&Message::Auth(auth), Vec::new())?;
        on_auth_reply(conn.recv()?.message, key, &ours)?;
    }
    match request {
        Some(message) => conn.send(message, fds),
        None => Ok(()),
    }
}

/// This process's effective uid: the uid a launched server runs as, and the default for one
/// at a path.
pub(crate) fn own_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// How one connection attempt failed.
pub(crate) enum Failure {
    /// The socket failed the checks made before anything is sent.
    Untrusted(String),
    /// Nobody listens at the path (`ECONNREFUSED`, `ENOENT`).
    Refused(io::Error),
    /// `connect` failed otherwise.
    Connect(io::Error),
    /// The server closed before answering the handshake or taking the request; the request
    /// was not acted on.
    Gone(Error),
    /// Anything else.
    Other(Error),
}

impl Failure {
    /// The error the caller sees when no retry is left.
    pub(crate) fn into_error(self, path: PathBuf) -> Error {
        match self {
            Failure::Refused(source) | Failure::Connect(source) => Error::Connect { path, source },
            Failure::Untrusted(reason) => Error::Untrusted { path, reason },
            Failure::Gone(e) | Failure::Other(e) => e,
        }
    }

    /// A failure to connect.
    pub(crate) fn of_connect(e: ConnectError) -> Self {
        match e {
            ConnectError::Io(e)
                if matches!(
                    e.raw_os_error(),
                    Some(nix::libc::ECONNREFUSED | nix::libc::ENOENT)
                ) =>
            {
                Failure::Refused(e)
            }
            ConnectError::Io(e) => Failure::Connect(e),
            ConnectError::Untrusted(e) => Failure::Untrusted(e.to_string()),
            ConnectError::PeerUid { uid, expected } => Failure::Untrusted(format!(
                "the process listening on it runs as uid {uid}, not uid {expected} (name the \
                 server's uid explicitly to trust it)"
            )),
        }
    }

    /// A failure of the handshake. Within it, "closed" means our request was not read, or
    /// not answered at all: the server sends `HelloOk` before it acts on a request, and
    /// queued replies are read before the end of the stream.
    pub(crate) fn of_handshake(e: Error) -> Self {
        match e {
            Error::ServerGone => Failure::Gone(e),
            e => Failure::Other(e),
        }
    }
}

/// Connects to the server at `path` (which must run as `server_uid`), and does the handshake
/// with `request` behind it.
pub(crate) fn attempt(
    path: &Path,
    server_uid: u32,
    key: Option<&[u8]>,
    request: Option<(Message, Vec<OwnedFd>)>,
) -> std::result::Result<Conn, Failure> {
    let mut conn = Conn::connect(path, server_uid).map_err(Failure::of_connect)?;
    let (message, fds) = match request {
        Some((m, fds)) => (Some(m), fds),
        None => (None, Vec::new()),
    };
    handshake(&mut conn, key, message.as_ref(), fds).map_err(Failure::of_handshake)?;
    Ok(conn)
}
