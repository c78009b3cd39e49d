//! Limits a user sets on the server (`--max-children`, `--prefork`, `--shutdown-timeout`), and
//! the prefork hand-off surviving the server's death: real server, real children, real signals.

mod common;

use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use forkserver_protocol::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn opts() -> SpawnOptions {
    SpawnOptions::default()
}

/// A pipe whose ends are close-on-exec here, so that no server another test starts meanwhile
/// inherits them (the one passed in a bundle is placed in the child without the flag).
fn cloexec_pipe() -> (std::fs::File, OwnedFd) {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    (std::fs::File::from(r), w)
}

/// The state letter of `/proc/<pid>/stat` (`T` when stopped).
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Waits for a process of ours to end (up to 20 s), for tests where it is meant to exit.
fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < until, "the server did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ----- the prefork hand-off ------------------------------------------------------------------

/// PROTOCOL.md §6.4: a `Pid` names a job that will run. The server here stops itself right
/// after sending the `Pid` of a pooled job (the test hook) and is killed there: the job must
/// still run, because its frame was in the pooled child's socket before the `Pid` went out.
#[test]
fn a_pooled_job_whose_pid_was_sent_runs_even_if_the_server_dies() {
    let hook = [("FORKSERVER_TEST_STOP_AFTER_PID", "1")];
    let srv = Server::start_with_env(&["--prefork", "2"], &hook);
    let pool = srv.wait_children(2);
    let (r, w) = cloexec_pipe();
    let mut c = srv.connect();
    let (pid, _) = c
        .spawn(opts(), sh("echo ran"), bundle(vec![(1, w)]))
        .unwrap();
    assert!(pool.contains(&pid), "pid {pid} is not one of {pool:?}");
    // The hook fired: the server is stopped just after the Pid. Kill it there.
    let until = Instant::now() + Duration::from_secs(10);
    while proc_state(srv.pid()) != Some('T') {
        assert!(Instant::now() < until, "the server did not stop itself");
        std::thread::sleep(Duration::from_millis(5));
    }
    kill(Pid::from_raw(srv.pid()), Signal::SIGKILL).unwrap();
    // The job ran and wrote its line. Had it never reached the child, the pipe's write end
    // would have died with the server (or with the pooled child's socket): EOF, no line.
    assert_eq!(read_all(r), "ran\n");
}

// ----- --max-children ------------------------------------------------------------------------

/// `--max-children 2`: a third spawn while two children run is refused with
/// `ResourceExhausted` (and its connection closed, §6.1); pooled children waiting for a job do
/// not count. Once a child ends, a spawn works again.
#[test]
fn max_children_refuses_a_spawn_beyond_the_limit() {
    let srv = Server::start(&["--max-children", "2", "--prefork", "1"]);
    srv.wait_children(1);
    // Two children that run until their stdin closes.
    let mut running = Vec::new();
    for _ in 0..2 {
        let (r, w) = cloexec_pipe();
        let mut c = srv.connect();
        c.spawn(opts(), sh("read x; exit 5"), bundle(vec![(0, r.into())]))
            .unwrap();
        running.push((c, w));
    }
    let mut third = srv.connect();
    let e = third
        .spawn(opts(), sh("exit 0"), FdBundle::new())
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("children"), "{e:?}");
    assert!(matches!(third.try_recv(), Err(ref e) if is_clean_end(e)));
    // One child ends (its stdin closes): its slot is free again.
    let (mut c, w) = running.pop().unwrap();
    drop(w);
    assert_eq!(c.wait().unwrap().code(), 5);
    let mut fourth = srv.connect();
    fourth.spawn(opts(), sh("exit 7"), FdBundle::new()).unwrap();
    assert_eq!(fourth.wait().unwrap().code(), 7);
}

// ----- range checks ----------------------------------------------------------------------------

/// Out-of-range limits are refused by the command line (exit status 2) with a message that
/// names the option, before anything is bound.
#[test]
fn out_of_range_limits_are_usage_errors() {
    for args in [
        ["--prefork", "100000"],
        ["--max-children", "0"],
        ["--shutdown-timeout", "99999999999999999"],
    ] {
        let dir = scratch_dir("range");
        let out = Command::new(env!("CARGO_BIN_EXE_forkserver"))
            .arg("serve")
            .arg("--socket")
            .arg(dir.join("sock"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(args[0]), "{args:?}: {stderr}");
        assert!(!dir.join("sock").exists(), "{args:?}: the socket was bound");
        let _ = std::fs::remove_dir_all(dir);
    }
}

// ----- --shutdown-timeout ----------------------------------------------------------------------

/// After SIGTERM the server waits for its running children, but only `--shutdown-timeout`
/// long: then it kills those left (SIGKILL), reports their `Exit` (-9) and exits.
#[test]
fn shutdown_kills_the_children_left_at_the_timeout() {
    let mut srv = Server::start(&["--shutdown-timeout", "1"]);
    let mut c = srv.connect();
    let (pid, _) = c
        .spawn(opts(), sh("trap '' TERM; sleep 100"), FdBundle::new())
        .unwrap();
    kill(Pid::from_raw(srv.pid()), Signal::SIGTERM).unwrap();
    let exit = c.wait().unwrap();
    assert_eq!(exit.code(), -9);
    assert!(!exit.deadline_expired());
    let status = wait_exit(&mut srv.child);
    assert!(status.success(), "{status:?}");
    assert!(!is_alive(pid), "child {pid} outlived the server");
}
