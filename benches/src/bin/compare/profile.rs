//! `--profile-loop`: spawns and nothing else, for `strace` or `perf`.

use std::fs::File;
use std::time::{Duration, Instant};

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
    // `count` spawns over `threads` threads; the client threads' CPU time.
    let spawn_n = |count: usize, threads: usize| -> Result<Duration> {
        let results: Vec<Result<Duration>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (client, devnull) = (&client, &devnull);
                    s.spawn(move || -> Result<Duration> {
                        let cpu0 = thread_cpu()?;
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
                        Ok(thread_cpu()? - cpu0)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
                .collect()
        });
        Ok(results
            .into_iter()
            .collect::<Result<Vec<_>>>()?
            .iter()
            .sum())
    };
    if args.profile_wait {
        spawn_n(WARMUP, 1)?;
        eprintln!("warmed up: waiting for a line on stdin");
        std::io::stdin().read_line(&mut String::new())?;
    }
    let start = Instant::now();
    let cpu = spawn_n(n, threads)?;
    let d = start.elapsed();
    let each = |d: Duration| fmt_ns(duration_ns(d) / n.max(1) as u64);
    eprintln!(
        "{n} spawns in {:.3} s ({} each); the client threads' own CPU time (user + system, \
         the server's not included): {} per spawn",
        d.as_secs_f64(),
        each(d),
        each(cpu)
    );
    Ok(())
}

/// The calling thread's CPU time so far, user and system (`getrusage(RUSAGE_THREAD)`).
fn thread_cpu() -> Result<Duration> {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_THREAD)?;
    let tv =
        |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    Ok(tv(u.user_time()) + tv(u.system_time()))
}
