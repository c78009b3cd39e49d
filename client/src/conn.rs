//! One connection to the server: connecting to a verified socket (PROTOCOL.md §9.3), then
//! frames, blocking or (for the async client) in non-blocking steps. The handshake is
//! `handshake.rs`'s.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use forkserver_protocol::socket_dir::{self, DirError, Sharing, SocketDir};
use forkserver_protocol::{peek_pending, send_message, Frame, FrameReader, Message, Pending};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::getsockopt;
use nix::sys::socket::sockopt::PeerCredentials;

use crate::error::{Error, Result};

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
    /// The socket is in non-blocking mode (the async client's steps).
    nonblocking: bool,
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
        let (dir, name) = Self::checked_dir(path, server_uid)?;
        let sock = UnixStream::connect(dir.entry(&name)).map_err(ConnectError::Io)?;
        Self::verified(sock, server_uid)
    }

    /// The first half of [`Conn::connect`]: the socket's directory, checked, and the name
    /// to connect to through it.
    pub(crate) fn checked_dir(
        path: &Path,
        server_uid: u32,
    ) -> std::result::Result<(SocketDir, std::ffi::OsString), ConnectError> {
        let (dir, name) = socket_dir::split(path).map_err(ConnectError::Untrusted)?;
        let sharing = if server_uid == nix::unistd::geteuid().as_raw() {
            Sharing::Private
        } else {
            Sharing::Readable
        };
        match SocketDir::open(dir, server_uid, sharing) {
            Ok(dir) => Ok((dir, name.to_owned())),
            // Nothing there yet: no server (the caller may start one).
            Err(DirError::Io { errno, .. }) if errno == Errno::ENOENT => {
                Err(ConnectError::Io(io::Error::from_raw_os_error(errno as i32)))
            }
            Err(e) => Err(ConnectError::Untrusted(e)),
        }
    }

    /// The second half of [`Conn::connect`]: the connected socket, once its peer is checked.
    pub(crate) fn verified(
        sock: UnixStream,
        server_uid: u32,
    ) -> std::result::Result<Self, ConnectError> {
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
            nonblocking: false,
        }
    }

    /// Sets (or clears) the timeout of blocking reads (the handshake's bound).
    ///
    /// # Errors
    /// From `setsockopt(SO_RCVTIMEO)`.
    pub(crate) fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(timeout)
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

    /// Notes that the connection is READY and kept from now on; its socket blocks again.
    ///
    /// # Errors
    /// If the socket's mode cannot be set (the connection is then not kept).
    pub(crate) fn mark_idle(&mut self) -> io::Result<()> {
        self.set_nonblocking(false)?;
        self.idle_since = Some(Instant::now());
        Ok(())
    }

    /// Puts the socket in non-blocking mode, for [`Conn::send_step`] and [`Conn::recv_step`],
    /// or back.
    ///
    /// # Errors
    /// From `ioctl(FIONBIO)`.
    pub(crate) fn set_nonblocking(&mut self, on: bool) -> io::Result<()> {
        if self.nonblocking != on {
            self.sock.set_nonblocking(on)?;
            self.nonblocking = on;
        }
        Ok(())
    }

    #[cfg(feature = "tokio")]
    /// Sends what the socket takes of `out` without blocking (the socket non-blocking):
    /// `true` once all of it is sent, `false` when the rest must wait until it is writable.
    ///
    /// # Errors
    /// As [`Conn::send`].
    pub(crate) fn send_step(&mut self, out: &mut forkserver_protocol::OutFrame) -> Result<bool> {
        use forkserver_protocol::TransportError;
        match out.send(self.sock.as_fd()) {
            Ok(()) => Ok(true),
            Err(TransportError::Io(Errno::EAGAIN)) => Ok(false),
            Err(e) => Err(Error::from_transport(e)),
        }
    }

    #[cfg(feature = "tokio")]
    /// The next frame if it can be had without blocking (the socket non-blocking); `None`
    /// when the rest must wait until the socket is readable.
    ///
    /// # Errors
    /// As [`Conn::recv`].
    pub(crate) fn recv_step(&mut self) -> Result<Option<Frame>> {
        use forkserver_protocol::TransportError;
        loop {
            if let Some(frame) = self.reader.next_frame().map_err(Error::from_transport)? {
                return Ok(Some(frame));
            }
            match self.reader.recv(self.sock.as_fd()) {
                Ok(_) => {}
                Err(TransportError::Io(Errno::EAGAIN)) => return Ok(None),
                Err(e) => return Err(Error::from_transport(e)),
            }
        }
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
