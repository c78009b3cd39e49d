//! The client against a fake server: a thread (or, for launch, this test binary run as a
//! child) that speaks the protocol through `forkserver_protocol`. It checks the client's side
//! of the conversation only; the real server is tested end to end elsewhere.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use forkserver_protocol::{
    send_message, spawn_flags, AuthMethod, ErrorCode, ErrorReply, Exit, Features, Frame,
    FrameReader, HelloOk, Job, Message, Pid, Revision, Session, Status,
};

use crate::{Client, Error, Stdio};

/// Held for writing by the test that forks (its child holds a copy of every fd of this
/// process, fake servers' ends included, for as long as it runs), for reading by the tests
/// that need a fake server's close to be seen by the client at once (a send refused, EOF):
/// with a copy alive elsewhere, the close is not a close.
static FORKS: RwLock<()> = RwLock::new(());

fn no_fork_meanwhile() -> std::sync::RwLockReadGuard<'static, ()> {
    FORKS.read().unwrap_or_else(PoisonError::into_inner)
}

/// One end of a fake-server connection.
struct Peer {
    sock: UnixStream,
    reader: FrameReader,
}

impl Peer {
    fn read(&mut self) -> Frame {
        self.reader.read_frame(self.sock.as_fd()).unwrap()
    }

    fn send(&mut self, m: Message, fds: Vec<OwnedFd>) {
        send_message(self.sock.as_fd(), &m, fds).unwrap();
    }

    /// Reads `Hello`, answers `HelloOk` (no auth).
    fn handshake(&mut self) {
        assert!(matches!(self.read().message, Message::Hello(_)));
        self.send(
            Message::HelloOk(HelloOk::new(1, AuthMethod::None).unwrap()),
            vec![],
        );
    }

    /// Reads `FeaturesRequest`, answers with `features` (PROTOCOL.md §5.13): what a client
    /// asks once per server, on its first connection.
    fn answer_features_with(&mut self, features: Features) {
        assert_eq!(self.read().message, Message::FeaturesRequest);
        self.send(Message::Features(features), vec![]);
    }

    /// As [`Peer::answer_features_with`], for a server of this crate's revision.
    fn answer_features(&mut self) {
        self.answer_features_with(Features::current());
    }

    /// Whether the client closed its end (the next read is EOF).
    fn at_eof(&mut self) -> bool {
        self.reader.read_frame(self.sock.as_fd()).is_err()
    }
}

fn exit(code: i32) -> Message {
    Message::Exit(Exit::new(code, false, false).unwrap())
}

fn pid(pid: i32, pidfd: bool) -> Message {
    Message::Pid(Pid::new(pid, pidfd).unwrap())
}

/// A listener in a fresh temp dir, and a thread that runs `script` on it.
fn fake_server<F>(script: F) -> (PathBuf, JoinHandle<()>)
where
    F: FnOnce(&mut dyn FnMut() -> Peer) + Send + 'static,
{
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "forkserver-client-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    // Private, as a socket directory must be (PROTOCOL.md §9.3).
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&dir)
        .unwrap();
    let path = dir.join("sock");
    let listener = UnixListener::bind(&path).unwrap();
    let handle = std::thread::spawn(move || {
        let mut accept = || Peer {
            sock: listener.accept().unwrap().0,
            reader: FrameReader::new(),
        };
        script(&mut accept);
        let _ = std::fs::remove_dir_all(&dir);
    });
    (path, handle)
}

/// Serves the handshake of `Client::connect`'s check, and the `Features` it asks for.
fn serve_ping(accept: &mut dyn FnMut() -> Peer) {
    let mut p = accept();
    p.handshake();
    p.answer_features();
    assert!(p.at_eof());
}

/// A client that opens a connection per request (no reuse), so that each scripted `accept`
/// of the fake server sees one request; the check's connection is closed at once.
fn one_connection_per_request(path: &std::path::Path) -> Client {
    let client = Client::connect(path).unwrap();
    client.set_max_idle_connections(0);
    client
}

fn read_spawn(p: &mut Peer) -> forkserver_protocol::Spawn {
    match p.read().message {
        Message::Spawn(s) => s,
        m => panic!("expected Spawn, got {m:?}"),
    }
}

/// A server before rev 0.6 answers `FeaturesRequest` (a tag it does not know) with
/// `Error(Malformed)` and closes: the client takes it to implement the first revisions'
/// options only. Its spawns go without KEEP_CONNECTION, and an option of rev 0.3 or 0.5 is
/// refused locally, with nothing sent. It asks once.
#[test]
fn a_server_before_0_6_gets_only_the_first_options() {
    let (path, server) = fake_server(|accept| {
        let mut p = accept();
        p.handshake();
        assert_eq!(p.read().message, Message::FeaturesRequest);
        p.send(
            Message::Error(ErrorReply::new(ErrorCode::Malformed, 0, "unknown tag 0x13")),
            vec![],
        );
        drop(p);
        for pid_ in [7, 8] {
            let mut q = accept();
            q.handshake();
            assert!(!read_spawn(&mut q).options().keep_connection);
            q.send(pid(pid_, false), vec![]);
            q.send(exit(0), vec![]);
            assert!(q.at_eof());
        }
        // The test's sentinel: no connection for the refused requests.
        assert!(accept().at_eof());
    });
    let client = Client::connect(&path).unwrap();
    for expected in [7, 8] {
        let mut child = client.call("e", "").spawn().unwrap();
        assert_eq!(child.pid(), expected);
        assert_eq!(child.wait().unwrap().code(), Some(0));
        assert_eq!(client.idle_connections(), 0);
    }
    let e = client.command("x").uid(1000).spawn().unwrap_err();
    assert!(
        matches!(
            e,
            Error::Unsupported {
                option: "SET_UID",
                server: None
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "the forkserver (before rev 0.6) does not implement the option SET_UID"
    );
    let e = client.command("x").env_remove("HOME").spawn().unwrap_err();
    assert!(
        matches!(
            e,
            Error::Unsupported {
                option: "ENV_REMOVE",
                ..
            }
        ),
        "{e:?}"
    );
    drop(UnixStream::connect(&path).unwrap());
    server.join().unwrap();
}

/// A server whose `Features` lack an option: a request using it is refused locally, the
/// others go out on the kept connection, and `Features` are asked once (a second
/// `FeaturesRequest` would be read as the Spawn below and fail).
#[test]
fn an_option_missing_from_the_features_is_refused_locally() {
    let lacking = spawn_flags::ALL & !spawn_flags::SET_GROUPS;
    let (path, server) = fake_server(move |accept| {
        let mut p = accept();
        p.handshake();
        p.answer_features_with(Features::new(Revision::R0_6, lacking, 0b1111).unwrap());
        for i in 0..2 {
            let spawn = read_spawn(&mut p);
            assert!(spawn.options().keep_connection);
            assert_eq!(spawn.options().credentials.gid, Some(5));
            p.send(pid(50 + i, false), vec![]);
            p.send(exit(0), vec![]);
        }
        assert!(p.at_eof());
    });
    let client = Client::connect(&path).unwrap();
    for i in 0..2 {
        let e = client.call("e", "").groups(&[1, 2]).spawn().unwrap_err();
        assert!(
            matches!(e, Error::Unsupported { option: "SET_GROUPS", server: Some(r) } if r == Revision::R0_6),
            "{e:?}"
        );
        let mut child = client.call("e", "").gid(5).spawn().unwrap();
        assert_eq!(child.pid(), 50 + i);
        assert!(child.wait().unwrap().success());
    }
    drop(client);
    server.join().unwrap();
}

/// A kept connection that the server closes on its own just as a request goes out on it:
/// the server says so (`ResourceExhausted`, or `ShuttingDown`) without acting on the request,
/// and the client makes it again on a new connection.
#[test]
fn a_request_crossing_the_close_of_a_kept_connection_is_made_again() {
    let _no_fork = no_fork_meanwhile();
    let (path, server) = fake_server(|accept| {
        let mut p = accept();
        p.handshake();
        p.answer_features();
        // The client's Spawn arrives; the server closes the connection unread, saying why.
        std::thread::sleep(Duration::from_millis(50));
        p.send(
            Message::Error(ErrorReply::new(ErrorCode::ResourceExhausted, 0, "room")),
            vec![],
        );
        drop(p);
        let mut q = accept();
        q.handshake();
        assert!(read_spawn(&mut q).options().keep_connection);
        q.send(pid(9, false), vec![]);
        q.send(exit(0), vec![]);
    });
    let client = Client::connect(&path).unwrap();
    assert_eq!(client.idle_connections(), 1);
    let mut child = client.call("e", "").spawn().unwrap();
    assert_eq!(child.pid(), 9);
    assert_eq!(child.wait().unwrap().code(), Some(0));
    server.join().unwrap();
}

/// `Error(Timeout)` (the server's idle timeout) crossing a request on a kept connection is
/// "not acted on" too (PROTOCOL.md §6.6): the request is made again on a new connection.
#[test]
fn a_request_crossing_an_idle_timeout_is_made_again() {
    let _no_fork = no_fork_meanwhile();
    let (path, server) = fake_server(|accept| {
        let mut p = accept();
        p.handshake();
        p.answer_features();
        std::thread::sleep(Duration::from_millis(50));
        p.send(
            Message::Error(ErrorReply::new(ErrorCode::Timeout, 0, "idle")),
            vec![],
        );
        drop(p);
        let mut q = accept();
        q.handshake();
        read_spawn(&mut q);
        q.send(pid(11, false), vec![]);
        q.send(exit(0), vec![]);
    });
    let client = Client::connect(&path).unwrap();
    let mut child = client.call("e", "").spawn().unwrap();
    assert_eq!(child.pid(), 11);
    assert_eq!(child.wait().unwrap().code(), Some(0));
    server.join().unwrap();
}

/// A kept connection the server closed moments ago (no probe before reuse: it was idle for
/// less than the probe's bound) refuses the send, and the request goes on a new connection
/// without the caller seeing anything; nothing reached the closed one.
#[test]
fn a_kept_connection_closed_moments_ago_refuses_the_send_and_is_replaced() {
    let _no_fork = no_fork_meanwhile();
    let (closed_tx, closed_rx) = mpsc::channel();
    let (path, server) = fake_server(move |accept| {
        let mut p = accept();
        p.handshake();
        p.answer_features();
        drop(p);
        closed_tx.send(()).unwrap();
        let mut q = accept();
        q.handshake();
        read_spawn(&mut q);
        q.send(pid(12, false), vec![]);
        q.send(exit(0), vec![]);
    });
    let client = Client::connect(&path).unwrap();
    assert_eq!(client.idle_connections(), 1);
    closed_rx.recv().unwrap();
    let mut child = client.call("e", "").spawn().unwrap();
    assert_eq!(child.pid(), 12);
    assert_eq!(child.wait().unwrap().code(), Some(0));
    server.join().unwrap();
}

/// After `fork()` the child process does not use its parent's kept connections.
#[test]
#[allow(unsafe_code)]
fn a_forked_child_does_not_share_kept_connections() {
    let _forking = FORKS.write().unwrap_or_else(PoisonError::into_inner);
    let (path, server) = fake_server(serve_ping);
    let client = Client::connect(&path).unwrap();
    assert_eq!(client.idle_connections(), 1);
    // SAFETY: the child only reads the pool's length (its lock is free: no other thread uses
    // this client) and leaves with `_exit`.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            let n = client.idle_connections();
            // SAFETY: `_exit` ends the child without running any of the parent's destructors.
            unsafe { nix::libc::_exit(n as i32) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            let status = nix::sys::wait::waitpid(child, None).unwrap();
            assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
        }
    }
    assert_eq!(client.idle_connections(), 1);
    drop(client);
    server.join().unwrap();
}

#[test]
fn connections_are_reused_after_the_final_report() {
    let (path, server) = fake_server(|accept| {
        // The check's connection is kept, and carries every spawn that follows while its
        // requests are all answered.
        let mut p = accept();
        p.handshake();
        p.answer_features();
        for (i, code) in [0, 3].into_iter().enumerate() {
            let spawn = read_spawn(&mut p);
            assert!(spawn.options().keep_connection, "spawn {i}");
            p.send(pid(100 + i as i32, false), vec![]);
            p.send(exit(code), vec![]);
        }
        // An exec failure in place of the Pid (wait_for_exec) is a final report too.
        read_spawn(&mut p);
        p.send(
            Message::Error(ErrorReply::new(ErrorCode::ExecFailed, 2, "execve")),
            vec![],
        );
        // READY again: a status request, answered.
        assert_eq!(p.read().message, Message::StatusRequest);
        p.send(
            Message::Status(Status::new(1, 1, 0, 1, 3, "fake").unwrap()),
            vec![],
        );
        // A Signal that the Exit overtakes: the client must not reuse this connection.
        read_spawn(&mut p);
        p.send(pid(200, false), vec![]);
        assert!(matches!(p.read().message, Message::Signal(_)));
        p.send(exit(1), vec![]);
        assert!(p.at_eof());
        // So the next spawn comes on a new connection; and after an UnknownEntry error (not a
        // final report) that one is not reused either.
        let mut q = accept();
        q.handshake();
        read_spawn(&mut q);
        q.send(
            Message::Error(ErrorReply::new(ErrorCode::UnknownEntry, 0, "no")),
            vec![],
        );
        assert!(q.at_eof());
        // A kept connection that the server closes is noticed before it is used: after a
        // spawn, this end closes; the client's next request connects anew.
        let mut r = accept();
        r.handshake();
        read_spawn(&mut r);
        r.send(pid(300, false), vec![]);
        r.send(exit(0), vec![]);
        drop(r);
        let mut t = accept();
        t.handshake();
        read_spawn(&mut t);
        t.send(pid(301, false), vec![]);
        t.send(exit(4), vec![]);
    });
    let client = Client::connect(&path).unwrap();
    assert_eq!(client.idle_connections(), 1);
    for (i, code) in [0, 3].into_iter().enumerate() {
        let mut child = client.call("e", "").spawn().unwrap();
        assert_eq!(child.pid(), 100 + i as i32);
        assert_eq!(client.idle_connections(), 0);
        assert_eq!(child.wait().unwrap().code(), Some(code));
        assert_eq!(client.idle_connections(), 1);
    }
    let err = client.command("/nonexistent").spawn().unwrap_err();
    assert!(matches!(err, Error::Server { .. }), "{err:?}");
    assert_eq!(client.idle_connections(), 1);
    assert_eq!(client.status().unwrap().spawned_total(), 3);
    assert_eq!(client.idle_connections(), 1);

    let mut child = client.call("e", "").spawn().unwrap();
    assert!(matches!(child.signal(15), Err(Error::AlreadyExited)));
    assert_eq!(child.wait().unwrap().code(), Some(1));
    assert_eq!(client.idle_connections(), 0);
    assert!(client.call("nope", "").spawn().is_err());
    assert_eq!(client.idle_connections(), 0);

    let mut child = client.call("e", "").spawn().unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(client.idle_connections(), 1);
    // Let the fake close its end before the next request looks at the kept connection.
    std::thread::sleep(Duration::from_millis(100));
    let mut child = client.call("e", "").spawn().unwrap();
    assert_eq!(child.pid(), 301);
    assert_eq!(child.wait().unwrap().code(), Some(4));
    server.join().unwrap();

    // Reuse off: kept connections are closed.
    assert_eq!(client.idle_connections(), 1);
    client.set_max_idle_connections(0);
    assert_eq!(client.idle_connections(), 0);
}

#[test]
fn spawn_sends_job_and_fds_then_wait_reads_exit() {
    let (path, server) = fake_server(|accept| {
        serve_ping(accept);
        let mut p = accept();
        p.handshake();
        let frame = p.read();
        let Message::Spawn(spawn) = frame.message else {
            panic!("{:?}", frame.message)
        };
        // Default stdio (inherited 0, 1, 2) first, then the extra fd.
        assert_eq!(spawn.fds().targets(), &[0, 1, 2, 7]);
        assert_eq!(frame.fds.len(), 4);
        let o = spawn.options();
        assert!(o.pid_after_exec && o.want_pidfd && o.kill_on_disconnect);
        assert_eq!(o.session, Session::NewSession);
        assert_eq!(o.deadline_ms.map(|d| d.get()), Some(1500));
        let Job::Exec(job) = spawn.job() else {
            panic!()
        };
        assert_eq!(job.program(), b"prog");
        assert_eq!(
            job.args(),
            &[b"prog".to_vec(), b"-x".to_vec(), b"y".to_vec()]
        );
        assert!(job.env_clear());
        assert_eq!(job.env(), &[(b"K".to_vec(), b"V".to_vec())]);
        assert_eq!(job.cwd(), Some(&b"/tmp"[..]));
        // A stand-in for the pidfd.
        let fake_pidfd: OwnedFd = File::open("/dev/null").unwrap().into();
        p.send(pid(4242, true), vec![fake_pidfd]);
        p.send(exit(-9), vec![]);
    });
    let client = one_connection_per_request(&path);
    let extra: OwnedFd = File::open("/dev/null").unwrap().into();
    let mut child = client
        .command("prog")
        .args(["-x", "y"])
        .env_clear()
        .env("K", "V")
        .current_dir("/tmp")
        .fd(7, extra)
        .new_session()
        .deadline(Duration::from_micros(1_499_001))
        .kill_on_disconnect(true)
        .pidfd(true)
        .spawn()
        .unwrap();
    assert_eq!(child.pid(), 4242);
    assert!(child.pidfd().is_some());
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9));
    assert_eq!(status.code(), None);
    // Idempotent.
    assert_eq!(child.wait().unwrap(), status);
    assert_eq!(child.try_wait().unwrap(), Some(status));
    assert!(child.connection_fd().is_none());
    server.join().unwrap();
}

#[test]
fn too_many_fds_are_refused_before_connecting() {
    let (path, server) = fake_server(|accept| {
        serve_ping(accept);
        // Only the test's sentinel connection must come next, not a spawn.
        let mut p = accept();
        assert!(p.at_eof());
    });
    let client = one_connection_per_request(&path);
    let mut call = client.call("work", Vec::new());
    for t in 0..257 {
        call.fd(t, File::open("/dev/null").unwrap());
    }
    assert!(matches!(call.spawn(), Err(Error::TooManyFds(257))));
    // Duplicate targets too.
    let mut call = client.call("work", Vec::new());
    call.fd(3, File::open("/dev/null").unwrap())
        .fd(3, File::open("/dev/null").unwrap());
    assert!(matches!(call.spawn(), Err(Error::InvalidRequest(_))));
    // A NUL byte in an argument.
    let e = client.command("a\0b").spawn().unwrap_err();
    assert!(matches!(e, Error::InvalidRequest(_)), "{e:?}");
    drop(UnixStream::connect(&path).unwrap());
    server.join().unwrap();
}

#[test]
fn exec_failure_fails_spawn() {
    let (path, server) = fake_server(|accept| {
        serve_ping(accept);
        let mut p = accept();
        p.handshake();
        assert!(matches!(p.read().message, Message::Spawn(_)));
        p.send(
            ErrorReply::new(ErrorCode::ExecFailed, nix::libc::ENOENT, "execve").into(),
            vec![],
        );
    });
    let client = one_connection_per_request(&path);
    let err = client.command("missing").spawn().unwrap_err();
    assert!(err.is_exec_failure(), "{err:?}");
    assert_eq!(err.errno(), Some(nix::libc::ENOENT));
    server.join().unwrap();
}

#[test]
fn exec_failure_after_pid_is_reported_by_wait() {
    let (path, server) = fake_server(|accept| {
        serve_ping(accept);
        let mut p = accept();
        p.handshake();
        let Message::Spawn(s) = p.read().message else {
            panic!()
        };
        assert!(!s.options().pid_after_exec);
        p.send(pid(10, false), vec![]);
        p.send(
            ErrorReply::new(ErrorCode::ExecFailed, nix::libc::EACCES, "execve").into(),
            vec![],
        );
    });
    let client = one_connection_per_request(&path);
    let mut child = client.command("x").wait_for_exec(false).spawn().unwrap();
    for _ in 0..2 {
        let err = child.wait().unwrap_err();
        assert_eq!(err.errno(), Some(nix::libc::EACCES));
    }
    assert!(matches!(child.signal(15), Err(Error::AlreadyExited)));
    child.kill().unwrap();
    server.join().unwrap();
}

#[test]
fn signal_is_acknowledged_and_kill_after_exit_is_ok() {
    let (path, server) = fake_server(|accept| {
        serve_ping(accept);
        let mut p = accept();
        p.handshake();
        let frame = p.read();
        // call(): no stdio by default.
        let Message::Spawn(s) = frame.message else {
            panic!()
        };
        assert!(s.fds().is_empty());
        assert!(matches!(s.job(), Job::Entry(e) if e.name() == "work" && e.payload() == b"pl"));
        p.send(pid(11, false), vec![]);
        let Message::Signal(sig) = p.read().message else {
            panic!()
        };
        assert_eq!(sig.signo(), 15);
        p.send(Message::Signaled, vec![]);
        assert!(matches!(p.read().message, Message::Signal(_)));
        p.send(
            ErrorReply::new(ErrorCode::SignalFailed, nix::libc::EPERM, "kill").into(),
            vec![],
        );
        // The child ends before the next signal is handled.
        assert!(matches!(p.read().message, Message::Signal(_)));
        p.send(exit(3), vec![]);
    });
    let client = one_connection_per_request(&path);
    let mut child = client.call("work", *b"pl").spawn().unwrap();
    assert!(matches!(child.signal(0), Err(Error::InvalidRequest(_))));
    assert!(matches!(child.signal(65), Err(Error::InvalidRequest(_))));
    child.signal(15).unwrap();
    let err = child.signal(15).unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::SignalFailed));
    child.kill().unwrap(); // Exit came instead of an ack.
    assert!(matches!(child.signal(1), Err(Error::AlreadyExited)));
    assert_eq!(child.wait().unwrap().code(), Some(3));
    server.join().unwrap();
}

#[test]
fn piped_stdio_reaches_the_child_fds() {
    let (path, server) = fake_server(|accept| {
        serve_ping(accept);
        let mut p = accept();
        p.handshake();
        let frame = p.read();
        let Message::Spawn(s) = frame.message else {
            panic!()
        };
        assert_eq!(s.fds().targets(), &[0, 1, 2]);
        let mut fds = frame.fds.into_iter().map(File::from);
        let (mut stdin, mut stdout) = (fds.next().unwrap(), fds.next().unwrap());
        p.send(pid(12, false), vec![]);
        // Play the child: echo stdin to stdout.
        let mut input = String::new();
        stdin.read_to_string(&mut input).unwrap();
        stdout.write_all(input.to_uppercase().as_bytes()).unwrap();
        drop(stdout);
        p.send(exit(0), vec![]);
    });
    let client = one_connection_per_request(&path);
    let mut child = client
        .command("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello").unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out, "HELLO");
    assert!(child.wait().unwrap().success());
    server.join().unwrap();
}

#[test]
fn try_wait_does_not_block() {
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (path, server) = fake_server(move |accept| {
        serve_ping(accept);
        let mut p = accept();
        p.handshake();
        p.read();
        p.send(pid(13, false), vec![]);
        go_rx.recv().unwrap();
        p.send(exit(1), vec![]);
    });
    let client = one_connection_per_request(&path);
    let mut child = client.call("work", Vec::new()).spawn().unwrap();
    assert!(child.connection_fd().is_some());
    assert_eq!(child.try_wait().unwrap(), None);
    go_tx.send(()).unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    assert_eq!(status.code(), Some(1));
    server.join().unwrap();
}

#[test]
fn status_auth_and_server_gone() {
    let (path, server) = fake_server(|accept| {
        serve_ping(accept);
        let mut p = accept();
        p.handshake();
        assert!(matches!(p.read().message, Message::StatusRequest));
        let s = Status::new(1, 77, 2, 3, 40, "fake 0.0").unwrap();
        p.send(Message::Status(s), vec![]);
        // A server that wants a key.
        let mut p = accept();
        p.read();
        let hmac = AuthMethod::HmacSha256 { challenge: [7; 32] };
        p.send(Message::HelloOk(HelloOk::new(1, hmac).unwrap()), vec![]);
        // A server that dies mid-request.
        let mut p = accept();
        p.handshake();
        p.read();
        drop(p);
        // A server that refuses the hello.
        let mut p = accept();
        p.read();
        p.send(
            ErrorReply::new(ErrorCode::ShuttingDown, 0, "bye").into(),
            vec![],
        );
    });
    let client = one_connection_per_request(&path);
    let s = client.status().unwrap();
    assert_eq!((s.server_pid(), s.live_children()), (77, 2));
    assert_eq!(s.server_version(), "fake 0.0");
    assert!(matches!(client.status(), Err(Error::AuthRequired)));
    assert!(matches!(client.status(), Err(Error::ServerGone)));
    let e = client.status().unwrap_err();
    assert_eq!(e.server_code(), Some(ErrorCode::ShuttingDown), "{e:?}");
    server.join().unwrap();
    assert!(matches!(client.status(), Err(Error::Connect { .. })));
}

#[test]
fn many_threads_share_one_client() {
    const N: usize = 8;
    let (path, server) = fake_server(|accept| {
        serve_ping(accept);
        let peers: Vec<Peer> = (0..N).map(|_| accept()).collect();
        let handles: Vec<_> = peers
            .into_iter()
            .map(|mut p| {
                std::thread::spawn(move || {
                    p.handshake();
                    let Message::Spawn(s) = p.read().message else {
                        panic!()
                    };
                    let Job::Entry(e) = s.job() else { panic!() };
                    let code = i32::from(e.payload()[0]);
                    p.send(pid(100 + code, false), vec![]);
                    p.send(exit(code), vec![]);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
    let client = one_connection_per_request(&path);
    let handles: Vec<_> = (0..N as u8)
        .map(|i| {
            let client = client.clone();
            std::thread::spawn(move || {
                let mut child = client.call("work", vec![i]).spawn().unwrap();
                assert_eq!(child.pid(), 100 + i32::from(i));
                assert_eq!(child.wait().unwrap().code(), Some(i32::from(i)));
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    server.join().unwrap();
}

/// The fake server of the launch tests: they start this test binary with
/// `--exact tests::fake_launched_server`, and the launch convention's environment. Without
/// that environment (a normal test run) it does nothing.
///
/// Entry job `exit` replies `Pid` then `Exit` with the payload's first byte; entry job `die`
/// makes the server exit at once.
#[test]
#[allow(unsafe_code)]
fn fake_launched_server() {
    use crate::{ALIVE_FD_ENV, LISTEN_FD_ENV};
    use std::os::fd::FromRawFd;
    let (Some(listen), Some(alive)) = (
        std::env::var(LISTEN_FD_ENV).ok(),
        std::env::var(ALIVE_FD_ENV).ok(),
    ) else {
        return;
    };
    // SAFETY: the launch convention hands this process this fd, open and otherwise unused;
    // it is wrapped once.
    let listener = unsafe { UnixListener::from_raw_fd(listen.parse().unwrap()) };
    // SAFETY: as for `listener`: the launch convention's fd, wrapped once.
    let mut alive = unsafe { File::from_raw_fd(alive.parse().unwrap()) };
    std::thread::spawn(move || {
        // EOF (or an error): the client is gone.
        let _ = alive.read(&mut [0u8; 1]);
        std::process::exit(0);
    });
    // Ready (PROTOCOL.md §9.4).
    if let Ok(ready) = std::env::var(forkserver_protocol::launch::READY_FD_ENV) {
        // SAFETY: as above, the launch convention's fd, wrapped once.
        let mut ready = unsafe { File::from_raw_fd(ready.parse().unwrap()) };
        ready.write_all(forkserver_protocol::launch::READY).unwrap();
    }
    for sock in listener.incoming() {
        let mut p = Peer {
            sock: sock.unwrap(),
            reader: FrameReader::new(),
        };
        std::thread::spawn(move || {
            p.handshake();
            // READY until the client closes, or a spawn without KEEP_CONNECTION has ended.
            while let Ok(frame) = p.reader.read_frame(p.sock.as_fd()) {
                match frame.message {
                    Message::FeaturesRequest => {
                        p.send(Message::Features(Features::current()), vec![]);
                    }
                    Message::StatusRequest => {
                        let me = std::process::id() as i32;
                        p.send(
                            Message::Status(Status::new(1, me, 0, 1, 0, "fake").unwrap()),
                            vec![],
                        );
                    }
                    Message::Spawn(s) => match s.job() {
                        Job::Entry(e) if e.name() == "die" => std::process::exit(1),
                        Job::Entry(e) => {
                            p.send(pid(99, false), vec![]);
                            p.send(exit(i32::from(e.payload()[0])), vec![]);
                            if !s.options().keep_connection {
                                return;
                            }
                        }
                        Job::Exec(_) => panic!("exec"),
                    },
                    other => panic!("{other:?}"),
                }
            }
        });
    }
}

fn launch_fake() -> Client {
    Client::launcher(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "tests::fake_launched_server",
            "--test-threads=1",
            "-q",
        ])
        // The fake server does not read FORKSERVER_KEY_FD.
        .authenticate(false)
        .launch()
        .unwrap()
}

fn process_alive(pid: u32) -> bool {
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    nix::sys::signal::kill(pid, None).is_ok()
}

#[test]
fn launch_relaunch_and_cleanup() {
    let client = launch_fake();
    let first = client.launched_server_pid().unwrap();
    let first_dir = client.socket_path().parent().unwrap().to_owned();
    assert!(first_dir.is_dir());
    assert_eq!(client.status().unwrap().server_pid(), first as i32);
    let mut first_child = client.call("exit", vec![5]).spawn().unwrap();
    assert_eq!(first_child.wait().unwrap().code(), Some(5));
    drop(first_child);

    // The server dies; the next request starts a new one.
    assert!(matches!(
        client.call("die", Vec::new()).spawn(),
        Err(Error::ServerGone)
    ));
    let second = client.status().unwrap().server_pid() as u32;
    assert_ne!(second, first);
    assert_eq!(client.launched_server_pid(), Some(second));
    let second_dir = client.socket_path().parent().unwrap().to_owned();
    assert_ne!(second_dir, first_dir);
    // The old server is reaped and its directory removed, at the latest by later requests.
    for _ in 0..100 {
        if !first_dir.exists() {
            break;
        }
        client.status().unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!first_dir.exists());

    // A clone and a child keep the server; the last one closes the alive pipe.
    let clone = client.clone();
    drop(client);
    let mut child = clone.call("exit", vec![0]).spawn().unwrap();
    drop(clone);
    assert!(process_alive(second));
    assert!(child.wait().unwrap().success());
    drop(child);
    assert!(!second_dir.exists());
    assert!(!process_alive(second), "server {second} still running");
}

#[test]
fn launch_of_a_program_that_does_not_serve() {
    let err = Client::launch("/bin/true").unwrap_err();
    let Error::Launch(io) = &err else {
        panic!("{err:?}")
    };
    // It exited without saying it was ready (PROTOCOL.md §9.4).
    assert!(
        io.to_string().contains("exited before it was ready"),
        "{err}"
    );
}

#[test]
fn a_server_not_ready_in_time_is_killed_and_reaped() {
    let t = std::time::Instant::now();
    let err = Client::launcher("sleep")
        .arg("30")
        .ready_timeout(Duration::from_millis(300))
        .launch()
        .unwrap_err();
    let Error::Launch(io) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(io.kind(), std::io::ErrorKind::TimedOut, "{err}");
    assert!(t.elapsed() < Duration::from_secs(10));
    // No `sleep 30` of ours left, running or zombie.
    let me = std::process::id();
    let kids = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")).unwrap();
    for kid in kids.split_whitespace() {
        let comm = std::fs::read_to_string(format!("/proc/{kid}/comm")).unwrap_or_default();
        assert_ne!(comm.trim(), "sleep", "a launched sleep is left: {kid}");
    }
}

/// Rev 0.6's exit accounting and metrics: against a server before rev 0.6 both are refused
/// locally (nothing sent); against a current one the usage of the `Exit` reaches
/// [`crate::ExitStatus::resource_usage`] and `Metrics` reaches [`Client::metrics`].
#[test]
fn usage_and_metrics_need_rev_0_6() {
    use forkserver_protocol::{Metrics, ResourceUsage};
    let (old, old_server) = fake_server(|accept| {
        let mut p = accept();
        p.handshake();
        assert_eq!(p.read().message, Message::FeaturesRequest);
        let e = ErrorReply::new(ErrorCode::Malformed, 0, "unknown tag 0x13");
        p.send(Message::Error(e), vec![]);
        drop(p);
        // The sentinel: no connection for the refused requests.
        assert!(accept().at_eof());
    });
    let client = Client::connect(&old).unwrap();
    let e = client
        .call("e", "")
        .resource_usage(true)
        .spawn()
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Unsupported {
                option: "WANT_RUSAGE",
                server: None
            }
        ),
        "{e:?}"
    );
    let e = client.metrics().unwrap_err();
    assert!(
        matches!(
            e,
            Error::Unsupported {
                option: "MetricsRequest",
                server: None
            }
        ),
        "{e:?}"
    );
    drop(UnixStream::connect(&old).unwrap());
    old_server.join().unwrap();

    let usage = ResourceUsage {
        user_us: 1_500_000,
        system_us: 20,
        maxrss_kib: 4096,
    };
    let counters = Metrics {
        spawns_entry_ok: 3,
        ..Metrics::default()
    };
    let (path, server) = fake_server(move |accept| {
        serve_ping(accept);
        let mut p = accept();
        p.handshake();
        assert!(read_spawn(&mut p).options().want_rusage);
        p.send(pid(9, false), vec![]);
        let exit = Exit::new(0, false, false).unwrap().with_usage(Some(usage));
        p.send(Message::Exit(exit), vec![]);
        assert!(p.at_eof());
        let mut p = accept();
        p.handshake();
        assert_eq!(p.read().message, Message::MetricsRequest);
        p.send(Message::Metrics(counters), vec![]);
        assert!(p.at_eof());
    });
    let client = one_connection_per_request(&path);
    let status = client
        .call("e", "")
        .resource_usage(true)
        .spawn()
        .unwrap()
        .wait()
        .unwrap();
    let u = status.resource_usage().unwrap();
    assert_eq!(u.user_time(), std::time::Duration::from_millis(1500));
    assert_eq!(u.system_time(), std::time::Duration::from_micros(20));
    assert_eq!(u.max_rss_kib(), 4096);
    assert_eq!(client.metrics().unwrap(), counters);
    drop(client);
    server.join().unwrap();
}
