//! A typed call against a raw entry `Call`, spawn to result, interleaved in one run (the first
//! figure of issue 15's typed-call section, before it joins `compare`):
//!
//! ```sh
//! cargo run --release -p forkserver-benches --example typed_call -- [N]
//! ```
//!
//! This binary is its own zygote server. The raw call runs `noop` (exit 0) and waits for the
//! exit; the typed call sends a small struct to `scale`, which returns one, and joins; the
//! worker call sends the same struct to one long-lived `scale` worker (issue 15, point 8),
//! started once, and reads its answer: the round trip without a fork.

use std::time::Instant;

use forkserver_benches::stats::{fmt_ns, ratio, Summary};
use forkserver_client::Client;
use forkserver_server::Zygote;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Job {
    name: String,
    w: u32,
    h: u32,
    factor: f64,
}

fn scale(j: Job) -> Job {
    Job {
        w: (f64::from(j.w) * j.factor) as u32,
        h: (f64::from(j.h) * j.factor) as u32,
        ..j
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    Zygote::new()
        .entry("noop", |_| 0)
        .typed("scale", scale)
        .worker("scale_worker", || (), |_: &mut (), j: Job| scale(j))
        .serve_if_requested();
    let n: usize = std::env::args().nth(1).map_or(Ok(2000), |a| a.parse())?;
    let client = Client::launch(std::env::current_exe()?)?;
    let job = || Job {
        name: "thumbnail".into(),
        w: 800,
        h: 600,
        factor: 0.25,
    };
    let (mut raw, mut typed) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut worker_calls = Vec::with_capacity(n);
    let mut worker = client.worker::<Job, Job>("scale_worker").spawn()?;
    for i in 0..n + n / 10 {
        let t = Instant::now();
        assert!(client.call("noop", Vec::new()).spawn()?.wait()?.success());
        let a = t.elapsed();
        let t = Instant::now();
        let out = client.typed::<Job, Job>("scale").spawn(&job())?.join()?;
        let b = t.elapsed();
        assert_eq!((out.w, out.h), (200, 150));
        let t = Instant::now();
        let out = worker.call(&job())?;
        let c = t.elapsed();
        assert_eq!((out.w, out.h), (200, 150));
        // The first tenth warms up (connections kept, pages touched).
        if i >= n / 10 {
            raw.push(a);
            typed.push(b);
            worker_calls.push(c);
        }
    }
    worker.close()?;
    let worker_calls = Summary::of(&worker_calls).ok_or("no samples")?;
    let (raw, typed) = (
        Summary::of(&raw).ok_or("no samples")?,
        Summary::of(&typed).ok_or("no samples")?,
    );
    for (name, s) in [
        ("raw Call (noop)", &raw),
        ("typed call (scale)", &typed),
        ("worker call (scale)", &worker_calls),
    ] {
        println!(
            "{name:20} n={} median {} p99 {}",
            s.n,
            fmt_ns(s.median_ns),
            fmt_ns(s.p99_ns)
        );
    }
    println!(
        "typed_vs_call {:.2}",
        ratio(&typed, &raw).unwrap_or(f64::NAN)
    );
    println!(
        "worker_call_vs_typed_call {:.3}",
        ratio(&worker_calls, &typed).unwrap_or(f64::NAN)
    );
    Ok(())
}
