//! The `tokio` face of the client (feature `tokio`): [`AsyncChild`], made by
//! [`Command::spawn_async`] and [`Call::spawn_async`].
//!
//! The child's connection is registered with tokio's reactor; whichever task polls reads the
//! frames that have arrived and files them in the shared state (the exit status, the answers
//! to signal requests, in order), so `wait` and `signal` can run in different tasks at once and
//! a cancelled `wait` loses nothing.
//!
//! The spawn itself never blocks a runtime thread: the request and its `Pid` reply (a round
//! trip on a kept connection), and when needed the new connection (connect, verification,
//! handshake, authentication) and the relaunch of a launched server that died (its ready
//! pipe read on the reactor while its preload runs) are awaited on tokio's reactor
//! (`engine_async.rs`). The runtime needs its I/O and time drivers (`enable_all`, or
//! `#[tokio::main]`).

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, MutexGuard, PoisonError};

use forkserver_protocol::ErrorReply;
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::Notify;

use crate::child::Child;
use crate::command::{Call, Command};
use crate::error::{Error, Result};
use crate::exit_status::ExitStatus;
use crate::output::Output;
use crate::pipes::{ChildStderr, ChildStdin, ChildStdout};

/// A child process forked by the server, for async code: [`crate::Child`] on tokio.
///
/// `wait`, `signal` and `kill` take `&self`: share the child (in an [`Arc`](std::sync::Arc)) to signal it
/// from one task while another waits. Every method is cancellation-safe: frames read while
/// a future was pending are kept for the next call.
///
/// ```no_run
/// # async fn demo() -> forkserver_client::Result<()> {
/// use forkserver_client::{Client, Stdio};
///
/// let client = Client::connect("/run/user/1000/forkserver.sock")?;
/// let child = client.command("sleep").arg("10").spawn_async().await?;
/// let child = std::sync::Arc::new(child);
/// let waiter = tokio::spawn({
///     let child = child.clone();
///     async move { child.wait().await }
/// });
/// child.kill().await?;
/// let status = waiter.await.expect("join")?;
/// assert_eq!(status.signal(), Some(9));
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct AsyncChild {
    pid: i32,
    /// A duplicate of the connection's fd, registered with the reactor; dropped first (see
    /// `Drop`), before the connection goes back to the client.
    io: Option<AsyncFd<OwnedFd>>,
    shared: Mutex<Shared>,
    /// Woken whenever a task files frames: the readiness they came with is consumed by that
    /// task, and another task's answer may be among them.
    news: Notify,
    /// The parent's end of a piped stdin.
    pub stdin: Option<pipe::Sender>,
    /// The parent's end of a piped stdout.
    pub stdout: Option<pipe::Receiver>,
    /// The parent's end of a piped stderr.
    pub stderr: Option<pipe::Receiver>,
}

#[derive(Debug)]
struct Shared {
    child: Child,
    /// Signal requests sent, and answers read, so far: the n-th answer is the n-th request's.
    sent: u64,
    answered: u64,
    answers: std::collections::HashMap<u64, std::result::Result<(), ErrorReply>>,
    /// Requests whose `signal` future was dropped before its answer: the answer is not kept.
    abandoned: std::collections::HashSet<u64>,
}

impl Shared {
    /// Files every frame that has arrived; returns whether there was any.
    fn pump(&mut self) -> Result<bool> {
        let was_running = self.child.is_running();
        let answers = self.child.pump()?;
        let news = !answers.is_empty() || was_running != self.child.is_running();
        for answer in answers {
            if !self.abandoned.remove(&self.answered) {
                self.answers.insert(self.answered, answer);
            }
            self.answered += 1;
        }
        Ok(news)
    }
}

/// A signal request in flight: if its future is dropped before the answer, the answer is
/// dropped too when it comes (or now, if it came).
struct Abandon<'a> {
    shared: &'a Mutex<Shared>,
    ticket: Option<u64>,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket {
            let mut shared = lock(self.shared);
            if shared.answers.remove(&ticket).is_none() && ticket >= shared.answered {
                shared.abandoned.insert(ticket);
            }
        }
    }
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // Each step leaves the state whole, panic or not.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn sender(f: Option<File>) -> Result<Option<pipe::Sender>> {
    Ok(f.map(|f| pipe::Sender::from_owned_fd(OwnedFd::from(f)))
        .transpose()?)
}

fn receiver(f: Option<File>) -> Result<Option<pipe::Receiver>> {
    Ok(f.map(|f| pipe::Receiver::from_owned_fd(OwnedFd::from(f)))
        .transpose()?)
}

impl AsyncChild {
    /// Wraps a child just spawned. Must run inside a tokio runtime (the reactor).
    pub(crate) fn new(mut child: Child) -> Result<Self> {
        child.defer_release();
        let io = match child.connection_fd() {
            Some(fd) => {
                let dup = fd.try_clone_to_owned()?;
                // SAFETY: `dup` is an open fd this `AsyncFd` owns: it stays open, and names the
                // same open file description, until the `AsyncFd` is dropped.
                let registered =
                    unsafe { AsyncFd::register_with_interest(dup, tokio::io::Interest::READABLE) };
                Some(registered.map_err(|e| Error::Io(e.into())))
            }
            None => None,
        }
        .transpose()?;
        Ok(Self {
            pid: child.pid(),
            io,
            stdin: sender(child.stdin.take().map(ChildStdin::into_file))?,
            stdout: receiver(child.stdout.take().map(ChildStdout::into_file))?,
            stderr: receiver(child.stderr.take().map(ChildStderr::into_file))?,
            news: Notify::new(),
            shared: Mutex::new(Shared {
                child,
                sent: 0,
                answered: 0,
                answers: std::collections::HashMap::new(),
                abandoned: std::collections::HashSet::new(),
            }),
        })
    }

    /// The child's pid, in the server's pid namespace.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Until `done` says what the state holds is the answer: pump, check, then sleep until
    /// the connection is readable.
    async fn until<T>(&self, mut done: impl FnMut(&mut Shared) -> Option<Result<T>>) -> Result<T> {
        loop {
            // Registered before the check: news filed by another task after it wakes us.
            let news = self.news.notified();
            tokio::pin!(news);
            news.as_mut().enable();
            {
                let mut shared = lock(&self.shared);
                if shared.pump()? {
                    self.news.notify_waiters();
                }
                if let Some(r) = done(&mut shared) {
                    return r;
                }
            }
            let Some(io) = &self.io else {
                return Err(Error::ServerGone);
            };
            tokio::select! {
                ready = io.readable() => {
                    // Whatever made it readable is read by the pump of the next turn, under
                    // the lock; a frame arriving after that pump makes it readable again.
                    ready?.clear_ready();
                }
                () = &mut news => {}
            }
        }
    }

    /// Waits for the child to end, as [`crate::Child::wait`]. Closes a piped `stdin` first
    /// only through [`AsyncChild::wait_with_output`] (`stdin` is a field you can drop).
    ///
    /// # Errors
    /// As [`crate::Child::wait`].
    pub async fn wait(&self) -> Result<ExitStatus> {
        self.until(|s| s.child.stored_outcome()).await
    }

    /// The status if the child has ended, without waiting.
    ///
    /// # Errors
    /// As [`crate::Child::try_wait`].
    pub fn try_wait(&self) -> Result<Option<ExitStatus>> {
        let mut shared = lock(&self.shared);
        if shared.pump()? {
            self.news.notify_waiters();
        }
        shared.child.stored_outcome().transpose()
    }

    /// Sends signal `signo` to the child and waits for the server's acknowledgement, as
    /// [`crate::Child::signal`]; another task may be waiting for the child meanwhile.
    ///
    /// # Errors
    /// As [`crate::Child::signal`].
    pub async fn signal(&self, signo: i32) -> Result<()> {
        let ticket = {
            let mut shared = lock(&self.shared);
            if shared.pump()? {
                self.news.notify_waiters();
            }
            // The connection's socket is non-blocking here (it came from the async spawn, or was
            // made so by `AsyncChild::new`): a full socket fails the send, it never blocks.
            shared.child.send_signal(signo)?;
            shared.sent += 1;
            shared.sent - 1
        };
        // Cancelled before its answer: the answer, when it comes, is dropped, not kept.
        let mut pending = Abandon {
            shared: &self.shared,
            ticket: Some(ticket),
        };
        let answer = self
            .until(|s| {
                if let Some(answer) = s.answers.remove(&ticket) {
                    return Some(answer.map_err(Error::from));
                }
                (!s.child.is_running()).then_some(Err(Error::AlreadyExited))
            })
            .await;
        pending.ticket = None;
        answer
    }

    /// Kills the child with `SIGKILL`; `Ok(())` if it has already exited.
    ///
    /// # Errors
    /// As [`AsyncChild::signal`], except [`Error::AlreadyExited`].
    pub async fn kill(&self) -> Result<()> {
        match self.signal(nix::libc::SIGKILL).await {
            Err(Error::AlreadyExited) => Ok(()),
            other => other,
        }
    }

    /// Closes a piped stdin, reads piped stdout and stderr to their end, and waits, as
    /// [`crate::Child::wait_with_output`].
    ///
    /// # Errors
    /// As [`AsyncChild::wait`], and [`Error::Io`] reading the pipes.
    pub async fn wait_with_output(mut self) -> Result<Output> {
        drop(self.stdin.take());
        async fn read_all(pipe: Option<pipe::Receiver>) -> std::io::Result<Vec<u8>> {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                p.read_to_end(&mut buf).await?;
            }
            Ok(buf)
        }
        let (stdout, stderr) =
            tokio::try_join!(read_all(self.stdout.take()), read_all(self.stderr.take()))?;
        let status = self.wait().await?;
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }
}

impl Drop for AsyncChild {
    fn drop(&mut self) {
        // Out of the reactor first; only then may the connection serve another request.
        drop(self.io.take());
        lock(&self.shared).child.release();
    }
}

impl Command {
    /// [`Command::spawn`] for async code. No step blocks the thread: the request on a kept
    /// connection, or a new connection (connect, checks, handshake, authentication), and the
    /// relaunch of a launched server that died (its preload may take seconds) are awaited.
    ///
    /// # Panics
    /// Outside a tokio runtime with its I/O and time drivers (`Builder::enable_all`,
    /// `#[tokio::main]`), as tokio's own I/O and timers do.
    ///
    /// # Errors
    /// As [`Command::spawn`], and [`Error::Io`] if the connection cannot be registered with
    /// the runtime.
    pub async fn spawn_async(&mut self) -> Result<AsyncChild> {
        AsyncChild::new(self.spawn_child_async(false).await?)
    }

    /// [`Command::output`] for async code: stdout and stderr piped unless set, stdin
    /// `/dev/null` unless set.
    ///
    /// # Errors
    /// As [`Command::output`].
    pub async fn output_async(&mut self) -> Result<Output> {
        let child = self.spawn_child_async(true).await?;
        AsyncChild::new(child)?.wait_with_output().await
    }

    /// [`Command::status`] for async code.
    ///
    /// # Errors
    /// As [`Command::status`].
    pub async fn status_async(&mut self) -> Result<ExitStatus> {
        self.spawn_async().await?.wait().await
    }
}

impl Call {
    /// [`Call::spawn`] for async code.
    ///
    /// # Errors
    /// As [`Call::spawn`], and [`Error::Io`] if the connection cannot be registered with the
    /// runtime.
    pub async fn spawn_async(&mut self) -> Result<AsyncChild> {
        AsyncChild::new(self.spawn_child_async().await?)
    }
}
