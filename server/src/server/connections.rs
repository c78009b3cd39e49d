//! The event loop's side of a connection: reading frames through its session, carrying out
//! the session's decisions, writing replies with backpressure, and its end.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use forkserver_protocol::{
    auth, ErrorCode, ErrorReply, Frame, Message, OutFrame, Status, TransportError, PROTOCOL_VERSION,
};
use nix::errno::Errno;
use nix::sys::epoll::{EpollEvent, EpollFlags};

use super::conn::Conn;
use super::token::Token;
use super::Server;
use crate::ids::ConnId;
use crate::session::{Action, Env, Session, State};
use crate::timers::Timer;

/// recvmsg calls per readiness event: enough to drain a burst, few enough to stay fair.
const READS_PER_EVENT: usize = 4;
/// How long a closing connection may take to flush its last replies before it is dropped.
const CLOSING_GRACE: Duration = Duration::from_secs(2);

impl Server {
    /// After the frames received were handled: a connection left holding part of a frame gets
    /// a timer, one per frame (§6.3).
    pub(super) fn watch_partial_frame(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.partial_frame_untimed() {
            let at = Instant::now() + self.config.handshake_timeout;
            c.time_partial_frame(self.timers.set(at, Timer::PartialFrame(id)));
        }
    }

    pub(super) fn on_conn_event(&mut self, id: ConnId, flags: EpollFlags) {
        if flags.contains(EpollFlags::EPOLLOUT) {
            self.flush(id);
            // Frames that arrived while replies were backed up sit in the reader; epoll will
            // not report them again. Take them now that the connection takes input again.
            if self
                .conns
                .get(&id)
                .is_some_and(|c| c.wants_input() && c.has_buffered_input())
            {
                self.process_frames(id);
            }
        }
        // Hang-up and error are reported whatever the interest: a connection that takes no
        // input now would see them again and again. The peer is gone; so is the connection.
        if flags.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR)
            && self.conns.get(&id).is_some_and(|c| !c.wants_input())
        {
            return self.disconnect(id);
        }
        if flags.intersects(
            EpollFlags::EPOLLIN
                | EpollFlags::EPOLLRDHUP
                | EpollFlags::EPOLLHUP
                | EpollFlags::EPOLLERR,
        ) {
            self.read(id);
        }
    }

    pub(super) fn read(&mut self, id: ConnId) {
        for _ in 0..READS_PER_EVENT {
            if !self.process_frames(id) {
                return;
            }
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            match conn.recv() {
                // A short read: most likely the socket is drained (or the read stopped at a
                // chunk that carried fds). Handle what came and go back to epoll, which is
                // level-triggered and reports whatever is left, rather than spend a recvmsg
                // on EAGAIN.
                Ok(n) if n < conn.last_ask() => break,
                Ok(_) => {}
                Err(TransportError::Io(Errno::EAGAIN)) => return,
                Err(e) => return self.transport_error(id, e),
            }
        }
        self.process_frames(id);
    }

    /// Handles the frames already received, in order, for as long as the connection takes
    /// input. Returns whether it still does (and more may be read).
    pub(super) fn process_frames(&mut self, id: ConnId) -> bool {
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return false;
            };
            if !conn.wants_input() {
                return false;
            }
            match conn.next_frame() {
                Ok(Some(frame)) => self.on_frame(id, frame),
                Ok(None) => {
                    self.watch_partial_frame(id);
                    return true;
                }
                Err(e) => {
                    self.transport_error(id, e);
                    return false;
                }
            }
        }
    }

    pub(super) fn transport_error(&mut self, id: ConnId, e: TransportError) {
        match e {
            TransportError::Closed | TransportError::ClosedMidFrame | TransportError::Io(_) => {
                tracing::debug!(conn = %id, "peer gone: {e}");
                self.disconnect(id);
            }
            TransportError::Decode(d) => {
                tracing::debug!(conn = %id, "malformed frame: {d}");
                self.fail(id, ErrorReply::from(d));
            }
            TransportError::FdMismatch { .. } => {
                self.fail(id, ErrorReply::new(ErrorCode::FdMismatch, 0, e.to_string()))
            }
            TransportError::TooManyFds(_) => {
                self.fail(id, ErrorReply::new(ErrorCode::TooManyFds, 0, e.to_string()))
            }
            // §6.3, §9.3: what only the handshake may send was exceeded: the reply the state
            // gives any frame but the one it expects.
            TransportError::FrameTooLong { .. } | TransportError::UnexpectedFds(_) => {
                let code = match self.conns.get(&id).map(Conn::state) {
                    Some(State::AwaitAuth(_)) => ErrorCode::AuthRequired,
                    _ if self.fork.key().is_some()
                        && matches!(e, TransportError::UnexpectedFds(_)) =>
                    {
                        ErrorCode::AuthRequired
                    }
                    _ => ErrorCode::UnexpectedMessage,
                };
                self.fail(id, ErrorReply::new(code, 0, e.to_string()))
            }
            // Our control buffer holds the 253 fds one sendmsg can carry: truncation means the
            // kernel could not install them, i.e. this process is out of fds (EMFILE).
            TransportError::ControlTruncated => self.fail(
                id,
                ErrorReply::new(
                    ErrorCode::ResourceExhausted,
                    Errno::EMFILE as i32,
                    "server out of file descriptors: the fds sent were lost",
                ),
            ),
            _ => self.fail(id, ErrorReply::new(ErrorCode::Internal, 0, e.to_string())),
        }
    }

    /// Sends a fatal error and closes once it is flushed.
    pub(super) fn fail(&mut self, id: ConnId, reply: ErrorReply) {
        self.send(id, reply.into(), vec![]);
        self.transition(id, Session::close);
    }

    /// One frame through the session, then what it decided.
    pub(super) fn on_frame(&mut self, id: ConnId, frame: Frame) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let entries = &self.entries;
        let mut challenge = auth::random_challenge;
        let mut env = Env {
            key: self.fork.key(),
            challenge: &mut challenge,
            has_entry: &|name| entries.contains_key(name),
        };
        conn.session_mut().handle_frame(frame, &mut env);
        self.run_actions(id);
    }

    /// Carries out the session's decisions, in order, then catches up with its state.
    pub(super) fn run_actions(&mut self, id: ConnId) {
        while let Some(action) = self
            .conns
            .get_mut(&id)
            .and_then(|c| c.session_mut().poll_action())
        {
            match action {
                Action::Send(m) => self.send(id, m, vec![]),
                // The session is `Closing` already: the error goes out, then the connection ends.
                Action::Close(reply) => {
                    self.metrics.closed_with(reply.code());
                    self.send(id, reply.into(), vec![]);
                }
                Action::Status => {
                    let status = self.status();
                    self.send(id, Message::Status(status), vec![]);
                }
                Action::Metrics => {
                    let m = self.metrics.snapshot(self.config.prefork, self.pool.len());
                    self.send(id, Message::Metrics(m), vec![]);
                }
                Action::Spawn(spawn, bundle) => self.spawn(id, spawn, bundle),
                Action::Signal(pid, signo) => {
                    let result = crate::sys::kill(pid, signo);
                    if let Some(conn) = self.conns.get_mut(&id) {
                        conn.session_mut().signaled(result);
                    }
                }
            }
        }
        self.sync(id);
    }

    /// The server's status report (§5.11).
    pub(super) fn status(&self) -> Status {
        Status::new(
            PROTOCOL_VERSION,
            std::process::id() as i32,
            self.children.len() as u32,
            self.conns.len() as u32,
            self.spawned_total,
            concat!("forkserver ", env!("CARGO_PKG_VERSION")),
        )
        .expect("status fields are valid")
    }

    /// Ends a connection whose peer is gone: its fds are closed; a running child runs on unless
    /// it asked to be killed on disconnect.
    pub(super) fn disconnect(&mut self, id: ConnId) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        self.handshakes.finish(id);
        let _ = self.epoll.delete(conn.fd());
        // The child of the state in force: the session may have moved on (to `Closing`, with
        // its last error) in the same step.
        self.detach_child(conn.applied());
        if conn.state() != conn.applied() {
            self.detach_child(conn.state());
        }
        self.touch();
    }

    /// Feeds an outcome of the event loop to the session, then catches up with its state.
    pub(super) fn transition(&mut self, id: ConnId, f: impl FnOnce(&mut Session)) {
        if let Some(conn) = self.conns.get_mut(&id) {
            f(conn.session_mut());
        }
        self.run_actions(id);
    }

    /// Puts the side effects of the session's state in force, once per change: the
    /// connection's own ([`Conn::apply_state`]), the end of the handshake quota's hold, and
    /// `Closing`'s grace timer and detached child.
    pub(super) fn sync(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(old) = conn.apply_state() else {
            return self.flush(id);
        };
        let state = conn.state();
        if !state.in_handshake() {
            self.handshakes.finish(id);
        }
        if state == State::Closing {
            // A peer that does not read its last replies does not keep the connection (or a
            // shutting-down server) forever.
            self.timers
                .set(Instant::now() + CLOSING_GRACE, Timer::Closing(id));
            self.detach_child(old);
        }
        self.flush(id);
    }

    pub(super) fn send(&mut self, id: ConnId, message: Message, fds: Vec<OwnedFd>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match OutFrame::new(&message, fds) {
            Ok(out) => conn.queue(out),
            Err(e) => tracing::error!("bug: reply does not match its fds: {e}"),
        }
        self.flush(id);
    }

    pub(super) fn flush(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if let Err(e) = conn.flush() {
            tracing::debug!(conn = %id, "send: {e}");
            return self.disconnect(id);
        }
        if conn.is_done() {
            return self.disconnect(id);
        }
        if let Some(want) = conn.update_interest() {
            let mut ev = EpollEvent::new(want, Token::Conn(id).to_u64());
            if let Err(e) = self.epoll.modify(conn.fd(), &mut ev) {
                tracing::warn!("epoll_ctl: {e}");
            }
        }
    }
}
