//! The server processes a client launched: starting one (the launch convention of
//! `launch.rs`), noticing it died and starting it again, and stopping them all when the last
//! handle goes (CPython's `forkserver.ensure_running`).

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

// `launch.rs` builds the spec and hands it to `Managed`: named here for it, defined beside
// the code that starts a server from it.
pub(crate) use crate::server_process::LaunchSpec;
use crate::server_process::{make_socket_dir, spawn_server, wait_ready};

/// How long dropping the last client waits for launched servers to exit.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

/// The server this client launched, and older ones not yet reaped.
#[derive(Debug)]
pub(crate) struct Managed {
    spec: LaunchSpec,
    current: Server,
    /// Bumped at each relaunch, so that threads that saw the same dead server relaunch once.
    generation: u64,
    retired: Vec<Server>,
    /// The process that launched the servers: a child forked from it (without exec) that
    /// drops its copy must not stop them or remove their sockets.
    owner: u32,
}

impl Managed {
    pub(crate) fn new(spec: LaunchSpec) -> io::Result<Self> {
        let current = Server::start(&spec)?;
        Ok(Self {
            spec,
            current,
            generation: 0,
            retired: Vec::new(),
            owner: std::process::id(),
        })
    }

    /// The socket path and key of a running server, and its generation. Relaunches first if
    /// the server process has exited.
    pub(crate) fn ensure_running(&mut self) -> io::Result<(PathBuf, Option<Vec<u8>>, u64)> {
        self.reap_retired();
        if self.current.has_exited() {
            tracing::warn!(pid = self.current.pid(), "forkserver exited; relaunching");
            return self.relaunch(self.generation);
        }
        Ok(self.current_with_generation())
    }

    fn current_with_generation(&self) -> (PathBuf, Option<Vec<u8>>, u64) {
        let (path, key) = self.current_key();
        (path, key, self.generation)
    }

    /// The generation of the current server (see [`Managed::relaunch`]).
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The current server's socket path and key (`None` when authentication is off).
    pub(crate) fn current_key(&self) -> (PathBuf, Option<Vec<u8>>) {
        (self.current.sock.clone(), self.current.key.clone())
    }

    /// Relaunches the server if `generation` is still the current one (another thread may have
    /// relaunched it already), and returns the socket path and generation to use.
    pub(crate) fn relaunch(
        &mut self,
        generation: u64,
    ) -> io::Result<(PathBuf, Option<Vec<u8>>, u64)> {
        if generation == self.generation {
            let new = Server::start(&self.spec)?;
            let mut old = std::mem::replace(&mut self.current, new);
            self.generation += 1;
            tracing::debug!(
                old = old.pid(),
                new = self.current.pid(),
                "forkserver relaunched"
            );
            old.close_alive();
            if old.has_exited() {
                old.remove_dir();
            } else {
                self.retired.push(old);
            }
        }
        Ok(self.current_with_generation())
    }

    /// With `warm_connections`: where to open a connection ahead of need (path, key,
    /// generation).
    pub(crate) fn warm_target(&self) -> Option<(PathBuf, Option<Vec<u8>>, u64)> {
        self.spec.warm.then(|| self.current_with_generation())
    }

    /// The current server's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.current.pid()
    }

    /// The current server's socket path.
    pub(crate) fn socket_path(&self) -> PathBuf {
        self.current.sock.clone()
    }

    fn reap_retired(&mut self) {
        self.retired.retain_mut(|s| {
            if s.has_exited() {
                s.remove_dir();
                false
            } else {
                true
            }
        });
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        if std::process::id() != self.owner {
            // A forked copy: its fds close with it; the servers are the launcher's.
            return;
        }
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        let servers = std::iter::once(&mut self.current).chain(self.retired.iter_mut());
        for s in servers {
            s.close_alive();
            s.wait_until(deadline);
            s.remove_dir();
        }
    }
}

/// One launched server process.
#[derive(Debug)]
struct Server {
    dir: PathBuf,
    sock: PathBuf,
    process: std::process::Child,
    /// The alive pipe's write end; the server exits when it is closed.
    alive: Option<OwnedFd>,
    /// The key this server was given.
    key: Option<Vec<u8>>,
}

impl Server {
    fn start(spec: &LaunchSpec) -> io::Result<Self> {
        let (dir, listener) = make_socket_dir()?;
        let sock = dir.join("sock");
        let key = match spec.authenticate {
            true => Some(forkserver_protocol::auth::random_challenge()?.to_vec()),
            false => None,
        };
        let started =
            spawn_server(spec, listener, key.as_deref()).and_then(|(mut p, alive, ready)| {
                match wait_ready(&mut p, ready, spec.ready_timeout) {
                    Ok(()) => Ok((p, alive)),
                    Err(e) => {
                        // Never left behind: killed (if still there) and reaped.
                        let _ = p.kill();
                        let _ = p.wait();
                        Err(e)
                    }
                }
            });
        match started {
            Ok((process, alive)) => {
                tracing::debug!(pid = process.id(), sock = %sock.display(), "forkserver launched");
                Ok(Self {
                    dir,
                    sock,
                    process,
                    alive: Some(alive),
                    key,
                })
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Whether the process has exited (and is now reaped). An error from `waitpid` (say,
    /// `SIGCHLD` ignored) counts as "still running": a dead server then shows as a refused
    /// connection.
    fn has_exited(&mut self) -> bool {
        matches!(self.process.try_wait(), Ok(Some(_)))
    }

    fn close_alive(&mut self) {
        self.alive = None;
    }

    fn wait_until(&mut self, deadline: Instant) {
        while !self.has_exited() {
            if Instant::now() >= deadline {
                tracing::warn!(pid = self.pid(), "forkserver still running after shutdown");
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn remove_dir(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove socket dir");
            }
        }
    }
}
