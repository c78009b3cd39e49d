//! [`WorkerPool`]: `n` [`Worker`]s of one entry shared by threads. Each worker sits behind its
//! own lock; a call takes a free one (or waits for one), spawns a worker where there is none,
//! and takes out of use a worker that ended during the call or served its quota.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};

use forkserver_protocol::typed::Codec;
use serde::{de::DeserializeOwned, Serialize};

use super::error::CallError;
use super::worker::Worker;
use crate::client::Client;

/// `n` workers of the entry registered with `Zygote::worker`, spawned when first needed;
/// [`WorkerPool::call`] may be called from many threads at once.
///
/// ```no_run
/// use forkserver_client::{Client, WorkerPool};
///
/// let client = Client::launch(std::env::current_exe()?)?;
/// let pool = WorkerPool::<String, usize>::new(&client, "tokenize", 4).max_calls_per_worker(1000);
/// std::thread::scope(|s| {
///     for _ in 0..8 {
///         s.spawn(|| pool.call(&"a b c".to_owned()));
///     }
/// });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct WorkerPool<Req: ?Sized, Resp> {
    client: Client,
    name: String,
    codec: Codec,
    max_calls: Option<u64>,
    slots: Vec<Mutex<Option<Worker<Req, Resp>>>>,
    next: AtomicUsize,
}

impl<Req: Serialize + ?Sized, Resp: DeserializeOwned> WorkerPool<Req, Resp> {
    /// A pool of `n` workers (at least one) of entry `name`, none spawned yet.
    pub fn new(client: &Client, name: impl Into<String>, n: usize) -> Self {
        Self {
            client: client.clone(),
            name: name.into(),
            codec: Codec::default(),
            max_calls: None,
            slots: (0..n.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Retires each worker after `k` calls (at least one) and starts a fresh one in its place,
    /// for state that grows or leaks. Default: no limit.
    pub fn max_calls_per_worker(mut self, k: u64) -> Self {
        self.max_calls = Some(k.max(1));
        self
    }

    /// The codec of the workers spawned from now on.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// How many workers the pool holds at most.
    pub fn size(&self) -> usize {
        self.slots.len()
    }

    /// Sends `req` to a free worker (spawning one if its place is empty) and waits for the
    /// response. A worker that ends during the call (a panic, a signal) gives the call its
    /// error and is replaced by the next call that lands in its place.
    ///
    /// # Errors
    /// As [`Worker::call`], and as [`crate::WorkerBuilder::spawn`] when a worker is started.
    pub fn call(&self, req: &Req) -> Result<Resp, CallError> {
        let mut slot = self.take_slot();
        let worker = match &mut *slot {
            Some(w) => w,
            empty => empty.insert(
                self.client
                    .worker::<Req, Resp>(self.name.clone())
                    .codec(self.codec)
                    .spawn()?,
            ),
        };
        let result = worker.call(req);
        let retire = self.max_calls.is_some_and(|k| worker.calls() >= k);
        if worker.is_ended() || retire {
            if let Some(w) = slot.take() {
                // Its status is the call's outcome already (ended), or of no interest.
                let _ = w.close();
            }
        }
        result
    }

    /// A free slot if there is one, searching from a rotating start; else waits for that one.
    fn take_slot(&self) -> MutexGuard<'_, Option<Worker<Req, Resp>>> {
        let n = self.slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        for i in 0..n {
            match self.slots[(start + i) % n].try_lock() {
                Ok(guard) => return guard,
                // A thread panicked while it held the slot: the worker (if any) is whole.
                Err(TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        self.slots[start]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
