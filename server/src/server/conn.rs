//! One connection's own state: its socket, the frames it has received (its reader), the
//! replies waiting to go out, its session (the §6.1 state machine), and the side effects of
//! that state which are in force. Only this module touches a [`Conn`]'s fields; the event loop
//! (`connections.rs`) drives it through its methods.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use forkserver_protocol::{
    peek_pending, ErrorReply, Frame, FrameReader, OutFrame, Pending, ReadLimits, TransportError,
};
use nix::errno::Errno;
use nix::sys::epoll::EpollFlags;

use crate::session::{Session, State};
use crate::timers::Key;

/// Frames queued for a client that does not read; past this its connection stops being read.
const MAX_QUEUED_REPLIES: usize = 64;

/// A connection accepted and registered in the epoll set, until it is closed.
pub(super) struct Conn {
    fd: OwnedFd,
    reader: FrameReader,
    out: VecDeque<OutFrame>,
    /// The §6.1 state machine (sans-IO).
    session: Session,
    /// The state whose side effects (read limits, quotas, timers) are in force: it catches
    /// up with the session's in [`Conn::apply_state`].
    applied: State,
    /// What the fd is registered for in the epoll set.
    interest: EpollFlags,
    /// When the connection last entered `Ready`: the longest idle one is closed first when
    /// room is needed for a new connection.
    ready_since: Instant,
    /// The key of the timer armed when the reader started holding a partial frame (§6.3).
    partial: Option<Key>,
    /// The peer runs as another uid than the server's (`allowed_uids`).
    foreign: bool,
}

impl Conn {
    /// A connection just accepted at `now`, in AWAIT_HELLO, read with `limits`, registered in
    /// the epoll set with `interest`; `foreign` when its peer runs as another uid than the
    /// server's.
    pub(super) fn new(
        fd: OwnedFd,
        limits: ReadLimits,
        interest: EpollFlags,
        now: Instant,
        foreign: bool,
    ) -> Self {
        let mut reader = FrameReader::new();
        reader.set_limits(limits);
        Self {
            fd,
            reader,
            out: VecDeque::new(),
            session: Session::new(),
            applied: State::AwaitHello,
            interest,
            ready_since: now,
            partial: None,
            foreign,
        }
    }

    /// Whether the peer runs as another uid than the server's: its exec jobs are forked, not
    /// run on the `CLONE_VM` path, which holds the server until the child's `execve` (a cwd or
    /// program on a file system that peer controls, e.g. a hung FUSE mount, would stall every
    /// other client).
    pub(super) fn is_foreign(&self) -> bool {
        self.foreign
    }

    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The session's state.
    pub(super) fn state(&self) -> State {
        self.session.state()
    }

    /// The state whose side effects are in force (it lags [`Conn::state`] until
    /// [`Conn::apply_state`]).
    pub(super) fn applied(&self) -> State {
        self.applied
    }

    pub(super) fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    /// When the connection last entered `Ready`.
    pub(super) fn ready_since(&self) -> Instant {
        self.ready_since
    }

    /// READY with nothing received or queued: a connection a client keeps for reuse (§6.6).
    pub(super) fn is_idle(&self) -> bool {
        self.state() == State::Ready && self.out.is_empty() && self.reader.buffered() == 0
    }

    /// In AWAIT_HELLO with nothing received, read or not: what a handshake quota closes first.
    pub(super) fn is_silent(&self) -> bool {
        self.state() == State::AwaitHello
            && !self.reader.holds_partial_frame()
            && !self.has_unread_input()
    }

    /// Whether the peer has sent bytes (or fds) that have not been read yet, or closed its end.
    pub(super) fn has_unread_input(&self) -> bool {
        peek_pending(self.fd.as_fd()) != Pending::Nothing
    }

    /// Whether the connection takes more input now: not once it is closing, not while its
    /// Spawn waits for the exec (frames behind it wait for its Pid, §6.1), and not while its
    /// replies pile up unread (backpressure).
    pub(super) fn wants_input(&self) -> bool {
        !matches!(self.state(), State::Closing | State::Spawning(_))
            && self.out.len() < MAX_QUEUED_REPLIES
    }

    /// Whether the reader holds bytes received but not handled yet.
    pub(super) fn has_buffered_input(&self) -> bool {
        self.reader.buffered() > 0
    }

    /// One `recvmsg` into the reader: the bytes received.
    pub(super) fn recv(&mut self) -> Result<usize, TransportError> {
        self.reader.recv(self.fd.as_fd())
    }

    /// What the last [`Conn::recv`] asked for: fewer bytes means the socket is most likely
    /// drained.
    pub(super) fn last_ask(&self) -> usize {
        self.reader.last_ask()
    }

    /// The next whole frame received, if there is one. The next frame, if one has started,
    /// gets a timer of its own.
    pub(super) fn next_frame(&mut self) -> Result<Option<Frame>, TransportError> {
        let frame = self.reader.next_frame()?;
        if frame.is_some() {
            self.partial = None;
        }
        Ok(frame)
    }

    /// After the frames received were handled: whether the reader holds part of a frame that
    /// has no timer yet ([`Conn::time_partial_frame`]). The timer of a frame completed is
    /// forgotten.
    pub(super) fn partial_frame_untimed(&mut self) -> bool {
        if !self.reader.holds_partial_frame() {
            self.partial = None;
        }
        self.reader.holds_partial_frame() && self.partial.is_none()
    }

    /// The partial frame held now has timer `key`.
    pub(super) fn time_partial_frame(&mut self, key: Key) {
        self.partial = Some(key);
    }

    /// Whether `key` is the timer of the partial frame held now.
    pub(super) fn is_partial_frame_timer(&self, key: Key) -> bool {
        self.partial == Some(key)
    }

    /// Timer `key` of a partial frame expired: whether it is this connection's and the frame
    /// is still not whole while the server reads (then it has timed out). A frame held behind a
    /// Spawn, or behind unread replies, waits for the server, and gets a new timer when
    /// reading resumes.
    pub(super) fn partial_frame_expired(&mut self, key: Key) -> bool {
        if self.partial != Some(key) {
            return false;
        }
        self.partial = None;
        self.wants_input() && self.reader.holds_partial_frame()
    }

    /// Puts the side effects of the session's state that are the connection's own in force,
    /// once per change: READY's read limits and idle clock; nothing more read once closing.
    /// Returns the state that was in force before, if the state changed.
    pub(super) fn apply_state(&mut self) -> Option<State> {
        let (old, state) = (self.applied, self.state());
        if old == state {
            return None;
        }
        self.applied = state;
        if state == State::Ready {
            self.ready_since = Instant::now();
            self.reader.set_limits(ReadLimits::FULL);
        }
        if state == State::Closing {
            // Nothing more is read: drop what was received, and its fds.
            self.reader = FrameReader::new();
        }
        Some(old)
    }

    /// Queues a reply.
    pub(super) fn queue(&mut self, out: OutFrame) {
        self.out.push_back(out);
    }

    /// Sends the replies queued, until the socket's buffer is full.
    ///
    /// # Errors
    /// The send failed otherwise: the peer is gone.
    pub(super) fn flush(&mut self) -> Result<(), TransportError> {
        while let Some(front) = self.out.front_mut() {
            match front.send(self.fd.as_fd()) {
                Ok(_) => {
                    self.out.pop_front();
                }
                Err(TransportError::Io(Errno::EAGAIN)) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Closing, with every reply sent: the connection is done.
    pub(super) fn is_done(&self) -> bool {
        self.out.is_empty() && self.state() == State::Closing
    }

    /// The epoll interest the connection needs now, if it is not the one registered (which it
    /// becomes). Level-triggered: writability only while replies wait, input (and the peer's
    /// hang-up) only while the connection takes input.
    pub(super) fn update_interest(&mut self) -> Option<EpollFlags> {
        let mut want = EpollFlags::empty();
        if !self.out.is_empty() {
            want |= EpollFlags::EPOLLOUT;
        }
        if self.wants_input() {
            want |= EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        }
        (want != self.interest).then(|| {
            self.interest = want;
            want
        })
    }
}

/// Tells a connection that is not going to be served why, best effort (it is closed next;
/// nothing waits for a peer that does not read).
pub(super) fn refuse(fd: BorrowedFd<'_>, reply: ErrorReply) {
    if let Ok(mut out) = OutFrame::new(&reply.into(), vec![]) {
        let _ = out.send(fd);
    }
}
