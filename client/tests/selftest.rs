//! `cargo test` support (issue #15 point 9): a plain libtest binary (no `harness = false`)
//! whose entries are registered with `forkserver_server::zygote!`, which serves before `main`
//! in the copy of this binary that `Client::launch_self` starts. The tests run in parallel
//! threads and share that one server; under `cargo nextest run` each is a process of its own,
//! with its own server.

mod common;

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use forkserver_client::{CallError, Client, Fd};

fn square(x: u32) -> u32 {
    x * x
}

const PANIC_LINE: u32 = line!() + 2;
fn panics(x: u32) -> u32 {
    panic!("selftest panic {x}")
}

fn checked_half(x: u32) -> Result<u32, String> {
    match x % 2 {
        0 => Ok(x / 2),
        _ => Err(format!("{x} is odd")),
    }
}

/// Writes `text` into the pipe it is given, and hands back the read end of a pipe of its own
/// holding `text` reversed (its write end closes as the child exits).
fn fds_both_ways((pipe, text): (Fd, String)) -> std::io::Result<Fd> {
    std::fs::File::from(OwnedFd::from(pipe)).write_all(text.as_bytes())?;
    let (read_end, write_end) = nix::unistd::pipe()?;
    std::fs::File::from(write_end).write_all(text.chars().rev().collect::<String>().as_bytes())?;
    Ok(Fd::from(read_end))
}

/// The server, as its child sees it: its pid and its thread count.
fn server() -> (u32, usize) {
    let ppid = std::os::unix::process::parent_id();
    (ppid, threads(ppid))
}

forkserver_server::zygote!(|z| z
    .typed("square", square)
    .typed("panics", panics)
    .typed_fallible("checked_half", checked_half)
    .typed("fds_both_ways", fds_both_ways)
    .typed("server", |()| server()));

/// Held by the tests that count this process's children (the role test starts one).
static CHILDREN: Mutex<()> = Mutex::new(());

fn client() -> Client {
    Client::launch_self().expect("launch_self")
}

fn threads(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Threads:")).unwrap();
    line["Threads:".len()..].trim().parse().unwrap()
}

fn dev_ino(path: impl AsRef<Path>) -> (u64, u64) {
    let m = std::fs::metadata(path).unwrap();
    (m.dev(), m.ino())
}

/// The children of this process (of any of its threads) that run this binary.
fn children_running_this_binary() -> Vec<u32> {
    let me = dev_ino("/proc/self/exe");
    let mut pids = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let children = std::fs::read_to_string(task.unwrap().path().join("children"));
        for pid in children.unwrap_or_default().split_whitespace() {
            let pid: u32 = pid.parse().unwrap();
            if std::fs::metadata(format!("/proc/{pid}/exe")).is_ok_and(|m| (m.dev(), m.ino()) == me)
            {
                pids.push(pid);
            }
        }
    }
    pids
}

/// The parent of process `pid` (field 4 of its `stat`, after the parenthesized name).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split(' ').nth(1)?.parse().ok()
}

/// Waits for `done`, polling: what it waits on (a file a role writes, the exit of a role's
/// server, which is no child of this process) gives nothing to block on. The bound only tells
/// a hang (60 s, as the other suites' `HANG`): a loaded machine makes the wait longer, never a
/// failure.
fn await_until(what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < until, "still waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_typed_call() {
    let client = client();
    for x in [0, 7, 65_535] {
        let got = client
            .typed::<u32, u32>("square")
            .spawn(&x)
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(got, x * x);
    }
}

#[test]
fn a_panic_comes_back_with_its_message_and_location() {
    let r = client()
        .typed::<u32, u32>("panics")
        .spawn(&7)
        .unwrap()
        .join();
    common::assert_panicked_at(r, "selftest panic 7", file!(), PANIC_LINE);
}

#[test]
fn an_error_and_a_mismatch() {
    let client = client();
    let half = |x| {
        client
            .typed::<u32, u32>("checked_half")
            .spawn(&x)
            .unwrap()
            .join()
    };
    assert_eq!(half(8).unwrap(), 4);
    assert!(matches!(half(7), Err(CallError::Failed(ref t)) if t == "7 is odd"));
    let r = client
        .typed::<str, u32>("square")
        .spawn("seven")
        .unwrap()
        .join();
    assert!(matches!(r, Err(CallError::Mismatch { .. })), "{r:?}");
}

#[test]
fn fds_both_ways_through_the_shared_server() {
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    let arg = (Fd::from(write_end), "through the shared server".to_owned());
    let got = client()
        .typed::<(Fd, String), Fd>("fds_both_ways")
        .spawn(&arg)
        .unwrap()
        .join()
        .unwrap();
    drop(arg);
    let mut text = String::new();
    std::fs::File::from(read_end)
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, "through the shared server");
    let mut back = String::new();
    std::fs::File::from(OwnedFd::from(got))
        .read_to_string(&mut back)
        .unwrap();
    assert_eq!(back, "revres derahs eht hguorht");
}

/// Eight threads call `launch_self` at once: one server, launched once, is theirs and every
/// other test's (in this process: under nextest, the others have servers of their own).
#[test]
fn parallel_callers_share_one_server() {
    let _children = CHILDREN.lock().unwrap_or_else(|p| p.into_inner());
    let start = Barrier::new(8);
    let pids: Vec<u32> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..8)
            .map(|i| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    let client = client();
                    let got = client.typed::<u32, u32>("square").spawn(&i).unwrap().join();
                    assert_eq!(got.unwrap(), i * i);
                    client.launched_server_pid().unwrap()
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert!(pids.iter().all(|&p| p == pids[0]), "{pids:?}");
    assert_eq!(
        children_running_this_binary(),
        [pids[0]],
        "one server, ours"
    );
}

/// The server is a fresh copy of this binary that served before libtest's `main`: one thread,
/// no test arguments, and it says so to its child.
#[test]
fn the_server_is_this_binary_serving_before_main() {
    let client = client();
    let pid = client.launched_server_pid().unwrap();
    let (seen, threads) = client
        .typed::<(), (u32, usize)>("server")
        .spawn(&())
        .unwrap()
        .join()
        .unwrap();
    assert_eq!((seen, threads), (pid, 1));
    assert_eq!(
        dev_ino(format!("/proc/{pid}/exe")),
        dev_ino("/proc/self/exe")
    );
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let argv: Vec<&[u8]> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .collect();
    let ours = std::env::args_os().next().unwrap();
    assert_eq!(
        argv,
        [std::os::unix::ffi::OsStrExt::as_bytes(ours.as_os_str())]
    );
    assert_eq!(
        parent_of(pid),
        Some(std::process::id()),
        "the server is our child"
    );
}

/// Run in a child process by the test below (`FS_SELFTEST_ROLE` set): launches the server,
/// writes its pid and socket directory to the file named by `FS_SELFTEST_OUT`, and then either
/// returns (`exit`: libtest's `main` returns, the exit handler stops the server) or waits to be
/// killed (`kill`).
#[test]
fn launch_and_go_role() {
    let Some(mode) = std::env::var_os("FS_SELFTEST_ROLE") else {
        return;
    };
    let client = client();
    assert_eq!(
        client
            .typed::<u32, u32>("square")
            .spawn(&3)
            .unwrap()
            .join()
            .unwrap(),
        9
    );
    let dir = client.socket_path().parent().unwrap().to_owned();
    let pid = client.launched_server_pid().unwrap();
    let out = std::env::var_os("FS_SELFTEST_OUT").unwrap();
    std::fs::write(&out, format!("{pid} {}\n", dir.display())).unwrap();
    if mode == "kill" {
        std::thread::sleep(Duration::from_secs(60));
        panic!("not killed");
    }
}

/// What the role wrote, once it has: the server's pid and socket directory.
fn role_said(out: &Path) -> Option<(u32, PathBuf)> {
    let text = std::fs::read_to_string(out).ok()?;
    let (pid, dir) = text.strip_suffix('\n')?.split_once(' ')?;
    Some((pid.parse().ok()?, PathBuf::from(dir)))
}

/// Whether process `pid` has exited (gone, or a zombie nobody has reaped yet).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

/// A test process that launched its server and ends, as every test process under nextest
/// does: returning from `main`, the server is stopped and its socket directory removed by the
/// time the process has exited; killed, the server exits as its alive pipe closes.
#[test]
fn the_server_ends_with_the_test_process() {
    let _children = CHILDREN.lock().unwrap_or_else(|p| p.into_inner());
    for mode in ["exit", "kill"] {
        let out =
            std::env::temp_dir().join(format!("forkserver-selftest-{}-{mode}", std::process::id()));
        let _ = std::fs::remove_file(&out);
        let mut role = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "launch_and_go_role",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("FS_SELFTEST_ROLE", mode)
            .env("FS_SELFTEST_OUT", &out)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let (pid, dir) = match mode {
            "exit" => {
                assert!(role.wait().unwrap().success());
                let said = role_said(&out).expect("the role's report");
                assert!(!said.1.exists(), "{} left behind", said.1.display());
                said
            }
            _ => {
                let mut said = None;
                await_until("the role's report", || {
                    said = role_said(&out);
                    said.is_some()
                });
                role.kill().unwrap();
                role.wait().unwrap();
                said.unwrap()
            }
        };
        await_until("the server's exit", || exited(pid));
        std::fs::remove_file(&out).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
