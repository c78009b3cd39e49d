//! Typed calls (PROTOCOL.md §11, informative): [`TypedCall`] encodes a serde argument behind
//! the typed header, makes the call's result channel and sends its child end in the bundle;
//! [`TypedChild`] (`child.rs`) reads the answer. The server is not involved beyond a plain
//! entry `Spawn`. A [`Worker`] (`worker.rs`, §11.7) is one such child that serves many
//! requests sent on its channel; [`WorkerPool`] (`pool.rs`) shares `n` of them between threads.

#[cfg(feature = "tokio")]
#[allow(unsafe_code)] // registering the result channel with tokio's reactor
mod async_child;
mod child;
mod error;
mod pool;
mod progress;
mod worker;

use std::marker::PhantomData;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use forkserver_protocol::typed::{
    channel_pair, encode_arg, fingerprint, ArgError, Codec, EncodedArg, MemfdArg, MemfdError,
    TypedHeader,
};
use forkserver_protocol::{EntryJob, ErrorCode, Job, Session};
use serde::{de::DeserializeOwned, Serialize};

#[cfg(feature = "tokio")]
pub use async_child::AsyncTypedChild;
pub use child::TypedChild;
pub use error::CallError;
pub use pool::WorkerPool;
pub use worker::{Worker, WorkerBuilder};

use crate::child::Child;
use crate::engine::Engine;
use crate::error::Error;
use crate::request::{deadline_ms, Defaults, Request};
use crate::stdio::{Stdio, Stream};

/// The default of [`TypedCall::inline_arg_max`]: an encoded argument longer than this travels
/// in a sealed memfd (PROTOCOL.md §11.8), a shorter one inline in the payload. Measured with
/// `cargo run --release -p forkserver-benches --example typed_call -- --threshold`: up to
/// 32 KiB the memfd costs some 5% more (about 10 µs: `memfd_create`, the seals, one more fd,
/// the child's checks); from 48 KiB it costs less (0.85 at 48 KiB, 0.75 at 64 KiB, 0.55 at
/// 1 MiB), since the server neither reads nor holds the bytes.
pub const INLINE_ARG_MAX: usize = 32 << 10;

/// A builder for a typed call of a zygote entry registered with `Zygote::typed`: made by
/// [`crate::Client::typed`], with the setters of [`crate::Call`] and the codec. An argument
/// of any size up to 1 GiB ([`forkserver_protocol::typed::MAX_MEMFD_ARG_LEN`]) works: one over
/// [`TypedCall::inline_arg_max`] travels in a sealed memfd.
///
/// ```no_run
/// use forkserver_client::{CallError, Client};
/// use std::time::Duration;
///
/// let client = Client::launch(std::env::current_exe()?)?;
/// let area: u64 = client
///     .typed::<(u32, u32), u64>("area")
///     .deadline(Duration::from_secs(5))
///     .spawn(&(800, 600))?
///     .join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct TypedCall<A: ?Sized, R> {
    client: Arc<Engine>,
    name: String,
    codec: Codec,
    inline_max: usize,
    req: Request,
    _types: PhantomData<fn(&A) -> R>,
}

impl<A: Serialize + ?Sized, R: DeserializeOwned> TypedCall<A, R> {
    pub(crate) fn new(client: Arc<Engine>, name: String) -> Self {
        Self {
            client,
            name,
            codec: Codec::default(),
            inline_max: INLINE_ARG_MAX,
            req: Request::default(),
            _types: PhantomData,
        }
    }

    request_setters!();

    /// The codec of the argument and the result: [`Codec::MessagePack`] (the default) or
    /// [`Codec::Json`].
    pub fn codec(&mut self, codec: Codec) -> &mut Self {
        self.codec = codec;
        self
    }

    /// An encoded argument longer than `max` bytes travels in a sealed memfd (PROTOCOL.md
    /// §11.8), a shorter one inline in the payload; the default is [`INLINE_ARG_MAX`], `0`
    /// puts every non-empty argument in a memfd. An inline argument must fit the payload's
    /// limit (about 1 MiB), or the spawn fails with [`Error::InvalidRequest`].
    pub fn inline_arg_max(&mut self, max: usize) -> &mut Self {
        self.inline_max = max;
        self
    }

    /// Encodes `arg` and asks the server to fork a child that runs the entry with it.
    /// [`crate::Fd`]s in `arg` are duplicated and placed at free fd numbers in the child.
    ///
    /// # Errors
    /// [`CallError::Encode`]; [`CallError::Mismatch`] if the server has no entry of that
    /// name; [`CallError::Spawn`] for everything [`crate::Call::spawn`] can fail with
    /// (before connecting: [`Error::TooManyFds`] counting the channel, the argument's fds
    /// and its memfd, [`Error::InvalidRequest`] for an inline argument over the payload's
    /// limit, [`Error::Io`] if the memfd cannot be made). An encoded argument over 1 GiB is
    /// [`CallError::Encode`].
    pub fn spawn(&mut self, arg: &A) -> Result<TypedChild<R>, CallError> {
        let (arg, fds) = encode_arg(self.codec, arg, self.inline_max).map_err(arg_error)?;
        let fp = fingerprint::<A, R>(&self.name, self.codec);
        let start = Start {
            client: &self.client,
            name: &self.name,
            codec: self.codec,
            fingerprint: fp,
            worker: false,
        };
        let (child, ours) = start.spawn(&mut self.req, arg, fds)?;
        Ok(TypedChild::new(child, ours, self.name.clone(), self.codec))
    }

    /// [`TypedCall::spawn`] for async code: no step blocks the thread (see
    /// [`crate::Call::spawn_async`]). [`AsyncTypedChild::join`] then waits for the outcome on
    /// the reactor.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use forkserver_client::Client;
    ///
    /// let client = Client::connect("/run/user/1000/forkserver.sock")?;
    /// let area: u64 = client
    ///     .typed::<(u32, u32), u64>("area")
    ///     .spawn_async(&(800, 600))
    ///     .await?
    ///     .join()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Panics
    /// Outside a tokio runtime with its I/O and time drivers, as tokio's own I/O does.
    ///
    /// # Errors
    /// As [`TypedCall::spawn`], and [`CallError::Spawn`] with [`Error::Io`] if the connection
    /// or the channel cannot be registered with the runtime.
    #[cfg(feature = "tokio")]
    pub async fn spawn_async(&mut self, arg: &A) -> Result<AsyncTypedChild<R>, CallError> {
        let (arg, fds) = encode_arg(self.codec, arg, self.inline_max).map_err(arg_error)?;
        let start = Start {
            client: &self.client,
            name: &self.name,
            codec: self.codec,
            fingerprint: fingerprint::<A, R>(&self.name, self.codec),
            worker: false,
        };
        let (child, ours) = start.spawn_async(&mut self.req, arg, fds).await?;
        AsyncTypedChild::new(child, ours, self.name.clone(), self.codec).map_err(CallError::Spawn)
    }
}

/// What starts a typed call's or a worker's child (§11.2, §11.7).
pub(crate) struct Start<'a> {
    pub(crate) client: &'a Arc<Engine>,
    pub(crate) name: &'a str,
    pub(crate) codec: Codec,
    pub(crate) fingerprint: u64,
    pub(crate) worker: bool,
}

impl Start<'_> {
    /// Makes the result channel, places it and `fds` at free targets beside `req`'s own, and
    /// spawns the entry with the header and `arg`: the child and the client's channel end.
    pub(crate) fn spawn(
        &self,
        req: &mut Request,
        arg: EncodedArg,
        fds: Vec<OwnedFd>,
    ) -> Result<(Child, OwnedFd), CallError> {
        let (placed, ours, job) = self.place(req, arg, fds)?;
        let spawned = job.and_then(|job| placed.req.spawn(self.client, job, Defaults::None));
        drop(placed);
        self.finish(spawned, ours)
    }

    /// [`Start::spawn`] for async code. A cancelled future leaves the builder as it was: the
    /// channel's child end and the argument's fds go with it.
    #[cfg(feature = "tokio")]
    pub(crate) async fn spawn_async(
        &self,
        req: &mut Request,
        arg: EncodedArg,
        fds: Vec<OwnedFd>,
    ) -> Result<(Child, OwnedFd), CallError> {
        let (placed, ours, job) = self.place(req, arg, fds)?;
        let spawned = match job {
            Ok(job) => {
                placed
                    .req
                    .spawn_async(self.client, &job, Defaults::None)
                    .await
            }
            Err(e) => Err(e),
        };
        drop(placed);
        self.finish(spawned, ours)
    }

    /// Makes the result channel and adds its child end, `fds` and (for an
    /// [`EncodedArg::Memfd`]) the argument's sealed memfd (§11.8) to `req`, at free targets;
    /// the job carries the header that names them. The fds leave `req` when the [`Placed`]
    /// goes.
    fn place<'r>(
        &self,
        req: &'r mut Request,
        arg: EncodedArg,
        fds: Vec<OwnedFd>,
    ) -> Result<(Placed<'r>, OwnedFd, crate::Result<Job>), CallError> {
        let (inline, memfd) = match arg {
            EncodedArg::Memfd { fd, len } => (Vec::new(), Some((fd, len))),
            EncodedArg::Inline(bytes) => (bytes, None),
        };
        let (ours, theirs) =
            channel_pair().map_err(|e| CallError::Spawn(std::io::Error::from(e).into()))?;
        let keep = req.fds.len();
        let n_arg = fds.len();
        let targets = free_targets(&req.fds, 1 + n_arg + usize::from(memfd.is_some()));
        let memfd_target = targets.get(1 + n_arg).copied();
        let header = TypedHeader::new(
            self.codec,
            self.fingerprint,
            targets[0],
            targets[1..=n_arg].to_vec(),
        )
        .map(|h| {
            let at = memfd_target
                .zip(memfd.as_ref())
                .and_then(|(t, m)| MemfdArg::new(t, m.1));
            h.with_worker(self.worker).with_memfd_arg(at)
        });
        let placed = Placed { req, keep };
        placed.req.fds.push((targets[0], theirs));
        let rest = fds.into_iter().chain(memfd.map(|m| m.0));
        placed
            .req
            .fds
            .extend(targets[1..].iter().copied().zip(rest));
        let job = match header.and_then(|h| h.encode(&inline)) {
            // More argument fds than a bundle holds beside the channel.
            None => Err(Error::TooManyFds(placed.req.fds.len())),
            Some(payload) => EntryJob::new(self.name.to_owned(), payload)
                .map(Job::Entry)
                .map_err(Error::from),
        };
        Ok((placed, ours, job))
    }

    /// The spawn's outcome as a typed call's.
    fn finish(
        &self,
        spawned: crate::Result<Child>,
        ours: OwnedFd,
    ) -> Result<(Child, OwnedFd), CallError> {
        match spawned {
            Ok(child) => Ok((child, ours)),
            Err(Error::Server {
                code: ErrorCode::UnknownEntry,
                message,
                ..
            }) => Err(CallError::Mismatch {
                entry: self.name.to_owned(),
                detail: format!("the server has no such entry ({message})"),
            }),
            Err(e) => Err(CallError::Spawn(e)),
        }
    }
}

/// A request with a typed call's fds added: they leave it (closed: the child has its copies
/// now, or nothing does) when this goes, even with a cancelled async spawn.
struct Placed<'r> {
    req: &'r mut Request,
    keep: usize,
}

impl Drop for Placed<'_> {
    fn drop(&mut self) {
        self.req.fds.truncate(self.keep);
    }
}

/// An argument that could not be encoded, or whose memfd could not be made: an argument over
/// the cap is the caller's, the memfd's system calls are I/O.
fn arg_error(e: ArgError) -> CallError {
    match e {
        ArgError::Memfd(MemfdError::Io(errno)) => {
            CallError::Spawn(std::io::Error::from(errno).into())
        }
        other => CallError::Encode(other.to_string()),
    }
}

/// `n` fd numbers from 3 up that no fd of `fds` targets.
fn free_targets(fds: &[(u32, OwnedFd)], n: usize) -> Vec<u32> {
    let mut used: Vec<u32> = fds.iter().map(|(t, _)| *t).collect();
    used.sort_unstable();
    (3u32..)
        .filter(|t| used.binary_search(t).is_err())
        .take(n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::free_targets;

    #[test]
    fn free_targets_skip_stdio_and_taken_numbers() {
        let null = || std::fs::File::open("/dev/null").unwrap().into();
        let fds = vec![(3, null()), (5, null()), (0, null())];
        assert_eq!(free_targets(&fds, 3), vec![4, 6, 7]);
        assert_eq!(free_targets(&[], 1), vec![3]);
    }
}
