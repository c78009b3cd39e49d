//! Every per-child control of protocol rev 0.6 (issue 17) on one exec job, for the cost of
//! the controls against none: `compare`'s `ours_exec_true_controls` (ratio
//! `controls_vs_none`) and `examples/controls.rs`.

use std::time::Duration;

use forkserver_client::Command;
use forkserver_protocol::RLIM_INFINITY;
use nix::libc;

/// Sets every per-child control on `cmd`: five resource limits, a umask, `setpriority` (to 0,
/// so the child is not scheduled differently), the OOM score written (500), `no_new_privs`,
/// and a 60 s deadline with a 5 s grace period (a timer, no signal when the child ends first).
pub fn with_controls(cmd: &mut Command) -> &mut Command {
    cmd.rlimit(libc::RLIMIT_NOFILE, 1024, 4096)
        .rlimit(libc::RLIMIT_CORE, 0, 0)
        .rlimit(libc::RLIMIT_NPROC, 4096, 4096)
        .rlimit(libc::RLIMIT_AS, RLIM_INFINITY, RLIM_INFINITY)
        .rlimit(libc::RLIMIT_FSIZE, RLIM_INFINITY, RLIM_INFINITY)
        .umask(0o077)
        .nice(0)
        .oom_score_adj(500)
        .no_new_privs(true)
        .deadline(Duration::from_secs(60))
        .grace(Duration::from_secs(5))
}
