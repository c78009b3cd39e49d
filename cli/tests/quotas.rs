//! Quotas for unauthenticated and half-sent work (PROTOCOL.md §6.3, §9.3): the handshake quota,
//! the partial-frame timeout, the pre-authentication limits on frame size and fds, and an
//! authenticated client served through a flood of keyless peers and fd-laden partial frames.
//!
//! No assertion is timed: the flood prints its latencies (`--nocapture`). Read timeouts only
//! keep a failing test from hanging; where a test shows that the server acted "at once", its
//! own timeouts are set far beyond the read timeout, so that nothing else can explain a reply.

mod common;

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use forkserver_protocol::*;

/// The tests start many connections and fds; one at a time keeps them from measuring each other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn key_file(tag: &str) -> (PathBuf, Vec<u8>) {
    use std::os::unix::fs::PermissionsExt;
    let key: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37) ^ 0x5c).collect();
    let path = scratch_dir(tag).join("key");
    std::fs::write(&path, &key).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (path, key)
}

fn keep() -> SpawnOptions {
    SpawnOptions {
        keep_connection: true,
        ..SpawnOptions::default()
    }
}

/// The frame of a `Spawn` of `/bin/true` with `n` fds (targets 10..), and the fds.
fn spawn_with_fds(n: usize) -> (Vec<u8>, Vec<OwnedFd>) {
    let pairs = (0..n as u32).map(|i| (10 + i, devnull())).collect();
    spawn_frame(keep(), bin_true(), bundle(pairs))
}

fn raw_fds(fds: &[OwnedFd]) -> Vec<RawFd> {
    fds.iter().map(AsRawFd::as_raw_fd).collect()
}

/// The error codes of the replies until the server closes, and whether it closed cleanly.
fn codes_to_end(c: &mut Conn) -> Vec<ErrorCode> {
    let (frames, end) = c.read_to_end(Duration::from_secs(30));
    assert!(is_clean_end(&end), "connection ended with {end:?}");
    frames
        .into_iter()
        .map(|f| match f.message {
            Message::Error(e) => e.code(),
            m => panic!("expected an error, got {m:?}"),
        })
        .collect()
}

/// A READY connection that sends half a `Spawn` with fds is closed with `Error(Timeout)` once
/// the handshake timeout has passed, and the server closes the fds it held; a READY connection
/// with nothing half-sent is left alone.
#[test]
fn a_half_sent_frame_times_out_and_its_fds_are_closed() {
    let _s = serial();
    let srv = Server::start(&["--handshake-timeout", "1"]);
    let mut idle = srv.connect();
    let mut c = srv.connect();
    let (r, w) = pipe();
    let mut pairs: Vec<(u32, OwnedFd)> = vec![(10, w)];
    pairs.extend((0..2).map(|i| (11 + i, devnull())));
    let (bytes, fds) = spawn_frame(keep(), bin_true(), bundle(pairs));
    send_raw(c.sock.as_fd(), &bytes[..bytes.len() / 2], &raw_fds(&fds)).unwrap();
    drop(fds);
    // Two connections and the three fds of the half frame are held...
    srv.wait_fds(srv.idle_fds + 2 + 3);
    // ...until the frame's time is up.
    assert_eq!(codes_to_end(&mut c), [ErrorCode::Timeout]);
    drop(c);
    read_all(r); // EOF: the server closed its copy of the pipe's write end.
    srv.wait_fds(srv.idle_fds + 1);
    // The idle READY connection, which held no partial frame, still works.
    assert_eq!(idle.status().connections(), 1);
    drop(idle);
    srv.assert_clean();
}

/// Before authentication, a header announcing more than a handshake frame is refused at its
/// header, and fds are closed and refused on arrival; before the handshake without a key, the
/// same for the header. The handshake timeout is an hour: only the new rules can close these.
#[test]
fn before_authentication_long_frames_and_fds_are_refused_at_once() {
    let _s = serial();
    let (kf, key) = key_file("preauth");
    let srv = Server::start_with_key_and(&kf, &key, &["--handshake-timeout", "3600"]);
    let long_header = |tag: u8, body: u32| {
        let mut h = vec![tag, 0, 0, 0];
        h.extend(body.to_le_bytes());
        h
    };
    let hello = Message::Hello(Hello::current()).to_bytes();

    // AWAIT_HELLO: the 8 bytes of a header announcing a 64 KiB Spawn.
    let mut c = Conn::raw(&srv.socket);
    send_raw(c.sock.as_fd(), &long_header(0x10, 65_536), &[]).unwrap();
    assert_eq!(codes_to_end(&mut c), [ErrorCode::UnexpectedMessage]);

    // AWAIT_AUTH: the same header after Hello.
    let mut c = Conn::raw(&srv.socket);
    send_raw(c.sock.as_fd(), &hello, &[]).unwrap();
    assert!(matches!(c.recv().message, Message::HelloOk(_)));
    send_raw(c.sock.as_fd(), &long_header(0x10, 65_536), &[]).unwrap();
    assert_eq!(codes_to_end(&mut c), [ErrorCode::AuthRequired]);

    // AWAIT_AUTH: one byte of a Spawn with 253 fds, among them a pipe's write end.
    let (r, w) = pipe();
    let mut c = Conn::raw(&srv.socket);
    send_raw(c.sock.as_fd(), &hello, &[]).unwrap();
    assert!(matches!(c.recv().message, Message::HelloOk(_)));
    let (bytes, mut fds) = spawn_with_fds(252);
    fds.push(w);
    send_raw(c.sock.as_fd(), &bytes[..1], &raw_fds(&fds)).unwrap();
    drop(fds);
    assert_eq!(codes_to_end(&mut c), [ErrorCode::AuthRequired]);
    read_all(r);

    // AWAIT_HELLO: a Hello with an fd attached.
    let (r, w) = pipe();
    let mut c = Conn::raw(&srv.socket);
    send_raw(c.sock.as_fd(), &hello, &[w.as_raw_fd()]).unwrap();
    drop(w);
    assert_eq!(codes_to_end(&mut c), [ErrorCode::AuthRequired]);
    read_all(r);
    srv.settle(srv.idle_fds);

    // Without a key, the frame at the head before the handshake is bounded too.
    let open = Server::start(&["--handshake-timeout", "3600"]);
    let mut c = Conn::raw(&open.socket);
    send_raw(c.sock.as_fd(), &long_header(0x10, 1 << 20), &[]).unwrap();
    assert_eq!(codes_to_end(&mut c), [ErrorCode::UnexpectedMessage]);
    // Requests pipelined behind Hello are still read as usual.
    let mut c = Conn::raw(&open.socket);
    let mut bytes = hello;
    bytes.extend(Message::StatusRequest.to_bytes());
    send_raw(c.sock.as_fd(), &bytes, &[]).unwrap();
    assert!(matches!(c.recv().message, Message::HelloOk(_)));
    assert!(matches!(c.recv().message, Message::Status(_)));
    drop(c);
    open.assert_clean();
}

/// The handshake quota (256): 300 silent connections are all accepted, the oldest 44 are
/// closed with `ResourceExhausted` as newer ones come, and an authenticated client is served
/// throughout.
#[test]
fn the_handshake_quota_closes_the_oldest_silent_connections() {
    let _s = serial();
    let (kf, key) = key_file("quota");
    let srv = Server::start_with_key(&kf, &key);
    let socks: Vec<UnixStream> = (0..300)
        .map(|_| UnixStream::connect(&srv.socket).unwrap())
        .collect();
    for (i, s) in socks[..44].iter().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut reader = FrameReader::new();
        match reader.read_frame(s.as_fd()).map(|f| f.message) {
            Ok(Message::Error(e)) => assert_eq!(e.code(), ErrorCode::ResourceExhausted, "#{i}"),
            other => panic!("connection {i}: {other:?}"),
        }
    }
    srv.wait_fds(srv.idle_fds + 256);
    let mut ok = Conn::connect_with_key(&srv.socket, &key);
    ok.spawn(keep(), bin_true(), FdBundle::default()).unwrap();
    assert_eq!(ok.wait().unwrap().code(), 0);
    drop(socks);
    srv.settle(srv.idle_fds + 1);
    drop(ok);
    srv.settle(srv.idle_fds);
}

/// One `/bin/true` spawn and its exit on a kept connection.
fn spawn_true(c: &mut Conn) -> Result<Duration, String> {
    let t = Instant::now();
    let spawn = Spawn::new(keep(), FdMap::new(), bin_true()).unwrap();
    send_message(c.sock.as_fd(), &Message::Spawn(spawn), vec![])
        .map_err(|e| format!("send: {e}"))?;
    match c.try_recv().map_err(|e| format!("pid: {e}"))?.message {
        Message::Pid(_) => {}
        m => return Err(format!("expected Pid, got {m:?}")),
    }
    match c.try_recv().map_err(|e| format!("exit: {e}"))?.message {
        Message::Exit(e) if e.code() == 0 => Ok(t.elapsed()),
        m => Err(format!("expected Exit(0), got {m:?}")),
    }
}

/// A keyless peer: connect, Hello, on every other connection a wrong Auth, and keep up to
/// `hold` connections open before closing the oldest. Returns the connections made.
fn keyless_cycler(socket: &std::path::Path, n: usize, hold: usize, stop: &AtomicBool) -> usize {
    let hello = Message::Hello(Hello::current()).to_bytes();
    let bad_auth = Message::Auth(Auth {
        response: [0; MAC_LEN],
        challenge: [1; CHALLENGE_LEN],
    })
    .to_bytes();
    let mut ring = std::collections::VecDeque::new();
    let mut made = 0;
    // Bounded: at most 20 rounds of `n`, however long the victim takes.
    'rounds: for _ in 0..20 {
        for i in 0..n {
            if stop.load(Ordering::Relaxed) {
                break 'rounds;
            }
            let Ok(s) = UnixStream::connect(socket) else {
                continue;
            };
            made += 1;
            // The server may have closed it already (quota): errors are expected.
            let _ = send_raw(s.as_fd(), &hello, &[]);
            if i % 2 == 0 {
                let _ = send_raw(s.as_fd(), &bad_auth, &[]);
            }
            ring.push_back(s);
            if ring.len() > hold {
                ring.pop_front();
            }
        }
    }
    made
}

/// A handshake (with the key if given) that reports a refusal instead of panicking: under a
/// flood larger than the handshake quota a fresh handshake can be closed to make room.
fn try_handshake(socket: &std::path::Path, key: Option<&[u8]>) -> Result<Conn, String> {
    let mut c = Conn::raw(socket);
    c.sock
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    send_message(c.sock.as_fd(), &Message::Hello(Hello::current()), vec![])
        .map_err(|e| format!("hello: {e}"))?;
    let challenge = match c.try_recv().map_err(|e| format!("hellook: {e}"))?.message {
        Message::HelloOk(ok) => match ok.auth() {
            AuthMethod::HmacSha256 { challenge } => challenge,
            _ => return Err("no auth offered".into()),
        },
        m => return Err(format!("{m:?}")),
    };
    let Some(key) = key else { return Ok(c) };
    let ours = [0x33; CHALLENGE_LEN];
    let response = auth::client_response(key, &challenge);
    let a = Message::Auth(Auth {
        response,
        challenge: ours,
    });
    send_message(c.sock.as_fd(), &a, vec![]).map_err(|e| format!("auth: {e}"))?;
    match c.try_recv().map_err(|e| format!("authok: {e}"))?.message {
        Message::AuthOk(ok) if auth::verify_server(key, &ours, &ok.response) => Ok(c),
        m => Err(format!("{m:?}")),
    }
}

/// What ended a partial-frame pusher's connections.
#[derive(Default)]
struct Pushed {
    /// The error codes that ended the connections that got to send their half frame.
    ends: Vec<ErrorCode>,
    /// Handshakes closed by the quota before the half frame was sent.
    evicted: Vec<String>,
}

/// A peer that sends half a `Spawn` with 253 fds and holds it, again and again: with the key
/// (READY, so the server holds the fds until the partial-frame timeout) or without (refused,
/// the fds closed, at once).
fn partial_pusher(socket: &std::path::Path, key: Option<&[u8]>, stop: &AtomicBool) -> Pushed {
    let mut out = Pushed::default();
    for _ in 0..50 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let mut c = match try_handshake(socket, key) {
            Ok(c) => c,
            Err(e) => {
                out.evicted.push(e);
                continue;
            }
        };
        let (bytes, fds) = spawn_with_fds(253);
        if send_raw(c.sock.as_fd(), &bytes[..bytes.len() / 2], &raw_fds(&fds)).is_err() {
            out.evicted.push("send".into());
            continue;
        }
        drop(fds);
        out.ends.extend(codes_to_end(&mut c));
    }
    out
}

/// An authenticated client keeps its service while 1,100 keyless peers cycle connections (4
/// threads of 275, each holding up to 150 open) and 5 peers push half frames with 253 fds each
/// (3 authenticated, held until the 2 s partial-frame timeout; 2 keyless, refused at once).
/// Prints the client's median spawn latency before and during the flood.
#[test]
fn an_authenticated_client_is_served_through_a_keyless_flood() {
    let _s = serial();
    let (kf, key) = key_file("flood");
    let srv = Server::start_with_key_and(&kf, &key, &["--handshake-timeout", "2"]);
    let mut victim = Conn::connect_with_key(&srv.socket, &key);
    victim
        .sock
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    for _ in 0..5 {
        spawn_true(&mut victim).unwrap();
    }
    let before: Vec<Duration> = (0..40).map(|_| spawn_true(&mut victim).unwrap()).collect();

    let stop = AtomicBool::new(false);
    let made = AtomicUsize::new(0);
    let mut during = Vec::new();
    let mut errors = Vec::new();
    let (mut keyed, mut keyless) = (Pushed::default(), Pushed::default());
    std::thread::scope(|s| {
        let cyclers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    made.fetch_add(
                        keyless_cycler(&srv.socket, 275, 150, &stop),
                        Ordering::Relaxed,
                    )
                })
            })
            .collect();
        let keyed_t: Vec<_> = (0..3)
            .map(|_| s.spawn(|| partial_pusher(&srv.socket, Some(&key), &stop)))
            .collect();
        let keyless_t: Vec<_> = (0..2)
            .map(|_| s.spawn(|| partial_pusher(&srv.socket, None, &stop)))
            .collect();
        // Spawn while the flood runs: at least 60 round trips, and on until the held fds
        // have timed out once (the partial-frame pushers' first round).
        let start = Instant::now();
        while during.len() < 60 || (start.elapsed() < Duration::from_secs(3) && during.len() < 2000)
        {
            match spawn_true(&mut victim) {
                Ok(d) => during.push(d),
                Err(e) => {
                    errors.push(e);
                    break;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        for t in cyclers {
            t.join().unwrap();
        }
        for (ts, into) in [(keyed_t, &mut keyed), (keyless_t, &mut keyless)] {
            for t in ts {
                let p = t.join().unwrap();
                into.ends.extend(p.ends);
                into.evicted.extend(p.evicted);
            }
        }
    });
    let (b, d) = (median(&before), median(&during));
    eprintln!(
        "flood: {} keyless connections; {} half frames held (keyed), {} refused (keyless); \
         handshakes of the pushers closed by the quota: {} keyed, {} keyless; \
         victim median spawn+exit before {b:?}, during {d:?} over {} round trips: ratio {:.2}",
        made.load(Ordering::Relaxed),
        keyed.ends.len(),
        keyless.ends.len(),
        keyed.evicted.len(),
        keyless.evicted.len(),
        during.len(),
        d.as_secs_f64() / b.as_secs_f64()
    );
    assert!(
        errors.is_empty(),
        "the authenticated client was refused: {errors:?}"
    );
    assert!(made.load(Ordering::Relaxed) >= 1100, "the flood was short");
    assert!(!keyed.ends.is_empty() && !keyless.ends.is_empty());
    assert!(
        keyed.ends.iter().all(|c| *c == ErrorCode::Timeout),
        "{:?}",
        keyed.ends
    );
    let refused = |c: &ErrorCode| *c == ErrorCode::AuthRequired;
    assert!(keyless.ends.iter().all(refused), "{:?}", keyless.ends);
    assert!(is_alive(srv.pid()));
    // The flood's connections and fds are all gone; the victim's connection is left.
    srv.settle(srv.idle_fds + 1);
    assert_eq!(victim.status().connections(), 1);
    drop(victim);
    srv.settle(srv.idle_fds);
}
