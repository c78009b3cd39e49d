//! Receiving: [`FrameReader`] reassembles frames and their fds, one `recvmsg` at a time, within
//! the [`ReadLimits`] of the connection's state.

use std::collections::VecDeque;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};

use super::{Frame, TransportError};
use crate::codec::{decode_lending, Decoded, Header};
use crate::{HEADER_LEN, MAX_FDS, MAX_FRAME_LEN, MAX_HANDSHAKE_FRAME_LEN, SCM_MAX_FD};

/// What a [`FrameReader`] accepts now. A server narrows it for a connection that has not
/// completed its handshake (PROTOCOL.md §6.3, §9.3), and widens it to [`ReadLimits::FULL`] once
/// the connection is READY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// Longest frame accepted, header included: a header announcing a longer one is refused
    /// as soon as it is complete, before any of its body is buffered.
    pub max_frame: usize,
    /// Most bytes asked of one `recvmsg` (at most [`FrameReader::RECV_MAX`]).
    pub max_read: usize,
    /// Whether fds are accepted at all: when not, fds that arrive are closed at once and
    /// [`TransportError::UnexpectedFds`] is returned.
    pub fds: bool,
}

impl ReadLimits {
    /// Everything the protocol allows: a READY connection.
    pub const FULL: ReadLimits = ReadLimits {
        max_frame: MAX_FRAME_LEN,
        max_read: READ_CHUNK,
        fds: true,
    };
    /// Before the handshake on a server without a key: the frame at the head must be
    /// handshake-sized; requests pipelined behind `Hello` (and their fds) are read as usual.
    pub const HANDSHAKE: ReadLimits = ReadLimits {
        max_frame: MAX_HANDSHAKE_FRAME_LEN,
        max_read: READ_CHUNK,
        fds: true,
    };
    /// Before authentication (a server with a key): handshake-sized frames, read at most one
    /// frame's worth at a time (so at most twice [`MAX_HANDSHAKE_FRAME_LEN`] bytes are held),
    /// and no fd (§9.2: a client sends none before the check has passed).
    pub const PRE_AUTH: ReadLimits = ReadLimits {
        max_frame: MAX_HANDSHAKE_FRAME_LEN,
        max_read: MAX_HANDSHAKE_FRAME_LEN,
        fds: false,
    };
}

/// Reassembles frames and their fds from a stream socket, one `recvmsg` at a time.
#[derive(Debug)]
pub struct FrameReader {
    /// Received bytes in `buf[..len]`; the rest is initialised room for the next `recvmsg`
    /// (zeroed when it grew, stale bytes after consumed frames moved down), kept between calls
    /// so that a read writes only the bytes it receives (no per-read memset: in a server that
    /// forks, every page written after a fork is a copy-on-write fault).
    buf: Vec<u8>,
    len: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
    /// Received fds not yet handed out, each with the stream offset of the last byte of the
    /// `recvmsg` that brought it.
    fds: VecDeque<(u64, OwnedFd)>,
    /// The control buffer of `recvmsg`, zeroed before each call.
    cmsg: Vec<u8>,
    eof: bool,
    limits: ReadLimits,
    /// What the last `recvmsg` asked for ([`FrameReader::last_ask`]).
    last_ask: usize,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self::new()
    }
}

/// Bytes asked of each `recvmsg`.
const READ_CHUNK: usize = 16 * 1024;

fn cmsg_space_for(nfds: usize) -> usize {
    let align = |n: usize| n.div_ceil(std::mem::size_of::<usize>()) * std::mem::size_of::<usize>();
    align(std::mem::size_of::<nix::libc::cmsghdr>()) + align(nfds * std::mem::size_of::<RawFd>())
}

impl FrameReader {
    /// A reader with room for [`SCM_MAX_FD`] fds per `recvmsg`, which is all any one `sendmsg`
    /// can carry.
    pub fn new() -> Self {
        Self::with_cmsg_room(SCM_MAX_FD)
    }

    /// A reader whose control buffer holds only `nfds` fds per `recvmsg`. A peer that sends more
    /// in one call causes [`TransportError::ControlTruncated`]; a test hook (feature
    /// `test-hooks`) for that path.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn with_fd_capacity(nfds: usize) -> Self {
        Self::with_cmsg_room(nfds)
    }

    fn with_cmsg_room(nfds: usize) -> Self {
        Self {
            buf: Vec::new(),
            len: 0,
            base: 0,
            fds: VecDeque::new(),
            cmsg: vec![0; cmsg_space_for(nfds)],
            eof: false,
            limits: ReadLimits::FULL,
            last_ask: 0,
        }
    }

    /// Changes what this reader accepts from now on (the frame being received included).
    pub fn set_limits(&mut self, limits: ReadLimits) {
        self.limits = limits;
    }

    /// Whether part of a frame has been received: bytes or fds held, the frame incomplete
    /// (or complete frames not taken yet).
    pub fn holds_partial_frame(&self) -> bool {
        self.len > 0 || !self.fds.is_empty()
    }

    /// Bytes received and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.len
    }

    /// fds received and not yet handed out with a frame.
    pub fn pending_fds(&self) -> usize {
        self.fds.len()
    }

    /// The most bytes one [`FrameReader::recv`] asks for between frames, or while a frame no
    /// longer than this is received (a longer one is read in larger steps:
    /// [`FrameReader::last_ask`]). A call that returns fewer than it asked usually found the
    /// socket drained, but not always: a Unix stream `recvmsg` also stops after a chunk that
    /// carried fds. A level-triggered poller reports whatever is left.
    pub const RECV_MAX: usize = READ_CHUNK;

    fn fail(&mut self, e: TransportError) -> TransportError {
        // Standards: every fd received is closed on any error.
        self.fds.clear();
        e
    }

    /// The bytes the next [`FrameReader::recv`] asks for: [`FrameReader::RECV_MAX`] (or the
    /// limits' `max_read`), or, while a frame longer than that is being received within the
    /// limits, up to the rest of that frame but never more than what has been received of it
    /// already. So a 1 MiB frame takes ~7 calls instead of 64, and the memory a peer makes
    /// this reader touch stays at most twice what it has sent, and within `max_frame`.
    fn next_ask(&self) -> usize {
        let base = self.limits.max_read.clamp(1, READ_CHUNK);
        if self.limits.max_read < READ_CHUNK || self.len < HEADER_LEN {
            return base;
        }
        let Ok(Some(h)) = Header::parse(&self.buf[..HEADER_LEN]) else {
            return base;
        };
        let frame = h.frame_len();
        if frame > self.limits.max_frame || frame <= self.len {
            return base;
        }
        (frame - self.len).min(self.len).max(base)
    }

    /// The bytes the last [`FrameReader::recv`] asked for: a call that returned fewer most
    /// likely found the socket drained.
    pub fn last_ask(&self) -> usize {
        self.last_ask
    }

    /// One `recvmsg`. Returns the bytes read; 0 means the peer closed its side.
    ///
    /// # Errors
    /// [`TransportError::Io`] (`EAGAIN` on a non-blocking socket when nothing is there),
    /// [`TransportError::ControlTruncated`], or [`TransportError::TooManyFds`] when a peer
    /// piles up fds that no frame announced.
    pub fn recv(&mut self, sock: BorrowedFd<'_>) -> Result<usize, TransportError> {
        let old_len = self.len;
        let ask = self.next_ask();
        self.last_ask = ask;
        if self.buf.len() < old_len + ask {
            self.buf.resize(old_len + ask, 0);
        }
        self.cmsg.fill(0);
        let cmsg = &mut self.cmsg;
        let result = loop {
            let mut iov = [IoSliceMut::new(&mut self.buf[old_len..old_len + ask])];
            match recvmsg::<UnixAddr>(
                sock.as_raw_fd(),
                &mut iov,
                Some(cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(Errno::EINTR) => continue,
                Err(e) => break Err(e),
                Ok(msg) => {
                    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
                    let mut got = Vec::new();
                    if !truncated {
                        if let Ok(cmsgs) = msg.cmsgs() {
                            for c in cmsgs {
                                if let ControlMessageOwned::ScmRights(fds) = c {
                                    got.extend(fds);
                                }
                            }
                        }
                    }
                    break Ok((msg.bytes, truncated, got));
                }
            }
        };
        let (n, truncated, raw) = match result {
            Ok(r) => r,
            Err(e) => return Err(TransportError::Io(e)),
        };
        self.len = old_len + n;
        if truncated {
            // The kernel installed the fds that fit and dropped the rest: find and close those
            // it installed, from the control buffer itself.
            drop(owned_fds(scm_rights_in(&self.cmsg)));
            return Err(self.fail(TransportError::ControlTruncated));
        }
        let owned = owned_fds(raw);
        if !self.limits.fds && !owned.is_empty() {
            let n = owned.len();
            drop(owned);
            return Err(self.fail(TransportError::UnexpectedFds(n)));
        }
        if n == 0 {
            self.eof = true;
            // fds without data cannot happen on a stream socket; close any all the same.
            drop(owned);
            return Ok(0);
        }
        let last = self.base + self.len as u64 - 1;
        self.fds.extend(owned.into_iter().map(|fd| (last, fd)));
        if self.fds.len() > MAX_FDS + SCM_MAX_FD {
            let n = self.fds.len();
            return Err(self.fail(TransportError::TooManyFds(n)));
        }
        Ok(n)
    }

    /// The next complete frame, if the bytes received so far hold one.
    ///
    /// # Errors
    /// [`TransportError::Decode`] for invalid bytes, [`TransportError::FdMismatch`] when the fds
    /// disagree with the header, [`TransportError::Closed`]/[`TransportError::ClosedMidFrame`]
    /// once the peer has closed and no frame remains. Every held fd is closed on error.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, TransportError> {
        let received = &self.buf[..self.len];
        if self.limits.max_frame < MAX_FRAME_LEN {
            // Refused at the header: the body of a frame too long for now is never buffered.
            if let Ok(Some(h)) = Header::parse(&received[..received.len().min(HEADER_LEN)]) {
                if h.frame_len() > self.limits.max_frame {
                    let (len, max) = (h.frame_len(), self.limits.max_frame);
                    return Err(self.fail(TransportError::FrameTooLong { len, max }));
                }
            }
        }
        let (decoded, lent) = match decode_lending(received) {
            Ok(d) => d,
            Err(e) => return Err(self.fail(TransportError::Decode(e))),
        };
        match decoded {
            Decoded::Incomplete { .. } => {
                // fds already assigned to this unfinished frame may not exceed its nfds.
                if let Ok(Some(h)) = Header::parse(&received[..received.len().min(HEADER_LEN)]) {
                    let end = self.base + self.len as u64;
                    let assigned = self.fds.iter().take_while(|(o, _)| *o < end).count();
                    if assigned > usize::from(h.nfds) {
                        return Err(self.fail(TransportError::FdMismatch {
                            expected: usize::from(h.nfds),
                            received: assigned,
                        }));
                    }
                }
                if self.eof {
                    let e = if self.len == 0 {
                        TransportError::Closed
                    } else {
                        TransportError::ClosedMidFrame
                    };
                    return Err(self.fail(e));
                }
                Ok(None)
            }
            Decoded::Frame {
                mut message,
                consumed,
            } => {
                let end = self.base + consumed as u64;
                let assigned = self.fds.iter().take_while(|(o, _)| *o < end).count();
                // §4.3: the fds of a frame have all arrived once its last byte has.
                if assigned != message.fd_count() {
                    return Err(self.fail(TransportError::FdMismatch {
                        expected: message.fd_count(),
                        received: assigned,
                    }));
                }
                let fds = self.fds.drain(..assigned).map(|(_, fd)| fd).collect();
                if let Some(n) = lent {
                    // The payload is the frame's last `n` bytes. Alone in the buffer, the
                    // frame gives the payload its buffer (the bytes moved to its start, in pages
                    // already touched); otherwise they are copied.
                    let start = consumed.saturating_sub(n);
                    let payload = if consumed == self.len {
                        let mut b = std::mem::take(&mut self.buf);
                        b.copy_within(start..consumed, 0);
                        b.truncate(consumed - start);
                        b
                    } else {
                        self.buf[start..consumed].to_vec()
                    };
                    message.fill_lent(payload);
                }
                if consumed < self.len {
                    self.buf.copy_within(consumed..self.len, 0);
                }
                self.len -= consumed;
                self.base += consumed as u64;
                // A big frame must not pin its memory for the rest of the connection.
                if self.len == 0 && self.buf.len() > 4 * READ_CHUNK {
                    self.buf = Vec::new();
                }
                Ok(Some(Frame { message, fds }))
            }
        }
    }

    /// Reads until a whole frame is there, on a blocking socket.
    ///
    /// # Errors
    /// As [`FrameReader::recv`] and [`FrameReader::next_frame`].
    pub fn read_frame(&mut self, sock: BorrowedFd<'_>) -> Result<Frame, TransportError> {
        loop {
            if let Some(f) = self.next_frame()? {
                return Ok(f);
            }
            self.recv(sock)?;
        }
    }
}

fn owned_fds(raw: Vec<RawFd>) -> Vec<OwnedFd> {
    raw.into_iter()
        // SAFETY: each fd was just installed in this process by recvmsg(SCM_RIGHTS) and is owned
        // by nothing else; wrapping it makes this code its only owner, which closes it on drop.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect()
}

/// The fds of every `SCM_RIGHTS` message in a control buffer the kernel filled, read with plain
/// byte arithmetic (nix declines to parse a truncated buffer). The buffer was zeroed before the
/// call, so a zero `cmsg_len` marks the end.
fn scm_rights_in(buf: &[u8]) -> Vec<RawFd> {
    let word = std::mem::size_of::<usize>();
    let align = |n: usize| n.div_ceil(word) * word;
    let hdr = std::mem::size_of::<nix::libc::cmsghdr>();
    let mut fds = Vec::new();
    let mut off = 0;
    while off + hdr <= buf.len() {
        let mut len_bytes = [0u8; std::mem::size_of::<usize>()];
        len_bytes.copy_from_slice(&buf[off..off + word]);
        let len = usize::from_ne_bytes(len_bytes);
        let level =
            i32::from_ne_bytes(buf[off + word..off + word + 4].try_into().unwrap_or([0; 4]));
        let kind = i32::from_ne_bytes(
            buf[off + word + 4..off + word + 8]
                .try_into()
                .unwrap_or([0; 4]),
        );
        if len < hdr || off + len > buf.len() {
            break;
        }
        if level == nix::libc::SOL_SOCKET && kind == nix::libc::SCM_RIGHTS {
            for c in buf[off + hdr..off + len].chunks_exact(4) {
                fds.push(RawFd::from_ne_bytes([c[0], c[1], c[2], c[3]]));
            }
        }
        off += align(len);
    }
    fds
}
