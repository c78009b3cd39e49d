//! The key file (PROTOCOL.md §9.1): it must be the server's own and private to it, and the key
//! stays in the server: a pooled child does not keep a copy of it in memory.

mod common;

use std::io::Read;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use forkserver_protocol::*;

/// 32 random bytes: a pattern that turns up in a process's memory only as a copy of the key.
fn random_key() -> Vec<u8> {
    let mut key = vec![0u8; 32];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut key)
        .unwrap();
    key
}

fn write_key(path: &Path, key: &[u8], mode: u32) {
    std::fs::write(path, key).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Whether `needle` occurs in a writable mapping of process `pid` (heap, stack, data: where a
/// key read at run time can be), read through /proc/PID/mem.
fn memory_contains(pid: i32, needle: &[u8]) -> bool {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut scanned = 0;
    for line in maps.lines() {
        let mut it = line.split_whitespace();
        let (range, perms) = (it.next().unwrap(), it.next().unwrap());
        if !perms.starts_with("rw") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut buf = vec![0u8; (end - start) as usize];
        // A mapping may be unreadable ([vvar]) or shrink meanwhile: skip what cannot be read.
        let Ok(n) = mem.read_at(&mut buf, start) else {
            continue;
        };
        scanned += n;
        if buf[..n].windows(needle.len()).any(|w| w == needle) {
            return true;
        }
    }
    assert!(
        scanned > 0,
        "nothing of process {pid}'s memory could be read"
    );
    false
}

/// Waits until the server has exactly one child other than `not` and returns it.
fn pooled_child(srv: &Server, not: Option<i32>) -> i32 {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let kids: Vec<i32> = srv
            .children()
            .into_iter()
            .filter(|&p| Some(p) != not)
            .collect();
        if let [p] = kids[..] {
            // Give it the moment it needs to zero the key after fork: it is waiting for a job
            // once it holds just its socket and 0-2.
            wait_fd_count(p, 4);
            return p;
        }
        assert!(Instant::now() < until, "no pooled child: {kids:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn wait_fd_count(pid: i32, n: usize) {
    let until = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
        != n
    {
        assert!(Instant::now() < until, "process {pid} never settled");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_pooled_child_holds_no_copy_of_the_key() {
    let dir = scratch_dir("key-mem");
    let path = dir.join("key");
    let key = random_key();
    write_key(&path, &key, 0o600);
    let srv = Server::start_prepared(
        &["--key-file", path.to_str().unwrap(), "--prefork", "1"],
        Some(&key),
        |_| {},
    );
    // The scan works: the server itself holds the key.
    assert!(memory_contains(srv.pid(), &key), "the server lost its key");
    // The child pooled at startup, before any job.
    let first = pooled_child(&srv, None);
    assert!(
        !memory_contains(first, &key),
        "pooled child {first} holds the key"
    );
    // The child pooled after a client authenticated and a job ran (served by the first child).
    let mut c = Conn::connect_with_key(&srv.socket, &key);
    let (pid, _) = c
        .spawn(SpawnOptions::default(), bin_true(), FdBundle::new())
        .unwrap();
    assert_eq!(pid, first, "the pooled child took the job");
    assert_eq!(c.wait().unwrap().code(), 0);
    let second = pooled_child(&srv, Some(first));
    assert!(
        !memory_contains(second, &key),
        "child {second}, pooled after an authentication, holds the key"
    );
    assert!(memory_contains(srv.pid(), &key), "the server lost its key");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `forkserver serve --key-file path`, `path` holding a key of a good length: it must fail at
/// once, leave no socket file, and say why on stderr (returned).
fn serve_refuses(dir: &Path, key_path: &Path) -> String {
    let socket = dir.join("sock");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_forkserver"))
        .args(["serve", "--socket"])
        .arg(&socket)
        .arg("--key-file")
        .arg(key_path)
        // A server that wrongly accepts the file exits after a second instead of hanging.
        .args(["--idle-timeout", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "served with {key_path:?}: {stderr}");
    assert!(!socket.exists(), "a socket file was left behind");
    assert!(
        stderr.contains(&key_path.display().to_string()),
        "the message names the key file: {stderr}"
    );
    stderr
}

#[test]
fn a_key_file_open_to_the_group_is_refused() {
    let dir = scratch_dir("key-mode");
    let path = dir.join("key");
    write_key(&path, &random_key(), 0o640);
    let stderr = serve_refuses(&dir, &path);
    assert!(stderr.contains("mode 640"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_key_file_of_another_owner_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: chown to another uid needs root");
        return;
    }
    let dir = scratch_dir("key-owner");
    let path = dir.join("key");
    write_key(&path, &random_key(), 0o600);
    std::os::unix::fs::chown(&path, Some(12345), None).unwrap();
    let stderr = serve_refuses(&dir, &path);
    assert!(stderr.contains("owned by uid 12345"), "{stderr}");
    // Through a symbolic link of ours, the file opened is checked, not the link.
    let link = dir.join("link");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    let stderr = serve_refuses(&dir, &link);
    assert!(stderr.contains("owned by uid 12345"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_symbolic_link_to_our_own_key_file_is_accepted() {
    let dir = scratch_dir("key-link");
    let path = dir.join("key");
    let key = random_key();
    write_key(&path, &key, 0o600);
    let link = dir.join("link");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    let srv = Server::start_prepared(&["--key-file", link.to_str().unwrap()], Some(&key), |_| {});
    let mut c = Conn::connect_with_key(&srv.socket, &key);
    c.spawn(SpawnOptions::default(), bin_true(), FdBundle::new())
        .unwrap();
    assert_eq!(c.wait().unwrap().code(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}
