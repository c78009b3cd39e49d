//! Per-child controls (issue 17, point 4; PROTOCOL.md §5.5.1, §6.5, rev 0.6) through a real
//! `forkserver serve` and real children, on the `CLONE_VM` path, the fork path
//! (`FORKSERVER_EXEC_FORK=1`) and the pool (`--prefork`): what the child sees in `/proc/self`,
//! and what a refused call is reported as.

mod common;

use std::process::Command;

use common::Server;
use forkserver_client::{Client, Stdio};
use forkserver_protocol::{ErrorCode, RLIM_INFINITY};

/// The servers to run each check on: `CLONE_VM` (the default), fork, and the pool.
fn servers() -> Vec<(&'static str, Server)> {
    vec![
        ("clone_vm", Server::start(&[])),
        (
            "fork",
            Server::start_with_env(&[], &[(forkserver_server::EXEC_FORK_ENV, "1")]),
        ),
        ("pool", Server::start(&["--prefork", "2"])),
    ]
}

/// The `/proc/self/limits` line of `name` ("Max open files"): its soft and hard columns.
fn limit_of(limits: &str, name: &str) -> (String, String) {
    let line = limits
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name:?} in {limits}"));
    let cols: Vec<&str> = line[name.len()..].split_whitespace().collect();
    (cols[0].to_owned(), cols[1].to_owned())
}

#[test]
fn rlimits_are_what_the_child_sees() {
    for (path, srv) in servers() {
        let client = Client::connect(&srv.socket).unwrap();
        let out = client
            .command("cat")
            .arg("/proc/self/limits")
            .rlimit(nix::libc::RLIMIT_NOFILE, 64, 128)
            .rlimit(nix::libc::RLIMIT_CORE, 0, RLIM_INFINITY)
            // A resource repeated takes its last entry.
            .rlimit(nix::libc::RLIMIT_NPROC, 10, 2000)
            .rlimit(nix::libc::RLIMIT_NPROC, 1000, 2000)
            .output()
            .unwrap();
        assert!(out.status.success(), "{path}: {out:?}");
        let limits = String::from_utf8(out.stdout).unwrap();
        let s = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(
            limit_of(&limits, "Max open files"),
            s("64", "128"),
            "{path}"
        );
        assert_eq!(limit_of(&limits, "Max core file size"), s("0", "unlimited"));
        assert_eq!(limit_of(&limits, "Max processes"), s("1000", "2000"));
        // Nothing is left behind in the server.
        let own = std::fs::read_to_string(format!("/proc/{}/limits", srv.pid())).unwrap();
        assert_ne!(limit_of(&own, "Max open files"), s("64", "128"), "{path}");
    }
}

#[test]
fn a_refused_rlimit_names_the_call_and_its_values() {
    // Above fs.nr_open: EPERM even for root (the kernel's check in do_prlimit).
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let too_many = nr_open + 1;
    for (path, srv) in servers() {
        let client = Client::connect(&srv.socket).unwrap();
        let e = client
            .command("/bin/true")
            .stdin(Stdio::null())
            .rlimit(nix::libc::RLIMIT_CORE, 0, 0)
            .rlimit(nix::libc::RLIMIT_NOFILE, 64, too_many)
            .status()
            .unwrap_err();
        assert_eq!(
            e.server_code(),
            Some(ErrorCode::ChildSetupFailed),
            "{path}: {e}"
        );
        assert_eq!(e.errno(), Some(nix::libc::EPERM), "{path}: {e}");
        let text =
            format!("setrlimit(RLIMIT_NOFILE, 64, {too_many}): Operation not permitted (EPERM)");
        assert!(e.to_string().contains(&text), "{path}: {e}");
        // The connection and the server go on.
        assert!(client.command("/bin/true").status().unwrap().success());
    }
}

#[test]
fn run_rlimit_sets_the_commands_limits() {
    let srv = Server::start(&[]);
    let out = Command::new(env!("CARGO_BIN_EXE_forkserver"))
        .args(["run", "--socket"])
        .arg(&srv.socket)
        .args(["--rlimit", "nofile=64:128", "--rlimit", "core=0"])
        .args(["--", "cat", "/proc/self/limits"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let limits = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        limit_of(&limits, "Max open files"),
        ("64".to_owned(), "128".to_owned())
    );
    assert_eq!(
        limit_of(&limits, "Max core file size"),
        ("0".to_owned(), "0".to_owned())
    );
    // A name that is no resource is refused before anything runs, naming the valid ones.
    let out = Command::new(env!("CARGO_BIN_EXE_forkserver"))
        .args(["run", "--socket"])
        .arg(&srv.socket)
        .args(["--rlimit", "files=64", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nofile"),
        "{out:?}"
    );
}
