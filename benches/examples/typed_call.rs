//! A typed call against a raw entry `Call`, spawn to result, interleaved in one run (the first
//! figure of issue 15's typed-call section, before it joins `compare`):
//!
//! ```sh
//! cargo run --release -p forkserver-benches --example typed_call -- [N]
//! cargo run --release -p forkserver-benches --example typed_call -- --threshold [N]
//! ```
//!
//! This binary is its own zygote server. The raw call runs `noop` (exit 0) and waits for the
//! exit; the typed call sends a small struct to `scale`, which returns one, and joins; the
//! worker call sends the same struct to one long-lived `scale` worker (issue 15, point 8),
//! started once, and reads its answer: the round trip without a fork; the 1 MiB calls send
//! 1 MiB (in a memfd, PROTOCOL.md §11.8) as a `Vec<u8>` to `digest` and as bytes (`Blob`,
//! what `serde_bytes` does) to `digest_blob`, which return its length.
//!
//! `--threshold` measures where large arguments should leave the payload (issue 15, point 5):
//! for each size, a call of `digest_blob` with a byte string of that size inline
//! (`inline_arg_max(usize::MAX)`) against the same call in a memfd (`inline_arg_max(0)`),
//! interleaved; `memfd_vs_inline` under 1 means the memfd is cheaper.

use std::time::Instant;

use forkserver_benches::stats::{fmt_ns, ratio, Summary};
use forkserver_benches::typed_values::{scale, Blob, Job};
use forkserver_client::Client;
use forkserver_server::Zygote;

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    Zygote::new()
        .entry("noop", |_| 0)
        .typed("scale", scale)
        .typed("digest", |v: Vec<u8>| v.len())
        .typed("digest_blob", |b: Blob| b.0.len())
        .worker("scale_worker", || (), |_: &mut (), j: Job| scale(j))
        .serve_if_requested();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let threshold = args.first().is_some_and(|a| a == "--threshold");
    if threshold {
        args.remove(0);
    }
    let client = Client::launch(std::env::current_exe()?)?;
    if threshold {
        let n: usize = args.first().map_or(Ok(300), |a| a.parse())?;
        return where_the_memfd_pays(&client, n);
    }
    let n: usize = args.first().map_or(Ok(2000), |a| a.parse())?;
    let job = Job::new;
    let (mut raw, mut typed) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut worker_calls = Vec::with_capacity(n);
    let (mut mib_calls, mut blob_calls) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mib: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let blob = Blob(mib.clone());
    let mut worker = client.worker::<Job, Job>("scale_worker").spawn()?;
    for i in 0..n + n / 10 {
        let t = Instant::now();
        assert!(client.call("noop", Vec::new()).spawn()?.wait()?.success());
        let a = t.elapsed();
        let t = Instant::now();
        let out = client.typed::<Job, Job>("scale").spawn(&job())?.join()?;
        let b = t.elapsed();
        assert!(out.is_scaled());
        let t = Instant::now();
        let out = worker.call(&job())?;
        let c = t.elapsed();
        assert!(out.is_scaled());
        let t = Instant::now();
        let len = client
            .typed::<Vec<u8>, usize>("digest")
            .spawn(&mib)?
            .join()?;
        let d = t.elapsed();
        assert_eq!(len, mib.len());
        let t = Instant::now();
        let len = client
            .typed::<Blob, usize>("digest_blob")
            .spawn(&blob)?
            .join()?;
        let e = t.elapsed();
        assert_eq!(len, mib.len());
        // The first tenth warms up (connections kept, pages touched).
        if i >= n / 10 {
            raw.push(a);
            typed.push(b);
            worker_calls.push(c);
            mib_calls.push(d);
            blob_calls.push(e);
        }
    }
    worker.close()?;
    let worker_calls = Summary::of(&worker_calls).ok_or("no samples")?;
    let mib_calls = Summary::of(&mib_calls).ok_or("no samples")?;
    let blob_calls = Summary::of(&blob_calls).ok_or("no samples")?;
    let (raw, typed) = (
        Summary::of(&raw).ok_or("no samples")?,
        Summary::of(&typed).ok_or("no samples")?,
    );
    for (name, s) in [
        ("raw Call (noop)", &raw),
        ("typed call (scale)", &typed),
        ("worker call (scale)", &worker_calls),
        ("1 MiB Vec<u8>", &mib_calls),
        ("1 MiB as bytes", &blob_calls),
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
    // MessagePack carries a `Vec<u8>` as an array of integers (1-2 bytes each, encoded and
    // decoded one by one), a `Blob` as `bin` (copied whole).
    println!(
        "typed_1mib_vec_vs_typed_small {:.2}",
        ratio(&mib_calls, &typed).unwrap_or(f64::NAN)
    );
    println!(
        "typed_1mib_bytes_vs_typed_small {:.2}",
        ratio(&blob_calls, &typed).unwrap_or(f64::NAN)
    );
    Ok(())
}

/// For each size, `n` calls with the argument inline and `n` in a memfd, interleaved.
fn where_the_memfd_pays(client: &Client, n: usize) -> Result<(), Error> {
    println!("size      inline median  memfd median  memfd_vs_inline");
    for kib in [1usize, 4, 8, 16, 24, 32, 48, 64, 128, 256, 512, 1000] {
        let blob = Blob((0..kib << 10).map(|i| (i % 251) as u8).collect());
        let (mut inline, mut memfd) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n + n / 10 {
            for (max, out) in [(usize::MAX, &mut inline), (0, &mut memfd)] {
                let t = Instant::now();
                let mut call = client.typed::<Blob, usize>("digest_blob");
                let len = call.inline_arg_max(max).spawn(&blob)?.join()?;
                let took = t.elapsed();
                assert_eq!(len, blob.0.len());
                if i >= n / 10 {
                    out.push(took);
                }
            }
        }
        let inline = Summary::of(&inline).ok_or("no samples")?;
        let memfd = Summary::of(&memfd).ok_or("no samples")?;
        println!(
            "{kib:4} KiB  {:>13}  {:>12}  {:.2}",
            fmt_ns(inline.median_ns),
            fmt_ns(memfd.median_ns),
            ratio(&memfd, &inline).unwrap_or(f64::NAN)
        );
    }
    Ok(())
}
