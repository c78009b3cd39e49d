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
    /// Stopped ([`Managed::stop`]): a dead server is not started again.
    stopped: bool,
}

impl Managed {
    pub(crate) fn new(spec: LaunchSpec) -> io::Result<Self> {
        let (server, ready) = Server::spawn(&spec)?;
        let mut starting = Starting(server);
        if let Err(e) = starting.wait_ready(ready, spec.ready_timeout) {
            starting.0.remove_dir();
            return Err(e);
        }
        let current = starting.0;
        Ok(Self {
            spec,
            current,
            generation: 0,
            retired: Vec::new(),
            owner: std::process::id(),
            stopped: false,
        })
    }

    /// Where the current server is: its socket path, key and generation.
    pub(crate) fn current(&self) -> (PathBuf, Option<Vec<u8>>, u64) {
        let (path, key) = self.current_key();
        (path, key, self.generation)
    }

    /// The current server's socket path and key (`None` when authentication is off).
    pub(crate) fn current_key(&self) -> (PathBuf, Option<Vec<u8>>) {
        (self.current.sock.clone(), self.current.key.clone())
    }

    /// Makes `new` (ready) the current server; the old one is told to exit.
    fn install(&mut self, new: Server) {
        let old = std::mem::replace(&mut self.current, new);
        self.generation += 1;
        tracing::debug!(
            old = old.pid(),
            new = self.current.pid(),
            "forkserver relaunched"
        );
        self.retire(old);
    }

    /// Tells `server` to exit (its alive pipe closed); it is reaped, and its directory
    /// removed, once it has exited (here, at a later request, or when the client goes).
    fn retire(&mut self, mut server: Server) {
        server.close_alive();
        if server.has_exited() {
            server.remove_dir();
        } else {
            self.retired.push(server);
        }
    }

    /// Where the current server is (socket path, key, generation), or, if it has exited, its
    /// generation: the caller relaunches it ([`Managed::start_relaunch`]).
    pub(crate) fn check_running(&mut self) -> Result<(PathBuf, Option<Vec<u8>>, u64), u64> {
        self.reap_retired();
        if self.current.has_exited() {
            tracing::warn!(pid = self.current.pid(), "forkserver exited");
            return Err(self.generation);
        }
        Ok(self.current())
    }

    /// A relaunch holds this state's lock only to read and swap it, never while the new
    /// server loads (so that an async task that looks at it never waits for a preload):
    ///
    /// Step 1: if `generation` is still the current one,
    /// starts a new server (not waiting for it to be ready) and returns it, with the read end
    /// of its ready pipe and how long it may take. `None` if it was relaunched meanwhile.
    pub(crate) fn start_relaunch(
        &mut self,
        generation: u64,
    ) -> io::Result<Option<(Starting, OwnedFd, Duration)>> {
        if generation != self.generation {
            return Ok(None);
        }
        if self.stopped {
            return Err(io::Error::other(
                "the launched server was stopped as this process exits",
            ));
        }
        let (server, ready) = Server::spawn(&self.spec)?;
        Ok(Some((Starting(server), ready, self.spec.ready_timeout)))
    }

    /// Step 2: the server of [`Managed::start_relaunch`] is ready (`Ok`) or failed. Ready, it
    /// becomes the current one, unless another relaunch got there first (then it is retired);
    /// failed, it is killed and retired. Returns where the current server is.
    pub(crate) fn finish_relaunch(
        &mut self,
        generation: u64,
        Starting(mut server): Starting,
        ready: io::Result<()>,
    ) -> io::Result<(PathBuf, Option<Vec<u8>>, u64)> {
        match ready {
            Ok(()) if generation == self.generation => self.install(server),
            Ok(()) => self.retire(server),
            Err(e) => {
                // Reaped later, without waiting here for the kill to take effect.
                let _ = server.process.kill();
                self.retire(server);
                return Err(e);
            }
        }
        Ok(self.current())
    }

    /// With `warm_connections`: where to open a connection ahead of need (path, key,
    /// generation).
    pub(crate) fn warm_target(&self) -> Option<(PathBuf, Option<Vec<u8>>, u64)> {
        self.spec.warm.then(|| self.current())
    }

    /// The current server's generation (bumped at each relaunch), without checking that it
    /// still runs.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
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

    /// Tells the servers to exit (their alive pipes closed), waits up to [`SHUTDOWN_WAIT`] for
    /// them and removes their socket directories; none is started again after this. What
    /// dropping the last client does, and what `Client::launch_self`'s exit handler does while
    /// clones may still exist. Nothing in a forked copy of the launching process.
    pub(crate) fn stop(&mut self) {
        if std::process::id() != self.owner {
            // A forked copy: its fds close with it; the servers are the launcher's.
            return;
        }
        self.stopped = true;
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        let servers = std::iter::once(&mut self.current).chain(self.retired.iter_mut());
        for s in servers {
            s.close_alive();
            s.wait_until(deadline);
            s.remove_dir();
        }
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A server started by [`Managed::start_relaunch`], not yet known to be ready.
#[derive(Debug)]
pub(crate) struct Starting(Server);

impl Starting {
    /// Waits, blocking, until the server is ready (`server_process::wait_ready`); one that
    /// is not is killed and reaped here.
    ///
    /// # Errors
    /// As `wait_ready`.
    pub(crate) fn wait_ready(&mut self, ready: OwnedFd, timeout: Duration) -> io::Result<()> {
        let r = wait_ready(&mut self.0.process, ready, timeout);
        if r.is_err() {
            let _ = self.0.process.kill();
            let _ = self.0.process.wait();
        }
        r
    }

    #[cfg(feature = "tokio")]
    /// How it ended, if it has (without waiting).
    pub(crate) fn try_status(&mut self) -> Option<std::process::ExitStatus> {
        self.0.process.try_wait().ok().flatten()
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
    /// Starts the program, without waiting for it to be ready: the server and the read end of
    /// its ready pipe.
    fn spawn(spec: &LaunchSpec) -> io::Result<(Self, OwnedFd)> {
        let (dir, listener) = make_socket_dir()?;
        let sock = dir.join("sock");
        let key = match spec.authenticate {
            true => forkserver_protocol::auth::random_challenge().map(|k| Some(k.to_vec())),
            false => Ok(None),
        };
        match key.and_then(|key| Ok((spawn_server(spec, listener, key.as_deref())?, key))) {
            Ok(((process, alive, ready), key)) => {
                tracing::debug!(pid = process.id(), sock = %sock.display(), "forkserver started");
                let server = Self {
                    dir,
                    sock,
                    process,
                    alive: Some(alive),
                    key,
                };
                Ok((server, ready))
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
