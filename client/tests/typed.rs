//! Typed calls end to end (PROTOCOL.md §11), with this test binary as the zygote server: its
//! `main` serves when launched by `Client::launch` (harness = false, so `main` is ours).
//!
//! Every test checks that the server's fd count and child list, and this process's fd count,
//! are back where they started.

mod common;
use common::entries::{area, bytes, checked_sqrt, checksum};
use common::Test;

use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use forkserver_client::{CallError, Client, Codec, Fd};
use forkserver_server::{Invocation, Zygote};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Meta {
    label: String,
}

/// A struct with a flattened part: needs a self-describing codec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Size {
    w: u32,
    h: u32,
    #[serde(flatten)]
    meta: Meta,
}

/// Halves a size; refuses odd ones (an `Err` that is `Serialize` too: `typed_fallible`).
fn halve(s: Size) -> Result<Size, String> {
    if s.w % 2 == 1 || s.h % 2 == 1 {
        return Err(format!("cannot halve {}x{}", s.w, s.h));
    }
    Ok(Size {
        w: s.w / 2,
        h: s.h / 2,
        meta: Meta {
            label: format!("{} halved", s.meta.label),
        },
    })
}

const PANIC_LINE: u32 = line!() + 2;
fn panics(x: u32) -> u32 {
    panic!("typed panic {x}")
}

/// Panics twice, on its thread and on another, catches both, and returns a value.
fn recovers(x: u32) -> u32 {
    let caught = std::panic::catch_unwind(|| panic!("caught by the entry"));
    let joined = std::thread::spawn(|| panic!("in a thread")).join();
    assert!(caught.is_err() && joined.is_err());
    x + 1
}

/// A byte string's length and checksum (FNV-1a 64): what a large argument came to.
fn digest(v: Vec<u8>) -> (u64, u64) {
    (v.len() as u64, checksum(&v))
}

/// Where a typed call's argument came (`true`: in a memfd, §11.8), answered as a typed entry
/// would, from the header alone; the memfd, if any, is checked as the typed layer checks it.
fn route(mut call: Invocation) -> i32 {
    use forkserver_protocol::typed::{encode, read_sealed_arg, send_frame, ResultFrame};
    use forkserver_protocol::typed::{value_frames, TypedHeader};
    let Ok((header, _)) = TypedHeader::decode(call.payload()) else {
        return 1;
    };
    let ch = call.take_fd(header.channel()).unwrap();
    send_frame(ch.as_fd(), &ResultFrame::Accepted, &[]).unwrap();
    let in_memfd = match header.memfd_arg() {
        Some(m) => read_sealed_arg(call.take_fd(m.target()).unwrap(), m).is_ok(),
        None => false,
    };
    let (bytes, _) = encode(header.codec(), &in_memfd).unwrap();
    send_frame(ch.as_fd(), &value_frames(&bytes, 0)[0], &[]).unwrap();
    0
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn exits(code: i32) -> u32 {
    std::process::exit(code)
}

/// Writes to the pipe it is given, and gives back a file it opened itself.
fn fds_both_ways((pipe, text): (Fd, String)) -> Result<Fd, String> {
    let mut pipe = std::fs::File::from(OwnedFd::from(pipe));
    pipe.write_all(b"from the child")
        .map_err(|e| e.to_string())?;
    let mut f = tempfile().map_err(|e| e.to_string())?;
    f.write_all(text.as_bytes()).map_err(|e| e.to_string())?;
    f.rewind().map_err(|e| e.to_string())?;
    Ok(Fd::from(f))
}

fn tempfile() -> std::io::Result<std::fs::File> {
    let path = std::env::temp_dir().join(format!("forkserver-typed-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(f)
}

fn noop(_call: Invocation) -> i32 {
    0
}

/// A hostile child: an untyped entry that accepts the call as a typed one would, then sends
/// what its payload (after the header) names: `garbage`, `oversized`, `fds` (a Value that
/// announces 2 fds and carries none), or `killed` (a chunk, then SIGKILL to itself mid-value).
fn hostile(mut call: Invocation) -> i32 {
    use forkserver_protocol::typed::{send_frame, ResultFrame, TypedHeader};
    let Ok((header, arg)) = TypedHeader::decode(call.payload()) else {
        return 1;
    };
    let what: String = forkserver_protocol::typed::decode(header.codec(), arg, vec![]).unwrap();
    let ch = call.take_fd(header.channel()).unwrap();
    let send_raw = |bytes: &[u8]| {
        nix::sys::socket::send(
            std::os::fd::AsRawFd::as_raw_fd(&ch),
            bytes,
            nix::sys::socket::MsgFlags::empty(),
        )
        .unwrap();
    };
    send_frame(ch.as_fd(), &ResultFrame::Accepted, &[]).unwrap();
    match what.as_str() {
        "garbage" => send_raw(&[0xee, 1, 2, 3]),
        "oversized" => send_raw(&vec![2u8; 200 * 1024]),
        "fds" => send_raw(
            &ResultFrame::Value {
                nfds: 2,
                bytes: vec![0xc0],
            }
            .encode(),
        ),
        "bad-value" => send_raw(
            &ResultFrame::Value {
                nfds: 0,
                bytes: vec![0xc1],
            }
            .encode(),
        ),
        "killed" => {
            send_frame(ch.as_fd(), &ResultFrame::Chunk(vec![0x92; 100]), &[]).unwrap();
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
        _ => {}
    }
    0
}

fn main() {
    Zygote::new()
        .typed("area", area)
        .typed_fallible("halve", halve)
        .typed("checked_sqrt", checked_sqrt)
        .typed("panics", panics)
        .typed("recovers", recovers)
        .typed("bytes", bytes)
        .typed("digest", digest)
        .typed("sleep_ms", sleep_ms)
        .typed("exits", exits)
        .typed_fallible("fds_both_ways", fds_both_ways)
        .entry("untyped", noop)
        .entry("hostile", hostile)
        .entry("route", route)
        .serve_if_requested();

    let tests: &[Test] = &[
        ("a_value_round_trip", a_value_round_trip),
        ("err_text", err_text),
        ("panic_message_and_location", panic_message_and_location),
        ("deadline_kill", deadline_kill),
        ("a_signal", a_signal),
        ("process_exit_in_the_entry", process_exit_in_the_entry),
        ("type_mismatch", type_mismatch),
        ("an_untyped_or_missing_entry", an_untyped_or_missing_entry),
        ("fds_both_directions", fds_both_directions),
        (
            "too_many_fds_before_connecting",
            too_many_fds_before_connecting,
        ),
        ("join_timeout_twice_then_join", join_timeout_twice_then_join),
        ("pooled_children", pooled_children),
        ("large_results_and_arguments", large_results_and_arguments),
        ("a_64_mib_argument_in_a_memfd", a_64_mib_argument_in_a_memfd),
        (
            "arguments_around_the_inline_limit",
            arguments_around_the_inline_limit,
        ),
        (
            "a_bad_argument_memfd_is_refused",
            a_bad_argument_memfd_is_refused,
        ),
        (
            "eight_threads_two_hundred_calls_each",
            eight_threads_two_hundred_calls_each,
        ),
        ("untyped_calls_unchanged", untyped_calls_unchanged),
        (
            "a_hostile_child_gives_a_call_error",
            a_hostile_child_gives_a_call_error,
        ),
    ];
    common::run("typed", tests, common::fds_before, common::fds_back);
}

fn a_value_round_trip(client: &Client) {
    for codec in Codec::ALL {
        let got = client
            .typed::<(u32, u32), u64>("area")
            .codec(codec)
            .spawn(&(800, 600))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(got, 480_000, "{codec:?}");
        let size = Size {
            w: 800,
            h: 600,
            meta: Meta {
                label: "photo".into(),
            },
        };
        let half = client
            .typed::<Size, Size>("halve")
            .codec(codec)
            .spawn(&size)
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(
            (half.w, half.h, half.meta.label.as_str()),
            (400, 300, "photo halved")
        );
    }
    // An unsized argument type: a str slice against an entry taking `String` is another type.
    let r = client
        .typed::<u32, u32>("checked_sqrt")
        .spawn(&81)
        .unwrap()
        .join();
    assert!(matches!(r, Err(CallError::Mismatch { .. })), "{r:?}");
    assert_eq!(
        client
            .typed::<i64, u32>("checked_sqrt")
            .spawn(&81)
            .unwrap()
            .join()
            .unwrap(),
        9
    );
}

fn err_text(client: &Client) {
    let odd = Size {
        w: 3,
        h: 4,
        meta: Meta { label: "x".into() },
    };
    let r = client
        .typed::<Size, Size>("halve")
        .spawn(&odd)
        .unwrap()
        .join();
    match r {
        Err(CallError::Failed(t)) => assert_eq!(t, "cannot halve 3x4"),
        other => panic!("{other:?}"),
    }
    let r = client
        .typed::<i64, u32>("checked_sqrt")
        .spawn(&-4)
        .unwrap()
        .join();
    match r {
        Err(CallError::Failed(t)) => assert_eq!(t, "-4 is negative"),
        other => panic!("{other:?}"),
    }
}

fn panic_message_and_location(client: &Client) {
    for codec in Codec::ALL {
        let r = client
            .typed::<u32, u32>("panics")
            .codec(codec)
            .spawn(&7)
            .unwrap()
            .join();
        common::assert_panicked_at(r, "typed panic 7", file!(), PANIC_LINE);
    }
    // Panics the entry catches are not its outcome.
    let r = client
        .typed::<u32, u32>("recovers")
        .spawn(&1)
        .unwrap()
        .join();
    assert_eq!(r.unwrap(), 2);
}

fn deadline_kill(client: &Client) {
    let r = client
        .typed::<u64, u64>("sleep_ms")
        .deadline(Duration::from_millis(100))
        .spawn(&60_000)
        .unwrap()
        .join();
    assert!(
        matches!(
            r,
            Err(CallError::Killed {
                signal: 9,
                deadline_expired: true
            })
        ),
        "{r:?}"
    );
}

fn a_signal(client: &Client) {
    let mut child = client.typed::<u64, u64>("sleep_ms").spawn(&60_000).unwrap();
    assert!(child.pid() > 0);
    // Accepted (the entry runs) before the signal: `join_timeout` reads it.
    assert!(child
        .join_timeout(Duration::from_millis(50))
        .unwrap()
        .is_none());
    child.signal(nix::libc::SIGTERM).unwrap();
    let r = child.join();
    assert!(
        matches!(
            r,
            Err(CallError::Killed {
                signal: 15,
                deadline_expired: false
            })
        ),
        "{r:?}"
    );
    let mut child = client.typed::<u64, u64>("sleep_ms").spawn(&60_000).unwrap();
    child.kill().unwrap();
    assert!(matches!(
        child.join(),
        Err(CallError::Killed { signal: 9, .. })
    ));
}

fn process_exit_in_the_entry(client: &Client) {
    for code in [0, 3] {
        let r = client
            .typed::<i32, u32>("exits")
            .spawn(&code)
            .unwrap()
            .join();
        assert!(matches!(r, Err(CallError::Exited(c)) if c == code), "{r:?}");
    }
}

fn type_mismatch(client: &Client) {
    let r = client
        .typed::<String, u64>("area")
        .spawn(&"800x600".to_owned())
        .unwrap()
        .join();
    match r {
        Err(CallError::Mismatch { entry, detail }) => {
            assert_eq!(entry, "area");
            assert!(
                detail.contains("(u32, u32)") && detail.contains("u64"),
                "{detail}"
            );
        }
        other => panic!("{other:?}"),
    }
    // The right argument, another result type.
    let r = client
        .typed::<(u32, u32), u32>("area")
        .spawn(&(1, 2))
        .unwrap()
        .join();
    assert!(matches!(r, Err(CallError::Mismatch { .. })), "{r:?}");
}

fn an_untyped_or_missing_entry(client: &Client) {
    let r = client
        .typed::<u32, u32>("untyped")
        .spawn(&1)
        .unwrap()
        .join();
    match r {
        Err(CallError::Mismatch { detail, .. }) => {
            assert!(detail.contains("not a typed entry"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
    let r = client.typed::<u32, u32>("no-such-entry").spawn(&1);
    match r {
        Err(CallError::Mismatch { entry, detail }) => {
            assert_eq!(entry, "no-such-entry");
            assert!(detail.contains("no such entry"), "{detail}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

fn fds_both_directions(client: &Client) {
    for codec in Codec::ALL {
        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        let mut read_end = std::fs::File::from(read_end);
        let arg = (
            Fd::from(write_end),
            format!("made in the child ({codec:?})"),
        );
        let got = client
            .typed::<(Fd, String), Fd>("fds_both_ways")
            .codec(codec)
            .spawn(&arg)
            .unwrap()
            .join()
            .unwrap();
        drop(arg);
        // Our copy is closed and the child's is gone: EOF after its bytes.
        let mut text = String::new();
        read_end.read_to_string(&mut text).unwrap();
        assert_eq!(text, "from the child");
        let mut f = std::fs::File::from(got);
        let mut back = String::new();
        f.read_to_string(&mut back).unwrap();
        assert_eq!(back, format!("made in the child ({codec:?})"));
    }
}

fn too_many_fds_before_connecting(client: &Client) {
    let null = || Fd::from(std::fs::File::open("/dev/null").unwrap());
    // 255 fds and the channel: the bundle's 256.
    let ok: Vec<Fd> = (0..255).map(|_| null()).collect();
    let r = client
        .typed::<Vec<Fd>, u32>("area")
        .spawn(&ok)
        .unwrap()
        .join();
    assert!(matches!(r, Err(CallError::Mismatch { .. })), "{r:?}");
    let many: Vec<Fd> = (0..256).map(|_| null()).collect();
    let spawns = client.status().unwrap().spawned_total();
    let r = client.typed::<Vec<Fd>, u32>("area").spawn(&many);
    assert!(
        matches!(
            r,
            Err(CallError::Spawn(forkserver_client::Error::TooManyFds(257)))
        ),
        "{:?}",
        r.map(|_| ())
    );
    // 255 fds, the channel and the argument's memfd (§11.8): one too many.
    let r = client
        .typed::<Vec<Fd>, u32>("area")
        .inline_arg_max(0)
        .spawn(&ok);
    assert!(
        matches!(
            r,
            Err(CallError::Spawn(forkserver_client::Error::TooManyFds(257)))
        ),
        "{:?}",
        r.map(|_| ())
    );
    assert_eq!(
        client.status().unwrap().spawned_total(),
        spawns,
        "nothing was sent"
    );
    let _ = ok.iter().map(AsFd::as_fd).count();
}

fn join_timeout_twice_then_join(client: &Client) {
    let mut child = client.typed::<u64, u64>("sleep_ms").spawn(&400).unwrap();
    let t = Instant::now();
    assert!(child
        .join_timeout(Duration::from_millis(20))
        .unwrap()
        .is_none());
    assert!(child
        .join_timeout(Duration::from_millis(20))
        .unwrap()
        .is_none());
    assert!(t.elapsed() >= Duration::from_millis(40));
    assert_eq!(child.join().unwrap(), 400);
    // Long enough: the value.
    let mut child = client.typed::<u64, u64>("sleep_ms").spawn(&1).unwrap();
    assert_eq!(
        child.join_timeout(Duration::from_secs(60)).unwrap(),
        Some(1)
    );
    assert!(matches!(
        child.join_timeout(Duration::ZERO),
        Err(CallError::Taken)
    ));
    assert!(matches!(child.join(), Err(CallError::Taken)));
}

fn pooled_children(_client: &Client) {
    let pooled = Client::launcher(std::env::current_exe().unwrap())
        .env(forkserver_server::PREFORK_ENV, "2")
        .launch()
        .expect("launch with prefork");
    for i in 0..6u32 {
        let got = pooled
            .typed::<(u32, u32), u64>("area")
            .spawn(&(i, 10))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(got, u64::from(i) * 10);
    }
    // An argument in a memfd (§11.8) reaches a pooled child as any bundle fd does.
    let big = bytes(1 << 20);
    let got = pooled
        .typed::<Vec<u8>, (u64, u64)>("digest")
        .spawn(&big)
        .unwrap()
        .join();
    assert_eq!(got.unwrap(), (big.len() as u64, checksum(&big)));
    let r = pooled.typed::<u32, u32>("panics").spawn(&1).unwrap().join();
    assert!(matches!(r, Err(CallError::Panicked { .. })), "{r:?}");
    let r = pooled
        .typed::<String, u32>("area")
        .spawn(&String::new())
        .unwrap()
        .join();
    assert!(matches!(r, Err(CallError::Mismatch { .. })), "{r:?}");
    let r = pooled.typed::<u32, u32>("missing").spawn(&1);
    assert!(matches!(r, Err(CallError::Mismatch { .. })));
    // Pooled children are the server's own, waiting: no job child is left running.
    let until = Instant::now() + Duration::from_secs(10);
    while pooled.status().unwrap().live_children() != 0 {
        assert!(Instant::now() < until, "pooled job children left running");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn eight_threads_two_hundred_calls_each(client: &Client) {
    let threads: Vec<_> = (0..8u32)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || {
                for i in 0..200u32 {
                    let codec = if i % 2 == 0 {
                        Codec::MessagePack
                    } else {
                        Codec::Json
                    };
                    let got = client
                        .typed::<(u32, u32), u64>("area")
                        .codec(codec)
                        .spawn(&(t, i))
                        .unwrap()
                        .join()
                        .unwrap();
                    assert_eq!(got, u64::from(t * i));
                    // Every tenth call also sends an argument in a memfd (§11.8).
                    if i % 10 == 0 {
                        let big = vec![t as u8; 100_000];
                        let mut call = client.typed::<Vec<u8>, (u64, u64)>("digest");
                        let got = call.spawn(&big).unwrap().join().unwrap();
                        assert_eq!(got, (big.len() as u64, checksum(&big)));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

fn untyped_calls_unchanged(client: &Client) {
    let st = client
        .call("untyped", b"x".to_vec())
        .spawn()
        .unwrap()
        .wait()
        .unwrap();
    assert!(st.success());
    // A typed entry called untyped: no header, no channel; it says so and exits 125.
    let st = client
        .call("area", b"x".to_vec())
        .spawn()
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(st.code(), Some(forkserver_server::BAD_HEADER_STATUS));
}

fn a_hostile_child_gives_a_call_error(client: &Client) {
    let call = |what: &str| {
        client
            .typed::<String, u32>("hostile")
            .deadline(Duration::from_secs(30))
            .spawn(&what.to_owned())
            .unwrap()
            .join()
    };
    for what in ["garbage", "oversized", "fds", "bad-value"] {
        let r = call(what);
        assert!(matches!(r, Err(CallError::Decode(_))), "{what}: {r:?}");
    }
    // Killed while writing its value: the signal decides, not the half-sent bytes.
    let r = call("killed");
    assert!(
        matches!(
            r,
            Err(CallError::Killed {
                signal: 9,
                deadline_expired: false
            })
        ),
        "{r:?}"
    );
    // Accepted, then nothing: it exited without a result.
    assert!(matches!(call("nothing"), Err(CallError::Exited(0))));
}

fn large_results_and_arguments(client: &Client) {
    // Values in several chunks (MAX_CHUNK_LEN is 64 KiB less 8), in both codecs.
    for codec in Codec::ALL {
        for n in [0, 65_528, 3 * 65_528 + 5, 4 << 20] {
            let got = client
                .typed::<usize, Vec<u8>>("bytes")
                .codec(codec)
                .spawn(&n)
                .unwrap()
                .join();
            assert_eq!(got.unwrap(), bytes(n), "{n} bytes in {codec:?}");
        }
    }
    // Arguments over the payload's limit travel in a memfd (§11.8), in both codecs.
    for codec in Codec::ALL {
        let big = bytes(3 << 20);
        let got = client
            .typed::<Vec<u8>, (u64, u64)>("digest")
            .codec(codec)
            .spawn(&big)
            .unwrap()
            .join();
        assert_eq!(
            got.unwrap(),
            (big.len() as u64, checksum(&big)),
            "{codec:?}"
        );
    }
}

/// Issue 15, point 5: a 64 MiB `Vec<u8>` argument (MessagePack encodes a `Vec<u8>` as an
/// array of integers: `bytes` makes ~95 MiB of it) arrives whole; inline only, it could not.
fn a_64_mib_argument_in_a_memfd(client: &Client) {
    let big = bytes(64 << 20);
    let got = client
        .typed::<Vec<u8>, (u64, u64)>("digest")
        .deadline(Duration::from_secs(120))
        .spawn(&big)
        .unwrap()
        .join();
    assert_eq!(got.unwrap(), (64 << 20, checksum(&big)));
    // With every argument inline, one over the payload's limit is refused before connecting.
    let r = client
        .typed::<Vec<u8>, (u64, u64)>("digest")
        .inline_arg_max(usize::MAX)
        .spawn(&bytes(2 << 20));
    assert!(
        matches!(
            r,
            Err(CallError::Spawn(forkserver_client::Error::InvalidRequest(
                _
            )))
        ),
        "{:?}",
        r.map(|_| ())
    );
}

/// An argument of exactly `INLINE_ARG_MAX` encoded bytes travels inline, one byte more in a
/// memfd; both arrive whole, and `inline_arg_max` moves the limit.
fn arguments_around_the_inline_limit(client: &Client) {
    // Bytes under 128 are one MessagePack byte each, after an array header: 3 bytes (0xdc, u16)
    // up to 65,535 elements, 5 (0xdd, u32) above; 1 for at most 15 (fixarray).
    let arg = |encoded: usize| match encoded {
        1..=16 => vec![7u8; encoded - 1],
        17..=65_538 => vec![7u8; encoded - 3],
        _ => vec![7u8; encoded - 5],
    };
    let route = |a: &Vec<u8>, max: Option<usize>| {
        let mut call = client.typed::<Vec<u8>, bool>("route");
        if let Some(max) = max {
            call.inline_arg_max(max);
        }
        call.spawn(a).unwrap().join().unwrap()
    };
    let at = arg(forkserver_client::INLINE_ARG_MAX);
    let over = arg(forkserver_client::INLINE_ARG_MAX + 1);
    let limit = forkserver_client::INLINE_ARG_MAX;
    for n in [limit, limit + 1, 6, 100_000] {
        let (bytes, _) = forkserver_protocol::typed::encode(Codec::MessagePack, &arg(n)).unwrap();
        assert_eq!(bytes.len(), n, "the encoded length");
    }
    assert!(!route(&at, None), "at the limit: inline");
    assert!(route(&over, None), "one byte over: in a memfd");
    assert!(
        route(&arg(6), Some(0)),
        "inline_arg_max(0): every argument in a memfd"
    );
    assert!(
        !route(&over, Some(usize::MAX)),
        "inline_arg_max(MAX): inline"
    );
    for a in [at, over, arg(6)] {
        for max in [None, Some(0)] {
            let mut call = client.typed::<Vec<u8>, (u64, u64)>("digest");
            if let Some(max) = max {
                call.inline_arg_max(max);
            }
            let got = call.spawn(&a).unwrap().join().unwrap();
            assert_eq!(
                got,
                (a.len() as u64, checksum(&a)),
                "{} bytes, {max:?}",
                a.len()
            );
        }
    }
}

/// A hostile or buggy client's memfd (not sealed, the wrong size, not a memfd, not placed)
/// is refused by the child after `Accepted` and before the entry runs, as an argument that
/// does not decode: an `Error` frame and status 1; so is an empty sealed memfd (0 bytes
/// decode as no value).
fn a_bad_argument_memfd_is_refused(client: &Client) {
    use forkserver_protocol::typed::{
        channel_pair, fingerprint, recv_frame, sealed_arg, MemfdArg, Received, ResultFrame,
        TypedHeader,
    };
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fp = fingerprint::<Vec<u8>, (u64, u64)>("digest", Codec::MessagePack);
    let (arg, _) = forkserver_protocol::typed::encode(Codec::MessagePack, &vec![1u8; 10]).unwrap();
    let unsealed = || {
        let flags = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
        let mut f = std::fs::File::from(memfd_create("unsealed", flags).unwrap());
        f.write_all(&arg).unwrap();
        OwnedFd::from(f)
    };
    let null = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
    let cases: Vec<(Option<OwnedFd>, u64, &str)> = vec![
        (
            Some(unsealed()),
            arg.len() as u64,
            "not sealed against writes",
        ),
        (
            Some(sealed_arg(&arg).unwrap()),
            arg.len() as u64 + 1,
            "bytes where the header says",
        ),
        (Some(null()), arg.len() as u64, "not a memfd"),
        (None, arg.len() as u64, "no argument memfd was placed at 4"),
        // Sealed and of the header's size, but empty: mapped as no bytes, which do not decode.
        (
            Some(sealed_arg(&[]).unwrap()),
            0,
            "cannot decode the argument",
        ),
    ];
    for (fd, len, why) in cases {
        let (ours, theirs) = channel_pair().unwrap();
        let header = TypedHeader::new(Codec::MessagePack, fp, 3, vec![])
            .unwrap()
            .with_memfd_arg(MemfdArg::new(4, len));
        let mut call = client.call("digest", header.encode(&[]).unwrap());
        call.fd(3, theirs);
        if let Some(fd) = fd {
            call.fd(4, fd);
        }
        let mut child = call.spawn().unwrap();
        drop(call);
        let mut frames = Vec::new();
        while let Ok(Received::Frame(f, _)) = recv_frame(ours.as_fd(), true) {
            frames.push(f);
        }
        assert!(
            matches!(&frames[..], [ResultFrame::Accepted, ResultFrame::Error(t)] if t.contains(why)),
            "{why}: {frames:?}"
        );
        assert_eq!(child.wait().unwrap().code(), Some(1), "{why}");
    }
}
