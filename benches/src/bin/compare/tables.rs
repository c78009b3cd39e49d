//! The tables printed on stdout.

use forkserver_benches::ballast::fmt_bytes;
use forkserver_benches::stats::{fmt_ns, Summary};
use serde_json::{Map, Value};

use crate::results::Results;
use crate::scenarios::print_group;

// ----- output --------------------------------------------------------------------------------

pub(crate) fn print_tables(r: &Results, ratios: &Map<String, Value>) {
    println!(
        "# forkserver compare ({}), harness VmRSS {} MiB",
        if r.quick { "quick" } else { "full" },
        r.harness_rss_kib / 1024
    );
    print_group(
        "1-2. latency: fork in this process (limit) vs ours (noop entry)",
        &r.latency,
        Some("limit_fork_exit_wait"),
    );
    print_group(
        "3. exec /bin/true, stdio on /dev/null, spawn+wait",
        &r.exec,
        Some("std_command_true"),
    );
    print_group(
        "3b. exec /bin/true from a small zygote and a 512 MiB one, CLONE_VM path vs fork path",
        &r.zygote,
        Some("exec_small_zygote_clone_vm"),
    );
    println!("\n## 4. client RSS (spawn+wait; direct fork copies the client's page tables)\n");
    println!(
        "{:<10} {:>10} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11}",
        "ballast",
        "VmRSS MiB",
        "fork med",
        "fork p99",
        "ours med",
        "ours p99",
        "small med",
        "amid fork",
        "std med",
        "std p99"
    );
    for s in &r.rss {
        let g = |n: &str| s.group.get(n).ok().copied();
        let cell = |x: Option<Summary>, p99: bool| {
            x.map_or("-".into(), |x| {
                fmt_ns(if p99 { x.p99_ns } else { x.median_ns })
            })
        };
        let (f, o, sm, am, st) = (
            g("direct_fork_exit_wait"),
            g("ours_exit_fds0"),
            g("ours_exit_fds0_small_client"),
            g("ours_exit_fds0_amid_direct_forks"),
            g("std_command_true"),
        );
        println!(
            "{:<10} {:>10} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11}",
            fmt_bytes(s.bytes),
            s.client_rss_kib / 1024,
            cell(f, false),
            cell(f, true),
            cell(o, false),
            cell(o, true),
            cell(sm, false),
            cell(am, false),
            cell(st, false),
            cell(st, true)
        );
    }
    match &r.cpython {
        Some((g, v)) => print_group(
            &format!("5. CPython {v} multiprocessing forkserver (start+join) vs ours"),
            g,
            Some("ours_exit_fds0"),
        ),
        None => println!("\n## 5. CPython: skipped (no python3)"),
    }
    println!(
        "\n## 6. throughput: ours (noop spawn+wait, threads sharing one Client) and the limit \
         (each thread: fork+_exit+waitpid)\n"
    );
    for t in &r.throughput {
        println!(
            "{:<5} {} thread(s): {:>8.0} spawns/s ({} in {:.2} s)",
            if t.limit { "limit" } else { "ours" },
            t.threads,
            t.per_second(),
            t.spawns,
            t.elapsed.as_secs_f64()
        );
    }
    println!("\n## 7. server footprint (pid {})\n", r.server_pid);
    for (label, f) in [("idle", r.idle), ("after", r.after)] {
        println!(
            "{label:<6} spawned {:>6}: VmRSS {} KiB, VmHWM {} KiB, {} fds",
            f.spawned_total, f.vm_rss_kib, f.vm_hwm_kib, f.fds
        );
    }
    crate::peers::print(&r.peers);
    print_ratios(ratios);
}

/// The ratios, one a line (`notes` left out).
pub(crate) fn print_ratios(ratios: &Map<String, Value>) {
    println!("\n## ratios (medians)\n");
    for (k, v) in ratios {
        if k == "notes" {
            continue;
        }
        match v.as_f64() {
            Some(x) => println!("{k:<28} {x:.3}"),
            None => println!("{k:<28} {v}"),
        }
    }
}
