//! [`TypedChild`]: a running typed call. It waits on two fds at once, the result channel
//! (PROTOCOL.md §11.3) and the child's connection (its exit status), and decides the outcome
//! from both: a valid final frame wins; without one, the exit status does (a signal is
//! [`CallError::Killed`], whatever was half written).

use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use forkserver_protocol::typed::{
    decode, recv_frame, Assembler, Codec, Received, ResultFrame, DEFAULT_MAX_RESULT_LEN,
};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde::de::DeserializeOwned;

use super::error::CallError;
use crate::child::Child;
use crate::exit_status::ExitStatus;
use crate::pipes::{ChildStderr, ChildStdin, ChildStdout};

/// The child's last word on the channel.
#[derive(Debug)]
enum Answer {
    Value(Vec<u8>, Vec<OwnedFd>),
    Error(String),
    Panic {
        message: String,
        location: String,
    },
    Mismatch(String),
    /// The channel closed with no final frame.
    Closed,
    /// The channel carried something that is not a valid answer.
    Broken(String),
}

/// A typed call's child: [`TypedChild::join`] gives the entry's value, or a [`CallError`] that
/// says how it ended.
#[derive(Debug)]
pub struct TypedChild<R> {
    child: Child,
    channel: Option<OwnedFd>,
    entry: String,
    codec: Codec,
    accepted: bool,
    assembler: Assembler,
    answer: Option<Answer>,
    status: Option<ExitStatus>,
    taken: bool,
    /// The parent's end of a piped stdin ([`crate::Stdio::piped`]).
    pub stdin: Option<ChildStdin>,
    /// The parent's end of a piped stdout.
    pub stdout: Option<ChildStdout>,
    /// The parent's end of a piped stderr.
    pub stderr: Option<ChildStderr>,
    _result: PhantomData<fn() -> R>,
}

impl<R: DeserializeOwned> TypedChild<R> {
    pub(crate) fn new(mut child: Child, channel: OwnedFd, entry: String, codec: Codec) -> Self {
        Self {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            child,
            channel: Some(channel),
            entry,
            codec,
            accepted: false,
            assembler: Assembler::new(DEFAULT_MAX_RESULT_LEN),
            answer: None,
            status: None,
            taken: false,
            _result: PhantomData,
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.child.pid()
    }

    /// Sends `signo` to the child, acknowledged by the server (see [`Child::signal`]).
    ///
    /// # Errors
    /// As [`Child::signal`].
    pub fn signal(&mut self, signo: i32) -> crate::Result<()> {
        self.child.signal(signo)
    }

    /// Kills the child (`SIGKILL`); `Ok(())` if it has already exited. [`TypedChild::join`]
    /// then gives [`CallError::Killed`] unless the result had been sent.
    ///
    /// # Errors
    /// As [`Child::kill`].
    pub fn kill(&mut self) -> crate::Result<()> {
        self.child.kill()
    }

    /// Waits for the call to end: its value, or how it ended without one.
    ///
    /// # Errors
    /// A [`CallError`]: the entry's error, panic, signal or exit, a mismatch found by the
    /// child, a transport failure, or a bad result.
    pub fn join(mut self) -> Result<R, CallError> {
        while !self.step(None)? {}
        self.outcome()
    }

    /// As [`TypedChild::join`], for at most `timeout`: `Ok(None)` if the call is still running
    /// then, and the child keeps running; call again to wait on.
    ///
    /// # Errors
    /// As [`TypedChild::join`]; [`CallError::Taken`] once the outcome has been returned.
    pub fn join_timeout(&mut self, timeout: std::time::Duration) -> Result<Option<R>, CallError> {
        if self.taken {
            return Err(CallError::Taken);
        }
        let deadline = Instant::now().checked_add(timeout);
        if self.step(Some(deadline.unwrap_or_else(far_future)))? {
            self.outcome().map(Some)
        } else {
            Ok(None)
        }
    }

    /// Makes progress until both the answer and the exit status are known (`true`) or
    /// `deadline` passes (`false`).
    fn step(&mut self, deadline: Option<Instant>) -> Result<bool, CallError> {
        loop {
            if self.status.is_none() {
                if let Some(s) = self.child.try_wait().map_err(CallError::Transport)? {
                    self.status = Some(s);
                    continue;
                }
            }
            match (&self.answer, self.status) {
                (Some(_), Some(_)) => return Ok(true),
                // The child has exited: whatever it sent is queued by now.
                (None, Some(_)) => {
                    self.read_channel();
                    if self.answer.is_none() {
                        self.answer = Some(Answer::Closed);
                    }
                    continue;
                }
                _ => {}
            }
            let timeout = match deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(false);
                    }
                    let ms = left
                        .as_nanos()
                        .div_ceil(1_000_000)
                        .clamp(1, i32::MAX as u128);
                    PollTimeout::try_from(ms as i32).unwrap_or(PollTimeout::MAX)
                }
            };
            let chan_ready = {
                let conn = self
                    .child
                    .connection_fd()
                    .ok_or(CallError::Transport(crate::Error::ServerGone))?;
                let mut fds = vec![PollFd::new(conn, PollFlags::POLLIN)];
                if let (None, Some(ch)) = (&self.answer, &self.channel) {
                    fds.push(PollFd::new(ch.as_fd(), PollFlags::POLLIN));
                }
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(CallError::Transport(std::io::Error::from(e).into())),
                }
                let ready = |i: usize| {
                    fds.get(i)
                        .and_then(PollFd::revents)
                        .is_some_and(|r| !r.is_empty())
                };
                ready(1)
            };
            if chan_ready {
                self.read_channel();
            }
        }
    }

    /// Reads the channel's frames, without blocking, until an answer or until none is left.
    fn read_channel(&mut self) {
        while self.answer.is_none() {
            let Some(ch) = &self.channel else {
                self.answer = Some(Answer::Closed);
                return;
            };
            let got = recv_frame(ch.as_fd(), false);
            let answer = match got {
                Ok(Received::Empty) => return,
                Ok(Received::Closed) => Answer::Closed,
                Ok(Received::Frame(frame, fds)) => match self.on_frame(frame, fds) {
                    Some(a) => a,
                    None => continue,
                },
                Err(e) => Answer::Broken(e.to_string()),
            };
            self.answer = Some(answer);
            self.channel = None;
        }
    }

    fn on_frame(&mut self, frame: ResultFrame, fds: Vec<OwnedFd>) -> Option<Answer> {
        let broken = |what: &str| Some(Answer::Broken(what.to_owned()));
        match frame {
            ResultFrame::Accepted if !self.accepted => {
                self.accepted = true;
                None
            }
            ResultFrame::Mismatch { detail, .. } if !self.accepted => {
                Some(Answer::Mismatch(detail))
            }
            _ if !self.accepted => broken("a result before the entry accepted the call"),
            ResultFrame::Chunk(b) => match self.assembler.push(&b) {
                Ok(()) => None,
                Err(e) => Some(Answer::Broken(e.to_string())),
            },
            ResultFrame::Value { bytes, .. } => match self.assembler.push(&bytes) {
                Ok(()) => Some(Answer::Value(self.assembler.take(), fds)),
                Err(e) => Some(Answer::Broken(e.to_string())),
            },
            ResultFrame::Error(t) => Some(Answer::Error(t)),
            ResultFrame::Panic { message, location } => Some(Answer::Panic { message, location }),
            _ => broken("a frame out of place"),
        }
    }

    /// The outcome, once answer and status are both known.
    fn outcome(&mut self) -> Result<R, CallError> {
        self.taken = true;
        let status = self.status.take().expect("step returned true");
        let answer = self.answer.take().expect("step returned true");
        let killed = status.signal().map(|signal| CallError::Killed {
            signal,
            deadline_expired: status.deadline_expired(),
        });
        let mismatch = |detail: String| CallError::Mismatch {
            entry: self.entry.clone(),
            detail,
        };
        match answer {
            // A whole value that decodes is the result, whatever happened after it was sent.
            Answer::Value(bytes, fds) => match decode(self.codec, &bytes, fds) {
                Ok(v) => Ok(v),
                Err(e) => Err(killed.unwrap_or(CallError::Decode(e.to_string()))),
            },
            Answer::Error(t) => Err(CallError::Failed(t)),
            Answer::Panic { message, location } => Err(CallError::Panicked { message, location }),
            Answer::Mismatch(d) => Err(mismatch(d)),
            Answer::Closed | Answer::Broken(_) if killed.is_some() => Err(killed.expect("some")),
            Answer::Broken(e) => Err(CallError::Decode(e)),
            Answer::Closed if !self.accepted => Err(mismatch(format!(
                "not a typed entry: it exited with status {} without answering",
                status.raw_code()
            ))),
            Answer::Closed => Err(CallError::Exited(status.raw_code())),
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(86_400 * 365)
}
