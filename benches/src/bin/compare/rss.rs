//! Group 4: client RSS, a direct fork of this (big) process against a spawn through the server.

use std::fs::File;
use std::time::Duration;

use forkserver_benches::ballast::{fmt_bytes, Ballast};
use forkserver_benches::interleave::{self, Scenario};
use forkserver_benches::small_client::SmallClient;
use forkserver_benches::{direct, procfs, Result};
use forkserver_client::Client;

use crate::exec::std_command_true;
use crate::plan::Plan;
use crate::scenarios::{ensure_single_threaded, noop_call, ours_exit, Group};

/// Pause after writing the client-RSS group's ballast, before measuring (see `rss_group`).
const RSS_COOL_DOWN: Duration = Duration::from_secs(1);

/// Group 4 at one client size: the figures with `bytes` of touched heap in this process.
#[derive(Debug)]
pub(crate) struct RssStep {
    pub(crate) bytes: usize,
    pub(crate) client_rss_kib: u64,
    pub(crate) touch_time: Duration,
    pub(crate) group: Group,
}

/// Group 4: client RSS. At each size: allocate and touch, then interleave a direct fork of
/// this process with a spawn through the server (and `std::process::Command`, which uses
/// `posix_spawn`, i.e. `CLONE_VM|CLONE_VFORK`, and copies no page tables); free.
pub(crate) fn rss_group(client: &Client, plan: &Plan) -> Result<Vec<RssStep>> {
    let devnull = File::open("/dev/null")?;
    // A second client process that stays small, through the same server, interleaved.
    let key = client.auth_key().ok_or("the launched server has no key")?;
    let mut small = SmallClient::start(&std::env::current_exe()?, &client.socket_path(), &key)?;
    let mut steps = Vec::new();
    for &bytes in &plan.rss_sizes {
        ensure_single_threaded("rss group")?;
        eprintln!("  client RSS +{}: touching...", fmt_bytes(bytes));
        let ballast = Ballast::new(bytes);
        let client_rss_kib = procfs::vm_rss_kib("self").unwrap_or(0);
        // Writing the ballast took this process seconds of CPU, and the scheduler holds that
        // against its next wake-ups (load tracking decays over tens of ms): let it decay, or
        // the figures below would show the CPU history of the process, not its size.
        std::thread::sleep(RSS_COOL_DOWN);
        // Ours from this big process, ours from the small helper, and std, interleaved.
        let mut scenarios = vec![
            Scenario::new("ours_exit_fds0", ours_exit(noop_call(client, 0, &devnull)?)),
            Scenario::batch("ours_exit_fds0_small_client", |out| small.batch(1, out)),
            Scenario::new("std_command_true", std_command_true),
        ];
        let mut r = interleave::run(&mut scenarios, plan.rss_warmup, plan.rss_rounds)?;
        drop(scenarios);
        // Then the direct fork, which burns a lot of CPU in this process at every call (page
        // tables copied), interleaved with ours once more: what a client that also forks
        // directly sees.
        let mut scenarios = vec![
            Scenario::new("direct_fork_exit_wait", direct::fork_exit_wait),
            Scenario::new(
                "ours_exit_fds0_amid_direct_forks",
                ours_exit(noop_call(client, 0, &devnull)?),
            ),
        ];
        r.extend(interleave::run(
            &mut scenarios,
            plan.rss_warmup,
            plan.rss_rounds,
        )?);
        steps.push(RssStep {
            bytes,
            client_rss_kib,
            touch_time: ballast.touch_time(),
            group: Group(r),
        });
        drop(ballast);
    }
    Ok(steps)
}
