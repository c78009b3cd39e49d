//! Long-lived typed workers end to end (PROTOCOL.md §11.7), with this test binary as the
//! zygote server: its `main` serves when launched by `Client::launch` (harness = false).
//!
//! Every test checks that the server's fd count and child list, and this process's fd count,
//! are back where they started.

mod common;
use common::entries::{area, checksum};
use common::Test;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use forkserver_client::{CallError, Client, Codec, Fd, WorkerPool};
use forkserver_server::Zygote;
use serde::{Deserialize, Serialize};

/// What the `counter` worker is asked to do.
#[derive(Debug, Serialize, Deserialize)]
enum Op {
    /// Adds to the counter; answers the new count.
    Add(u64),
    /// Answers the worker's pid.
    Pid,
    /// Sleeps that many ms; answers the count.
    Sleep(u64),
    /// Fails with that text.
    Fail(String),
    /// Panics.
    Panic,
    /// `process::exit` with that status.
    Exit(i32),
    /// Writes `pong` to that fd; answers the count.
    Write(Fd),
}

fn zero() -> u64 {
    0
}

const PANIC_LINE: u32 = line!() + 11;
fn counter(count: &mut u64, op: Op) -> Result<u64, String> {
    match op {
        Op::Add(n) => *count += n,
        Op::Pid => return Ok(u64::from(std::process::id())),
        Op::Sleep(ms) => std::thread::sleep(Duration::from_millis(ms)),
        Op::Fail(text) => return Err(text),
        Op::Write(fd) => {
            let mut f = std::fs::File::from(OwnedFd::from(fd));
            f.write_all(b"pong").map_err(|e| e.to_string())?;
        }
        Op::Panic => panic!("worker panic at {count}"),
        Op::Exit(code) => std::process::exit(code),
    }
    Ok(*count)
}

/// A plain (infallible) worker: keeps the words it was given.
fn words(seen: &mut Vec<String>, word: String) -> usize {
    seen.push(word);
    seen.len()
}

/// Gives the bytes back reversed, and counts the bytes seen so far at the end.
fn reverse(seen: &mut u64, mut bytes: Vec<u8>) -> Vec<u8> {
    *seen += bytes.len() as u64;
    bytes.reverse();
    bytes.extend_from_slice(&seen.to_le_bytes());
    bytes
}

/// A request's length and checksum (FNV-1a 64), and the calls served so far.
fn digest(calls: &mut u64, bytes: Vec<u8>) -> (u64, u64, u64) {
    *calls += 1;
    (bytes.len() as u64, checksum(&bytes), *calls)
}

/// A hostile worker: an untyped entry that accepts the worker header without checking it,
/// answers the first request with a frame of an unknown tag, then hangs.
fn hostile(mut call: forkserver_server::Invocation) -> i32 {
    use forkserver_protocol::typed::{recv_frame, send_frame, ResultFrame, TypedHeader};
    use std::os::fd::AsFd;
    let Ok((header, _)) = TypedHeader::decode(call.payload()) else {
        return 1;
    };
    let ch = call.take_fd(header.channel()).unwrap();
    send_frame(ch.as_fd(), &ResultFrame::Accepted, &[]).unwrap();
    let _ = recv_frame(ch.as_fd(), true);
    nix::sys::socket::send(
        std::os::fd::AsRawFd::as_raw_fd(&ch),
        &[0xee, 1],
        nix::sys::socket::MsgFlags::empty(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(60));
    0
}

fn main() {
    Zygote::new()
        .worker_fallible("counter", zero, counter)
        .worker("words", Vec::new, words)
        .worker("reverse", zero, reverse)
        .worker("digest", zero, digest)
        .typed("area", area)
        .entry("hostile", hostile)
        .serve_if_requested();

    let tests: &[Test] = &[
        ("state_over_1000_calls_one_fork", state_over_1000_calls),
        ("err_text_and_the_worker_goes_on", err_text),
        ("a_panic_ends_the_worker", a_panic_ends_the_worker),
        ("process_exit_in_handle", process_exit_in_handle),
        ("fds_in_requests", fds_in_requests),
        ("large_requests_and_responses", large_requests_and_responses),
        (
            "a_request_at_and_over_the_cap",
            a_request_at_and_over_the_cap,
        ),
        ("type_mismatch", type_mismatch),
        ("a_hostile_worker", a_hostile_worker),
        ("a_deadline_caps_the_worker", a_deadline_caps_the_worker),
        ("pooled_children_as_workers", pooled_children_as_workers),
        ("killed_mid_call_and_replaced", killed_mid_call_and_replaced),
        ("max_calls_per_worker", max_calls_per_worker),
        (
            "four_threads_on_a_pool_of_two",
            four_threads_on_a_pool_of_two,
        ),
    ];
    common::run("worker", tests, common::fds_before, common::fds_back);
}

fn spawned(client: &Client) -> u64 {
    client.status().expect("status").spawned_total()
}

fn state_over_1000_calls(client: &Client) {
    for codec in Codec::ALL {
        let before = spawned(client);
        let mut w = client
            .worker::<Op, u64>("counter")
            .codec(codec)
            .spawn()
            .unwrap();
        let pid = u64::try_from(w.pid()).unwrap();
        let mut last = 0;
        for i in 1..=1000u64 {
            last = w.call(&Op::Add(1)).unwrap();
            assert_eq!(last, i, "{codec:?}");
            if i % 250 == 0 {
                assert_eq!(w.call(&Op::Pid).unwrap(), pid, "all from one pid");
            }
        }
        assert_eq!(last, 1000);
        assert_eq!(w.calls(), 1004);
        w.close().unwrap();
        // One fork for 1,004 calls (the status call itself forks nothing).
        assert_eq!(spawned(client) - before, 1, "{codec:?}");
    }
    let mut w = client.worker::<String, usize>("words").spawn().unwrap();
    assert_eq!(w.call(&"a".to_owned()).unwrap(), 1);
    assert_eq!(w.call(&"b".to_owned()).unwrap(), 2);
    w.close().unwrap();
}

fn err_text(client: &Client) {
    let mut w = client.worker::<Op, u64>("counter").spawn().unwrap();
    assert_eq!(w.call(&Op::Add(5)).unwrap(), 5);
    match w.call(&Op::Fail("no such key: k1".into())) {
        Err(CallError::Failed(text)) => assert_eq!(text, "no such key: k1"),
        other => panic!("{other:?}"),
    }
    assert!(!w.is_ended());
    assert_eq!(w.call(&Op::Add(1)).unwrap(), 6, "the state survives an Err");
    w.close().unwrap();
}

fn a_panic_ends_the_worker(client: &Client) {
    let mut w = client.worker::<Op, u64>("counter").spawn().unwrap();
    w.call(&Op::Add(3)).unwrap();
    let r = w.call(&Op::Panic);
    common::assert_panicked_at(r, "worker panic at 3", file!(), PANIC_LINE);
    assert!(w.is_ended());
    match w.call(&Op::Add(1)) {
        Err(CallError::Ended(why)) => assert!(why.contains("panicked"), "{why}"),
        other => panic!("{other:?}"),
    }
    // The child exited as a panicking process does.
    assert!(matches!(w.close(), Err(CallError::Exited(101))));
}

fn process_exit_in_handle(client: &Client) {
    let mut w = client.worker::<Op, u64>("counter").spawn().unwrap();
    assert!(matches!(w.call(&Op::Exit(7)), Err(CallError::Exited(7))));
    assert!(matches!(w.call(&Op::Pid), Err(CallError::Ended(_))));
    assert!(matches!(w.close(), Err(CallError::Exited(7))));
}

fn fds_in_requests(client: &Client) {
    let mut w = client.worker::<Op, u64>("counter").spawn().unwrap();
    for _ in 0..3 {
        let (r, wr) = nix::unistd::pipe().unwrap();
        w.call(&Op::Write(Fd::from(wr))).unwrap();
        let mut got = String::new();
        std::fs::File::from(r).read_to_string(&mut got).unwrap();
        assert_eq!(got, "pong", "the worker wrote and closed the pipe");
    }
    w.close().unwrap();
}

/// Requests and responses over one frame travel in chunks, both ways.
fn large_requests_and_responses(client: &Client) {
    for codec in Codec::ALL {
        let mut w = client
            .worker::<Vec<u8>, Vec<u8>>("reverse")
            .codec(codec)
            .spawn()
            .unwrap();
        let mut total = 0u64;
        for n in [0usize, 10, 200 * 1024, 1024 * 1024] {
            let req: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            let got = w.call(&req).unwrap();
            total += n as u64;
            let mut want = req.clone();
            want.reverse();
            want.extend_from_slice(&total.to_le_bytes());
            assert!(got == want, "{codec:?}: {n} bytes");
        }
        w.close().unwrap();
    }
}

/// Requests travel in chunks on the channel (§11.7), never through the server: one of
/// 64 MiB encoded (the worker's cap) is served; one byte more is refused before anything is
/// sent, with a `CallError::Encode`, and the worker goes on.
fn a_request_at_and_over_the_cap(client: &Client) {
    let cap = forkserver_protocol::typed::DEFAULT_MAX_RESULT_LEN;
    // Bytes under 128 are one MessagePack byte each, after a 5-byte array header.
    let at = vec![7u8; cap - 5];
    let over = vec![7u8; cap - 4];
    let mut w = client
        .worker::<Vec<u8>, (u64, u64, u64)>("digest")
        .spawn()
        .unwrap();
    assert_eq!(w.call(&at).unwrap(), (at.len() as u64, checksum(&at), 1));
    match w.call(&over) {
        Err(CallError::Encode(text)) => assert!(text.contains("at most 67108864"), "{text}"),
        r => panic!("{r:?}"),
    }
    assert!(!w.is_ended());
    assert_eq!(w.call(&vec![1, 2]).unwrap(), (2, checksum(&[1, 2]), 2));
    w.close().unwrap();
}

fn type_mismatch(client: &Client) {
    let expect_mismatch = |r: Result<_, CallError>, what: &str| match r {
        Err(CallError::Mismatch { detail, .. }) => assert!(detail.contains(what), "{detail}"),
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("a worker of the wrong types"),
    };
    expect_mismatch(
        client.worker::<u32, u64>("counter").spawn().map(drop),
        "takes",
    );
    expect_mismatch(
        client.worker::<Op, u32>("counter").spawn().map(drop),
        "takes",
    );
    // A one-call typed entry is not a worker, and a worker is not a typed entry.
    expect_mismatch(
        client.worker::<(u32, u32), u64>("area").spawn().map(drop),
        "is a typed entry",
    );
    expect_mismatch(
        client
            .typed::<Op, u64>("counter")
            .spawn(&Op::Pid)
            .unwrap()
            .join()
            .map(drop),
        "is a worker",
    );
    expect_mismatch(
        client.worker::<Op, u64>("no-such").spawn().map(drop),
        "no such entry",
    );
}

fn a_hostile_worker(client: &Client) {
    let mut w = client.worker::<Op, u64>("hostile").spawn().unwrap();
    match w.call(&Op::Pid) {
        Err(CallError::Decode(e)) => assert!(e.contains("unknown tag 238"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(w.call(&Op::Pid), Err(CallError::Ended(_))));
    // The client killed it rather than wait on a worker it cannot trust.
    assert!(matches!(
        w.close(),
        Err(CallError::Killed { signal: 9, .. })
    ));
}

fn a_deadline_caps_the_worker(client: &Client) {
    let mut w = client
        .worker::<Op, u64>("counter")
        .deadline(Duration::from_secs(1))
        .spawn()
        .unwrap();
    assert_eq!(w.call(&Op::Add(1)).unwrap(), 1);
    match w.call(&Op::Sleep(30_000)) {
        Err(CallError::Killed {
            signal,
            deadline_expired,
        }) => assert_eq!((signal, deadline_expired), (9, true)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(w.close(), Err(CallError::Killed { .. })));
}

/// Workers started from pooled (`--prefork`) children keep state and end as forked ones do.
fn pooled_children_as_workers(_client: &Client) {
    let pooled = Client::launcher(std::env::current_exe().unwrap())
        .env(forkserver_server::PREFORK_ENV, "2")
        .launch()
        .expect("launch with prefork");
    let pool = WorkerPool::<Op, u64>::new(&pooled, "counter", 2);
    for i in 1..=50u64 {
        let got = pool.call(&Op::Add(1)).unwrap();
        assert!(got <= i);
    }
    let r = pool.call(&Op::Panic);
    assert!(matches!(r, Err(CallError::Panicked { .. })), "{r:?}");
    let mut w = pooled.worker::<Op, u64>("counter").spawn().unwrap();
    assert_eq!(w.call(&Op::Add(4)).unwrap(), 4);
    assert_eq!(w.call(&Op::Add(4)).unwrap(), 8);
    w.close().unwrap();
    let r = pooled.worker::<u8, u64>("counter").spawn().map(drop);
    assert!(matches!(r, Err(CallError::Mismatch { .. })), "{r:?}");
    drop(pool);
    let until = Instant::now() + Duration::from_secs(10);
    while pooled.status().unwrap().live_children() != 0 {
        assert!(Instant::now() < until, "workers left running");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn killed_mid_call_and_replaced(client: &Client) {
    let pool = WorkerPool::<Op, u64>::new(client, "counter", 1);
    let first = pool.call(&Op::Pid).unwrap();
    assert_eq!(pool.call(&Op::Add(2)).unwrap(), 2);
    std::thread::scope(|s| {
        let sleeper = s.spawn(|| pool.call(&Op::Sleep(60_000)));
        // Wait until the worker is in `handle` (blocked in its sleep), then kill it.
        let pid = nix::unistd::Pid::from_raw(first as i32);
        wait_until(|| sleeping(first) && !sleeper.is_finished());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        match sleeper.join().unwrap() {
            Err(CallError::Killed {
                signal,
                deadline_expired,
            }) => {
                assert_eq!(signal, 9);
                assert!(!deadline_expired);
            }
            other => panic!("{other:?}"),
        }
    });
    let second = pool.call(&Op::Pid).unwrap();
    assert_ne!(second, first, "a fresh worker");
    assert_eq!(pool.call(&Op::Add(1)).unwrap(), 1, "with fresh state");
}

/// Whether process `pid` is in `nanosleep` (its kernel wait channel says so).
fn sleeping(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/wchan")).is_ok_and(|w| w.contains("nanosleep"))
        || std::fs::read_to_string(format!("/proc/{pid}/syscall")).is_ok_and(|s| {
            // nanosleep(2) and clock_nanosleep(2) on x86-64.
            matches!(s.split_whitespace().next(), Some("35" | "230"))
        })
}

fn wait_until(mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < until, "condition not met in 10 s");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn max_calls_per_worker(client: &Client) {
    let pool = WorkerPool::<Op, u64>::new(client, "counter", 1).max_calls_per_worker(10);
    let mut pids = HashSet::new();
    for i in 0..35u64 {
        if i % 2 == 0 {
            pids.insert(pool.call(&Op::Pid).unwrap());
        } else {
            // The count restarts with each worker: calls 0-9, 10-19, ... are one worker's.
            assert_eq!(pool.call(&Op::Add(1)).unwrap(), (i % 10).div_ceil(2));
        }
    }
    assert_eq!(pids.len(), 4, "35 calls, 10 per worker: {pids:?}");
}

fn four_threads_on_a_pool_of_two(client: &Client) {
    let before = spawned(client);
    let pool = WorkerPool::<Op, u64>::new(client, "counter", 2);
    assert_eq!(pool.size(), 2);
    let (pids, counts): (Vec<HashSet<u64>>, Vec<Vec<u64>>) = std::thread::scope(|s| {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut pids = HashSet::new();
                    let mut counts = Vec::new();
                    for i in 0..100 {
                        if i % 10 == 0 {
                            pids.insert(pool.call(&Op::Pid).unwrap());
                        } else {
                            counts.push(pool.call(&Op::Add(1)).unwrap());
                        }
                    }
                    (pids, counts)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).unzip()
    });
    let pids: HashSet<u64> = pids.into_iter().flatten().collect();
    assert!(!pids.is_empty() && pids.len() <= 2, "{pids:?}");
    let mut counts: Vec<u64> = counts.into_iter().flatten().collect();
    counts.sort_unstable();
    assert_eq!(counts.len(), 360);
    // Each worker counts 1, 2, ...: every count appears at most once per worker.
    let ones = counts.iter().filter(|&&c| c == 1).count();
    assert!((1..=2).contains(&ones), "{ones} workers counted");
    assert!(spawned(client) - before <= 2, "at most two forks");
    drop(pool);
}
