//! End to end through the client library, with this test binary as a zygote server: its `main`
//! serves when launched by `Client::launch` (harness = false, so `main` is ours).
//!
//! Every test checks that the server's fd count and child list are back where they started.

mod common;
use common::Test;

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use forkserver_client::{Client, Error, Stdio};
use forkserver_protocol::ErrorCode;
use forkserver_server::{Invocation, Zygote};

/// Built by `preload` in the server; children read it without rebuilding it.
struct Preloaded {
    built_by: u32,
    table: Vec<u32>,
}

static STATE: OnceLock<Preloaded> = OnceLock::new();

fn out(call: &Invocation) -> std::fs::File {
    std::fs::File::from(
        call.fd(1)
            .expect("stdout mapped")
            .try_clone_to_owned()
            .unwrap(),
    )
}

/// Reports the preloaded state: who built it and a checksum.
fn preloaded(call: Invocation) -> i32 {
    let s = STATE.get().expect("preloaded");
    let sum: u64 = s.table.iter().map(|&x| u64::from(x)).sum();
    writeln!(
        out(&call),
        "{} {} {}",
        s.built_by,
        std::os::unix::process::parent_id(),
        sum
    )
    .unwrap();
    0
}

/// Exits with the status named by the payload.
fn exit_with(call: Invocation) -> i32 {
    String::from_utf8_lossy(call.payload()).parse().unwrap()
}

fn panics(_call: Invocation) -> i32 {
    panic!("this entry point panics on purpose");
}

/// Reports (fd, dev, ino) of every fd it holds.
fn fstat_all(call: Invocation) -> i32 {
    let mut lines = String::new();
    // List first, stat after: the directory's own fd is closed by then and drops out.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    for fd in fds {
        if let Ok(m) = std::fs::metadata(format!("/proc/self/fd/{fd}")) {
            use std::os::unix::fs::MetadataExt;
            lines.push_str(&format!("{fd} {} {}\n", m.dev(), m.ino()));
        }
    }
    // Opened after the listing, so its fd is not in it.
    out(&call).write_all(lines.as_bytes()).unwrap();
    0
}

/// Reports its uid, gid and supplementary groups: `uid gid g1,g2,...`.
fn ids(call: Invocation) -> i32 {
    let groups: Vec<String> = nix::unistd::getgroups()
        .unwrap()
        .iter()
        .map(|g| g.as_raw().to_string())
        .collect();
    writeln!(
        out(&call),
        "{} {} {}",
        nix::unistd::getuid(),
        nix::unistd::getgid(),
        groups.join(",")
    )
    .unwrap();
    0
}

/// Reads fd 3 to its end, then exits 7: it runs until the client closes the pipe's write end.
fn until_eof(mut call: Invocation) -> i32 {
    let mut pipe = std::fs::File::from(call.take_fd(3).expect("fd 3 mapped"));
    std::io::copy(&mut pipe, &mut std::io::sink()).unwrap();
    7
}

fn sleep_ms(call: Invocation) -> i32 {
    let ms: u64 = String::from_utf8_lossy(call.payload()).parse().unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    0
}

fn main() {
    // A launched server that must refuse: a second thread before it serves.
    if std::env::var_os("ZYGOTE_TEST_THREAD").is_some() {
        std::thread::spawn(|| std::thread::sleep(Duration::from_secs(60)));
    }
    Zygote::new()
        .preload(|| {
            // A slow preload (models, tables...), when a test asks for one.
            if let Ok(ms) = std::env::var("ZYGOTE_TEST_PRELOAD_MS") {
                std::thread::sleep(Duration::from_millis(ms.parse().unwrap()));
            }
            let _ = STATE.set(Preloaded {
                built_by: std::process::id(),
                table: (0..1_000_000).collect(),
            });
        })
        .entry("preloaded", preloaded)
        .entry("exit", exit_with)
        .entry("panics", panics)
        .entry("fstat_all", fstat_all)
        .entry("sleep_ms", sleep_ms)
        .entry("until_eof", until_eof)
        .entry("ids", ids)
        .serve_if_requested();

    // Roles for helper processes of the tests below.
    match std::env::var("ZYGOTE_TEST_ROLE").as_deref() {
        Ok("owner") => return owner_role(),
        Ok("dying-sender") => return dying_sender_role(),
        _ => {}
    }

    let tests: &[Test] = &[
        (
            "entry_point_with_preloaded_state",
            entry_point_with_preloaded_state,
        ),
        ("exit_codes_and_signals", exit_codes_and_signals),
        (
            "a_panicking_entry_exits_non_zero",
            a_panicking_entry_exits_non_zero,
        ),
        ("stdout_through_a_pipe", stdout_through_a_pipe),
        (
            "std_parity_output_status_getters",
            std_parity_output_status_getters,
        ),
        (
            "a_256_fd_bundle_at_its_targets",
            a_256_fd_bundle_at_its_targets,
        ),
        ("the_child_holds_only_its_fds", the_child_holds_only_its_fds),
        (
            "fifty_concurrent_spawns_from_eight_threads",
            fifty_concurrent_spawns_from_eight_threads,
        ),
        (
            "a_257th_fd_is_refused_before_sending",
            a_257th_fd_is_refused_before_sending,
        ),
        (
            "exec_errors_and_unknown_entries",
            exec_errors_and_unknown_entries,
        ),
        ("signal_kill_and_try_wait", signal_kill_and_try_wait),
        ("wait_timeout_twice_then_wait", wait_timeout_twice_then_wait),
        ("process_group_new_and_joined", process_group_new_and_joined),
        ("env_remove_and_get_envs", env_remove_and_get_envs),
        ("uid_gid_groups_as_root", uid_gid_groups_as_root),
        ("setup_errors_name_the_cause", setup_errors_name_the_cause),
        ("deadline", deadline),
        (
            "an_event_loop_calls_try_wait_before_polling",
            an_event_loop_calls_try_wait_before_polling,
        ),
        ("a_client_dying_after_sending", a_client_dying_after_sending),
        ("status", status),
        ("authentication_is_enforced", authentication_is_enforced),
        ("warm_connections", warm_connections),
        ("connections_are_reused", connections_are_reused),
        (
            "a_forked_copy_of_the_client_leaves_the_server_alone",
            a_forked_copy_of_the_client_leaves_the_server_alone,
        ),
        (
            "the_launched_server_inherits_no_stray_fd",
            the_launched_server_inherits_no_stray_fd,
        ),
        ("a_slow_preload_is_waited_for", a_slow_preload_is_waited_for),
        (
            "the_server_refusal_reaches_the_client",
            the_server_refusal_reaches_the_client,
        ),
        (
            "launched_children_die_with_the_server_when_asked",
            launched_children_die_with_the_server_when_asked,
        ),
        (
            "the_launched_server_restarts_after_a_kill",
            the_launched_server_restarts_after_a_kill,
        ),
        (
            "the_server_exits_with_its_owner",
            the_server_exits_with_its_owner,
        ),
        (
            "launch_self_with_a_main_that_serves",
            launch_self_with_a_main_that_serves,
        ),
    ];
    common::run(
        "zygote",
        tests,
        |client| settled(client, None),
        |client, before| {
            settled(client, Some(before));
        },
    );
}

/// The launched server's fd count, once it has no child and no connection but ours: waits for
/// that, and (given `expect`) for the count to come back to it.
fn settled(client: &Client, expect: Option<usize>) -> usize {
    use forkserver_protocol::{send_message, FrameReader, Hello, Message};
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let pid = client.launched_server_pid().expect("a launched server");
        // The connections kept for reuse are not the server's business here: one is counted,
        // the one `status` takes (and keeps again).
        client.close_idle_connections();
        let status = client.status().expect("status");
        // Hold one connection open while counting: an answered Hello proves it was accepted.
        let sock = std::os::unix::net::UnixStream::connect(client.socket_path()).unwrap();
        send_message(sock.as_fd(), &Message::Hello(Hello::current()), vec![]).unwrap();
        let mut reader = FrameReader::new();
        assert!(matches!(
            reader.read_frame(sock.as_fd()).unwrap().message,
            Message::HelloOk(_)
        ));
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
            - 1;
        let kids =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        drop(sock);
        if kids.trim().is_empty() && status.live_children() == 0 && status.connections() == 1 {
            match expect {
                None => return fds,
                Some(e) if e == fds => return fds,
                Some(_) => {}
            }
        }
        assert!(
            Instant::now() < until,
            "server did not settle: {fds} fds (expected {expect:?}), {} connections, children [{}]",
            status.connections(),
            kids.trim()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn read_to_string(mut f: impl Read) -> String {
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    s
}

fn entry_point_with_preloaded_state(client: &Client) {
    let mut child = client
        .call("preloaded", vec![])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let text = read_to_string(child.stdout.take().unwrap());
    assert!(child.wait().unwrap().success());
    let v: Vec<u64> = text
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let server = u64::from(client.launched_server_pid().unwrap());
    assert_eq!(v[0], server, "state built in the server, before the fork");
    assert_eq!(v[1], server, "the child's parent is the server");
    assert_eq!(v[2], (0..1_000_000u64).sum::<u64>());
}

fn exit_codes_and_signals(client: &Client) {
    for code in [0, 3, 255] {
        let st = client
            .call("exit", code.to_string())
            .spawn()
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(st.code(), Some(code));
    }
    for (sig, name) in [(9, "KILL"), (11, "SEGV")] {
        let st = client
            .command("sh")
            .args(["-c", &format!("kill -{name} $$")])
            .spawn()
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(st.raw_code(), -sig);
        assert_eq!(st.signal(), Some(sig));
        assert_eq!(st.code(), None);
    }
}

fn a_panicking_entry_exits_non_zero(client: &Client) {
    let t = Instant::now();
    let st = client
        .call("panics", vec![])
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(st.code(), Some(101));
    assert!(t.elapsed() < Duration::from_secs(5));
}

fn std_parity_output_status_getters(client: &Client) {
    // output(): stdout and stderr collected at once (more than a pipe holds on each, so a
    // reader of one at a time would deadlock), stdin /dev/null.
    let script =
        "head -c 200000 /dev/zero | tr '\\0' o; head -c 150000 /dev/zero | tr '\\0' e >&2; \
                  cat; exit 3";
    let mut cmd = client.command("sh");
    cmd.args(["-c", script]);
    assert_eq!(cmd.get_program(), "sh");
    assert_eq!(cmd.get_args().collect::<Vec<_>>(), ["-c", script]);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.status.to_string(), "exit status: 3");
    assert_eq!(out.stdout.len(), 200_000);
    assert!(out.stdout.iter().all(|&b| b == b'o'));
    assert_eq!(out.stderr.len(), 150_000);
    // An explicit setting wins over output()'s defaults.
    let out = client
        .command("sh")
        .args(["-c", "echo kept; echo err >&2"])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.len()),
        (&b"kept\n"[..], 0)
    );
    // status(): stdio inherited.
    let st = client
        .command("sh")
        .args(["-c", "kill -9 $$"])
        .status()
        .unwrap();
    assert_eq!(st.to_string(), "signal: 9 (SIGKILL)");
    assert_eq!(st.to_string(), st.to_std().to_string());
    // wait_with_output() closes a piped stdin first; id() is the pid.
    let mut child = client
        .command("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(child.id() as i32, child.pid());
    child.stdin.as_mut().unwrap().write_all(b"echoed").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"echoed");
    settled(client, None);
}

fn stdout_through_a_pipe(client: &Client) {
    let mut child = client
        .command("sh")
        .args(["-c", "echo out; echo err >&2; read line; echo got $line"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"ping\n").unwrap();
    assert_eq!(
        read_to_string(child.stdout.take().unwrap()),
        "out\ngot ping\n"
    );
    assert_eq!(read_to_string(child.stderr.take().unwrap()), "err\n");
    assert!(child.wait().unwrap().success());
}

fn a_256_fd_bundle_at_its_targets(client: &Client) {
    let mut originals: Vec<OwnedFd> = Vec::new();
    while originals.len() < 255 {
        let (r, w) = nix::unistd::pipe().unwrap();
        originals.push(r);
        originals.push(w);
    }
    originals.truncate(255);
    let mut call = client.call("fstat_all", vec![]);
    call.stdout(Stdio::piped());
    for (i, fd) in originals.iter().enumerate() {
        call.fd(100 + i as u32, fd.try_clone().unwrap());
    }
    let mut child = call.spawn().unwrap();
    let text = read_to_string(child.stdout.take().unwrap());
    assert!(child.wait().unwrap().success());
    let seen: std::collections::HashMap<u32, (u64, u64)> = text
        .lines()
        .map(|l| {
            let v: Vec<u64> = l.split_whitespace().map(|x| x.parse().unwrap()).collect();
            (v[0] as u32, (v[1], v[2]))
        })
        .collect();
    for (i, fd) in originals.iter().enumerate() {
        let st = nix::sys::stat::fstat(fd.as_fd()).unwrap();
        assert_eq!(
            seen.get(&(100 + i as u32)),
            Some(&(st.st_dev, st.st_ino)),
            "target {}",
            100 + i
        );
    }
}

fn the_child_holds_only_its_fds(client: &Client) {
    let (_r, w) = nix::unistd::pipe().unwrap();
    let mut child = client
        .call("fstat_all", vec![])
        .stdout(Stdio::piped())
        .fd(42, w)
        .spawn()
        .unwrap();
    let text = read_to_string(child.stdout.take().unwrap());
    assert!(child.wait().unwrap().success());
    let mut fds: Vec<u32> = text
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    fds.sort_unstable();
    // 0 and 2 on /dev/null, 1 the pipe, 42 the fd sent: nothing of the server's.
    assert_eq!(fds, [0, 1, 2, 42], "{text}");
}

fn fifty_concurrent_spawns_from_eight_threads(client: &Client) {
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..8u32 {
            let client = client.clone();
            let results = &results;
            s.spawn(move || {
                let mut i = t;
                while i < 50 {
                    let code = (i * 5) % 256;
                    let mut child = client.call("exit", code.to_string()).spawn().unwrap();
                    let pid = child.pid();
                    let st = child.wait().unwrap();
                    results
                        .lock()
                        .unwrap()
                        .push((pid, code as i32, st.raw_code()));
                    i += 8;
                }
            });
        }
    });
    let r = results.into_inner().unwrap();
    assert_eq!(r.len(), 50);
    for (_, want, got) in &r {
        assert_eq!(want, got);
    }
}

fn a_257th_fd_is_refused_before_sending(client: &Client) {
    let spawned_before = client.status().unwrap().spawned_total();
    let mut call = client.call("exit", "0");
    for t in 0..257u32 {
        call.fd(t + 10, std::fs::File::open("/dev/null").unwrap());
    }
    match call.spawn() {
        Err(Error::TooManyFds(n)) => assert!(n > 256),
        other => panic!("expected TooManyFds, got {other:?}"),
    }
    assert_eq!(client.status().unwrap().spawned_total(), spawned_before);
}

fn exec_errors_and_unknown_entries(client: &Client) {
    match client.command("/nonexistent/program").spawn() {
        Err(e) => {
            assert!(e.is_exec_failure(), "{e}");
            assert_eq!(e.errno(), Some(nix::errno::Errno::ENOENT as i32));
        }
        Ok(_) => panic!("spawned a program that does not exist"),
    }
    match client.call("no-such-entry", vec![]).spawn() {
        Err(e) => assert_eq!(e.server_code(), Some(ErrorCode::UnknownEntry), "{e}"),
        Ok(_) => panic!("unknown entry spawned"),
    }
}

/// The process group of `pid`, from `/proc/<pid>/stat` (field 5, after the command in
/// parentheses).
fn pgrp(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(2).unwrap().parse().unwrap()
}

fn process_group_new_and_joined(client: &Client) {
    let server = client.launched_server_pid().unwrap() as i32;
    let mut leader = client
        .command("sleep")
        .arg("10")
        .process_group(0)
        .spawn()
        .unwrap();
    assert_eq!(
        pgrp(leader.pid()),
        leader.pid(),
        "process_group(0): a new group"
    );
    let mut member = client
        .command("sleep")
        .arg("10")
        .process_group(leader.pid())
        .spawn()
        .unwrap();
    assert_eq!(
        pgrp(member.pid()),
        leader.pid(),
        "joined the leader's group"
    );
    let mut plain = client.command("sleep").arg("10").spawn().unwrap();
    assert_eq!(
        pgrp(plain.pid()),
        pgrp(server),
        "no setting: the server's group"
    );
    for c in [&mut leader, &mut member, &mut plain] {
        c.kill().unwrap();
        assert_eq!(c.wait().unwrap().signal(), Some(9));
    }
    // A group that does not exist (in the server's session): the kernel says EPERM.
    let e = client
        .command("true")
        .process_group(i32::MAX - 1)
        .spawn()
        .unwrap_err();
    assert_eq!(e.server_code(), Some(ErrorCode::ChildSetupFailed), "{e}");
    assert_eq!(e.errno(), Some(nix::errno::Errno::EPERM as i32), "{e}");
    // Negative: refused before sending, naming the field.
    let e = client
        .command("true")
        .process_group(-5)
        .spawn()
        .unwrap_err();
    assert!(matches!(e, Error::InvalidRequest(_)), "{e}");
    assert!(e.to_string().contains("process group"), "{e}");
}

fn env_remove_and_get_envs(client: &Client) {
    let env_of = |cmd: &mut forkserver_client::Command| {
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    // The launched server inherited this process's environment, PATH included.
    assert!(std::env::var_os("PATH").is_some());
    let all = env_of(&mut client.command("/usr/bin/env"));
    assert!(all.lines().any(|l| l.starts_with("PATH=")), "{all}");
    let mut cmd = client.command("/usr/bin/env");
    cmd.env("GONE", "x")
        .env_remove("PATH")
        .env_remove("GONE")
        .env_remove("BACK")
        .env("BACK", "again")
        .env("KEPT", "1");
    let envs: Vec<_> = cmd.get_envs().collect();
    assert_eq!(
        envs,
        [
            ("BACK".as_ref(), Some("again".as_ref())),
            ("GONE".as_ref(), None),
            ("KEPT".as_ref(), Some("1".as_ref())),
            ("PATH".as_ref(), None),
        ]
    );
    let got = env_of(&mut cmd);
    let keys: Vec<&str> = got.lines().map(|l| l.split('=').next().unwrap()).collect();
    assert!(!keys.contains(&"PATH") && !keys.contains(&"GONE"), "{got}");
    assert!(got.lines().any(|l| l == "BACK=again"), "{got}");
    assert!(got.lines().any(|l| l == "KEPT=1"), "{got}");
    assert_eq!(keys.len(), all.lines().count() - 1 + 2, "{got}");
    // With env_clear there is nothing to remove, and nothing is sent for it.
    let got = env_of(
        client
            .command("/usr/bin/env")
            .env_clear()
            .env_remove("PATH"),
    );
    assert_eq!(got, "");
    assert_eq!(
        client.command("x").current_dir("/tmp").get_current_dir(),
        Some(std::path::Path::new("/tmp"))
    );
}

/// uid, gid and groups, in forked children and (through a second server launched with
/// `FORKSERVER_PREFORK`) in pooled ones, which decode the request themselves.
fn uid_gid_groups_as_root(client: &Client) {
    if !nix::unistd::geteuid().is_root() {
        println!("uid_gid_groups_as_root: skipped, not root");
        return;
    }
    uid_gid_groups_through(client);
    let pooled = Client::launcher(std::env::current_exe().unwrap())
        .env(forkserver_server::PREFORK_ENV, "4")
        .launch()
        .expect("launch with prefork");
    uid_gid_groups_through(&pooled);
}

fn uid_gid_groups_through(client: &Client) {
    let ids_of = |cmd: &mut forkserver_client::Command| {
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let sh = || {
        let mut c = client.command("/bin/sh");
        c.arg("-c").arg("echo $(id -u) $(id -g) $(id -G)");
        c
    };
    assert_eq!(
        ids_of(sh().uid(65534).gid(65533).groups(&[100, 65532])),
        "65534 65533 65533 100 65532\n",
        "id -G: the gid, then the groups"
    );
    // uid alone: root's groups are dropped, the gid stays.
    assert_eq!(ids_of(sh().uid(65534)), "65534 0 0\n");
    // gid and groups alone: still root.
    assert_eq!(ids_of(sh().gid(7).groups(&[])), "0 7 7\n");
    // The chdir happens as the new user: root's home is closed to it.
    let e = sh().uid(65534).current_dir("/root").output();
    if std::fs::metadata("/root").is_ok_and(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode() & 0o001 == 0
    }) {
        let e = e.unwrap_err();
        assert_eq!(e.server_code(), Some(ErrorCode::ChildSetupFailed), "{e}");
        assert_eq!(e.errno(), Some(nix::errno::Errno::EACCES as i32), "{e}");
        assert!(
            e.to_string()
                .contains(r#"chdir("/root"): Permission denied"#),
            "{e}"
        );
    }
    // The ids are named when a call fails: a group the server's session lacks.
    let e = sh()
        .uid(65534)
        .process_group(i32::MAX - 1)
        .output()
        .unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("setpgid(0, {})", i32::MAX - 1)),
        "{e}"
    );
    // Entry jobs too.
    let mut child = client
        .call("ids", vec![])
        .stdout(Stdio::piped())
        .uid(65534)
        .gid(65534)
        .groups(&[1, 2, 3])
        .spawn()
        .unwrap();
    let text = read_to_string(child.stdout.take().unwrap());
    assert!(child.wait().unwrap().success());
    assert_eq!(text, "65534 65534 1,2,3\n");
    // Over the bound: refused before sending.
    let e = sh().groups(&[1; 65]).spawn().unwrap_err();
    assert!(
        e.to_string()
            .contains("65 supplementary groups, at most 64"),
        "{e}"
    );
}

fn setup_errors_name_the_cause(client: &Client) {
    let e = client.command("true").arg("a\0b").spawn().unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"invalid request: argument 1 holds a NUL byte: "a\x00b""#
    );
    let e = client
        .command("true")
        .arg("x".repeat(131_072))
        .spawn()
        .unwrap_err();
    assert!(
        e.to_string().contains("131072 bytes in one argument"),
        "{e}"
    );
    assert!(e.to_string().contains("at most 131071"), "{e}");
    let e = client
        .command("true")
        .current_dir("/no/such/dir")
        .spawn()
        .unwrap_err();
    assert_eq!(e.server_code(), Some(ErrorCode::ChildSetupFailed), "{e}");
    assert_eq!(e.errno(), Some(nix::errno::Errno::ENOENT as i32), "{e}");
    assert!(
        e.to_string()
            .contains(r#"chdir("/no/such/dir"): No such file or directory (ENOENT)"#),
        "{e}"
    );
    // Without waiting for the exec, the failure comes with the exit (the shared report).
    let e = client
        .command("true")
        .current_dir("/no/such/dir")
        .wait_for_exec(false)
        .spawn()
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(e.to_string().contains(r#"chdir("/no/such/dir")"#), "{e}");
}

fn signal_kill_and_try_wait(client: &Client) {
    let mut child = client.call("sleep_ms", "10000").spawn().unwrap();
    assert!(child.try_wait().unwrap().is_none());
    child.signal(15).unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(15));
    let mut child = client
        .command("sleep")
        .arg("10")
        .pidfd(true)
        .spawn()
        .unwrap();
    assert!(child.pidfd().is_some());
    child.kill().unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(9));
    assert_eq!(
        child.wait().unwrap().signal(),
        Some(9),
        "wait is idempotent"
    );
}

/// `wait_timeout` keeps the child: `None` twice while it runs, then `wait` (or a
/// `wait_timeout`) gets its status. Each child ends when a pipe closes, never by timing: an
/// exec child (`cat`) at EOF on its stdin, which `wait_timeout` leaves open and `wait`
/// closes; an entry at EOF on a pipe whose write end the test drops.
fn wait_timeout_twice_then_wait(client: &Client) {
    let mut child = client
        .command("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    for _ in 0..2 {
        assert_eq!(child.wait_timeout(Duration::from_millis(30)).unwrap(), None);
    }
    // Waited, not returned early: both timeouts ran out.
    assert!(
        t.elapsed() >= Duration::from_millis(60),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(child.wait_timeout(Duration::ZERO).unwrap(), None);
    assert!(child.stdin.is_some(), "wait_timeout keeps stdin open");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(child.wait_timeout(Duration::ZERO).unwrap(), Some(status));

    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let mut child = client
        .call("until_eof", Vec::new())
        .fd(3, r)
        .spawn()
        .unwrap();
    for _ in 0..2 {
        assert_eq!(child.wait_timeout(Duration::from_millis(20)).unwrap(), None);
    }
    drop(w);
    // No bound (the deadline overflows): waits until the child has ended.
    let status = child.wait_timeout(Duration::MAX).unwrap().expect("ended");
    assert_eq!(status.code(), Some(7));
    assert_eq!(child.wait().unwrap(), status);
}

/// The documented pattern for event loops (`Child::connection_fd`): `try_wait` first, then poll.
/// A kill whose acknowledgement and `Exit` arrive in one read leaves the `Exit` buffered: the
/// socket is then not readable again, and only `try_wait` sees it.
fn an_event_loop_calls_try_wait_before_polling(client: &Client) {
    for _ in 0..20 {
        let mut child = client.command("sleep").arg("10").spawn().unwrap();
        child.kill().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            let fd = child.connection_fd().expect("running, so a connection");
            let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
            let n = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(5000u16)).unwrap();
            assert_eq!(
                n, 1,
                "not readable, and try_wait had nothing: the loop would hang"
            );
        };
        assert_eq!(status.signal(), Some(9));
        assert!(
            child.connection_fd().is_none(),
            "no connection once the status is known"
        );
    }
}

fn deadline(client: &Client) {
    let st = client
        .call("sleep_ms", "10000")
        .deadline(Duration::from_millis(100))
        .spawn()
        .unwrap()
        .wait()
        .unwrap();
    assert!(st.deadline_expired());
    assert_eq!(st.signal(), Some(9));
}

/// A separate process sends a request to our server and dies before reading the pid.
fn a_client_dying_after_sending(client: &Client) {
    let (r, w) = nix::unistd::pipe().unwrap();
    let mut sender = std::process::Command::new(std::env::current_exe().unwrap())
        .env("ZYGOTE_TEST_ROLE", "dying-sender")
        .env("ZYGOTE_TEST_SOCKET", client.socket_path())
        .env("ZYGOTE_TEST_FD", w.as_raw_fd().to_string())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The key goes through a pipe (its stdin), not the environment.
    sender
        .stdin
        .take()
        .unwrap()
        .write_all(&client.auth_key().unwrap())
        .unwrap();
    let status = sender.wait().unwrap();
    drop(w);
    assert_eq!(status.code(), Some(0));
    // The child ran to its end (its output came) and the server reaped it (checked by the
    // harness after this test).
    assert_eq!(read_to_string(std::fs::File::from(r)), "still ran\n");
}

fn dying_sender_role() {
    let socket = std::env::var("ZYGOTE_TEST_SOCKET").unwrap();
    let fd: i32 = std::env::var("ZYGOTE_TEST_FD").unwrap().parse().unwrap();
    let mut key = Vec::new();
    std::io::stdin().read_to_end(&mut key).unwrap();
    let client = Client::connect_with_key(socket, key).unwrap();
    // SAFETY-free: borrow the inherited pipe for the dup the builder makes.
    let fd = unsafe_borrow(fd);
    let child = client
        .command("sh")
        .args(["-c", "sleep 0.2; echo still ran"])
        .fd_borrowed(1, fd)
        .spawn()
        .unwrap();
    // Die without waiting: the connection closes under the server.
    std::mem::forget(child);
    nix::unistd::dup2_stdout(std::fs::File::open("/dev/null").unwrap()).unwrap();
    std::process::exit(0);
}

#[allow(unsafe_code)]
fn unsafe_borrow(fd: i32) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: the fd was inherited from the test process and stays open until this helper
    // process exits.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

fn status(client: &Client) {
    let s = client.status().unwrap();
    assert_eq!(s.protocol_version(), 1);
    assert_eq!(s.server_pid() as u32, client.launched_server_pid().unwrap());
    assert_eq!(s.live_children(), 0);
}

/// One connection serves a stream of spawns (`KEEP_CONNECTION`): exits, exec failures and
/// status requests leave it READY; the server never sees more than the one connection.
fn connections_are_reused(client: &Client) {
    // Settled: only the connection `status` holds (connections closed just before may still
    // be counted until the server has seen their end).
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        client.close_idle_connections();
        if client.status().unwrap().connections() == 1 {
            break;
        }
        assert!(Instant::now() < until, "the server kept other connections");
        std::thread::sleep(Duration::from_millis(5));
    }
    // From here on no connection is closed: the counts are exact. (fds are checked by the
    // harness after the test.)
    for code in 0..30 {
        let mut child = client.call("exit", code.to_string()).spawn().unwrap();
        // The child's connection, and the one `status` takes (and keeps after the first time).
        assert_eq!(client.status().unwrap().connections(), 2);
        assert_eq!(child.wait().unwrap().code(), Some(code));
        assert_eq!(client.idle_connections(), 2);
    }
    let err = client.command("/nonexistent/program").spawn().unwrap_err();
    assert!(err.is_exec_failure(), "{err:?}");
    assert_eq!(err.errno(), Some(nix::libc::ENOENT));
    assert_eq!(client.idle_connections(), 2);
    assert_eq!(client.status().unwrap().connections(), 2);
    // Reuse off: the connection of each spawn is closed after its exit, as in rev 0.2.
    client.set_max_idle_connections(0);
    assert_eq!(client.idle_connections(), 0);
    let mut child = client.call("exit", "5").spawn().unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(5));
    assert_eq!(client.idle_connections(), 0);
    client.set_max_idle_connections(Client::DEFAULT_MAX_IDLE_CONNECTIONS);
}

/// A child forked (without exec) from the process that launched a server, dropping its copy
/// of the client, neither stops the server nor removes its socket.
fn a_forked_copy_of_the_client_leaves_the_server_alone(_client: &Client) {
    let other = Client::launch(std::env::current_exe().unwrap()).unwrap();
    let socket = other.socket_path();
    // SAFETY: the child drops the client (closing its fds, nothing else: the launcher's drop
    // does nothing in another process) and leaves with `_exit`.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            drop(other);
            // SAFETY: ends the child without running the parent's destructors or atexit.
            unsafe { nix::libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            let status = nix::sys::wait::waitpid(child, None).unwrap();
            assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
        }
    }
    assert!(socket.exists(), "the forked copy removed {socket:?}");
    let pid = other.launched_server_pid().unwrap();
    let mut child = other.call("exit", "4").spawn().unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(4));
    assert_eq!(
        other.launched_server_pid().unwrap(),
        pid,
        "the server was relaunched"
    );
}

/// fds of the client that are not close-on-exec do not reach a server it launches.
fn the_launched_server_inherits_no_stray_fd(_client: &Client) {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let (r, _w) = nix::unistd::pipe().unwrap();
    fcntl(&r, FcntlArg::F_SETFD(FdFlag::empty())).unwrap();
    let stray = std::fs::read_link(format!("/proc/self/fd/{}", r.as_raw_fd())).unwrap();
    let other = Client::launch(std::env::current_exe().unwrap()).unwrap();
    let pid = other.launched_server_pid().unwrap();
    let links: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .collect();
    assert!(
        !links.contains(&stray),
        "the server holds {stray:?}: {links:?}"
    );
}

/// A client that keeps a connection ready: spawns work as before, through a server restart too.
fn warm_connections(_client: &Client) {
    let warm = forkserver_client::Launcher::new(std::env::current_exe().unwrap())
        .warm_connections(true)
        .launch()
        .unwrap();
    for code in [0, 7, 9] {
        let mut child = warm.call("exit", code.to_string()).spawn().unwrap();
        assert_eq!(child.wait().unwrap().code(), Some(code));
    }
    // A wait opened a spare: the server sees it as a connection.
    let mut child = warm.call("sleep_ms", "100").spawn().unwrap();
    child.wait().unwrap();
    let pid = warm.launched_server_pid().unwrap();
    let fds = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let with_spare = fds(pid);
    // The server dies with a spare connection open: the next spawn notices and relaunches.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let mut child = warm
        .call("exit", "4")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(4));
    assert_ne!(warm.launched_server_pid().unwrap(), pid);
    assert!(with_spare > 0);
}

/// The launched server got a random key through a pipe; without it nothing gets through.
fn authentication_is_enforced(client: &Client) {
    use forkserver_protocol::{send_message, FrameReader, Hello, Message};
    let spawned = client.status().unwrap().spawned_total();
    // The server's environment and argv do not hold the key.
    let key = client.auth_key().expect("a launched server has a key");
    assert_eq!(key.len(), 32);
    let pid = client.launched_server_pid().unwrap();
    for what in ["environ", "cmdline"] {
        let bytes = std::fs::read(format!("/proc/{pid}/{what}")).unwrap();
        assert!(
            !bytes.windows(key.len()).any(|w| w == key.as_slice()),
            "key in {what}"
        );
    }
    match Client::connect(client.socket_path()) {
        Err(Error::AuthRequired) => {}
        other => panic!("expected AuthRequired, got {other:?}"),
    }
    match Client::connect_with_key(
        client.socket_path(),
        b"not the key, 32 bytes long......".to_vec(),
    ) {
        Err(e) => assert_eq!(e.server_code(), Some(ErrorCode::AuthFailed), "{e}"),
        Ok(_) => panic!("a wrong key was accepted"),
    }
    // A raw client that skips Auth and sends a spawn: refused before the request is read.
    let sock = std::os::unix::net::UnixStream::connect(client.socket_path()).unwrap();
    send_message(sock.as_fd(), &Message::Hello(Hello::current()), vec![]).unwrap();
    let spawn = {
        use forkserver_protocol::{EntryJob, FdMap, Job, Spawn, SpawnOptions};
        Spawn::new(
            SpawnOptions::default(),
            FdMap::from_targets(vec![3]).unwrap(),
            Job::Entry(EntryJob::new("exit", b"0".to_vec()).unwrap()),
        )
        .unwrap()
    };
    let (_r2, w2) = nix::unistd::pipe().unwrap();
    send_message(sock.as_fd(), &Message::Spawn(spawn), vec![w2]).unwrap();
    let mut reader = FrameReader::new();
    // The fd is refused on arrival (PROTOCOL.md §6.3), after the Hello's reply if the server
    // read the Hello alone.
    let mut m = reader.read_frame(sock.as_fd()).unwrap().message;
    if matches!(m, Message::HelloOk(_)) {
        m = reader.read_frame(sock.as_fd()).unwrap().message;
    }
    match m {
        Message::Error(e) => assert_eq!(e.code(), ErrorCode::AuthRequired),
        m => panic!("expected AuthRequired, got {m:?}"),
    }
    drop(sock);
    assert_eq!(
        client.status().unwrap().spawned_total(),
        spawned,
        "nothing was spawned"
    );
}

fn the_launched_server_restarts_after_a_kill(client: &Client) {
    let old = client.launched_server_pid().unwrap();
    let mut running = client.call("sleep_ms", "300").spawn().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // The running child's connection breaks: a clear error, not a hang.
    match running.wait() {
        Err(Error::ServerGone) => {}
        other => panic!("expected ServerGone, got {other:?}"),
    }
    // The next call restarts the server.
    let st = client.call("exit", "0").spawn().unwrap().wait().unwrap();
    assert!(st.success());
    let new = client.launched_server_pid().unwrap();
    assert_ne!(old, new);
    // The orphaned child was reparented and ends on its own; let it finish.
    std::thread::sleep(Duration::from_millis(400));
}

/// Longer than a handshake timeout (10 s): readiness is said by the server, not guessed.
fn a_slow_preload_is_waited_for(_client: &Client) {
    let t = Instant::now();
    let slow = Client::launcher(std::env::current_exe().unwrap())
        .env("ZYGOTE_TEST_PRELOAD_MS", "11000")
        .launch()
        .unwrap();
    assert!(t.elapsed() >= Duration::from_secs(11));
    let st = slow.call("exit", "5").spawn().unwrap().wait().unwrap();
    assert_eq!(st.code(), Some(5));
}

fn the_server_refusal_reaches_the_client(_client: &Client) {
    let err = Client::launcher(std::env::current_exe().unwrap())
        .env("ZYGOTE_TEST_THREAD", "1")
        .launch()
        .unwrap_err();
    assert!(matches!(err, Error::Launch(_)), "{err:?}");
    assert!(err.to_string().contains("single-threaded"), "{err}");
}

fn launched_children_die_with_the_server_when_asked(_client: &Client) {
    let own = Client::launcher(std::env::current_exe().unwrap())
        .kill_children_with_server(true)
        .launch()
        .unwrap();
    let child = own.command("sleep").arg("30").spawn().unwrap();
    let pid = child.pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(own.launched_server_pid().unwrap() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    // Dead: gone, or a zombie of whoever adopted it.
    let running = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
    };
    while running(pid) {
        assert!(Instant::now() < until, "child {pid} outlived its server");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(child);
}

/// A separate process launches its own server, reports the server's pid and exits.
fn the_server_exits_with_its_owner(_client: &Client) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env("ZYGOTE_TEST_ROLE", "owner")
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    let pid: i32 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    // Gone, or a zombie waiting for whoever adopted it to reap it: either way it has exited.
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                !s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
    };
    while alive(pid) {
        assert!(Instant::now() < until, "server {pid} outlived its owner");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn owner_role() {
    let client = Client::launch(std::env::current_exe().unwrap()).unwrap();
    assert!(client
        .call("exit", "0")
        .spawn()
        .unwrap()
        .wait()
        .unwrap()
        .success());
    println!("{}", client.launched_server_pid().unwrap());
    // Exit without dropping the client: as a crashing owner would.
    std::process::exit(0);
}

/// `Client::launch_self` in a binary whose own `main` serves (no `zygote!`): `serve_if_requested`
/// has run, so the copy serves. A server of its own, shared by later calls, that lives until
/// this process exits.
fn launch_self_with_a_main_that_serves(client: &Client) {
    let own = Client::launch_self().expect("launch_self");
    let pid = own.launched_server_pid().unwrap();
    assert_ne!(Some(pid), client.launched_server_pid());
    let status = own
        .call("exit", b"3".to_vec())
        .spawn()
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(status.code(), Some(3));
    assert_eq!(
        Client::launch_self().unwrap().launched_server_pid(),
        Some(pid)
    );
}
