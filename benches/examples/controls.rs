//! The cost of the per-child controls of protocol rev 0.6 (issue 17, point 4): an exec of
//! `/bin/true` with every control against one with none, spawn to exit, interleaved in one
//! run; `compare` measures the same as `controls_vs_none` (group 3, `ours_exec_true_controls`
//! against `ours_exec_true`, stdio on `/dev/null` there):
//!
//! ```sh
//! cargo run --release -p forkserver-benches --example controls -- [N]
//! ```
//!
//! This binary is its own server (`Client::launch`), so exec jobs take the `CLONE_VM` path.
//! "All" is [`with_controls`] (shared with `compare`).

use std::time::Instant;

use forkserver_benches::controls::with_controls;
use forkserver_benches::stats::{fmt_ns, ratio, Summary};
use forkserver_client::Client;
use forkserver_server::Zygote;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    Zygote::new().serve_if_requested();
    let n: usize = std::env::args().nth(1).map_or(Ok(2000), |a| a.parse())?;
    let client = Client::launch(std::env::current_exe()?)?;
    let (mut none, mut all) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n + n / 10 {
        let t = Instant::now();
        assert!(client.command("/bin/true").status()?.success());
        let a = t.elapsed();
        let t = Instant::now();
        assert!(with_controls(&mut client.command("/bin/true"))
            .status()?
            .success());
        let b = t.elapsed();
        // The first tenth warms up (connections kept, pages touched).
        if i >= n / 10 {
            none.push(a);
            all.push(b);
        }
    }
    let (none, all) = (
        Summary::of(&none).ok_or("no samples")?,
        Summary::of(&all).ok_or("no samples")?,
    );
    for (name, s) in [("no controls", &none), ("every control", &all)] {
        println!(
            "{name:14} n={} median {} p99 {}",
            s.n,
            fmt_ns(s.median_ns),
            fmt_ns(s.p99_ns)
        );
    }
    println!(
        "controls_vs_none {:.2}",
        ratio(&all, &none).unwrap_or(f64::NAN)
    );
    Ok(())
}
