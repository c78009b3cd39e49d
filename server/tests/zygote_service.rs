//! A zygote program run by a service manager (`Zygote::service`): this test binary is both the
//! zygote and, run plainly, the simulated manager that starts it with a socket passed as fd 3
//! (`LISTEN_FDS=1`, `LISTEN_PID` its pid) and a `NOTIFY_SOCKET`, then checks that it asks for
//! more time before its preload (`EXTEND_TIMEOUT_USEC`), is ready after it (`READY=1`), runs
//! an entry point that sees the preloaded state, and says it stops on `SIGTERM`.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use forkserver_protocol::{
    send_message, EntryJob, FdBundle, FrameReader, Hello, Job, Message, Spawn, SpawnOptions,
};
use forkserver_server::{Invocation, Zygote};

static STATE: OnceLock<i32> = OnceLock::new();
const HANG: Duration = Duration::from_secs(60);

fn preloaded(_call: Invocation) -> i32 {
    *STATE.get().unwrap_or(&-1)
}

/// How many of the service manager's variables the child sees (none, PROTOCOL.md §9.4).
fn manager_vars(_call: Invocation) -> i32 {
    let names = [
        "LISTEN_PID",
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
    ];
    names
        .iter()
        .filter(|n| std::env::var_os(n).is_some())
        .count() as i32
}

fn main() {
    Zygote::new()
        .preload(|| {
            let _ = STATE.set(42);
        })
        .entry("preloaded", preloaded)
        .entry("manager_vars", manager_vars)
        .preload_timeout(Duration::from_secs(300))
        .service()
        .serve_if_requested();
    // Not activated: the manager's side.
    manager();
    println!("test a_socket_activated_zygote_notifies_around_its_preload ... ok");
    println!("\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n");
}

fn manager() {
    let dir = std::env::temp_dir().join(format!("fs-zyg-svc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&dir)
        .unwrap();
    let socket = dir.join("forkserver.sock");
    let listener = OwnedFd::from(UnixListener::bind(&socket).unwrap());
    let notify_path = dir.join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$; export LISTEN_PID; exec "$0""#)
        .arg(std::env::current_exe().unwrap())
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "forkserver")
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null());
    // SAFETY: the closure only calls dup2 and fcntl (async-signal-safe) on `fd`, open in the
    // parent until spawn returns and so in the child until exec: it becomes fd 3 without
    // close-on-exec (dup2 clears it on the copy; if it is 3 already, fcntl does).
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                let flags = nix::libc::fcntl(3, nix::libc::F_GETFD);
                if nix::libc::fcntl(3, nix::libc::F_SETFD, flags & !nix::libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if nix::libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut server = Reaped(cmd.spawn().unwrap());
    drop(listener);

    let extend = recv(&notify);
    assert_eq!(extend, "EXTEND_TIMEOUT_USEC=300000000");
    let ready = recv(&notify);
    assert!(ready.starts_with("READY=1\n"), "{ready}");

    // An entry point sees the state the preload built, and none of the manager's variables.
    assert_eq!(call(&socket, "preloaded"), 42);
    assert_eq!(call(&socket, "manager_vars"), 0);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    while !recv(&notify).starts_with("STOPPING=1") {}
    assert!(server.0.wait().unwrap().success());
    // The manager's socket stays.
    assert!(socket.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The server, killed and reaped if the test fails (its stdout is the test's: a live server
/// would keep the test runner waiting).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs entry point `name` through the server at `socket` and returns its exit code.
fn call(socket: &std::path::Path, name: &str) -> i32 {
    let sock = UnixStream::connect(socket).unwrap();
    let mut reader = FrameReader::new();
    send_message(sock.as_fd(), &Message::Hello(Hello::current()), vec![]).unwrap();
    let reply = reader.read_frame(sock.as_fd()).unwrap().message;
    assert!(matches!(reply, Message::HelloOk(_)), "{reply:?}");
    let job = Job::Entry(EntryJob::new(name, Vec::new()).unwrap());
    let (map, fds) = FdBundle::new().into_parts();
    let spawn = Spawn::new(SpawnOptions::default(), map, job).unwrap();
    send_message(sock.as_fd(), &Message::Spawn(spawn), fds).unwrap();
    loop {
        match reader.read_frame(sock.as_fd()).unwrap().message {
            Message::Exit(e) => return e.code(),
            Message::Pid(_) | Message::Signaled => {}
            m => panic!("unexpected {m:?}"),
        }
    }
}

/// The next notification (up to [`HANG`]).
fn recv(sock: &UnixDatagram) -> String {
    let until = Instant::now() + HANG;
    let mut buf = [0u8; 4096];
    loop {
        sock.set_read_timeout(Some(
            until
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => return String::from_utf8(buf[..n].to_vec()).unwrap(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("no notification: {e}"),
        }
    }
}
