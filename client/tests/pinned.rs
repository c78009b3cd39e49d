//! The binary is pinned (issue #15 point 10): a relaunch after the server died execs the file
//! that was launched first, held open since, not whatever is at its path by then. This test
//! binary is the server (its `zygote!` serves before libtest's `main`), launched from a copy
//! that is then replaced, as a package upgrade replaces a binary.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use forkserver_client::Client;

forkserver_server::zygote!(|z| z.typed("server_pid", |()| std::os::unix::process::parent_id()));

fn dev_ino(path: impl AsRef<Path>) -> Option<(u64, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino()))
}

/// The fds of process `pid` that are the file `file` (by device and inode).
fn fds_on(pid: &str, file: (u64, u64)) -> Vec<String> {
    let dir = format!("/proc/{pid}/fd");
    let fds = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name());
    let fds = fds.map(|n| n.into_string().unwrap());
    fds.filter(|n| dev_ino(format!("{dir}/{n}")) == Some(file))
        .collect()
}

/// Blocks until process `pid`, a child of this process (the launched server), has exited,
/// leaving it unreaped (`WNOWAIT`): the client reaps it at its next request.
fn await_exit(pid: u32) {
    use nix::sys::wait::{waitid, Id, WaitPidFlag};
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    loop {
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Err(nix::errno::Errno::EINTR) => {}
            r => break assert!(r.is_ok(), "waitid: {r:?}"),
        }
    }
}

#[test]
fn a_relaunch_execs_the_binary_first_launched() {
    let dir = std::env::temp_dir().join(format!("forkserver-pinned-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    let program = dir.join("server");
    std::fs::copy(std::env::current_exe().unwrap(), &program).unwrap();
    let original = dev_ino(&program).unwrap();

    let client = Client::launch(&program).unwrap();
    let first = client.launched_server_pid().unwrap();
    assert_eq!(dev_ino(format!("/proc/{first}/exe")), Some(original));

    // The upgrade: another program renamed over the path; the original file, unlinked, lives
    // on only as the client's fd.
    let marker = dir.join("the-replacement-ran");
    let replacement = dir.join("server.new");
    let script = format!("#!/bin/sh\necho \"$0\" > '{}'\nexit 3\n", marker.display());
    std::fs::write(&replacement, script).unwrap();
    std::fs::set_permissions(&replacement, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&replacement, &program).unwrap();

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    await_exit(first);

    // This call finds the server dead and starts it again: the original binary.
    let served_by = client
        .typed::<(), u32>("server_pid")
        .spawn(&())
        .unwrap()
        .join()
        .unwrap();
    let second = client.launched_server_pid().unwrap();
    assert_ne!(second, first, "relaunched");
    assert_eq!(served_by, second);
    assert_eq!(dev_ino(format!("/proc/{second}/exe")), Some(original));
    assert!(!marker.exists(), "the replacement ran");
    // argv[0] is the program as it was given.
    let cmdline = std::fs::read(format!("/proc/{second}/cmdline")).unwrap();
    let argv0 = cmdline.split(|&b| b == 0).next().unwrap();
    assert_eq!(argv0, program.as_os_str().as_encoded_bytes());
    // Named after it too (exec'd through an fd, the kernel named it after the fd number).
    let comm = std::fs::read_to_string(format!("/proc/{second}/comm")).unwrap();
    assert_eq!(comm, "server\n");

    // The pin is the client's alone: not the server's, close-on-exec here, closed with the
    // client.
    assert_eq!(fds_on(&second.to_string(), original), Vec::<String>::new());
    let ours = fds_on("self", original);
    assert_eq!(ours.len(), 1, "{ours:?}");
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", ours[0])).unwrap();
    let flags = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .unwrap();
    let flags = u32::from_str_radix(flags.trim(), 8).unwrap();
    assert_ne!(flags & nix::libc::O_CLOEXEC as u32, 0, "flags {flags:o}");
    drop(client);
    assert_eq!(fds_on("self", original), Vec::<String>::new());
    std::fs::remove_dir_all(&dir).unwrap();
}
