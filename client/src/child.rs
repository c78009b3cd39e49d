//! [`Child`]: a child the server forked, seen through its connection.
//!
//! After `Pid`, the connection carries (PROTOCOL.md §6): the child's final report, `Exit` or an
//! `Error` with code `ExecFailed`/`ChildSetupFailed` in its place; and, for each `Signal` the
//! client sends, `Signaled` or a non-fatal `Error` with code `SignalFailed`. After the final
//! report the server keeps the connection (`KEEP_CONNECTION`, which this crate asks for) and it
//! goes back to the client's engine for the next request, unless a `Signal` on it is still
//! unanswered (§6.6); otherwise the server closes it.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use forkserver_protocol::{ErrorCode, ErrorReply, Frame, Message, Signal};
use nix::poll::{PollFd, PollFlags};

use crate::conn::Conn;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::exit_status::ExitStatus;
use crate::pipes::{ChildStderr, ChildStdin, ChildStdout};
use crate::wait_until::{deadline_in, poll_until};

/// A child process forked by the server, like [`std::process::Child`].
///
/// The server reaps the child and reports its exit over this child's own connection, so
/// [`Child::wait`] works from any thread of this process, and the child is not this process's
/// child in the `waitpid` sense.
///
/// Once the exit (or the child's failure) has been read, the connection goes back to the
/// client for reuse, unless a [`Child::signal`] request on it is still unanswered.
///
/// Dropping a `Child` that has not been waited for closes the connection; the child runs on
/// (unless it was spawned with `kill_on_disconnect(true)`). A `Child` keeps a launched server
/// alive while it exists.
#[derive(Debug)]
pub struct Child {
    pid: i32,
    pidfd: Option<OwnedFd>,
    state: State,
    /// The parent's end of a piped stdin ([`crate::Stdio::piped`]).
    pub stdin: Option<ChildStdin>,
    /// The parent's end of a piped stdout.
    pub stdout: Option<ChildStdout>,
    /// The parent's end of a piped stderr.
    pub stderr: Option<ChildStderr>,
    /// Keeps a launched server's alive pipe open; takes the connection back for reuse.
    client: Arc<Engine>,
    /// The spawn asked for `KEEP_CONNECTION`: after the final report the connection is READY.
    keep: bool,
    /// Requests sent on the connection and not yet answered (`Signal`s). A connection with one
    /// outstanding is not reused: its answer would never come (PROTOCOL.md §6.6).
    unanswered: u32,
    /// Keep the connection in `parked` at the final report ([`Child::defer_release`]).
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

impl Child {
    pub(crate) fn new(
        client: Arc<Engine>,
        conn: Conn,
        keep: bool,
        pid: i32,
        pidfd: Option<OwnedFd>,
        [stdin, stdout, stderr]: [Option<File>; 3],
    ) -> Self {
        Self {
            pid,
            pidfd,
            state: State::Running(conn),
            stdin: stdin.map(ChildStdin::new),
            stdout: stdout.map(ChildStdout::new),
            stderr: stderr.map(ChildStderr::new),
            client,
            keep,
            unanswered: 0,
            defer: false,
            parked: None,
        }
    }

    /// The child's pid, in the server's pid namespace.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The child's pid as std's [`std::process::Child::id`] gives it.
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// The child's pidfd, if one was asked for with `pidfd(true)` and the server sent one.
    /// It can be polled (readable once the child has exited) or used with `pidfd_send_signal`;
    /// the exit status still comes from [`Child::wait`], as the server reaps the child.
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(AsFd::as_fd)
    }

    /// Takes the pidfd out of the child, leaving `None`.
    pub fn take_pidfd(&mut self) -> Option<OwnedFd> {
        self.pidfd.take()
    }

    /// The connection's socket while the outcome is pending, for event loops: it becomes
    /// readable when [`Child::try_wait`] may have news. Call [`Child::try_wait`] *before*
    /// polling it, each time: frames already read from the socket (an `Exit` that arrived
    /// with the answer to a [`Child::signal`]) are buffered here and will not make it
    /// readable again. Once the outcome is read the connection
    /// may serve another request of the client: take it out of a poller before then.
    pub fn connection_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.state {
            State::Running(conn) => Some(conn.as_fd()),
            _ => None,
        }
    }

    /// Waits for the child to end and returns its status. Closes a piped `stdin` first, as
    /// std does, so a child reading it sees EOF. Once the status is known, later calls return
    /// it again at once.
    ///
    /// # Errors
    /// [`Error::Server`] with code `ExecFailed` or `ChildSetupFailed` if the child failed
    /// before running its job (it has been reaped; later calls return the same error);
    /// [`Error::ServerGone`] if the server closed the connection or died first (the child's
    /// fate is unknown); [`Error::Protocol`], [`Error::Io`].
    pub fn wait(&mut self) -> Result<ExitStatus> {
        drop(self.stdin.take());
        if matches!(self.state, State::Running(_)) {
            // While the child runs: the next request's connection, if the client keeps one.
            self.client.warm_up();
        }
        self.read_status()
    }

    /// The blocking reads of [`Child::wait`], without its side effects (stdin closed, a
    /// connection warmed up): a typed call's join, once its answer is in.
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

    /// The status if the child has ended, without blocking: reads what the server has sent
    /// so far.
    ///
    /// # Errors
    /// As [`Child::wait`].
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
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

    /// As [`Child::wait`], for at most `timeout` (`poll(2)` on the connection, not a loop of
    /// `try_wait`s): `Ok(None)` if the child still runs then; this handle keeps it, to wait on
    /// again. A piped `stdin` stays open.
    ///
    /// ```no_run
    /// # let client = forkserver_client::Client::connect("/run/forkserver.sock")?;
    /// let mut child = client.command("sleep").arg("1").spawn()?;
    /// while child.wait_timeout(std::time::Duration::from_millis(100))?.is_none() {
    ///     println!("still running");
    /// }
    /// # Ok::<(), forkserver_client::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Child::wait`].
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = deadline_in(timeout);
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            let Some(conn) = self.connection_fd() else {
                return self.outcome().map(Some);
            };
            if !poll_until(&mut [PollFd::new(conn, PollFlags::POLLIN)], deadline)? {
                return Ok(None);
            }
        }
    }

    /// Sends signal `signo` (1..=64, e.g. `libc::SIGTERM`) to the child and waits for the
    /// server's acknowledgement.
    ///
    /// # Errors
    /// [`Error::AlreadyExited`] if the child has ended (its status is then stored for
    /// [`Child::wait`]); [`Error::Server`] with code `SignalFailed` if `kill(2)` failed (the
    /// connection stays usable); [`Error::InvalidRequest`] for a number outside 1..=64;
    /// [`Error::ServerGone`], [`Error::Protocol`], [`Error::Io`].
    pub fn signal(&mut self, signo: i32) -> Result<()> {
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
    /// the state then holds ([`Child::stored_outcome`]).
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
        (!matches!(self.state, State::Running(_))).then(|| self.outcome())
    }

    #[cfg(feature = "tokio")]
    /// Whether the connection is still open and waiting for news.
    pub(crate) fn is_running(&self) -> bool {
        matches!(self.state, State::Running(_))
    }

    #[cfg(feature = "tokio")]
    /// Keeps the connection here at the final report instead of giving it back to the
    /// client at once; [`Child::release`] gives it back later (after the async layer has
    /// taken it out of its reactor).
    pub(crate) fn defer_release(&mut self) {
        self.defer = true;
    }

    #[cfg(feature = "tokio")]
    /// Gives a kept connection back to the client (see [`Child::defer_release`]).
    pub(crate) fn release(&mut self) {
        if let Some(conn) = self.parked.take() {
            if self.unanswered == 0 {
                self.client.put_idle(conn);
            }
        }
    }

    /// Kills the child with `SIGKILL`. Like std, returns `Ok(())` if it has already exited.
    ///
    /// # Errors
    /// As [`Child::signal`], except [`Error::AlreadyExited`].
    pub fn kill(&mut self) -> Result<()> {
        match self.signal(nix::libc::SIGKILL) {
            Err(Error::AlreadyExited) => Ok(()),
            other => other,
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
