//! The comparative benchmark harness: forkserver against `fork()` in the caller,
//! `std::process::Command`, and CPython's `multiprocessing` forkserver, in one run.
//!
//! ```sh
//! cargo run --release -p forkserver-benches --bin compare -- [--quick] [--json FILE] [--svg DIR]
//! ```
//!
//! This binary is its own zygote server: launched by itself (`Client::launch(current_exe)`), it
//! serves the entry point `noop`, which returns 0 at once. Scenarios of a group run interleaved
//! (round-robin) after a warm-up; each reports median, p90 and p99. What each group measures
//! and why is in `benches/BENCHMARKS.md`.
#![deny(clippy::undocumented_unsafe_blocks)]

use std::fs::File;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use forkserver_benches::ballast::{fmt_bytes, Ballast};
use forkserver_benches::cpython::CPython;
use forkserver_benches::interleave::{self, Scenario};
use forkserver_benches::small_client::SmallClient;
use forkserver_benches::stats::{duration_ns, fmt_ns, ratio, Summary};
use forkserver_benches::svg::{Chart, Series};
use forkserver_benches::{direct, procfs, Result};
use forkserver_client::{Call, Client, Stdio};
use serde_json::{json, Map, Value};

const USAGE: &str = "\
usage: compare [--quick] [--json FILE] [--svg DIR] [--profile-loop N [--fds K] [--threads T]]

  --quick           fewer iterations and smaller client RSS (256 MiB, 1 GiB): under a minute
  --json FILE       write every summary and the ratios as JSON to FILE
  --svg DIR         write latency_vs_fds.svg and latency_vs_rss.svg into DIR
  --profile-loop N  only run N noop spawns (spawn+wait) and print the server's pid
                    (for strace/perf; nothing is measured)
  --fds K           fds in the bundle of --profile-loop (default 3)
  --threads T       client threads of --profile-loop, sharing one Client (default 1)
";

/// Fd counts of the bundle in the latency group.
const FD_COUNTS: [u32; 4] = [0, 3, 64, 256];
/// Pause after writing the client-RSS group's ballast, before measuring (see `rss_group`).
const RSS_COOL_DOWN: Duration = Duration::from_secs(1);

/// Client thread counts of the throughput group.
const THREADS: [usize; 3] = [1, 2, 4];
const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;

/// Command-line options.
#[derive(Debug, Default)]
struct Args {
    quick: bool,
    json: Option<PathBuf>,
    svg: Option<PathBuf>,
    profile_loop: Option<usize>,
    profile_fds: Option<u32>,
    profile_threads: Option<usize>,
    /// Internal: run as the small client of the RSS group (`small_client::serve`).
    small_client: Option<PathBuf>,
}

fn parse_args() -> std::result::Result<Args, String> {
    let mut args = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--quick" => args.quick = true,
            "--json" => args.json = Some(value("--json")?.into()),
            "--svg" => args.svg = Some(value("--svg")?.into()),
            "--profile-loop" => {
                let v = value("--profile-loop")?;
                args.profile_loop = Some(v.parse().map_err(|_| format!("bad count {v:?}"))?);
            }
            "--fds" => {
                let v = value("--fds")?;
                args.profile_fds = Some(v.parse().map_err(|_| format!("bad count {v:?}"))?);
            }
            "--threads" => {
                let v = value("--threads")?;
                let t = v.parse().ok().filter(|&t| t > 0);
                args.profile_threads = Some(t.ok_or_else(|| format!("bad count {v:?}"))?);
            }
            "--small-client" => args.small_client = Some(value("--small-client")?.into()),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

/// How much of everything to do.
#[derive(Debug)]
struct Plan {
    latency_warmup: usize,
    latency_rounds: usize,
    exec_warmup: usize,
    exec_rounds: usize,
    rss_sizes: Vec<usize>,
    rss_warmup: usize,
    rss_rounds: usize,
    cpython_batch: usize,
    cpython_rounds: usize,
    throughput_rounds: usize,
    throughput_slice: Duration,
    footprint_spawns: u64,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                latency_warmup: 20,
                latency_rounds: 300,
                exec_warmup: 10,
                exec_rounds: 200,
                rss_sizes: vec![0, 256 * MIB, GIB],
                rss_warmup: 2,
                rss_rounds: 15,
                cpython_batch: 10,
                cpython_rounds: 8,
                throughput_rounds: 3,
                throughput_slice: Duration::from_millis(300),
                footprint_spawns: 2_000,
            }
        } else {
            Plan {
                latency_warmup: 100,
                latency_rounds: 3_000,
                exec_warmup: 50,
                exec_rounds: 1_000,
                rss_sizes: vec![0, GIB, 4 * GIB, 8 * GIB],
                rss_warmup: 2,
                rss_rounds: 25,
                cpython_batch: 10,
                cpython_rounds: 30,
                throughput_rounds: 5,
                throughput_slice: Duration::from_secs(1),
                footprint_spawns: 10_000,
            }
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "latency": {"warmup": self.latency_warmup, "rounds": self.latency_rounds},
            "exec": {"warmup": self.exec_warmup, "rounds": self.exec_rounds},
            "rss": {"sizes_bytes": self.rss_sizes, "warmup": self.rss_warmup,
                    "rounds": self.rss_rounds},
            "cpython": {"batch": self.cpython_batch, "rounds": self.cpython_rounds},
            "throughput": {"rounds": self.throughput_rounds,
                           "slice_ms": self.throughput_slice.as_millis() as u64},
            "footprint_spawns": self.footprint_spawns,
        })
    }
}

fn main() -> ExitCode {
    // Launched by ourselves as the server: serve and never return.
    forkserver_server::Zygote::new()
        .entry("noop", |_| 0)
        .serve_if_requested();

    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("compare: {msg}");
            }
            eprint!("{USAGE}");
            return if msg.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    let result = match (&args.small_client, args.profile_loop) {
        (Some(socket), _) => forkserver_benches::small_client::serve(socket),
        (None, Some(n)) => profile_loop(
            n,
            args.profile_fds.unwrap_or(3),
            args.profile_threads.unwrap_or(1),
        ),
        (None, None) => run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare: {e}");
            ExitCode::FAILURE
        }
    }
}

// ----- the scenarios -------------------------------------------------------------------------

/// A `noop` call whose bundle holds `nfds` duplicates of `/dev/null` at targets `0..nfds`.
/// The builder keeps them and duplicates them again at each spawn, as it does for any user.
fn noop_call(client: &Client, nfds: u32, devnull: &File) -> Result<Call> {
    let mut call = client.call("noop", Vec::new());
    for target in 0..nfds {
        call.fd(target, devnull.try_clone()?);
    }
    Ok(call)
}

/// Ours, request → pid: `spawn` returning. The child is waited for outside the timed region.
fn ours_pid(mut call: Call) -> impl FnMut() -> Result<Duration> {
    move || {
        let start = Instant::now();
        let mut child = call.spawn()?;
        let elapsed = start.elapsed();
        check(child.wait()?)?;
        Ok(elapsed)
    }
}

/// Ours, request → exit code: `spawn` then `wait`.
fn ours_exit(mut call: Call) -> impl FnMut() -> Result<Duration> {
    move || {
        let start = Instant::now();
        let status = call.spawn()?.wait()?;
        let elapsed = start.elapsed();
        check(status)?;
        Ok(elapsed)
    }
}

fn check(status: forkserver_client::ExitStatus) -> Result<()> {
    if status.success() {
        Ok(())
    } else {
        Err(format!("child ended with {status}").into())
    }
}

/// Fails unless this process has one thread: the direct-fork figures must come from a
/// single-threaded process, like the server's.
fn ensure_single_threaded(what: &str) -> Result<()> {
    match procfs::thread_count() {
        1 => Ok(()),
        n => Err(format!("{what}: the harness has {n} threads, expected 1").into()),
    }
}

/// The results of one interleaved group, by scenario name.
#[derive(Debug, Default)]
struct Group(Vec<(String, Summary)>);

impl Group {
    fn get(&self, name: &str) -> Result<&Summary> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
            .ok_or_else(|| format!("no result for {name}").into())
    }

    fn to_json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(n, s)| (n.clone(), s.to_json()))
                .collect::<Map<_, _>>(),
        )
    }
}

/// Group 1 and 2: the limit (`fork` in this small process) and ours through the client, with
/// 0, 3, 64 and 256 fds in the bundle.
///
/// `client` is the library's default: its connections are reused (`KEEP_CONNECTION`), so in
/// a stream of spawns each one is a single round trip on an authenticated connection.
///
/// `cold` is a second client of the same server with reuse off (`set_max_idle_connections(0)`):
/// every spawn connects, says Hello, authenticates (two round trips, PROTOCOL.md §9) and sends
/// its request, as the first spawn of a process (and every spawn before rev 0.3) does.
///
/// `cold_noauth` is a client, reuse off, of a server launched with `authenticate(false)`: what
/// the per-connection HMAC handshake costs.
///
/// `prefork` is a client (reuse on) of a server with a pool of pre-forked children
/// (`FORKSERVER_PREFORK=4`): the fork is off the critical path there.
fn latency_group(
    client: &Client,
    cold: &Client,
    cold_noauth: &Client,
    prefork: &Client,
    plan: &Plan,
) -> Result<Group> {
    ensure_single_threaded("latency group")?;
    let devnull = File::open("/dev/null")?;
    let mut scenarios = vec![
        Scenario::new("limit_fork_exit_wait", direct::fork_exit_wait),
        Scenario::new("limit_fork_to_pid", direct::fork_to_pid),
    ];
    for n in FD_COUNTS {
        scenarios.push(Scenario::new(
            format!("ours_pid_fds{n}"),
            ours_pid(noop_call(client, n, &devnull)?),
        ));
        scenarios.push(Scenario::new(
            format!("ours_exit_fds{n}"),
            ours_exit(noop_call(client, n, &devnull)?),
        ));
    }
    for (suffix, c) in [("cold", cold), ("cold_noauth", cold_noauth)] {
        scenarios.push(Scenario::new(
            format!("ours_pid_fds3_{suffix}"),
            ours_pid(noop_call(c, 3, &devnull)?),
        ));
        scenarios.push(Scenario::new(
            format!("ours_exit_fds3_{suffix}"),
            ours_exit(noop_call(c, 3, &devnull)?),
        ));
    }
    scenarios.push(Scenario::new(
        "ours_pid_fds3_prefork",
        ours_pid(noop_call(prefork, 3, &devnull)?),
    ));
    scenarios.push(Scenario::new(
        "ours_exit_fds3_prefork",
        ours_exit(noop_call(prefork, 3, &devnull)?),
    ));
    let r = interleave::run(&mut scenarios, plan.latency_warmup, plan.latency_rounds)?;
    Ok(Group(r))
}

/// Group 3: exec mode, `/bin/true` through the server against `std::process::Command` from
/// this process, all with stdin, stdout and stderr on `/dev/null`, spawn + wait.
fn exec_group(client: &Client, plan: &Plan) -> Result<Group> {
    let ours = |wait_for_exec: bool| {
        let mut cmd = client.command("/bin/true");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .wait_for_exec(wait_for_exec);
        move || -> Result<Duration> {
            let start = Instant::now();
            let status = cmd.spawn()?.wait()?;
            let elapsed = start.elapsed();
            check(status)?;
            Ok(elapsed)
        }
    };
    let mut scenarios = vec![
        Scenario::new("ours_exec_true", ours(true)),
        Scenario::new("ours_exec_true_nowait", ours(false)),
        Scenario::new("std_command_true", std_command_true),
    ];
    let r = interleave::run(&mut scenarios, plan.exec_warmup, plan.exec_rounds)?;
    Ok(Group(r))
}

/// `std::process::Command::new("/bin/true")` from this process, stdio on `/dev/null`,
/// spawn + wait. std uses `posix_spawn` here (`clone(CLONE_VM|CLONE_VFORK)`): no page tables
/// are copied, whatever this process's size.
fn std_command_true() -> Result<Duration> {
    use std::process::{Command, Stdio};
    let start = Instant::now();
    let status = Command::new("/bin/true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?
        .wait()?;
    let elapsed = start.elapsed();
    if !status.success() {
        return Err(format!("/bin/true: {status}").into());
    }
    Ok(elapsed)
}

/// Group 4 at one client size: the figures with `bytes` of touched heap in this process.
#[derive(Debug)]
struct RssStep {
    bytes: usize,
    client_rss_kib: u64,
    touch_time: Duration,
    group: Group,
}

/// Group 4: client RSS. At each size: allocate and touch, then interleave a direct fork of
/// this process with a spawn through the server (and `std::process::Command`, which uses
/// `posix_spawn`, i.e. `CLONE_VM|CLONE_VFORK`, and copies no page tables); free.
fn rss_group(client: &Client, plan: &Plan) -> Result<Vec<RssStep>> {
    let devnull = File::open("/dev/null")?;
    // A second client process that stays small, through the same server, interleaved.
    let key = client.auth_key().ok_or("the launched server has no key")?;
    let mut small = SmallClient::start(&std::env::current_exe()?, &client.socket_path(), &key)?;
    let mut steps = Vec::new();
    for &bytes in &plan.rss_sizes {
        ensure_single_threaded("rss group")?;
        eprintln!("  client RSS +{}: touching...", fmt_bytes(bytes));
        let ballast = Ballast::new(bytes);
        let client_rss_kib = procfs::vm_rss_kib("self").unwrap_or(0);
        // Writing the ballast took this process seconds of CPU, and the scheduler holds that
        // against its next wake-ups (load tracking decays over tens of ms): let it decay, or
        // the figures below would show the CPU history of the process, not its size.
        std::thread::sleep(RSS_COOL_DOWN);
        // Ours from this big process, ours from the small helper, and std, interleaved.
        let mut scenarios = vec![
            Scenario::new("ours_exit_fds0", ours_exit(noop_call(client, 0, &devnull)?)),
            Scenario::batch("ours_exit_fds0_small_client", |out| small.batch(1, out)),
            Scenario::new("std_command_true", std_command_true),
        ];
        let mut r = interleave::run(&mut scenarios, plan.rss_warmup, plan.rss_rounds)?;
        drop(scenarios);
        // Then the direct fork, which burns a lot of CPU in this process at every call (page
        // tables copied), interleaved with ours once more: what a client that also forks
        // directly sees.
        let mut scenarios = vec![
            Scenario::new("direct_fork_exit_wait", direct::fork_exit_wait),
            Scenario::new(
                "ours_exit_fds0_amid_direct_forks",
                ours_exit(noop_call(client, 0, &devnull)?),
            ),
        ];
        r.extend(interleave::run(
            &mut scenarios,
            plan.rss_warmup,
            plan.rss_rounds,
        )?);
        steps.push(RssStep {
            bytes,
            client_rss_kib,
            touch_time: ballast.touch_time(),
            group: Group(r),
        });
        drop(ballast);
    }
    Ok(steps)
}

/// Group 5: CPython's forkserver against ours, in interleaved batches. `None` if there is no
/// `python3`.
fn cpython_group(client: &Client, plan: &Plan) -> Result<Option<(Group, String)>> {
    let Some(mut py) = CPython::start()? else {
        return Ok(None);
    };
    let version = py.version().to_owned();
    let devnull = File::open("/dev/null")?;
    let batch = plan.cpython_batch;
    let mut ours = ours_exit(noop_call(client, 0, &devnull)?);
    let mut scenarios = vec![
        Scenario::batch("cpython_forkserver_start_join", |out| py.batch(batch, out)),
        Scenario::batch("ours_exit_fds0", |out| {
            for _ in 0..batch {
                out.push(ours()?);
            }
            Ok(())
        }),
    ];
    let r = interleave::run(&mut scenarios, 1, plan.cpython_rounds)?;
    Ok(Some((Group(r), version)))
}

/// One throughput figure.
#[derive(Debug, Clone, Copy)]
struct Throughput {
    /// Ours (`false`), or the limit (`true`): each thread forks this process itself.
    limit: bool,
    threads: usize,
    spawns: u64,
    elapsed: Duration,
}

impl Throughput {
    fn per_second(&self) -> f64 {
        self.spawns as f64 / self.elapsed.as_secs_f64()
    }
}

/// `threads` threads sharing `client`, each spawning `noop` and waiting, until `slice` has
/// passed.
fn throughput_slice(client: &Client, threads: usize, slice: Duration) -> Result<(u64, Duration)> {
    slice_of(threads, slice, || {
        let mut call = client.call("noop", Vec::new());
        move || check(call.spawn()?.wait()?)
    })
}

/// The limit's counterpart of [`throughput_slice`]: each thread forks this (small) process,
/// the child calls `_exit(0)`, the thread reaps it.
fn limit_throughput_slice(threads: usize, slice: Duration) -> Result<(u64, Duration)> {
    slice_of(threads, slice, || {
        || {
            direct::fork_exit_wait()?;
            Ok(())
        }
    })
}

/// `threads` threads, each running the operation `make` gives it until `slice` has passed:
/// how many ran, in how long.
fn slice_of<F, Op>(threads: usize, slice: Duration, make: F) -> Result<(u64, Duration)>
where
    F: Fn() -> Op + Sync,
    Op: FnMut() -> Result<()>,
{
    let start = Instant::now();
    let deadline = start + slice;
    let counts: Vec<Result<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<u64> {
                    let mut op = make();
                    let mut n = 0;
                    while Instant::now() < deadline {
                        op()?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect()
    });
    let elapsed = start.elapsed();
    let mut total = 0;
    for c in counts {
        total += c?;
    }
    Ok((total, elapsed))
}

/// Group 6: spawns per second to exit code with 1, 2 and 4 client threads, in rotated rounds.
fn throughput_group(client: &Client, plan: &Plan) -> Result<Vec<Throughput>> {
    let mut acc: Vec<Throughput> = [false, true]
        .into_iter()
        .flat_map(|limit| {
            THREADS.iter().map(move |&threads| Throughput {
                limit,
                threads,
                spawns: 0,
                elapsed: Duration::ZERO,
            })
        })
        .collect();
    // Warm-up: one short slice at the largest thread count.
    throughput_slice(
        client,
        THREADS[THREADS.len() - 1],
        Duration::from_millis(100),
    )?;
    let n = acc.len();
    for round in 0..plan.throughput_rounds {
        for j in 0..n {
            let t = &mut acc[(round + j) % n];
            let (n, d) = if t.limit {
                limit_throughput_slice(t.threads, plan.throughput_slice)?
            } else {
                throughput_slice(client, t.threads, plan.throughput_slice)?
            };
            t.spawns += n;
            t.elapsed += d;
        }
    }
    Ok(acc)
}

/// The launched server's memory and fds.
#[derive(Debug, Clone, Copy)]
struct Footprint {
    spawned_total: u64,
    vm_rss_kib: u64,
    vm_hwm_kib: u64,
    fds: usize,
}

/// The server's footprint, read from `/proc` once it has had a moment to close the last
/// connection; then its spawn counter (whose connection is not counted in `fds`).
fn footprint(client: &Client, pid: u32) -> Result<Footprint> {
    std::thread::sleep(Duration::from_millis(50));
    let p = pid.to_string();
    let vm_rss_kib = procfs::vm_rss_kib(&p).ok_or("server VmRSS")?;
    let vm_hwm_kib = procfs::vm_hwm_kib(&p).ok_or("server VmHWM")?;
    let fds = procfs::fd_count(&p).ok_or("server fds")?;
    Ok(Footprint {
        spawned_total: client.status()?.spawned_total(),
        vm_rss_kib,
        vm_hwm_kib,
        fds,
    })
}

impl Footprint {
    fn to_json(self) -> Value {
        json!({
            "spawned_total": self.spawned_total,
            "vm_rss_kib": self.vm_rss_kib,
            "vm_hwm_kib": self.vm_hwm_kib,
            "fds": self.fds,
        })
    }
}

/// Group 7, second half: spawns until the server has forked `target` children in all, then
/// its footprint.
fn footprint_after(client: &Client, pid: u32, target: u64) -> Result<Footprint> {
    let done = client.status()?.spawned_total();
    let mut call = client.call("noop", Vec::new());
    for _ in done..target {
        check(call.spawn()?.wait()?)?;
    }
    footprint(client, pid)
}

/// `--profile-loop N [--fds K]`: N spawns and nothing else, for `strace -ff` or `perf stat`.
fn profile_loop(n: usize, fds: u32, threads: usize) -> Result<()> {
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

// ----- the run -------------------------------------------------------------------------------

/// Everything measured.
#[derive(Debug)]
struct Results {
    quick: bool,
    harness_rss_kib: u64,
    latency: Group,
    exec: Group,
    rss: Vec<RssStep>,
    cpython: Option<(Group, String)>,
    throughput: Vec<Throughput>,
    server_pid: u32,
    idle: Footprint,
    after: Footprint,
}

fn run(args: &Args) -> Result<()> {
    let plan = Plan::new(args.quick);
    let t0 = Instant::now();
    raise_nofile_limit();
    let client = Client::launch(std::env::current_exe()?)?;
    let server_pid = client.launched_server_pid().ok_or("no server pid")?;
    let idle = footprint(&client, server_pid)?;
    let harness_rss_kib = procfs::vm_rss_kib("self").unwrap_or(0);

    eprintln!("[1-2/7] latency: fork limit vs ours, 0/3/64/256 fds");
    let cold = Client::connect_with_key(
        client.socket_path(),
        client.auth_key().ok_or("the launched server has no key")?,
    )?;
    cold.set_max_idle_connections(0);
    let cold_noauth = Client::launcher(std::env::current_exe()?)
        .authenticate(false)
        .launch()?;
    cold_noauth.set_max_idle_connections(0);
    let prefork = Client::launcher(std::env::current_exe()?)
        .env(forkserver_server::PREFORK_ENV, "4")
        .launch()?;
    let latency = latency_group(&client, &cold, &cold_noauth, &prefork, &plan)?;
    drop(cold);
    drop(cold_noauth);
    drop(prefork);
    eprintln!("[3/7] exec: /bin/true through the server vs std::process::Command");
    let exec = exec_group(&client, &plan)?;
    eprintln!("[4/7] client RSS");
    let rss = rss_group(&client, &plan)?;
    eprintln!("[5/7] CPython multiprocessing forkserver");
    let cpython = cpython_group(&client, &plan)?;
    if cpython.is_none() {
        eprintln!("  python3 not found: skipped");
    }
    eprintln!("[6/7] throughput: 1, 2, 4 client threads");
    let throughput = throughput_group(&client, &plan)?;
    eprintln!("[7/7] server footprint");
    let after = footprint_after(&client, server_pid, plan.footprint_spawns)?;

    let results = Results {
        quick: args.quick,
        harness_rss_kib,
        latency,
        exec,
        rss,
        cpython,
        throughput,
        server_pid,
        idle,
        after,
    };
    let ratios = ratios(&results)?;
    print_tables(&results, &ratios);
    eprintln!("total time {:.1} s", t0.elapsed().as_secs_f64());
    if let Some(path) = &args.json {
        let doc = to_json(&results, &plan, ratios);
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(dir) = &args.svg {
        std::fs::create_dir_all(dir)?;
        for (name, chart) in charts(&results)? {
            let path = dir.join(name);
            std::fs::write(&path, chart.render()?)?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// The 256-fd scenarios hold 256 fds in the builder and 256 more per spawn: make sure the
/// soft fd limit allows it (raised to the hard limit).
fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// The headline ratios (medians). In `--quick` the `rss8g_*` ratios use the largest size
/// measured, named in `rss_largest`.
fn ratios(r: &Results) -> Result<Map<String, Value>> {
    let l = &r.latency;
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<f64>| {
        m.insert(k.to_owned(), v.map_or(Value::Null, Value::from));
    };
    // Within the latency group: (key, numerator, denominator).
    for (key, num, den) in [
        ("exit_vs_limit", "ours_exit_fds3", "limit_fork_exit_wait"),
        ("pid_vs_limit", "ours_pid_fds3", "limit_fork_to_pid"),
        (
            "pid_prefork_vs_limit",
            "ours_pid_fds3_prefork",
            "limit_fork_to_pid",
        ),
        (
            "exit_cold_vs_limit",
            "ours_exit_fds3_cold",
            "limit_fork_exit_wait",
        ),
        (
            "pid_cold_vs_limit",
            "ours_pid_fds3_cold",
            "limit_fork_to_pid",
        ),
        (
            "exit_prefork_vs_limit",
            "ours_exit_fds3_prefork",
            "limit_fork_exit_wait",
        ),
        (
            "exit_cold_auth_vs_noauth",
            "ours_exit_fds3_cold",
            "ours_exit_fds3_cold_noauth",
        ),
        (
            "exit_reused_vs_cold",
            "ours_exit_fds3",
            "ours_exit_fds3_cold",
        ),
        ("fds256_vs_fds3", "ours_exit_fds256", "ours_exit_fds3"),
    ] {
        put(key, ratio(l.get(num)?, l.get(den)?));
    }
    put(
        "exec_ours_vs_std",
        ratio(
            r.exec.get("ours_exec_true")?,
            r.exec.get("std_command_true")?,
        ),
    );
    put(
        "cpython_vs_ours",
        match &r.cpython {
            Some((g, _)) => ratio(
                g.get("cpython_forkserver_start_join")?,
                g.get("ours_exit_fds0")?,
            ),
            None => None,
        },
    );
    let small = r.rss.first().ok_or("no rss step")?;
    let large = r.rss.last().ok_or("no rss step")?;
    // Ours from the big harness against ours from the small helper process, interleaved in
    // the same group (same minutes, same machine state).
    put(
        "rss8g_vs_small",
        ratio(
            large.group.get("ours_exit_fds0")?,
            large.group.get("ours_exit_fds0_small_client")?,
        ),
    );
    // Ours from the big harness while it also forks itself directly (its CPU history weighs on
    // its wake-ups) against the small client.
    put(
        "rss8g_amid_direct_forks_vs_small",
        ratio(
            large.group.get("ours_exit_fds0_amid_direct_forks")?,
            large.group.get("ours_exit_fds0_small_client")?,
        ),
    );
    // The same against the harness itself before its ballast: groups minutes apart, so this
    // one also carries the drift of the machine between them.
    put(
        "rss8g_vs_unballasted",
        ratio(
            large.group.get("ours_exit_fds0")?,
            small.group.get("ours_exit_fds0")?,
        ),
    );
    put(
        "direct_fork_8g_vs_small",
        ratio(
            large.group.get("direct_fork_exit_wait")?,
            small.group.get("direct_fork_exit_wait")?,
        ),
    );
    put(
        "direct_fork_8g_vs_ours_8g",
        ratio(
            large.group.get("direct_fork_exit_wait")?,
            large.group.get("ours_exit_fds0")?,
        ),
    );
    let tp = |limit: bool, n: usize| {
        r.throughput
            .iter()
            .find(|t| t.threads == n && t.limit == limit)
            .map(Throughput::per_second)
    };
    put("threads2_spawns_per_s", tp(false, 2));
    put("threads1_spawns_per_s", tp(false, 1));
    put("threads4_spawns_per_s", tp(false, 4));
    put("limit_threads2_spawns_per_s", tp(true, 2));
    put(
        "threads2_vs_limit",
        tp(false, 2).zip(tp(true, 2)).map(|(a, b)| a / b),
    );
    m.insert("rss_largest".into(), Value::from(fmt_bytes(large.bytes)));
    m.insert(
        "notes".into(),
        Value::from(
            "medians; exit_vs_limit and pid_vs_limit use the 3-fd bundle (targets 0-2 on \
             /dev/null); cpython_vs_ours uses ours with 0 fds from the same interleaved group; \
             rss8g_vs_small: ours from the harness at the largest client size measured \
             (rss_largest) / ours from a small helper client process, interleaved in the \
             same group, after a 1 s pause once the ballast is written; \
             rss8g_amid_direct_forks_vs_small: ours interleaved with the direct forks instead; rss8g_vs_unballasted and direct_fork_8g_vs_small compare with the \
             group of the unballasted harness, run earlier",
        ),
    );
    Ok(m)
}

fn to_json(r: &Results, plan: &Plan, ratios: Map<String, Value>) -> Value {
    let rss: Vec<Value> = r
        .rss
        .iter()
        .map(|s| {
            json!({
                "ballast_bytes": s.bytes,
                "ballast": fmt_bytes(s.bytes),
                "client_vm_rss_kib": s.client_rss_kib,
                "touch_ms": s.touch_time.as_secs_f64() * 1e3,
                "results": s.group.to_json(),
            })
        })
        .collect();
    let throughput: Vec<Value> = r
        .throughput
        .iter()
        .map(|t| {
            json!({
                "kind": if t.limit { "limit_fork_exit_wait" } else { "ours_noop" },
                "threads": t.threads,
                "spawns": t.spawns,
                "seconds": t.elapsed.as_secs_f64(),
                "spawns_per_s": t.per_second(),
            })
        })
        .collect();
    let cpython = match &r.cpython {
        Some((g, v)) => json!({"python": v, "results": g.to_json()}),
        None => json!({"skipped": "python3 not found"}),
    };
    json!({
        "mode": if r.quick { "quick" } else { "full" },
        "machine": {
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned()).unwrap_or_default(),
        },
        "plan": plan.to_json(),
        "harness_vm_rss_kib": r.harness_rss_kib,
        "latency": r.latency.to_json(),
        "exec": r.exec.to_json(),
        "rss": rss,
        "cpython": cpython,
        "throughput": throughput,
        "server": {
            "pid": r.server_pid,
            "idle": r.idle.to_json(),
            "after": r.after.to_json(),
        },
        "ratios": Value::Object(ratios),
    })
}

// ----- output --------------------------------------------------------------------------------

fn print_group(title: &str, g: &Group, base: Option<&str>) {
    println!("\n## {title}\n");
    println!(
        "{:<32} {:>6} {:>11} {:>11} {:>11} {:>8}",
        "scenario", "n", "median", "p90", "p99", "x base"
    );
    let base = base.and_then(|b| g.get(b).ok());
    for (name, s) in &g.0 {
        let x = base
            .and_then(|b| ratio(s, b))
            .map_or(String::new(), |x| format!("{x:.2}"));
        println!(
            "{:<32} {:>6} {:>11} {:>11} {:>11} {:>8}",
            name,
            s.n,
            fmt_ns(s.median_ns),
            fmt_ns(s.p90_ns),
            fmt_ns(s.p99_ns),
            x
        );
    }
}

fn print_tables(r: &Results, ratios: &Map<String, Value>) {
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

/// The two plots: latency against fds in the bundle, and against the client's RSS.
fn charts(r: &Results) -> Result<Vec<(&'static str, Chart)>> {
    let us = |s: &Summary| s.median_ns as f64 / 1e3;
    let l = &r.latency;
    let by_fds = |prefix: &str| -> Result<Vec<(f64, f64)>> {
        FD_COUNTS
            .iter()
            .map(|n| Ok((f64::from(*n), us(l.get(&format!("{prefix}{n}"))?))))
            .collect()
    };
    let flat = |name: &str| -> Result<Vec<(f64, f64)>> {
        let y = us(l.get(name)?);
        Ok(vec![(0.0, y), (256.0, y)])
    };
    let fds = Chart {
        title: "forkserver: latency vs fds in the bundle (medians)".into(),
        x_label: "fds in the bundle".into(),
        y_label: "µs".into(),
        x_ticks: [0, 64, 128, 192, 256]
            .iter()
            .map(|&x| (f64::from(x), x.to_string()))
            .collect(),
        log_y: false,
        series: vec![
            Series {
                name: "ours request→exit".into(),
                color: "#1f77b4",
                points: by_fds("ours_exit_fds")?,
                dashed: false,
            },
            Series {
                name: "ours request→pid".into(),
                color: "#2ca02c",
                points: by_fds("ours_pid_fds")?,
                dashed: false,
            },
            Series {
                name: "fork+_exit+waitpid".into(),
                color: "#d62728",
                points: flat("limit_fork_exit_wait")?,
                dashed: true,
            },
            Series {
                name: "fork→pid".into(),
                color: "#ff7f0e",
                points: flat("limit_fork_to_pid")?,
                dashed: true,
            },
        ],
    };
    let gib = |b: usize| b as f64 / GIB as f64;
    let by_size = |name: &str| -> Result<Vec<(f64, f64)>> {
        r.rss
            .iter()
            .map(|s| Ok((gib(s.bytes), us(s.group.get(name)?) / 1e3)))
            .collect()
    };
    let rss = Chart {
        title: "latency vs client RSS (medians, log scale)".into(),
        x_label: "touched heap in the client (GiB)".into(),
        y_label: "ms".into(),
        x_ticks: r
            .rss
            .iter()
            .map(|s| (gib(s.bytes), fmt_bytes(s.bytes)))
            .collect(),
        log_y: true,
        series: vec![
            Series {
                name: "direct fork+_exit+waitpid".into(),
                color: "#d62728",
                points: by_size("direct_fork_exit_wait")?,
                dashed: false,
            },
            Series {
                name: "ours request→exit".into(),
                color: "#1f77b4",
                points: by_size("ours_exit_fds0")?,
                dashed: false,
            },
            Series {
                name: "std Command /bin/true".into(),
                color: "#7f7f7f",
                points: by_size("std_command_true")?,
                dashed: false,
            },
        ],
    };
    Ok(vec![
        ("latency_vs_fds.svg", fds),
        ("latency_vs_rss.svg", rss),
    ])
}
