//! A real `forkserver serve` process and a small raw-protocol client for the server's tests.
#![allow(dead_code)]

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use forkserver_protocol::*;

pub struct Server {
    pub child: Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// The server's fd count with no connection and no child.
    pub idle_fds: usize,
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

pub fn scratch_dir(tag: &str) -> PathBuf {
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("fs-test-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        Self::start_inner(extra, None)
    }

    /// A server that requires authentication with the key in `key_file` (which holds `key`).
    pub fn start_with_key(key_file: &Path, key: &[u8]) -> Server {
        let args = ["--key-file", key_file.to_str().unwrap()];
        Self::start_inner(&args, Some(key))
    }

    fn start_inner(extra: &[&str], key: Option<&[u8]>) -> Server {
        let dir = scratch_dir("srv");
        let socket = dir.join("sock");
        let child = Command::new(env!("CARGO_BIN_EXE_forkserver"))
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < until, "server did not come up");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Measure the idle fd count with exactly one connection open (a completed handshake
        // proves it was accepted), then subtract it.
        let probe = match key {
            Some(k) => Conn::connect_with_key(&socket, k),
            None => Conn::connect(&socket),
        };
        let mut srv = Server {
            child,
            dir,
            socket,
            idle_fds: 0,
        };
        srv.idle_fds = srv.fd_count() - 1;
        drop(probe);
        srv
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Open fds of the server process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// Children of the server (zombies included), from /proc.
    pub fn children(&self) -> Vec<i32> {
        children_of(self.pid())
    }

    /// Waits until the server's fd count and child list return to `fds` and empty.
    pub fn settle(&self, fds: usize) {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let (n, kids) = (self.fd_count(), self.children());
            if n == fds && kids.is_empty() {
                return;
            }
            assert!(
                Instant::now() < until,
                "server holds {n} fds (expected {fds}) and children {kids:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn connect(&self) -> Conn {
        Conn::connect(&self.socket)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn children_of(pid: i32) -> Vec<i32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

pub struct Conn {
    pub sock: UnixStream,
    pub reader: FrameReader,
}

impl Conn {
    pub fn connect(path: &Path) -> Conn {
        let sock = UnixStream::connect(path).unwrap();
        let mut c = Conn {
            sock,
            reader: FrameReader::new(),
        };
        c.send(&Message::Hello(Hello::current()), vec![]);
        match c.recv().message {
            Message::HelloOk(h) => assert_eq!(h.version(), 1),
            m => panic!("expected HelloOk, got {m:?}"),
        }
        c
    }

    /// Connects and authenticates with `key` (PROTOCOL.md §9.2), checking the server's answer.
    pub fn connect_with_key(path: &Path, key: &[u8]) -> Conn {
        let mut c = Conn::raw(path);
        c.send(&Message::Hello(Hello::current()), vec![]);
        let Message::HelloOk(ok) = c.recv().message else {
            panic!("expected HelloOk")
        };
        let AuthMethod::HmacSha256 { challenge } = ok.auth() else {
            panic!("no auth offered")
        };
        let ours = [0x5a; 32];
        let response = auth::client_response(key, &challenge);
        c.send(
            &Message::Auth(Auth {
                response,
                challenge: ours,
            }),
            vec![],
        );
        match c.recv().message {
            Message::AuthOk(ok) => assert!(auth::verify_server(key, &ours, &ok.response)),
            m => panic!("expected AuthOk, got {m:?}"),
        }
        c
    }

    pub fn raw(path: &Path) -> Conn {
        Conn {
            sock: UnixStream::connect(path).unwrap(),
            reader: FrameReader::new(),
        }
    }

    pub fn send(&mut self, m: &Message, fds: Vec<OwnedFd>) {
        send_message(self.sock.as_fd(), m, fds).unwrap();
    }

    pub fn try_recv(&mut self) -> Result<Frame, TransportError> {
        self.reader.read_frame(self.sock.as_fd())
    }

    pub fn recv(&mut self) -> Frame {
        self.try_recv().unwrap()
    }

    /// Sends a spawn and returns the pid reply's pid (and pidfd).
    pub fn spawn(
        &mut self,
        options: SpawnOptions,
        job: Job,
        bundle: FdBundle,
    ) -> Result<(i32, Option<OwnedFd>), ErrorReply> {
        let (map, fds) = bundle.into_parts();
        let spawn = Spawn::new(options, map, job).unwrap();
        self.send(&Message::Spawn(spawn), fds);
        let mut f = self.recv();
        match f.message {
            Message::Pid(p) => Ok((p.pid(), f.fds.pop())),
            Message::Error(e) => Err(e),
            m => panic!("unexpected {m:?}"),
        }
    }

    /// Reads until the exit code (or an error reply).
    pub fn wait(&mut self) -> Result<Exit, ErrorReply> {
        loop {
            match self.recv().message {
                Message::Exit(e) => return Ok(e),
                Message::Error(e) => return Err(e),
                Message::Signaled => {}
                m => panic!("unexpected {m:?}"),
            }
        }
    }
}

pub fn sh(script: &str) -> Job {
    let mut job = ExecJob::new("/bin/sh").unwrap();
    job.push_arg("-c").unwrap();
    job.push_arg(script).unwrap();
    Job::Exec(job)
}

pub fn bundle(pairs: Vec<(u32, OwnedFd)>) -> FdBundle {
    let mut b = FdBundle::new();
    for (t, fd) in pairs {
        b.push(t, fd).unwrap();
    }
    b
}

pub fn pipe() -> (std::fs::File, OwnedFd) {
    let (r, w) = nix::unistd::pipe().unwrap();
    (std::fs::File::from(r), w)
}

pub fn read_all(mut f: std::fs::File) -> String {
    use std::io::Read;
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    s
}
