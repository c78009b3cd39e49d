//! [`AsyncTypedChild`]: a typed call on tokio (features `tokio` and `typed`), made by
//! [`TypedCall::spawn_async`](crate::TypedCall::spawn_async). The child's exit status comes
//! through an [`AsyncChild`]; the result channel (PROTOCOL.md §11.3) is registered with the
//! reactor and read without blocking (`MSG_DONTWAIT`) when it is readable. Both feed one
//! [`Progress`] in the handle, which decides the outcome as for the blocking
//! [`crate::TypedChild`], so no await point can lose what was read before it.

use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Mutex, MutexGuard, PoisonError};

use forkserver_protocol::typed::Codec;
use serde::de::DeserializeOwned;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::unix::pipe;
use tokio::sync::Notify;

use super::error::CallError;
use super::progress::Progress;
use crate::async_child::AsyncChild;
use crate::child::Child;
use crate::error::Error;

/// A typed call's child, for async code: [`crate::TypedChild`] on tokio.
///
/// Every method takes `&self`: share the handle (in an [`Arc`](std::sync::Arc)) to kill the
/// child from one task while another joins it.
///
/// **Cancellation.** [`AsyncTypedChild::join`] is cancellation-safe: what a dropped `join`
/// future had read (frames of the result, the exit status) stays in the handle, the child runs
/// on, and `join` may be awaited again, so `tokio::time::timeout(d, child.join())` is the
/// async `join_timeout`. Dropping the *handle* before the outcome closes the child's
/// connection and the result channel, as dropping a [`crate::TypedChild`] does: the child
/// runs on (unless spawned with `kill_on_disconnect(true)`) and its result is lost.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use forkserver_client::{CallError, Client};
/// use std::time::Duration;
///
/// let client = Client::connect("/run/user/1000/forkserver.sock")?;
/// let child = client.typed::<u64, u64>("slow_square").spawn_async(&12).await?;
/// // Not done within 10 ms: the child runs on, and nothing read so far is lost.
/// if tokio::time::timeout(Duration::from_millis(10), child.join()).await.is_err() {
///     println!("still running: pid {}", child.pid());
/// }
/// assert_eq!(child.join().await?, 144);
/// // The value has been taken.
/// assert!(matches!(child.join().await, Err(CallError::Taken)));
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct AsyncTypedChild<R> {
    child: AsyncChild,
    /// The client's end of the result channel, registered with the reactor.
    channel: AsyncFd<OwnedFd>,
    progress: Mutex<Progress>,
    /// Woken whenever a task files news: the readiness they came with is consumed by that
    /// task, and another task's `join` may be waiting for them.
    news: Notify,
    /// The parent's end of a piped stdin ([`crate::Stdio::piped`]).
    pub stdin: Option<pipe::Sender>,
    /// The parent's end of a piped stdout.
    pub stdout: Option<pipe::Receiver>,
    /// The parent's end of a piped stderr.
    pub stderr: Option<pipe::Receiver>,
    _result: PhantomData<fn() -> R>,
}

fn lock(m: &Mutex<Progress>) -> MutexGuard<'_, Progress> {
    // Each step leaves the state whole, panic or not.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<R: DeserializeOwned> AsyncTypedChild<R> {
    /// Wraps a typed call's child just spawned and the client's end of its channel. Must run
    /// inside a tokio runtime (the reactor).
    pub(crate) fn new(
        child: Child,
        channel: OwnedFd,
        entry: String,
        codec: Codec,
    ) -> crate::Result<Self> {
        let mut child = AsyncChild::new(child)?;
        // SAFETY: `channel` is an open fd that the `AsyncFd` owns from here on: it stays open,
        // naming the same socket, until the `AsyncFd` is dropped, and `as_raw_fd` on an
        // `OwnedFd` always gives that fd.
        let channel = unsafe { AsyncFd::register_with_interest(channel, Interest::READABLE) }
            .map_err(|e| Error::Io(e.into()))?;
        Ok(Self {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            child,
            channel,
            progress: Mutex::new(Progress::new(entry, codec)),
            news: Notify::new(),
            _result: PhantomData,
        })
    }

    /// The child's pid, in the server's pid namespace.
    pub fn pid(&self) -> i32 {
        self.child.pid()
    }

    /// Sends `signo` to the child and waits for the server's acknowledgement, as
    /// [`AsyncChild::signal`]; another task may be joining the child meanwhile.
    ///
    /// # Errors
    /// As [`crate::Child::signal`].
    pub async fn signal(&self, signo: i32) -> crate::Result<()> {
        self.child.signal(signo).await
    }

    /// Kills the child (`SIGKILL`); `Ok(())` if it has already exited.
    /// [`AsyncTypedChild::join`] then gives [`CallError::Killed`] unless the result had been
    /// sent.
    ///
    /// # Errors
    /// As [`crate::Child::kill`].
    pub async fn kill(&self) -> crate::Result<()> {
        self.child.kill().await
    }

    /// Waits for the call to end: its value, or how it ended without one. Cancellation-safe
    /// (see the type's docs); once it has returned the outcome, later calls give
    /// [`CallError::Taken`].
    ///
    /// # Errors
    /// As [`crate::TypedChild::join`].
    pub async fn join(&self) -> Result<R, CallError> {
        loop {
            // Registered before the check: news filed by another task after it wakes us.
            let news = self.news.notified();
            tokio::pin!(news);
            news.as_mut().enable();
            let (wants_status, wants_answer) = {
                let mut progress = lock(&self.progress);
                if progress.taken() {
                    return Err(CallError::Taken);
                }
                let mut filed = false;
                if progress.wants_status() {
                    let status = self.child.try_wait().map_err(CallError::Transport)?;
                    if let Some(status) = status {
                        progress.set_status(status);
                        filed = true;
                    }
                }
                let channel = self.channel.get_ref().as_fd();
                if progress.wants_answer() {
                    filed |= progress.read(channel);
                }
                if filed {
                    self.news.notify_waiters();
                }
                if progress.settle(Some(channel)) {
                    let outcome = progress.outcome();
                    self.news.notify_waiters();
                    return outcome;
                }
                (progress.wants_status(), progress.wants_answer())
            };
            tokio::select! {
                // Both cancellation-safe: a frame read here is filed in the child or the
                // channel's socket buffer, and the next turn reads it.
                status = self.child.wait(), if wants_status => {
                    status.map_err(CallError::Transport)?;
                }
                ready = self.channel.readable(), if wants_answer => {
                    // What made it readable is read by the next turn, after this clear: a
                    // frame arriving after that read makes it readable again.
                    ready.map_err(|e| CallError::Transport(e.into()))?.clear_ready();
                }
                () = &mut news => {}
            }
        }
    }
}
