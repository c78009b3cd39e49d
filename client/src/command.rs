//! The spawn builders: [`Command`] for exec jobs, [`Call`] for entry-point jobs, both over a
//! [`Request`] (`request.rs`).

use std::ffi::OsStr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use forkserver_protocol::{BuildError, EntryJob, ExecJob, Job, Session};

use crate::child::Child;
use crate::engine::Engine;
#[cfg(doc)]
use crate::error::Error;
use crate::error::Result;
use crate::exit_status::ExitStatus;
use crate::output::Output;
use crate::request::{deadline_ms, Defaults, Request};
use crate::stdio::{Stdio, Stream};

/// A builder for an exec job, shaped like [`std::process::Command`]. Made by
/// [`Client::command`](crate::Client::command).
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
    client: Arc<Engine>,
    program: Vec<u8>,
    arg0: Option<Vec<u8>>,
    args: Vec<Vec<u8>>,
    env_clear: bool,
    env: Vec<(Vec<u8>, Vec<u8>)>,
    /// Names to remove from the server's environment (sent unless `env_clear`).
    env_remove: Vec<Vec<u8>>,
    cwd: Option<Vec<u8>>,
    req: Request,
}

impl Command {
    pub(crate) fn new(client: Arc<Engine>, program: &OsStr) -> Self {
        let mut req = Request::default();
        req.options.pid_after_exec = true;
        Self {
            client,
            program: program.as_bytes().to_vec(),
            arg0: None,
            args: Vec::new(),
            env_clear: false,
            env: Vec::new(),
            env_remove: Vec::new(),
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

    /// Removes `key` from the child's environment, as [`std::process::Command::env_remove`]:
    /// from the server's environment the child inherits, and any value set here before. A
    /// later [`Command::env`] for the same key sets it again. Needs a server of protocol
    /// rev 0.5 (unless [`Command::env_clear`] makes it moot).
    pub fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut Self {
        let key = key.as_ref().as_bytes();
        self.env.retain(|(k, _)| k != key);
        if !self.env_remove.iter().any(|k| k == key) {
            self.env_remove.push(key.to_vec());
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
        self.spawn_for_output()?.wait_with_output()
    }

    /// Spawns with [`Command::output`]'s stdio defaults.
    pub(crate) fn spawn_for_output(&mut self) -> Result<Child> {
        let job = self.job()?;
        self.req
            .spawn(&self.client, Job::Exec(job), Defaults::Output)
    }

    /// [`Command::spawn`] (`output: false`) or [`Command::spawn_for_output`] for async code.
    #[cfg(feature = "tokio")]
    pub(crate) async fn spawn_child_async(&mut self, output: bool) -> Result<Child> {
        let job = self.job()?;
        let defaults = match output {
            true => Defaults::Output,
            false => Defaults::Inherit,
        };
        self.req
            .spawn_async(&self.client, &Job::Exec(job), defaults)
            .await
    }

    /// Runs the command and waits for it, as [`std::process::Command::status`]; stdio is
    /// inherited unless set.
    ///
    /// # Errors
    /// As [`Command::spawn`] and [`Child::wait`].
    pub fn status(&mut self) -> Result<ExitStatus> {
        self.spawn()?.wait()
    }

    /// The program, as given to [`Client::command`](crate::Client::command).
    pub fn get_program(&self) -> &OsStr {
        OsStr::from_bytes(&self.program)
    }

    /// The arguments after the program, in order.
    pub fn get_args(&self) -> impl ExactSizeIterator<Item = &OsStr> {
        self.args.iter().map(|a| OsStr::from_bytes(a))
    }

    /// The environment changes made with [`Command::env`] (`Some(value)`) and
    /// [`Command::env_remove`] (`None`), one per key, sorted by key, as
    /// [`std::process::Command::get_envs`].
    pub fn get_envs(&self) -> impl Iterator<Item = (&OsStr, Option<&OsStr>)> {
        let mut m = std::collections::BTreeMap::new();
        for k in &self.env_remove {
            m.insert(OsStr::from_bytes(k), None);
        }
        for (k, v) in &self.env {
            m.insert(OsStr::from_bytes(k), Some(OsStr::from_bytes(v)));
        }
        m.into_iter()
    }

    /// The working directory set with [`Command::current_dir`], if any.
    pub fn get_current_dir(&self) -> Option<&Path> {
        self.cwd.as_deref().map(|c| Path::new(OsStr::from_bytes(c)))
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
        // With env_clear nothing is inherited, so there is nothing to remove (§5.5.3).
        if !self.env_clear {
            for k in &self.env_remove {
                job.push_env_remove(k.clone())?;
            }
        }
        for (k, v) in &self.env {
            job.push_env(k.clone(), v.clone())?;
        }
        job.set_cwd(self.cwd.clone())?;
        Ok(job)
    }
}

/// A builder for an entry-point job: the server forks a child that runs a function registered
/// with it under a name, given a payload. Made by [`Client::call`](crate::Client::call).
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
    client: Arc<Engine>,
    /// The job, checked and built once (its payload moved in, not copied), or why it is
    /// invalid, returned by every spawn.
    job: std::result::Result<Job, BuildError>,
    req: Request,
}

impl Call {
    pub(crate) fn new(client: Arc<Engine>, name: String, payload: Vec<u8>) -> Self {
        Self {
            client,
            job: EntryJob::new(name, payload).map(Job::Entry),
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
        let job = self.job.as_ref().map_err(|e| *e)?;
        self.req.spawn_ref(&self.client, job, Defaults::None)
    }

    /// [`Call::spawn`] for async code.
    #[cfg(feature = "tokio")]
    pub(crate) async fn spawn_child_async(&mut self) -> Result<Child> {
        let job = self.job.as_ref().map_err(|e| *e)?;
        self.req
            .spawn_async(&self.client, job, Defaults::None)
            .await
    }
}
