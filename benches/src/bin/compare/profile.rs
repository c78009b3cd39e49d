//! `--profile-loop`: spawns and nothing else, for `strace` or `perf`.

use std::fs::File;
use std::time::Instant;

use forkserver_benches::stats::{duration_ns, fmt_ns};
use forkserver_benches::Result;
use forkserver_client::{Client, Stdio};

use crate::args::Args;
use crate::raise_nofile_limit;
use crate::scenarios::{check, noop_call};

/// Spawns before `--wait-stdin` waits: the server's first-use costs (its clone stack, its
/// tables' growth) stay out of a trace attached after them.
const WARMUP: usize = 10;

/// `--profile-loop N [--fds K] [--threads T] [--exec] [--wait-stdin]`: N spawns and nothing
/// else, for `strace -c -p` or `perf stat`. With `--exec`, `/bin/true` with stdio on
/// `/dev/null` (the exec path: `FORKSERVER_EXEC_FORK=1` in the environment forces the fork
/// path); else the `noop` entry point with K fds (`FORKSERVER_PREFORK=4`: through a pool).
pub(crate) fn profile_loop(n: usize, args: &Args) -> Result<()> {
    let (fds, threads) = (
        args.profile_fds.unwrap_or(3),
        args.profile_threads.unwrap_or(1),
    );
    raise_nofile_limit();
    let client = Client::launch(std::env::current_exe()?)?;
    let pid = client.launched_server_pid().ok_or("no server pid")?;
    eprintln!("server pid {pid}");
    let devnull = File::open("/dev/null")?;
    let spawn_n = |count: usize, threads: usize| -> Result<()> {
        let results: Vec<Result<()>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (client, devnull) = (&client, &devnull);
                    s.spawn(move || -> Result<()> {
                        if args.profile_exec {
                            let mut cmd = client.command("/bin/true");
                            cmd.stdin(Stdio::null())
                                .stdout(Stdio::null())
                                .stderr(Stdio::null());
                            for _ in (t..count).step_by(threads) {
                                check(cmd.spawn()?.wait()?)?;
                            }
                        } else {
                            let mut call = noop_call(client, fds, devnull)?;
                            for _ in (t..count).step_by(threads) {
                                check(call.spawn()?.wait()?)?;
                            }
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
        results.into_iter().collect::<Result<Vec<()>>>().map(drop)
    };
    if args.profile_wait {
        spawn_n(WARMUP, 1)?;
        eprintln!("warmed up: waiting for a line on stdin");
        std::io::stdin().read_line(&mut String::new())?;
    }
    let start = Instant::now();
    spawn_n(n, threads)?;
    let d = start.elapsed();
    eprintln!(
        "{n} spawns in {:.3} s ({} each)",
        d.as_secs_f64(),
        fmt_ns(duration_ns(d) / n.max(1) as u64)
    );
    Ok(())
}
