//! A helper process driven over pipes, one JSON value per line: the harness writes `N`, the
//! helper runs N operations and answers with their latencies (ns) as a JSON list. CPython's
//! forkserver script and the small client of the client-RSS group both work this way.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout};
use std::time::Duration;

use crate::Result;

/// A running helper, with its stdin and stdout piped.
#[derive(Debug)]
pub struct Driven {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    name: &'static str,
}

impl Driven {
    /// Takes over `child`, whose stdin and stdout must be piped; `name` is for error messages.
    ///
    /// # Errors
    /// A pipe missing.
    pub fn new(mut child: Child, name: &'static str) -> Result<Driven> {
        let stdin = child.stdin.take().ok_or("stdin not piped")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("stdout not piped")?);
        Ok(Driven {
            child,
            stdin: Some(stdin),
            stdout,
            name,
        })
    }

    /// Writes one line to the helper.
    ///
    /// # Errors
    /// The helper has closed its stdin.
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        let name = self.name;
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| format!("{name}: stdin closed"))?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Reads the helper's next line as JSON.
    ///
    /// # Errors
    /// The helper exited, or wrote something other than JSON.
    pub fn line(&mut self) -> Result<serde_json::Value> {
        let mut s = String::new();
        if self.stdout.read_line(&mut s)? == 0 {
            return Err(format!("{} exited early", self.name).into());
        }
        Ok(serde_json::from_str(&s)?)
    }

    /// Asks for `n` operations and appends their latencies to `out`.
    ///
    /// # Errors
    /// The helper failing or answering something other than a list of `n` numbers.
    pub fn batch(&mut self, n: usize, out: &mut Vec<Duration>) -> Result<()> {
        self.send_line(&n.to_string())?;
        let name = self.name;
        let v = self.line()?;
        let list = v
            .as_array()
            .ok_or_else(|| format!("{name}: expected a list"))?;
        if list.len() != n {
            return Err(format!("{name}: {} samples for {n}", list.len()).into());
        }
        for x in list {
            let ns = x
                .as_u64()
                .ok_or_else(|| format!("{name}: a sample is not an integer"))?;
            out.push(Duration::from_nanos(ns));
        }
        Ok(())
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        // EOF on its stdin ends the helper.
        self.stdin = None;
        let _ = self.child.wait();
    }
}
