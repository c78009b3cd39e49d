//! The rule "the `CLONE_VM` child allocates nothing" (server/src/spawn/mod.rs), enforced: this
//! test binary is a zygote server whose global allocator records every allocation, free and
//! reallocation made by a task other than the server's thread, per task id, in static atomics.
//! A `CLONE_VM` exec child shares the server's memory, so what it does through the allocator
//! lands in the server's table; a forked child writes to its own copy. After a series of exec
//! jobs through the `CLONE_VM` path (successes, a `PATH` search, failures of every stage the
//! test can cause), an entry job (forked: a snapshot of the server's table) reports the
//! allocations of tasks other than itself. Before it serves, the binary checks that the
//! allocator does see another task's allocation (a thread's), so the check cannot pass by
//! counting nothing. Then the same failures (ENOENT, a `PATH` search, EACCES, ENOEXEC, a bad
//! cwd, a refused `setpgid`, an EBADF target) through both exec paths must give the same
//! error, errno and message.
//!
//! `harness = false`: `main` is ours.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use forkserver_client::{Client, Error, Stdio};
use forkserver_protocol::ErrorCode;
use forkserver_server::{Invocation, Zygote};
use nix::libc;

/// The server's thread id, once known (0: record nothing).
static SERVER_TID: AtomicI64 = AtomicI64::new(0);
/// Task ids that used the allocator, and how often each did.
static TIDS: [AtomicI64; 64] = [const { AtomicI64::new(0) }; 64];
static COUNTS: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];

fn gettid() -> i64 {
    // SAFETY: no arguments, no memory.
    i64::from(unsafe { libc::syscall(libc::SYS_gettid) } as i32)
}

/// Records a use of the allocator by a task other than the server's thread. Allocation-free
/// and lock-free: it may run in any task.
fn note() {
    let server = SERVER_TID.load(Relaxed);
    if server == 0 {
        return;
    }
    let tid = gettid();
    if tid == server {
        return;
    }
    for (slot, count) in TIDS.iter().zip(&COUNTS) {
        let cur = match slot.compare_exchange(0, tid, Relaxed, Relaxed) {
            Ok(_) => tid,
            Err(t) => t,
        };
        if cur == tid {
            count.fetch_add(1, Relaxed);
            return;
        }
    }
}

/// Uses of the allocator by tasks other than the server's thread and `except`.
fn foreign_uses(except: i64) -> u64 {
    TIDS.iter()
        .zip(&COUNTS)
        .filter(|(t, _)| {
            let t = t.load(Relaxed);
            t != 0 && t != except
        })
        .map(|(_, c)| c.load(Relaxed))
        .sum()
}

fn clear() {
    for (t, c) in TIDS.iter().zip(&COUNTS) {
        t.store(0, Relaxed);
        c.store(0, Relaxed);
    }
}

struct Recording;

// SAFETY: every call is passed on to `System` unchanged; `note` only touches atomics.
unsafe impl GlobalAlloc for Recording {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: the caller's promise, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: the caller's promise, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note();
        // SAFETY: the caller's promise, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        note();
        // SAFETY: the caller's promise, passed on.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOC: Recording = Recording;

/// The entry job (a forked child): the allocator uses of tasks other than the server and
/// itself, as the server's memory held them at the fork (capped at 255).
fn foreign_allocations(_call: Invocation) -> i32 {
    foreign_uses(gettid()).min(255) as i32
}

fn main() {
    if Zygote::is_requested() {
        // The server: check the recorder sees another task, then record from here on.
        SERVER_TID.store(gettid(), Relaxed);
        std::thread::spawn(|| drop(std::hint::black_box(vec![1u8; 64])))
            .join()
            .expect("thread");
        assert!(
            foreign_uses(0) > 0,
            "the recorder missed a thread's allocation"
        );
        clear();
    }
    Zygote::new()
        .entry("foreign_allocations", foreign_allocations)
        .serve_if_requested();
    let client = Client::launch(std::env::current_exe().unwrap()).expect("launch");
    exec_jobs(&client);
    let status = client
        .call("foreign_allocations", Vec::new())
        .spawn()
        .and_then(|mut c| c.wait())
        .expect("entry job");
    assert_eq!(
        status.code(),
        Some(0),
        "CLONE_VM children used the allocator"
    );
    println!("clone_child: ok (exec jobs through the CLONE_VM path made no allocation)");
    let fork = Client::launcher(std::env::current_exe().unwrap())
        .env(forkserver_server::EXEC_FORK_ENV, "1")
        .launch()
        .expect("launch");
    same_failures_on_both_paths(&client, &fork);
    println!("clone_child: ok (the CLONE_VM and fork paths fail alike)");
}

/// Every exec and setup failure the test can cause, with and without `pid_after_exec`, on the
/// `CLONE_VM` path (`clone`) and the fork path (`fork`): the same error, errno and message.
fn same_failures_on_both_paths(clone: &Client, fork: &Client) {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("clone_child-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let not_executable = dir.join("not-executable");
    std::fs::write(&not_executable, "#!/bin/sh\n").unwrap();
    let bad_format = dir.join("bad-format");
    std::fs::write(&bad_format, b"\x7fnot an executable format\n").unwrap();
    std::fs::set_permissions(&bad_format, std::fs::Permissions::from_mode(0o755)).unwrap();
    type Setup = fn(&mut forkserver_client::Command);
    let cases: [(&str, &std::path::Path, Setup, i32); 7] = [
        (
            "ENOENT",
            "/nonexistent/program".as_ref(),
            |_| {},
            libc::ENOENT,
        ),
        (
            "PATH search",
            "no-such-command-xyz".as_ref(),
            |_| {},
            libc::ENOENT,
        ),
        ("EACCES", &not_executable, |_| {}, libc::EACCES),
        ("ENOEXEC", &bad_format, |_| {}, libc::ENOEXEC),
        (
            "bad cwd",
            "/bin/true".as_ref(),
            |c| {
                c.current_dir("/nonexistent-dir");
            },
            libc::ENOENT,
        ),
        (
            "setpgid",
            "/bin/true".as_ref(),
            |c| {
                c.process_group(4_194_304);
            },
            libc::EPERM,
        ),
        (
            "EBADF target",
            "/bin/true".as_ref(),
            |c| {
                c.fd(1_048_575, devnull());
            },
            libc::EBADF,
        ),
    ];
    for (what, program, setup, errno) in cases {
        for wait in [true, false] {
            let run = |client: &Client| {
                let mut cmd = client.command(program);
                cmd.wait_for_exec(wait);
                setup(&mut cmd);
                match cmd.spawn().and_then(|mut c| c.wait()) {
                    Err(Error::Server {
                        code,
                        errno,
                        message,
                    }) => (code, errno, message),
                    other => panic!("{what}: {other:?}"),
                }
            };
            let (a, b) = (run(clone), run(fork));
            assert_eq!(a, b, "{what} (pid_after_exec {wait}): CLONE_VM vs fork");
            assert_eq!(a.1, errno, "{what}: {}", a.2);
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn devnull() -> std::fs::File {
    std::fs::File::open("/dev/null").unwrap()
}

/// Exec jobs through every step of the `CLONE_VM` child, failures included.
fn exec_jobs(client: &Client) {
    let ok = |cmd: &mut forkserver_client::Command| {
        let s = cmd.status().expect("spawn");
        assert_eq!(s.code(), Some(0), "{:?}", cmd.get_program());
    };
    let failed = |cmd: &mut forkserver_client::Command, code: ErrorCode| match cmd
        .spawn()
        .and_then(|mut c| c.wait())
    {
        Err(Error::Server { code: got, .. }) => assert_eq!(got, code),
        other => panic!("{:?}: {other:?}", cmd.get_program()),
    };
    let null = || Stdio::null();
    ok(client
        .command("/bin/true")
        .stdin(null())
        .stdout(null())
        .stderr(null()));
    // Every rev 0.6 control (limits, umask, nice, OOM score, no_new_privs, a grace), and a
    // limit refused (above fs.nr_open: EPERM) with its message built by the server.
    ok(client
        .command("/bin/true")
        .rlimit(nix::libc::RLIMIT_NOFILE, 256, 4096)
        .rlimit(nix::libc::RLIMIT_CORE, 0, 0)
        .umask(0o077)
        .nice(1)
        .oom_score_adj(100)
        .no_new_privs(true)
        .deadline(std::time::Duration::from_secs(60))
        .grace(std::time::Duration::from_secs(1)));
    failed(
        client
            .command("/bin/true")
            .rlimit(nix::libc::RLIMIT_NOFILE, 64, u64::MAX - 1),
        ErrorCode::ChildSetupFailed,
    );
    // The sandbox controls: a seccomp program that allows every call (read by the server
    // before the clone) and a landlock ruleset that forbids writing files, and a ruleset the
    // kernel refuses (not one: EBADFD).
    let (filter, ruleset) = sandbox_fds();
    ok(client
        .command("/bin/true")
        .seccomp_filter(&filter)
        .landlock_ruleset(&ruleset));
    let not_a_ruleset = std::fs::File::open("/dev/null").unwrap();
    failed(
        client.command("/bin/true").landlock_ruleset(&not_a_ruleset),
        ErrorCode::ChildSetupFailed,
    );
    // PATH search, environment edits, working directory, a new session, a pidfd.
    ok(client
        .command("sh")
        .args(["-c", "test \"$X\" = y && test \"$PWD\" = / || exit 9"])
        .env("X", "y")
        .env("PATH", "/nonexistent:/usr/bin:/bin")
        .env_remove("HOME")
        .current_dir("/")
        .new_session()
        .pidfd(true));
    // Nothing mapped: 0-2 on /dev/null.
    ok(client.command("/bin/true").wait_for_exec(false));
    failed(
        &mut client.command("no-such-program-anywhere"),
        ErrorCode::ExecFailed,
    );
    failed(
        client
            .command("/no/such/program")
            .wait_for_exec(false)
            .pidfd(true),
        ErrorCode::ExecFailed,
    );
    failed(
        client.command("/bin/true").current_dir("/no/such/dir"),
        ErrorCode::ChildSetupFailed,
    );
    failed(&mut client.command("/etc/hostname"), ErrorCode::ExecFailed);
}

/// A file holding a one-instruction seccomp program (`SECCOMP_RET_ALLOW`) and a landlock
/// ruleset that handles writing files, with no rule.
#[allow(unsafe_code)]
fn sandbox_fds() -> (std::fs::File, std::os::fd::OwnedFd) {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    let path = std::env::temp_dir().join(format!("clone-child-{}.bpf", std::process::id()));
    let mut filter = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    // BPF_RET | BPF_K, SECCOMP_RET_ALLOW.
    filter
        .write_all(&[0x06, 0, 0, 0, 0, 0, 0xff, 0x7f])
        .unwrap();
    let write_file: u64 = 1 << 1;
    let attr: *const u64 = &write_file;
    // SAFETY: `attr` points to a `struct landlock_ruleset_attr` of its first field (8 bytes,
    // the size passed), alive for the call; the kernel returns a new fd.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_landlock_create_ruleset, attr, 8usize, 0) };
    assert!(
        fd >= 0,
        "landlock_create_ruleset: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new fd, owned by nothing else.
    (filter, unsafe {
        std::os::fd::OwnedFd::from_raw_fd(fd as i32)
    })
}
