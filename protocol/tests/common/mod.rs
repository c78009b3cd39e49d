//! Shared by the protocol tests: the JSON form of messages used by `spec/vectors/`, and fd
//! helpers.
#![allow(dead_code)]

use forkserver_protocol::*;
use serde_json::{json, Value};
use std::path::PathBuf;

pub fn spec_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../spec")
}

/// A byte string: a JSON string when it is UTF-8, else `{"hex": ...}` (PROTOCOL.md §10).
pub fn bstr(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) => Value::String(s.to_owned()),
        Err(_) => json!({ "hex": hex(b) }),
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// The decoded form of a message, as the vectors spell it.
pub fn to_json(m: &Message) -> Value {
    match m {
        Message::Hello(h) => json!({
            "type": "Hello", "min_version": h.min_version(), "max_version": h.max_version()
        }),
        Message::HelloOk(h) => match h.auth() {
            AuthMethod::None => json!({"type": "HelloOk", "version": h.version(), "auth": "none"}),
            AuthMethod::HmacSha256 { challenge } => json!({
                "type": "HelloOk", "version": h.version(), "auth": "hmac-sha256",
                "challenge": hex(&challenge)
            }),
        },
        Message::Auth(a) => json!({
            "type": "Auth", "response": hex(&a.response), "challenge": hex(&a.challenge)
        }),
        Message::AuthOk(a) => json!({"type": "AuthOk", "response": hex(&a.response)}),
        Message::Spawn(s) => {
            let o = s.options();
            let job = match s.job() {
                Job::Entry(e) => json!({
                    "kind": "entry", "name": e.name(), "payload": bstr(e.payload())
                }),
                Job::Exec(e) => json!({
                    "kind": "exec",
                    "program": bstr(e.program()),
                    "args": e.args().iter().map(|a| bstr(a)).collect::<Vec<_>>(),
                    "env_clear": e.env_clear(),
                    "env": e.env().iter().map(|(k, v)| json!([bstr(k), bstr(v)])).collect::<Vec<_>>(),
                    "cwd": e.cwd().map(bstr),
                }),
            };
            let mut job = job;
            if let Job::Exec(e) = s.job() {
                if !e.env_remove().is_empty() {
                    job["env_remove"] = e.env_remove().iter().map(|n| bstr(n)).collect();
                }
            }
            let mut v = json!({
                "type": "Spawn",
                "session": match o.session {
                    Session::Inherit => "inherit",
                    Session::NewProcessGroup => "new_process_group",
                    Session::NewSession => "new_session",
                    Session::JoinProcessGroup(_) => "join_process_group",
                },
                "want_pidfd": o.want_pidfd,
                "pid_after_exec": o.pid_after_exec,
                "kill_on_disconnect": o.kill_on_disconnect,
                "keep_connection": o.keep_connection,
                "deadline_ms": o.deadline_ms.map_or(0, |d| d.get()),
                "fd_targets": s.fds().targets(),
                "job": job,
            });
            // Rev 0.5 and 0.6 keys, present only when set, so that older vectors keep their form.
            if o.want_rusage {
                v["want_rusage"] = json!(true);
            }
            if let Some(r) = &o.rlimits {
                v["rlimits"] = r
                    .as_slice()
                    .iter()
                    .map(|l| json!({"resource": l.resource, "soft": l.soft, "hard": l.hard}))
                    .collect();
            }
            if let Some(m) = o.umask {
                v["umask"] = json!(m);
            }
            if let Some(n) = o.nice {
                v["nice"] = json!(n);
            }
            if o.no_new_privs {
                v["no_new_privs"] = json!(true);
            }
            if let Some(n) = o.oom_score_adj {
                v["oom_score_adj"] = json!(n);
            }
            if let Some(g) = o.grace_ms {
                v["grace_ms"] = json!(g.get());
            }
            if let Some(i) = o.seccomp_index {
                v["seccomp_index"] = json!(i);
            }
            if let Some(i) = o.landlock_index {
                v["landlock_index"] = json!(i);
            }
            if let Session::JoinProcessGroup(pgid) = o.session {
                v["pgid"] = json!(pgid);
            }
            let c = &o.credentials;
            if let Some(uid) = c.uid {
                v["uid"] = json!(uid);
            }
            if let Some(gid) = c.gid {
                v["gid"] = json!(gid);
            }
            if let Some(g) = &c.groups {
                v["groups"] = json!(g.as_slice());
            }
            v
        }
        Message::Signal(s) => json!({"type": "Signal", "signo": s.signo()}),
        Message::StatusRequest => json!({"type": "StatusRequest"}),
        Message::FeaturesRequest => json!({"type": "FeaturesRequest"}),
        Message::MetricsRequest => json!({"type": "MetricsRequest"}),
        Message::Metrics(m) => {
            let mut v = json!({"type": "Metrics"});
            for (name, value) in m.fields() {
                v[name] = json!(value);
            }
            v
        }
        Message::Pid(p) => json!({"type": "Pid", "pid": p.pid(), "pidfd": p.has_pidfd()}),
        Message::Exit(e) => {
            let mut v = json!({
                "type": "Exit", "code": e.code(), "deadline_expired": e.deadline_expired(),
                "core_dumped": e.core_dumped()
            });
            if let Some(u) = e.usage() {
                v["usage"] = json!({
                    "user_us": u.user_us, "system_us": u.system_us, "maxrss_kib": u.maxrss_kib
                });
            }
            v
        }
        Message::Signaled => json!({"type": "Signaled"}),
        Message::Status(s) => json!({
            "type": "Status", "protocol_version": s.protocol_version(),
            "server_pid": s.server_pid(), "live_children": s.live_children(),
            "connections": s.connections(), "spawned_total": s.spawned_total(),
            "server_version": s.server_version()
        }),
        Message::Features(f) => json!({
            "type": "Features", "revision_major": f.revision().major(),
            "revision_minor": f.revision().minor(), "spawn_flags": f.spawn_flags(),
            "requests": f.requests()
        }),
        Message::Error(e) => json!({
            "type": "Error", "code": e.code() as u16, "name": e.code().name(),
            "errno": e.errno(), "message": e.message()
        }),
    }
}

/// Number of open fds of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}
