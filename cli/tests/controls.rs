//! Per-child controls (issue 17, point 4; PROTOCOL.md §5.5.1, §6.5, rev 0.6) through a real
//! `forkserver serve` and real children, on the `CLONE_VM` path, the fork path
//! (`FORKSERVER_EXEC_FORK=1`) and the pool (`--prefork`): what the child sees in `/proc/self`,
//! and what a refused call is reported as.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Server;
use forkserver_client::{Client, Stdio};
use forkserver_protocol::{ErrorCode, RLIM_INFINITY};

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
    for (path, srv) in Server::on_every_path() {
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
    for (path, srv) in Server::on_every_path() {
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

/// What `cat /proc/self/status /proc/self/stat /proc/self/oom_score_adj` printed: Umask,
/// NoNewPrivs, the nice field of stat, the OOM score adjustment, and Uid (real).
fn controls_seen(out: &str) -> (String, String, String, String, String) {
    let status = |key: &str| {
        let line = out.lines().find(|l| l.starts_with(key));
        let line = line.unwrap_or_else(|| panic!("no {key} in {out}"));
        line[key.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };
    let stat = out.lines().find(|l| l.contains(" (cat) ")).unwrap();
    // Fields after the command: state is field 3, nice field 19.
    let after: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let oom = out.lines().last().unwrap().to_owned();
    (
        status("Umask:"),
        status("NoNewPrivs:"),
        after[19 - 3].to_owned(),
        oom,
        status("Uid:"),
    )
}

const SEE: [&str; 3] = [
    "/proc/self/status",
    "/proc/self/stat",
    "/proc/self/oom_score_adj",
];

/// Whether this process has CAP_SYS_RESOURCE (bit 24 of CapEff), which a lower OOM score needs.
fn has_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    let bits = u64::from_str_radix(eff.split_whitespace().nth(1).unwrap(), 16).unwrap();
    bits & (1 << 24) != 0
}

#[test]
fn umask_nice_no_new_privs_and_oom_score_are_what_the_child_sees() {
    for (path, srv) in Server::on_every_path() {
        let client = Client::connect(&srv.socket).unwrap();
        let out = client
            .command("cat")
            .args(SEE)
            .umask(0o077)
            .nice(10)
            .no_new_privs(true)
            .oom_score_adj(500)
            .output()
            .unwrap();
        assert!(out.status.success(), "{path}: {out:?}");
        let seen = controls_seen(&String::from_utf8(out.stdout).unwrap());
        let own = |s: &str| s.to_owned();
        assert_eq!(
            (seen.0, seen.1, seen.2, seen.3),
            (own("0077"), own("1"), own("10"), own("500")),
            "{path}"
        );
        // Without them the child has the server's.
        let out = client.command("cat").args(SEE).output().unwrap();
        let seen = controls_seen(&String::from_utf8(out.stdout).unwrap());
        let proc = |f: &str| std::fs::read_to_string(format!("/proc/{}/{f}", srv.pid())).unwrap();
        let stat = proc("stat");
        let after: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
        let server = (own(after[19 - 3]), own(proc("oom_score_adj").trim()));
        assert_eq!((seen.1, (seen.2, seen.3)), (own("0"), server), "{path}");
    }
}

#[test]
fn the_controls_come_before_the_credentials() {
    if nix::unistd::geteuid().as_raw() != 0 {
        return; // a change of uid needs root
    }
    let srv = Server::start(&[]);
    let client = Client::connect(&srv.socket).unwrap();
    // A nice value below the server's needs CAP_SYS_NICE, which uid 65534 has no more.
    let out = client
        .command("cat")
        .args(SEE)
        .uid(65534)
        .gid(65534)
        .groups(&[])
        .nice(-5)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let seen = controls_seen(&String::from_utf8(out.stdout).unwrap());
    assert_eq!((seen.2.as_str(), seen.4.as_str()), ("-5", "65534"));
}

#[test]
fn a_refused_oom_score_names_the_write_and_its_value() {
    for (path, srv) in Server::on_every_path() {
        let client = Client::connect(&srv.socket).unwrap();
        let r = client
            .command("cat")
            .arg("/proc/self/oom_score_adj")
            .oom_score_adj(-500)
            .output();
        if has_sys_resource() {
            assert_eq!(r.unwrap().stdout, b"-500\n", "{path}");
            continue;
        }
        // Below 0 (the server's minimum) without CAP_SYS_RESOURCE: EACCES.
        let e = r.unwrap_err();
        assert_eq!(
            e.server_code(),
            Some(ErrorCode::ChildSetupFailed),
            "{path}: {e}"
        );
        assert_eq!(e.errno(), Some(nix::libc::EACCES), "{path}: {e}");
        let text = r#"write("/proc/self/oom_score_adj", "-500"): Permission denied (EACCES)"#;
        assert!(e.to_string().contains(text), "{path}: {e}");
    }
}

#[test]
fn run_sets_umask_nice_no_new_privs_and_oom_score() {
    let srv = Server::start(&[]);
    let out = Command::new(env!("CARGO_BIN_EXE_forkserver"))
        .args(["run", "--socket"])
        .arg(&srv.socket)
        .args(["--umask", "027", "--nice", "7", "--no-new-privs"])
        .args(["--oom-score-adj", "300", "--", "cat"])
        .args(SEE)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let seen = controls_seen(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(
        (
            seen.0.as_str(),
            seen.1.as_str(),
            seen.2.as_str(),
            seen.3.as_str()
        ),
        ("0027", "1", "7", "300")
    );
    // Out of range: refused before anything runs.
    for bad in [
        &["--nice", "20"][..],
        &["--umask", "1000"],
        &["--oom-score-adj", "-1001"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_forkserver"))
            .args(["run", "--socket"])
            .arg(&srv.socket)
            .args(bad)
            .args(["--", "true"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {out:?}");
    }
}

/// A child that says when it is ready, prints `TERM` on each SIGTERM and keeps running.
const STUBBORN: &str = "trap 'echo TERM' TERM; echo ready; while :; do sleep 0.05; done";

#[test]
fn grace_sends_sigterm_at_the_deadline_then_sigkill() {
    for (path, srv) in Server::on_every_path() {
        let client = Client::connect(&srv.socket).unwrap();
        let (deadline, grace) = (Duration::from_millis(1500), Duration::from_millis(700));
        let started = Instant::now();
        let out = client
            .command("sh")
            .args(["-c", STUBBORN])
            .deadline(deadline)
            .grace(grace)
            .output()
            .unwrap();
        let took = started.elapsed();
        let text = String::from_utf8(out.stdout).unwrap();
        // Killed by the SIGKILL after the grace, not by the SIGTERM it trapped.
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{path}: {text} {:?}",
            out.status
        );
        assert!(out.status.deadline_expired(), "{path}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.first(), Some(&"ready"), "{path}: {text}");
        assert!(lines.contains(&"TERM"), "{path}: SIGTERM first: {text}");
        assert!(took >= deadline + grace, "{path}: ended after {took:?}");
    }
}

#[test]
fn a_child_that_ends_on_sigterm_is_not_killed() {
    let srv = Server::start(&[]);
    let client = Client::connect(&srv.socket).unwrap();
    let status = client
        .command("sleep")
        .arg("30")
        .stdin(Stdio::null())
        .deadline(Duration::from_millis(200))
        .grace(Duration::from_secs(30))
        .status()
        .unwrap();
    assert_eq!(status.signal(), Some(15), "{status}");
    assert!(status.deadline_expired());
}

#[test]
fn run_grace_sigterms_first() {
    let srv = Server::start(&[]);
    let out = Command::new(env!("CARGO_BIN_EXE_forkserver"))
        .args(["run", "--socket"])
        .arg(&srv.socket)
        .args([
            "--deadline",
            "1",
            "--grace",
            "0.5",
            "--",
            "sh",
            "-c",
            STUBBORN,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(128 + 9), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("TERM"),
        "{out:?}"
    );
}
