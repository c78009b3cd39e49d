//! Throughput of group 8: typed calls per second from [`THREADS`] threads, ours against
//! procspawn, in rotated slices.

use std::time::Duration;

use forkserver_benches::Result;
use forkserver_client::Client;

use crate::peers::calls::{expect, peer};
use crate::peers::{scale, Job};
use crate::plan::Plan;
use crate::throughput::slice_of;

/// Client threads.
pub(crate) const THREADS: usize = 8;

/// One throughput figure: `calls` in `elapsed`, summed over the slices.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerThroughput {
    /// `ours_typed` or `procspawn`.
    pub(crate) kind: &'static str,
    pub(crate) threads: usize,
    pub(crate) calls: u64,
    pub(crate) elapsed: Duration,
}

impl PeerThroughput {
    pub(crate) fn per_second(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }
}

/// One slice of `kind`: [`THREADS`] threads, each making the small call (spawn to result) in
/// a loop until `slice` has passed; ours share `client` (each thread its own builder).
fn slice(kind: &str, client: &Client, slice: Duration) -> Result<(u64, Duration)> {
    if kind == "ours_typed" {
        slice_of(THREADS, slice, || {
            let mut call = client.typed::<Job, Job>("scale");
            move || {
                let out = call.spawn(&Job::new())?.join()?;
                expect(out.is_scaled(), "ours: scale")
            }
        })
    } else {
        slice_of(THREADS, slice, || {
            || {
                let out = procspawn::spawn(Job::new(), scale).join().map_err(peer)?;
                expect(out.is_scaled(), "procspawn: scale")
            }
        })
    }
}

/// Ours and procspawn, [`THREADS`] threads, `plan.throughput_rounds` rounds of one slice each
/// (`plan.throughput_slice`), the order rotated every round, after a short slice of each.
pub(crate) fn throughput_group(client: &Client, plan: &Plan) -> Result<Vec<PeerThroughput>> {
    let mut acc: Vec<PeerThroughput> = ["ours_typed", "procspawn"]
        .into_iter()
        .map(|kind| PeerThroughput {
            kind,
            threads: THREADS,
            calls: 0,
            elapsed: Duration::ZERO,
        })
        .collect();
    for t in &acc {
        slice(t.kind, client, Duration::from_millis(100))?;
    }
    let n = acc.len();
    for round in 0..plan.throughput_rounds {
        for j in 0..n {
            let t = &mut acc[(round + j) % n];
            let (calls, elapsed) = slice(t.kind, client, plan.throughput_slice)?;
            t.calls += calls;
            t.elapsed += elapsed;
        }
    }
    Ok(acc)
}
