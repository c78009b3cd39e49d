//! The connection engine behind [`crate::Client`], [`crate::Command`], [`crate::Call`] and
//! [`crate::Child`]: where the server is (a path, or a process this client launched), the idle
//! connections kept for reuse (`idle.rs`), and the one loop that opens, verifies,
//! authenticates and retries (PROTOCOL.md §6.6, §9.3); `engine_async.rs` drives the same loop
//! on tokio.

use std::fmt;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use forkserver_protocol::{Features, Frame, Message};

use crate::conn::Conn;
use crate::error::{Error, Result};
use crate::features::FeatureCache;
use crate::handshake::{attempt, own_uid, Failure};
use crate::idle::IdlePool;
use crate::managed::Managed;
pub(crate) use crate::target::lock;
#[cfg(feature = "tokio")]
pub(crate) use crate::target::Located;
use crate::target::Target;

pub(crate) use crate::idle::DEFAULT_MAX_IDLE;

/// One server as this process reaches it, shared by a client's clones and everything they
/// spawned.
pub(crate) struct Engine {
    target: Target,
    /// Idle connections, handshake done; each knows the generation of the server it reaches.
    idle: IdlePool,
    /// Blocking relaunches take turns here, so that threads that found the same server dead
    /// start one new server, not one each.
    relaunching_blocking: Mutex<()>,
    /// Async relaunches wait here for one another (without blocking a thread), so that tasks
    /// that found the same server dead start one new server, not one each.
    #[cfg(feature = "tokio")]
    relaunching: tokio::sync::Mutex<()>,
    /// The server's `Features`, asked once per server (per launch, for a launched one).
    features: FeatureCache,
}

/// What the `build` of [`Engine::exchange`] returns: the request and its fds (none for a bare
/// handshake), and a value for the caller.
pub(crate) type Built<T> = (Option<(Message, Vec<OwnedFd>)>, T);

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let idle = self.idle_connections();
        match &self.target {
            Target::Path(p, ..) => f
                .debug_struct("Client")
                .field("path", p)
                .field("idle_connections", &idle)
                .finish_non_exhaustive(),
            Target::Launched(m) => f
                .debug_struct("Client")
                .field("launched", &*lock(m))
                .field("idle_connections", &idle)
                .finish(),
        }
    }
}

impl Engine {
    fn new(target: Target) -> Self {
        Engine {
            target,
            idle: IdlePool::new(),
            relaunching_blocking: Mutex::new(()),
            #[cfg(feature = "tokio")]
            relaunching: tokio::sync::Mutex::new(()),
            features: FeatureCache::default(),
        }
    }

    /// For a server at `path` that must run as `server_uid`.
    pub(crate) fn for_path(path: PathBuf, key: Option<Vec<u8>>, server_uid: u32) -> Self {
        Self::new(Target::Path(path, key, server_uid))
    }

    /// For a server this process launched.
    pub(crate) fn launched(managed: Managed) -> Self {
        Self::new(Target::Launched(Box::new(Mutex::new(managed))))
    }

    /// What the server implements (PROTOCOL.md §5.14), `None` before rev 0.6: cached for the
    /// current server, else asked.
    ///
    /// # Errors
    /// As [`Engine::status`].
    pub(crate) fn features(&self) -> Result<Option<Features>> {
        self.cached_features()
            .map_or_else(|| self.ask_features(), Ok)
    }

    /// The cached `Features` of the current server, if it was asked already (`Some(None)`: a
    /// server before rev 0.6).
    pub(crate) fn cached_features(&self) -> Option<Option<Features>> {
        self.features.get(self.target.generation())
    }

    /// Sends `FeaturesRequest` (on a fresh connection behind `Hello`, pipelined when there is
    /// no key) and caches the answer for the server that gave it.
    fn ask_features(&self) -> Result<Option<Features>> {
        let request = || Ok((Some((Message::FeaturesRequest, Vec::new())), ()));
        let (conn, frame, ()) = self.exchange(request)?;
        self.keep_features(conn, frame.message)
    }

    /// Caches the reply to `FeaturesRequest` read on `conn`, which is kept if READY.
    pub(crate) fn keep_features(&self, conn: Conn, reply: Message) -> Result<Option<Features>> {
        let features = self.features.keep(conn.generation, reply)?;
        if features.is_some() {
            self.put_idle(conn);
        }
        Ok(features)
    }

    /// Forgets the server's `Features`: it refused a request they said it implements (it may
    /// have been replaced by another server at the same path). The next request asks again.
    pub(crate) fn forget_features(&self) {
        self.features.forget();
    }

    /// Makes the request `build` builds ([`Engine::request`]) and reads the first frame of the
    /// reply. A kept connection that the server closed on its own as the request went out
    /// (its `Error` says it did not act on it, PROTOCOL.md §6.6) is given up, and the request
    /// made again on a new connection, once: the one retry loop of every request.
    pub(crate) fn exchange<T>(
        &self,
        mut build: impl FnMut() -> Result<Built<T>>,
    ) -> Result<(Conn, Frame, T)> {
        let mut may_reuse = true;
        loop {
            let (mut conn, extra) = self.request(may_reuse, &mut build)?;
            let frame = conn.recv()?;
            match &frame.message {
                Message::Error(e) if may_reuse && conn.closed_without_acting(e) => {
                    tracing::debug!("kept connection closed by the server: {e}");
                    may_reuse = false;
                }
                _ => return Ok((conn, frame, extra)),
            }
        }
    }

    /// The path of the server's socket. For a launched server, the current one's (a relaunch
    /// makes a new one).
    pub(crate) fn socket_path(&self) -> PathBuf {
        self.target.socket_path()
    }

    /// The pid of the server process this client launched (the current one); `None` for a
    /// client made by [`crate::Client::connect`].
    pub(crate) fn launched_server_pid(&self) -> Option<u32> {
        self.target.launched_server_pid()
    }

    /// Stops a launched server for good, as the process exits (`launch_self.rs`): the idle
    /// connections closed, then the server (`Target::stop_launched`).
    pub(crate) fn stop_launched(&self) {
        self.close_idle_connections();
        self.target.stop_launched();
    }

    /// The key connections authenticate with: the one given to [`crate::Client::connect_with_key`],
    /// or the one a launched server was given. Hand it to another process of yours that must
    /// reach the same server through a pipe or a file of mode 0600, never argv or the
    /// environment (PROTOCOL.md §9.1).
    pub(crate) fn auth_key(&self) -> Option<Vec<u8>> {
        self.target.auth_key()
    }

    /// Sets how many idle connections the client keeps for reuse (see [`crate::Client`]); 0 turns
    /// reuse off: every request then opens, authenticates and closes its own connection.
    /// Applies to all clones of this client; connections kept beyond the new limit are closed.
    pub(crate) fn set_max_idle_connections(&self, max: usize) {
        self.idle.set_max(max);
    }

    /// The number of idle connections kept for reuse right now.
    pub(crate) fn idle_connections(&self) -> usize {
        self.idle.len()
    }

    /// Closes the idle connections kept for reuse, e.g. so that a server with an idle timeout
    /// sees no client, or before counting this process's fds. Later requests open new ones.
    pub(crate) fn close_idle_connections(&self) {
        self.idle.close_all();
    }

    /// Whether spawns ask the server to keep their connection for reuse.
    pub(crate) fn reuses_connections(&self) -> bool {
        self.idle.reuses()
    }

    /// Takes back a connection that is READY (handshake done, no request outstanding), if
    /// fewer than the maximum are kept; closes it otherwise.
    pub(crate) fn put_idle(&self, conn: Conn) {
        self.idle.put(conn);
    }

    /// A kept connection to the server of `generation`, checked ([`IdlePool::take`]).
    pub(crate) fn take_idle(&self, generation: u64) -> Option<Conn> {
        self.idle.take(generation)
    }

    /// The generation of the server the kept connections should reach (0 for a server at a
    /// path), without checking that it still runs.
    pub(crate) fn kept_generation(&self) -> u64 {
        self.target.generation()
    }

    #[cfg(feature = "tokio")]
    /// Where the server is; for a launched one, whether it still runs (without relaunching).
    pub(crate) fn locate(&self) -> Located {
        self.target.locate()
    }

    /// The launched server's state and the lock async relaunches take in turn; `None` for a
    /// server at a path.
    #[cfg(feature = "tokio")]
    pub(crate) fn relaunch_state(&self) -> Option<(&Mutex<Managed>, &tokio::sync::Mutex<()>)> {
        match &self.target {
            Target::Path(..) => None,
            Target::Launched(m) => Some((m, &self.relaunching)),
        }
    }

    /// For a launched client with `warm_connections`: opens a ready connection for the next
    /// request if none is kept. Errors are ignored: the next request connects anew.
    pub(crate) fn warm_up(&self) {
        let Target::Launched(m) = &self.target else {
            return;
        };
        if !self.reuses_connections() || self.idle_connections() > 0 {
            return;
        }
        let Some((path, key, generation)) = lock(m).warm_target() else {
            return;
        };
        if let Ok(mut conn) = attempt(&path, own_uid(), key.as_deref(), None) {
            conn.generation = generation;
            self.put_idle(conn);
        }
    }

    /// One handshake with the server just launched, without relaunching it if it fails, and its
    /// `Features` asked behind it; the connection is kept for the first request.
    pub(crate) fn ping_launched(&self) -> Result<()> {
        let (path, key, uid, generation) = match &self.target {
            Target::Launched(m) => {
                let m = lock(m);
                let (path, key) = m.current_key();
                (path, key, own_uid(), m.generation())
            }
            Target::Path(..) => return self.features().map(drop),
        };
        let request = Some((Message::FeaturesRequest, Vec::new()));
        let mut conn =
            attempt(&path, uid, key.as_deref(), request).map_err(|f| f.into_error(path))?;
        conn.generation = generation;
        let reply = conn.recv()?.message;
        self.keep_features(conn, reply).map(drop)
    }

    /// Relaunches the launched server of `generation`, unless another thread did it already,
    /// and returns where the current one is. Threads that relaunch take turns on a lock of
    /// their own; the server's state is locked only to read and swap it, not while the new
    /// server loads (see [`Managed::start_relaunch`]).
    fn relaunch(
        &self,
        m: &Mutex<Managed>,
        generation: u64,
    ) -> Result<(PathBuf, Option<Vec<u8>>, u64)> {
        let _turn = lock(&self.relaunching_blocking);
        let started = lock(m).start_relaunch(generation).map_err(Error::Launch)?;
        let Some((mut starting, ready, timeout)) = started else {
            return Ok(lock(m).current());
        };
        let outcome = starting.wait_ready(ready, timeout);
        lock(m)
            .finish_relaunch(generation, starting, outcome)
            .map_err(Error::Launch)
    }

    /// Sends the request made by `build` on a kept connection (if `may_reuse`), or on a new one
    /// behind `Hello` (and the authentication); the reply is left for the caller, with the
    /// extra value `build` returned.
    ///
    /// `build` runs before any connection is used, so that invalid requests never reach the
    /// socket. It runs again (the first request's fds went with it) each time a request was
    /// not delivered: a kept connection that refused the send (its server gone), and, for a
    /// launched server, a first attempt that found the server dead: connect refused
    /// (`ECONNREFUSED`, `ENOENT`), or the connection closed before the request could be
    /// answered (a server exiting between our check and our connect); the server is then
    /// relaunched. So at most three times.
    fn request<T>(
        &self,
        may_reuse: bool,
        mut build: impl FnMut() -> Result<Built<T>>,
    ) -> Result<(Conn, T)> {
        let (mut request, mut extra) = build()?;
        // A kept connection first, without asking whether a launched server still runs
        // (`waitpid`, a system call per request): a dead server's connections refuse the send
        // (EPIPE), and the request then goes the way below, which checks.
        let generation = self.kept_generation();
        if request.is_some() && may_reuse {
            if let Some(mut conn) = self.take_idle(generation) {
                let Some((message, fds)) = request.take() else {
                    unreachable!("checked above")
                };
                // The handshake is done: one round trip. A connection whose server has gone
                // refuses the send at once (EPIPE): nothing was delivered, and the request is
                // made anew below, on a new connection.
                match conn.send(&message, fds) {
                    Ok(()) => return Ok((conn, extra)),
                    Err(e) => tracing::debug!(error = %e, "kept connection unusable"),
                }
                self.close_idle_connections();
                // Built anew: the first request's fds (and piped stdio) went with it.
                let (again, again_extra) = build()?;
                request = again;
                extra = again_extra;
            }
        }
        // For a launched server: relaunched first if it has died.
        let launched = match &self.target {
            Target::Path(..) => None,
            Target::Launched(m) => {
                // Bound first: the guard must be gone before a relaunch locks again.
                let running = lock(m).check_running();
                Some(match running {
                    Ok(running) => running,
                    Err(dead) => self.relaunch(m, dead)?,
                })
            }
        };
        let generation = launched.as_ref().map_or(0, |(.., g)| *g);
        let fresh = |path: &Path, uid, key: Option<&[u8]>, request, generation| {
            attempt(path, uid, key, request).map(|mut conn| {
                conn.generation = generation;
                conn
            })
        };
        match &self.target {
            Target::Path(path, key, uid) => fresh(path, *uid, key.as_deref(), request, generation)
                .map(|conn| (conn, extra))
                .map_err(|f| f.into_error(path.clone())),
            Target::Launched(m) => {
                let Some((path, key, generation)) = launched else {
                    unreachable!("set above for a launched server")
                };
                match fresh(&path, own_uid(), key.as_deref(), request, generation) {
                    Ok(conn) => return Ok((conn, extra)),
                    Err(Failure::Refused(e)) => {
                        tracing::warn!(error = %e, "forkserver not listening; relaunching");
                    }
                    Err(Failure::Gone(e)) => {
                        tracing::warn!(error = %e, "forkserver gone before replying; relaunching");
                    }
                    Err(Failure::Connect(source)) => return Err(Error::Connect { path, source }),
                    Err(f @ Failure::Untrusted(_)) => return Err(f.into_error(path)),
                    Err(Failure::Other(e)) => return Err(e),
                }
                let (path, key, generation) = self.relaunch(m, generation)?;
                let (request, extra) = build()?;
                fresh(&path, own_uid(), key.as_deref(), request, generation)
                    .map(|conn| (conn, extra))
                    .map_err(|f| f.into_error(path))
            }
        }
    }
}
