//! [`ChildConn`]: the connection a [`crate::Child`] is reported on, and the exchange on it
//! after `Pid` (PROTOCOL.md §6): the child's final report, `Exit` or an `Error` with code
//! `ExecFailed`/`ChildSetupFailed` in its place; and, for each `Signal` the client sends,
//! `Signaled` or a non-fatal `Error` with code `SignalFailed`. After the final report the
//! server keeps the connection (`KEEP_CONNECTION`, which this crate asks for) and it goes back
//! to the client's engine for the next request, unless a `Signal` on it is still unanswered
//! (§6.6); otherwise the server closes it.

use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Duration;

use forkserver_protocol::{ErrorCode, ErrorReply, Frame, Message, Signal};
use nix::poll::{PollFd, PollFlags};

use crate::conn::Conn;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::exit_status::ExitStatus;
use crate::wait_until::{deadline_in, poll_until};

/// A child's connection: what has been read on it so far, and what is owed on it.
#[derive(Debug)]
pub(crate) struct ChildConn {
    state: State,
    /// Keeps a launched server's alive pipe open; takes the connection back for reuse.
    client: Arc<Engine>,
    /// The spawn asked for `KEEP_CONNECTION`: after the final report the connection is READY.
    keep: bool,
    /// Requests sent on the connection and not yet answered (`Signal`s). A connection with one
    /// outstanding is not reused: its answer would never come (PROTOCOL.md §6.6).
    unanswered: u32,
    /// Keep the connection in `parked` at the final report ([`ChildConn::defer_release`]).
    defer: bool,
    parked: Option<Conn>,
}

#[derive(Debug)]
enum State {
    /// Waiting for the outcome.
    Running(Conn),
    /// `Exit` received.
    Exited(ExitStatus),
    /// The child failed before running (`ExecFailed`, `ChildSetupFailed`); it has been reaped.
    Failed(ErrorReply),
    /// The connection broke; the outcome is unknown.
    Lost,
}

/// The answer to a `Signal` request.
enum Ack {
    Signaled,
    Failed(ErrorReply),
}

impl ChildConn {
    /// The connection `conn` of a child just reported by its `Pid`, spawned by `client` with
    /// `KEEP_CONNECTION` if `keep`.
    pub(crate) fn new(client: Arc<Engine>, conn: Conn, keep: bool) -> Self {
        Self {
            state: State::Running(conn),
            client,
            keep,
            unanswered: 0,
            defer: false,
            parked: None,
        }
    }

    /// The socket while the outcome is pending (`Child::connection_fd`).
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.state {
            State::Running(conn) => Some(conn.as_fd()),
            _ => None,
        }
    }

    /// Reads until the final report (`Child::wait`).
    ///
    /// # Errors
    /// As `Child::wait`.
    pub(crate) fn wait(&mut self) -> Result<ExitStatus> {
        if matches!(self.state, State::Running(_)) {
            // While the child runs: the next request's connection, if the client keeps one.
            self.client.warm_up();
        }
        self.read_status()
    }

    /// The blocking reads of [`ChildConn::wait`], without the warm-up (`Child::read_status`).
    ///
    /// # Errors
    /// As `Child::wait`.
    pub(crate) fn read_status(&mut self) -> Result<ExitStatus> {
        loop {
            let frame = match &mut self.state {
                State::Running(conn) => conn.recv(),
                _ => return self.outcome(),
            };
            if let Some(ack) = self.on_frame(frame)? {
                return Err(self.stray_ack(ack));
            }
        }
    }

    /// Reads what has arrived, without blocking (`Child::try_wait`).
    ///
    /// # Errors
    /// As `Child::wait`.
    pub(crate) fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        loop {
            let frame = match &mut self.state {
                State::Running(conn) => match conn.try_recv() {
                    Ok(Some(frame)) => Ok(frame),
                    Ok(None) => return Ok(None),
                    Err(e) => Err(e),
                },
                _ => return self.outcome().map(Some),
            };
            if let Some(ack) = self.on_frame(frame)? {
                return Err(self.stray_ack(ack));
            }
        }
    }

    /// Reads until the final report or `timeout`, polling the socket in between
    /// (`Child::wait_timeout`).
    ///
    /// # Errors
    /// As `Child::wait`.
    pub(crate) fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = deadline_in(timeout);
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            let Some(conn) = self.fd() else {
                return self.outcome().map(Some);
            };
            if !poll_until(&mut [PollFd::new(conn, PollFlags::POLLIN)], deadline)? {
                return Ok(None);
            }
        }
    }

    /// Sends a `Signal` and reads until its answer (`Child::signal`).
    ///
    /// # Errors
    /// As `Child::signal`.
    pub(crate) fn signal(&mut self, signo: i32) -> Result<()> {
        self.send_signal(signo)?;
        loop {
            let frame = match &mut self.state {
                State::Running(conn) => conn.recv(),
                _ => return Err(Error::AlreadyExited),
            };
            match self.on_frame(frame) {
                Ok(Some(Ack::Signaled)) => return Ok(()),
                Ok(Some(Ack::Failed(e))) => return Err(e.into()),
                Ok(None) => {}
                // An exec/setup failure arriving now: the child is gone.
                Err(Error::Server { .. }) if matches!(self.state, State::Failed(_)) => {
                    return Err(Error::AlreadyExited)
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends the `Signal` request; its answer is read later (in order: answers come in the
    /// order of the requests).
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for a number outside 1..=64; [`Error::AlreadyExited`],
    /// [`Error::ServerGone`] after the final report or a broken connection; a failed send.
    pub(crate) fn send_signal(&mut self, signo: i32) -> Result<()> {
        let invalid = || {
            Error::InvalidRequest(forkserver_protocol::BuildError::InvalidValue(
                forkserver_protocol::Field::Signal,
            ))
        };
        let request = Signal::new(u32::try_from(signo).map_err(|_| invalid())?)?;
        let sent = match &mut self.state {
            State::Running(conn) => {
                self.unanswered += 1;
                conn.send(&Message::Signal(request), Vec::new())
            }
            State::Exited(_) | State::Failed(_) => return Err(Error::AlreadyExited),
            State::Lost => return Err(Error::ServerGone),
        };
        match sent {
            // The server may have sent `Exit` and closed just before: what is there is read
            // next.
            Ok(()) | Err(Error::ServerGone) => Ok(()),
            Err(e) => {
                self.state = State::Lost;
                Err(e)
            }
        }
    }

    #[cfg(feature = "tokio")]
    /// Reads, without blocking, every frame that has arrived and applies it; returns the
    /// answers to `Signal` requests among them, in order. Stops at the final report, which
    /// the state then holds ([`ChildConn::stored_outcome`]).
    ///
    /// # Errors
    /// A broken connection or a frame out of place (the state is then `Lost`).
    pub(crate) fn pump(&mut self) -> Result<Vec<std::result::Result<(), ErrorReply>>> {
        let mut acks = Vec::new();
        loop {
            let frame = match &mut self.state {
                State::Running(conn) => match conn.try_recv() {
                    Ok(Some(frame)) => Ok(frame),
                    Ok(None) => return Ok(acks),
                    Err(e) => Err(e),
                },
                _ => return Ok(acks),
            };
            match self.on_frame(frame) {
                Ok(Some(Ack::Signaled)) => acks.push(Ok(())),
                Ok(Some(Ack::Failed(e))) => acks.push(Err(e)),
                Ok(None) => {}
                // The final report as an error: stored, not a failure of the read.
                Err(_) if matches!(self.state, State::Failed(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }

    #[cfg(feature = "tokio")]
    /// The outcome if the final report has arrived (or the connection is lost); `None` while
    /// the child runs.
    pub(crate) fn stored_outcome(&self) -> Option<Result<ExitStatus>> {
        (!self.is_running()).then(|| self.outcome())
    }

    #[cfg(feature = "tokio")]
    /// Whether the connection is still open and waiting for news.
    pub(crate) fn is_running(&self) -> bool {
        matches!(self.state, State::Running(_))
    }

    #[cfg(feature = "tokio")]
    /// Keeps the connection here at the final report instead of giving it back to the
    /// client at once; [`ChildConn::release`] gives it back later (after the async layer has
    /// taken it out of its reactor).
    pub(crate) fn defer_release(&mut self) {
        self.defer = true;
    }

    #[cfg(feature = "tokio")]
    /// Gives a kept connection back to the client (see [`ChildConn::defer_release`]).
    pub(crate) fn release(&mut self) {
        if let Some(conn) = self.parked.take() {
            if self.unanswered == 0 {
                self.client.put_idle(conn);
            }
        }
    }

    /// The child's final report arrived: store it, and hand the connection back to the client
    /// if the server keeps it (`KEEP_CONNECTION`) and no request on it is left unanswered;
    /// otherwise the server closes it, and so do we.
    fn finish(&mut self, outcome: State) {
        if let State::Running(conn) = std::mem::replace(&mut self.state, outcome) {
            if self.keep && self.defer {
                self.parked = Some(conn);
            } else if self.keep && self.unanswered == 0 {
                self.client.put_idle(conn);
            }
        }
    }

    /// The stored outcome of an ended child.
    fn outcome(&self) -> Result<ExitStatus> {
        match &self.state {
            State::Exited(s) => Ok(*s),
            State::Failed(e) => Err(e.clone().into()),
            State::Lost | State::Running(_) => Err(Error::ServerGone),
        }
    }

    /// Applies one frame (or read error) to the state. Returns the acknowledgement of a
    /// signal request, if that is what arrived.
    fn on_frame(&mut self, frame: Result<Frame>) -> Result<Option<Ack>> {
        let message = match frame {
            Ok(f) => f.message,
            Err(e) => {
                self.state = State::Lost;
                return Err(e);
            }
        };
        match message {
            Message::Exit(exit) => {
                self.finish(State::Exited(exit.into()));
                Ok(None)
            }
            Message::Signaled => {
                self.unanswered = self.unanswered.saturating_sub(1);
                Ok(Some(Ack::Signaled))
            }
            Message::Error(e) if e.code() == ErrorCode::SignalFailed => {
                self.unanswered = self.unanswered.saturating_sub(1);
                Ok(Some(Ack::Failed(e)))
            }
            Message::Error(e) => {
                let err = Error::from(e.clone());
                if e.code().is_final_report() {
                    self.finish(State::Failed(e));
                } else {
                    self.state = State::Lost;
                }
                Err(err)
            }
            other => {
                self.state = State::Lost;
                Err(Error::unexpected(other.tag(), "Exit"))
            }
        }
    }

    /// An acknowledgement without a signal request: the connection is out of step.
    fn stray_ack(&mut self, ack: Ack) -> Error {
        self.state = State::Lost;
        let tag = match ack {
            Ack::Signaled => forkserver_protocol::Tag::Signaled,
            Ack::Failed(_) => forkserver_protocol::Tag::Error,
        };
        Error::unexpected(tag, "Exit")
    }
}
