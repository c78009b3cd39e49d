//! The sandbox controls of rev 0.6 (issue 17, point 4; PROTOCOL.md §5.5.1, §6.5): a seccomp
//! filter and a landlock ruleset, each a bundle fd, through a real `forkserver serve` and real
//! children on the `CLONE_VM` path, the fork path (`FORKSERVER_EXEC_FORK=1`) and the pool
//! (`--prefork`): what the filter and the ruleset forbid, that the job never holds their
//! entries, that a bad program is refused before any child exists, and the CLI flags.
#![cfg(target_arch = "x86_64")]

mod common;

use std::io::Write;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::process::Command;

use common::Server;
use forkserver_client::{Client, Error};
use forkserver_protocol::ErrorCode;
use nix::libc;

/// One classic-BPF instruction, as `struct sock_filter` lays it out (native byte order).
fn insn(code: u16, jt: u8, jf: u8, k: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..2].copy_from_slice(&code.to_ne_bytes());
    b[2] = jt;
    b[3] = jf;
    b[4..].copy_from_slice(&k.to_ne_bytes());
    b
}

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_RET_K: u16 = 0x06;
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;

/// `getpid` fails with `EPERM`; everything else (and every call of another architecture's
/// ABI) is allowed.
fn deny_getpid() -> Vec<u8> {
    [
        insn(BPF_LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        insn(BPF_JEQ_K, 0, 3, AUDIT_ARCH_X86_64),
        insn(BPF_LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        insn(BPF_JEQ_K, 0, 1, libc::SYS_getpid as u32),
        insn(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::EPERM as u32),
        insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]
    .concat()
}

/// A program that allows every call.
fn allow_all() -> Vec<u8> {
    insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW).to_vec()
}

/// An unnamed file holding `bytes`, its offset at the end (the server reads from offset 0).
fn program_file(bytes: &[u8]) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(std::env::temp_dir())
        .unwrap();
    f.write_all(bytes).unwrap();
    f
}

/// A landlock ruleset that handles writing and creating files and has no rule: nothing may
/// be written or created anywhere.
fn no_writes_ruleset() -> OwnedFd {
    const WRITE_FILE: u64 = 1 << 1;
    const REMOVE_FILE: u64 = 1 << 5;
    const MAKE_REG: u64 = 1 << 8;
    let handled_access_fs: u64 = WRITE_FILE | REMOVE_FILE | MAKE_REG;
    let ptr: *const u64 = &handled_access_fs;
    // SAFETY: `ptr` points to a `struct landlock_ruleset_attr` of its first field only (8
    // bytes, the size passed), alive for the call; the kernel returns a new fd.
    let fd = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, ptr, 8usize, 0u32) };
    assert!(
        fd >= 0,
        "landlock_create_ruleset: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new fd, owned by nothing else.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// A python that is no wrapper script (a shim would run its own calls under the filter).
fn python() -> &'static str {
    match std::path::Path::new("/usr/bin/python3").exists() {
        true => "/usr/bin/python3",
        false => "python3",
    }
}

/// Prints the raw `getpid` system call's result and errno.
const GETPID: &str = "import ctypes; libc = ctypes.CDLL(None, use_errno=True); \
                      r = libc.syscall(39); print(r, ctypes.get_errno())";

#[test]
fn a_seccomp_filter_makes_getpid_fail_with_eperm() {
    for (path, srv) in Server::on_every_path() {
        let client = Client::connect(&srv.socket).unwrap();
        let program = program_file(&deny_getpid());
        let out = client
            .command(python())
            .args(["-c", GETPID])
            .seccomp_filter(&program)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.trim(), "-1 1", "{path}: {out:?}");
        // Without the filter the same call succeeds.
        let out = client
            .command(python())
            .args(["-c", GETPID])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.starts_with("-1"), "{path}: {text}");
    }
}

#[test]
fn the_job_holds_neither_entry_and_no_new_privs_is_implied() {
    for (path, srv) in Server::on_every_path() {
        let client = Client::connect(&srv.socket).unwrap();
        let program = program_file(&allow_all());
        let ruleset = no_writes_ruleset();
        // The client puts the two entries at the lowest free targets: 3 and 4.
        let script = "for n in 3 4; do [ -e /proc/self/fd/$n ] && echo has $n; done; \
                      grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status";
        let out = client
            .command("sh")
            .args(["-c", script])
            .seccomp_filter(&program)
            .landlock_ruleset(&ruleset)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{path}: {out:?}");
        assert!(!text.contains("has"), "{path}: {text}");
        let fields: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            fields,
            [vec!["NoNewPrivs:", "1"], vec!["Seccomp:", "2"]],
            "{path}: {text}"
        );
    }
}

#[test]
fn a_landlock_ruleset_forbids_writing_in_the_child_only() {
    for (path, srv) in Server::on_every_path() {
        let dir = common::scratch_dir(&format!("landlock-{path}"));
        let client = Client::connect(&srv.socket).unwrap();
        let script = "echo x > \"$1/denied\" && echo wrote || echo refused";
        let out = client
            .command("sh")
            .args(["-c", script, "sh"])
            .arg(&dir)
            .landlock_ruleset(no_writes_ruleset())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.trim(), "refused", "{path}: {out:?}");
        assert!(!dir.join("denied").exists(), "{path}");
        // The server and its next child are not confined, nor is this process.
        let out = client
            .command("sh")
            .args(["-c", "echo x > \"$1/allowed\" && echo wrote", "sh"])
            .arg(&dir)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "wrote",
            "{path}"
        );
        std::fs::write(dir.join("parent"), b"x").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_bad_program_is_refused_before_any_child_and_every_fd_is_closed() {
    let allow = allow_all();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            allow[..5].to_vec(),
            "seccomp filter: 5 bytes, not a multiple of 8",
        ),
        (Vec::new(), "seccomp filter: 0 instructions, at least 1"),
        (
            allow.repeat(4100),
            "seccomp filter: 4100 instructions, at most 4096",
        ),
    ];
    for (path, srv) in Server::on_every_path() {
        let client = Client::connect(&srv.socket).unwrap();
        let ok = || {
            let status = client.command("true").status().unwrap();
            assert!(status.success(), "{path}: {status}");
        };
        ok();
        // The pool refilled after the spawn above: its sockets are counted once it is full.
        let pool = if path == "pool" { 2 } else { 0 };
        srv.wait_children(pool);
        let fds = srv.fd_count();
        for (bytes, expected) in &cases {
            let program = program_file(bytes);
            let e = client
                .command("true")
                .seccomp_filter(&program)
                .status()
                .unwrap_err();
            let Error::Server {
                code,
                errno,
                message,
            } = e
            else {
                panic!("{path}: {e:?}")
            };
            assert_eq!(code, ErrorCode::ChildSetupFailed, "{path}: {message}");
            assert_eq!(errno, libc::EINVAL, "{path}: {message}");
            assert!(message.starts_with(expected), "{path}: {message}");
        }
        // A pipe is no memfd (nor a regular file the client copies into one).
        let (r, _w) = nix::unistd::pipe().unwrap();
        let e = client.command("true").seccomp_filter(r.as_fd()).status();
        let message = e.unwrap_err().to_string();
        assert!(
            message.contains("seccomp filter: not a memfd"),
            "{path}: {message}"
        );
        // The server serves on, and holds what it held before.
        ok();
        srv.wait_children(pool);
        srv.wait_fds(fds);
    }
}

#[test]
fn a_failed_landlock_call_names_it() {
    let srv = Server::start(&[]);
    let client = Client::connect(&srv.socket).unwrap();
    // Not a ruleset: the kernel says EBADFD.
    let null = std::fs::File::open("/dev/null").unwrap();
    let e = client
        .command("true")
        .landlock_ruleset(&null)
        .status()
        .unwrap_err();
    let Error::Server { code, message, .. } = e else {
        panic!("{e:?}")
    };
    assert_eq!(code, ErrorCode::ChildSetupFailed);
    assert_eq!(
        message,
        "landlock_restrict_self(3, 0): File descriptor in bad state (EBADFD)"
    );
    // Counted as a setup failure at the sandbox stage (PROTOCOL.md §5.16).
    let m = client.metrics().unwrap();
    assert_eq!(
        (m.setup_failed_sandbox, m.spawns_exec_setup_failed),
        (1, 1),
        "{m:?}"
    );
}

/// `forkserver run --socket SOCKET FLAG VALUE -- COMMAND...` and what it gave.
fn run_cli(
    srv: &Server,
    flag: &str,
    value: &std::path::Path,
    command: &[&dyn AsRef<std::ffi::OsStr>],
) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_forkserver"))
        .args(["run", "--socket"])
        .arg(&srv.socket)
        .arg(flag)
        .arg(value)
        .arg("--")
        .args(command)
        .output()
        .unwrap()
}

/// What `run_cli` printed on stderr for a `FLAG VALUE` that it refused (no child ran).
fn refused_cli(srv: &Server, flag: &str, value: &std::path::Path) -> String {
    let out = run_cli(srv, flag, value, &[&"true"]);
    assert!(!out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn run_seccomp_filter_installs_the_file() {
    let srv = Server::start(&[]);
    let file = common::scratch_dir("seccomp-cli").join("filter.bpf");
    std::fs::write(&file, deny_getpid()).unwrap();
    let out = run_cli(
        &srv,
        "--seccomp-filter",
        &file,
        &[&python(), &"-c", &GETPID],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "-1 1",
        "{out:?}"
    );
    // A file that is no program: the reason, and no child.
    std::fs::write(&file, b"12345").unwrap();
    let err = refused_cli(&srv, "--seccomp-filter", &file);
    assert!(err.contains("not a multiple of 8"), "{err}");
    let missing = file.with_file_name("missing.bpf");
    let err = refused_cli(&srv, "--seccomp-filter", &missing);
    assert!(
        err.contains("--seccomp-filter") && err.contains("missing.bpf"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(file.parent().unwrap());
}

#[test]
fn run_landlock_allow_write_confines_writes_to_the_directory() {
    let srv = Server::start(&[]);
    let (allowed, other) = (
        common::scratch_dir("landlock-allowed"),
        common::scratch_dir("landlock-other"),
    );
    let script = "echo x > \"$1/f\" && echo wrote-allowed; mkdir \"$1/d\" && echo made-dir; \
                  echo x > \"$2/f\" && echo wrote-other; cat /proc/self/status >/dev/null && \
                  echo read";
    let command: [&dyn AsRef<std::ffi::OsStr>; 6] =
        [&"sh", &"-c", &script, &"sh", &allowed, &other];
    let out = run_cli(&srv, "--landlock-allow-write", &allowed, &command);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    // /dev/null stays writable.
    assert_eq!(lines, ["wrote-allowed", "made-dir", "read"], "{out:?}");
    assert!(allowed.join("f").exists() && allowed.join("d").is_dir());
    assert!(!other.join("f").exists());
    // A directory that does not exist: the reason, no child.
    let missing = other.join("missing");
    let err = refused_cli(&srv, "--landlock-allow-write", &missing);
    assert!(
        err.contains("--landlock-allow-write") && err.contains("missing"),
        "{err}"
    );
    for d in [allowed, other] {
        let _ = std::fs::remove_dir_all(d);
    }
}
