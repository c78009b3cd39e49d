//! A child starts with every signal at its default disposition and an empty signal mask
//! (PROTOCOL.md §6.5, step 1), even when the server was started with signals ignored and
//! blocked: glibc's reserved 32 and 33 and the real-time signals included.

mod common;

use std::os::unix::process::CommandExt;

use common::*;
use forkserver_protocol::*;
use nix::libc;

/// Ignored in the server by whatever started it: standard, glibc-reserved and real-time signals.
const IGNORED: [i32; 8] = [1, 3, 10, 32, 33, 34, 40, 64];
/// Blocked in the server by whatever started it (HUP, INT, QUIT, USR1, 33, 40).
const BLOCKED: [i32; 6] = [1, 2, 3, 10, 33, 40];

fn bits(signals: &[i32]) -> u64 {
    signals.iter().fold(0, |m, &s| m | 1 << (s - 1))
}

/// The kernel's `struct sigaction` (glibc's `sigaction` refuses 32 and 33).
#[repr(C)]
struct KernelSigaction {
    handler: libc::c_ulong,
    flags: libc::c_ulong,
    restorer: libc::c_ulong,
    mask: u64,
}

/// A server whose parent ignored `IGNORED` and blocked `BLOCKED` before exec (both survive
/// `execve`), as a launcher started from a shell or a thread pool might.
fn start_server_with_signals_disturbed(extra: &[&str]) -> Server {
    let srv = Server::start_prepared(extra, None, |cmd| {
        let ignore = KernelSigaction {
            handler: libc::SIG_IGN as libc::c_ulong,
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        let block = bits(&BLOCKED);
        // SAFETY: between fork and exec the closure makes raw system calls only, on data it
        // owns (no allocation, no lock); SIG_IGN installs no handler code.
        unsafe {
            cmd.pre_exec(move || {
                for signo in IGNORED {
                    let act: *const KernelSigaction = &ignore;
                    let r = libc::syscall(
                        libc::SYS_rt_sigaction,
                        signo,
                        act,
                        std::ptr::null_mut::<KernelSigaction>(),
                        8usize,
                    );
                    if r < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                let set: *const u64 = &block;
                let r = libc::syscall(
                    libc::SYS_rt_sigprocmask,
                    libc::SIG_BLOCK,
                    set,
                    std::ptr::null_mut::<u64>(),
                    8usize,
                );
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
    });
    // The premise: the server really runs with them ignored and blocked.
    let status = std::fs::read_to_string(format!("/proc/{}/status", srv.pid())).unwrap();
    let (ign, blk) = (field(&status, "SigIgn"), field(&status, "SigBlk"));
    assert_eq!(
        ign & bits(&IGNORED),
        bits(&IGNORED),
        "server SigIgn {ign:016x}"
    );
    // (glibc's sigprocmask never blocks 33: the server's own mask changes around a fork, done
    // at once with --prefork, unblock it.)
    let blocked = bits(&BLOCKED) & !bits(&[33]);
    assert_eq!(blk & blocked, blocked, "server SigBlk {blk:016x}");
    srv
}

/// A hex signal set line of /proc/PID/status (`SigIgn:\t0000000000000001`).
fn field(status: &str, name: &str) -> u64 {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .unwrap_or_else(|| panic!("no {name} in {status}"));
    u64::from_str_radix(line.trim(), 16).unwrap()
}

/// Runs `cat /proc/self/status` through the server (no shell: it might set dispositions of
/// its own) and returns the child's ignored and blocked sets.
fn child_signal_sets(srv: &Server, options: SpawnOptions) -> (u64, u64) {
    let mut job = ExecJob::new("/bin/cat").unwrap();
    job.push_arg("/proc/self/status").unwrap();
    let (r, w) = pipe();
    let mut c = srv.connect();
    c.spawn(options, Job::Exec(job), bundle(vec![(1, w)]))
        .unwrap();
    let out = read_all(r);
    assert_eq!(c.wait().unwrap().code(), 0);
    (field(&out, "SigIgn"), field(&out, "SigBlk"))
}

#[test]
fn children_start_with_default_dispositions_and_an_empty_mask() {
    let srv = start_server_with_signals_disturbed(&[]);
    let fds0 = srv.idle_fds;
    // The exec job without PID_AFTER_EXEC (failures on the shared report socket), and with it
    // (a report pipe of its own).
    for pid_after_exec in [false, true] {
        let options = SpawnOptions {
            pid_after_exec,
            ..SpawnOptions::default()
        };
        let (ign, blk) = child_signal_sets(&srv, options);
        assert_eq!(
            ign, 0,
            "pid_after_exec {pid_after_exec}: child SigIgn {ign:016x}"
        );
        assert_eq!(
            blk, 0,
            "pid_after_exec {pid_after_exec}: child SigBlk {blk:016x}"
        );
    }
    srv.settle(fds0);
}

#[test]
fn pooled_children_start_with_default_dispositions_and_an_empty_mask() {
    let srv = start_server_with_signals_disturbed(&["--prefork", "2"]);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while srv.children().len() < 2 {
        assert!(std::time::Instant::now() < until, "no pool");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let pool = srv.children();
    for _ in 0..2 {
        let (ign, blk) = child_signal_sets(&srv, SpawnOptions::default());
        assert_eq!(ign, 0, "pooled child SigIgn {ign:016x}");
        assert_eq!(blk, 0, "pooled child SigBlk {blk:016x}");
    }
    // Both jobs were served by the children pooled before them.
    let now = srv.children();
    assert!(
        pool.iter().all(|p| !now.contains(p)),
        "pool {pool:?}, children now {now:?}"
    );
}
