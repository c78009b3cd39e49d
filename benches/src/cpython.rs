//! CPython's `multiprocessing` forkserver, driven from the harness: a persistent `python3`
//! process that times `Process(target=noop).start()` + `join()` in batches on request, so that
//! its batches interleave with ours.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::driven::Driven;
use crate::Result;

/// The script. Standalone, `python3 script.py N` warms the forkserver and prints the median,
/// p90 and p99 of N start+join as JSON. Driven (no argument), it prints a JSON `ready` line
/// once warm, then for each line `N` on stdin runs N start+join and prints their latencies
/// (ns) as a JSON list; EOF or `quit` ends it.
pub const SCRIPT: &str = r#"
"""Times CPython's multiprocessing forkserver: Process(target=noop).start() + join()."""
import json
import math
import multiprocessing as mp
import sys
import time


def noop():
    pass


def pct(s, p):
    # Nearest rank, as the Rust harness computes it.
    rank = math.ceil(p / 100 * len(s))
    return s[min(max(rank, 1), len(s)) - 1]


def batch(ctx, n):
    out = []
    for _ in range(n):
        t = time.perf_counter_ns()
        p = ctx.Process(target=noop)
        p.start()
        p.join()
        out.append(time.perf_counter_ns() - t)
        if p.exitcode != 0:
            raise SystemExit(f"child exit code {p.exitcode}")
    return out


def main():
    ctx = mp.get_context("forkserver")
    batch(ctx, 3)  # starts the forkserver and warms it
    if len(sys.argv) > 1:
        s = sorted(batch(ctx, int(sys.argv[1])))
        print(json.dumps({"n": len(s), "median_ns": pct(s, 50), "p90_ns": pct(s, 90),
                          "p99_ns": pct(s, 99)}))
        return
    print(json.dumps({"ready": True, "python": sys.version.split()[0]}), flush=True)
    for line in sys.stdin:
        line = line.strip()
        if line == "quit":
            break
        print(json.dumps(batch(ctx, int(line))), flush=True)


if __name__ == "__main__":
    main()
"#;

/// A running driven `python3` with a warm forkserver.
#[derive(Debug)]
pub struct CPython {
    driven: Driven,
    script: PathBuf,
    version: String,
}

impl CPython {
    /// Writes the script to a temporary file and starts `python3` on it. Returns `Ok(None)`
    /// if there is no `python3` in `PATH`.
    ///
    /// # Errors
    /// Writing the script, starting Python, or a first line that is not the `ready` line.
    pub fn start() -> Result<Option<CPython>> {
        let script = std::env::temp_dir().join(format!(
            "forkserver-bench-cpython-{}.py",
            std::process::id()
        ));
        std::fs::write(&script, SCRIPT)?;
        let spawned = Command::new("python3")
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&script);
                if e.kind() == std::io::ErrorKind::NotFound {
                    return Ok(None);
                }
                return Err(e.into());
            }
        };
        let mut py = CPython {
            driven: Driven::new(child, "python3")?,
            script,
            version: String::new(),
        };
        let ready = py.driven.line()?;
        py.version = ready
            .get("python")
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("python3: unexpected first line {ready}"))?
            .to_owned();
        Ok(Some(py))
    }

    /// The Python version (`3.11.7`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Runs `n` start+join in Python and appends their latencies to `out`.
    ///
    /// # Errors
    /// Python failing or answering something other than a list of `n` numbers.
    pub fn batch(&mut self, n: usize, out: &mut Vec<Duration>) -> Result<()> {
        self.driven.batch(n, out)
    }
}

impl Drop for CPython {
    fn drop(&mut self) {
        // Python has read the script long ago; `driven` then closes its stdin, which ends the
        // script (and its forkserver, which sees its parent go), and waits for it.
        let _ = std::fs::remove_file(&self.script);
    }
}
