//! Soak: N threads × M spawns against one real `forkserver serve`, each spawn on its own
//! connection with a random bundle (0..=16 fds: pipe ends and `/dev/null` at random targets)
//! and a random outcome (`/bin/true`, `/bin/false`, `sh -c 'exit K'`, `sh -c 'kill -SIG $$'`),
//! random session and pidfd options.
//!
//! Checked per spawn: the pid is not the pid of another child alive at the same time; the
//! child that ran is the one the `Pid` named (when the bundle has fds, one of them is a pipe at
//! a target in 3..=9 and the child writes its `$$` there; the pipe must read exactly that pid
//! and then end-of-file, which also shows the server closed its copy of the write end); the
//! exit code is the expected one, delivered once, on the right connection, and the server then
//! closes it.
//!
//! Checked at the end: the server's fd count and child list are back to their idle state, its
//! `Status` shows no live child, one connection and every spawn counted, and its `VmRSS` is
//! back near where it was after a warm-up (see `RSS_TOLERANCE_KIB`).
//!
//! Bounded by default (4 threads × 100 spawns, about a second). Longer: `FORKSERVER_SOAK=<spawns per thread>`
//! (and `FORKSERVER_SOAK_THREADS`, default 4), e.g.
//! `FORKSERVER_SOAK=5000 cargo test --release -p forkserver-server --test soak -- --nocapture`.
//! `FORKSERVER_SEED` changes the seed.
//!
//! Not used: `PID_AFTER_EXEC`, whose `Pid` can go missing when a child exits at once (a known
//! server bug, see `hostile.rs` `pid_after_exec_always_sends_pid_before_exit`); and
//! core-dumping signals (a core file per spawn would make this slow and litter the disk).

mod common;

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use forkserver_protocol::*;

/// Signals the children kill themselves with: none dumps core.
const SIGNALS: [i32; 8] = [1, 2, 9, 10, 12, 13, 14, 15];

/// How far the server's `VmRSS` may end above its post-warm-up value, in KiB. The warm-up runs
/// the same mix at the same concurrency, so the server's tables (connections, children,
/// deadlines) and its allocator have reached their high-water marks before the baseline;
/// what remains is allocator slack (glibc keeps freed chunks in its arenas and may split them
/// differently) and page-granular accounting (4 KiB pages, touched or not). A leak of even 64
/// bytes per spawn exceeds this after 8,192 spawns, e.g. `FORKSERVER_SOAK=2048` with 4 threads.
const RSS_TOLERANCE_KIB: u64 = 512;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[derive(Default)]
struct Tally {
    spawns: usize,
    fds_sent: usize,
    by_code: std::collections::BTreeMap<i32, usize>,
    pidfds: usize,
    tagged: usize,
    /// Spawns made on a connection kept from an earlier spawn (`KEEP_CONNECTION`).
    reused: usize,
}

/// One spawn, checked. `live` maps the pid of every child between its `Pid` and its `Exit` to
/// who spawned it. `kept` is the connection an earlier spawn of this thread kept (READY), if
/// any; half the spawns ask to keep theirs.
fn one_spawn(
    srv: &Server,
    rng: &mut Rng,
    who: (usize, usize),
    live: &Mutex<HashMap<i32, (usize, usize)>>,
    tally: &mut Tally,
    kept: &mut Option<Conn>,
) {
    // The bundle: n fds at distinct random targets in 0..64; when n > 0, fd 0 of the bundle is
    // the tag pipe at a target in 3..=9.
    let n = rng.below(17) as usize;
    let mut b = FdBundle::new();
    let mut used = Vec::new();
    let mut tag = None;
    let mut keep_alive: Vec<OwnedFd> = Vec::new();
    for i in 0..n {
        if i == 0 {
            let t = 3 + rng.below(7) as u32;
            let (r, w) = pipe();
            b.push(t, w).unwrap();
            used.push(t);
            tag = Some((t, r));
            continue;
        }
        let t = loop {
            let t = rng.below(64) as u32;
            if !used.contains(&t) {
                break t;
            }
        };
        used.push(t);
        let fd = match rng.below(3) {
            0 => devnull(),
            1 => {
                // A read end whose writer we keep until the child is gone.
                let (r, w) = nix::unistd::pipe().unwrap();
                keep_alive.push(w);
                r
            }
            _ => {
                // A write end whose reader we keep (so writes would not SIGPIPE).
                let (r, w) = nix::unistd::pipe().unwrap();
                keep_alive.push(r);
                w
            }
        };
        b.push(t, fd).unwrap();
    }
    let echo = match &tag {
        Some((t, _)) => format!("echo $$ >&{t}; "),
        None => String::new(),
    };
    let (job, want) = match rng.below(4) {
        0 if tag.is_none() => (Job::Exec(ExecJob::new("/bin/true").unwrap()), 0),
        1 if tag.is_none() => (Job::Exec(ExecJob::new("/bin/false").unwrap()), 1),
        0 | 2 => {
            let k = rng.below(256) as i32;
            (sh(&format!("{echo}exit {k}")), k)
        }
        _ => {
            let s = SIGNALS[rng.below(SIGNALS.len() as u64) as usize];
            (sh(&format!("{echo}kill -{s} $$")), -s)
        }
    };
    let options = SpawnOptions {
        session: match rng.below(3) {
            0 => Session::Inherit,
            1 => Session::NewProcessGroup,
            _ => Session::NewSession,
        },
        want_pidfd: rng.below(2) == 0,
        kill_on_disconnect: rng.below(2) == 0,
        keep_connection: rng.below(2) == 0,
        ..SpawnOptions::default()
    };
    tally.fds_sent += b.len();

    let mut c = match kept.take() {
        Some(c) => {
            tally.reused += 1;
            c
        }
        None => {
            let c = Conn::connect(&srv.socket);
            c.sock
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            c
        }
    };
    let (pid, pidfd) = c
        .spawn(options, job, b)
        .unwrap_or_else(|e| panic!("{who:?}: spawn refused: {e:?}"));
    assert!(pid > 0);
    if let Some(other) = live.lock().unwrap().insert(pid, who) {
        panic!("pid {pid} of spawn {who:?} is also the pid of spawn {other:?}, still alive");
    }
    if options.want_pidfd {
        // The server may send none (§5.8), but on Linux >= 5.3 it does.
        assert!(pidfd.is_some(), "{who:?}: no pidfd");
        tally.pidfds += 1;
    }
    let exit = c.wait().unwrap_or_else(|e| panic!("{who:?}: {e:?}"));
    live.lock().unwrap().remove(&pid);
    assert_eq!(exit.code(), want, "{who:?} (pid {pid})");
    assert!(!exit.deadline_expired());
    if options.keep_connection {
        // READY again: the next spawn of this thread goes on this connection.
        *kept = Some(c);
    } else {
        // Exactly once: nothing follows the Exit but the end of the connection.
        let (more, end) = c.read_to_end(Duration::from_secs(10));
        assert!(
            more.is_empty(),
            "{who:?}: frames after Exit: {:?}",
            more.iter().map(|f| &f.message).collect::<Vec<_>>()
        );
        assert!(is_clean_end(&end), "{who:?}: {end:?}");
    }
    if let Some(fd) = pidfd {
        // A pidfd of an exited process reads as readable.
        let mut p = [nix::poll::PollFd::new(
            fd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        assert_eq!(
            nix::poll::poll(&mut p, nix::poll::PollTimeout::ZERO).unwrap(),
            1,
            "{who:?}: pidfd not readable after Exit"
        );
    }
    if let Some((_, r)) = tag {
        assert_eq!(
            read_all(r),
            format!("{pid}\n"),
            "{who:?}: the child that ran"
        );
        tally.tagged += 1;
    }
    drop(keep_alive);
    tally.spawns += 1;
    *tally.by_code.entry(want).or_default() += 1;
}

fn run(srv: &Server, threads: usize, per_thread: usize, seed: u64) -> Tally {
    let live = Mutex::new(HashMap::new());
    let total = Mutex::new(Tally::default());
    std::thread::scope(|s| {
        for t in 0..threads {
            let (live, total) = (&live, &total);
            s.spawn(move || {
                let mut rng = Rng::new(seed ^ (t as u64 + 1).wrapping_mul(0x1000_0001));
                let mut tally = Tally::default();
                let mut kept = None;
                for i in 0..per_thread {
                    one_spawn(srv, &mut rng, (t, i), live, &mut tally, &mut kept);
                }
                drop(kept);
                let mut tot = total.lock().unwrap();
                tot.spawns += tally.spawns;
                tot.fds_sent += tally.fds_sent;
                tot.pidfds += tally.pidfds;
                tot.tagged += tally.tagged;
                tot.reused += tally.reused;
                for (k, v) in tally.by_code {
                    *tot.by_code.entry(k).or_default() += v;
                }
            });
        }
    });
    assert!(live.into_inner().unwrap().is_empty());
    total.into_inner().unwrap()
}

#[test]
fn soak() {
    let per_thread = env_usize("FORKSERVER_SOAK", 100);
    let threads = env_usize("FORKSERVER_SOAK_THREADS", 4);
    let seed = seed(0x50a6);
    let srv = Server::start(&[]);
    let fds0 = srv.idle_fds;

    // Warm-up: the same mix at the same concurrency.
    let warm = run(&srv, threads, 10, seed ^ 0xffff);
    srv.settle(fds0);
    let before = srv.status();
    srv.settle(fds0);
    let rss0 = srv.rss_kib();

    let t = Instant::now();
    let tally = run(&srv, threads, per_thread, seed);
    let elapsed = t.elapsed();

    srv.settle(fds0);
    let rss1 = srv.rss_kib();
    let after = srv.status();
    assert_eq!(after.live_children(), 0);
    assert_eq!(after.connections(), 1);
    assert_eq!(
        after.spawned_total(),
        before.spawned_total() + tally.spawns as u64,
        "spawned_total"
    );
    assert_eq!(warm.spawns, threads * 10);
    assert_eq!(tally.spawns, threads * per_thread);
    srv.settle(fds0);
    assert!(srv.children().is_empty());

    let exits: usize = tally.by_code.range(0..).map(|(_, n)| n).sum();
    let signals: Vec<(i32, usize)> = tally.by_code.range(..0).map(|(k, n)| (-k, *n)).collect();
    eprintln!(
        "soak: {threads} threads x {per_thread} spawns = {} spawns in {:.2?} ({:.0} spawns/s), \
         seed {seed}; {} on a kept connection; {} fds sent, {} pidfds, {} children identified \
         by their pipe; {exits} \
         exits with {} distinct statuses, killed by (signal, count) {signals:?}; server fds {} -> {} (idle {fds0}); VmRSS {rss0} -> {rss1} KiB \
         (tolerance {RSS_TOLERANCE_KIB} KiB)",
        tally.spawns,
        elapsed,
        tally.spawns as f64 / elapsed.as_secs_f64(),
        tally.reused,
        tally.fds_sent,
        tally.pidfds,
        tally.tagged,
        tally.by_code.range(0..).count(),
        fds0,
        srv.fd_count(),
    );
    assert!(
        rss1 <= rss0 + RSS_TOLERANCE_KIB,
        "server VmRSS grew from {rss0} to {rss1} KiB over {} spawns",
        tally.spawns
    );
}
