//! One connection to the server: the handshake, then frames (PROTOCOL.md §6).
//!
//! Without a key the client pipelines: it sends `Hello` and its request back to back, then reads
//! `HelloOk` and the reply, saving a round trip per request. With a key it authenticates first
//! (PROTOCOL.md §9.2) and sends its request only once the server has proven it holds the key.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use forkserver_protocol::socket_dir::{self, DirError, Sharing, SocketDir};
use forkserver_protocol::{
    auth, peek_pending, send_message, Auth, AuthMethod, Frame, FrameReader, Hello, Message,
    Pending, PROTOCOL_VERSION,
};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::getsockopt;
use nix::sys::socket::sockopt::PeerCredentials;

use crate::error::{Error, ProtocolError, Result};

/// How long the server may take to answer the handshake (its own limit is 10 s, §6.3).
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A kept connection idle for longer than this is probed before reuse (PROTOCOL.md §6.6, see
/// [`Conn::still_usable`]); one used more recently is not.
const PROBE_AFTER_IDLE: Duration = Duration::from_millis(500);

/// Why [`Conn::connect`] failed.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// `connect(2)` (or reaching the directory) failed.
    Io(io::Error),
    /// The socket's directory failed its check.
    Untrusted(DirError),
    /// The listening process runs as another uid than the one expected.
    PeerUid { uid: u32, expected: u32 },
}

/// A blocking connection and the frames read from it so far.
#[derive(Debug)]
pub(crate) struct Conn {
    sock: UnixStream,
    reader: FrameReader,
    /// Which launch of the server this connection reaches (see `Managed`); 0 for a server at
    /// a path.
    pub(crate) generation: u64,
    /// Taken from the client's kept connections (not opened for this request).
    pub(crate) reused: bool,
    /// When it last became READY and was kept (see [`Conn::mark_idle`]).
    idle_since: Option<Instant>,
}

impl Conn {
    /// Connects to the socket at `path` and checks, before any byte is sent, that it is the
    /// server of uid `server_uid` (PROTOCOL.md §9.3): the socket's directory is owned by that
    /// uid and closed to others (readable by others only when `server_uid` is not ours, as
    /// others must reach it then), and the peer's `SO_PEERCRED` uid is `server_uid`. The
    /// connection goes through the directory that was checked (`SocketDir::entry`).
    ///
    /// # Errors
    /// [`ConnectError::Io`] when nothing can be reached (a missing directory is `NotFound`),
    /// [`ConnectError::Untrusted`] when a check fails.
    pub(crate) fn connect(path: &Path, server_uid: u32) -> std::result::Result<Self, ConnectError> {
        let (dir, name) = socket_dir::split(path).map_err(ConnectError::Untrusted)?;
        let sharing = if server_uid == nix::unistd::geteuid().as_raw() {
            Sharing::Private
        } else {
            Sharing::Readable
        };
        let dir = match SocketDir::open(dir, server_uid, sharing) {
            Ok(dir) => dir,
            // Nothing there yet: no server (the caller may start one).
            Err(DirError::Io { errno, .. }) if errno == Errno::ENOENT => {
                return Err(ConnectError::Io(io::Error::from_raw_os_error(errno as i32)))
            }
            Err(e) => return Err(ConnectError::Untrusted(e)),
        };
        let sock = UnixStream::connect(dir.entry(name)).map_err(ConnectError::Io)?;
        let cred = getsockopt(&sock, PeerCredentials).map_err(|e| ConnectError::Io(e.into()))?;
        if cred.uid() != server_uid {
            return Err(ConnectError::PeerUid {
                uid: cred.uid(),
                expected: server_uid,
            });
        }
        Ok(Self::new(sock))
    }

    pub(crate) fn new(sock: UnixStream) -> Self {
        Self {
            sock,
            reader: FrameReader::new(),
            generation: 0,
            reused: false,
            idle_since: None,
        }
    }

    /// Performs the handshake (and the authentication step when `key` is given), with
    /// `request` (and its fds) sent behind it; returns once the handshake is complete. The reply
    /// to `request` is left for the caller.
    ///
    /// # Errors
    /// [`Error::AuthRequired`] if the server demands authentication and there is no key,
    /// [`Error::ServerNotAuthenticated`] if there is a key and the server does not prove it
    /// holds it, [`Error::Server`] for an error reply, [`Error::ServerGone`],
    /// [`Error::Protocol`], [`Error::Io`].
    pub(crate) fn handshake(
        &mut self,
        key: Option<&[u8]>,
        request: Option<&Message>,
        fds: Vec<OwnedFd>,
    ) -> Result<()> {
        // A server that accepted (its listen backlog does that for it) but never answers, or a
        // launched program that is no server at all, must not hang the caller forever.
        self.sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let r = self.handshake_inner(key, request, fds);
        self.sock.set_read_timeout(None)?;
        r.map_err(|e| match e {
            Error::Io(io) if io.kind() == io::ErrorKind::WouldBlock => Error::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                "the forkserver did not answer the handshake in time",
            )),
            e => e,
        })
    }

    fn handshake_inner(
        &mut self,
        key: Option<&[u8]>,
        request: Option<&Message>,
        fds: Vec<OwnedFd>,
    ) -> Result<()> {
        self.send(&Message::Hello(Hello::current()), Vec::new())?;
        let Some(key) = key else {
            // If the server has already refused the hello and closed, this send fails; its
            // reply to the hello (read below) is then the better error to report.
            let sent = match request {
                Some(message) => self.send(message, fds),
                None => Ok(()),
            };
            if let AuthMethod::HmacSha256 { .. } = self.hello_ok()? {
                return Err(Error::AuthRequired);
            }
            return sent;
        };
        let AuthMethod::HmacSha256 { challenge } = self.hello_ok()? else {
            // §6.6: a server that skips authentication could be an impostor.
            return Err(Error::ServerNotAuthenticated(
                "it offered no authentication",
            ));
        };
        let ours = auth::random_challenge()?;
        let response = auth::client_response(key, &challenge);
        self.send(
            &Message::Auth(Auth {
                response,
                challenge: ours,
            }),
            Vec::new(),
        )?;
        match self.recv()?.message {
            Message::AuthOk(ok) if auth::verify_server(key, &ours, &ok.response) => {}
            Message::AuthOk(_) => {
                return Err(Error::ServerNotAuthenticated(
                    "its answer to our challenge is wrong",
                ))
            }
            Message::Error(e) => return Err(e.into()),
            other => return Err(Error::unexpected(other.tag(), "AuthOk")),
        }
        match request {
            Some(message) => self.send(message, fds),
            None => Ok(()),
        }
    }

    fn hello_ok(&mut self) -> Result<AuthMethod> {
        match self.recv()?.message {
            Message::HelloOk(ok) if ok.version() != PROTOCOL_VERSION => {
                Err(ProtocolError::Version(ok.version()).into())
            }
            Message::HelloOk(ok) => Ok(ok.auth()),
            Message::Error(e) => Err(e.into()),
            other => Err(Error::unexpected(other.tag(), "HelloOk")),
        }
    }

    /// Sends one frame.
    ///
    /// # Errors
    /// [`Error::ServerGone`] if the server has closed, [`Error::Io`] for other socket errors.
    pub(crate) fn send(&mut self, message: &Message, fds: Vec<OwnedFd>) -> Result<()> {
        send_message(self.sock.as_fd(), message, fds).map_err(Error::from_transport)
    }

    /// Reads the next frame, blocking.
    ///
    /// # Errors
    /// [`Error::ServerGone`] if the server closed, [`Error::Protocol`] for a bad frame,
    /// [`Error::Io`] for socket errors.
    pub(crate) fn recv(&mut self) -> Result<Frame> {
        self.reader
            .read_frame(self.sock.as_fd())
            .map_err(Error::from_transport)
    }

    /// The next frame if one is there already, without blocking.
    ///
    /// # Errors
    /// As [`Conn::recv`].
    pub(crate) fn try_recv(&mut self) -> Result<Option<Frame>> {
        loop {
            if let Some(frame) = self.reader.next_frame().map_err(Error::from_transport)? {
                return Ok(Some(frame));
            }
            let mut fds = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::ZERO) {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            // Readable (or hung up): this recvmsg does not block. EOF shows up as `Closed`
            // from next_frame on the next turn.
            self.reader
                .recv(self.sock.as_fd())
                .map_err(Error::from_transport)?;
        }
    }

    /// Notes that the connection is READY and kept from now on.
    pub(crate) fn mark_idle(&mut self) {
        self.idle_since = Some(Instant::now());
    }

    /// For a kept connection (PROTOCOL.md §6.6): nothing buffered, and, if it has been idle
    /// for longer than [`PROBE_AFTER_IDLE`], neither data nor end-of-file pending on the
    /// socket (one `recv(MSG_PEEK | MSG_DONTWAIT)`).
    ///
    /// Why a connection used recently goes without the probe (one system call less per
    /// spawn), with no loss of correctness: what the probe would find is a connection the
    /// server has closed (idle timeout, making room, shutting down, exiting), and each of
    /// those is also caught after the send, where it costs nothing until it happens:
    ///
    /// * closed on the server's side: the `sendmsg` fails with `EPIPE` (a Unix stream socket
    ///   whose peer is closed refuses data at once), the request was not delivered, and the
    ///   engine makes it again on a new connection;
    /// * about to be closed: the server sends `Error(Timeout / ResourceExhausted /
    ///   ShuttingDown)` before it closes and reads nothing more, so a request that crossed it
    ///   is answered by that `Error` and was not acted on ([`Conn::closed_without_acting`]):
    ///   made again, once, on a new connection. Stray frames cannot be there otherwise: a
    ///   connection is kept only once every request on it has been answered.
    ///
    /// The probe stays for connections idle longer, where the server's idle timeout (§6.3) is
    /// the likely cause: there it saves the failed round trip, and it catches a peer that
    /// shut down only its sending side, which the send would not notice.
    pub(crate) fn still_usable(&self) -> bool {
        if self.reader.buffered() != 0 || self.reader.pending_fds() != 0 {
            return false;
        }
        match self.idle_since {
            Some(t) if t.elapsed() < PROBE_AFTER_IDLE => true,
            _ => peek_pending(self.sock.as_fd()) == Pending::Nothing,
        }
    }

    /// Whether `reply`, read on this connection in answer to a request, says the server closed
    /// the kept connection on its own as the request went out, without acting on it
    /// (PROTOCOL.md §6.6): the request may be made again on a new connection.
    pub(crate) fn closed_without_acting(&self, reply: &forkserver_protocol::ErrorReply) -> bool {
        use forkserver_protocol::ErrorCode;
        self.reused
            && matches!(
                reply.code(),
                ErrorCode::Timeout | ErrorCode::ResourceExhausted | ErrorCode::ShuttingDown
            )
    }

    /// The socket, for callers that want to poll it.
    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
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
}

pub(crate) fn attempt(
    path: &Path,
    server_uid: u32,
    key: Option<&[u8]>,
    request: Option<(Message, Vec<OwnedFd>)>,
) -> std::result::Result<Conn, Failure> {
    let mut conn = Conn::connect(path, server_uid).map_err(|e| match e {
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
    })?;
    // Within the handshake, "closed" means our request was not read, or not answered at
    // all: the server sends `HelloOk` before it acts on a request, and queued replies are
    // read before the end of the stream.
    let (message, fds) = match request {
        Some((m, fds)) => (Some(m), fds),
        None => (None, Vec::new()),
    };
    conn.handshake(key, message.as_ref(), fds)
        .map_err(|e| match e {
            Error::ServerGone => Failure::Gone(e),
            e => Failure::Other(e),
        })?;
    Ok(conn)
}
