//! [`Worker`]: a long-lived typed child (PROTOCOL.md §11.7). One fork serves many calls: the
//! client sends each request on the result channel (`Chunk`s and a `Request` frame, fds with
//! `SCM_RIGHTS`) and reads the answer frame; the child keeps its state between calls. The
//! outcome of a call that got no answer comes from the child's exit status, as for a
//! [`crate::TypedChild`].

use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use forkserver_protocol::typed::{
    decode, encode, fingerprint, recv_frame, request_frames, send_frame, Assembler, Codec,
    EncodedArg, Received, ResultFrame, DEFAULT_MAX_RESULT_LEN,
};
use forkserver_protocol::{Session, SCM_MAX_FD};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde::{de::DeserializeOwned, Serialize};

use super::error::CallError;
use super::Start;
use crate::child::Child;
use crate::engine::Engine;
use crate::exit_status::ExitStatus;
use crate::pipes::{ChildStderr, ChildStdin, ChildStdout};
use crate::request::{deadline_ms, Request};
use crate::stdio::{Stdio, Stream};

/// A builder for a worker of an entry registered with `Zygote::worker`: made by
/// [`crate::Client::worker`], with the setters of [`crate::Call`] (a deadline caps the
/// worker's whole life) and the codec.
///
/// ```no_run
/// use forkserver_client::Client;
///
/// let client = Client::launch(std::env::current_exe()?)?;
/// let mut counter = client.worker::<u64, u64>("counter").spawn()?;
/// for _ in 0..999 {
///     counter.call(&1)?;
/// }
/// assert_eq!(counter.call(&1)?, 1000); // one child, one fork, state kept
/// counter.close()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct WorkerBuilder<Req: ?Sized, Resp> {
    client: Arc<Engine>,
    name: String,
    codec: Codec,
    req: Request,
    _types: PhantomData<fn(&Req) -> Resp>,
}

impl<Req: Serialize + ?Sized, Resp: DeserializeOwned> WorkerBuilder<Req, Resp> {
    pub(crate) fn new(client: Arc<Engine>, name: String) -> Self {
        Self {
            client,
            name,
            codec: Codec::default(),
            req: Request::default(),
            _types: PhantomData,
        }
    }

    request_setters!();

    /// The codec of requests and responses: [`Codec::MessagePack`] (the default) or
    /// [`Codec::Json`].
    pub fn codec(&mut self, codec: Codec) -> &mut Self {
        self.codec = codec;
        self
    }

    /// Forks the worker and waits until it has checked the call's types (before `init` runs).
    ///
    /// # Errors
    /// [`CallError::Mismatch`] if the server's entry is not a worker of these types and codec
    /// (or does not exist); [`CallError::Spawn`] as for [`crate::TypedCall::spawn`];
    /// [`CallError::Killed`], [`CallError::Transport`].
    pub fn spawn(&mut self) -> Result<Worker<Req, Resp>, CallError> {
        let start = Start {
            client: &self.client,
            name: &self.name,
            codec: self.codec,
            fingerprint: fingerprint::<Req, Resp>(&self.name, self.codec),
            worker: true,
        };
        let (mut child, channel) =
            start.spawn(&mut self.req, EncodedArg::Inline(Vec::new()), Vec::new())?;
        let mut worker = Worker {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            child,
            channel: Some(channel),
            entry: self.name.clone(),
            codec: self.codec,
            ended: None,
            calls: 0,
            _types: PhantomData,
        };
        let mismatch = |detail: String| CallError::Mismatch {
            entry: self.name.clone(),
            detail,
        };
        match worker.next()? {
            Got::Frame(ResultFrame::Accepted, _) => Ok(worker),
            Got::Frame(ResultFrame::Mismatch { detail, .. }, _) => Err(mismatch(detail)),
            Got::Frame(other, _) => Err(worker.broken(&format!("frame tag {}", other.tag()))),
            Got::Ended(status) if status.signal().is_some() => Err(status_error(status)),
            Got::Ended(status) => Err(mismatch(format!(
                "not a worker entry: it exited with status {} without answering",
                status.raw_code()
            ))),
        }
    }
}

/// What reading the channel gave: a frame, or the child's end.
enum Got {
    Frame(ResultFrame, Vec<OwnedFd>),
    Ended(ExitStatus),
}

/// A running worker: [`Worker::call`] sends a request and waits for its response; the state
/// that `init` made lives in this one child between calls.
#[derive(Debug)]
pub struct Worker<Req: ?Sized, Resp> {
    child: Child,
    channel: Option<OwnedFd>,
    entry: String,
    codec: Codec,
    /// Why the worker can take no more calls.
    ended: Option<String>,
    calls: u64,
    /// The parent's end of a piped stdin ([`crate::Stdio::piped`]).
    pub stdin: Option<ChildStdin>,
    /// The parent's end of a piped stdout.
    pub stdout: Option<ChildStdout>,
    /// The parent's end of a piped stderr.
    pub stderr: Option<ChildStderr>,
    _types: PhantomData<fn(&Req) -> Resp>,
}

impl<Req: Serialize + ?Sized, Resp: DeserializeOwned> Worker<Req, Resp> {
    /// The worker's pid.
    pub fn pid(&self) -> i32 {
        self.child.pid()
    }

    /// The entry's name.
    pub fn entry(&self) -> &str {
        &self.entry
    }

    /// How many calls were sent to this worker.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Whether the worker has ended (a panic, a signal, an exit): every later call fails
    /// with [`CallError::Ended`].
    pub fn is_ended(&self) -> bool {
        self.ended.is_some()
    }

    /// Kills the worker (`SIGKILL`); `Ok(())` if it has already exited. The next call gives
    /// [`CallError::Killed`], then [`CallError::Ended`].
    ///
    /// # Errors
    /// As [`Child::kill`].
    pub fn kill(&mut self) -> crate::Result<()> {
        self.child.kill()
    }

    /// Sends `req` to the worker and waits for its response.
    ///
    /// # Errors
    /// [`CallError::Failed`] (the worker's `handle` returned `Err`; the worker goes on),
    /// [`CallError::Encode`] (also for a request over 64 MiB encoded, which is not sent: the
    /// worker goes on), [`CallError::Decode`] (a response that is not a `Resp`; the worker goes
    /// on); the worker ended during the call: [`CallError::Panicked`],
    /// [`CallError::Killed`], [`CallError::Exited`]; [`CallError::Ended`] once it had ended
    /// before; [`CallError::Transport`].
    pub fn call(&mut self, req: &Req) -> Result<Resp, CallError> {
        if let Some(why) = &self.ended {
            return Err(CallError::Ended(why.clone()));
        }
        let (bytes, fds) = encode(self.codec, req).map_err(|e| CallError::Encode(e.to_string()))?;
        if fds.len() > SCM_MAX_FD {
            let text = format!("{} fds in the request, at most {SCM_MAX_FD}", fds.len());
            return Err(CallError::Encode(text));
        }
        // §11.7: the worker takes requests of at most its cap (the reference worker's is
        // DEFAULT_MAX_RESULT_LEN) and ends on a longer one: refuse it here, the worker goes on.
        if bytes.len() > DEFAULT_MAX_RESULT_LEN {
            let text = format!(
                "a request of {} bytes, a worker takes at most {DEFAULT_MAX_RESULT_LEN}",
                bytes.len()
            );
            return Err(CallError::Encode(text));
        }
        self.calls += 1;
        self.send(&bytes, &fds)?;
        drop(fds);
        let mut assembler = Assembler::new(DEFAULT_MAX_RESULT_LEN);
        loop {
            let (frame, fds) = match self.next()? {
                Got::Frame(frame, fds) => (frame, fds),
                Got::Ended(status) => {
                    let e = status_error(status);
                    self.end(format!("{e}"));
                    return Err(e);
                }
            };
            match frame {
                ResultFrame::Chunk(b) => {
                    if let Err(e) = assembler.push(&b) {
                        return Err(self.broken(&e.to_string()));
                    }
                }
                ResultFrame::Value { bytes, .. } => {
                    if let Err(e) = assembler.push(&bytes) {
                        return Err(self.broken(&e.to_string()));
                    }
                    return decode(self.codec, &assembler.take(), fds)
                        .map_err(|e| CallError::Decode(e.to_string()));
                }
                ResultFrame::Error(text) => return Err(CallError::Failed(text)),
                ResultFrame::Panic { message, location } => {
                    self.end(format!("it panicked at {location}: {message}"));
                    return Err(CallError::Panicked { message, location });
                }
                other => return Err(self.broken(&format!("frame tag {}", other.tag()))),
            }
        }
    }

    /// Closes the channel, so that the worker exits, and waits for it.
    ///
    /// # Errors
    /// How it ended if not with status 0 ([`CallError::Killed`], [`CallError::Exited`], a
    /// worker that panicked exits with 101), [`CallError::Transport`].
    pub fn close(mut self) -> Result<(), CallError> {
        self.channel = None;
        let status = self.child.wait().map_err(CallError::Transport)?;
        if status.code() == Some(0) {
            Ok(())
        } else {
            Err(status_error(status))
        }
    }

    /// Sends a request's frames; a worker gone already (`EPIPE`) is found out by the read.
    fn send(&mut self, bytes: &[u8], fds: &[OwnedFd]) -> Result<(), CallError> {
        let Some(ch) = &self.channel else {
            return Ok(());
        };
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let frames = request_frames(bytes, raw.len() as u16);
        let last = frames.len() - 1;
        for (i, frame) in frames.iter().enumerate() {
            let attach: &[RawFd] = if i == last { &raw } else { &[] };
            match send_frame(ch.as_fd(), frame, attach) {
                Ok(()) => {}
                Err(Errno::EPIPE | Errno::ECONNRESET) => return Ok(()),
                Err(e) => return Err(CallError::Transport(std::io::Error::from(e).into())),
            }
        }
        Ok(())
    }

    /// The next frame, or the child's end once it has exited and sent nothing more.
    fn next(&mut self) -> Result<Got, CallError> {
        loop {
            let Some(ch) = &self.channel else {
                return self
                    .child
                    .wait()
                    .map(Got::Ended)
                    .map_err(CallError::Transport);
            };
            match recv_frame(ch.as_fd(), false) {
                Ok(Received::Frame(frame, fds)) => return Ok(Got::Frame(frame, fds)),
                Ok(Received::Closed) => self.channel = None,
                Ok(Received::Empty) => {
                    // Exited: whatever it sent is queued by now; the next read tells.
                    if self
                        .child
                        .try_wait()
                        .map_err(CallError::Transport)?
                        .is_some()
                    {
                        let ch = self.channel.take().expect("checked above");
                        if let Ok(Received::Frame(frame, fds)) = recv_frame(ch.as_fd(), false) {
                            self.channel = Some(ch);
                            return Ok(Got::Frame(frame, fds));
                        }
                        continue;
                    }
                    self.wait_readable()?;
                }
                Err(e) => return Err(self.broken(&e.to_string())),
            }
        }
    }

    /// Waits until the channel or the child's connection has news.
    fn wait_readable(&self) -> Result<(), CallError> {
        let conn = self
            .child
            .connection_fd()
            .ok_or(CallError::Transport(crate::Error::ServerGone))?;
        let mut fds = vec![PollFd::new(conn, PollFlags::POLLIN)];
        if let Some(ch) = &self.channel {
            fds.push(PollFd::new(ch.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => Ok(()),
            Err(e) => Err(CallError::Transport(std::io::Error::from(e).into())),
        }
    }

    fn end(&mut self, why: String) {
        self.ended = Some(why);
        self.channel = None;
    }

    /// The worker sent something that is not a valid answer: it is killed and taken out of
    /// use, and the call gets [`CallError::Decode`].
    fn broken(&mut self, what: &str) -> CallError {
        let _ = self.child.kill();
        self.end(format!("it sent a bad frame ({what})"));
        CallError::Decode(what.to_owned())
    }
}

/// How a child that sent no answer ended.
fn status_error(status: ExitStatus) -> CallError {
    match status.signal() {
        Some(signal) => CallError::Killed {
            signal,
            deadline_expired: status.deadline_expired(),
        },
        None => CallError::Exited(status.raw_code()),
    }
}
