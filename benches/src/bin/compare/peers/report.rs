//! Group 8's ratios, table and JSON.

use forkserver_benches::stats::ratio;
use forkserver_benches::Result;
use serde_json::{json, Map, Value};

use crate::peers::{PeersResults, BIG_ARG_BYTES, BIG_PAYLOAD_BYTES};
use crate::scenarios::print_group;

/// The ratios of group 8 (medians; the throughput one of calls per second), into `m`:
/// `typed_vs_call` (goal ≤ 1.3), `typed_vs_procspawn` (goal ≤ 0.2),
/// `worker_call_vs_zygote_run` (goal ≤ 1.5), and the same for the large argument and for
/// throughput.
pub(crate) fn put_ratios(p: &PeersResults, m: &mut Map<String, Value>) -> Result<()> {
    let mut put = |k: &str, v: Option<f64>| {
        m.insert(k.to_owned(), v.map_or(Value::Null, Value::from));
    };
    let (c, w) = (&p.calls, &p.workers);
    for (key, num, den) in [
        ("typed_vs_call", "ours_typed_small", "ours_call_noop"),
        ("typed_vs_procspawn", "ours_typed_small", "procspawn_small"),
        (
            "typed_1mib_vs_call_1mib",
            "ours_typed_1mib",
            "ours_call_1mib",
        ),
        (
            "typed_1mib_vs_procspawn_1mib",
            "ours_typed_1mib",
            "procspawn_1mib",
        ),
    ] {
        put(key, ratio(c.get(num)?, c.get(den)?));
    }
    put(
        "worker_call_vs_zygote_run",
        ratio(w.get("ours_worker_call")?, w.get("zygote_run")?),
    );
    let tp = |kind: &str| {
        p.throughput
            .iter()
            .find(|t| t.kind == kind)
            .map(|t| t.per_second())
    };
    put("typed_threads8_calls_per_s", tp("ours_typed"));
    put("procspawn_threads8_calls_per_s", tp("procspawn"));
    put(
        "typed_threads8_vs_procspawn",
        tp("ours_typed").zip(tp("procspawn")).map(|(a, b)| a / b),
    );
    Ok(())
}

/// Group 8's tables on stdout.
pub(crate) fn print(p: &PeersResults) {
    print_group(
        &format!(
            "8. typed calls, spawn to result: ours vs procspawn vs a raw Call (small struct; \
             {BIG_ARG_BYTES} bytes typed, {BIG_PAYLOAD_BYTES} raw)"
        ),
        &p.calls,
        Some("ours_typed_small"),
    );
    print_group(
        "8b. a long-lived worker's call vs zygote::Zygote::run (small struct)",
        &p.workers,
        Some("zygote_run"),
    );
    println!("\n## 8c. typed calls per second, threads sharing one Client, vs procspawn\n");
    for t in &p.throughput {
        println!(
            "{:<10} {} threads: {:>8.0} calls/s ({} in {:.2} s)",
            t.kind,
            t.threads,
            t.per_second(),
            t.calls,
            t.elapsed.as_secs_f64()
        );
    }
}

/// Group 8 as JSON: both groups' summaries, the throughput, the peers' versions.
pub(crate) fn to_json(p: &PeersResults) -> Value {
    let throughput: Vec<Value> = p
        .throughput
        .iter()
        .map(|t| {
            json!({
                "kind": t.kind,
                "threads": t.threads,
                "calls": t.calls,
                "seconds": t.elapsed.as_secs_f64(),
                "calls_per_s": t.per_second(),
            })
        })
        .collect();
    json!({
        "peers": {"procspawn": "default features off", "zygote": "default features (clone3)"},
        "big_arg_bytes": BIG_ARG_BYTES,
        "big_payload_bytes": BIG_PAYLOAD_BYTES,
        "calls": p.calls.to_json(),
        "workers": p.workers.to_json(),
        "throughput": throughput,
    })
}
