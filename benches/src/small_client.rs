//! A second, small client process for the client-RSS group: it spawns through the same server
//! as the (ballasted) harness, in batches the harness asks for, so that "ours from a big client"
//! and "ours from a small client" are measured interleaved, in the same minutes, rather than in
//! groups that run minutes apart (when the machine's state has drifted).
//!
//! The helper is the harness binary itself, started as `compare --small-client SOCKET`: it
//! reads the server's key (hex) as its first line on stdin (never argv or the environment,
//! PROTOCOL.md §9.1), answers `{"ready": true}`, then for each line `N` runs N `noop` spawns
//! with 0 fds, spawn + wait, and prints their latencies (ns) as a JSON list. EOF ends it.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use forkserver_client::Client;

use crate::driven::Driven;
use crate::Result;

/// The helper's side: serves batch requests from stdin until EOF.
///
/// # Errors
/// A bad key line, a failed connection or spawn, or a closed stdout.
pub fn serve(socket: &Path) -> Result<()> {
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let key_hex = lines.next().ok_or("small client: no key line")??;
    let key = hex_decode(key_hex.trim()).ok_or("small client: the key line is not hex")?;
    let client = Client::connect_with_key(socket, key)?;
    let mut call = client.call("noop", Vec::new());
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::json!({"ready": true}))?;
    out.flush()?;
    for line in lines {
        let n: usize = line?.trim().parse()?;
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let start = Instant::now();
            let status = call.spawn()?.wait()?;
            samples.push(start.elapsed().as_nanos() as u64);
            if !status.success() {
                return Err(format!("small client: noop ended with {status:?}").into());
            }
        }
        writeln!(out, "{}", serde_json::Value::from(samples))?;
        out.flush()?;
    }
    Ok(())
}

/// The harness's handle on a running helper.
#[derive(Debug)]
pub struct SmallClient {
    driven: Driven,
}

impl SmallClient {
    /// Starts `exe --small-client SOCKET` and hands it `key`.
    ///
    /// # Errors
    /// Starting the process, or a first line other than the `ready` line.
    pub fn start(exe: &Path, socket: &Path, key: &[u8]) -> Result<SmallClient> {
        let child = Command::new(exe)
            .arg("--small-client")
            .arg(socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut driven = Driven::new(child, "small client")?;
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        driven.send_line(&hex)?;
        let ready = driven.line()?;
        if ready.get("ready").and_then(|v| v.as_bool()) != Some(true) {
            return Err(format!("small client: unexpected first line {ready}").into());
        }
        Ok(SmallClient { driven })
    }

    /// Runs `n` spawns in the helper and appends their latencies to `out`.
    ///
    /// # Errors
    /// The helper failing or answering something other than a list of `n` numbers.
    pub fn batch(&mut self, n: usize, out: &mut Vec<Duration>) -> Result<()> {
        self.driven.batch(n, out)
    }
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_round_trip() {
        let key: Vec<u8> = (0..=255).collect();
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(super::hex_decode(&hex), Some(key));
        assert_eq!(super::hex_decode("abc"), None);
        assert_eq!(super::hex_decode("zz"), None);
    }
}
