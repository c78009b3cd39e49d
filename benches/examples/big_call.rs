//! A raw entry `Call` with a large payload against an empty one, spawn to exit code,
//! interleaved in one run (where a payload's bytes cost; see BENCHMARKS.md, "Large payloads
//! and the typed layer's overhead"):
//!
//! ```sh
//! cargo run --release -p forkserver-benches --example big_call -- [N] [BYTES] [raw|typed|both]
//! ```
//!
//! This binary is its own zygote server. `noop` ignores its payload and exits 0; the big
//! call sends `BYTES` (default 1 MiB − 4 KiB, as `compare`'s group 8) of payload to it. With
//! `typed` (or `both`) it also times a typed call of `scale` against the raw empty call (the
//! typed layer's overhead). For `strace -c -f` or callgrind, run one kind alone
//! (`raw`, `typed`); `BIG_CALL_SERVER=PROGRAM` launches the server through `PROGRAM` instead
//! of this binary (a script that runs this binary under callgrind, say).

use std::time::Instant;

use forkserver_benches::stats::{fmt_ns, ratio, Summary};
use forkserver_benches::typed_values::{scale, Job};
use forkserver_client::Client;
use forkserver_server::Zygote;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    Zygote::new()
        .entry("noop", |_| 0)
        .typed("scale", scale)
        .serve_if_requested();
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(500), |a| a.parse())?;
    let bytes: usize = args.next().map_or(Ok((1 << 20) - 4096), |a| a.parse())?;
    let kind = args.next().unwrap_or_else(|| "both".into());
    let (do_raw, do_typed) = match kind.as_str() {
        "raw" => (true, false),
        "typed" => (false, true),
        _ => (true, true),
    };
    // `BIG_CALL_SERVER=wrapper`: the server launched through a program of one's own, e.g. a
    // script that runs this binary under `valgrind --tool=callgrind --trace-children=yes`.
    let server =
        std::env::var_os("BIG_CALL_SERVER").map_or_else(std::env::current_exe, |p| Ok(p.into()))?;
    let client = Client::launch(server)?;
    let mut empty = client.call("noop", Vec::new());
    let mut big = client.call("noop", vec![7; bytes]);
    let mut typed = client.typed::<Job, Job>("scale");
    let job = Job::new;
    let (mut e, mut b, mut t) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n + n / 10 {
        let s = Instant::now();
        assert!(empty.spawn()?.wait()?.success());
        let a = s.elapsed();
        let mut bb = None;
        if do_raw {
            let s = Instant::now();
            assert!(big.spawn()?.wait()?.success());
            bb = Some(s.elapsed());
        }
        let mut tt = None;
        if do_typed {
            let j = job();
            let s = Instant::now();
            let out = typed.spawn(&j)?.join()?;
            tt = Some(s.elapsed());
            assert!(out.is_scaled());
        }
        // The first tenth warms up (connections kept, pages touched).
        if i >= n / 10 {
            e.push(a);
            b.extend(bb);
            t.extend(tt);
        }
    }
    let empty = Summary::of(&e).ok_or("no samples")?;
    let show = |name: &str, s: &Summary| {
        println!(
            "{name:24} n={} median {} p99 {}",
            s.n,
            fmt_ns(s.median_ns),
            fmt_ns(s.p99_ns)
        )
    };
    show("raw Call, empty", &empty);
    if let Some(big) = Summary::of(&b) {
        show(&format!("raw Call, {bytes} B"), &big);
        println!(
            "big_vs_empty {:.2}",
            ratio(&big, &empty).unwrap_or(f64::NAN)
        );
    }
    if let Some(typed) = Summary::of(&t) {
        show("typed call (scale)", &typed);
        println!(
            "typed_vs_call {:.2}",
            ratio(&typed, &empty).unwrap_or(f64::NAN)
        );
    }
    Ok(())
}
