//! Group 8: typed calls against the crates users pick for the same job, `procspawn` and
//! `zygote`, in one run (issue 15, "Measured").
//!
//! * `calls` (`calls.rs`): a call with a small struct argument and result, spawn to result,
//!   ours (`client.typed::<Job, Job>("scale").spawn(&job)?.join()?`) against
//!   `procspawn::spawn(job, scale).join()` and against a raw untyped `Call` of `noop` (spawn to
//!   exit); the same three with an argument of [`BIG_ARG_BYTES`]; interleaved.
//! * `workers` (`calls.rs`): one call on a long-lived worker of ours
//!   (`client.worker::<Job, Job>("scale_worker")`, spawned once) against
//!   `zygote::Zygote::global().run(scale, &job)` (its one zygote process, forked at start, runs
//!   the function itself: no fork per call); interleaved.
//! * throughput (`throughput.rs`): typed calls per second from 8 threads sharing one `Client`,
//!   against `procspawn::spawn` from 8 threads, in rotated slices.
//!
//! Both peers need their start-up call in `main` ([`init_procspawn`] right after our
//! `serve_if_requested`, [`init_zygote`] at the start of the run): see their docs for how the
//! three ways this binary starts (harness, our launched server, procspawn's child) tell
//! themselves apart.

mod calls;
mod report;
mod throughput;

use forkserver_benches::Result;

use calls::{call_group, worker_group};
pub(crate) use forkserver_benches::typed_values::{scale, Blob, Job};
pub(crate) use report::{print, put_ratios, to_json};
use throughput::{throughput_group, PeerThroughput};

use crate::plan::Plan;
use crate::scenarios::Group;

/// The large typed (and procspawn) argument: 1 MiB. Over `INLINE_ARG_MAX`, it travels in a
/// sealed memfd (PROTOCOL.md §11.8), so no payload limit bounds it.
pub(crate) const BIG_ARG_BYTES: usize = 1 << 20;

/// The raw call's large payload: 1 MiB less 4 KiB, what a `Spawn` can carry (its body is at
/// most 1 MiB, PROTOCOL.md §3, with the entry's name and the request's other fields).
pub(crate) const BIG_PAYLOAD_BYTES: usize = (1 << 20) - 4096;

/// The large call's function: reads every byte, returns a small value.
pub(crate) fn blob_sum(b: Blob) -> u64 {
    b.0.iter().map(|&x| u64::from(x)).sum()
}

/// The entries of the server side: `scale` and `blob_sum` typed, `scale_worker` a worker.
pub(crate) fn register(z: forkserver_server::Zygote) -> forkserver_server::Zygote {
    z.typed("scale", scale).typed("blob_sum", blob_sum).worker(
        "scale_worker",
        || (),
        |_: &mut (), j: Job| scale(j),
    )
}

/// procspawn's start-up: in a child that `procspawn::spawn` started (it re-executes this binary
/// with `__PROCSPAWN_CONTENT_PROCESS_ID` in the environment), runs the function and exits;
/// otherwise returns at once. Called right after our `serve_if_requested`, which returns at
/// once unless `FORKSERVER_LISTEN_FD` is set: our client sets that only in the environment of
/// a server it launches, and procspawn its variable only in its child's, so neither start is
/// mistaken for the other (a launched server never reaches this call; a procspawn child
/// inherits the harness's environment, which has no launch variable).
pub(crate) fn init_procspawn() {
    procspawn::init();
    // SAFETY: procspawn is built without `safe-shared-libraries`, so it asks for this promise:
    // every function spawned (`scale`, `blob_sum`) is in this executable, none in a shared
    // library, so its offset from `procspawn::init` is the same in the re-executed child.
    unsafe { procspawn::assert_spawn_is_safe() };
}

/// zygote's start-up: clones the global zygote process now, while the harness has one thread
/// and no connection, launched server or ballast yet (the zygote is a copy of this process:
/// it inherits no client socket and no server's pipe, and stays small). It never execs, so it
/// does not re-enter `main`.
pub(crate) fn init_zygote() {
    zygote::Zygote::init();
}

/// Everything group 8 measured.
#[derive(Debug)]
pub(crate) struct PeersResults {
    /// Spawn to result: `ours_call_*`, `ours_typed_*`, `procspawn_*`.
    pub(crate) calls: Group,
    /// `ours_worker_call`, `zygote_run`.
    pub(crate) workers: Group,
    /// Calls per second from 8 threads.
    pub(crate) throughput: Vec<PeerThroughput>,
}

/// Group 8: the spawn-to-result group, the worker group, then throughput, through `client`'s
/// server (this binary, with [`register`]'s entries).
pub(crate) fn peers_group(client: &forkserver_client::Client, plan: &Plan) -> Result<PeersResults> {
    Ok(PeersResults {
        calls: call_group(client, plan)?,
        workers: worker_group(client, plan)?,
        throughput: throughput_group(client, plan)?,
    })
}
