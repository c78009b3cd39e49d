//! Frames and their fds over an `AF_UNIX` stream socket (PROTOCOL.md §4.3): the crate's socket
//! I/O (the other module that touches the system, [`crate::socket_dir`], checks and makes the
//! socket's directory).
//!
//! Sending: a frame's fds are attached, at most [`SCM_MAX_FD`] per `sendmsg`, to bytes of that
//! frame. A frame with more than 253 fds goes out as several `sendmsg` calls: every call but the
//! last carries one byte of the frame and the next 253 fds; the last carries the rest of the frame
//! and the remaining fds. So all fds of a frame have arrived once its last byte has.
//!
//! Receiving: `recvmsg` with `MSG_CMSG_CLOEXEC` and room for 253 fds. The fds of one `recvmsg`
//! belong to the frame holding the last byte that call returned (Linux never returns the fds of
//! two `sendmsg` calls at once). When a frame is complete, the fds assigned to it must number
//! exactly its header's `nfds`; otherwise, or on `MSG_CTRUNC`, every fd received is closed and an
//! error is returned.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;

use nix::errno::Errno;
use nix::sys::socket::{recv, sendmsg, ControlMessage, MsgFlags, UnixAddr};

use crate::codec::Message;
use crate::error::DecodeError;
use crate::{MAX_FDS, SCM_MAX_FD};

/// What went wrong moving frames over the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportError {
    /// `sendmsg`/`recvmsg` failed (`EAGAIN` on a non-blocking socket included).
    Io(Errno),
    /// The peer closed the connection between frames.
    Closed,
    /// The peer closed the connection in the middle of a frame.
    ClosedMidFrame,
    /// The bytes are not a valid frame.
    Decode(DecodeError),
    /// The control buffer was too small (`MSG_CTRUNC`): some fds were lost. The ones that did
    /// arrive have been closed.
    ControlTruncated,
    /// The fds assigned to a frame do not number its header's `nfds`. They have been closed.
    FdMismatch {
        /// `nfds` from the header.
        expected: usize,
        /// fds that arrived for the frame.
        received: usize,
    },
    /// More than [`MAX_FDS`] fds given for one frame (caught before anything is sent).
    TooManyFds(usize),
    /// A header announces a frame longer than the reader's [`ReadLimits::max_frame`]. Refused
    /// at the header; every fd held has been closed.
    FrameTooLong {
        /// The frame length the header announces (header included).
        len: usize,
        /// The most the reader accepts now.
        max: usize,
    },
    /// fds arrived while the reader accepts none ([`ReadLimits::fds`]). They have been closed.
    UnexpectedFds(usize),
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "socket error: {e}"),
            Self::Closed => f.write_str("connection closed by peer"),
            Self::ClosedMidFrame => {
                f.write_str("connection closed by peer in the middle of a frame")
            }
            Self::Decode(e) => write!(f, "malformed frame: {e}"),
            Self::ControlTruncated => {
                f.write_str("control message truncated (MSG_CTRUNC); fds lost")
            }
            Self::FdMismatch { expected, received } => {
                write!(f, "frame announces {expected} fds but {received} arrived")
            }
            Self::TooManyFds(n) => write!(f, "{n} fds for one frame, at most {MAX_FDS} allowed"),
            Self::FrameTooLong { len, max } => {
                write!(
                    f,
                    "a frame of {len} bytes announced, at most {max} accepted now"
                )
            }
            Self::UnexpectedFds(n) => write!(f, "{n} fds received where none are accepted"),
        }
    }
}

impl std::error::Error for TransportError {}

impl From<DecodeError> for TransportError {
    fn from(e: DecodeError) -> Self {
        TransportError::Decode(e)
    }
}

impl From<Errno> for TransportError {
    fn from(e: Errno) -> Self {
        TransportError::Io(e)
    }
}

/// A frame being sent, possibly over several calls on a non-blocking socket.
#[derive(Debug)]
pub struct OutFrame {
    /// The frame's bytes, or all but its `tail`.
    bytes: Vec<u8>,
    /// A large entry payload, the frame's last bytes, sent from the message's own buffer
    /// (a second `iovec`) instead of being copied into `bytes`.
    tail: Option<Arc<Vec<u8>>>,
    fds: Vec<OwnedFd>,
    /// Bytes sent, of `bytes` then `tail`.
    pos: usize,
    fds_sent: usize,
}

impl OutFrame {
    /// Encodes `message` for sending with `fds`, which are closed when this is dropped (a
    /// sender may keep a sent frame, to close its fds when it has time).
    ///
    /// # Errors
    /// [`TransportError::FdMismatch`] when `fds.len()` is not `message.fd_count()`.
    pub fn new(message: &Message, fds: Vec<OwnedFd>) -> Result<Self, TransportError> {
        if fds.len() != message.fd_count() {
            return Err(TransportError::FdMismatch {
                expected: message.fd_count(),
                received: fds.len(),
            });
        }
        let (bytes, tail) = message.to_split_bytes();
        let mut frame = Self::from_parts(bytes, fds);
        frame.tail = tail;
        Ok(frame)
    }

    /// A frame from bytes already encoded, sent with `fds` as §4.3 says. A test hook (feature
    /// `test-hooks`), for tests that must send invalid frames; `bytes` must be at least
    /// `ceil(fds.len() / 253)` long.
    ///
    /// # Panics
    /// If `bytes` is too short to carry the fds (a caller bug).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn from_raw_parts(bytes: Vec<u8>, fds: Vec<OwnedFd>) -> Self {
        Self::from_parts(bytes, fds)
    }

    fn from_parts(bytes: Vec<u8>, fds: Vec<OwnedFd>) -> Self {
        assert!(bytes.len() >= fds.len().div_ceil(SCM_MAX_FD));
        Self {
            bytes,
            tail: None,
            fds,
            pos: 0,
            fds_sent: 0,
        }
    }

    /// The frame's length.
    fn len(&self) -> usize {
        self.bytes.len() + self.tail.as_ref().map_or(0, |t| t.len())
    }

    /// The frame's bytes `from..to`, as one or two slices.
    fn slices(&self, from: usize, to: usize) -> [IoSlice<'_>; 2] {
        let head = self.bytes.len();
        let tail: &[u8] = self.tail.as_deref().map_or(&[], Vec::as_slice);
        let first = &self.bytes[from.min(head)..to.min(head)];
        let second = &tail[from.max(head) - head..to.max(head) - head];
        [IoSlice::new(first), IoSlice::new(second)]
    }

    /// Takes back the fds not sent yet (all of them if no byte went out), for a caller that
    /// gives up on this frame and wants to use them otherwise.
    pub fn into_unsent_fds(mut self) -> Vec<OwnedFd> {
        self.fds.split_off(self.fds_sent)
    }

    /// Whether any byte has gone out yet.
    pub fn is_started(&self) -> bool {
        self.pos > 0
    }

    /// Whether every byte and fd has gone out.
    pub fn is_done(&self) -> bool {
        self.pos == self.len() && self.fds_sent == self.fds.len()
    }

    /// Sends as much as the socket takes; returns `Ok(())` once the whole frame is sent.
    ///
    /// # Errors
    /// [`TransportError::Io`] from `sendmsg` (`EAGAIN` included: call again when writable, and
    /// the rest goes out; `EPIPE` when the peer is gone: no `SIGPIPE` is raised).
    pub fn send(&mut self, sock: BorrowedFd<'_>) -> Result<(), TransportError> {
        while !self.is_done() {
            let fd_end = (self.fds_sent + SCM_MAX_FD).min(self.fds.len());
            let chunk: Vec<RawFd> = self.fds[self.fds_sent..fd_end]
                .iter()
                .map(AsRawFd::as_raw_fd)
                .collect();
            // §4.3: while fds remain for later calls, this call carries a single byte.
            let data_end = if fd_end < self.fds.len() {
                self.pos + 1
            } else {
                self.len()
            };
            let iov = self.slices(self.pos, data_end);
            let cmsg = [ControlMessage::ScmRights(&chunk)];
            let cmsgs: &[ControlMessage<'_>] = if chunk.is_empty() { &[] } else { &cmsg };
            match sendmsg::<UnixAddr>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
                Ok(n) => {
                    self.pos += n;
                    if n > 0 {
                        self.fds_sent = fd_end;
                    }
                }
                Err(Errno::EINTR) => {}
                Err(e) => return Err(TransportError::Io(e)),
            }
        }
        // The fds are in the peer's queue now; our copies close when this is dropped.
        Ok(())
    }
}

/// Sends `message` with `fds` on a blocking socket.
///
/// # Errors
/// As [`OutFrame::new`] and [`OutFrame::send`].
pub fn send_message(
    sock: BorrowedFd<'_>,
    message: &Message,
    fds: Vec<OwnedFd>,
) -> Result<(), TransportError> {
    OutFrame::new(message, fds)?.send(sock)
}

/// What a socket holds for reading, found by [`peek_pending`] without taking anything from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// Nothing to read, and the peer's end is open (`EAGAIN`).
    Nothing,
    /// At least one byte (perhaps with fds) waits to be read.
    Input,
    /// The peer has closed its sending side.
    Eof,
    /// `recv` failed otherwise (`ECONNRESET`, `ENOTCONN`, ...).
    Failed(Errno),
}

/// Looks at what `sock` holds for reading, without blocking and without taking it: one
/// `recv(MSG_PEEK | MSG_DONTWAIT)` of one byte (PROTOCOL.md §6.6). For a stream socket that must
/// be quiet between requests: a connection kept for reuse, a pooled child waiting for its job,
/// a connection about to be refused.
pub fn peek_pending(sock: BorrowedFd<'_>) -> Pending {
    let mut byte = [0u8; 1];
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    loop {
        return match recv(sock.as_raw_fd(), &mut byte, flags) {
            Ok(0) => Pending::Eof,
            Ok(_) => Pending::Input,
            Err(Errno::EAGAIN) => Pending::Nothing,
            Err(Errno::EINTR) => continue,
            Err(e) => Pending::Failed(e),
        };
    }
}

/// A received frame: the message and the fds that travelled with it, in order.
#[derive(Debug)]
pub struct Frame {
    /// The message.
    pub message: Message,
    /// Its fds (`message.fd_count()` of them), close-on-exec.
    pub fds: Vec<OwnedFd>,
}

mod reader;

pub use reader::{FrameReader, ReadLimits};
