//! Group 5: CPython's `multiprocessing` forkserver against ours.

use std::fs::File;

use forkserver_benches::cpython::CPython;
use forkserver_benches::interleave::{self, Scenario};
use forkserver_benches::Result;
use forkserver_client::Client;

use crate::plan::Plan;
use crate::scenarios::{noop_call, ours_exit, Group};

/// Group 5: CPython's forkserver against ours, in interleaved batches. `None` if there is no
/// `python3`.
pub(crate) fn cpython_group(client: &Client, plan: &Plan) -> Result<Option<(Group, String)>> {
    let Some(mut py) = CPython::start()? else {
        return Ok(None);
    };
    let version = py.version().to_owned();
    let devnull = File::open("/dev/null")?;
    let batch = plan.cpython_batch;
    let mut ours = ours_exit(noop_call(client, 0, &devnull)?);
    let mut scenarios = vec![
        Scenario::batch("cpython_forkserver_start_join", |out| py.batch(batch, out)),
        Scenario::batch("ours_exit_fds0", |out| {
            for _ in 0..batch {
                out.push(ours()?);
            }
            Ok(())
        }),
    ];
    let r = interleave::run(&mut scenarios, 1, plan.cpython_rounds)?;
    Ok(Some((Group(r), version)))
}
