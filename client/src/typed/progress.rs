//! [`Progress`]: what a typed call's client has learnt so far, from its two sources, the
//! result channel (PROTOCOL.md §11.3) and the child's exit status, and the outcome decided
//! from both: a valid final frame wins; without one, the exit status does (a signal is
//! [`CallError::Killed`], whatever was half written). The blocking [`crate::TypedChild`] and
//! the async `AsyncTypedChild` wait on the two fds each their own way and feed this.

use std::os::fd::{BorrowedFd, OwnedFd};

use forkserver_protocol::typed::{
    decode, recv_frame, Assembler, Codec, Received, ResultFrame, DEFAULT_MAX_RESULT_LEN,
};
use serde::de::DeserializeOwned;

use super::error::CallError;
use crate::exit_status::ExitStatus;

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

/// A typed call's answer and exit status as far as they are known.
#[derive(Debug)]
pub(crate) struct Progress {
    entry: String,
    codec: Codec,
    accepted: bool,
    assembler: Assembler,
    answer: Option<Answer>,
    status: Option<ExitStatus>,
    taken: bool,
}

impl Progress {
    pub(crate) fn new(entry: String, codec: Codec) -> Self {
        Self {
            entry,
            codec,
            accepted: false,
            assembler: Assembler::new(DEFAULT_MAX_RESULT_LEN),
            answer: None,
            status: None,
            taken: false,
        }
    }

    /// Whether the outcome has been returned already ([`CallError::Taken`] from then on).
    pub(crate) fn taken(&self) -> bool {
        self.taken
    }

    /// Whether the exit status is still to come.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn wants_status(&self) -> bool {
        self.status.is_none()
    }

    /// Whether the channel is still to be read: no final frame on it yet.
    pub(crate) fn wants_answer(&self) -> bool {
        self.answer.is_none()
    }

    /// Files the exit status.
    pub(crate) fn set_status(&mut self, status: ExitStatus) {
        self.status = Some(status);
    }

    /// Whether both answer and exit status are known (or the outcome was taken). Once the
    /// child has exited, whatever it sent is queued on `channel` (`None`: closed already):
    /// read to the end first, and no final frame there is [`Answer::Closed`].
    pub(crate) fn settle(&mut self, channel: Option<BorrowedFd<'_>>) -> bool {
        if self.taken {
            // Nothing more to learn: the outcome is [`CallError::Taken`].
            return true;
        }
        if self.status.is_some() && self.answer.is_none() {
            if let Some(ch) = channel {
                self.read(ch);
            }
            if self.answer.is_none() {
                self.answer = Some(Answer::Closed);
            }
        }
        self.answer.is_some() && self.status.is_some()
    }

    /// Reads the channel's frames, without blocking, until an answer or until none is left.
    /// Returns whether the channel is done with (an answer came): its owner closes it then.
    pub(crate) fn read(&mut self, channel: BorrowedFd<'_>) -> bool {
        while self.answer.is_none() {
            let answer = match recv_frame(channel, false) {
                Ok(Received::Empty) => return false,
                Ok(Received::Closed) => Answer::Closed,
                Ok(Received::Frame(frame, fds)) => match self.on_frame(frame, fds) {
                    Some(a) => a,
                    None => continue,
                },
                Err(e) => Answer::Broken(e.to_string()),
            };
            self.answer = Some(answer);
        }
        true
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

    /// The outcome, once [`Progress::settle`] has said both halves are known; later calls
    /// give [`CallError::Taken`].
    pub(crate) fn outcome<R: DeserializeOwned>(&mut self) -> Result<R, CallError> {
        // Unsettled is not reached (callers settle first); taken is.
        let (false, Some(status), Some(_)) = (self.taken, self.status, &self.answer) else {
            return Err(CallError::Taken);
        };
        let answer = self.answer.take().expect("checked above");
        self.taken = true;
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
