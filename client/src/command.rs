//! The spawn builders: [`Command`] for exec jobs, [`Call`] for entry-point jobs.
//!
//! Both gather the same things (options, stdio, extra fds) in a [`Request`]; at `spawn` the
//! request becomes an [`FdBundle`] and a [`Spawn`] message, and every rule the wire imposes is
//! checked before a connection is opened.

use std::ffi::OsStr;
use std::fs::File;
use std::num::NonZeroU64;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use forkserver_protocol::{
    EntryJob, ErrorCode, ExecJob, FdBundle, Job, Message, Session, Spawn, SpawnOptions, MAX_FDS,
};

use crate::child::Child;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::exit_status::ExitStatus;
use crate::output::Output;
use crate::stdio::{Stdio, Stream};

/// The stdio of a child where none was set.
#[derive(Debug, Clone, Copy)]
enum Defaults {
    /// Nothing: the server gives `/dev/null` ([`Call`]).
    None,
    /// This process's own fds 0-2 ([`Command::spawn`]).
    Inherit,
    /// stdin `/dev/null`, stdout and stderr piped ([`Command::output`]).
    Output,
}

/// What [`Command`] and [`Call`] have in common: options, stdio and extra fds.
#[derive(Debug, Default)]
struct Request {
    options: SpawnOptions,
    /// Explicit stdin, stdout, stderr.
    stdio: [Option<Stdio>; 3],
    /// Extra fds with their targets, in the order given.
    fds: Vec<(u32, OwnedFd)>,
    /// The OS error of a failed `fd_borrowed` duplication, reported by `spawn`.
    deferred_errno: Option<i32>,
}

impl Request {
    fn set_stdio(&mut self, stream: Stream, stdio: Stdio) {
        self.stdio[stream.target() as usize] = Some(stdio);
    }

    fn fd_borrowed(&mut self, target: u32, fd: BorrowedFd<'_>) {
        match fd.try_clone_to_owned() {
            Ok(own) => self.fds.push((target, own)),
            Err(e) => {
                self.deferred_errno
                    .get_or_insert(e.raw_os_error().unwrap_or(nix::libc::EBADF));
            }
        }
    }

    /// The default stdio for `stream` when none was set, unless an extra fd takes that target.
    fn default_for(&self, stream: Stream, defaults: Defaults) -> Option<Stdio> {
        let t = stream.target();
        let unset = self.stdio[t as usize].is_none();
        let taken = self.fds.iter().any(|(x, _)| *x == t);
        if !unset || taken {
            return None;
        }
        match (defaults, stream) {
            (Defaults::None, _) => None,
            (Defaults::Inherit, _) => Some(Stdio::inherit()),
            (Defaults::Output, Stream::Stdin) => Some(Stdio::null()),
            (Defaults::Output, _) => Some(Stdio::piped()),
        }
    }

    /// Builds the fds to send: duplicates of the given ones, new pipes, `/dev/null`. Returns
    /// the bundle and the parent's ends of the pipes (stdin, stdout, stderr).
    ///
    /// # Errors
    /// [`Error::TooManyFds`], [`Error::InvalidRequest`] for a duplicate or too-large target,
    /// [`Error::Io`] if an fd cannot be made.
    fn bundle(&self, defaults: Defaults) -> Result<(FdBundle, [Option<File>; 3])> {
        if let Some(errno) = self.deferred_errno {
            return Err(std::io::Error::from_raw_os_error(errno).into());
        }
        let defaults = Stream::ALL.map(|s| self.default_for(s, defaults));
        let stdio_count = (0..3)
            .filter(|&i| self.stdio[i].is_some() || defaults[i].is_some())
            .count();
        let total = stdio_count + self.fds.len();
        // PROTOCOL.md §3: at most MAX_FDS fds per request; refuse before making any fd.
        if total > MAX_FDS {
            return Err(Error::TooManyFds(total));
        }
        let mut bundle = FdBundle::new();
        let mut parents: [Option<File>; 3] = [None, None, None];
        for stream in Stream::ALL {
            let i = stream.target() as usize;
            let Some(choice) = self.stdio[i].as_ref().or(defaults[i].as_ref()) else {
                continue;
            };
            let (child_end, parent_end) = choice.materialize(stream)?;
            if let Some(fd) = child_end {
                bundle.push(stream.target(), fd)?;
            }
            parents[i] = parent_end;
        }
        for (target, fd) in &self.fds {
            bundle.push(*target, fd.try_clone()?)?;
        }
        Ok((bundle, parents))
    }

    /// Validates, connects, sends, and reads the `Pid` reply.
    fn spawn(&self, client: &Client, job: Job, defaults: Defaults) -> Result<Child> {
        let keep = client.reuses_connections();
        match self.spawn_once(client, &job, defaults, keep) {
            // Our frame is valid (the codec cannot encode an invalid one): a server that calls
            // a reserved field not zero predates KEEP_CONNECTION (protocol rev 0.3). Nothing
            // was spawned; reuse goes off for this client and the request is made again
            // without the flag.
            Err(Error::Server { code, message, .. })
                if keep && code == ErrorCode::Malformed && message.contains("reserved") =>
            {
                tracing::warn!("the server refused KEEP_CONNECTION (rev < 0.3): reuse off");
                client.set_max_idle_connections(0);
                self.spawn_once(client, &job, defaults, false)
            }
            other => other,
        }
    }

    fn spawn_once(
        &self,
        client: &Client,
        job: &Job,
        defaults: Defaults,
        keep: bool,
    ) -> Result<Child> {
        let options = SpawnOptions {
            keep_connection: keep,
            ..self.options
        };
        let mut may_reuse = true;
        loop {
            let (mut conn, parents) = client.request(may_reuse, || {
                let (bundle, parents) = self.bundle(defaults)?;
                let (map, fds) = bundle.into_parts();
                let spawn = Spawn::new(options, map, job.clone())?;
                Ok((Some((Message::Spawn(spawn), fds)), parents))
            })?;
            let frame = conn.recv()?;
            let e = match frame.message {
                Message::Pid(pid) => {
                    let pidfd = frame.fds.into_iter().next();
                    return Ok(Child::new(
                        client.clone(),
                        conn,
                        keep,
                        pid.pid(),
                        pidfd,
                        parents,
                    ));
                }
                Message::Error(e) => e,
                other => return Err(Error::unexpected(other.tag(), "Pid")),
            };
            // A kept connection the server closed on its own (to make room, or exiting) just as
            // our request went out: made again on a new connection, once.
            if may_reuse && conn.closed_without_acting(&e) {
                tracing::debug!("kept connection closed by the server: {e}");
                may_reuse = false;
                continue;
            }
            // An exec failure under `wait_for_exec` is the child's final report: the connection
            // is READY again (`KEEP_CONNECTION`). Other errors close it.
            if keep
                && matches!(
                    e.code(),
                    ErrorCode::ExecFailed | ErrorCode::ChildSetupFailed
                )
            {
                client.put_idle(conn);
            }
            return Err(e.into());
        }
    }
}

fn deadline_ms(d: Duration) -> Option<NonZeroU64> {
    // Rounded up to whole milliseconds, at least 1 (0 would mean "no deadline" on the wire).
    let ms = d.as_nanos().div_ceil(1_000_000).max(1);
    NonZeroU64::new(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// The setters shared by [`Command`] and [`Call`], with their docs.
macro_rules! request_setters {
    () => {
        /// Puts `fd` at fd number `target` in the child. The builder keeps `fd` and sends a
        /// duplicate with each spawn; dropping the builder closes it. A target of 0, 1 or 2
        /// replaces the default stdio (an explicit `stdin`/`stdout`/`stderr` for the same
        /// target is an error at spawn).
        pub fn fd(&mut self, target: u32, fd: impl Into<OwnedFd>) -> &mut Self {
            self.req.fds.push((target, fd.into()));
            self
        }

        /// As [`Self::fd`], with a duplicate of a borrowed fd made now. If duplicating fails,
        /// `spawn` reports the error.
        pub fn fd_borrowed(&mut self, target: u32, fd: BorrowedFd<'_>) -> &mut Self {
            self.req.fd_borrowed(target, fd);
            self
        }

        /// The child's standard input (fd 0).
        pub fn stdin(&mut self, stdio: impl Into<Stdio>) -> &mut Self {
            self.req.set_stdio(Stream::Stdin, stdio.into());
            self
        }

        /// The child's standard output (fd 1).
        pub fn stdout(&mut self, stdio: impl Into<Stdio>) -> &mut Self {
            self.req.set_stdio(Stream::Stdout, stdio.into());
            self
        }

        /// The child's standard error (fd 2).
        pub fn stderr(&mut self, stdio: impl Into<Stdio>) -> &mut Self {
            self.req.set_stdio(Stream::Stderr, stdio.into());
            self
        }

        /// The child calls `setsid()`: a new session and process group. Replaces
        /// [`Self::process_group`].
        pub fn new_session(&mut self) -> &mut Self {
            self.req.options.session = Session::NewSession;
            self
        }

        /// The child calls `setpgid(0, 0)`: a new process group in the server's session.
        /// Replaces [`Self::new_session`].
        pub fn process_group(&mut self) -> &mut Self {
            self.req.options.session = Session::NewProcessGroup;
            self
        }

        /// The server kills the child with `SIGKILL` once `deadline` has passed since the fork
        /// (rounded up to whole milliseconds). The exit status then reports
        /// [`crate::ExitStatus::deadline_expired`].
        pub fn deadline(&mut self, deadline: Duration) -> &mut Self {
            self.req.options.deadline_ms = deadline_ms(deadline);
            self
        }

        /// Whether the server kills the child (`SIGKILL`) when this connection ends before the
        /// child does: when the [`Child`] is dropped un-waited, or this process dies. Default
        /// `false`: the child runs on.
        pub fn kill_on_disconnect(&mut self, kill: bool) -> &mut Self {
            self.req.options.kill_on_disconnect = kill;
            self
        }

        /// Whether to ask for a pidfd of the child ([`Child::pidfd`]). Default `false`. A
        /// server on a kernel without pidfds may answer without one.
        pub fn pidfd(&mut self, want: bool) -> &mut Self {
            self.req.options.want_pidfd = want;
            self
        }
    };
}

/// A builder for an exec job, shaped like [`std::process::Command`]. Made by
/// [`Client::command`].
///
/// Unlike std, the child is forked by the server: it inherits the *server's* environment and
/// working directory (unless set here), and this process's stdin, stdout and stderr only
/// because they are sent along ([`Stdio::inherit`], the default).
///
/// ```no_run
/// use forkserver_client::{Client, Stdio};
/// use std::io::Read;
///
/// let client = Client::connect("/run/forkserver.sock")?;
/// let mut child = client
///     .command("ls")
///     .arg("-l")
///     .current_dir("/tmp")
///     .stdout(Stdio::piped())
///     .spawn()?;
/// let mut out = String::new();
/// child.stdout.take().unwrap().read_to_string(&mut out)?;
/// assert!(child.wait()?.success());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Command {
    client: Client,
    program: Vec<u8>,
    arg0: Option<Vec<u8>>,
    args: Vec<Vec<u8>>,
    env_clear: bool,
    env: Vec<(Vec<u8>, Vec<u8>)>,
    cwd: Option<Vec<u8>>,
    req: Request,
}

impl Command {
    pub(crate) fn new(client: Client, program: &OsStr) -> Self {
        let mut req = Request::default();
        req.options.pid_after_exec = true;
        Self {
            client,
            program: program.as_bytes().to_vec(),
            arg0: None,
            args: Vec::new(),
            env_clear: false,
            env: Vec::new(),
            cwd: None,
            req,
        }
    }

    /// Adds an argument.
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.args.push(arg.as_ref().as_bytes().to_vec());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for a in args {
            self.arg(a);
        }
        self
    }

    /// Sets `argv[0]` (by default the program as given).
    pub fn arg0(&mut self, arg0: impl AsRef<OsStr>) -> &mut Self {
        self.arg0 = Some(arg0.as_ref().as_bytes().to_vec());
        self
    }

    /// Sets an environment variable in the child; a later setting of the same key wins.
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        self.env.push((
            key.as_ref().as_bytes().to_vec(),
            value.as_ref().as_bytes().to_vec(),
        ));
        self
    }

    /// Sets environment variables in the child.
    pub fn envs<I, K, V>(&mut self, vars: I) -> &mut Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (k, v) in vars {
            self.env(k, v);
        }
        self
    }

    /// Starts the child's environment empty instead of from the server's; variables set with
    /// [`Command::env`] (before or after this call) still apply.
    pub fn env_clear(&mut self) -> &mut Self {
        self.env_clear = true;
        self
    }

    /// The child's working directory (by default the server's).
    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Self {
        self.cwd = Some(dir.as_ref().as_os_str().as_bytes().to_vec());
        self
    }

    /// Whether [`Command::spawn`] waits until `execve` has succeeded. Default `true`, as
    /// `std::process::Command::spawn`: a missing program then fails `spawn` with
    /// [`Error::Server`] (code `ExecFailed`, errno `ENOENT`; see [`Error::is_exec_failure`]).
    /// With `false`, `spawn` returns right after the fork and an exec failure is reported by
    /// [`Child::wait`] instead, saving the wait for the exec.
    pub fn wait_for_exec(&mut self, wait: bool) -> &mut Self {
        self.req.options.pid_after_exec = wait;
        self
    }

    request_setters!();

    /// Asks the server to fork and exec the child.
    ///
    /// The builder can spawn again: fds given to it are duplicated for each spawn, pipes are
    /// new each time. Everything the wire cannot carry is refused before connecting.
    ///
    /// # Errors
    /// Before connecting: [`Error::InvalidRequest`] (NUL byte, empty program, duplicate target,
    /// a limit of PROTOCOL.md §3), [`Error::TooManyFds`], [`Error::Io`] (making a pipe or
    /// duplicate). Then [`Error::Connect`], [`Error::Launch`], [`Error::AuthRequired`],
    /// [`Error::ServerGone`], [`Error::Protocol`], or [`Error::Server`] for the server's refusal
    /// (e.g. `ExecFailed` with the `execve` errno, `ForkFailed`, `ChildSetupFailed`).
    pub fn spawn(&mut self) -> Result<Child> {
        let job = self.job()?;
        self.req
            .spawn(&self.client, Job::Exec(job), Defaults::Inherit)
    }

    /// Runs the command and collects its output, as [`std::process::Command::output`]: stdout
    /// and stderr are piped unless set otherwise, stdin is `/dev/null` unless set.
    ///
    /// # Errors
    /// As [`Command::spawn`] and [`Child::wait`], and [`Error::Io`] reading the pipes.
    pub fn output(&mut self) -> Result<Output> {
        let job = self.job()?;
        self.req
            .spawn(&self.client, Job::Exec(job), Defaults::Output)?
            .wait_with_output()
    }

    /// Runs the command and waits for it, as [`std::process::Command::status`]; stdio is
    /// inherited unless set.
    ///
    /// # Errors
    /// As [`Command::spawn`] and [`Child::wait`].
    pub fn status(&mut self) -> Result<ExitStatus> {
        self.spawn()?.wait()
    }

    /// The program, as given to [`Client::command`].
    pub fn get_program(&self) -> &OsStr {
        OsStr::from_bytes(&self.program)
    }

    /// The arguments after the program, in order.
    pub fn get_args(&self) -> impl ExactSizeIterator<Item = &OsStr> {
        self.args.iter().map(|a| OsStr::from_bytes(a))
    }

    fn job(&self) -> Result<ExecJob> {
        let mut job = ExecJob::new(self.program.clone())?;
        if let Some(arg0) = &self.arg0 {
            job.set_arg0(arg0.clone())?;
        }
        for a in &self.args {
            job.push_arg(a.clone())?;
        }
        job.set_env_clear(self.env_clear);
        for (k, v) in &self.env {
            job.push_env(k.clone(), v.clone())?;
        }
        job.set_cwd(self.cwd.clone())?;
        Ok(job)
    }
}

/// A builder for an entry-point job: the server forks a child that runs a function registered
/// with it under a name, given a payload. Made by [`Client::call`].
///
/// Unlike [`Command`], stdio is not sent by default: the child gets only the fds given here,
/// and the server gives it `/dev/null` on any of 0, 1, 2 left unmapped.
///
/// ```no_run
/// use forkserver_client::Client;
/// use std::time::Duration;
///
/// let client = Client::connect("/run/forkserver.sock")?;
/// let image = std::fs::File::open("in.png")?;
/// let status = client
///     .call("resize", b"800x600".to_vec())
///     .fd(3, image)
///     .deadline(Duration::from_secs(10))
///     .spawn()?
///     .wait()?;
/// println!("resize: {status}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Call {
    client: Client,
    name: String,
    payload: Vec<u8>,
    req: Request,
}

impl Call {
    pub(crate) fn new(client: Client, name: String, payload: Vec<u8>) -> Self {
        Self {
            client,
            name,
            payload,
            req: Request::default(),
        }
    }

    request_setters!();

    /// Asks the server to fork a child that runs the entry point. Returns once the child
    /// exists.
    ///
    /// # Errors
    /// Before connecting: [`Error::InvalidRequest`] (empty or over-long name, payload over
    /// 1 MiB, duplicate target), [`Error::TooManyFds`], [`Error::Io`]. Then as
    /// [`Command::spawn`], with [`Error::Server`] code `UnknownEntry` for a name the server
    /// does not know.
    pub fn spawn(&mut self) -> Result<Child> {
        let job = EntryJob::new(self.name.clone(), self.payload.clone())?;
        self.req
            .spawn(&self.client, Job::Entry(job), Defaults::None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_rounds_up() {
        let ms = |d| deadline_ms(d).map(NonZeroU64::get);
        assert_eq!(ms(Duration::ZERO), Some(1));
        assert_eq!(ms(Duration::from_nanos(1)), Some(1));
        assert_eq!(ms(Duration::from_millis(5)), Some(5));
        assert_eq!(ms(Duration::from_micros(5001)), Some(6));
        assert_eq!(ms(Duration::MAX), Some(u64::MAX));
    }

    fn null() -> OwnedFd {
        File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn default_stdio_yields_to_explicit_fd() {
        let mut req = Request::default();
        req.fds.push((1, null()));
        let (bundle, _) = req.bundle(Defaults::Inherit).unwrap();
        assert_eq!(bundle.map().targets(), &[0, 2, 1]);
        let (bundle, _) = req.bundle(Defaults::None).unwrap();
        assert_eq!(bundle.map().targets(), &[1]);
    }

    #[test]
    fn explicit_stdio_and_fd_on_same_target_is_an_error() {
        let mut req = Request::default();
        req.set_stdio(Stream::Stdout, Stdio::null());
        req.fds.push((1, null()));
        assert!(matches!(
            req.bundle(Defaults::None),
            Err(Error::InvalidRequest(
                forkserver_protocol::BuildError::DuplicateTarget(1)
            ))
        ));
    }

    #[test]
    fn too_many_fds_counts_stdio() {
        let mut req = Request::default();
        for t in 3..3 + 254 {
            req.fds.push((t, null()));
        }
        assert!(req.bundle(Defaults::None).is_ok());
        assert!(matches!(
            req.bundle(Defaults::Inherit),
            Err(Error::TooManyFds(257))
        ));
    }
}
