//! Everything measured, the headline ratios, and the JSON document of `--json`.

use forkserver_benches::ballast::fmt_bytes;
use forkserver_benches::stats::ratio;
use forkserver_benches::Result;
use serde_json::{json, Map, Value};

use crate::footprint::Footprint;
use crate::peers::PeersResults;
use crate::plan::Plan;
use crate::rss::RssStep;
use crate::scenarios::Group;
use crate::throughput::Throughput;

/// Everything measured.
#[derive(Debug)]
pub(crate) struct Results {
    pub(crate) quick: bool,
    pub(crate) harness_rss_kib: u64,
    pub(crate) latency: Group,
    pub(crate) exec: Group,
    /// Group 3b: exec jobs from a small and a large zygote (`zygote.rs`).
    pub(crate) zygote: Group,
    pub(crate) rss: Vec<RssStep>,
    pub(crate) cpython: Option<(Group, String)>,
    pub(crate) throughput: Vec<Throughput>,
    pub(crate) server_pid: u32,
    pub(crate) idle: Footprint,
    pub(crate) after: Footprint,
    /// Group 8: typed calls against procspawn and zygote (`peers/`).
    pub(crate) peers: PeersResults,
}

/// The headline ratios (medians). In `--quick` the `rss8g_*` ratios use the largest size
/// measured, named in `rss_largest`.
pub(crate) fn ratios(r: &Results) -> Result<Map<String, Value>> {
    let l = &r.latency;
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<f64>| {
        m.insert(k.to_owned(), v.map_or(Value::Null, Value::from));
    };
    // Within the latency group: (key, numerator, denominator).
    for (key, num, den) in [
        ("exit_vs_limit", "ours_exit_fds3", "limit_fork_exit_wait"),
        ("pid_vs_limit", "ours_pid_fds3", "limit_fork_to_pid"),
        (
            "pid_prefork_vs_limit",
            "ours_pid_fds3_prefork",
            "limit_fork_to_pid",
        ),
        (
            "exit_cold_vs_limit",
            "ours_exit_fds3_cold",
            "limit_fork_exit_wait",
        ),
        (
            "pid_cold_vs_limit",
            "ours_pid_fds3_cold",
            "limit_fork_to_pid",
        ),
        (
            "exit_prefork_vs_limit",
            "ours_exit_fds3_prefork",
            "limit_fork_exit_wait",
        ),
        (
            "exit_cold_auth_vs_noauth",
            "ours_exit_fds3_cold",
            "ours_exit_fds3_cold_noauth",
        ),
        (
            "exit_reused_vs_cold",
            "ours_exit_fds3",
            "ours_exit_fds3_cold",
        ),
        ("fds256_vs_fds3", "ours_exit_fds256", "ours_exit_fds3"),
        ("pid_client_vs_raw", "ours_pid_fds3", "raw_pid_fds3"),
        ("exit_client_vs_raw", "ours_exit_fds3", "raw_exit_fds3"),
        (
            "pid_prefork_client_vs_raw",
            "ours_pid_fds3_prefork",
            "raw_pid_fds3_prefork",
        ),
    ] {
        put(key, ratio(l.get(num)?, l.get(den)?));
    }
    put(
        "exec_ours_vs_std",
        ratio(
            r.exec.get("ours_exec_true")?,
            r.exec.get("std_command_true")?,
        ),
    );
    put(
        "controls_vs_none",
        ratio(
            r.exec.get("ours_exec_true_controls")?,
            r.exec.get("ours_exec_true")?,
        ),
    );
    let z = |name: &str| r.zygote.get(name);
    // The large zygote against the small one, on the CLONE_VM path (the default).
    put(
        "exec_big_zygote_vs_small",
        ratio(
            z("exec_big_zygote_clone_vm")?,
            z("exec_small_zygote_clone_vm")?,
        ),
    );
    put(
        "exec_big_zygote_fork_vs_small",
        ratio(z("exec_big_zygote_fork")?, z("exec_small_zygote_fork")?),
    );
    put(
        "exec_clone_vm_vs_fork",
        ratio(
            z("exec_small_zygote_clone_vm")?,
            z("exec_small_zygote_fork")?,
        ),
    );
    put(
        "cpython_vs_ours",
        match &r.cpython {
            Some((g, _)) => ratio(
                g.get("cpython_forkserver_start_join")?,
                g.get("ours_exit_fds0")?,
            ),
            None => None,
        },
    );
    let small = r.rss.first().ok_or("no rss step")?;
    let large = r.rss.last().ok_or("no rss step")?;
    // Ours from the big harness against ours from the small helper process, interleaved in
    // the same group (same minutes, same machine state).
    put(
        "rss8g_vs_small",
        ratio(
            large.group.get("ours_exit_fds0")?,
            large.group.get("ours_exit_fds0_small_client")?,
        ),
    );
    // Ours from the big harness while it also forks itself directly (its CPU history weighs on
    // its wake-ups) against the small client.
    put(
        "rss8g_amid_direct_forks_vs_small",
        ratio(
            large.group.get("ours_exit_fds0_amid_direct_forks")?,
            large.group.get("ours_exit_fds0_small_client")?,
        ),
    );
    // The same against the harness itself before its ballast: groups minutes apart, so this
    // one also carries the drift of the machine between them.
    put(
        "rss8g_vs_unballasted",
        ratio(
            large.group.get("ours_exit_fds0")?,
            small.group.get("ours_exit_fds0")?,
        ),
    );
    put(
        "direct_fork_8g_vs_small",
        ratio(
            large.group.get("direct_fork_exit_wait")?,
            small.group.get("direct_fork_exit_wait")?,
        ),
    );
    put(
        "direct_fork_8g_vs_ours_8g",
        ratio(
            large.group.get("direct_fork_exit_wait")?,
            large.group.get("ours_exit_fds0")?,
        ),
    );
    let tp = |limit: bool, n: usize| {
        r.throughput
            .iter()
            .find(|t| t.threads == n && t.limit == limit)
            .map(Throughput::per_second)
    };
    put("threads2_spawns_per_s", tp(false, 2));
    put("threads1_spawns_per_s", tp(false, 1));
    put("threads4_spawns_per_s", tp(false, 4));
    put("limit_threads2_spawns_per_s", tp(true, 2));
    put(
        "threads2_vs_limit",
        tp(false, 2).zip(tp(true, 2)).map(|(a, b)| a / b),
    );
    crate::peers::put_ratios(&r.peers, &mut m)?;
    m.insert("rss_largest".into(), Value::from(fmt_bytes(large.bytes)));
    m.insert(
        "notes".into(),
        Value::from(
            "medians; exit_vs_limit and pid_vs_limit use the 3-fd bundle (targets 0-2 on \
             /dev/null); cpython_vs_ours uses ours with 0 fds from the same interleaved group; \
             rss8g_vs_small: ours from the harness at the largest client size measured \
             (rss_largest) / ours from a small helper client process, interleaved in the \
             same group, after a 1 s pause once the ballast is written; \
             rss8g_amid_direct_forks_vs_small: ours interleaved with the direct forks instead; rss8g_vs_unballasted and direct_fork_8g_vs_small compare with the \
             group of the unballasted harness, run earlier; exec_big_zygote_vs_small: exec \
             /bin/true from a server with a 512 MiB touched preload / from a small one, both \
             on the CLONE_VM exec path (exec_big_zygote_fork_vs_small: both on the fork path, \
             FORKSERVER_EXEC_FORK=1; exec_clone_vm_vs_fork: the two paths, small zygote); \
             controls_vs_none: exec /bin/true with every per-child control / with none, \
             interleaved on the same server; typed_*, procspawn_* and \
             worker_call_vs_zygote_run: group 8 (typed_peers), spawn to result in shuffled \
             rounds, typed_threads8_vs_procspawn a ratio of calls per second (higher is \
             better)",
        ),
    );
    Ok(m)
}

pub(crate) fn to_json(r: &Results, plan: &Plan, ratios: Map<String, Value>) -> Value {
    let rss: Vec<Value> = r
        .rss
        .iter()
        .map(|s| {
            json!({
                "ballast_bytes": s.bytes,
                "ballast": fmt_bytes(s.bytes),
                "client_vm_rss_kib": s.client_rss_kib,
                "touch_ms": s.touch_time.as_secs_f64() * 1e3,
                "results": s.group.to_json(),
            })
        })
        .collect();
    let throughput: Vec<Value> = r
        .throughput
        .iter()
        .map(|t| {
            json!({
                "kind": if t.limit { "limit_fork_exit_wait" } else { "ours_noop" },
                "threads": t.threads,
                "spawns": t.spawns,
                "seconds": t.elapsed.as_secs_f64(),
                "spawns_per_s": t.per_second(),
            })
        })
        .collect();
    let cpython = match &r.cpython {
        Some((g, v)) => json!({"python": v, "results": g.to_json()}),
        None => json!({"skipped": "python3 not found"}),
    };
    json!({
        "mode": if r.quick { "quick" } else { "full" },
        "machine": machine_json(),
        "plan": plan.to_json(),
        "harness_vm_rss_kib": r.harness_rss_kib,
        "latency": r.latency.to_json(),
        "exec": r.exec.to_json(),
        "exec_zygote": r.zygote.to_json(),
        "rss": rss,
        "cpython": cpython,
        "throughput": throughput,
        "server": {
            "pid": r.server_pid,
            "idle": r.idle.to_json(),
            "after": r.after.to_json(),
        },
        "typed_peers": crate::peers::to_json(&r.peers),
        "ratios": Value::Object(ratios),
    })
}

/// The machine: CPUs and kernel release.
pub(crate) fn machine_json() -> Value {
    json!({
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned()).unwrap_or_default(),
    })
}
