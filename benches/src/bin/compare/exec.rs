//! Group 3: exec mode, `/bin/true` through the server against `std::process::Command`.

use std::time::{Duration, Instant};

use forkserver_benches::controls::with_controls;
use forkserver_benches::interleave::{self, Scenario};
use forkserver_benches::Result;
use forkserver_client::{Client, Stdio};

use crate::plan::Plan;
use crate::scenarios::{check, Group};

/// Group 3: exec mode, `/bin/true` through the server against `std::process::Command` from
/// this process, all with stdin, stdout and stderr on `/dev/null`, spawn + wait; and ours
/// with every per-child control ([`with_controls`]), for `controls_vs_none`.
pub(crate) fn exec_group(client: &Client, plan: &Plan) -> Result<Group> {
    let ours = |wait_for_exec: bool, controls: bool| {
        let mut cmd = client.command("/bin/true");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .wait_for_exec(wait_for_exec);
        if controls {
            with_controls(&mut cmd);
        }
        move || -> Result<Duration> {
            let start = Instant::now();
            let status = cmd.spawn()?.wait()?;
            let elapsed = start.elapsed();
            check(status)?;
            Ok(elapsed)
        }
    };
    let mut scenarios = vec![
        Scenario::new("ours_exec_true", ours(true, false)),
        Scenario::new("ours_exec_true_controls", ours(true, true)),
        Scenario::new("ours_exec_true_nowait", ours(false, false)),
        Scenario::new("std_command_true", std_command_true),
    ];
    let r = interleave::run(&mut scenarios, plan.exec_warmup, plan.exec_rounds)?;
    Ok(Group(r))
}

/// `std::process::Command::new("/bin/true")` from this process, stdio on `/dev/null`,
/// spawn + wait. std uses `posix_spawn` here (`clone(CLONE_VM|CLONE_VFORK)`): no page tables
/// are copied, whatever this process's size.
pub(crate) fn std_command_true() -> Result<Duration> {
    use std::process::{Command, Stdio};
    let start = Instant::now();
    let status = Command::new("/bin/true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?
        .wait()?;
    let elapsed = start.elapsed();
    if !status.success() {
        return Err(format!("/bin/true: {status}").into());
    }
    Ok(elapsed)
}
