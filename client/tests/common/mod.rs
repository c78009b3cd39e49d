//! The harness of the test binaries that are their own zygote server (`harness = false`:
//! `main` serves when `Client::launch` starts this binary, and runs the tests otherwise), and
//! the checks they share: the launched server's fds and children, this process's fds.

// Each binary uses the part it needs.
#![allow(dead_code)]

pub mod entries;

use std::time::{Duration, Instant};

use forkserver_client::{CallError, Client};

/// A test: its name and its body.
pub type Test = (&'static str, fn(&Client));

/// Launches this binary as the server and runs `tests` on one client (those whose name
/// contains an argument, if any is given), with `before` taken before each and `after`
/// checking it after: a test whose body or `after` panics fails. Prints libtest's summary line
/// (CI sums those) and exits 101 if a test failed; the whole run gets three minutes.
pub fn run<S>(
    suite: &str,
    tests: &[Test],
    before: impl Fn(&Client) -> S,
    after: impl Fn(&Client, S),
) {
    let name = suite.to_owned();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(180));
        eprintln!("{name} tests: still running after 180 s, giving up");
        std::process::exit(102);
    });
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let client = Client::launch(std::env::current_exe().unwrap()).expect("launch");
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in tests {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let start = before(&client);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            test(&client);
            after(&client, start);
        }));
        if r.is_ok() {
            passed += 1;
            println!("test {name} ... ok");
        } else {
            failed += 1;
            println!("test {name} ... FAILED");
        }
    }
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {verdict}. {passed} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out\n"
    );
    if failed > 0 {
        std::process::exit(101);
    }
}

/// This process's fd count, with no connection kept for reuse.
pub fn own_fds(client: &Client) -> usize {
    client.close_idle_connections();
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// The launched server's fd count, once it has no child and no connection but ours: waits for
/// that, and (given `expect`) for the count to come back to it.
pub fn settled(client: &Client, expect: Option<usize>) -> usize {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let pid = client.launched_server_pid().expect("a launched server");
        client.close_idle_connections();
        let status = client.status().expect("status");
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0);
        let kids =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let quiet = kids.trim().is_empty() && status.live_children() == 0;
        if quiet && status.connections() <= 1 && expect.map_or(true, |e| e == fds) {
            return fds;
        }
        assert!(
            Instant::now() < until,
            "server did not settle: {fds} fds (expected {expect:?}), children [{}]",
            kids.trim()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The checks of the typed suites: the server settled and this process's fds, before a test.
pub fn fds_before(client: &Client) -> (usize, usize) {
    (settled(client, None), own_fds(client))
}

/// After a test: both counts back where [`fds_before`] found them.
pub fn fds_back(client: &Client, (server, own): (usize, usize)) {
    settled(client, Some(server));
    assert_eq!(own_fds(client), own, "this process's fds");
}

/// Asserts that `r` is the outcome of an entry that panicked with `message` at line `line` of
/// `file` (a test's own `file!()`: where its panicking entry is).
pub fn assert_panicked_at<T: std::fmt::Debug>(
    r: Result<T, CallError>,
    message: &str,
    file: &str,
    line: u32,
) {
    match r {
        Err(CallError::Panicked {
            message: got,
            location,
        }) => {
            assert_eq!(got, message);
            let want = format!("{file}:{line}:");
            assert!(location.starts_with(&want), "{location} is not at {want}");
        }
        other => panic!("not a panic: {other:?}"),
    }
}
