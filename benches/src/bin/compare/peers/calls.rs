//! The two interleaved groups of group 8: spawn to result (ours typed, procspawn, ours raw),
//! and a worker's call against `zygote::Zygote::run`.

use std::time::{Duration, Instant};

use forkserver_benches::interleave::{self, Scenario};
use forkserver_benches::Result;
use forkserver_client::Client;

use crate::peers::{blob_sum, scale, Blob, Job, BIG_ARG_BYTES, BIG_PAYLOAD_BYTES};
use crate::plan::Plan;
use crate::scenarios::{check, Group};

/// The scenarios of [`call_group`] (run in a new random order every round).
pub(crate) const CALLS: [&str; 6] = [
    "ours_call_noop",
    "ours_typed_small",
    "procspawn_small",
    "ours_call_1mib",
    "ours_typed_1mib",
    "procspawn_1mib",
];

/// Spawn to result, interleaved: a raw `Call` of `noop` (spawn to exit code), a typed call of
/// `scale` with a [`Job`] (spawn to the returned `Job`), `procspawn::spawn(job, scale)` +
/// `join`; then the same three large: a [`Blob`] of [`BIG_ARG_BYTES`] (1 MiB, which `blob_sum`
/// reads in full) for ours typed and procspawn, a raw payload of [`BIG_PAYLOAD_BYTES`] (what a
/// `Spawn` can carry, 4 KiB less) that `noop` ignores. Arguments are built
/// outside the timed region (procspawn takes its argument by value: the copy is made before
/// the clock starts); the connection of ours is kept between calls, as for any user.
pub(crate) fn call_group(client: &Client, plan: &Plan) -> Result<Group> {
    let blob = Blob::new(BIG_ARG_BYTES);
    let expected_sum = blob_sum(blob.clone());
    let raw = |payload: Vec<u8>| {
        let mut call = client.call("noop", payload);
        move || -> Result<Duration> {
            let start = Instant::now();
            let status = call.spawn()?.wait()?;
            let elapsed = start.elapsed();
            check(status)?;
            Ok(elapsed)
        }
    };
    let mut typed_small = client.typed::<Job, Job>("scale");
    let mut typed_big = client.typed::<Blob, u64>("blob_sum");
    let big = &blob;
    let mut scenarios = vec![
        Scenario::new(CALLS[0], raw(Vec::new())),
        Scenario::new(CALLS[1], move || {
            let job = Job::new();
            let start = Instant::now();
            let out = typed_small.spawn(&job)?.join()?;
            let elapsed = start.elapsed();
            expect(out.is_scaled(), "ours: scale")?;
            Ok(elapsed)
        }),
        Scenario::new(CALLS[2], || {
            let job = Job::new();
            let start = Instant::now();
            let out = procspawn::spawn(job, scale).join().map_err(peer)?;
            let elapsed = start.elapsed();
            expect(out.is_scaled(), "procspawn: scale")?;
            Ok(elapsed)
        }),
        Scenario::new(CALLS[3], raw(vec![7; BIG_PAYLOAD_BYTES])),
        Scenario::new(CALLS[4], move || {
            let start = Instant::now();
            let sum = typed_big.spawn(big)?.join()?;
            let elapsed = start.elapsed();
            expect(sum == expected_sum, "ours: blob_sum")?;
            Ok(elapsed)
        }),
        Scenario::new(CALLS[5], move || {
            let arg = big.clone();
            let start = Instant::now();
            let sum = procspawn::spawn(arg, blob_sum).join().map_err(peer)?;
            let elapsed = start.elapsed();
            expect(sum == expected_sum, "procspawn: blob_sum")?;
            Ok(elapsed)
        }),
    ];
    // Shuffled rounds: a procspawn call (a process exec'd and reaped) or a MiB copied would
    // otherwise always precede the same scenario.
    let r = interleave::run_shuffled(&mut scenarios, plan.typed_warmup, plan.typed_rounds, 15)?;
    Ok(Group(r))
}

/// One call on a long-lived worker of ours (`scale_worker`, spawned once before the group and
/// closed after it: a request frame to it, a value frame back, no fork) against
/// `zygote::Zygote::global().run(scale, &job)` (the function runs in the zygote process,
/// forked at start; no fork per call either), interleaved, the same [`Job`] and function.
pub(crate) fn worker_group(client: &Client, plan: &Plan) -> Result<Group> {
    let mut worker = client.worker::<Job, Job>("scale_worker").spawn()?;
    let zygote = zygote::Zygote::global();
    let mut scenarios = vec![
        Scenario::new("ours_worker_call", || {
            let job = Job::new();
            let start = Instant::now();
            let out = worker.call(&job)?;
            let elapsed = start.elapsed();
            expect(out.is_scaled(), "ours: worker scale")?;
            Ok(elapsed)
        }),
        Scenario::new("zygote_run", || {
            let job = Job::new();
            let start = Instant::now();
            let out = zygote.try_run(scale, &job).map_err(peer)?;
            let elapsed = start.elapsed();
            expect(out.is_scaled(), "zygote: scale")?;
            Ok(elapsed)
        }),
    ];
    let r = interleave::run(&mut scenarios, plan.worker_warmup, plan.worker_rounds)?;
    drop(scenarios);
    worker.close()?;
    Ok(Group(r))
}

/// A peer's error as ours (theirs are not all `Send + Sync`).
pub(crate) fn peer(e: impl std::fmt::Display) -> forkserver_benches::BoxError {
    e.to_string().into()
}

/// Fails with `what` unless `ok`: a wrong result is a broken scenario, never a figure.
pub(crate) fn expect(ok: bool, what: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(format!("{what}: wrong result").into())
    }
}
