//! Group 3b: exec jobs from a large zygote. The same `/bin/true` exec job (stdio on
//! `/dev/null`, spawn + wait) through four servers, interleaved: a small one and one with a
//! 512 MiB touched preload, each on the `CLONE_VM` exec path (the default) and on the fork
//! path (`FORKSERVER_EXEC_FORK=1`). A fork copies the page tables of the whole server; a
//! `CLONE_VM` child shares them.

use std::time::{Duration, Instant};

use forkserver_benches::interleave::{self, Scenario};
use forkserver_benches::Result;
use forkserver_client::{Client, Stdio};

use crate::plan::Plan;
use crate::scenarios::{check, Group};

/// The preload of the large zygote, MiB of heap written page by page before it serves.
pub(crate) const BIG_ZYGOTE_MIB: usize = 512;

/// Read by this binary when it starts as a server: the MiB of heap to allocate and write
/// before serving (its "preload").
pub(crate) const PRELOAD_ENV: &str = "COMPARE_ZYGOTE_PRELOAD_MIB";

/// The preload of a server launched with [`PRELOAD_ENV`]: kept for the server's lifetime.
pub(crate) fn preload() {
    let mib = std::env::var(PRELOAD_ENV)
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(mib) = mib {
        let ballast = forkserver_benches::ballast::Ballast::new(mib << 20);
        std::mem::forget(ballast);
    }
}

/// The scenarios' names: (zygote, path).
pub(crate) const SCENARIOS: [&str; 4] = [
    "exec_small_zygote_clone_vm",
    "exec_small_zygote_fork",
    "exec_big_zygote_clone_vm",
    "exec_big_zygote_fork",
];

pub(crate) fn zygote_group(plan: &Plan) -> Result<Group> {
    let exe = std::env::current_exe()?;
    let launch = |big: bool, fork: bool| -> Result<Client> {
        let mut l = Client::launcher(&exe);
        if big {
            l = l.env(PRELOAD_ENV, BIG_ZYGOTE_MIB.to_string());
        }
        if fork {
            l = l.env(forkserver_server::EXEC_FORK_ENV, "1");
        }
        Ok(l.launch()?)
    };
    let clients = [
        launch(false, false)?,
        launch(false, true)?,
        launch(true, false)?,
        launch(true, true)?,
    ];
    let job = |client: &Client| {
        let mut cmd = client.command("/bin/true");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        move || -> Result<Duration> {
            let start = Instant::now();
            let status = cmd.spawn()?.wait()?;
            let elapsed = start.elapsed();
            check(status)?;
            Ok(elapsed)
        }
    };
    let mut scenarios: Vec<Scenario<'_>> = SCENARIOS
        .iter()
        .zip(&clients)
        .map(|(name, client)| Scenario::new(*name, job(client)))
        .collect();
    let r = interleave::run(&mut scenarios, plan.exec_warmup, plan.exec_rounds)?;
    Ok(Group(r))
}
