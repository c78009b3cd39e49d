//! Exit accounting and metrics (issue 17, points 5-6; PROTOCOL.md §5.9, §5.16) through a real
//! `forkserver serve` and real children: `wait4`'s usage in `Exit`, the counters of `Metrics`,
//! and what `forkserver run --time` and `forkserver status --format` print.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::Server;
use forkserver_client::{Client, ExitStatus, Stdio};
use forkserver_protocol::{AuthMethod, ErrorCode, Hello, Message};

/// Burns at least 200 ms of CPU time (measured by the child itself), nearly all of it in user
/// mode: the clock (a system call) is read only every 100,000 iterations, so the kernel's
/// split of the run time between user and system (sampled at ticks) gives user the most.
const BURN: &str = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.2:\n    for _ in range(100000):\n        pass";
/// Touches every page of 64 MiB.
const TOUCH: &str = "b = bytearray(64 << 20)\nfor i in range(0, len(b), 4096):\n    b[i] = 1";

fn python(client: &Client, script: &str, usage: bool) -> ExitStatus {
    client
        .command("python3")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .resource_usage(usage)
        .status()
        .unwrap()
}

fn check_usage(client: &Client) {
    let burn = python(client, BURN, true);
    assert!(burn.success(), "{burn}");
    let u = burn.resource_usage().expect("usage asked for");
    assert!(u.user_time() >= Duration::from_millis(100), "{u:?}");
    let touch = python(client, TOUCH, true);
    assert!(touch.success(), "{touch}");
    let u = touch.resource_usage().expect("usage asked for");
    assert!(u.max_rss_kib() >= 60 * 1024, "{u:?}");
    assert_eq!(python(client, "pass", false).resource_usage(), None);
}

#[test]
fn exit_carries_the_usage_of_forked_and_pooled_children() {
    for extra in [&[][..], &["--prefork", "2"][..]] {
        let srv = Server::start(extra);
        let client = Client::connect(&srv.socket).unwrap();
        check_usage(&client);
        drop(client);
        match extra.is_empty() {
            true => srv.settle(srv.idle_fds),
            // The pool's children stay.
            false => srv.wait_fds(srv.idle_fds),
        }
    }
}

#[test]
fn run_time_prints_what_time_v_prints() {
    let srv = Server::start(&[]);
    let out = Command::new(env!("CARGO_BIN_EXE_forkserver"))
        .arg("run")
        .arg("--socket")
        .arg(&srv.socket)
        .arg("--time")
        .args(["--", "python3", "-c", BURN])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    let field = |name: &str| -> String {
        let line = err.lines().find(|l| l.trim_start().starts_with(name));
        let line = line.unwrap_or_else(|| panic!("no {name:?} in {err}"));
        line.rsplit(": ").next().unwrap().to_owned()
    };
    let user: f64 = field("User time (seconds)").parse().unwrap();
    assert!(user >= 0.1, "{err}");
    let _: f64 = field("System time (seconds)").parse().unwrap();
    let _: u64 = field("Maximum resident set size (kbytes)").parse().unwrap();
    assert!(field("Elapsed (wall clock) time").contains(':'), "{err}");
}

/// The server's metrics as `forkserver status --format json` prints them, by name.
fn status_json(srv: &Server, key_file: &std::path::Path) -> HashMap<String, serde_json::Value> {
    let out = status_cmd(srv, key_file, "json");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_object().unwrap().clone().into_iter().collect()
}

fn status_cmd(srv: &Server, key_file: &std::path::Path, format: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_forkserver"))
        .arg("status")
        .arg("--socket")
        .arg(&srv.socket)
        .arg("--key-file")
        .arg(key_file)
        .args(["--format", format])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Checks the Prometheus text exposition format: every sample line `name{labels} value`, each
/// name with a `# HELP` and a `# TYPE` before its samples, counters ending in `_total`.
/// Returns the samples.
fn parse_prometheus(text: &str) -> HashMap<String, u64> {
    let mut help = std::collections::HashSet::new();
    let mut types = HashMap::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help.insert(rest.split(' ').next().unwrap().to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(matches!(kind, "counter" | "gauge"), "{line}");
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let value: u64 = value.parse().unwrap_or_else(|_| panic!("{line:?}"));
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("{line:?}"));
                for pair in labels.split(',') {
                    let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("{line:?}"));
                    assert!(
                        k.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                        "{line}"
                    );
                    assert!(
                        v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                        "{line}"
                    );
                }
                name
            }
            None => series,
        };
        assert!(name.starts_with("forkserver_"), "{line}");
        assert!(
            name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{line}"
        );
        assert!(help.contains(name), "no HELP before {line}");
        let kind = types
            .get(name)
            .unwrap_or_else(|| panic!("no TYPE before {line}"));
        assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
        assert!(samples.insert(series.to_owned(), value).is_none(), "{line}");
    }
    samples
}

#[test]
fn counters_move_through_real_spawns_and_every_format_parses() {
    // Exec jobs on the CLONE_VM path (the default), then on the fork path.
    counters_move(false);
    counters_move(true);
}

fn counters_move(fork_path: bool) {
    let dir = common::scratch_dir("metrics-key");
    let key_file = dir.join("key");
    let key = [0x42u8; 32];
    std::fs::write(&key_file, key).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key_arg = key_file.to_str().unwrap();
    let srv = Server::start_prepared(&["--key-file", key_arg], Some(&key), |cmd| {
        if fork_path {
            cmd.env("FORKSERVER_EXEC_FORK", "1");
        }
    });
    let client = Client::connector(&srv.socket).key(key).connect().unwrap();
    let before = client.metrics().unwrap();
    assert_eq!(
        before.fields().iter().filter(|f| f.1 != 0).count(),
        0,
        "{before:?}"
    );

    // An exec that succeeds, one that fails, one killed at its deadline.
    assert!(client.command("true").status().unwrap().success());
    let e = client.command("/nonexistent/program").spawn().unwrap_err();
    assert!(e.is_exec_failure(), "{e}");
    let killed = client
        .command("sleep")
        .arg("30")
        .deadline(Duration::from_millis(50))
        .status()
        .unwrap();
    assert!(killed.deadline_expired(), "{killed}");
    // Two setup failures at two stages: chdir, and joining a process group that is not there.
    let e = client
        .command("true")
        .current_dir("/nonexistent/dir")
        .spawn()
        .unwrap_err();
    assert!(e.to_string().contains("chdir"), "{e}");
    let e = client
        .command("true")
        .process_group(0x7fff_fff0)
        .spawn()
        .unwrap_err();
    assert!(e.to_string().contains("setpgid"), "{e}");
    // A handshake with the wrong key.
    let mut c = common::Conn::raw(&srv.socket);
    c.send(&Message::Hello(Hello::current()), vec![]);
    let Message::HelloOk(ok) = c.recv().message else {
        panic!("expected HelloOk")
    };
    let AuthMethod::HmacSha256 { challenge } = ok.auth() else {
        panic!("no auth offered")
    };
    let response = forkserver_protocol::auth::client_response(&[0x13; 32], &challenge);
    let auth = forkserver_protocol::Auth {
        response,
        challenge: [7; 32],
    };
    c.send(&Message::Auth(auth), vec![]);
    match c.recv().message {
        Message::Error(e) => assert_eq!(e.code(), ErrorCode::AuthFailed),
        m => panic!("expected AuthFailed, got {m:?}"),
    }
    drop(c);

    let m = client.metrics().unwrap();
    // `sleep` exec'd before its deadline: an exec that succeeded too.
    assert_eq!(m.spawns_exec_ok, 2, "{m:?}");
    assert_eq!(m.spawns_exec_failed, 1, "{m:?}");
    assert_eq!(m.spawns_exec_setup_failed, 2, "{m:?}");
    assert_eq!(
        (m.setup_failed_chdir, m.setup_failed_session),
        (1, 1),
        "{m:?}"
    );
    assert_eq!(
        m.setup_failed_setup
            + m.setup_failed_limits
            + m.setup_failed_credentials
            + m.setup_failed_sandbox,
        0,
        "{m:?}"
    );
    assert_eq!(m.kills_deadline, 1, "{m:?}");
    assert_eq!(m.auth_failures, 1, "{m:?}");
    assert_eq!(
        (m.refused_quota, m.refused_peer, m.kills_disconnect),
        (0, 0, 0)
    );

    let json = status_json(&srv, &key_file);
    for (name, value) in m.fields() {
        if name != "uptime_s" {
            assert_eq!(json[name], serde_json::json!(value), "{name}");
        }
    }
    assert_eq!(json["spawned_total"], serde_json::json!(5));
    let prom = parse_prometheus(&status_cmd(&srv, &key_file, "prometheus"));
    assert_eq!(
        prom[r#"forkserver_spawns_total{kind="exec",result="ok"}"#],
        2
    );
    assert_eq!(
        prom[r#"forkserver_spawns_total{kind="exec",result="exec_failed"}"#],
        1
    );
    assert_eq!(prom[r#"forkserver_kills_total{reason="deadline"}"#], 1);
    assert_eq!(prom["forkserver_auth_failures_total"], 1);
    assert_eq!(prom["forkserver_spawned_total"], 5);
    assert_eq!(prom[r#"forkserver_setup_failures_total{stage="chdir"}"#], 1);
    assert_eq!(
        prom[r#"forkserver_setup_failures_total{stage="session"}"#],
        1
    );
    assert_eq!(
        prom[r#"forkserver_setup_failures_total{stage="credentials"}"#],
        0
    );
    let text = status_cmd(&srv, &key_file, "text");
    assert!(text.contains("spawns_exec_failed"), "{text}");
    drop(client);
    srv.settle(srv.idle_fds);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn log_format_json_writes_one_object_per_line_with_the_metrics_names() {
    let dir = common::scratch_dir("log-json");
    let log = dir.join("log");
    let file = std::fs::File::create(&log).unwrap();
    let srv = Server::start_prepared(&["--log-format", "json"], None, |cmd| {
        cmd.env("RUST_LOG", "debug").stderr(file);
    });
    let client = Client::connect(&srv.socket).unwrap();
    let e = client.command("/nonexistent/program").spawn().unwrap_err();
    assert!(e.is_exec_failure(), "{e}");
    assert!(client.command("true").status().unwrap().success());
    drop(client);
    srv.settle(srv.idle_fds);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(srv.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut srv = srv;
    srv.child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let has = |fields: &[&str]| {
        lines
            .iter()
            .any(|v| fields.iter().all(|f| v.get(*f).is_some()))
    };
    assert!(has(&["timestamp", "level", "message"]), "{text}");
    assert!(has(&["conn", "peer_uid"]), "{text}");
    assert!(has(&["pid", "serial", "errno"]), "{text}");
    assert!(has(&["stage", "errno"]), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn refusals_kills_and_orphans_are_counted() {
    // One child at most, one pooled child: a second spawn is refused at the limit, a child
    // whose client goes away is killed, a pooled child killed before its job is an orphan.
    let srv = Server::start(&["--max-children", "1", "--prefork", "1"]);
    let client = Client::connect(&srv.socket).unwrap();
    let pooled = srv.wait_children(1)[0];
    let m = client.metrics().unwrap();
    assert_eq!((m.pool_size, m.pool_idle), (1, 1), "{m:?}");

    let mut first = client
        .command("sleep")
        .arg("30")
        .kill_on_disconnect(true)
        .spawn()
        .unwrap();
    let e = client.command("true").spawn().unwrap_err();
    assert_eq!(e.server_code(), Some(ErrorCode::ResourceExhausted), "{e}");
    // The sleeper took the pooled child; its connection ends with the Child.
    assert!(first.try_wait().unwrap().is_none());
    drop(first);
    let until = std::time::Instant::now() + common::HANG;
    let m = loop {
        let m = client.metrics().unwrap();
        if m.kills_disconnect == 1 && m.spawns_exec_ok == 1 || std::time::Instant::now() > until {
            break m;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(m.refused_max_children, 1, "{m:?}");
    assert_eq!(m.kills_disconnect, 1, "{m:?}");
    assert_eq!(m.spawns_exec_ok, 1, "{m:?}");

    // The pool's replacement child, killed from outside before it has a job.
    let until = std::time::Instant::now() + common::HANG;
    let spare = loop {
        let kids = srv.children();
        if let [k] = kids[..] {
            if k != pooled && client.metrics().unwrap().pool_idle == 1 {
                break k;
            }
        }
        assert!(
            std::time::Instant::now() < until,
            "no new pooled child: {kids:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(spare),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let until = std::time::Instant::now() + common::HANG;
    while client.metrics().unwrap().orphans_reaped == 0 {
        assert!(
            std::time::Instant::now() < until,
            "the orphan was not counted"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(client);
}
