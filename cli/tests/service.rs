//! `forkserver serve` as a service: socket activation (`LISTEN_*`, sd_listen_fds(3)) and
//! notification (`NOTIFY_SOCKET`, sd_notify(3)), under a simulated manager (this test binds the
//! socket, passes it as fd 3, and reads the notification datagrams), under the real
//! `systemd-socket-activate` where it is installed, and the unit files of `contrib/systemd`
//! checked by `systemd-analyze verify` where that is installed.

mod common;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Instant;

use common::{bundle, pipe, read_all, scratch_dir, sh, Conn, HANG};
use forkserver_protocol::SpawnOptions;

const BIN: &str = env!("CARGO_BIN_EXE_forkserver");

/// The manager's variables, which no child may see.
const MANAGER_VARS: [&str; 6] = [
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

/// How the simulated manager sets `LISTEN_PID` (and `WATCHDOG_PID`).
enum Pid {
    /// To the server's pid: a shell sets it to its own (`$$`) and execs the server.
    Server,
    /// To another process's.
    Other(u32),
}

/// A server process, killed and reaped when dropped: a failed test leaves none running.
struct Proc(Child);

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `forkserver serve ARGS` as a service manager would: `fds` from fd 3 on, with
/// `LISTEN_FDS` (their count, unless `env` sets it) and `LISTEN_PID`, and `env`.
fn start(fds: Vec<OwnedFd>, pid: Pid, env: &[(&str, &str)], args: &[&str]) -> Proc {
    // Moved out of the way first, so that placing one at 3 + i clobbers no other.
    let high: Vec<OwnedFd> = fds
        .iter()
        .map(|fd| {
            let n = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(100)).unwrap();
            // SAFETY: F_DUPFD_CLOEXEC just returned this new fd, owned by nothing else.
            unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(n) }
        })
        .collect();
    let raw: Vec<RawFd> = high.iter().map(AsRawFd::as_raw_fd).collect();
    let mut cmd = match pid {
        Pid::Server => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c")
                .arg(r#"LISTEN_PID=$$; export LISTEN_PID; [ -n "$WATCHDOG_USEC" ] && { WATCHDOG_PID=$$; export WATCHDOG_PID; }; exec "$0" "$@""#)
                .arg(BIN);
            c
        }
        Pid::Other(p) => {
            let mut c = Command::new(BIN);
            c.env("LISTEN_PID", p.to_string());
            c
        }
    };
    cmd.arg("serve")
        .args(args)
        .env("LISTEN_FDS", fds.len().to_string())
        .env_remove("LISTEN_FDNAMES")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: the closure only calls dup2, which is async-signal-safe, on fds that are open
    // (see below).
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in raw.iter().enumerate() {
                // `fd` is open in the parent (kept until spawn returns), so in the child
                // after fork; the target, 3 + i, is free for it (the originals were moved
                // above 100), and dup2 clears close-on-exec on the copy.
                if nix::libc::dup2(*fd, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    drop((fds, high));
    Proc(child)
}

/// A listening socket at `dir/name`.
fn listener(dir: &Path, name: &str) -> (OwnedFd, PathBuf) {
    let path = dir.join(name);
    (OwnedFd::from(UnixListener::bind(&path).unwrap()), path)
}

/// The notification socket a manager listens on, and its path.
fn notify_socket(dir: &Path) -> (UnixDatagram, String) {
    let path = dir.join("notify");
    let sock = UnixDatagram::bind(&path).unwrap();
    (sock, path.to_str().unwrap().to_owned())
}

/// Reads notifications until one satisfies `pred` (up to [`HANG`]); returns it.
fn await_notify(sock: &UnixDatagram, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let until = Instant::now() + HANG;
    let mut buf = vec![0u8; 4096];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {what} notification");
        sock.set_read_timeout(Some(left)).unwrap();
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("no {what} notification: {e}"),
        };
        let msg = String::from_utf8(buf[..n].to_vec()).unwrap();
        if pred(&msg) {
            return msg;
        }
    }
}

/// Waits (up to [`HANG`]) for the process to exit; kills it and fails if it does not.
fn await_exit(child: &mut Child) -> (ExitStatus, String) {
    let until = Instant::now() + HANG;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                std::io::Read::read_to_string(&mut e, &mut err).unwrap();
            }
            return (status, err);
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("the server did not exit");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Runs `/usr/bin/env` through the server at `socket` (inheriting the server's environment:
/// no `env_clear`) and returns its output.
fn child_env(socket: &Path) -> String {
    let mut c = Conn::connect(socket);
    let (r, w) = pipe();
    c.spawn(
        SpawnOptions::default(),
        sh("exec /usr/bin/env"),
        bundle(vec![(1, w)]),
    )
    .unwrap();
    assert_eq!(c.wait().unwrap().code(), 0);
    read_all(r)
}

fn assert_clean_env(env: &str) {
    // The marker proves the child does inherit the server's environment.
    assert!(env.lines().any(|l| l == "FS_TEST_MARKER=1"), "{env}");
    for var in MANAGER_VARS {
        assert!(
            !env.lines().any(|l| l.starts_with(&format!("{var}="))),
            "a child sees {var}: {env}"
        );
    }
}

fn sigterm(child: &Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

#[test]
fn activated_server_notifies_and_hides_the_managers_variables_from_children() {
    let dir = scratch_dir("svc");
    let (fd, socket) = listener(&dir, "forkserver.sock");
    let inode = std::fs::metadata(&socket).unwrap().ino();
    let (notify, notify_path) = notify_socket(&dir);
    let env = [
        ("NOTIFY_SOCKET", notify_path.as_str()),
        ("LISTEN_FDNAMES", "forkserver.socket"),
        ("FS_TEST_MARKER", "1"),
    ];
    // A pooled child too: it is forked before the first request.
    let mut server = start(vec![fd], Pid::Server, &env, &["--prefork", "1"]);
    let ready = await_notify(&notify, "READY", |m| m.starts_with("READY=1\n"));
    assert!(ready.contains("\nSTATUS=children "), "{ready}");

    // A pooled child and a forked one (the pool's replacement may not be there yet).
    assert_clean_env(&child_env(&socket));
    assert_clean_env(&child_env(&socket));
    await_notify(&notify, "STATUS", |m| {
        m.starts_with("STATUS=") && m.contains("spawned 2")
    });

    sigterm(&server);
    await_notify(&notify, "STOPPING", |m| m.starts_with("STOPPING=1"));
    let (status, err) = await_exit(&mut server);
    assert!(status.success(), "{status}: {err}");
    // The manager's socket is the manager's: still there, the same file.
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.ino(), inode);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn watchdog_is_fed_at_half_its_interval() {
    let dir = scratch_dir("wdog");
    let (fd, _socket) = listener(&dir, "forkserver.sock");
    let (notify, notify_path) = notify_socket(&dir);
    // WATCHDOG_PID is set to the server's own pid by the wrapper.
    let env = [
        ("NOTIFY_SOCKET", notify_path.as_str()),
        ("WATCHDOG_USEC", "100000"),
    ];
    let mut server = start(vec![fd], Pid::Server, &env, &[]);
    await_notify(&notify, "READY", |m| m.starts_with("READY=1"));
    for _ in 0..3 {
        await_notify(&notify, "WATCHDOG", |m| m == "WATCHDOG=1");
    }
    sigterm(&server);
    assert!(await_exit(&mut server).0.success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A manager that never reads fills its socket's queue (`net.unix.max_dgram_qlen`
/// datagrams); the server drops what does not fit and serves on.
#[test]
fn a_manager_that_does_not_read_never_blocks_the_server() {
    let qlen: usize = std::fs::read_to_string("/proc/sys/net/unix/max_dgram_qlen")
        .map_or(10, |s| s.trim().parse().unwrap());
    let dir = scratch_dir("fullq");
    let (fd, socket) = listener(&dir, "forkserver.sock");
    let (notify, notify_path) = notify_socket(&dir);
    // A ping due every millisecond, and a STATUS= per second at most.
    let env = [
        ("NOTIFY_SOCKET", notify_path.as_str()),
        ("WATCHDOG_USEC", "2000"),
    ];
    let mut server = start(vec![fd], Pid::Server, &env, &[]);
    // Each round trip is a turn of the server's loop at least a millisecond after the last
    // (fork and exec take longer): a ping each, so the queue is full long before the end.
    for _ in 0..2 * qlen + 20 {
        let mut c = Conn::connect(&socket);
        // A server blocked on its manager fails the test instead of hanging it.
        c.sock.set_read_timeout(Some(HANG)).unwrap();
        c.spawn(SpawnOptions::default(), common::bin_true(), bundle(vec![]))
            .unwrap();
        assert_eq!(c.wait().unwrap().code(), 0);
    }
    notify.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    let mut queued = 0;
    while notify.recv(&mut buf).is_ok() {
        queued += 1;
    }
    assert!(queued >= qlen, "only {queued} notifications were queued");
    sigterm(&server);
    let (status, err) = await_exit(&mut server);
    assert!(status.success(), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn of_several_sockets_the_one_named_forkserver_is_served() {
    let dir = scratch_dir("names");
    let (other, _) = listener(&dir, "other.sock");
    let (ours, socket) = listener(&dir, "forkserver.sock");
    let env = [("LISTEN_FDNAMES", "other:forkserver")];
    let mut server = start(vec![other, ours], Pid::Server, &env, &[]);
    let mut c = Conn::connect(&socket);
    assert_eq!(c.status().server_pid(), server.id() as i32);
    drop(c);
    sigterm(&server);
    assert!(await_exit(&mut server).0.success());

    // Without the names, which one is ours cannot be told.
    let (a, _) = listener(&dir, "a.sock");
    let (b, _) = listener(&dir, "b.sock");
    let mut server = start(vec![a, b], Pid::Server, &[], &[]);
    let (status, err) = await_exit(&mut server);
    assert!(!status.success());
    assert!(err.contains("LISTEN_FDNAMES"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn variables_for_another_pid_are_ignored_and_still_hidden_from_children() {
    let dir = scratch_dir("otherpid");
    let (fd, _) = listener(&dir, "passed.sock");
    let own = dir.join("own.sock");
    let (notify, notify_path) = notify_socket(&dir);
    let env = [
        ("NOTIFY_SOCKET", notify_path.as_str()),
        ("FS_TEST_MARKER", "1"),
    ];
    // With the passed socket taken, `--socket` would be refused: the server binds its own.
    let args = ["--socket", own.to_str().unwrap()];
    let mut server = start(vec![fd], Pid::Other(1), &env, &args);
    await_notify(&notify, "READY", |m| m.starts_with("READY=1"));
    assert_clean_env(&child_env(&own));
    sigterm(&server);
    let (status, err) = await_exit(&mut server);
    assert!(status.success(), "{err}");
    // A socket the server bound itself it removes.
    assert!(!own.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_passed_fd_that_is_not_a_listening_unix_stream_socket_is_refused() {
    let dir = scratch_dir("badfd");
    let (pair, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dgram = UnixDatagram::bind(dir.join("dgram")).unwrap();
    let (pipe_r, _pipe_w) = nix::unistd::pipe().unwrap();
    let cases: Vec<(OwnedFd, &str)> = vec![
        (pair.into(), "is not a listening socket"),
        (tcp.into(), "is not an AF_UNIX socket"),
        (dgram.into(), "is not a SOCK_STREAM socket"),
        (pipe_r, "getsockname"),
    ];
    for (fd, expected) in cases {
        let mut server = start(vec![fd], Pid::Server, &[], &[]);
        let (status, err) = await_exit(&mut server);
        assert!(!status.success(), "{expected}: {status}");
        assert!(
            err.contains("socket activation: passed fd 3") && err.contains(expected),
            "{expected}: {err}"
        );
    }

    // A socket in a directory others can enter (PROTOCOL.md §9.3): refused without
    // `--allow-uid`, served with it.
    let open = dir.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (fd, _) = listener(&open, "forkserver.sock");
    let mut server = start(vec![fd], Pid::Server, &[], &[]);
    let (status, err) = await_exit(&mut server);
    assert!(!status.success());
    assert!(
        err.contains("unsafe permissions on socket directory"),
        "{err}"
    );
    let (fd, socket) = listener(&open, "shared.sock");
    let mut server = start(vec![fd], Pid::Server, &[], &["--allow-uid", "65534"]);
    Conn::connect(&socket).status();
    sigterm(&server);
    assert!(await_exit(&mut server).0.success());

    // A passed socket and a socket of our own cannot both be served.
    let (fd, _) = listener(&dir, "passed.sock");
    let own = dir.join("own.sock");
    let mut server = start(
        vec![fd],
        Pid::Server,
        &[],
        &["--socket", own.to_str().unwrap()],
    );
    let (status, err) = await_exit(&mut server);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("--socket"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `name` in `PATH`, if it is there.
fn in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[test]
fn under_systemd_socket_activate() {
    let Some(activate) = in_path("systemd-socket-activate") else {
        eprintln!("skipped: systemd-socket-activate is not installed");
        return;
    };
    let dir = scratch_dir("sdsa");
    let socket = dir.join("forkserver.sock");
    let (notify, notify_path) = notify_socket(&dir);
    let mut server = Proc(
        Command::new(activate)
            .arg("-l")
            .arg(&socket)
            .arg("--fdname=forkserver")
            .arg("-E")
            .arg(format!("NOTIFY_SOCKET={notify_path}"))
            .arg(BIN)
            .arg("serve")
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let until = Instant::now() + HANG;
    while !socket.exists() {
        if server.try_wait().unwrap().is_some() {
            panic!(
                "systemd-socket-activate failed: {}",
                await_exit(&mut server).1
            );
        }
        assert!(
            Instant::now() < until,
            "systemd-socket-activate did not bind"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // The real client, which verifies the directory and the listener's uid first; the first
    // connection makes systemd-socket-activate exec the server.
    let out = Command::new(BIN)
        .args([
            "run",
            "--socket",
            socket.to_str().unwrap(),
            "--",
            "/bin/echo",
            "hi",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"hi\n");
    await_notify(&notify, "READY", |m| m.starts_with("READY=1"));
    sigterm(&server);
    let (status, err) = await_exit(&mut server);
    assert!(status.success(), "{status}: {err}");
    assert!(std::fs::symlink_metadata(&socket)
        .unwrap()
        .file_type()
        .is_socket());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The unit files, with `ExecStart` pointing at the built binary (verify checks that it is
/// executable), pass `systemd-analyze verify` without a warning.
#[test]
fn unit_files_pass_systemd_analyze_verify() {
    let Some(analyze) = in_path("systemd-analyze") else {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/systemd");
    for (units, user) in [(contrib.clone(), true), (contrib.join("system"), false)] {
        let dir = scratch_dir("units");
        let runtime = dir.join("runtime");
        std::fs::create_dir(&runtime).unwrap();
        let mut paths = Vec::new();
        for name in ["forkserver.socket", "forkserver.service"] {
            let text = std::fs::read_to_string(units.join(name)).unwrap();
            let text: String = text
                .lines()
                .map(|l| match l.strip_prefix("ExecStart=") {
                    Some(cmd) => {
                        let args = cmd.split_once(' ').map_or("", |(_, a)| a);
                        assert!(args.starts_with("serve"), "{l}");
                        format!("ExecStart={BIN} {args}\n")
                    }
                    None => format!("{l}\n"),
                })
                .collect();
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            paths.push(path);
        }
        let mut cmd = Command::new(&analyze);
        cmd.arg("verify");
        if user {
            cmd.arg("--user").env("XDG_RUNTIME_DIR", &runtime);
        }
        let out = cmd.args(&paths).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.trim().is_empty(),
            "{units:?}: {err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
