//! The server end to end: a real `forkserver serve`, real sockets, real children, real fds.
//! Each test starts its own server and checks at the end that the server's fd count and child
//! list are back where they started.

mod common;

use std::num::NonZeroU64;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::*;
use forkserver_protocol::*;
use nix::sys::stat::fstat;

fn opts() -> SpawnOptions {
    SpawnOptions::default()
}

/// A child's fds as `stat -L -c '%n %d %i' /proc/self/fd/*` printed them: fd → (dev, inode).
fn fd_identities(out: &str) -> std::collections::HashMap<u32, (u64, u64)> {
    out.lines()
        .map(|line| {
            let mut it = line.split_whitespace();
            let fd = it.next().unwrap().trim_start_matches("/proc/self/fd/");
            let dev = it.next().unwrap().parse().unwrap();
            let ino = it.next().unwrap().parse().unwrap();
            (fd.parse().unwrap(), (dev, ino))
        })
        .collect()
}

#[test]
fn exit_codes_and_signals() {
    let srv = Server::start(&[]);
    let fds0 = srv.idle_fds;
    for (script, code) in [
        ("exit 0", 0),
        ("exit 3", 3),
        ("exit 255", 255),
        ("kill -KILL $$", -9),
        ("kill -SEGV $$", -11),
    ] {
        let mut c = srv.connect();
        c.spawn(opts(), sh(script), FdBundle::new()).unwrap();
        let exit = c.wait().unwrap();
        assert_eq!(exit.code(), code, "{script}");
        assert!(!exit.deadline_expired());
    }
    srv.settle(fds0);
}

#[test]
fn stdout_is_captured_through_a_pipe() {
    let srv = Server::start(&[]);
    let fds0 = srv.idle_fds;
    let (r, w) = pipe();
    let mut c = srv.connect();
    let (pid, _) = c
        .spawn(opts(), sh("echo hello from $$"), bundle(vec![(1, w)]))
        .unwrap();
    assert_eq!(c.wait().unwrap().code(), 0);
    // The server closed its copy of the write end: EOF arrives.
    assert_eq!(read_all(r), format!("hello from {pid}\n"));
    srv.settle(fds0);
}

#[test]
fn a_256_fd_bundle_arrives_at_its_targets() {
    let srv = Server::start(&[]);
    let fds0 = srv.idle_fds;
    let (out_r, out_w) = pipe();
    let mut originals: Vec<OwnedFd> = Vec::new();
    while originals.len() < 255 {
        let (r, w) = nix::unistd::pipe().unwrap();
        originals.push(r);
        originals.push(w);
    }
    originals.truncate(255);
    let mut b = FdBundle::new();
    b.push(1, out_w).unwrap();
    for (i, fd) in originals.iter().enumerate() {
        b.push(10 + i as u32, fd.try_clone().unwrap()).unwrap();
    }
    assert_eq!(b.len(), 256);
    let mut c = srv.connect();
    c.spawn(
        opts(),
        sh("stat -L -c '%n %d %i' /proc/self/fd/* 2>/dev/null; exit 0"),
        b,
    )
    .unwrap();
    assert_eq!(c.wait().unwrap().code(), 0);
    let seen = fd_identities(&read_all(out_r));
    for (i, fd) in originals.iter().enumerate() {
        let st = fstat(fd.as_fd()).unwrap();
        assert_eq!(
            seen.get(&(10 + i as u32)),
            Some(&(st.st_dev, st.st_ino)),
            "target {} is not the file sent",
            10 + i
        );
    }
    // Nothing else: the 255 targets, fd 1 (the pipe), and 0 and 2 on /dev/null.
    let mut expected: Vec<u32> = (10..265).collect();
    expected.extend([0, 1, 2]);
    expected.sort_unstable();
    let mut got: Vec<u32> = seen.keys().copied().collect();
    got.sort_unstable();
    assert_eq!(got, expected);
    let null = nix::sys::stat::stat("/dev/null").unwrap();
    assert_eq!(seen[&0], (null.st_dev, null.st_ino));
    assert_eq!(seen[&2], (null.st_dev, null.st_ino));
    drop(originals);
    srv.settle(fds0);
}

#[test]
fn the_child_holds_only_its_bundle() {
    let srv = Server::start(&[]);
    // Other connections with their own fds are open while the child is forked.
    let mut other = srv.connect();
    let (_keep_r, keep_w) = pipe();
    other
        .spawn(opts(), sh("sleep 5"), bundle(vec![(7, keep_w)]))
        .unwrap();
    let (r, w) = pipe();
    let mut c = srv.connect();
    c.spawn(opts(), sh("ls /proc/$$/fd"), bundle(vec![(1, w)]))
        .unwrap();
    assert_eq!(c.wait().unwrap().code(), 0);
    let fds: Vec<String> = read_all(r).lines().map(str::to_owned).collect();
    assert_eq!(fds, ["0", "1", "2"]);
    other.send(&Message::Signal(Signal::new(9).unwrap()), vec![]);
    assert_eq!(other.wait().unwrap().code(), -9);
}

#[test]
fn fifty_concurrent_spawns_from_eight_threads() {
    let srv = Server::start(&[]);
    let fds0 = srv.idle_fds;
    let socket = srv.socket.clone();
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..8 {
            let socket = &socket;
            let results = &results;
            s.spawn(move || {
                let mut i = t;
                while i < 50 {
                    let code = (i * 5) % 256;
                    let mut c = Conn::connect(socket);
                    let (pid, _) = c
                        .spawn(
                            opts(),
                            sh(&format!("sleep 0.0$(({i} % 5)); exit {code}")),
                            FdBundle::new(),
                        )
                        .unwrap();
                    let exit = c.wait().unwrap();
                    results.lock().unwrap().push((i, pid, code, exit.code()));
                    i += 8;
                }
            });
        }
    });
    let results = results.into_inner().unwrap();
    assert_eq!(results.len(), 50);
    for (i, _, want, got) in &results {
        assert_eq!(want, got, "spawn {i}");
    }
    srv.settle(fds0);
}

#[test]
fn a_client_that_dies_after_sending_leaves_no_zombie() {
    let srv = Server::start(&[]);
    let fds0 = srv.idle_fds;
    let (r, w) = pipe();
    {
        let mut c = Conn::connect(&srv.socket);
        let (map, fds) = bundle(vec![(1, w)]).into_parts();
        let spawn = Spawn::new(opts(), map, sh("sleep 0.2; echo done")).unwrap();
        c.send(&Message::Spawn(spawn), fds);
        // Gone before reading the pid.
    }
    // The child ran to its end (it wrote), and was reaped.
    assert_eq!(read_all(r), "done\n");
    srv.settle(fds0);
}

#[test]
fn signal_requests_reach_only_that_child() {
    let srv = Server::start(&[]);
    let fds0 = srv.idle_fds;
    let mut a = srv.connect();
    let mut b = srv.connect();
    a.spawn(opts(), sh("sleep 10"), FdBundle::new()).unwrap();
    b.spawn(opts(), sh("sleep 0.3; exit 4"), FdBundle::new())
        .unwrap();
    a.send(&Message::Signal(Signal::new(15).unwrap()), vec![]);
    assert_eq!(a.recv().message, Message::Signaled);
    assert_eq!(a.wait().unwrap().code(), -15);
    assert_eq!(b.wait().unwrap().code(), 4);
    srv.settle(fds0);
}

#[test]
fn the_deadline_kills_and_says_so() {
    let srv = Server::start(&[]);
    let fds0 = srv.idle_fds;
    let mut c = srv.connect();
    let o = SpawnOptions {
        deadline_ms: NonZeroU64::new(100),
        ..opts()
    };
    let t = Instant::now();
    c.spawn(o, sh("sleep 10"), FdBundle::new()).unwrap();
    let exit = c.wait().unwrap();
    assert_eq!(exit.code(), -9);
    assert!(exit.deadline_expired());
    assert!(t.elapsed() < Duration::from_secs(5));
    srv.settle(fds0);
}

#[test]
fn kill_on_disconnect() {
    let srv = Server::start(&[]);
    let fds0 = srv.idle_fds;
    let mut c = srv.connect();
    let o = SpawnOptions {
        kill_on_disconnect: true,
        ..opts()
    };
    c.spawn(o, sh("sleep 30"), FdBundle::new()).unwrap();
    assert_eq!(srv.children().len(), 1);
    drop(c);
    srv.settle(fds0);
}

#[test]
fn exec_failures_are_errors_with_errno() {
    let srv = Server::start(&[]);
    let fds0 = srv.idle_fds;
    // Pid at once, then the error instead of the exit code.
    let mut c = srv.connect();
    let job = Job::Exec(ExecJob::new("/nonexistent/program").unwrap());
    c.spawn(opts(), job.clone(), FdBundle::new()).unwrap();
    let e = c.wait().unwrap_err();
    assert_eq!(e.code(), ErrorCode::ExecFailed);
    assert_eq!(e.errno(), nix::errno::Errno::ENOENT as i32);
    // With PID_AFTER_EXEC the error replaces the pid.
    let mut c = srv.connect();
    let o = SpawnOptions {
        pid_after_exec: true,
        ..opts()
    };
    let e = c.spawn(o, job, FdBundle::new()).unwrap_err();
    assert_eq!(e.code(), ErrorCode::ExecFailed);
    // A PATH search that finds nothing, and a cwd that does not exist.
    let mut c = srv.connect();
    let e = c
        .spawn(
            o,
            Job::Exec(ExecJob::new("no-such-command-xyz").unwrap()),
            FdBundle::new(),
        )
        .unwrap_err();
    assert_eq!(e.errno(), nix::errno::Errno::ENOENT as i32);
    let mut c = srv.connect();
    let mut job = ExecJob::new("/bin/true").unwrap();
    job.set_cwd(Some(b"/nonexistent-dir".to_vec())).unwrap();
    let e = c.spawn(o, Job::Exec(job), FdBundle::new()).unwrap_err();
    assert_eq!(
        e.code(),
        ErrorCode::ChildSetupFailed,
        "chdir is part of the setup (§6.5)"
    );
    assert_eq!(e.errno(), nix::errno::Errno::ENOENT as i32);
    // PID_AFTER_EXEC and a program that exists: the pid comes after the exec.
    let mut c = srv.connect();
    c.spawn(o, Job::Exec(ExecJob::new("true").unwrap()), FdBundle::new())
        .unwrap();
    assert_eq!(c.wait().unwrap().code(), 0);
    srv.settle(fds0);
}

#[test]
fn the_plain_binary_has_no_entry_points() {
    let srv = Server::start(&[]);
    let fds0 = srv.idle_fds;
    let mut c = srv.connect();
    let job = Job::Entry(EntryJob::new("resize", b"x".to_vec()).unwrap());
    let (r, w) = pipe();
    let e = c.spawn(opts(), job, bundle(vec![(3, w)])).unwrap_err();
    assert_eq!(e.code(), ErrorCode::UnknownEntry);
    // The bundle was closed by the server: the pipe reads EOF.
    assert_eq!(read_all(r), "");
    srv.settle(fds0);
}

#[test]
fn a_pidfd_comes_with_the_pid() {
    let srv = Server::start(&[]);
    let fds0 = srv.idle_fds;
    let mut c = srv.connect();
    let o = SpawnOptions {
        want_pidfd: true,
        ..opts()
    };
    let (_pid, pidfd) = c.spawn(o, sh("sleep 0.1"), FdBundle::new()).unwrap();
    let pidfd = pidfd.expect("a pidfd");
    assert_eq!(c.wait().unwrap().code(), 0);
    let mut p = [nix::poll::PollFd::new(
        pidfd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    assert_eq!(
        nix::poll::poll(&mut p, nix::poll::PollTimeout::ZERO).unwrap(),
        1,
        "pidfd readable after exit"
    );
    srv.settle(fds0);
}

#[test]
fn sessions_and_process_groups() {
    let srv = Server::start(&[]);
    for (session, want_sid, want_pgid) in [
        (Session::NewSession, true, true),
        (Session::NewProcessGroup, false, true),
        (Session::Inherit, false, false),
    ] {
        let (r, w) = pipe();
        let mut c = srv.connect();
        let o = SpawnOptions { session, ..opts() };
        let (pid, _) = c
            .spawn(o, sh("cat /proc/$$/stat"), bundle(vec![(1, w)]))
            .unwrap();
        assert_eq!(c.wait().unwrap().code(), 0);
        let stat = read_all(r);
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let (pgid, sid): (i32, i32) = (fields[2].parse().unwrap(), fields[3].parse().unwrap());
        assert_eq!(sid == pid, want_sid, "{session:?}");
        assert_eq!(pgid == pid, want_pgid, "{session:?}");
    }
}

#[test]
fn status_counts_children() {
    let srv = Server::start(&[]);
    let mut a = srv.connect();
    a.spawn(opts(), sh("sleep 5"), FdBundle::new()).unwrap();
    let mut c = srv.connect();
    c.send(&Message::StatusRequest, vec![]);
    match c.recv().message {
        Message::Status(s) => {
            assert_eq!(s.live_children(), 1);
            assert_eq!(s.spawned_total(), 1);
            assert_eq!(s.connections(), 2);
            assert_eq!(s.server_pid(), srv.pid());
        }
        m => panic!("{m:?}"),
    }
    a.send(&Message::Signal(Signal::new(9).unwrap()), vec![]);
    assert_eq!(a.wait().unwrap().code(), -9);
}

/// Rev 0.6: the server lists what it implements, from the protocol's tables, and the
/// connection stays READY for a request.
#[test]
fn features_list_every_spawn_flag_and_the_connection_stays_ready() {
    let srv = Server::start(&[]);
    let mut c = srv.connect();
    c.send(&Message::FeaturesRequest, vec![]);
    match c.recv().message {
        Message::Features(f) => {
            assert_eq!(f.spawn_flags(), forkserver_protocol::spawn_flags::ALL);
            assert_eq!(f.revision(), forkserver_protocol::Revision::CURRENT);
            assert_eq!(f, forkserver_protocol::Features::current());
        }
        m => panic!("{m:?}"),
    }
    let (pid, _) = c
        .spawn(opts(), bin_true(), FdBundle::new())
        .expect("READY after Features");
    assert!(pid > 0);
    assert_eq!(c.wait().unwrap().code(), 0);
}

#[test]
fn garbage_gets_an_error_and_its_fds_are_closed() {
    let srv = Server::start(&[]);
    let fds0 = srv.idle_fds;
    // Garbage instead of a Hello.
    let mut c = Conn::raw(&srv.socket);
    OutFrame::from_raw_parts(vec![0xff; 16], vec![])
        .send(c.sock.as_fd())
        .unwrap();
    match c.recv().message {
        Message::Error(e) => assert_eq!(e.code(), ErrorCode::Malformed),
        m => panic!("{m:?}"),
    }
    assert_eq!(c.try_recv().unwrap_err(), TransportError::Closed);
    // fds attached to a frame that carries none: FdMismatch, and the server closes them.
    let mut c = srv.connect();
    let (r, w) = pipe();
    OutFrame::from_raw_parts(Message::StatusRequest.to_bytes(), vec![w])
        .send(c.sock.as_fd())
        .unwrap();
    match c.recv().message {
        Message::Error(e) => assert_eq!(e.code(), ErrorCode::FdMismatch),
        m => panic!("{m:?}"),
    }
    assert_eq!(read_all(r), "", "the server closed the fd it received");
    // A Signal before any Spawn.
    let mut c = srv.connect();
    c.send(&Message::Signal(Signal::new(9).unwrap()), vec![]);
    match c.recv().message {
        Message::Error(e) => assert_eq!(e.code(), ErrorCode::UnexpectedMessage),
        m => panic!("{m:?}"),
    }
    // An unsupported version range.
    let mut c = Conn::raw(&srv.socket);
    c.send(&Message::Hello(Hello::new(2, 5).unwrap()), vec![]);
    match c.recv().message {
        Message::Error(e) => assert_eq!(e.code(), ErrorCode::UnsupportedVersion),
        m => panic!("{m:?}"),
    }
    srv.settle(fds0);
}

#[test]
fn a_stalled_client_does_not_delay_others() {
    let srv = Server::start(&[]);
    let fds0 = srv.idle_fds;
    // Half a header, then silence; and a client that trickles a Hello byte by byte.
    let stalled = UnixStream::connect(&srv.socket).unwrap();
    OutFrame::from_raw_parts(vec![0x01, 0x00, 0x00], vec![])
        .send(stalled.as_fd())
        .unwrap();
    let mut trickle = Conn::raw(&srv.socket);
    let hello = Message::Hello(Hello::current()).to_bytes();
    OutFrame::from_raw_parts(hello[..5].to_vec(), vec![])
        .send(trickle.sock.as_fd())
        .unwrap();
    let t = Instant::now();
    let mut c = srv.connect();
    c.spawn(opts(), sh("exit 7"), FdBundle::new()).unwrap();
    assert_eq!(c.wait().unwrap().code(), 7);
    assert!(t.elapsed() < Duration::from_secs(2));
    OutFrame::from_raw_parts(hello[5..].to_vec(), vec![])
        .send(trickle.sock.as_fd())
        .unwrap();
    assert!(matches!(trickle.recv().message, Message::HelloOk(_)));
    drop((stalled, trickle, c));
    srv.settle(fds0);
}

#[test]
fn sigterm_stops_accepting_and_exits_cleanly() {
    let mut srv = Server::start(&[]);
    let mut c = srv.connect();
    c.spawn(opts(), sh("sleep 0.3; exit 5"), FdBundle::new())
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(srv.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    // The running child still gets its exit code delivered.
    assert_eq!(c.wait().unwrap().code(), 5);
    let status = srv.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(!srv.socket.exists(), "socket file removed");
    // SIGINT is ignored by the server.
    let srv = Server::start(&[]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(srv.pid()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    srv.connect();
}

#[test]
fn the_idle_timeout_ends_the_server() {
    let mut srv = Server::start(&["--idle-timeout", "1"]);
    let t = Instant::now();
    let status = srv.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn the_socket_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let srv = Server::start(&[]);
    let mode = std::fs::metadata(&srv.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // A second server on the same path refuses to start.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_forkserver"))
        .args(["serve", "--socket"])
        .arg(&srv.socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
}

#[test]
fn a_key_file_enforces_authentication() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch_dir("key");
    let key_path = dir.join("key");
    let key: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37)).collect();
    std::fs::write(&key_path, &key).unwrap();
    // A key file others can read is refused.
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_forkserver"))
        .args(["serve", "--socket"])
        .arg(dir.join("s"))
        .arg("--key-file")
        .arg(&key_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let srv = Server::start_with_key(&key_path, &key);
    let fds0 = srv.idle_fds;
    // The right key: mutual authentication, then a spawn.
    let mut c = Conn::connect_with_key(&srv.socket, &key);
    c.spawn(opts(), sh("exit 6"), FdBundle::new()).unwrap();
    assert_eq!(c.wait().unwrap().code(), 6);
    // A wrong key: AuthFailed.
    let mut c = Conn::raw(&srv.socket);
    c.send(&Message::Hello(Hello::current()), vec![]);
    let Message::HelloOk(ok) = c.recv().message else {
        panic!("no HelloOk")
    };
    let AuthMethod::HmacSha256 { challenge } = ok.auth() else {
        panic!("no challenge")
    };
    let response = auth::client_response(b"the wrong key, sixteen+ bytes", &challenge);
    c.send(
        &Message::Auth(Auth {
            response,
            challenge: [1; 32],
        }),
        vec![],
    );
    match c.recv().message {
        Message::Error(e) => assert_eq!(e.code(), ErrorCode::AuthFailed),
        m => panic!("{m:?}"),
    }
    // Skipping Auth: AuthRequired, and the spawn's fd is closed without a fork.
    let mut c = Conn::raw(&srv.socket);
    c.send(&Message::Hello(Hello::current()), vec![]);
    let (r, w) = pipe();
    let (map, fds) = bundle(vec![(1, w)]).into_parts();
    c.send(
        &Message::Spawn(Spawn::new(opts(), map, sh("echo ran")).unwrap()),
        fds,
    );
    // The fd is refused on arrival (§6.3), with the Hello's reply first if the server had
    // read the Hello alone.
    let mut m = c.recv().message;
    if matches!(m, Message::HelloOk(_)) {
        m = c.recv().message;
    }
    match m {
        Message::Error(e) => assert_eq!(e.code(), ErrorCode::AuthRequired),
        m => panic!("{m:?}"),
    }
    assert_eq!(read_all(r), "");
    srv.settle(fds0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn children_outlive_a_killed_server_unless_asked() {
    for kill_children in [false, true] {
        let args: &[&str] = if kill_children {
            &["--kill-children-with-server"]
        } else {
            &[]
        };
        let mut srv = Server::start(args);
        let (r, w) = pipe();
        let mut c = srv.connect();
        c.spawn(opts(), sh("sleep 0.3; echo survived"), bundle(vec![(1, w)]))
            .unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(srv.pid()),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        srv.child.wait().unwrap();
        // The client sees the connection end: no exit code will come.
        assert!(matches!(
            c.try_recv(),
            Err(TransportError::Closed | TransportError::Io(_))
        ));
        let out = read_all(r);
        if kill_children {
            assert_eq!(out, "", "the child died with the server");
        } else {
            assert_eq!(out, "survived\n", "the child ran on, reparented");
        }
    }
}

#[test]
fn a_prefork_pool_serves_spawns_and_refills() {
    let srv = Server::start(&["--prefork", "2"]);
    let pool = srv.wait_children(2);
    // A pooled child waits holding nothing of the server's: its socket, and 0-2 on /dev/null.
    for p in &pool {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let fds: Vec<String> = std::fs::read_dir(format!("/proc/{p}/fd"))
                .unwrap()
                .map(|e| {
                    std::fs::read_link(e.unwrap().path())
                        .unwrap()
                        .display()
                        .to_string()
                })
                .collect();
            if fds.len() == 4 {
                assert_eq!(
                    fds.iter().filter(|l| *l == "/dev/null").count(),
                    3,
                    "{fds:?}"
                );
                assert!(fds.iter().any(|l| l.starts_with("socket:")), "{fds:?}");
                break;
            }
            assert!(Instant::now() < until, "pooled child {p} holds {fds:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // A spawn is served by a pooled child: its pid existed before the request.
    let (r, w) = pipe();
    let mut c = srv.connect();
    let (pid, _) = c
        .spawn(opts(), sh("ls /proc/$$/fd; exit 3"), bundle(vec![(1, w)]))
        .unwrap();
    assert!(
        pool.contains(&pid),
        "pid {pid} is not one of the pool {pool:?}"
    );
    assert_eq!(c.wait().unwrap().code(), 3);
    assert_eq!(read_all(r).lines().collect::<Vec<_>>(), ["0", "1", "2"]);
    // The pool is refilled after the reply.
    let refilled = srv.wait_children(2);
    assert!(refilled.iter().all(|p| *p != pid));
    // Everything else works through the pool as through fork: signals, deadlines, exec errors.
    for (script, code) in [("kill -SEGV $$", -11), ("exit 255", 255)] {
        let mut c = srv.connect();
        c.spawn(opts(), sh(script), FdBundle::new()).unwrap();
        assert_eq!(c.wait().unwrap().code(), code);
    }
    let mut c = srv.connect();
    let o = SpawnOptions {
        deadline_ms: NonZeroU64::new(50),
        ..opts()
    };
    c.spawn(o, sh("sleep 10"), FdBundle::new()).unwrap();
    assert!(c.wait().unwrap().deadline_expired());
    let mut c = srv.connect();
    let o = SpawnOptions {
        pid_after_exec: true,
        want_pidfd: true,
        ..opts()
    };
    let e = c
        .spawn(
            o,
            Job::Exec(ExecJob::new("/nonexistent").unwrap()),
            FdBundle::new(),
        )
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::ExecFailed);
    let mut c = srv.connect();
    // A child that outlives its exec: one that exits at once may be reaped before the exec's
    // EOF is seen, and then its Pid comes without a pidfd (§5.8 allows it).
    let (_, pidfd) = c.spawn(o, sh("sleep 0.2"), FdBundle::new()).unwrap();
    assert!(pidfd.is_some());
    assert_eq!(c.wait().unwrap().code(), 0);
    // Idle again: the pool and nothing else; no fd left behind.
    srv.wait_children(2);
    srv.wait_fds(srv.idle_fds);
}

#[test]
fn pipelined_requests_are_all_answered_to_a_slow_reader() {
    let srv = Server::start(&[]);
    let mut c = Conn::raw(&srv.socket);
    // Far more requests than the server queues replies for, in one write, then a slow start.
    let mut bytes = Message::Hello(Hello::current()).to_bytes();
    for _ in 0..2000 {
        Message::StatusRequest.encode(&mut bytes);
    }
    let writer = {
        let sock = c.sock.try_clone().unwrap();
        std::thread::spawn(move || {
            OutFrame::from_raw_parts(bytes, vec![])
                .send(sock.as_fd())
                .unwrap();
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // A reply that never comes fails the test instead of hanging it.
    c.sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(matches!(c.recv().message, Message::HelloOk(_)));
    for i in 0..2000 {
        match c.recv().message {
            Message::Status(_) => {}
            m => panic!("reply {i}: {m:?}"),
        }
    }
    writer.join().unwrap();
    drop(c);
    srv.settle(srv.idle_fds);
}

#[test]
fn a_job_too_big_for_the_pool_is_forked() {
    let srv = Server::start(&["--prefork", "1"]);
    let pool = srv.wait_children(1);
    let mut job = ExecJob::new("/bin/sh").unwrap();
    job.push_arg("-c").unwrap();
    job.push_arg("exit ${#BIG}").unwrap();
    job.push_env("BIG", "x".repeat(100_000)).unwrap();
    let mut c = srv.connect();
    let (pid, _) = c.spawn(opts(), Job::Exec(job), FdBundle::new()).unwrap();
    assert!(!pool.contains(&pid), "a 100 kB job went to the pool");
    assert_eq!(c.wait().unwrap().code(), 100_000 % 256);
}

fn keep() -> SpawnOptions {
    SpawnOptions {
        keep_connection: true,
        ..SpawnOptions::default()
    }
}

/// §6.1/§6.6 (rev 0.3): with KEEP_CONNECTION the connection is READY again after the child's
/// final report, for exec and entry outcomes alike, with exec failures included; without it,
/// or after a Signal that the Exit overtook, it closes.
#[test]
fn keep_connection_returns_to_ready_after_the_final_report() {
    let srv = Server::start(&[]);
    let fds0 = srv.idle_fds;
    let mut c = srv.connect();
    // Several spawns on one connection, each with its own exit code and its own bundle.
    for code in 0..5 {
        let (r, w) = pipe();
        let (pid, _) = c
            .spawn(
                keep(),
                sh(&format!("echo $$; exit {code}")),
                bundle(vec![(1, w)]),
            )
            .unwrap();
        assert_eq!(c.wait().unwrap().code(), code);
        assert_eq!(read_all(r), format!("{pid}\n"));
    }
    // READY: a status request is answered, and the connection stays.
    c.send(&Message::StatusRequest, vec![]);
    match c.recv().message {
        Message::Status(s) => assert_eq!(s.live_children(), 0),
        m => panic!("expected Status, got {m:?}"),
    }
    // An exec failure (reported after the Pid, then READY) and one under PID_AFTER_EXEC
    // (reported instead of the Pid, then READY).
    let missing = Job::Exec(ExecJob::new("/nonexistent/program").unwrap());
    c.spawn(keep(), missing.clone(), FdBundle::new()).unwrap();
    assert_eq!(c.wait().unwrap_err().code(), ErrorCode::ExecFailed);
    let after_exec = SpawnOptions {
        pid_after_exec: true,
        ..keep()
    };
    let e = c.spawn(after_exec, missing, FdBundle::new()).unwrap_err();
    assert_eq!(e.code(), ErrorCode::ExecFailed);
    c.spawn(after_exec, bin_true(), FdBundle::new()).unwrap();
    assert_eq!(c.wait().unwrap().code(), 0);
    // A Spawn while RUNNING is still refused, and closes.
    let killed_with_us = SpawnOptions {
        kill_on_disconnect: true,
        ..keep()
    };
    c.spawn(killed_with_us, sh("sleep 5"), FdBundle::new())
        .unwrap();
    c.send(
        &Message::Spawn(Spawn::new(keep(), FdMap::default(), bin_true()).unwrap()),
        vec![],
    );
    match c.recv().message {
        Message::Error(e) => assert_eq!(e.code(), ErrorCode::UnexpectedMessage),
        m => panic!("expected an error, got {m:?}"),
    }
    assert!(is_clean_end(&c.try_recv().unwrap_err()));

    // A Signal that the Exit overtakes reaches a READY connection: UnexpectedMessage, closed.
    let mut d = srv.connect();
    d.spawn(keep(), sh("exit 7"), FdBundle::new()).unwrap();
    assert_eq!(d.wait().unwrap().code(), 7);
    d.send(&Message::Signal(Signal::new(15).unwrap()), vec![]);
    match d.recv().message {
        Message::Error(e) => assert_eq!(e.code(), ErrorCode::UnexpectedMessage),
        m => panic!("expected an error, got {m:?}"),
    }
    assert!(is_clean_end(&d.try_recv().unwrap_err()));

    // Without the flag: closed after Exit.
    let mut e = srv.connect();
    e.spawn(opts(), bin_true(), FdBundle::new()).unwrap();
    assert_eq!(e.wait().unwrap().code(), 0);
    assert!(is_clean_end(&e.try_recv().unwrap_err()));
    drop((c, d, e));
    srv.settle(fds0);
}

/// Connections kept for reuse do not keep an `--idle-timeout` server up; it closes them as it
/// exits, after an `Error(ShuttingDown)`.
#[test]
fn idle_kept_connections_do_not_block_the_idle_timeout() {
    let mut srv = Server::start(&["--idle-timeout", "1"]);
    let mut c = srv.connect();
    c.spawn(keep(), bin_true(), FdBundle::new()).unwrap();
    assert_eq!(c.wait().unwrap().code(), 0);
    let t = Instant::now();
    let status = srv.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // It said why before closing: a request sent meanwhile was not acted on (§6.6).
    match c.recv().message {
        Message::Error(e) => assert_eq!(e.code(), ErrorCode::ShuttingDown),
        m => panic!("expected Error(ShuttingDown), got {m:?}"),
    }
    assert!(is_clean_end(&c.try_recv().unwrap_err()));
}

/// A pooled child that has died (its SIGCHLD not read yet) is not handed a job: the server
/// sees its socket closed, skips it and forks for the request, which runs as usual; the server
/// stays up with no fd left behind. The server is stopped while the request arrives and the
/// pooled child is killed, so that it sees the request before the child's SIGCHLD.
#[test]
fn a_dead_pooled_child_is_skipped() {
    use nix::sys::signal::{kill, Signal as Sig};
    use nix::unistd::Pid as NixPid;
    let srv = Server::start(&["--prefork", "1"]);
    let pooled = srv.wait_children(1)[0];
    let server = NixPid::from_raw(srv.pid());
    let mut c = srv.connect();
    kill(server, Sig::SIGSTOP).unwrap();
    let (frame, _fds) = spawn_frame(opts(), bin_true(), FdBundle::new());
    send_raw_all(c.sock.as_fd(), &frame, &[]).unwrap();
    kill(NixPid::from_raw(pooled), Sig::SIGKILL).unwrap();
    // The pooled child is a zombie (its socket closed) before the server runs again.
    let until = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(format!("/proc/{pooled}/stat"))
        .unwrap()
        .contains(") Z ")
    {
        assert!(Instant::now() < until, "the pooled child did not die");
        std::thread::sleep(Duration::from_millis(2));
    }
    kill(server, Sig::SIGCONT).unwrap();
    match c.recv().message {
        Message::Pid(p) => {
            assert_ne!(p.pid(), pooled, "the job went to the dead pooled child");
            assert_eq!(c.wait().unwrap().code(), 0);
        }
        m => panic!("unexpected {m:?}"),
    }
    // Still serving, through the refilled pool.
    let mut d = srv.connect();
    d.spawn(opts(), sh("exit 6"), FdBundle::new()).unwrap();
    assert_eq!(d.wait().unwrap().code(), 6);
    drop((c, d));
    srv.wait_children(1);
    srv.wait_fds(srv.idle_fds);
}

/// Children without a report pipe of their own (exec jobs without `pid_after_exec`, entry
/// jobs) report a failure on the server's shared report socket, tagged with their spawn: many
/// at once, mixed with children that exit with 127 on their own, each connection gets its own
/// outcome.
#[test]
fn failure_reports_on_the_shared_socket_reach_their_own_connection() {
    let srv = Server::start(&[]);
    let fds0 = srv.idle_fds;
    let missing = |i: usize| Job::Exec(ExecJob::new(format!("/nonexistent/{i}")).unwrap());
    let mut conns: Vec<(bool, Conn)> = (0..24)
        .map(|i| {
            let fails = i % 2 == 0;
            let job = if fails {
                missing(i)
            } else {
                sh("sleep 0.05; exit 127")
            };
            let mut c = srv.connect();
            c.spawn(opts(), job, FdBundle::new()).unwrap();
            (fails, c)
        })
        .collect();
    for (fails, c) in &mut conns {
        match c.wait() {
            Err(e) if *fails => {
                assert_eq!(e.code(), ErrorCode::ExecFailed);
                assert_eq!(e.errno(), nix::libc::ENOENT);
            }
            Ok(exit) if !*fails => assert_eq!(exit.code(), 127),
            other => panic!("fails: {fails}, got {other:?}"),
        }
    }
    drop(conns);
    srv.settle(fds0);
}

/// Targets that form cycles with the numbers the server receives the fds at (the bundle is
/// installed at the server's lowest free fd numbers, read from /proc before sending; the
/// targets are those numbers reversed: 2-cycles, and one fd that arrives on its own target):
/// every target holds the file sent for it.
#[test]
fn fd_targets_in_cycles_are_placed_right() {
    let srv = Server::start(&[]);
    let fds0 = srv.idle_fds;
    let (out_r, out_w) = pipe();
    // Distinct inodes: a fresh pipe's read end each.
    let originals: Vec<OwnedFd> = (0..41).map(|_| nix::unistd::pipe().unwrap().0).collect();
    let mut c = srv.connect();
    // The numbers the 42 fds (out_w first) will get in the server.
    let used: std::collections::HashSet<u32> = std::fs::read_dir(format!("/proc/{}/fd", srv.pid()))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    let free: Vec<u32> = (0..).filter(|n| !used.contains(n)).take(42).collect();
    let target = |i: usize| free[41 - i];
    let mut b = FdBundle::new();
    b.push(1, out_w).unwrap();
    for (i, fd) in originals.iter().enumerate() {
        b.push(target(i), fd.try_clone().unwrap()).unwrap();
    }
    c.spawn(
        opts(),
        sh("stat -L -c '%n %d %i' /proc/self/fd/* 2>/dev/null; exit 0"),
        b,
    )
    .unwrap();
    assert_eq!(c.wait().unwrap().code(), 0);
    let seen = fd_identities(&read_all(out_r));
    for (i, fd) in originals.iter().enumerate() {
        let st = fstat(fd.as_fd()).unwrap();
        let t = target(i);
        assert_eq!(seen.get(&t), Some(&(st.st_dev, st.st_ino)), "target {t}");
    }
    drop(originals);
    srv.settle(fds0);
}

/// A client that stops reading right after its Spawn: the server forks, its `Pid` finds the
/// peer gone (`EPIPE`), and the child (with `kill_on_disconnect`) must be killed like any child
/// whose client went away, not left running with a connection that no longer exists.
#[test]
fn a_client_gone_before_its_pid_still_has_its_child_killed() {
    let srv = Server::start(&[]);
    let o = SpawnOptions {
        kill_on_disconnect: true,
        ..opts()
    };
    let mut held = Vec::new();
    for _ in 0..5 {
        let sock = UnixStream::connect(&srv.socket).unwrap();
        send_message(sock.as_fd(), &Message::Hello(Hello::current()), vec![]).unwrap();
        let mut reader = FrameReader::new();
        assert!(matches!(
            reader.read_frame(sock.as_fd()).unwrap().message,
            Message::HelloOk(_)
        ));
        let spawn = Spawn::new(o, FdMap::default(), sh("sleep 30")).unwrap();
        send_message(sock.as_fd(), &Message::Spawn(spawn), vec![]).unwrap();
        // No EOF for the server to read: only its replies fail.
        sock.shutdown(std::net::Shutdown::Read).unwrap();
        held.push(sock);
    }
    // Every child dies with its connection, whether the server closed it on EPIPE (its Pid
    // found the peer gone) or sees it close now; none runs its 30 s.
    drop(held);
    srv.settle(srv.idle_fds);
}
