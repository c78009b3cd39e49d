//! The engine's one request loop ([`crate::engine::Engine::exchange`]) for async code (feature
//! `tokio`): a kept connection if there is one, else a new one (connect, verify, handshake,
//! authenticate), else a relaunch of the launched server, every step awaited on tokio's
//! reactor. The relaunch starts the server process (`fork`+`exec`, as tokio's own
//! `process::Command` does) and waits for its ready pipe on the reactor; the locks around it
//! are held only to read or swap the server's state, never across an await.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use forkserver_protocol::{Features, Frame, Message};

use crate::conn::Conn;
use crate::conn_async::{attempt, Registered};
use crate::engine::{lock, Built, Engine, Located};
use crate::error::{Error, Result};
use crate::handshake::{own_uid, Failure};
use crate::managed::{Managed, Starting};
use crate::server_process::ReadyPipe;

/// [`Engine::exchange`], awaited: makes the request `build` builds and reads the first frame
/// of the reply, once more on a new connection if a kept one was closed by the server as the
/// request went out (PROTOCOL.md §6.6).
///
/// # Errors
/// As [`Engine::exchange`].
pub(crate) async fn exchange<T>(
    engine: &Engine,
    mut build: impl FnMut() -> Result<Built<T>>,
) -> Result<(Conn, Frame, T)> {
    let mut may_reuse = true;
    loop {
        let (mut conn, extra) = request(engine, may_reuse, &mut build).await?;
        let frame = conn.recv().await?;
        match &frame.message {
            Message::Error(e) if may_reuse && conn.conn().closed_without_acting(e) => {
                tracing::debug!("kept connection closed by the server: {e}");
                may_reuse = false;
            }
            _ => return Ok((conn.into_conn(), frame, extra)),
        }
    }
}

/// [`Engine::features`], awaited: the current server's `Features` from the cache, else asked
/// (a `FeaturesRequest` behind `Hello` on a new connection, kept for the next request).
///
/// # Errors
/// As [`exchange`].
pub(crate) async fn features(engine: &Engine) -> Result<Option<Features>> {
    if let Some(known) = engine.cached_features() {
        return Ok(known);
    }
    let request = || Ok((Some((Message::FeaturesRequest, Vec::new())), ()));
    let (conn, frame, ()) = exchange(engine, request).await?;
    engine.keep_features(conn, frame.message)
}

/// The engine's `request`, awaited: the same order of attempts and the same retries.
async fn request<T>(
    engine: &Engine,
    may_reuse: bool,
    mut build: impl FnMut() -> Result<Built<T>>,
) -> Result<(Registered, T)> {
    let (mut request, mut extra) = build()?;
    if may_reuse {
        if let Some((message, fds)) = request.take() {
            match engine.take_idle(engine.kept_generation()) {
                Some(conn) => {
                    let mut conn = Registered::new(conn)?;
                    // A refused send (EPIPE): not delivered, made anew below.
                    match conn.send(&message, fds).await {
                        Ok(()) => return Ok((conn, extra)),
                        Err(e) => tracing::debug!(error = %e, "kept connection unusable"),
                    }
                    engine.close_idle_connections();
                    (request, extra) = build()?;
                }
                None => request = Some((message, fds)),
            }
        }
    }
    let (path, key, generation) = match engine.locate() {
        Located::Path(path, key, uid) => {
            return fresh(&path, uid, key.as_deref(), request, 0)
                .await
                .map(|conn| (conn, extra))
                .map_err(|f| f.into_error(path))
        }
        Located::Launched(path, key, generation) => {
            match fresh(&path, own_uid(), key.as_deref(), request, generation).await {
                Ok(conn) => return Ok((conn, extra)),
                Err(Failure::Refused(e)) => {
                    tracing::warn!(error = %e, "forkserver not listening; relaunching");
                }
                Err(Failure::Gone(e)) => {
                    tracing::warn!(error = %e, "forkserver gone before replying; relaunching");
                }
                Err(f) => return Err(f.into_error(path)),
            }
            relaunch(engine, generation).await?
        }
        Located::Dead(generation) => relaunch(engine, generation).await?,
    };
    let (request, extra) = build()?;
    fresh(&path, own_uid(), key.as_deref(), request, generation)
        .await
        .map(|conn| (conn, extra))
        .map_err(|f| f.into_error(path))
}

/// A new connection to the server of `generation` at `path`, with `request` sent.
async fn fresh(
    path: &Path,
    uid: u32,
    key: Option<&[u8]>,
    request: Option<(Message, Vec<OwnedFd>)>,
    generation: u64,
) -> std::result::Result<Registered, Failure> {
    let mut conn = attempt(path, uid, key, request).await?;
    conn.conn_mut().generation = generation;
    Ok(conn)
}

/// Relaunches the launched server of `generation` (unless another task or thread did it
/// already) and returns where the current one is.
async fn relaunch(engine: &Engine, generation: u64) -> Result<(PathBuf, Option<Vec<u8>>, u64)> {
    let Some((managed, serial)) = engine.relaunch_state() else {
        unreachable!("only a launched server is relaunched")
    };
    // One relaunch at a time among tasks; awaited, so no thread waits.
    let _turn = serial.lock().await;
    let started = lock(managed)
        .start_relaunch(generation)
        .map_err(Error::Launch)?;
    let Some((starting, ready, timeout)) = started else {
        // Relaunched meanwhile.
        return Ok(lock(managed).current());
    };
    let mut pending = Pending {
        managed,
        generation,
        starting: Some(starting),
    };
    let outcome = wait_ready(ready, timeout, &mut pending).await;
    pending.finish(outcome).map_err(Error::Launch)
}

/// A server being started: if the future waiting for it is dropped, it is killed and handed
/// to the managed state to be reaped, never left running or as a zombie.
struct Pending<'a> {
    managed: &'a Mutex<Managed>,
    generation: u64,
    starting: Option<Starting>,
}

impl Pending<'_> {
    fn finish(mut self, outcome: io::Result<()>) -> io::Result<(PathBuf, Option<Vec<u8>>, u64)> {
        let Some(starting) = self.starting.take() else {
            unreachable!("taken only here or on drop")
        };
        lock(self.managed).finish_relaunch(self.generation, starting, outcome)
    }

    fn status(&mut self) -> Option<std::process::ExitStatus> {
        self.starting.as_mut().and_then(Starting::try_status)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(starting) = self.starting.take() {
            let cancelled = Err(io::Error::other("the relaunch was cancelled"));
            let _ = lock(self.managed).finish_relaunch(self.generation, starting, cancelled);
        }
    }
}

/// [`crate::server_process::wait_ready`] on the reactor: reads the ready pipe until the
/// server says it serves, ends it, or `timeout` passes.
async fn wait_ready(
    ready: OwnedFd,
    timeout: std::time::Duration,
    pending: &mut Pending<'_>,
) -> io::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(ready)?;
    let mut state = ReadyPipe::default();
    let read = async {
        let mut chunk = [0u8; 512];
        loop {
            match pipe.read(&mut chunk).await {
                Ok(0) => return Err(state.on_eof(pending.status())),
                Ok(n) if state.on_bytes(&chunk[..n]) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(outcome) => outcome,
        Err(_elapsed) => Err(ReadyPipe::timed_out(timeout)),
    }
}
