//! The event loop: one thread, one epoll set, non-blocking sockets, a state machine per
//! connection driven by the incremental decoder, child exits through a signalfd.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use forkserver_protocol::{
    auth, peek_pending, ErrorCode, ErrorReply, Exit, FdBundle, Frame, FrameReader, Job, Message,
    OutFrame, Pending, Pid as PidReply, ReadLimits, Spawn, Status, TransportError,
    PROTOCOL_VERSION,
};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{accept4, MsgFlags, SockFlag};
use nix::unistd::Pid;

use crate::config::Config;
use crate::entry::EntryFn;
use crate::listen::{bind_listener, peer_uid, BoundPath};
use crate::quota::Handshakes;
use crate::session::{Action, Env, Session, State};
use crate::spawn::{self, Work};
use crate::timers::{Timer, TimerTable};
use crate::ServerError;

mod accept;
mod children;
mod conn;
mod lifecycle;
mod pool;
mod timeouts;

use accept::{has_unread_input, open_reserve};
use children::Child;
use conn::Conn;
use pool::Pooled;

/// What an epoll event is about: the `u64` registered with each fd, typed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    Listener,
    /// The signalfd (`SIGCHLD`, `SIGTERM`).
    Signals,
    /// The owner's alive pipe.
    Alive,
    /// The report pipe of the child of this spawn serial (`pid_after_exec`).
    Report(u64),
    /// A connection, by id.
    Conn(u64),
}

impl Token {
    /// Report tokens carry this bit; connection ids start above the fixed tokens.
    const REPORT_BIT: u64 = 1 << 62;

    fn to_u64(self) -> u64 {
        match self {
            Token::Listener => 0,
            Token::Signals => 1,
            Token::Alive => 2,
            Token::Report(serial) => Self::REPORT_BIT | serial,
            Token::Conn(id) => id,
        }
    }

    fn from_u64(v: u64) -> Token {
        match v {
            0 => Token::Listener,
            1 => Token::Signals,
            2 => Token::Alive,
            v if v & Self::REPORT_BIT != 0 => Token::Report(v & !Self::REPORT_BIT),
            id => Token::Conn(id),
        }
    }
}

const FIRST_CONN_ID: u64 = 16;
/// recvmsg calls per readiness event: enough to drain a burst, few enough to stay fair.
const READS_PER_EVENT: usize = 4;
/// Frames queued for a client that does not read; past this its connection stops being read.
const MAX_QUEUED_REPLIES: usize = 64;
/// Largest job handed to a pooled child: it must fit in the socket's send buffer at once.
const POOL_MAX_FRAME: usize = 64 * 1024;
/// How long a closing connection may take to flush its last replies before it is dropped.
const CLOSING_GRACE: Duration = Duration::from_secs(2);
/// Test hook, read once at [`Server::bind`]: with `1`, the server stops itself (`SIGSTOP`) right
/// after it has sent the `Pid` of a job handed to a pooled child, so that a test can kill it
/// at exactly that point. Not for production use.
const TEST_STOP_AFTER_PID_ENV: &str = "FORKSERVER_TEST_STOP_AFTER_PID";

/// A bound server, ready to [`Server::run`].
pub struct Server {
    epoll: Epoll,
    listener: Option<OwnedFd>,
    socket_path: Option<BoundPath>,
    signals: SignalFd,
    alive: Option<OwnedFd>,
    /// Kept open so that `accept` can still take (and refuse) a connection at EMFILE.
    reserve_fd: Option<OwnedFd>,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    children: HashMap<Pid, Child>,
    /// Every timer: child deadlines, handshakes, partial frames, closing, the shutdown grace.
    timers: TimerTable,
    /// Connections in the handshake: their quota (§6.3).
    handshakes: Handshakes,
    entries: HashMap<String, EntryFn>,
    config: Config,
    spawned_total: u64,
    shutting_down: bool,
    idle_since: Instant,
    uid: u32,
    /// Signals whose disposition the children must put back to the default (bit `n - 1` for
    /// signal `n`, 1..=64).
    signals_to_reset: u64,
    /// Pooled children waiting for a job (`--prefork`), with the server's end of their socket.
    pool: VecDeque<(Pid, OwnedFd)>,
    /// The shared report socket (a datagram socketpair): children without a report pipe of
    /// their own write their failure here (`spawn::Report::Shared`); the server reads it.
    report_rx: OwnedFd,
    report_tx: OwnedFd,
    /// Reports read from the shared socket for children not reaped yet, by spawn serial.
    shared_reports: HashMap<u64, Message>,
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

fn sys(what: &'static str) -> impl Fn(Errno) -> ServerError {
    move |e| ServerError::Sys(what.into(), e)
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
        let threads = std::fs::read_dir("/proc/self/task")
            .map(|d| d.count())
            .unwrap_or(1);
        if threads > 1 {
            return Err(ServerError::Threads(threads));
        }
        // Single-threaded, nothing forked yet: no child may inherit the service manager's
        // variables (whoever built the config took what it needed of them).
        crate::activation::scrub_env();
        let listen = std::mem::replace(&mut config.listen, crate::Listen::Abstract(Vec::new()));
        let shared = !config.allowed_uids.is_empty();
        let (listener, socket_path) = bind_listener(listen, shared)?;
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        mask.add(Signal::SIGTERM);
        mask.thread_block().map_err(sys("sigprocmask"))?;
        crate::sys::ignore(Signal::SIGINT).map_err(sys("signal"))?;
        crate::sys::ignore(Signal::SIGPIPE).map_err(sys("signal"))?;
        // From here on the server changes no disposition: these are what children reset.
        let signals_to_reset = crate::sys::non_default_signals().map_err(sys("rt_sigaction"))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(sys("signalfd"))?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(sys("epoll_create"))?;
        epoll
            .add(
                &listener,
                EpollEvent::new(EpollFlags::EPOLLIN, Token::Listener.to_u64()),
            )
            .map_err(sys("epoll_ctl"))?;
        epoll
            .add(
                &signals,
                EpollEvent::new(EpollFlags::EPOLLIN, Token::Signals.to_u64()),
            )
            .map_err(sys("epoll_ctl"))?;
        let alive = config.alive_fd.take();
        if let Some(a) = &alive {
            epoll
                .add(
                    a,
                    EpollEvent::new(EpollFlags::EPOLLIN, Token::Alive.to_u64()),
                )
                .map_err(sys("epoll_ctl"))?;
        }
        match crate::quota::raise_fd_limit() {
            Ok((soft, hard)) if soft < hard => {
                tracing::debug!("RLIMIT_NOFILE soft limit raised from {soft} to {hard}");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("RLIMIT_NOFILE: {e}"),
        }
        let reserve_fd = open_reserve();
        let (report_rx, report_tx) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Datagram,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .map_err(sys("socketpair"))?;
        tracing::info!(socket = ?socket_path.as_ref().map(BoundPath::path), "forkserver listening");
        Ok(Server {
            epoll,
            listener: Some(listener),
            socket_path,
            signals,
            alive,
            reserve_fd,
            conns: HashMap::new(),
            next_conn: FIRST_CONN_ID,
            children: HashMap::new(),
            timers: TimerTable::default(),
            handshakes: Handshakes::new(config.max_handshakes),
            entries: HashMap::new(),
            config,
            spawned_total: 0,
            shutting_down: false,
            idle_since: Instant::now(),
            uid: nix::unistd::getuid().as_raw(),
            signals_to_reset,
            pool: VecDeque::new(),
            report_rx,
            report_tx,
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
                Err(e) => return Err(ServerError::Sys("epoll_wait".into(), e)),
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
