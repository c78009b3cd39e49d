//! Group 6: throughput, spawns per second with 1, 2 and 4 client threads, ours and the limit.

use std::time::{Duration, Instant};

use forkserver_benches::{direct, Result};
use forkserver_client::Client;

use crate::plan::Plan;
use crate::scenarios::check;

/// Client thread counts of the throughput group.
const THREADS: [usize; 3] = [1, 2, 4];

/// One throughput figure.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Throughput {
    /// Ours (`false`), or the limit (`true`): each thread forks this process itself.
    pub(crate) limit: bool,
    pub(crate) threads: usize,
    pub(crate) spawns: u64,
    pub(crate) elapsed: Duration,
}

impl Throughput {
    pub(crate) fn per_second(&self) -> f64 {
        self.spawns as f64 / self.elapsed.as_secs_f64()
    }
}

/// `threads` threads sharing `client`, each spawning `noop` and waiting, until `slice` has
/// passed.
fn throughput_slice(client: &Client, threads: usize, slice: Duration) -> Result<(u64, Duration)> {
    slice_of(threads, slice, || {
        let mut call = client.call("noop", Vec::new());
        move || check(call.spawn()?.wait()?)
    })
}

/// The limit's counterpart of [`throughput_slice`]: each thread forks this (small) process,
/// the child calls `_exit(0)`, the thread reaps it.
fn limit_throughput_slice(threads: usize, slice: Duration) -> Result<(u64, Duration)> {
    slice_of(threads, slice, || {
        || {
            direct::fork_exit_wait()?;
            Ok(())
        }
    })
}

/// `threads` threads, each running the operation `make` gives it until `slice` has passed:
/// how many ran, in how long.
pub(crate) fn slice_of<F, Op>(threads: usize, slice: Duration, make: F) -> Result<(u64, Duration)>
where
    F: Fn() -> Op + Sync,
    Op: FnMut() -> Result<()>,
{
    let start = Instant::now();
    let deadline = start + slice;
    let counts: Vec<Result<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<u64> {
                    let mut op = make();
                    let mut n = 0;
                    while Instant::now() < deadline {
                        op()?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect()
    });
    let elapsed = start.elapsed();
    let mut total = 0;
    for c in counts {
        total += c?;
    }
    Ok((total, elapsed))
}

/// Group 6: spawns per second to exit code with 1, 2 and 4 client threads, in rotated rounds.
pub(crate) fn throughput_group(client: &Client, plan: &Plan) -> Result<Vec<Throughput>> {
    let mut acc: Vec<Throughput> = [false, true]
        .into_iter()
        .flat_map(|limit| {
            THREADS.iter().map(move |&threads| Throughput {
                limit,
                threads,
                spawns: 0,
                elapsed: Duration::ZERO,
            })
        })
        .collect();
    // Warm-up: one short slice at the largest thread count.
    throughput_slice(
        client,
        THREADS[THREADS.len() - 1],
        Duration::from_millis(100),
    )?;
    let n = acc.len();
    for round in 0..plan.throughput_rounds {
        for j in 0..n {
            let t = &mut acc[(round + j) % n];
            let (n, d) = if t.limit {
                limit_throughput_slice(t.threads, plan.throughput_slice)?
            } else {
                throughput_slice(client, t.threads, plan.throughput_slice)?
            };
            t.spawns += n;
            t.elapsed += d;
        }
    }
    Ok(acc)
}
