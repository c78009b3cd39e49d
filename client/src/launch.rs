//! Starting the server as a child of this process, and restarting it when it has died
//! (CPython's `forkserver.ensure_running`).
//!
//! The launch convention, which the server implements as is:
//!
//! 1. The client makes a private directory (mode 0700) under `$XDG_RUNTIME_DIR` if usable, else
//!    under [`std::env::temp_dir`], named `forkserver-<pid>-<random>`, and binds a listening
//!    socket at `<dir>/sock` (mode 0600).
//! 2. It makes an "alive" pipe and starts the program with `FORKSERVER_LISTEN_FD` (the
//!    listener's fd number) and `FORKSERVER_ALIVE_FD` (the pipe's read end) in its environment,
//!    those two fds inherited and no other; stdin `/dev/null`, stdout and stderr inherited.
//!    Every other fd of the client is made close-on-exec first, so the server inherits no stray
//!    fd of the client's. The program is the file opened at the first launch and held open
//!    since (`pinned.rs`), so that every relaunch starts the same binary.
//!    With authentication on (the default), a third fd, `FORKSERVER_KEY_FD`, is the read end of
//!    a pipe holding a fresh random 32-byte key, written and closed before the server starts:
//!    the key never appears in argv or the environment (PROTOCOL.md §9.1).
//!    A *ready* pipe's write end goes along as `FORKSERVER_READY_FD` (and, with
//!    [`Launcher::kill_children_with_server`], `FORKSERVER_KILL_CHILDREN=1`). The client waits
//!    (at most [`Launcher::ready_timeout`]) until the server, its preloads done, writes
//!    `ready\n` on it; a server that cannot serve writes its reason instead, which becomes the
//!    launch error. A server not ready in time is killed and reaped.
//! 3. The client keeps the pipe's write end open while it lives. When the client process exits
//!    (or drops its last [`crate::Client`]), the server reads EOF and exits.
//! 4. The client removes the directory; the server never does.

use std::ffi::OsStr;
use std::io;
use std::sync::Arc;

use crate::client::Client;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::managed::{LaunchSpec, Managed};
use crate::pinned::Pinned;

pub use forkserver_protocol::launch::{ALIVE_FD_ENV, KEY_FD_ENV, LISTEN_FD_ENV};

impl Client {
    /// Starts `program` as the server (typically [`std::env::current_exe`], whose `main`
    /// serves when `FORKSERVER_LISTEN_FD` is set) and returns a client for it.
    ///
    /// Every later request first checks that the server is still running, and starts it again
    /// if it has died (once per request). The program's file is held open from this launch
    /// on, and every start execs that file: a relaunch runs the binary first launched, even if
    /// an upgrade has put another at its path, or deleted it (an interpreter script, which
    /// its interpreter opens by name, is started by path). Dropping the last clone of the
    /// client closes the server's alive pipe, waits up to one second for it to exit, and
    /// removes its socket directory. See [`Launcher`] for the launch convention and for
    /// arguments, and [`Client::launch_self`] for this binary, shared by every caller.
    ///
    /// # Errors
    /// As [`Launcher::launch`].
    pub fn launch(program: impl AsRef<OsStr>) -> Result<Client> {
        Launcher::new(program).launch()
    }

    /// A [`Launcher`] for `program`, to pass arguments or environment before launching.
    pub fn launcher(program: impl AsRef<OsStr>) -> Launcher {
        Launcher::new(program)
    }
}

/// A builder for [`Client::launch`] with arguments and environment for the server program.
///
/// ```no_run
/// use forkserver_client::Client;
///
/// let client = Client::launcher(std::env::current_exe()?)
///     .arg("--serve")
///     .env("RUST_LOG", "info")
///     .launch()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Launcher {
    spec: LaunchSpec,
}

impl Launcher {
    /// How long a launched server may take to become ready unless told otherwise: its
    /// preloads run first, and may load models or tables.
    pub const DEFAULT_READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

    /// How long the server may take to say it serves (its `preload`s run before that; PROTOCOL.md
    /// §9.4: the server writes on a ready pipe, so nothing is guessed from a handshake timeout).
    /// A server not ready in time is killed and reaped, and [`Launcher::launch`] (or the
    /// relaunch of a request) fails. Default [`Launcher::DEFAULT_READY_TIMEOUT`].
    pub fn ready_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.spec.ready_timeout = timeout;
        self
    }

    /// Whether the server's children die with it (`PR_SET_PDEATHSIG(SIGKILL)`, as
    /// `forkserver serve --kill-children-with-server`) instead of running on, reparented.
    /// Default `false`.
    pub fn kill_children_with_server(mut self, on: bool) -> Self {
        self.spec.kill_children = on;
        self
    }

    /// A launcher for `program` (a path, or a name searched in `PATH`).
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            spec: LaunchSpec {
                program: program.as_ref().to_owned(),
                args: Vec::new(),
                envs: Vec::new(),
                authenticate: true,
                warm: false,
                ready_timeout: Self::DEFAULT_READY_TIMEOUT,
                kill_children: false,
                pinned: None,
            },
        }
    }

    /// A launcher for this process's own binary, pinned through `/proc/self/exe` (the file
    /// this process runs, even if its path now names another or none), with our `argv[0]`;
    /// its children die with it ([`Launcher::kill_children_with_server`]).
    pub(crate) fn this_binary() -> io::Result<Self> {
        let argv0 = std::env::args_os().next();
        let mut launcher = Self::new(argv0.map_or_else(std::env::current_exe, |a| Ok(a.into()))?)
            .kill_children_with_server(true);
        let pinned = Pinned::open(OsStr::new("/proc/self/exe"), None)?
            .ok_or_else(|| io::Error::other("/proc/self/exe cannot be held open"))?;
        launcher.spec.pinned = Some(Arc::new(pinned));
        Ok(launcher)
    }

    /// Adds an argument for the server program.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.spec.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments for the server program.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.spec
            .args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the server program (on top of this process's
    /// environment, which it inherits). Exec jobs inherit the server's environment.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.spec
            .envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Whether the server is given a fresh random key and every connection authenticates with
    /// it (PROTOCOL.md §9). Default `true`; turn it off only for a server program that cannot
    /// read `FORKSERVER_KEY_FD`.
    pub fn authenticate(mut self, on: bool) -> Self {
        self.spec.authenticate = on;
        self
    }

    /// Whether the client also opens a connection ahead of need (handshake and authentication
    /// done) while a [`crate::Child::wait`] waits and no idle connection is kept. Connections
    /// are reused anyway (see [`Client`]); this covers the first spawns and bursts from more
    /// threads than there are idle connections. Default `false`: a warm connection counts as
    /// a connection of the server's. Without effect once reuse is off
    /// ([`Client::set_max_idle_connections`]`(0)`).
    pub fn warm_connections(mut self, on: bool) -> Self {
        self.spec.warm = on;
        self
    }

    /// Starts the server and returns a client for it. The server is checked with one
    /// handshake, so a program that does not serve fails here rather than at the first spawn.
    ///
    /// # Errors
    /// [`Error::Launch`] if this process is itself a launched server that did not serve
    /// (`FORKSERVER_LISTEN_FD` set: a `main` without `serve_if_requested`), the socket
    /// directory cannot be made, the program cannot be started, it refuses to serve (its
    /// reason is in the error, e.g. "the server must be single-threaded"), exits before it
    /// is ready, or is not ready within [`Launcher::ready_timeout`] (it is then killed and
    /// reaped), or it does not answer a handshake on the socket (then the [`Error`] of the
    /// handshake is the `io::Error`'s inner error); [`Error::AuthRequired`] if it demands a key.
    pub fn launch(self) -> Result<Client> {
        // A program launched as a server that did not serve would launch another copy of
        // itself, which would do the same, without end.
        if std::env::var_os(LISTEN_FD_ENV).is_some() {
            return Err(Error::Launch(io::Error::other(format!(
                "this process was launched as a forkserver ({LISTEN_FD_ENV} is set) but did \
                 not serve: call `Zygote::new()...serve_if_requested()` first thing in `main`, \
                 before any `Client::launch`"
            ))));
        }
        let mut spec = self.spec;
        spec.pin().map_err(Error::Launch)?;
        let managed = Managed::new(spec).map_err(Error::Launch)?;
        let engine = Engine::launched(managed);
        match engine.ping_launched() {
            Ok(()) => Ok(Client::from_engine(engine)),
            Err(Error::AuthRequired) => Err(Error::AuthRequired),
            Err(e) => Err(Error::Launch(io::Error::other(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run in a child process by the test below, with `FORKSERVER_LISTEN_FD` set.
    #[test]
    fn launch_from_a_launched_server_role() {
        if std::env::var_os("FS_TEST_LAUNCH_ROLE").is_none() {
            return;
        }
        let err = Launcher::new("/bin/true").launch().unwrap_err();
        assert!(err.to_string().contains("serve_if_requested"), "{err}");
        println!("ROLE-OK");
    }

    #[test]
    fn a_launched_server_that_does_not_serve_is_told_and_launches_nothing() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "launch::tests::launch_from_a_launched_server_role",
            ])
            .args(["--nocapture", "--test-threads", "1"])
            .env("FS_TEST_LAUNCH_ROLE", "1")
            .env(LISTEN_FD_ENV, "3")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("ROLE-OK"), "{text}");
    }

    #[test]
    fn launch_of_a_missing_program_fails() {
        let err = Launcher::new("/nonexistent/forkserver-test-program")
            .launch()
            .unwrap_err();
        assert!(matches!(err, Error::Launch(ref e) if e.kind() == io::ErrorKind::NotFound));
    }
}
