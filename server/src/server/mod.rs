//! The event loop: one thread, one epoll set, non-blocking sockets, a state machine per
//! connection driven by the incremental decoder, child exits through a signalfd.
//!
//! [`Server`] and its loop are here; its steps are in the modules below, each of which names
//! what it uses. Two of them are types that only their module touches: `conn.rs` ([`Conn`],
//! one connection's socket, reader, replies and session) and `child.rs` ([`Child`], one child
//! until it is reaped). The others are the loop's work on them: `setup.rs` (the steps of
//! [`Server::bind`]), `accept.rs` (new connections and their quotas), `connections.rs`
//! (frames in, the session's actions, replies out), `spawning.rs` (a child for a request and
//! its `Pid`), `children.rs` (their reports, their reaping), `pool.rs` (`--prefork`),
//! `timeouts.rs` (the timer table's side), `lifecycle.rs` (signals, shutdown, the alive pipe);
//! `token.rs` types the epoll tokens.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollEvent, EpollTimeout};
use nix::sys::signalfd::SignalFd;
use nix::unistd::Pid;

use crate::config::Config;
use crate::entry::EntryFn;
use crate::error::{sys, ServerError};
use crate::ids::{ConnId, Serial};
use crate::listen::BoundPath;
use crate::metrics::Metrics;
use crate::quota::{open_reserve_fd, Handshakes};
use crate::spawn::ForkContext;
use crate::timers::TimerTable;

mod accept;
mod child;
mod children;
mod conn;
mod connections;
mod lifecycle;
mod pool;
mod setup;
mod spawning;
mod timeouts;
mod token;

use child::Child;
use conn::Conn;
use token::Token;

/// Test hook, read once at [`Server::bind`]: with `1`, the server stops itself (`SIGSTOP`) right
/// after it has sent the `Pid` of a job handed to a pooled child, so that a test can kill it
/// at exactly that point. Not for production use.
const TEST_STOP_AFTER_PID_ENV: &str = "FORKSERVER_TEST_STOP_AFTER_PID";

/// With `1` in the server's environment when it binds, exec jobs are forked as entry jobs are,
/// instead of taking the `CLONE_VM` path (`clone(CLONE_VM | CLONE_VFORK)`, the default): for
/// comparing the two (the `compare` harness) and as a way out should the `CLONE_VM` path
/// misbehave on some kernel. The replies are the same on both paths.
pub const EXEC_FORK_ENV: &str = "FORKSERVER_EXEC_FORK";

/// A bound server, ready to [`Server::run`].
pub struct Server {
    epoll: Epoll,
    listener: Option<OwnedFd>,
    socket_path: Option<BoundPath>,
    signals: SignalFd,
    alive: Option<OwnedFd>,
    /// Kept open so that `accept` can still take (and refuse) a connection at EMFILE.
    reserve_fd: Option<OwnedFd>,
    conns: HashMap<ConnId, Conn>,
    next_conn: ConnId,
    children: HashMap<Pid, Child>,
    /// Every timer: child deadlines, handshakes, partial frames, closing, the shutdown grace.
    timers: TimerTable,
    /// Connections in the handshake: their quota (§6.3).
    handshakes: Handshakes,
    entries: HashMap<String, EntryFn>,
    config: Config,
    spawned_total: u64,
    /// The counters of `Metrics` (§5.16): only their methods move them.
    metrics: Metrics,
    shutting_down: bool,
    idle_since: Instant,
    uid: u32,
    /// What every fork needs: the signals to reset, the parent-death signal, the shared report
    /// socket's write end, the key.
    fork: ForkContext,
    /// Pooled children waiting for a job (`--prefork`), with the server's end of their socket.
    pool: VecDeque<(Pid, OwnedFd)>,
    /// The read end of the shared report socket (a datagram socketpair): children without a
    /// report pipe of their own write their failure to the other end (`spawn::ReportTo`).
    report_rx: OwnedFd,
    /// Reports read from the shared socket for children not reaped yet, by spawn serial.
    shared_reports: HashMap<Serial, crate::spawn::Failure>,
    /// [`TEST_STOP_AFTER_PID_ENV`] was set.
    stop_after_pooled_pid: bool,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("socket_path", &self.socket_path)
            .field("connections", &self.conns.len())
            .field("children", &self.children.len())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds the listening socket and sets up the event loop. Signals: `SIGINT` and `SIGPIPE`
    /// are ignored; `SIGCHLD` and `SIGTERM` are blocked and read from a signalfd. The service
    /// manager's variables (`LISTEN_*`, `NOTIFY_SOCKET`, `WATCHDOG_*`) are removed from the
    /// environment, so that no child inherits them ([`crate::ServiceEnv::take`] reads them
    /// first).
    ///
    /// # Errors
    /// A limit of the config is out of range ([`Config::validate`]), the socket cannot be
    /// bound (in use, insecure directory, permissions) or a system call of the setup fails.
    pub fn bind(mut config: Config) -> Result<Server, ServerError> {
        config.validate()?;
        setup::check_single_threaded()?;
        // Single-threaded, nothing forked yet: no child may inherit the service manager's
        // variables (whoever built the config took what it needed of them).
        crate::activation::scrub_env();
        let (listener, socket_path) = setup::listener(&mut config)?;
        let (signals, signals_to_reset) = setup::signals()?;
        let alive = config.alive_fd.take();
        let epoll = setup::event_loop(&listener, &signals, alive.as_ref())?;
        setup::raise_fd_limit();
        let reserve_fd = open_reserve_fd();
        let (report_rx, report_tx) = setup::shared_report_socket()?;
        tracing::info!(socket = ?socket_path.as_ref().map(BoundPath::path), "forkserver listening");
        let die_with_server = config.kill_children_with_server;
        let key = config.key.take();
        let mut fork = ForkContext::new(signals_to_reset, die_with_server, report_tx, key);
        fork.set_exec_by_fork(std::env::var_os(EXEC_FORK_ENV).is_some_and(|v| v == "1"));
        Ok(Server {
            epoll,
            listener: Some(listener),
            socket_path,
            signals,
            alive,
            reserve_fd,
            conns: HashMap::new(),
            next_conn: ConnId::FIRST,
            children: HashMap::new(),
            timers: TimerTable::default(),
            handshakes: Handshakes::new(config.max_handshakes),
            entries: HashMap::new(),
            config,
            spawned_total: 0,
            metrics: Metrics::new(),
            shutting_down: false,
            idle_since: Instant::now(),
            uid: nix::unistd::getuid().as_raw(),
            fork,
            pool: VecDeque::new(),
            report_rx,
            shared_reports: HashMap::new(),
            stop_after_pooled_pid: std::env::var_os(TEST_STOP_AFTER_PID_ENV)
                .is_some_and(|v| v == "1"),
        })
    }

    /// Registers the entry points children can run (zygote mode).
    pub fn with_entries(mut self, entries: HashMap<String, EntryFn>) -> Self {
        self.entries = entries;
        self
    }

    /// The socket file, when listening on a path.
    pub fn socket_path(&self) -> Option<&std::path::Path> {
        self.socket_path.as_ref().map(BoundPath::path)
    }

    /// Serves until `SIGTERM` (then: stop accepting, let the running children finish, kill
    /// those left at `Config::shutdown_timeout`, exit), EOF on the alive fd (exit at once;
    /// children run on), or the idle timeout.
    ///
    /// # Errors
    /// Only a failing `epoll_wait` or signalfd read ends the loop with an error; every error a
    /// client causes is answered to that client.
    pub fn run(mut self) -> Result<(), ServerError> {
        let mut events = vec![EpollEvent::empty(); 64];
        loop {
            // Refilled here, after the replies of the last turn went out: off the critical path.
            self.fill_pool();
            // READY=1 on the first turn (bound, preloaded, pool filled), then STATUS= changes.
            let stats = self.service_stats();
            if let Some(n) = self.config.notify.as_mut() {
                n.turn(Instant::now(), stats, &mut self.timers);
            }
            let timeout = self.next_timeout();
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(e) => return Err(sys("epoll_wait")(e)),
            };
            for ev in &events[..n] {
                let flags = ev.events();
                match Token::from_u64(ev.data()) {
                    Token::Listener => self.accept_all(),
                    Token::Signals => self.read_signals()?,
                    Token::Alive => {
                        if self.alive_closed() {
                            tracing::info!("owner gone (alive fd closed): exiting");
                            self.cleanup();
                            return Ok(());
                        }
                    }
                    Token::Report(serial) => self.on_report(serial),
                    Token::Conn(id) => self.on_conn_event(id, flags),
                }
            }
            self.expire(Instant::now());
            if self.shutting_down && self.children.is_empty() && self.conns.is_empty() {
                tracing::info!("shut down cleanly");
                self.cleanup();
                return Ok(());
            }
            if let Some(idle) = self.config.idle_timeout {
                if self.is_idle() && self.idle_since.elapsed() >= idle && !self.events_waiting() {
                    tracing::info!("idle for {idle:?}: exiting");
                    self.say_goodbye();
                    self.cleanup();
                    return Ok(());
                }
            }
        }
    }

    fn cleanup(&mut self) {
        if let Some(n) = self.config.notify.as_mut() {
            n.stopping();
        }
        // Dropping it removes the socket file.
        self.socket_path = None;
        self.listener = None;
    }

    /// Whether epoll has an event ready now (level-triggered: it stays reported). Checked just
    /// before an idle exit, so that a request that came in since the last wait is served.
    fn events_waiting(&self) -> bool {
        let mut ev = [EpollEvent::empty()];
        matches!(self.epoll.wait(&mut ev, EpollTimeout::ZERO), Ok(n) if n > 0)
    }

    /// No child, and every connection (if any) idle in READY with nothing left to send: what
    /// `--idle-timeout` counts. Connections kept for reuse (§6.6) do not keep the server up.
    fn is_idle(&self) -> bool {
        self.children.is_empty() && self.conns.values().all(Conn::is_idle)
    }

    /// The figures of the service manager's `STATUS=` (those of the `Status` reply).
    fn service_stats(&self) -> crate::notify::ServiceStats {
        crate::notify::ServiceStats {
            children: self.children.len(),
            connections: self.conns.len(),
            spawned: self.spawned_total,
        }
    }

    fn touch(&mut self) {
        self.idle_since = Instant::now();
    }

    // ----- accepting ------------------------------------------------------------------------

    // ----- signals and children -------------------------------------------------------------

    // ----- connections ----------------------------------------------------------------------
}
