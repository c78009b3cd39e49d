//! Typed calls on tokio (features `typed` and `tokio`): `TypedCall::spawn_async` and
//! `AsyncTypedChild`, with this test binary as the zygote server (harness = false: `main`
//! serves when launched, before any runtime starts).
//!
//! Every test checks that the server's fd count and child list, and this process's fd count,
//! are back where they started. The runtime is made before the first check, so its own fds
//! count in every baseline.

mod common;
use common::entries::{area, bytes, checked_sqrt};
use common::Test;

use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use forkserver_client::{AsyncTypedChild, CallError, Client, Codec, Fd};
use forkserver_server::Zygote;

const PANIC_LINE: u32 = line!() + 2;
fn panics(x: u32) -> u32 {
    panic!("async typed panic {x}")
}

/// Reads the pipe it is given to its end and returns how many bytes came: it runs until the
/// client closes the write end.
fn until_eof(pipe: Fd) -> u64 {
    let mut pipe = std::fs::File::from(OwnedFd::from(pipe));
    std::io::copy(&mut pipe, &mut std::io::sink()).unwrap()
}

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// Runs `f` on the shared multi-thread runtime.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    RUNTIME.get().expect("made in main").block_on(f)
}

fn main() {
    Zygote::new()
        .typed("area", area)
        .typed("checked_sqrt", checked_sqrt)
        .typed("panics", panics)
        .typed("until_eof", until_eof)
        .typed("bytes", bytes)
        .typed("len", |v: Vec<u8>| v.len())
        .serve_if_requested();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    RUNTIME.set(runtime).expect("once");
    let tests: &[Test] = &[
        ("value_err_panic_mismatch", value_err_panic_mismatch),
        (
            "a_timed_out_join_then_join_again",
            a_timed_out_join_then_join_again,
        ),
        (
            "joins_cancelled_mid_value_lose_nothing",
            joins_cancelled_mid_value_lose_nothing,
        ),
        (
            "kill_while_another_task_joins",
            kill_while_another_task_joins,
        ),
        (
            "a_cancelled_spawn_leaves_the_builder_as_it_was",
            a_cancelled_spawn_leaves_the_builder_as_it_was,
        ),
        (
            "two_hundred_concurrent_calls_from_eight_tasks",
            two_hundred_concurrent_calls_from_eight_tasks,
        ),
        ("a_large_argument_in_a_memfd", a_large_argument_in_a_memfd),
    ];
    common::run("typed_async", tests, common::fds_before, common::fds_back);
}

/// A pipe's read end for `until_eof`, and its write end.
fn pipe() -> (Fd, std::fs::File) {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    (Fd::from(r), std::fs::File::from(w))
}

fn value_err_panic_mismatch(client: &Client) {
    block_on(async {
        for codec in [Codec::MessagePack, Codec::Json] {
            let child = client
                .typed::<(u32, u32), u64>("area")
                .codec(codec)
                .spawn_async(&(800, 600))
                .await
                .unwrap();
            assert!(child.pid() > 0);
            assert_eq!(child.join().await.unwrap(), 480_000);
            assert!(matches!(child.join().await, Err(CallError::Taken)));
        }
        let r = client
            .typed::<i64, u32>("checked_sqrt")
            .spawn_async(&-4)
            .await
            .unwrap()
            .join()
            .await;
        assert!(
            matches!(&r, Err(CallError::Failed(t)) if t == "-4 is negative"),
            "{r:?}"
        );
        let r = client
            .typed::<u32, u32>("panics")
            .spawn_async(&3)
            .await
            .unwrap()
            .join()
            .await;
        common::assert_panicked_at(r, "async typed panic 3", file!(), PANIC_LINE);
        // Other types than the entry's: found by the child before the entry runs.
        let r = client
            .typed::<String, u64>("area")
            .spawn_async(&"800x600".to_owned())
            .await
            .unwrap()
            .join()
            .await;
        assert!(matches!(r, Err(CallError::Mismatch { .. })), "{r:?}");
        // No such entry: refused by the server at the spawn.
        let r = client.typed::<u32, u32>("missing").spawn_async(&1).await;
        assert!(matches!(r, Err(CallError::Mismatch { .. })), "{r:?}");
    });
}

/// `tokio::time::timeout` on `join` runs out while the entry waits for its pipe; the child is
/// kept, and `join` again gets the value once the pipe is closed (no timing involved: the
/// entry cannot end before the test closes it).
fn a_timed_out_join_then_join_again(client: &Client) {
    block_on(async {
        let (r, mut w) = pipe();
        let child = client
            .typed::<Fd, u64>("until_eof")
            .spawn_async(&r)
            .await
            .unwrap();
        drop(r);
        for _ in 0..2 {
            let timed = tokio::time::timeout(Duration::from_millis(20), child.join()).await;
            assert!(timed.is_err(), "joined before the pipe closed: {timed:?}");
        }
        w.write_all(b"hello").unwrap();
        drop(w);
        assert_eq!(child.join().await.unwrap(), 5);
    });
}

/// A 4 MiB value (many chunk frames) joined through timeouts of a millisecond: each dropped
/// `join` leaves what it read in the handle, and the last one gets the whole value.
fn joins_cancelled_mid_value_lose_nothing(client: &Client) {
    const N: usize = 4 << 20;
    block_on(async {
        let child = client
            .typed::<usize, Vec<u8>>("bytes")
            .spawn_async(&N)
            .await
            .unwrap();
        let mut cancelled = 0;
        let got = loop {
            match tokio::time::timeout(Duration::from_millis(1), child.join()).await {
                Ok(r) => break r.unwrap(),
                Err(_) => cancelled += 1,
            }
        };
        assert_eq!(got.len(), N);
        assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        // Else nothing was cancelled and the test showed nothing: the child's fork, its 4 MiB
        // and their frames take far longer than the first millisecond.
        assert!(cancelled > 0, "joined in the first millisecond");
        eprintln!("4 MiB value after {cancelled} cancelled joins");
    });
}

/// `signal` and `kill` from one task while another joins: the joiner gets `Killed`.
fn kill_while_another_task_joins(client: &Client) {
    block_on(async {
        let (r, w) = pipe();
        let child: Arc<AsyncTypedChild<u64>> = Arc::new(
            client
                .typed::<Fd, u64>("until_eof")
                .spawn_async(&r)
                .await
                .unwrap(),
        );
        drop(r);
        let joiner = tokio::spawn({
            let child = child.clone();
            async move { child.join().await }
        });
        // Not fatal: acknowledged, and the entry runs on.
        child.signal(nix::libc::SIGCONT).await.unwrap();
        child.kill().await.unwrap();
        let r = joiner.await.unwrap();
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
        // Ended: kill is still Ok, join says the outcome is taken.
        child.kill().await.unwrap();
        assert!(matches!(child.join().await, Err(CallError::Taken)));
        drop(w);
    });
}

/// `spawn_async` futures dropped at their first await (the request out, its `Pid` not read):
/// the channel's child end they had added to the builder is closed, not kept for the next
/// spawn, and the builder still works.
fn a_cancelled_spawn_leaves_the_builder_as_it_was(client: &Client) {
    block_on(async {
        let mut call = client.typed::<(u32, u32), u64>("area");
        let fds = common::own_fds(client);
        for _ in 0..5 {
            let _ = tokio::time::timeout(Duration::ZERO, call.spawn_async(&(2, 3))).await;
        }
        assert_eq!(common::own_fds(client), fds, "fds left in the builder");
        let child = call.spawn_async(&(2, 3)).await.unwrap();
        assert_eq!(child.join().await.unwrap(), 6);
    });
}

/// An argument over the payload's limit travels in a sealed memfd (PROTOCOL.md §11.8) with
/// `spawn_async` too; spawns cancelled at their first await close their memfd with the rest.
fn a_large_argument_in_a_memfd(client: &Client) {
    block_on(async {
        let big = bytes(3 << 20);
        let mut call = client.typed::<Vec<u8>, usize>("len");
        let fds = common::own_fds(client);
        for _ in 0..3 {
            let _ = tokio::time::timeout(Duration::ZERO, call.spawn_async(&big)).await;
        }
        assert_eq!(common::own_fds(client), fds, "memfds left open");
        let child = call.spawn_async(&big).await.unwrap();
        assert_eq!(child.join().await.unwrap(), big.len());
    });
}

/// 8 tasks on the multi-thread runtime, 25 calls each, all alive before any is joined.
fn two_hundred_concurrent_calls_from_eight_tasks(client: &Client) {
    block_on(async {
        let tasks: Vec<_> = (0..8u32)
            .map(|t| {
                let client = client.clone();
                tokio::spawn(async move {
                    let mut children = Vec::new();
                    for i in 0..25u32 {
                        let child = client
                            .typed::<(u32, u32), u64>("area")
                            .spawn_async(&(t, i))
                            .await
                            .unwrap();
                        children.push((u64::from(t * i), child));
                    }
                    for (want, child) in children {
                        assert_eq!(child.join().await.unwrap(), want);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
}
