//! A real `forkserver serve` process and a small raw-protocol client for the server's tests.
#![allow(dead_code)]

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use forkserver_protocol::*;

pub struct Server {
    pub child: Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// The server's fd count with no connection and no child.
    pub idle_fds: usize,
}

/// How long a test waits for a condition before it calls the wait a hang. Only a bound: every
/// wait ends as soon as its condition holds, so a loaded machine makes tests slower, never
/// failed.
pub const HANG: Duration = Duration::from_secs(60);

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

pub fn scratch_dir(tag: &str) -> PathBuf {
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("fs-test-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Private, as a socket directory must be (PROTOCOL.md §9.3).
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&dir)
        .unwrap();
    dir
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        Self::start_inner(extra, None, &[])
    }

    /// A server started with these environment variables set (test hooks).
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        Self::start_inner(extra, None, env)
    }

    /// A server that requires authentication with the key in `key_file` (which holds `key`).
    /// A server on each path a child is made by, named: `CLONE_VM` (the default), fork
    /// (`FORKSERVER_EXEC_FORK=1`), and the pool (`--prefork 2`): the servers a per-child
    /// control is checked on.
    pub fn on_every_path() -> Vec<(&'static str, Server)> {
        vec![
            ("clone_vm", Server::start(&[])),
            (
                "fork",
                Server::start_with_env(&[], &[(forkserver_server::EXEC_FORK_ENV, "1")]),
            ),
            ("pool", Server::start(&["--prefork", "2"])),
        ]
    }

    pub fn start_with_key(key_file: &Path, key: &[u8]) -> Server {
        Self::start_with_key_and(key_file, key, &[])
    }

    /// As [`Server::start_with_key`], with more arguments for `serve`.
    pub fn start_with_key_and(key_file: &Path, key: &[u8], extra: &[&str]) -> Server {
        let mut args = vec!["--key-file", key_file.to_str().unwrap()];
        args.extend_from_slice(extra);
        Self::start_inner(&args, Some(key), &[])
    }

    fn start_inner(extra: &[&str], key: Option<&[u8]>, env: &[(&str, &str)]) -> Server {
        Self::start_prepared(extra, key, |cmd| {
            cmd.envs(env.iter().copied());
        })
    }

    /// As [`Server::start`] (or [`Server::start_with_key`] with `key`), with `prepare` applied
    /// to the server's `Command` first (a `pre_exec`, say).
    pub fn start_prepared(
        extra: &[&str],
        key: Option<&[u8]>,
        prepare: impl FnOnce(&mut Command),
    ) -> Server {
        let dir = scratch_dir("srv");
        let socket = dir.join("sock");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_forkserver"));
        cmd.arg("serve")
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null());
        prepare(&mut cmd);
        let child = cmd.spawn().unwrap();
        let until = Instant::now() + HANG;
        while UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < until, "server did not come up");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Measure the idle fd count with exactly one connection open (a completed handshake
        // proves it was accepted), then subtract it.
        let mut probe = match key {
            Some(k) => Conn::connect_with_key(&socket, k),
            None => Conn::connect(&socket),
        };
        // Connections of the readiness check above may still be open in the server (it sees
        // their end in a later turn): wait until the probe is the only one.
        probe.wait_sole_connection();
        let mut srv = Server {
            child,
            dir,
            socket,
            idle_fds: 0,
        };
        srv.idle_fds = srv.fd_count() - 1;
        drop(probe);
        srv
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Open fds of the server process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// Children of the server (zombies included), from /proc.
    pub fn children(&self) -> Vec<i32> {
        children_of(self.pid())
    }

    /// Waits (up to [`HANG`]) until the server holds `fds` fds, whatever its children.
    pub fn wait_fds(&self, fds: usize) {
        let until = Instant::now() + HANG;
        while self.fd_count() != fds {
            assert!(
                Instant::now() < until,
                "{} fds, expected {fds}",
                self.fd_count()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the server has exactly `n` children (the prefork pool filling up, say) and
    /// returns them.
    pub fn wait_children(&self, n: usize) -> Vec<i32> {
        let until = Instant::now() + HANG;
        loop {
            let kids = self.children();
            if kids.len() == n {
                return kids;
            }
            assert!(
                Instant::now() < until,
                "server has children {kids:?}, expected {n}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the server's fd count and child list return to `fds` and empty.
    pub fn settle(&self, fds: usize) {
        let until = Instant::now() + HANG;
        loop {
            let (n, kids) = (self.fd_count(), self.children());
            if n == fds && kids.is_empty() {
                return;
            }
            assert!(
                Instant::now() < until,
                "server holds {n} fds (expected {fds}) and children {kids:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn connect(&self) -> Conn {
        Conn::connect(&self.socket)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn children_of(pid: i32) -> Vec<i32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

pub struct Conn {
    pub sock: UnixStream,
    pub reader: FrameReader,
}

impl Conn {
    pub fn connect(path: &Path) -> Conn {
        let sock = UnixStream::connect(path).unwrap();
        let mut c = Conn {
            sock,
            reader: FrameReader::new(),
        };
        c.send(&Message::Hello(Hello::current()), vec![]);
        match c.recv().message {
            Message::HelloOk(h) => assert_eq!(h.version(), 1),
            m => panic!("expected HelloOk, got {m:?}"),
        }
        c
    }

    /// Connects and authenticates with `key` (PROTOCOL.md §9.2), checking the server's answer.
    pub fn connect_with_key(path: &Path, key: &[u8]) -> Conn {
        let mut c = Conn::raw(path);
        c.send(&Message::Hello(Hello::current()), vec![]);
        let Message::HelloOk(ok) = c.recv().message else {
            panic!("expected HelloOk")
        };
        let AuthMethod::HmacSha256 { challenge } = ok.auth() else {
            panic!("no auth offered")
        };
        let ours = [0x5a; 32];
        let response = auth::client_response(key, &challenge);
        c.send(
            &Message::Auth(Auth {
                response,
                challenge: ours,
            }),
            vec![],
        );
        match c.recv().message {
            Message::AuthOk(ok) => assert!(auth::verify_server(key, &ours, &ok.response)),
            m => panic!("expected AuthOk, got {m:?}"),
        }
        c
    }

    pub fn raw(path: &Path) -> Conn {
        Conn {
            sock: UnixStream::connect(path).unwrap(),
            reader: FrameReader::new(),
        }
    }

    pub fn send(&mut self, m: &Message, fds: Vec<OwnedFd>) {
        send_message(self.sock.as_fd(), m, fds).unwrap();
    }

    pub fn try_recv(&mut self) -> Result<Frame, TransportError> {
        self.reader.read_frame(self.sock.as_fd())
    }

    pub fn recv(&mut self) -> Frame {
        self.try_recv().unwrap()
    }

    /// Sends a spawn and returns the pid reply's pid (and pidfd).
    pub fn spawn(
        &mut self,
        options: SpawnOptions,
        job: Job,
        bundle: FdBundle,
    ) -> Result<(i32, Option<OwnedFd>), ErrorReply> {
        let (map, fds) = bundle.into_parts();
        let spawn = Spawn::new(options, map, job).unwrap();
        self.send(&Message::Spawn(spawn), fds);
        let mut f = self.recv();
        match f.message {
            Message::Pid(p) => Ok((p.pid(), f.fds.pop())),
            Message::Error(e) => Err(e),
            m => panic!("unexpected {m:?}"),
        }
    }

    /// Reads until the exit code (or an error reply).
    pub fn wait(&mut self) -> Result<Exit, ErrorReply> {
        loop {
            match self.recv().message {
                Message::Exit(e) => return Ok(e),
                Message::Error(e) => return Err(e),
                Message::Signaled => {}
                m => panic!("unexpected {m:?}"),
            }
        }
    }
}

pub fn sh(script: &str) -> Job {
    let mut job = ExecJob::new("/bin/sh").unwrap();
    job.push_arg("-c").unwrap();
    job.push_arg(script).unwrap();
    Job::Exec(job)
}

pub fn bundle(pairs: Vec<(u32, OwnedFd)>) -> FdBundle {
    let mut b = FdBundle::new();
    for (t, fd) in pairs {
        b.push(t, fd).unwrap();
    }
    b
}

pub fn pipe() -> (std::fs::File, OwnedFd) {
    let (r, w) = nix::unistd::pipe().unwrap();
    (std::fs::File::from(r), w)
}

pub fn read_all(mut f: std::fs::File) -> String {
    use std::io::Read;
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    s
}

// ----- helpers for the hostile and soak suites ---------------------------------------------

/// One `sendmsg` of exactly these bytes with exactly these fds attached (`MSG_NOSIGNAL`):
/// for tests that need a split or an fd placement no well-behaved sender would choose.
/// Returns the bytes written (which may be fewer on a large write).
pub fn send_raw(
    sock: std::os::fd::BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[std::os::fd::RawFd],
) -> nix::Result<usize> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    use std::os::fd::AsRawFd;
    let iov = [std::io::IoSlice::new(bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    loop {
        match sendmsg::<UnixAddr>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => return r,
        }
    }
}

/// As [`send_raw`], then the rest of the bytes (if the first call was short) without fds.
pub fn send_raw_all(
    sock: std::os::fd::BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[std::os::fd::RawFd],
) -> nix::Result<()> {
    let mut n = send_raw(sock, bytes, fds)?;
    while n < bytes.len() {
        n += send_raw(sock, &bytes[n..], &[])?;
    }
    Ok(())
}

/// `/dev/null`, close-on-exec.
pub fn devnull() -> OwnedFd {
    nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap()
}

/// A job that runs `/bin/true` (argv = ["/bin/true"]).
pub fn bin_true() -> Job {
    Job::Exec(ExecJob::new("/bin/true").unwrap())
}

/// The encoded frame of a spawn request and the fds that go with it.
pub fn spawn_frame(options: SpawnOptions, job: Job, bundle: FdBundle) -> (Vec<u8>, Vec<OwnedFd>) {
    let (map, fds) = bundle.into_parts();
    let spawn = Spawn::new(options, map, job).unwrap();
    (Message::Spawn(spawn).to_bytes(), fds)
}

/// What ended a stream of replies.
pub fn is_clean_end(e: &TransportError) -> bool {
    matches!(
        e,
        TransportError::Closed | TransportError::Io(nix::errno::Errno::ECONNRESET)
    )
}

impl Conn {
    /// Reads frames until the server closes the connection (or `timeout` passes, which is an
    /// error). Returns the frames and what ended the stream.
    pub fn read_to_end(&mut self, timeout: Duration) -> (Vec<Frame>, TransportError) {
        self.sock.set_read_timeout(Some(timeout)).unwrap();
        let mut frames = Vec::new();
        loop {
            match self.try_recv() {
                Ok(f) => frames.push(f),
                Err(e) => return (frames, e),
            }
        }
    }

    /// Waits (up to [`HANG`]) until the server reports this as its only connection.
    pub fn wait_sole_connection(&mut self) {
        let until = Instant::now() + HANG;
        while self.status().connections() != 1 {
            assert!(Instant::now() < until, "other connections stay open");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Sends a `StatusRequest` and returns the `Status`.
    pub fn status(&mut self) -> Status {
        self.send(&Message::StatusRequest, vec![]);
        match self.recv().message {
            Message::Status(s) => s,
            m => panic!("expected Status, got {m:?}"),
        }
    }
}

impl Server {
    /// A `Status` through a fresh connection (so accepting works too).
    pub fn status(&self) -> Status {
        let mut c = self.connect();
        c.sock.set_read_timeout(Some(HANG)).unwrap();
        c.status()
    }

    /// The server is up, answers a status request, holds exactly its idle fds and has no
    /// child (zombies included).
    pub fn assert_clean(&self) {
        self.settle(self.idle_fds);
        let s = self.status();
        assert_eq!(s.live_children(), 0, "live children in status");
        assert_eq!(s.connections(), 1, "connections in status");
        assert_eq!(s.server_pid(), self.pid());
        self.settle(self.idle_fds);
    }

    /// `VmRSS` of the server, in KiB.
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    /// CPU time (user + system) the server has used, in clock ticks (1/100 s on Linux).
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        // After the comm field: state is field 3 (index 0 here); utime 14, stime 15.
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }
}

/// A `kB` line of `/proc/<pid>/status`.
pub fn proc_status_kib(pid: i32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} not in /proc/{pid}/status"))
}

/// Whether `pid` exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !matches!(
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next()),
            Some("Z") | Some("X") | None
        ),
        Err(_) => false,
    }
}

/// A small seeded PRNG (xorshift64*), so failures replay.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// The seed for randomized tests: `FORKSERVER_SEED` if set, else `default`.
pub fn seed(default: u64) -> u64 {
    std::env::var("FORKSERVER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Median of some durations (the upper one for an even count).
pub fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// One spawn→exit round trip of `/bin/true` on a fresh connection (connect and handshake
/// included). Never panics: an error is returned as text.
pub fn try_round_trip(socket: &Path) -> Result<Duration, String> {
    let t = Instant::now();
    let sock = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    let mut reader = FrameReader::new();
    send_message(sock.as_fd(), &Message::Hello(Hello::current()), vec![])
        .map_err(|e| format!("hello: {e}"))?;
    match reader
        .read_frame(sock.as_fd())
        .map_err(|e| format!("hellook: {e}"))?
        .message
    {
        Message::HelloOk(_) => {}
        m => return Err(format!("expected HelloOk, got {m:?}")),
    }
    let spawn = Spawn::new(SpawnOptions::default(), FdMap::new(), bin_true()).unwrap();
    send_message(sock.as_fd(), &Message::Spawn(spawn), vec![])
        .map_err(|e| format!("spawn: {e}"))?;
    match reader
        .read_frame(sock.as_fd())
        .map_err(|e| format!("pid: {e}"))?
        .message
    {
        Message::Pid(_) => {}
        m => return Err(format!("expected Pid, got {m:?}")),
    }
    match reader
        .read_frame(sock.as_fd())
        .map_err(|e| format!("exit: {e}"))?
        .message
    {
        Message::Exit(e) if e.code() == 0 => Ok(t.elapsed()),
        m => Err(format!("expected Exit(0), got {m:?}")),
    }
}
