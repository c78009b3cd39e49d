//! The building blocks of the groups: the `noop` call, ours timed to the pid or to the exit
//! code, and the results of one interleaved group and their table.

use std::fs::File;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use forkserver_benches::raw::RawClient;
use forkserver_benches::stats::{fmt_ns, ratio, Summary};
use forkserver_benches::{procfs, Result};
use forkserver_client::{Call, Client};
use serde_json::{Map, Value};

/// A `noop` call whose bundle holds `nfds` duplicates of `/dev/null` at targets `0..nfds`.
/// The builder keeps them and duplicates them again at each spawn, as it does for any user.
pub(crate) fn noop_call(client: &Client, nfds: u32, devnull: &File) -> Result<Call> {
    let mut call = client.call("noop", Vec::new());
    for target in 0..nfds {
        call.fd(target, devnull.try_clone()?);
    }
    Ok(call)
}

/// Ours, request → pid: `spawn` returning. The child is waited for outside the timed region.
pub(crate) fn ours_pid(mut call: Call) -> impl FnMut() -> Result<Duration> {
    move || {
        let start = Instant::now();
        let mut child = call.spawn()?;
        let elapsed = start.elapsed();
        check(child.wait()?)?;
        Ok(elapsed)
    }
}

/// Ours, request → exit code: `spawn` then `wait`.
pub(crate) fn ours_exit(mut call: Call) -> impl FnMut() -> Result<Duration> {
    move || {
        let start = Instant::now();
        let status = call.spawn()?.wait()?;
        let elapsed = start.elapsed();
        check(status)?;
        Ok(elapsed)
    }
}

/// The raw baseline ([`RawClient`]) on its own kept connection to `client`'s server, the
/// same `noop` job with `nfds` fds (`devnull` sent `nfds` times): request → pid, or request →
/// exit code when `to_exit`.
pub(crate) fn raw(
    client: &Client,
    nfds: usize,
    devnull: &File,
    to_exit: bool,
) -> Result<impl FnMut() -> Result<Duration>> {
    let fds = vec![devnull.as_fd(); nfds];
    let key = client.auth_key();
    let mut raw = RawClient::connect(&client.socket_path(), key.as_deref(), "noop", &fds)?;
    Ok(move || {
        let (pid, exit, code) = raw.spawn()?;
        if code != 0 {
            return Err(format!("raw: child ended with {code}").into());
        }
        Ok(if to_exit { exit } else { pid })
    })
}

pub(crate) fn check(status: forkserver_client::ExitStatus) -> Result<()> {
    if status.success() {
        Ok(())
    } else {
        Err(format!("child ended with {status}").into())
    }
}

/// Fails unless this process has one thread: the direct-fork figures must come from a
/// single-threaded process, like the server's.
pub(crate) fn ensure_single_threaded(what: &str) -> Result<()> {
    match procfs::thread_count() {
        1 => Ok(()),
        n => Err(format!("{what}: the harness has {n} threads, expected 1").into()),
    }
}

/// The results of one interleaved group, by scenario name.
#[derive(Debug, Default)]
pub(crate) struct Group(pub(crate) Vec<(String, Summary)>);

impl Group {
    pub(crate) fn get(&self, name: &str) -> Result<&Summary> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
            .ok_or_else(|| format!("no result for {name}").into())
    }

    pub(crate) fn to_json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(n, s)| (n.clone(), s.to_json()))
                .collect::<Map<_, _>>(),
        )
    }
}

/// Prints `g` as a table under `title`, with each median over `base`'s when given.
pub(crate) fn print_group(title: &str, g: &Group, base: Option<&str>) {
    println!("\n## {title}\n");
    println!(
        "{:<32} {:>6} {:>11} {:>11} {:>11} {:>8}",
        "scenario", "n", "median", "p90", "p99", "x base"
    );
    let base = base.and_then(|b| g.get(b).ok());
    for (name, s) in &g.0 {
        let x = base
            .and_then(|b| ratio(s, b))
            .map_or(String::new(), |x| format!("{x:.2}"));
        println!(
            "{:<32} {:>6} {:>11} {:>11} {:>11} {:>8}",
            name,
            s.n,
            fmt_ns(s.median_ns),
            fmt_ns(s.p90_ns),
            fmt_ns(s.p99_ns),
            x
        );
    }
}
