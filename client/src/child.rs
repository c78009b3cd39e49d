//! [`Child`]: a child the server forked, its pid, pidfd and pipes; what its connection
//! carries after `Pid` (PROTOCOL.md §6) is read by its [`ChildConn`] (`child_conn.rs`).

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "tokio")]
use forkserver_protocol::ErrorReply;

use crate::child_conn::ChildConn;
use crate::conn::Conn;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::exit_status::ExitStatus;
use crate::pipes::{ChildStderr, ChildStdin, ChildStdout};

/// A child process forked by the server, like [`std::process::Child`].
///
/// The server reaps the child and reports its exit over this child's own connection, so
/// [`Child::wait`] works from any thread of this process, and the child is not this process's
/// child in the `waitpid` sense.
///
/// Once the exit (or the child's failure) has been read, the connection goes back to the
/// client for reuse, unless a [`Child::signal`] request on it is still unanswered.
///
/// Dropping a `Child` that has not been waited for closes the connection; the child runs on
/// (unless it was spawned with `kill_on_disconnect(true)`). A `Child` keeps a launched server
/// alive while it exists.
#[derive(Debug)]
pub struct Child {
    pid: i32,
    pidfd: Option<OwnedFd>,
    /// The parent's end of a piped stdin ([`crate::Stdio::piped`]).
    pub stdin: Option<ChildStdin>,
    /// The parent's end of a piped stdout.
    pub stdout: Option<ChildStdout>,
    /// The parent's end of a piped stderr.
    pub stderr: Option<ChildStderr>,
    /// The connection the child is reported on; it keeps a launched server alive.
    conn: ChildConn,
}

impl Child {
    pub(crate) fn new(
        client: Arc<Engine>,
        conn: Conn,
        keep: bool,
        pid: i32,
        pidfd: Option<OwnedFd>,
        [stdin, stdout, stderr]: [Option<File>; 3],
    ) -> Self {
        Self {
            pid,
            pidfd,
            stdin: stdin.map(ChildStdin::new),
            stdout: stdout.map(ChildStdout::new),
            stderr: stderr.map(ChildStderr::new),
            conn: ChildConn::new(client, conn, keep),
        }
    }

    /// The child's pid, in the server's pid namespace.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The child's pid as std's [`std::process::Child::id`] gives it.
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// The child's pidfd, if one was asked for with `pidfd(true)` and the server sent one.
    /// It can be polled (readable once the child has exited) or used with `pidfd_send_signal`;
    /// the exit status still comes from [`Child::wait`], as the server reaps the child.
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(AsFd::as_fd)
    }

    /// Takes the pidfd out of the child, leaving `None`.
    pub fn take_pidfd(&mut self) -> Option<OwnedFd> {
        self.pidfd.take()
    }

    /// The connection's socket while the outcome is pending, for event loops: it becomes
    /// readable when [`Child::try_wait`] may have news. Call [`Child::try_wait`] *before*
    /// polling it, each time: frames already read from the socket (an `Exit` that arrived
    /// with the answer to a [`Child::signal`]) are buffered here and will not make it
    /// readable again. Once the outcome is read the connection
    /// may serve another request of the client: take it out of a poller before then.
    pub fn connection_fd(&self) -> Option<BorrowedFd<'_>> {
        self.conn.fd()
    }

    /// Waits for the child to end and returns its status. Closes a piped `stdin` first, as
    /// std does, so a child reading it sees EOF. Once the status is known, later calls return
    /// it again at once.
    ///
    /// # Errors
    /// [`Error::Server`] with code `ExecFailed` or `ChildSetupFailed` if the child failed
    /// before running its job (it has been reaped; later calls return the same error);
    /// [`Error::ServerGone`] if the server closed the connection or died first (the child's
    /// fate is unknown); [`Error::Protocol`], [`Error::Io`].
    pub fn wait(&mut self) -> Result<ExitStatus> {
        drop(self.stdin.take());
        self.conn.wait()
    }

    /// The blocking reads of [`Child::wait`], without its side effects (stdin closed, a
    /// connection warmed up): a typed call's join, once its answer is in.
    pub(crate) fn read_status(&mut self) -> Result<ExitStatus> {
        self.conn.read_status()
    }

    /// The status if the child has ended, without blocking: reads what the server has sent
    /// so far.
    ///
    /// # Errors
    /// As [`Child::wait`].
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.conn.try_wait()
    }

    /// As [`Child::wait`], for at most `timeout` (`poll(2)` on the connection, not a loop of
    /// `try_wait`s): `Ok(None)` if the child still runs then; this handle keeps it, to wait on
    /// again. A piped `stdin` stays open.
    ///
    /// ```no_run
    /// # let client = forkserver_client::Client::connect("/run/forkserver.sock")?;
    /// let mut child = client.command("sleep").arg("1").spawn()?;
    /// while child.wait_timeout(std::time::Duration::from_millis(100))?.is_none() {
    ///     println!("still running");
    /// }
    /// # Ok::<(), forkserver_client::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Child::wait`].
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        self.conn.wait_timeout(timeout)
    }

    /// Sends signal `signo` (1..=64, e.g. `libc::SIGTERM`) to the child and waits for the
    /// server's acknowledgement.
    ///
    /// # Errors
    /// [`Error::AlreadyExited`] if the child has ended (its status is then stored for
    /// [`Child::wait`]); [`Error::Server`] with code `SignalFailed` if `kill(2)` failed (the
    /// connection stays usable); [`Error::InvalidRequest`] for a number outside 1..=64;
    /// [`Error::ServerGone`], [`Error::Protocol`], [`Error::Io`].
    pub fn signal(&mut self, signo: i32) -> Result<()> {
        self.conn.signal(signo)
    }

    // The async layer's hooks (`async_child.rs`), each [`ChildConn`]'s method of the name.

    #[cfg(feature = "tokio")]
    pub(crate) fn send_signal(&mut self, signo: i32) -> Result<()> {
        self.conn.send_signal(signo)
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn pump(&mut self) -> Result<Vec<std::result::Result<(), ErrorReply>>> {
        self.conn.pump()
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn stored_outcome(&self) -> Option<Result<ExitStatus>> {
        self.conn.stored_outcome()
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn is_running(&self) -> bool {
        self.conn.is_running()
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn defer_release(&mut self) {
        self.conn.defer_release()
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn release(&mut self) {
        self.conn.release()
    }

    /// Kills the child with `SIGKILL`. Like std, returns `Ok(())` if it has already exited.
    ///
    /// # Errors
    /// As [`Child::signal`], except [`Error::AlreadyExited`].
    pub fn kill(&mut self) -> Result<()> {
        match self.signal(nix::libc::SIGKILL) {
            Err(Error::AlreadyExited) => Ok(()),
            other => other,
        }
    }
}
