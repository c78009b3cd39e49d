//! `forkserver run` and `forkserver status` as a user runs them, and what they refuse to talk
//! to (PROTOCOL.md §9.3): a socket directory others can reach, a listener of another uid, a
//! server without the key; numbers clap must refuse.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

/// A uid no one on the machine uses.
const STRANGER: u32 = 64_322;

fn forkserver(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_forkserver"));
    c.args(args).stdin(Stdio::null());
    c
}

fn run_on(socket: &Path, extra: &[&str], cmd: &[&str]) -> Output {
    forkserver(&["run", "--socket", socket.to_str().unwrap()])
        .args(extra)
        .arg("--")
        .args(cmd)
        .output()
        .unwrap()
}

/// `forkserver ARGS` with `XDG_RUNTIME_DIR` set to `xdg`.
fn with_xdg(args: &[&str], xdg: &Path) -> Output {
    forkserver(args)
        .env("XDG_RUNTIME_DIR", xdg)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The server's total spawn count, read over a raw connection.
fn spawned(srv: &Server) -> u64 {
    srv.status().spawned_total()
}

#[test]
fn run_passes_exit_codes_signals_stdout_env_cwd_and_fds() {
    let srv = Server::start(&[]);
    let o = run_on(&srv.socket, &[], &["sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    let o = run_on(&srv.socket, &[], &["sh", "-c", "kill -TERM $$"]);
    assert_eq!(o.status.code(), Some(128 + 15), "{}", stderr(&o));
    // stdout, our environment and our working directory, not the server's.
    let o = forkserver(&["run", "--socket", srv.socket.to_str().unwrap(), "--"])
        .args(["sh", "-c", "echo \"$FS_TEST_VAR $(pwd)\""])
        .env("FS_TEST_VAR", "from-the-caller")
        .current_dir(&srv.dir)
        .output()
        .unwrap();
    let want = format!("from-the-caller {}\n", srv.dir.display());
    assert_eq!(String::from_utf8_lossy(&o.stdout), want, "{}", stderr(&o));
    // --fd N passes our fd N at the same number.
    let (r, w) = pipe();
    let o = forkserver(&[
        "run",
        "--socket",
        srv.socket.to_str().unwrap(),
        "--fd",
        "5",
        "--",
    ])
    .args(["sh", "-c", "echo through-fd-5 >&5"])
    .fd_at(w, 5)
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read_all(r), "through-fd-5\n");
    // A missing program: 127, as a shell says.
    let o = run_on(&srv.socket, &[], &["/nonexistent/program"]);
    assert_eq!(o.status.code(), Some(127), "{}", stderr(&o));
    // A deadline kills the command: SIGKILL, 137.
    let o = run_on(&srv.socket, &["--deadline", "0.2"], &["sleep", "30"]);
    assert_eq!(o.status.code(), Some(128 + 9), "{}", stderr(&o));
    srv.settle(srv.idle_fds);
}

#[test]
fn run_forwards_sigterm_to_the_command() {
    use std::io::BufRead;
    let srv = Server::start(&[]);
    // The command says `ready` once its trap is set: a signal sent before that would kill the
    // shell (143) instead of running the trap, so the test waits for the line, not a time.
    let mut child = forkserver(&["run", "--socket", srv.socket.to_str().unwrap(), "--"])
        .args([
            "sh",
            "-c",
            "trap 'exit 42' TERM; echo ready; while :; do sleep 0.05; done",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n", "the command never started");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(42));
}

#[test]
fn status_prints_the_counters() {
    let srv = Server::start(&[]);
    let o = forkserver(&["status", "--socket", srv.socket.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!("pid:             {}", srv.pid())),
        "{text}"
    );
}

#[test]
fn run_and_status_refuse_a_socket_directory_others_can_reach() {
    let srv = Server::start(&[]);
    std::fs::set_permissions(&srv.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = run_on(&srv.socket, &[], &["true"]);
    assert_eq!(o.status.code(), Some(125));
    let err = stderr(&o);
    assert!(err.contains("unsafe permissions"), "{err}");
    assert!(err.contains(&*srv.dir.to_string_lossy()), "{err}");
    let o = forkserver(&["status", "--socket", srv.socket.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unsafe permissions"), "{}", stderr(&o));
    std::fs::set_permissions(&srv.dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    // Nothing reached the server: no spawn.
    assert_eq!(spawned(&srv), 0);
    let o = run_on(&srv.socket, &[], &["true"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(spawned(&srv), 1);
}

#[test]
fn run_refuses_a_directory_of_another_owner_and_a_foreign_symlink() {
    if !is_root() {
        eprintln!("skipped: needs root to make files of another uid");
        return;
    }
    let srv = Server::start(&[]);
    nix::unistd::chown(&srv.dir, Some(STRANGER.into()), None).unwrap();
    let o = run_on(&srv.socket, &[], &["true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains(&format!("owned by uid {STRANGER}")),
        "{}",
        stderr(&o)
    );
    nix::unistd::chown(&srv.dir, Some(0.into()), None).unwrap();
    // A symbolic link to the (good) directory, planted by another user.
    let link = scratch_dir("link").join("to-server");
    std::os::unix::fs::symlink(&srv.dir, &link).unwrap();
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        &link,
        Some(STRANGER.into()),
        None,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
    let o = run_on(&link.join("sock"), &[], &["true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("symbolic link"), "{}", stderr(&o));
    assert_eq!(spawned(&srv), 0);
    // The server refuses to bind through it as well.
    let o = forkserver(&["serve", "--socket"])
        .arg(link.join("other"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("symbolic link"), "{}", stderr(&o));
}

/// A listener of another uid in a directory that passes the checks: only `SO_PEERCRED` can
/// tell. The impostor reports how many bytes it received.
#[test]
fn run_refuses_a_listener_of_another_uid_and_sends_it_nothing() {
    if !is_root() {
        eprintln!("skipped: needs root to run a listener as another uid");
        return;
    }
    use std::os::unix::process::CommandExt;
    let dir = scratch_dir("impostor");
    let socket = dir.join("sock");
    // Bound here (root's private directory), listening as the stranger: the peer credentials
    // are those of the process that called listen().
    let bound = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&bound);
    let script = format!(
        "import socket,sys\n\
         s=socket.socket(fileno={fd}); s.listen(8); print('ready',flush=True)\n\
         c,_=s.accept(); c.settimeout(2)\n\
         n=0\n\
         try:\n  n=len(c.recv(65536))\nexcept Exception: pass\n\
         print(n,flush=True)\n"
    );
    let mut impostor = Command::new("python3");
    impostor
        .args(["-c", &script])
        .uid(STRANGER)
        .stdout(Stdio::piped());
    // SAFETY: only async-signal-safe work between fork and exec: clearing FD_CLOEXEC.
    unsafe {
        impostor.pre_exec(move || {
            let flags = nix::libc::fcntl(fd, nix::libc::F_GETFD);
            nix::libc::fcntl(fd, nix::libc::F_SETFD, flags & !nix::libc::FD_CLOEXEC);
            Ok(())
        });
    }
    let mut impostor = impostor.spawn().unwrap();
    drop(bound);
    let mut out = std::io::BufReader::new(impostor.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let o = run_on(&socket, &[], &["true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains(&format!("runs as uid {STRANGER}")),
        "{}",
        stderr(&o)
    );
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "0", "the impostor received bytes");
    let _ = impostor.wait();
    // Named explicitly, the same uid is trusted (the connection goes ahead).
    let o = forkserver(&["status", "--socket", socket.to_str().unwrap()])
        .args(["--server-uid", &STRANGER.to_string()])
        .output()
        .unwrap();
    assert!(!stderr(&o).contains("runs as uid"), "{}", stderr(&o));
}

#[test]
fn run_and_status_authenticate_with_a_key_file() {
    let dir = scratch_dir("cli-key");
    let key_path = dir.join("key");
    let key: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(91) ^ 0x5a).collect();
    std::fs::write(&key_path, &key).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let srv = Server::start_with_key(&key_path, &key);
    let key_arg = ["--key-file", key_path.to_str().unwrap()];
    let o = run_on(&srv.socket, &key_arg, &["sh", "-c", "exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let o = forkserver(&["status", "--socket", srv.socket.to_str().unwrap()])
        .args(key_arg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // Without the key: a clear refusal, nothing run.
    let before = spawned_with_key(&srv, &key);
    let o = run_on(&srv.socket, &[], &["true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("requires authentication"),
        "{}",
        stderr(&o)
    );
    // With another key: refused by the server.
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, b"another key, quite long enough").unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = run_on(
        &srv.socket,
        &["--key-file", wrong.to_str().unwrap()],
        &["true"],
    );
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert_eq!(spawned_with_key(&srv, &key), before);
}

fn spawned_with_key(srv: &Server, key: &[u8]) -> u64 {
    Conn::connect_with_key(&srv.socket, key)
        .status()
        .spawned_total()
}

#[test]
fn the_default_socket_directory_is_checked_xdg_included() {
    let base = scratch_dir("xdg");
    // XDG_RUNTIME_DIR open to others: both ends refuse, naming it.
    let xdg = base.join("run");
    std::fs::create_dir(&xdg).unwrap();
    std::fs::set_permissions(&xdg, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = with_xdg(&["serve"], &xdg);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unsafe permissions"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&*xdg.to_string_lossy()),
        "{}",
        stderr(&o)
    );
    let o = with_xdg(&["run", "--", "true"], &xdg);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("unsafe permissions"), "{}", stderr(&o));
    // A missing XDG_RUNTIME_DIR is an error too, not a silent fallback.
    let missing = base.join("missing");
    let o = with_xdg(&["serve"], &missing);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&*missing.to_string_lossy()),
        "{}",
        stderr(&o)
    );
    let o = with_xdg(&["run", "--", "true"], &missing);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains(&*missing.to_string_lossy()),
        "{}",
        stderr(&o)
    );
    // A private one works: `run` starts a server there and runs the command through it.
    std::fs::set_permissions(&xdg, std::fs::Permissions::from_mode(0o700)).unwrap();
    let o = with_xdg(&["run", "--", "sh", "-c", "exit 4"], &xdg);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let o = with_xdg(&["status"], &xdg);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    let pid: i32 = text
        .lines()
        .find_map(|l| l.strip_prefix("pid:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The started server is ours to stop (it would exit after 60 s idle).
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let until = std::time::Instant::now() + HANG;
    while xdg.join("forkserver.sock").exists() {
        assert!(std::time::Instant::now() < until, "server did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_socket_is_created_private_whatever_the_umask() {
    use std::os::unix::process::CommandExt;
    let dir = scratch_dir("umask");
    let socket = dir.join("s");
    let mut cmd = forkserver(&["serve", "--socket", socket.to_str().unwrap()]);
    // SAFETY: umask(2) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::stat::umask(nix::sys::stat::Mode::empty());
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let until = std::time::Instant::now() + HANG;
    while !socket.exists() {
        assert!(std::time::Instant::now() < until, "no socket");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn numbers_out_of_range_are_usage_errors_not_panics() {
    let cases: &[&[&str]] = &[
        &["run", "--fd", "4294967295", "--", "true"],
        &["run", "--fd", "-1", "--", "true"],
        &["run", "--deadline", "-1", "--", "true"],
        &["run", "--deadline", "nan", "--", "true"],
        &["run", "--deadline", "inf", "--", "true"],
        &["run", "--deadline", "1e300", "--", "true"],
        &["run", "--deadline", "0", "--", "true"],
        &["serve", "--idle-timeout", "18446744073709551615"],
        &["serve", "--idle-timeout", "0"],
        &["status", "--server-uid", "4294967296"],
    ];
    for args in cases {
        let o = forkserver(args).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn a_server_that_fails_to_start_leaves_no_socket() {
    let dir = scratch_dir("nostale");
    let socket = dir.join("s");
    // A bad key file fails before binding.
    let o = forkserver(&["serve", "--socket", socket.to_str().unwrap()])
        .args(["--key-file", "/nonexistent/key"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(!socket.exists());
    // Too few fds to set up the event loop: the server fails after binding the socket, and
    // must remove it.
    use std::os::unix::process::CommandExt;
    for limit in 4..10 {
        let mut cmd = forkserver(&["serve", "--socket", socket.to_str().unwrap()]);
        // SAFETY: setrlimit(2) is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::resource::setrlimit(
                    nix::sys::resource::Resource::RLIMIT_NOFILE,
                    limit,
                    limit,
                )
                .map_err(std::io::Error::from)
            });
        }
        let o = cmd.output().unwrap();
        assert!(!o.status.success(), "limit {limit}: {}", stderr(&o));
        assert!(
            !socket.exists(),
            "limit {limit}: socket left behind ({})",
            stderr(&o)
        );
    }
}

trait FdAt {
    fn fd_at(&mut self, fd: std::os::fd::OwnedFd, target: i32) -> &mut Self;
}

impl FdAt for Command {
    /// Puts `fd` at number `target` in the spawned process.
    fn fd_at(&mut self, fd: std::os::fd::OwnedFd, target: i32) -> &mut Self {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let raw = fd.as_raw_fd();
        // SAFETY: dup2 is async-signal-safe; `fd` stays open (moved into the closure) until
        // the Command is dropped.
        unsafe {
            self.pre_exec(move || {
                let _keep = &fd;
                if nix::libc::dup2(raw, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self
    }
}

/// `--allow-uid` with a socket file: another (non-root) uid verifies the server (directory of
/// root, searchable; `SO_PEERCRED` root, named with `--server-uid 0`) and is served.
#[test]
fn an_allowed_uid_reaches_a_path_socket() {
    if !is_root() {
        eprintln!("skipped: needs root to run a client as another uid");
        return;
    }
    use std::os::unix::process::CommandExt;
    let srv = Server::start(&["--allow-uid", &STRANGER.to_string()]);
    // Shared: searchable by others, writable by nobody else.
    std::fs::set_permissions(&srv.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_stranger = |args: &[&str]| {
        forkserver(args)
            .arg("--socket")
            .arg(&srv.socket)
            .uid(STRANGER)
            .gid(STRANGER)
            .output()
            .unwrap()
    };
    let o = as_stranger(&["status", "--server-uid", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Without naming root as the server's uid, the stranger refuses it.
    let o = as_stranger(&["status"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("owned by uid 0"), "{}", stderr(&o));
}
