//! [`Output`]: a finished child's status and everything it wrote, as
//! [`std::process::Output`]; and the reader that collects stdout and stderr together.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::child::Child;
#[cfg(doc)]
use crate::error::Error;
use crate::error::Result;
use crate::exit_status::ExitStatus;
use crate::pipes::{ChildStderr, ChildStdout};

/// The output of a finished child: [`crate::Command::output`], [`crate::Child::wait_with_output`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// How the child ended.
    pub status: ExitStatus,
    /// What it wrote to its stdout (empty unless stdout was piped).
    pub stdout: Vec<u8>,
    /// What it wrote to its stderr (empty unless stderr was piped).
    pub stderr: Vec<u8>,
}

/// Reads both pipes to their end at once (a child blocked writing one while we wait on the
/// other would never finish), as std's `read2` does.
pub(crate) fn read2(out: Option<File>, err: Option<File>) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut bufs = (Vec::new(), Vec::new());
    let mut pipes = [out, err];
    loop {
        let open: Vec<usize> = (0..2).filter(|&i| pipes[i].is_some()).collect();
        if open.is_empty() {
            return Ok(bufs);
        }
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd<'_>> = open
                .iter()
                .map(|&i| {
                    let f = pipes[i].as_ref().expect("open");
                    PollFd::new(f.as_fd(), PollFlags::POLLIN)
                })
                .collect();
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            fds.iter()
                .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
                .collect()
        };
        for (&i, ready) in open.iter().zip(ready) {
            if !ready {
                continue;
            }
            let buf = if i == 0 { &mut bufs.0 } else { &mut bufs.1 };
            let mut chunk = [0u8; 16 * 1024];
            let f = pipes[i].as_mut().expect("open");
            match f.read(&mut chunk) {
                Ok(0) => pipes[i] = None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl Child {
    /// Waits for the child and collects what it wrote to piped stdout and stderr, reading
    /// both at once, as [`std::process::Child::wait_with_output`]. A piped stdin is closed
    /// first.
    ///
    /// # Errors
    /// As [`Child::wait`], and [`Error::Io`] reading the pipes.
    pub fn wait_with_output(mut self) -> Result<Output> {
        drop(self.stdin.take());
        let (stdout, stderr) = read2(
            self.stdout.take().map(ChildStdout::into_file),
            self.stderr.take().map(ChildStderr::into_file),
        )?;
        let status = self.wait()?;
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }
}
