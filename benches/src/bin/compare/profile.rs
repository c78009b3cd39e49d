//! `--profile-loop`: spawns and nothing else, for `strace` or `perf`.

use std::fs::File;
use std::time::Instant;

use forkserver_benches::stats::{duration_ns, fmt_ns};
use forkserver_benches::Result;
use forkserver_client::Client;

use crate::raise_nofile_limit;
use crate::scenarios::{check, noop_call};

/// `--profile-loop N [--fds K]`: N spawns and nothing else, for `strace -ff` or `perf stat`.
pub(crate) fn profile_loop(n: usize, fds: u32, threads: usize) -> Result<()> {
    raise_nofile_limit();
    let client = Client::launch(std::env::current_exe()?)?;
    let pid = client.launched_server_pid().ok_or("no server pid")?;
    eprintln!("server pid {pid}");
    let devnull = File::open("/dev/null")?;
    let start = Instant::now();
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (client, devnull) = (&client, &devnull);
                s.spawn(move || -> Result<()> {
                    let mut call = noop_call(client, fds, devnull)?;
                    for _ in (t..n).step_by(threads) {
                        check(call.spawn()?.wait()?)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect()
    });
    results.into_iter().collect::<Result<Vec<()>>>()?;
    let d = start.elapsed();
    eprintln!(
        "{n} spawns in {:.3} s ({} each)",
        d.as_secs_f64(),
        fmt_ns(duration_ns(d) / n.max(1) as u64)
    );
    Ok(())
}
