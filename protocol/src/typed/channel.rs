//! The result channel's I/O (PROTOCOL.md §11.3): a `SOCK_SEQPACKET` socketpair, one result
//! frame per message, fds with `SCM_RIGHTS`.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType, UnixAddr,
};

use super::frame::{FrameError, ResultFrame, MAX_RESULT_FRAME_LEN};
use crate::SCM_MAX_FD;

/// What reading the result channel gave.
#[derive(Debug)]
pub enum Received {
    /// A frame and the fds attached to it.
    Frame(ResultFrame, Vec<OwnedFd>),
    /// The other end is closed (every copy of it), with nothing left to read.
    Closed,
    /// Nothing to read now (non-blocking reads only).
    Empty,
}

/// Why a read of the result channel failed. Every fd received with a bad frame is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// `recvmsg`/`sendmsg` failed.
    #[error("result channel: {0}")]
    Io(Errno),
    /// The message is not a valid frame (or its fds are not what it announces).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// More fds than fit the control buffer (`MSG_CTRUNC`).
    #[error("result channel: fds lost (control buffer truncated)")]
    ControlTruncated,
}

/// A new result channel: `(client's end, child's end)`, both close-on-exec.
///
/// # Errors
/// What `socketpair(2)` reports.
pub fn channel_pair() -> Result<(OwnedFd, OwnedFd), Errno> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
}

/// Sends one frame with `fds` attached (at most [`SCM_MAX_FD`]), retrying on `EINTR`; no
/// `SIGPIPE` if the client has gone.
///
/// # Errors
/// What `sendmsg(2)` reports (`EPIPE` when the client has closed its end), `E2BIG` for too
/// many fds.
pub fn send_frame(sock: BorrowedFd<'_>, frame: &ResultFrame, fds: &[RawFd]) -> Result<(), Errno> {
    if fds.len() > SCM_MAX_FD {
        return Err(Errno::E2BIG);
    }
    let bytes = frame.encode();
    let iov = [IoSlice::new(&bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    loop {
        match sendmsg::<UnixAddr>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
            Ok(_) => return Ok(()),
        }
    }
}

/// Reads one message; `block: false` returns [`Received::Empty`] instead of waiting.
///
/// # Errors
/// [`ChannelError`]; the fds that came with a refused message are closed.
pub fn recv_frame(sock: BorrowedFd<'_>, block: bool) -> Result<Received, ChannelError> {
    thread_local! {
        // One receive buffer per thread, made once: a frame is copied out of it when decoded.
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with(|b| {
        let mut buf = b.borrow_mut();
        if buf.len() <= MAX_RESULT_FRAME_LEN {
            buf.resize(MAX_RESULT_FRAME_LEN + 1, 0);
        }
        recv_into(sock, block, &mut buf)
    })
}

fn recv_into(sock: BorrowedFd<'_>, block: bool, buf: &mut [u8]) -> Result<Received, ChannelError> {
    let mut cmsg = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    let mut flags = MsgFlags::MSG_CMSG_CLOEXEC;
    if !block {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    let (len, truncated, ctrunc, fds) = loop {
        let mut iov = [IoSliceMut::new(buf)];
        match recvmsg::<UnixAddr>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), flags) {
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) if !block => return Ok(Received::Empty),
            Err(e) => return Err(ChannelError::Io(e)),
            Ok(msg) => {
                let mut fds = Vec::new();
                for c in msg.cmsgs().map_err(ChannelError::Io)? {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        for fd in raw {
                            // SAFETY: the kernel installed this fd in our table for this
                            // message (MSG_CMSG_CLOEXEC); nothing else owns it yet.
                            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                        }
                    }
                }
                let f = msg.flags;
                break (
                    msg.bytes,
                    f.contains(MsgFlags::MSG_TRUNC),
                    f.contains(MsgFlags::MSG_CTRUNC),
                    fds,
                );
            }
        }
    };
    if ctrunc {
        return Err(ChannelError::ControlTruncated);
    }
    // §11.3: frames are never empty, so a zero-length read is the end of the channel.
    if len == 0 && fds.is_empty() {
        return Ok(Received::Closed);
    }
    if truncated || len > MAX_RESULT_FRAME_LEN {
        return Err(FrameError::TooLong.into());
    }
    let frame = ResultFrame::decode(&buf[..len])?;
    let announced = match &frame {
        ResultFrame::Value { nfds, .. } | ResultFrame::Request { nfds, .. } => usize::from(*nfds),
        _ => 0,
    };
    if announced != fds.len() {
        return Err(FrameError::FdCount.into());
    }
    Ok(Received::Frame(frame, fds))
}
