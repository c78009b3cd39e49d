//! Faults and access control: clients killed at each step, a server out of processes or fds,
//! children that misbehave, and peers of another uid. Each case ends with the server's fd count
//! and child list back where they started.

mod common;

use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use forkserver_protocol::*;

const NOBODY: u32 = 65534;
/// A uid no other process uses, so that `RLIMIT_NPROC` (counted per uid) counts only ours.
const LONELY_UID: u32 = 64_321;

/// Kills a server started by a test, whatever way the test ends.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn opts() -> SpawnOptions {
    SpawnOptions::default()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A client in another process (Python, raw socket), SIGKILLed after a given step.
const KILLED_CLIENT: &str = r#"
import socket, sys, time, array
path, step, hello, spawn = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3]), bytes.fromhex(sys.argv[4])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
def mark(m):
    sys.stderr.write(m + "\n"); sys.stderr.flush()
    if m == step: time.sleep(100)
mark("connected")
s.sendall(hello)
s.sendmsg([spawn], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [1]))])
mark("sent")
got = b""
while len(got) < 24:            # HelloOk (12 bytes) and Pid (12 bytes)
    got += s.recv(24 - len(got))
mark("pid")
time.sleep(0.1)
mark("running")
"#;

#[test]
fn clients_killed_at_each_step() {
    let srv = Server::start(&[]);
    let hello = Message::Hello(Hello::current()).to_bytes();
    for step in ["connected", "sent", "pid", "running"] {
        let spawn = Spawn::new(
            opts(),
            FdMap::from_targets(vec![1]).unwrap(),
            sh("sleep 0.3; echo done"),
        )
        .unwrap();
        let (r, w) = pipe();
        let mut py = Command::new("python3")
            .args(["-c", KILLED_CLIENT])
            .arg(&srv.socket)
            .args([step, &hex(&hello), &hex(&Message::Spawn(spawn).to_bytes())])
            .stdout(Stdio::from(w))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(py.stderr.take().unwrap()).lines();
        loop {
            let line = lines.next().expect("the client reached its step").unwrap();
            if line == step {
                break;
            }
        }
        py.kill().unwrap();
        py.wait().unwrap();
        let out = read_all(r);
        match step {
            "connected" => assert_eq!(out, "", "nothing was spawned"),
            // The request may be read after its sender died (then the child runs), or be found
            // orphaned by a failed reply first (then it is dropped, §6.4): never half of each.
            "sent" => assert!(out.is_empty() || out == "done\n", "{out:?}"),
            _ => assert_eq!(
                out, "done\n",
                "killed after '{step}': the child ran to its end"
            ),
        }
        srv.settle(srv.idle_fds);
    }
}

#[test]
fn misbehaving_children() {
    let srv = Server::start(&[]);
    let run = |script: &str, fds: Vec<(u32, OwnedFd)>, o: SpawnOptions| {
        let mut c = srv.connect();
        c.spawn(o, sh(script), bundle(fds)).unwrap();
        c.wait().unwrap()
    };
    // Closes its stdout early and goes on.
    let (r, w) = pipe();
    let t = std::thread::spawn(move || read_all(r));
    assert_eq!(
        run("echo a; exec 1>&-; sleep 0.1; exit 4", vec![(1, w)], opts()).code(),
        4
    );
    assert_eq!(t.join().unwrap(), "a\n");
    // Writes to a pipe nobody reads: SIGPIPE kills it (dispositions were reset to default,
    // although the server itself ignores SIGPIPE).
    let (r, w) = pipe();
    drop(r);
    assert_eq!(
        run("sleep 0.05; echo x; exit 0", vec![(1, w)], opts()).code(),
        -13
    );
    // Forks a grandchild and exits: the exit is reported at once; the grandchild is not the
    // server's to reap.
    let (r, w) = pipe();
    let t0 = Instant::now();
    assert_eq!(
        run(
            "(sleep 1.5; echo grandchild) & exit 0",
            vec![(1, w)],
            opts()
        )
        .code(),
        0
    );
    // Well before the grandchild's 1.5 s, with room for a loaded machine.
    assert!(
        t0.elapsed() < Duration::from_millis(1200),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(read_all(r), "grandchild\n");
    // Changes its own process group / session.
    assert_eq!(run("exec setsid sh -c 'exit 9'", vec![], opts()).code(), 9);
    // Never exits: the deadline kills it.
    let o = SpawnOptions {
        deadline_ms: std::num::NonZeroU64::new(50),
        ..opts()
    };
    let exit = run("trap '' TERM; while :; do sleep 1; done", vec![], o);
    assert_eq!((exit.code(), exit.deadline_expired()), (-9, true));
    srv.settle(srv.idle_fds);
}

/// A directory the user `uid` can create its socket in.
fn dir_for(uid: u32, tag: &str) -> std::path::PathBuf {
    let dir = scratch_dir(tag);
    nix::unistd::chown(&dir, Some(uid.into()), Some(uid.into())).unwrap();
    dir
}

/// Starts `forkserver serve` as `uid` under a shell `ulimit`, accepting root as a peer.
fn server_as(uid: u32, dir: &std::path::Path, ulimit: &str) -> (Guard, std::path::PathBuf) {
    let socket = dir.join("s");
    let cmd = format!(
        "ulimit {ulimit} && exec {} serve --socket {} --allow-uid 0 --kill-children-with-server",
        env!("CARGO_BIN_EXE_forkserver"),
        socket.display()
    );
    let child = Guard(
        Command::new("bash")
            .args(["-c", &cmd])
            .uid(uid)
            .gid(uid)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let until = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < until, "server as nobody did not come up");
        std::thread::sleep(Duration::from_millis(5));
    }
    (child, socket)
}

#[test]
fn fork_failure_under_rlimit_nproc_then_recovery() {
    let dir = dir_for(LONELY_UID, "nproc");
    // RLIMIT_NPROC counts the processes of the uid: room for the server and a few children.
    let (mut server, socket) = server_as(LONELY_UID, &dir, "-u 6");
    let mut sleepers: Vec<Conn> = Vec::new();
    let mut refused = None;
    // Sleepers die with their connection, so a failing test leaves none behind to count
    // against the next run's limit.
    let o = SpawnOptions {
        kill_on_disconnect: true,
        ..opts()
    };
    for _ in 0..12 {
        let mut c = Conn::connect(&socket);
        match c.spawn(o, sh("exec sleep 30"), FdBundle::new()) {
            Ok(_) => sleepers.push(c),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("fork failed once the limit was reached");
    assert!(!sleepers.is_empty(), "forks succeeded below the limit: {e}");
    assert_eq!(e.code(), ErrorCode::ForkFailed);
    assert_eq!(e.errno(), nix::errno::Errno::EAGAIN as i32);
    // The server keeps serving: free a slot, and the next spawn works.
    let mut first = sleepers.remove(0);
    first.send(&Message::Signal(Signal::new(9).unwrap()), vec![]);
    assert_eq!(first.wait().unwrap().code(), -9);
    let mut c = Conn::connect(&socket);
    c.spawn(opts(), sh("exit 0"), FdBundle::new()).unwrap();
    assert_eq!(c.wait().unwrap().code(), 0);
    for mut s in sleepers {
        s.send(&Message::Signal(Signal::new(9).unwrap()), vec![]);
        assert_eq!(s.wait().unwrap().code(), -9);
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(server.0.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn fd_exhaustion_then_recovery() {
    let dir = dir_for(NOBODY, "nofile");
    let (mut server, socket) = server_as(NOBODY, &dir, "-n 24");
    let pid = server.0.id() as i32;
    let fds_of = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    // Idle count: measured with one accepted connection open (its handshake done), less one.
    let mut probe = Conn::connect(&socket);
    probe.wait_sole_connection();
    let idle = fds_of() - 1;
    drop(probe);
    let wait_idle_fds = || {
        let until = Instant::now() + Duration::from_secs(5);
        while fds_of() != idle {
            assert!(
                Instant::now() < until,
                "server holds {} fds, {idle} when idle",
                fds_of()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    // Connections idle in READY (kept for reuse, §6.6) make room: at EMFILE the server closes
    // the longest idle one and accepts the newcomer. 40 connections through a table of 24.
    let mut idle_conns: Vec<Conn> = (0..40)
        .map(|_| {
            let mut c = Conn::raw(&socket);
            c.send(&Message::Hello(Hello::current()), vec![]);
            match c.try_recv().map(|f| f.message) {
                Ok(Message::HelloOk(_)) => c,
                other => panic!("a newcomer was not served: {other:?}"),
            }
        })
        .collect();
    // The first ones were closed, after an Error that says why (a request sent meanwhile was
    // not acted on, §6.6); the last one still works.
    match idle_conns[0].recv().message {
        Message::Error(e) => assert_eq!(e.code(), ErrorCode::ResourceExhausted),
        m => panic!("expected Error(ResourceExhausted), got {m:?}"),
    }
    assert!(is_clean_end(&idle_conns[0].try_recv().unwrap_err()));
    assert_eq!(idle_conns.last_mut().unwrap().status().live_children(), 0);
    drop(idle_conns);
    wait_idle_fds();
    // Connections that are not idle (here: mid-handshake, a partial Hello) cannot be closed
    // for room: once the table is full the refused client gets a clear error (the server
    // frees a reserve fd to accept and answer it). Any connection may be the refused one
    // (the listen backlog holds several), so all are polled.
    let mut held: Vec<Conn> = Vec::new();
    let hello = Message::Hello(Hello::current()).to_bytes();
    let refused = |c: &mut Conn| -> Option<ErrorReply> {
        c.sock.set_nonblocking(true).unwrap();
        let r = c.reader.recv(c.sock.as_fd());
        c.sock.set_nonblocking(false).unwrap();
        match r {
            Ok(_) => match c.reader.next_frame() {
                Ok(Some(Frame {
                    message: Message::Error(e),
                    ..
                })) => Some(e),
                other => panic!("{other:?}"),
            },
            Err(TransportError::Io(nix::errno::Errno::EAGAIN)) => None,
            Err(e) => panic!("{e}"),
        }
    };
    let refusal = 'fill: loop {
        assert!(held.len() < 40, "the server never ran out of fds");
        let c = Conn::raw(&socket);
        // A connection refused at once may already be closed: its Error is still there to read.
        match send_raw_all(c.sock.as_fd(), &hello[..4], &[]) {
            Ok(()) | Err(nix::errno::Errno::EPIPE | nix::errno::Errno::ECONNRESET) => {}
            Err(e) => panic!("{e}"),
        }
        held.push(c);
        std::thread::sleep(Duration::from_millis(10));
        for i in 0..held.len() {
            if let Some(e) = refused(&mut held[i]) {
                held.remove(i);
                break 'fill e;
            }
        }
    };
    assert_eq!(refusal.code(), ErrorCode::ResourceExhausted);
    // fds sent while the server is out of them are lost in recvmsg (MSG_CTRUNC): it says so.
    held.pop();
    held.pop();
    let mut c = held.pop().unwrap();
    send_raw_all(c.sock.as_fd(), &hello[4..], &[]).unwrap();
    assert!(matches!(c.recv().message, Message::HelloOk(_)));
    let files: Vec<OwnedFd> = (0..8)
        .map(|_| std::fs::File::open("/dev/null").unwrap().into())
        .collect();
    let mut b = FdBundle::new();
    for (i, f) in files.into_iter().enumerate() {
        b.push(10 + i as u32, f).unwrap();
    }
    match c.spawn(opts(), sh("exit 0"), b) {
        Err(e) => assert_eq!(e.code(), ErrorCode::ResourceExhausted, "{e}"),
        Ok(_) => panic!("8 fds arrived with 2 free slots"),
    }
    // Fds free up: the server recovers.
    drop(held);
    wait_idle_fds();
    let mut c = Conn::connect(&socket);
    let (r, w) = pipe();
    c.spawn(opts(), sh("echo recovered"), bundle(vec![(1, w)]))
        .unwrap();
    assert_eq!(c.wait().unwrap().code(), 0);
    assert_eq!(read_all(r), "recovered\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(server.0.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(dir);
}

/// A Python client running as `nobody`: connects, sends Hello, prints what it got back.
const NOBODY_CLIENT: &str = r#"
import socket, sys
addr = sys.argv[1]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(addr)
except PermissionError:
    print("connect: permission denied"); sys.exit(0)
try:
    s.sendall(bytes.fromhex(sys.argv[2]))
except (BrokenPipeError, ConnectionResetError):
    pass                        # refused at once: the reply is already waiting
reply = s.recv(64)
if reply[:1] == b"\x02":
    print("HelloOk")
elif reply[:1] == b"\x2f":
    print("Error", int.from_bytes(reply[8:10], "little"))
else:
    print("other", reply.hex())
"#;

fn as_nobody(addr: &str) -> String {
    let hello = Message::Hello(Hello::current()).to_bytes();
    let out = Command::new("python3")
        .args(["-c", NOBODY_CLIENT, addr, &hex(&hello)])
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn peers_of_another_uid_are_refused() {
    // The socket file is 0600 in a 0700 directory: another user cannot even connect.
    let srv = Server::start(&[]);
    let meta = std::fs::metadata(&srv.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // (A test directory is not private; the socket's own mode is what refuses here.)
    assert_eq!(
        as_nobody(srv.socket.to_str().unwrap()),
        "connect: permission denied"
    );
    // An abstract socket has no permissions (only on request): SO_PEERCRED refuses the peer...
    let name = format!("forkserver-test-{}", std::process::id());
    let abs = Guard(
        Command::new(env!("CARGO_BIN_EXE_forkserver"))
            .args(["serve", "--abstract", &name])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        as_nobody(&format!("@{name}")),
        format!("Error {}", ErrorCode::PermissionDenied as u16)
    );
    drop(abs);
    // ... unless the operator allows that uid.
    let name2 = format!("{name}-allowed");
    let allowed = Guard(
        Command::new(env!("CARGO_BIN_EXE_forkserver"))
            .args([
                "serve",
                "--abstract",
                &name2,
                "--allow-uid",
                &NOBODY.to_string(),
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(as_nobody(&format!("@{name2}")), "HelloOk");
    drop(allowed);
    // The default socket is never abstract: with no --socket the server makes a file.
    let _ = srv.connect().sock.as_fd();
}
