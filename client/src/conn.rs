//! One connection to the server: the handshake, then frames (PROTOCOL.md §6).
//!
//! The client pipelines: it sends `Hello` and its request back to back, then reads `HelloOk` and
//! the reply, saving a round trip per request. That is only sound while the client never
//! authenticates; with key support, a client holding a key must wait for `HelloOk` first.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use forkserver_protocol::{
    send_message, AuthMethod, Frame, FrameReader, Hello, Message, PROTOCOL_VERSION,
};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::error::{Error, ProtocolError, Result};

/// A blocking connection and the frames read from it so far.
#[derive(Debug)]
pub(crate) struct Conn {
    sock: UnixStream,
    reader: FrameReader,
}

impl Conn {
    /// Connects to the socket at `path`; no byte is sent yet.
    pub(crate) fn connect(path: &Path) -> io::Result<Self> {
        UnixStream::connect(path).map(Self::new)
    }

    pub(crate) fn new(sock: UnixStream) -> Self {
        Self {
            sock,
            reader: FrameReader::new(),
        }
    }

    /// Performs the handshake, with `request` (and its fds) pipelined behind `Hello` if given;
    /// returns once `HelloOk` has been read. The reply to `request` is left for the caller.
    ///
    /// # Errors
    /// [`Error::AuthRequired`] if the server demands authentication, [`Error::Server`] for an
    /// error reply to `Hello`, [`Error::ServerGone`], [`Error::Protocol`], [`Error::Io`].
    pub(crate) fn handshake(&mut self, request: Option<&Message>, fds: Vec<OwnedFd>) -> Result<()> {
        self.send(&Message::Hello(Hello::current()), Vec::new())?;
        // If the server has already refused the hello and closed, this send fails; its reply
        // to the hello (read below) is then the better error to report.
        let sent = match request {
            Some(message) => self.send(message, fds),
            None => Ok(()),
        };
        match self.recv()?.message {
            Message::HelloOk(ok) => {
                if ok.version() != PROTOCOL_VERSION {
                    return Err(ProtocolError::Version(ok.version()).into());
                }
                if let AuthMethod::HmacSha256 { .. } = ok.auth() {
                    return Err(Error::AuthRequired);
                }
            }
            Message::Error(e) => return Err(e.into()),
            other => return Err(Error::unexpected(other.tag(), "HelloOk")),
        }
        sent
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

    /// The socket, for callers that want to poll it.
    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}
