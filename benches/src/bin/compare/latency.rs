//! Groups 1 and 2: latency, `fork` in this process (the limit) against ours.

use std::fs::File;

use forkserver_benches::interleave::{self, Scenario};
use forkserver_benches::{direct, Result};
use forkserver_client::Client;

use crate::plan::Plan;
use crate::scenarios::{ensure_single_threaded, noop_call, ours_exit, ours_pid, raw, Group};

/// Fd counts of the bundle in the latency group.
pub(crate) const FD_COUNTS: [u32; 4] = [0, 3, 64, 256];

/// Group 1 and 2: the limit (`fork` in this small process) and ours through the client, with
/// 0, 3, 64 and 256 fds in the bundle.
///
/// `client` is the library's default: its connections are reused (`KEEP_CONNECTION`), so in
/// a stream of spawns each one is a single round trip on an authenticated connection.
///
/// `cold` is a second client of the same server with reuse off (`set_max_idle_connections(0)`):
/// every spawn connects, says Hello, authenticates (two round trips, PROTOCOL.md §9) and sends
/// its request, as the first spawn of a process (and every spawn before rev 0.3) does.
///
/// `cold_noauth` is a client, reuse off, of a server launched with `authenticate(false)`: what
/// the per-connection HMAC handshake costs.
///
/// `prefork` is a client (reuse on) of a server with a pool of pre-forked children
/// (`FORKSERVER_PREFORK=4`): the fork is off the critical path there.
pub(crate) fn latency_group(
    client: &Client,
    cold: &Client,
    cold_noauth: &Client,
    prefork: &Client,
    plan: &Plan,
) -> Result<Group> {
    ensure_single_threaded("latency group")?;
    let devnull = File::open("/dev/null")?;
    let mut scenarios = vec![
        Scenario::new("limit_fork_exit_wait", direct::fork_exit_wait),
        Scenario::new("limit_fork_to_pid", direct::fork_to_pid),
    ];
    // The raw baseline (`raw_*`) runs right after the client's own scenario of the same kind,
    // on a kept connection of its own to the same server: the rotation keeps the pair
    // together, so each finds the server as the other left it (one spawn and one exit read
    // earlier), whatever the neighbours of the pair do to the machine.
    for n in FD_COUNTS {
        scenarios.push(Scenario::new(
            format!("ours_pid_fds{n}"),
            ours_pid(noop_call(client, n, &devnull)?),
        ));
        if n == 3 {
            scenarios.push(Scenario::new(
                "raw_pid_fds3",
                raw(client, 3, &devnull, false)?,
            ));
        }
        scenarios.push(Scenario::new(
            format!("ours_exit_fds{n}"),
            ours_exit(noop_call(client, n, &devnull)?),
        ));
        if n == 3 {
            scenarios.push(Scenario::new(
                "raw_exit_fds3",
                raw(client, 3, &devnull, true)?,
            ));
        }
    }
    for (suffix, c) in [("cold", cold), ("cold_noauth", cold_noauth)] {
        scenarios.push(Scenario::new(
            format!("ours_pid_fds3_{suffix}"),
            ours_pid(noop_call(c, 3, &devnull)?),
        ));
        scenarios.push(Scenario::new(
            format!("ours_exit_fds3_{suffix}"),
            ours_exit(noop_call(c, 3, &devnull)?),
        ));
        if suffix == "cold" {
            // With the pool, the first spawn after the harness has worked with other servers
            // is slower (the pooled child has slept a while): the raw pair goes where the
            // client's pair goes, after two spawns through another server, and not right after
            // the client's (where it would find a pooled child just woken).
            scenarios.push(Scenario::new(
                "raw_pid_fds3_prefork",
                raw(prefork, 3, &devnull, false)?,
            ));
            scenarios.push(Scenario::new(
                "raw_exit_fds3_prefork",
                raw(prefork, 3, &devnull, true)?,
            ));
        }
    }
    scenarios.push(Scenario::new(
        "ours_pid_fds3_prefork",
        ours_pid(noop_call(prefork, 3, &devnull)?),
    ));
    scenarios.push(Scenario::new(
        "ours_exit_fds3_prefork",
        ours_exit(noop_call(prefork, 3, &devnull)?),
    ));
    let r = interleave::run(&mut scenarios, plan.latency_warmup, plan.latency_rounds)?;
    Ok(Group(r))
}
