//! The second implementation, written from `spec/PROTOCOL.md` alone, checks the real server:
//! `spec/conformance/conformance.py` against a live `forkserver serve`, and the Python client's
//! own offline tests (vectors, HMAC example).

mod common;

use std::path::PathBuf;
use std::process::Command;

fn spec() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../spec")
}

/// Runs a Python script and returns its combined output; fails the test if it fails.
fn python(args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new("python3")
        .args(args)
        .output()
        .expect("python3 is needed by the conformance tests");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{args:?} failed:\n{text}");
    text
}

#[test]
fn the_conformance_runner_passes() {
    use std::os::unix::fs::PermissionsExt;
    let srv = common::Server::start(&[]);
    // A second server requires authentication (§9): the runner checks it with the key.
    let dir = common::scratch_dir("conf-key");
    let key_file = dir.join("key");
    let key: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(91).wrapping_add(7))
        .collect();
    std::fs::write(&key_file, &key).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let keyed = common::Server::start_with_key(&key_file, &key);
    let script = spec().join("conformance/conformance.py");
    let text = python(&[
        script.as_os_str(),
        "--socket".as_ref(),
        srv.socket.as_os_str(),
        "--auth-socket".as_ref(),
        keyed.socket.as_os_str(),
        "--key-file".as_ref(),
        key_file.as_os_str(),
    ]);
    assert!(
        text.contains("PASS auth/right-key"),
        "the authentication checks ran:\n{text}"
    );
    let summary = text
        .lines()
        .rev()
        .find(|l| l.contains(" passed, "))
        .expect("a summary line");
    let (passed, failed) = summary.split_once(" passed, ").unwrap();
    let passed: usize = passed.trim().parse().unwrap();
    let failed: usize = failed.trim_end_matches(" failed").trim().parse().unwrap();
    eprintln!("conformance: {summary}");
    assert_eq!(failed, 0, "{text}");
    assert!(
        passed >= 250,
        "the runner ran only {passed} checks:\n{text}"
    );
    srv.settle(srv.idle_fds);
    keyed.settle(keyed.idle_fds);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_python_client_passes_its_own_tests() {
    let script = spec().join("clients/python/test_forkserver_client.py");
    python(&[script.as_os_str()]);
}

/// The typed entry convention written from PROTOCOL.md §11 alone, against its vectors.
#[test]
fn the_python_typed_convention_passes_the_typed_vectors() {
    let script = spec().join("clients/python/test_forkserver_typed.py");
    python(&[script.as_os_str()]);
}
