//! `--profile-loop`: spawns and nothing else, for `strace` or `perf`.

use std::fs::File;
use std::time::{Duration, Instant};

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
    let results: Vec<Result<Duration>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (client, devnull) = (&client, &devnull);
                s.spawn(move || -> Result<Duration> {
                    let mut call = noop_call(client, fds, devnull)?;
                    let cpu0 = thread_cpu()?;
                    for _ in (t..n).step_by(threads) {
                        check(call.spawn()?.wait()?)?;
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
    let cpu: Duration = results
        .into_iter()
        .collect::<Result<Vec<_>>>()?
        .iter()
        .sum();
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
