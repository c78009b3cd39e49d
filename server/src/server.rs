//! The event loop: one thread, one epoll set, non-blocking sockets, a state machine per
//! connection driven by the incremental decoder, child exits through a signalfd.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use forkserver_protocol::{
    auth, ErrorCode, ErrorReply, Exit, FdBundle, Frame, FrameReader, Job, Message, OutFrame,
    Pid as PidReply, ReadLimits, Spawn, Status, TransportError, PROTOCOL_VERSION,
};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::{kill, SigHandler, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{accept4, MsgFlags, SockFlag};
use nix::unistd::Pid;

use crate::config::Config;
use crate::listen::{bind_listener, peer_uid, BoundPath};
use crate::quota::{Handshakes, PartialFrames};
use crate::session::{Action, Env, Session, State};
use crate::spawn::{self, Work, STAGE_EXEC};
use crate::zygote::EntryFn;
use crate::ServerError;

const TOKEN_LISTENER: u64 = 0;
const TOKEN_SIGNALS: u64 = 1;
const TOKEN_ALIVE: u64 = 2;
/// Connection tokens are their ids; report-pipe tokens are a spawn's serial with this bit set.
const TOKEN_REPORT: u64 = 1 << 62;
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

struct Conn {
    fd: OwnedFd,
    reader: FrameReader,
    out: VecDeque<OutFrame>,
    /// The §6.1 state machine (sans-IO).
    session: Session,
    /// The state whose side effects (read limits, quotas, timers) are in force: the event
    /// loop catches up with the session in `sync`.
    applied: State,
    interest: EpollFlags,
    /// When the connection last entered `Ready`: the longest idle one is closed first when
    /// room is needed for a new connection.
    ready_since: Instant,
    /// The serial of the timer armed when the reader started holding a partial frame (§6.3).
    partial: Option<u64>,
}

impl Conn {
    fn state(&self) -> State {
        self.session.state()
    }

    /// READY with nothing received or queued: a connection a client keeps for reuse (§6.6).
    fn is_idle(&self) -> bool {
        self.state() == State::Ready && self.out.is_empty() && self.reader.buffered() == 0
    }

    /// Whether the connection takes more input now: not once it is closing, not while its
    /// Spawn waits for the exec (frames behind it wait for its Pid, §6.1), and not while its
    /// replies pile up unread (backpressure).
    /// In AWAIT_HELLO with nothing received, read or not: what a handshake quota closes first.
    fn is_silent(&self) -> bool {
        self.state() == State::AwaitHello
            && !self.reader.holds_partial_frame()
            && !has_unread_input(&self.fd)
    }

    fn wants_input(&self) -> bool {
        !matches!(self.state(), State::Closing | State::Spawning(_))
            && self.out.len() < MAX_QUEUED_REPLIES
    }
}

struct Child {
    /// Unique per spawn, so a stale deadline cannot hit a later child that reuses the pid.
    serial: u64,
    conn: Option<u64>,
    report: Option<OwnedFd>,
    /// The report pipe is in the epoll set (`pid_after_exec`).
    watching_report: bool,
    kill_on_disconnect: bool,
    /// `KEEP_CONNECTION`: after the final report the connection goes back to `Ready`.
    keep_connection: bool,
    want_pidfd: bool,
    deadline_hit: bool,
    /// A failure the server saw itself: a pooled child that could not be handed its job.
    /// Reported in place of the child's exit, like a failure it reported itself.
    failure: Option<Message>,
}

/// What became of a job offered to the prefork pool.
enum Pooled {
    /// A pooled child holds it: the job's frame and fds are in its socket's receive queue, so
    /// it runs even if the server dies now. Its pid, and the server's end of its socket (the
    /// report channel).
    Taken(Pid, OwnedFd),
    /// The frame went out in part only (not expected: it fits the socket's buffer): the child
    /// is killed, and the failure is reported in place of its exit.
    Broken(Pid, OwnedFd, Message),
    /// No pooled child can take it: fork for it.
    Fork(Spawn, FdBundle),
}

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
    deadlines: BinaryHeap<Reverse<(Instant, u64, Pid)>>,
    /// Connections in the handshake: their quota and deadlines (§6.3).
    handshakes: Handshakes,
    /// Deadlines of frames received in part (§6.3).
    partials: PartialFrames,
    /// Connections in `Closing`, by the time they are dropped if still unflushed.
    closing: VecDeque<(Instant, u64)>,
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
    /// Shutting down: when the children left are killed (`Config::shutdown_timeout`).
    shutdown_deadline: Option<Instant>,
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
    /// are ignored; `SIGCHLD` and `SIGTERM` are blocked and read from a signalfd.
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
        let listen = std::mem::replace(&mut config.listen, crate::Listen::Abstract(Vec::new()));
        let shared = !config.allowed_uids.is_empty();
        let (listener, socket_path) = bind_listener(listen, shared)?;
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        mask.add(Signal::SIGTERM);
        mask.thread_block().map_err(sys("sigprocmask"))?;
        // SAFETY: SIG_IGN installs no handler code.
        unsafe {
            nix::sys::signal::signal(Signal::SIGINT, SigHandler::SigIgn).map_err(sys("signal"))?;
            nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigIgn).map_err(sys("signal"))?;
        }
        // From here on the server changes no disposition: these are what children reset.
        let signals_to_reset = crate::sys::non_default_signals().map_err(sys("rt_sigaction"))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(sys("signalfd"))?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(sys("epoll_create"))?;
        epoll
            .add(
                &listener,
                EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_LISTENER),
            )
            .map_err(sys("epoll_ctl"))?;
        epoll
            .add(
                &signals,
                EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_SIGNALS),
            )
            .map_err(sys("epoll_ctl"))?;
        let alive = config.alive_fd.take();
        if let Some(a) = &alive {
            epoll
                .add(a, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_ALIVE))
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
            deadlines: BinaryHeap::new(),
            handshakes: Handshakes::new(config.max_handshakes, config.handshake_timeout),
            partials: PartialFrames::new(config.handshake_timeout),
            closing: VecDeque::new(),
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
            shutdown_deadline: None,
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
            let timeout = self.next_timeout();
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(e) => return Err(ServerError::Sys("epoll_wait".into(), e)),
            };
            for ev in &events[..n] {
                let flags = ev.events();
                match ev.data() {
                    TOKEN_LISTENER => self.accept_all(),
                    TOKEN_SIGNALS => self.read_signals()?,
                    TOKEN_ALIVE => {
                        if self.alive_closed() {
                            tracing::info!("owner gone (alive fd closed): exiting");
                            self.cleanup();
                            return Ok(());
                        }
                    }
                    t if t & TOKEN_REPORT != 0 => self.on_report(t & !TOKEN_REPORT),
                    id => self.on_conn_event(id, flags),
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
        // Dropping it removes the socket file.
        self.socket_path = None;
        self.listener = None;
    }

    fn next_timeout(&self) -> EpollTimeout {
        let mut next: Option<Instant> = self.deadlines.peek().map(|Reverse((t, _, _))| *t);
        let closing = self.closing.front().map(|(t, _)| *t);
        for t in [
            self.handshakes.next_deadline(),
            self.partials.next_deadline(),
            closing,
        ]
        .into_iter()
        .flatten()
        {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        if let Some(t) = self.shutdown_deadline {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        if let Some(idle) = self.config.idle_timeout {
            if self.is_idle() {
                let t = self.idle_since + idle;
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        match next {
            None => EpollTimeout::NONE,
            Some(t) => {
                // Round up to whole milliseconds so the timer has passed when we wake.
                let d = t.saturating_duration_since(Instant::now()) + Duration::from_micros(999);
                EpollTimeout::try_from(d).unwrap_or(EpollTimeout::MAX)
            }
        }
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

    fn touch(&mut self) {
        self.idle_since = Instant::now();
    }

    // ----- accepting ------------------------------------------------------------------------

    fn accept_all(&mut self) {
        for _ in 0..16 {
            let Some(listener) = &self.listener else {
                return;
            };
            match accept4(listener, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK) {
                Ok(fd) => self.on_accept(fd),
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR | Errno::ECONNABORTED) => {}
                // Only a per-process limit: closing one of ours frees nothing system-wide.
                Err(e @ Errno::EMFILE) if self.evict_idle_connection() => {
                    tracing::debug!("accept: {e}; closed an idle connection to make room");
                }
                Err(e @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)) => {
                    tracing::warn!("accept: {e}");
                    self.refuse_one(e);
                    return;
                }
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    return;
                }
            }
        }
    }

    /// Out of fds: free the reserve, take the pending connection, tell it why, close it, and
    /// take the reserve back. Without this the listener would stay readable and spin.
    fn refuse_one(&mut self, e: Errno) {
        self.reserve_fd = None;
        if let Some(listener) = &self.listener {
            if let Ok(fd) = accept4(listener, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK) {
                let msg = "server out of file descriptors";
                refuse(
                    &fd,
                    ErrorReply::new(ErrorCode::ResourceExhausted, e as i32, msg),
                );
            }
        }
        self.reserve_fd = open_reserve();
    }

    fn on_accept(&mut self, fd: OwnedFd) {
        self.touch();
        let refuse = |fd: &OwnedFd, code: ErrorCode, msg: &str| {
            refuse(fd, ErrorReply::new(code, 0, msg));
        };
        match peer_uid(&fd) {
            Ok(uid) if uid == self.uid || self.config.allowed_uids.contains(&uid) => {}
            Ok(uid) => {
                tracing::warn!(uid, "refused a peer with a uid that is not allowed");
                refuse(&fd, ErrorCode::PermissionDenied, "peer uid not allowed");
                return;
            }
            Err(e) => {
                tracing::warn!("SO_PEERCRED: {e}");
                return;
            }
        }
        if self.shutting_down {
            refuse(&fd, ErrorCode::ShuttingDown, "server is shutting down");
            return;
        }
        let conns = &self.conns;
        let silent = |id| conns.get(&id).is_some_and(Conn::is_silent);
        if let Some(old) = self.handshakes.make_room(silent) {
            self.evict_handshake(old);
        }
        if self.conns.len() >= self.config.max_connections && !self.evict_idle_connection() {
            refuse(&fd, ErrorCode::ResourceExhausted, "too many connections");
            return;
        }
        let id = self.next_conn;
        self.next_conn += 1;
        let interest = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        if let Err(e) = self.epoll.add(&fd, EpollEvent::new(interest, id)) {
            tracing::warn!("epoll_ctl: {e}");
            return;
        }
        let now = Instant::now();
        self.handshakes.start(id, now);
        let mut reader = FrameReader::new();
        // §6.3, §9.3: small frames only before the handshake; no fds before authentication.
        reader.set_limits(match self.config.key {
            Some(_) => ReadLimits::PRE_AUTH,
            None => ReadLimits::HANDSHAKE,
        });
        self.conns.insert(
            id,
            Conn {
                fd,
                reader,
                out: VecDeque::new(),
                session: Session::new(),
                applied: State::AwaitHello,
                interest,
                ready_since: now,
                partial: None,
            },
        );
    }

    /// Closes the connection that has been idle in READY the longest, if there is one, to make
    /// room for a new one: connections that clients keep for reuse (§6.6) must not lock others
    /// out. One whose client has sent something the server has not read yet is not idle. The
    /// closed connection gets `Error(ResourceExhausted)` first: a client that sent a request on
    /// it meanwhile reads that as its reply, and knows the request was not acted on (§6.6).
    /// Returns whether one was closed.
    fn evict_idle_connection(&mut self) -> bool {
        let oldest = self
            .conns
            .iter()
            .filter(|(_, c)| c.is_idle() && !has_unread_input(&c.fd))
            .min_by_key(|(_, c)| c.ready_since)
            .map(|(id, _)| *id);
        let Some(id) = oldest else { return false };
        tracing::debug!(
            conn = id,
            "closing the longest idle connection to make room"
        );
        if let Some(c) = self.conns.get(&id) {
            let msg = "idle connection closed to make room for another";
            refuse(&c.fd, ErrorReply::new(ErrorCode::ResourceExhausted, 0, msg));
        }
        self.disconnect(id);
        true
    }

    /// The handshake quota is full: closes connection `id` (still in the handshake) to make
    /// room for a new one, after `Error(ResourceExhausted)` (§6.3).
    fn evict_handshake(&mut self, id: u64) {
        tracing::debug!(conn = id, "handshake quota full: closing an old handshake");
        if let Some(c) = self.conns.get(&id) {
            let msg = "too many connections in the handshake: the oldest are closed";
            refuse(&c.fd, ErrorReply::new(ErrorCode::ResourceExhausted, 0, msg));
        }
        self.disconnect(id);
    }

    /// Before an idle exit: every connection (all idle in READY) gets `Error(ShuttingDown)`,
    /// so that a client whose request crossed the exit knows it was not acted on (§6.6).
    fn say_goodbye(&mut self) {
        for c in self.conns.values() {
            let msg = "idle timeout: the server exits";
            refuse(&c.fd, ErrorReply::new(ErrorCode::ShuttingDown, 0, msg));
        }
    }

    // ----- signals and children -------------------------------------------------------------

    fn read_signals(&mut self) -> Result<(), ServerError> {
        let mut reap = false;
        // One signal per readiness event: the signalfd is level-triggered in epoll, so a
        // second pending signal (SIGTERM beside SIGCHLD) wakes the next turn, and the common
        // case spends no read on EAGAIN.
        loop {
            match self.signals.read_signal() {
                Ok(Some(info)) => match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => reap = true,
                    Ok(Signal::SIGTERM) => self.begin_shutdown(),
                    _ => {}
                },
                Ok(None) | Err(Errno::EAGAIN) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(ServerError::Sys("signalfd read".into(), e)),
            }
            break;
        }
        if reap {
            self.reap();
        }
        Ok(())
    }

    fn begin_shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        tracing::info!("SIGTERM: no longer accepting; exiting once running children end");
        self.shutting_down = true;
        // A timeout too far away to be an Instant is no timeout.
        self.shutdown_deadline = self
            .config
            .shutdown_timeout
            .and_then(|d| Instant::now().checked_add(d));
        // Pooled children read EOF and exit.
        // They read the end of their socket and exit.
        for (pid, _) in self.pool.drain(..) {
            spawn::wake_pooled(pid);
        }
        if let Some(l) = self.listener.take() {
            let _ = self.epoll.delete(&l);
            // Dropping it removes the socket file: new clients find nobody.
            self.socket_path = None;
        }
        let idle: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                matches!(
                    c.state(),
                    State::AwaitHello | State::AwaitAuth(_) | State::Ready
                )
            })
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            self.fail(
                id,
                ErrorReply::new(ErrorCode::ShuttingDown, 0, "server is shutting down"),
            );
        }
    }

    fn alive_closed(&mut self) -> bool {
        let Some(a) = &self.alive else { return false };
        let mut buf = [0u8; 64];
        match nix::unistd::read(a, &mut buf) {
            Ok(0) => true,
            Ok(_) | Err(Errno::EAGAIN | Errno::EINTR) => false,
            Err(_) => true,
        }
    }

    /// Reaps every child that has ended: no zombie outlives the loop turn that saw SIGCHLD.
    fn reap(&mut self) {
        loop {
            match crate::sys::reap_one() {
                Ok(Some(r)) => self.on_child_exit(r.pid, r.code, r.core_dumped),
                Ok(None) | Err(Errno::ECHILD) => return,
                Err(e) => {
                    tracing::error!("waitpid: {e}");
                    return;
                }
            }
        }
    }

    fn on_child_exit(&mut self, pid: Pid, code: i32, core: bool) {
        self.touch();
        if let Some(i) = self.pool.iter().position(|(p, _)| *p == pid) {
            tracing::warn!(
                pid = pid.as_raw(),
                code,
                "a pooled child died before its job"
            );
            self.pool.remove(i);
            return;
        }
        let Some(child) = self.children.remove(&pid) else {
            return;
        };
        tracing::debug!(pid = pid.as_raw(), code, "child reaped");
        let serial = child.serial;
        let failure = match (child.failure, &child.report) {
            (Some(f), _) => Some(f),
            (None, Some(report)) => read_report(report),
            (None, None) if code == spawn::FAILED_STATUS => self.shared_report(serial),
            (None, None) => None,
        };
        self.shared_reports.remove(&serial);
        if let (true, Some(r)) = (child.watching_report, &child.report) {
            let _ = self.epoll.delete(r);
        }
        // A child whose connection is gone (or got its exec error already) has nobody to tell.
        let Some(id) = child.conn else { return };
        let spawning = self
            .conns
            .get(&id)
            .is_some_and(|c| c.state() == State::Spawning(pid));
        if spawning && failure.is_none() {
            // It ended before its report pipe's EOF was seen: the Pid still comes first (§6.1),
            // without a pidfd (the pid is reaped and may be reused already).
            self.send_pid(id, pid, None);
        }
        let reply = match failure {
            Some(reply) => reply,
            None => match Exit::new(code, child.deadline_hit, core) {
                Ok(exit) => Message::Exit(exit),
                Err(_) => {
                    ErrorReply::new(ErrorCode::Internal, 0, format!("exit code {code}")).into()
                }
            },
        };
        self.send(id, reply, vec![]);
        self.after_final_report(id, child.keep_connection);
    }

    /// The child's final report (`Exit`, or its exec/setup failure) is queued: the connection
    /// closes, or with `KEEP_CONNECTION` goes back to `Ready` for its next request (§6.1).
    fn after_final_report(&mut self, id: u64, keep: bool) {
        if keep && !self.shutting_down {
            self.transition(id, |s| s.final_report(true));
            // Frames that arrived behind the child's run are handled now, as in READY.
            self.process_frames(id);
        } else {
            self.transition(id, |s| s.final_report(false));
        }
    }

    /// The failure report of the child of spawn `serial` on the shared report socket, if it
    /// wrote one. Reads every report waiting there; those of other live children are kept for
    /// their own exit (a child writes its report before it exits, so it is there by the time
    /// the child is reaped).
    fn shared_report(&mut self, serial: u64) -> Option<Message> {
        let mut buf = [0u8; spawn::SHARED_REPORT_LEN];
        loop {
            let flags = MsgFlags::MSG_DONTWAIT;
            match nix::sys::socket::recv(self.report_rx.as_raw_fd(), &mut buf, flags) {
                Ok(spawn::SHARED_REPORT_LEN) => {
                    let mut s = [0u8; 8];
                    s.copy_from_slice(&buf[..8]);
                    let s = u64::from_le_bytes(s);
                    if s == serial || self.children.values().any(|c| c.serial == s) {
                        self.shared_reports.insert(s, failure_message(&buf[8..]));
                    }
                }
                Ok(n) => tracing::error!("bug: a shared report of {n} bytes"),
                Err(Errno::EINTR) => {}
                Err(_) => break,
            }
        }
        self.shared_reports.remove(&serial)
    }

    /// A `pid_after_exec` child's report pipe is readable: EOF means the exec succeeded.
    fn on_report(&mut self, serial: u64) {
        let Some((&pid, child)) = self.children.iter_mut().find(|(_, c)| c.serial == serial) else {
            return;
        };
        let Some(report) = child.report.take() else {
            return;
        };
        child.watching_report = false;
        let _ = self.epoll.delete(&report);
        let Some(id) = child.conn else { return };
        match child.failure.take().or_else(|| read_report(&report)) {
            None => {
                let want_pidfd = child.want_pidfd;
                self.start_running(id, pid, want_pidfd);
                // Frames that came behind the Spawn were held until now.
                self.process_frames(id);
            }
            Some(reply) => {
                // The child is reaped later; nobody waits for its exit status any more.
                child.conn = None;
                let keep = child.keep_connection;
                self.send(id, reply, vec![]);
                self.after_final_report(id, keep);
            }
        }
    }

    /// The shutdown timeout passed: `SIGKILL` to every child not reaped yet. They are reaped
    /// as usual, their clients get `Exit` (-9), and the server exits once they are gone.
    fn kill_remaining_children(&mut self) {
        if !self.children.is_empty() {
            let n = self.children.len();
            tracing::warn!("shutdown timeout: SIGKILL to the {n} children left");
        }
        // Not reaped yet (reaping happens on this thread): the pids are still theirs.
        for pid in self.children.keys() {
            let _ = kill(*pid, Signal::SIGKILL);
        }
    }

    /// The child exists (and, with `pid_after_exec`, has exec'd): `Pid`, with a pidfd if one
    /// was asked for and can be had, and the connection is RUNNING.
    fn start_running(&mut self, id: u64, pid: Pid, want_pidfd: bool) {
        let pidfd = want_pidfd
            .then(|| crate::sys::pidfd_open(pid))
            .and_then(|r| r.map_err(|e| tracing::debug!("pidfd_open: {e}")).ok());
        self.send_pid(id, pid, pidfd);
        self.transition(id, |s| match s.state() {
            State::Spawning(p) if p == pid => s.exec_done(pid),
            _ => s.spawned(pid, false),
        });
    }

    fn expire(&mut self, now: Instant) {
        if self.shutdown_deadline.is_some_and(|t| t <= now) {
            self.shutdown_deadline = None;
            self.kill_remaining_children();
        }
        while let Some(Reverse((t, serial, pid))) = self.deadlines.peek().copied() {
            if t > now {
                break;
            }
            self.deadlines.pop();
            if let Some(c) = self.children.get_mut(&pid) {
                if c.serial == serial && !c.deadline_hit {
                    c.deadline_hit = true;
                    tracing::info!(pid = pid.as_raw(), "deadline expired: SIGKILL");
                    let _ = kill(pid, Signal::SIGKILL);
                }
            }
        }
        while let Some(&(t, id)) = self.closing.front() {
            if t > now {
                break;
            }
            self.closing.pop_front();
            if self
                .conns
                .get(&id)
                .is_some_and(|c| c.state() == State::Closing)
            {
                tracing::debug!(conn = id, "replies not read in time: dropped");
                self.disconnect(id);
            }
        }
        // A burst leaves this queue with a large capacity: give it back once it drains.
        if self.closing.is_empty() && self.closing.capacity() > 1024 {
            self.closing = VecDeque::new();
        }
        // Entries of reaped children linger until their time; rebuild when they dominate.
        if self.deadlines.len() > 64 + 2 * self.children.len() {
            let children = &self.children;
            self.deadlines.retain(|Reverse((_, serial, pid))| {
                children.get(pid).is_some_and(|c| c.serial == *serial)
            });
        }
        while let Some(id) = self.handshakes.expired(now) {
            self.fail(
                id,
                ErrorReply::new(ErrorCode::Timeout, 0, "handshake not completed in time"),
            );
        }
        while let Some((id, serial)) = self.partials.expired(now) {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            if c.partial != Some(serial) {
                continue;
            }
            c.partial = None;
            // Only a frame the server is reading: one held behind a Spawn, or behind unread
            // replies, waits for the server, and gets a new timer when reading resumes.
            if c.wants_input() && c.reader.holds_partial_frame() {
                let msg = "frame not completed in time";
                self.fail(id, ErrorReply::new(ErrorCode::Timeout, 0, msg));
            }
        }
    }

    /// After the frames received were handled: a connection left holding part of a frame gets
    /// a timer, one per frame (§6.3).
    fn watch_partial_frame(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if !c.reader.holds_partial_frame() {
            c.partial = None;
        } else if c.partial.is_none() {
            c.partial = Some(self.partials.arm(id, Instant::now()));
        }
    }

    // ----- connections ----------------------------------------------------------------------

    fn on_conn_event(&mut self, id: u64, flags: EpollFlags) {
        if flags.contains(EpollFlags::EPOLLOUT) {
            self.flush(id);
            // Frames that arrived while replies were backed up sit in the reader; epoll will
            // not report them again. Take them now that the connection takes input again.
            if self
                .conns
                .get(&id)
                .is_some_and(|c| c.wants_input() && c.reader.buffered() > 0)
            {
                self.process_frames(id);
            }
        }
        // Hang-up and error are reported whatever the interest: a connection that takes no
        // input now would see them again and again. The peer is gone; so is the connection.
        if flags.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR)
            && self.conns.get(&id).is_some_and(|c| !c.wants_input())
        {
            return self.disconnect(id);
        }
        if flags.intersects(
            EpollFlags::EPOLLIN
                | EpollFlags::EPOLLRDHUP
                | EpollFlags::EPOLLHUP
                | EpollFlags::EPOLLERR,
        ) {
            self.read(id);
        }
    }

    fn read(&mut self, id: u64) {
        for _ in 0..READS_PER_EVENT {
            if !self.process_frames(id) {
                return;
            }
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            match conn.reader.recv(conn.fd.as_fd()) {
                // A short read: most likely the socket is drained (or the read stopped at a
                // chunk that carried fds). Handle what came and go back to epoll, which is
                // level-triggered and reports whatever is left, rather than spend a recvmsg
                // on EAGAIN.
                Ok(n) if n < FrameReader::RECV_MAX => break,
                Ok(_) => {}
                Err(TransportError::Io(Errno::EAGAIN)) => return,
                Err(e) => return self.transport_error(id, e),
            }
        }
        self.process_frames(id);
    }

    /// Handles the frames already received, in order, for as long as the connection takes
    /// input. Returns whether it still does (and more may be read).
    fn process_frames(&mut self, id: u64) -> bool {
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return false;
            };
            if !conn.wants_input() {
                return false;
            }
            match conn.reader.next_frame() {
                Ok(Some(frame)) => {
                    // The next frame, if one has started, gets a timer of its own.
                    conn.partial = None;
                    self.on_frame(id, frame)
                }
                Ok(None) => {
                    self.watch_partial_frame(id);
                    return true;
                }
                Err(e) => {
                    self.transport_error(id, e);
                    return false;
                }
            }
        }
    }

    fn transport_error(&mut self, id: u64, e: TransportError) {
        match e {
            TransportError::Closed | TransportError::ClosedMidFrame | TransportError::Io(_) => {
                tracing::debug!(conn = id, "peer gone: {e}");
                self.disconnect(id);
            }
            TransportError::Decode(d) => {
                tracing::debug!(conn = id, "malformed frame: {d}");
                self.fail(id, ErrorReply::from(d));
            }
            TransportError::FdMismatch { .. } => {
                self.fail(id, ErrorReply::new(ErrorCode::FdMismatch, 0, e.to_string()))
            }
            TransportError::TooManyFds(_) => {
                self.fail(id, ErrorReply::new(ErrorCode::TooManyFds, 0, e.to_string()))
            }
            // §6.3, §9.3: what only the handshake may send was exceeded: the reply the state
            // gives any frame but the one it expects.
            TransportError::FrameTooLong { .. } | TransportError::UnexpectedFds(_) => {
                let code = match self.conns.get(&id).map(Conn::state) {
                    Some(State::AwaitAuth(_)) => ErrorCode::AuthRequired,
                    _ if self.config.key.is_some()
                        && matches!(e, TransportError::UnexpectedFds(_)) =>
                    {
                        ErrorCode::AuthRequired
                    }
                    _ => ErrorCode::UnexpectedMessage,
                };
                self.fail(id, ErrorReply::new(code, 0, e.to_string()))
            }
            // Our control buffer holds the 253 fds one sendmsg can carry: truncation means the
            // kernel could not install them, i.e. this process is out of fds (EMFILE).
            TransportError::ControlTruncated => self.fail(
                id,
                ErrorReply::new(
                    ErrorCode::ResourceExhausted,
                    Errno::EMFILE as i32,
                    "server out of file descriptors: the fds sent were lost",
                ),
            ),
            _ => self.fail(id, ErrorReply::new(ErrorCode::Internal, 0, e.to_string())),
        }
    }

    /// Sends a fatal error and closes once it is flushed.
    fn fail(&mut self, id: u64, reply: ErrorReply) {
        self.send(id, reply.into(), vec![]);
        self.transition(id, Session::close);
    }

    /// One frame through the session, then what it decided.
    fn on_frame(&mut self, id: u64, frame: Frame) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let entries = &self.entries;
        let mut challenge = auth::random_challenge;
        let mut env = Env {
            key: self.config.key.as_deref(),
            challenge: &mut challenge,
            has_entry: &|name| entries.contains_key(name),
        };
        conn.session.handle_frame(frame, &mut env);
        self.run_actions(id);
    }

    /// Carries out the session's decisions, in order, then catches up with its state.
    fn run_actions(&mut self, id: u64) {
        while let Some(action) = self
            .conns
            .get_mut(&id)
            .and_then(|c| c.session.poll_action())
        {
            match action {
                Action::Send(m) => self.send(id, m, vec![]),
                // The session is `Closing` already: the error goes out, then the connection ends.
                Action::Close(reply) => self.send(id, reply.into(), vec![]),
                Action::Status => {
                    let status = self.status();
                    self.send(id, Message::Status(status), vec![]);
                }
                Action::Spawn(spawn, bundle) => self.spawn(id, spawn, bundle),
                Action::Signal(pid, signo) => {
                    let result = crate::sys::kill(pid, signo);
                    if let Some(conn) = self.conns.get_mut(&id) {
                        conn.session.signaled(result);
                    }
                }
            }
        }
        self.sync(id);
    }

    /// The server's status report (§5.11).
    fn status(&self) -> Status {
        Status::new(
            PROTOCOL_VERSION,
            std::process::id() as i32,
            self.children.len() as u32,
            self.conns.len() as u32,
            self.spawned_total,
            concat!("forkserver ", env!("CARGO_PKG_VERSION")),
        )
        .expect("status fields are valid")
    }

    fn spawn(&mut self, id: u64, spawn: Spawn, bundle: FdBundle) {
        // Pooled children waiting for a job are not in `children`: they do not count.
        if self.children.len() >= self.config.max_children {
            let max = self.config.max_children;
            let msg = format!("too many children: the server runs its limit of {max}");
            return self.fail(id, ErrorReply::new(ErrorCode::ResourceExhausted, 0, msg));
        }
        let options = *spawn.options();
        let is_exec = matches!(spawn.job(), Job::Exec(_));
        let wait_exec = options.pid_after_exec && is_exec;
        let serial = self.spawned_total + 1;
        // Only a `pid_after_exec` exec job needs a report pipe of its own (its EOF is the
        // exec's success); others report a failure on the shared socket.
        let shared = (!wait_exec).then(|| (self.report_tx.as_raw_fd(), serial));
        let mut pooled = true;
        let mut failure = None;
        let forked = match self.take_pooled(spawn, bundle) {
            Pooled::Taken(pid, sock) => Ok((pid, Some(sock))),
            Pooled::Broken(pid, sock, reply) => {
                failure = Some(reply);
                Ok((pid, Some(sock)))
            }
            Pooled::Fork(spawn, bundle) => {
                pooled = false;
                let work = match spawn.job() {
                    Job::Exec(e) => Work::Exec(e),
                    Job::Entry(e) => Work::Entry {
                        entry: &self.entries[e.name()],
                        payload: e.payload(),
                    },
                };
                let die_with_server = self.config.kill_children_with_server;
                spawn::spawn(
                    work,
                    options.session,
                    die_with_server,
                    self.signals_to_reset,
                    bundle,
                    shared,
                    self.config.key.as_deref_mut(),
                )
            }
        };
        let (pid, report) = match forked {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("spawn failed: {e}");
                let code = match e {
                    Errno::EMFILE | Errno::ENFILE => ErrorCode::ResourceExhausted,
                    _ => ErrorCode::ForkFailed,
                };
                return self.fail(id, ErrorReply::new(code, e as i32, format!("fork: {e}")));
            }
        };
        self.spawned_total = serial;
        self.touch();
        if let Some(ms) = options.deadline_ms {
            let t = Instant::now() + Duration::from_millis(ms.get());
            self.deadlines.push(Reverse((t, serial, pid)));
        }
        if let (true, Some(report)) = (wait_exec, &report) {
            // Keyed by the spawn's serial, not its pid: a pid can be reused, a serial cannot.
            let token = TOKEN_REPORT | serial;
            if let Err(e) = self
                .epoll
                .add(report, EpollEvent::new(EpollFlags::EPOLLIN, token))
            {
                tracing::warn!("epoll_ctl: {e}");
            }
        }
        self.children.insert(
            pid,
            Child {
                serial,
                conn: Some(id),
                report,
                watching_report: wait_exec,
                kill_on_disconnect: options.kill_on_disconnect,
                keep_connection: options.keep_connection,
                want_pidfd: options.want_pidfd,
                deadline_hit: false,
                failure,
            },
        );
        tracing::debug!(conn = id, pid = pid.as_raw(), "spawned");
        if wait_exec {
            self.transition(id, |s| s.spawned(pid, true));
            if pooled {
                // Its Pid comes after the exec: it runs now.
                spawn::wake_pooled(pid);
            }
        } else {
            self.start_running(id, pid, options.want_pidfd);
            if pooled && self.stop_after_pooled_pid {
                tracing::warn!("{TEST_STOP_AFTER_PID_ENV}: stopping after the Pid");
                let _ = nix::sys::signal::raise(Signal::SIGSTOP);
            }
            if pooled {
                // The job is in its socket, the client has its Pid: now the child may run.
                spawn::wake_pooled(pid);
            }
        }
    }

    /// Hands the job to a pooled child, if one is waiting and the job fits in its socket's
    /// buffer at once (the event loop never blocks on a pooled child). The whole frame, fds
    /// included, is in the child's socket before this returns, and so before the `Pid` goes
    /// out (§6.4): a client never holds the pid of a job that a dying server did not pass on.
    /// A child that cannot take it (it died since `take_live_pooled` looked) is killed and the
    /// next one is tried; the request comes back, fds included, when none can: the caller
    /// forks instead.
    fn take_pooled(&mut self, spawn: Spawn, bundle: FdBundle) -> Pooled {
        let message = Message::Spawn(spawn);
        let fits = message.encoded_len() <= POOL_MAX_FRAME;
        let (map, mut fds) = bundle.into_parts();
        while let Some((pid, sock)) = fits.then(|| self.take_live_pooled()).flatten() {
            let mut job = OutFrame::new(&message, fds).expect("the fds match the map");
            let e = match job.send(sock.as_fd()) {
                Ok(_) => return Pooled::Taken(pid, sock),
                Err(e) => e,
            };
            tracing::warn!(pid = pid.as_raw(), "pooled child did not take its job: {e}");
            let _ = kill(pid, Signal::SIGKILL);
            if job.is_started() {
                let errno = match e {
                    TransportError::Io(e) => e as i32,
                    _ => Errno::EIO as i32,
                };
                let msg = format!("the pooled child did not take its job: {e}");
                let reply = ErrorReply::new(ErrorCode::ChildSetupFailed, errno, msg).into();
                return Pooled::Broken(pid, sock, reply);
            }
            fds = job.into_unsent_fds();
        }
        let Message::Spawn(spawn) = message else {
            unreachable!("built from a Spawn above")
        };
        let bundle = FdBundle::from_parts(map, fds).expect("the fds came with this map");
        Pooled::Fork(spawn, bundle)
    }

    /// The first pooled child whose end of the socket is still open. One that died (its SIGCHLD
    /// not read yet: its end is closed, or it wrote to it) is killed and left for `reap`, so
    /// that its request goes to another child or is forked, never lost.
    fn take_live_pooled(&mut self) -> Option<(Pid, OwnedFd)> {
        while let Some((pid, sock)) = self.pool.pop_front() {
            let mut byte = [0u8; 1];
            let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
            match nix::sys::socket::recv(sock.as_raw_fd(), &mut byte, flags) {
                Err(Errno::EAGAIN) => return Some((pid, sock)),
                other => {
                    tracing::warn!(pid = pid.as_raw(), "pooled child gone: {other:?}");
                    let _ = kill(pid, Signal::SIGKILL);
                }
            }
        }
        None
    }

    /// Forks pooled children up to `--prefork`.
    fn fill_pool(&mut self) {
        while self.pool.len() < self.config.prefork && !self.shutting_down {
            let die = self.config.kill_children_with_server;
            let key = self.config.key.as_deref_mut();
            match spawn::prefork(&self.entries, die, self.signals_to_reset, key) {
                Ok(p) => self.pool.push_back(p),
                Err(e) => {
                    tracing::warn!("prefork: {e}");
                    return;
                }
            }
        }
    }

    fn send_pid(&mut self, id: u64, pid: Pid, pidfd: Option<OwnedFd>) {
        let reply =
            PidReply::new(pid.as_raw(), pidfd.is_some()).expect("fork returns a positive pid");
        self.send(id, Message::Pid(reply), pidfd.into_iter().collect());
    }

    /// Ends a connection whose peer is gone: its fds are closed; a running child runs on unless
    /// it asked to be killed on disconnect.
    fn disconnect(&mut self, id: u64) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        self.handshakes.finish(id);
        let _ = self.epoll.delete(&conn.fd);
        // The child of the state in force: the session may have moved on (to `Closing`, with
        // its last error) in the same step.
        self.detach_child(conn.applied);
        if conn.state() != conn.applied {
            self.detach_child(conn.state());
        }
        self.touch();
    }

    /// The connection in `state` ends: its child (if any) is on its own now, or killed if it
    /// asked to be. Its report pipe goes too: nobody is left to tell how its exec went.
    fn detach_child(&mut self, state: State) {
        let (State::Running(pid) | State::Spawning(pid)) = state else {
            return;
        };
        let Some(child) = self.children.get_mut(&pid) else {
            return;
        };
        child.conn = None;
        if let Some(report) = child.report.take() {
            if std::mem::take(&mut child.watching_report) {
                let _ = self.epoll.delete(&report);
            }
        }
        if child.kill_on_disconnect {
            tracing::debug!(pid = pid.as_raw(), "client gone: SIGKILL");
            let _ = kill(pid, Signal::SIGKILL);
        }
    }

    /// Feeds an outcome of the event loop to the session, then catches up with its state.
    fn transition(&mut self, id: u64, f: impl FnOnce(&mut Session)) {
        if let Some(conn) = self.conns.get_mut(&id) {
            f(&mut conn.session);
        }
        self.run_actions(id);
    }

    /// Puts the side effects of the session's state in force, once per change: READY's read
    /// limits and idle clock, the end of the handshake quota's hold, and `Closing`'s grace
    /// timer and detached child.
    fn sync(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let (old, state) = (conn.applied, conn.state());
        if old == state {
            return self.flush(id);
        }
        conn.applied = state;
        if state == State::Ready {
            conn.ready_since = Instant::now();
            conn.reader.set_limits(ReadLimits::FULL);
        }
        if !state.in_handshake() {
            self.handshakes.finish(id);
        }
        if state == State::Closing {
            // Nothing more is read: drop what was received, and its fds.
            conn.reader = FrameReader::new();
            // A peer that does not read its last replies does not keep the connection (or a
            // shutting-down server) forever.
            self.closing.push_back((Instant::now() + CLOSING_GRACE, id));
            self.detach_child(old);
        }
        self.flush(id);
    }

    fn send(&mut self, id: u64, message: Message, fds: Vec<OwnedFd>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match OutFrame::new(&message, fds) {
            Ok(out) => conn.out.push_back(out),
            Err(e) => tracing::error!("bug: reply does not match its fds: {e}"),
        }
        self.flush(id);
    }

    fn flush(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        while let Some(front) = conn.out.front_mut() {
            match front.send(conn.fd.as_fd()) {
                Ok(_) => {
                    conn.out.pop_front();
                }
                Err(TransportError::Io(Errno::EAGAIN)) => break,
                Err(e) => {
                    tracing::debug!(conn = id, "send: {e}");
                    return self.disconnect(id);
                }
            }
        }
        if conn.out.is_empty() && conn.state() == State::Closing {
            return self.disconnect(id);
        }
        // Level-triggered: ask for writability only while replies wait, and for input (and
        // the peer's hang-up) only while the connection takes input.
        let mut want = EpollFlags::empty();
        if !conn.out.is_empty() {
            want |= EpollFlags::EPOLLOUT;
        }
        if conn.wants_input() {
            want |= EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        }
        if want != conn.interest {
            conn.interest = want;
            let mut ev = EpollEvent::new(want, id);
            if let Err(e) = self.epoll.modify(&conn.fd, &mut ev) {
                tracing::warn!("epoll_ctl: {e}");
            }
        }
    }
}

/// Reads a child's failure report, if it wrote one (5 bytes: stage, errno).
fn read_report(fd: &OwnedFd) -> Option<Message> {
    let mut buf = [0u8; 5];
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    if got < buf.len() {
        return None;
    }
    Some(failure_message(&buf))
}

/// The reply for a child's failure report: 5 bytes, its stage and errno (`i32` LE).
fn failure_message(report: &[u8]) -> Message {
    let errno = i32::from_le_bytes([report[1], report[2], report[3], report[4]]);
    let desc = Errno::from_raw(errno).desc();
    if report[0] == STAGE_EXEC {
        ErrorReply::new(ErrorCode::ExecFailed, errno, format!("execve: {desc}")).into()
    } else {
        ErrorReply::new(
            ErrorCode::ChildSetupFailed,
            errno,
            format!("child setup: {desc}"),
        )
        .into()
    }
}

/// Tells a connection that is not going to be served why, best effort (it is closed next;
/// nothing waits for a peer that does not read).
/// Whether the peer has sent bytes (or fds) that have not been read yet, or closed its end.
fn has_unread_input(fd: &OwnedFd) -> bool {
    let mut byte = [0u8; 1];
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    !matches!(
        nix::sys::socket::recv(fd.as_raw_fd(), &mut byte, flags),
        Err(Errno::EAGAIN)
    )
}

fn refuse(fd: &OwnedFd, reply: ErrorReply) {
    if let Ok(mut out) = OutFrame::new(&reply.into(), vec![]) {
        let _ = out.send(fd.as_fd());
    }
}

fn open_reserve() -> Option<OwnedFd> {
    nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()
}
