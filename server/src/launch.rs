//! Launched servers (PROTOCOL.md §9.4) and zygote mode: the application's own binary is the
//! server, and children run registered Rust entry points ([`crate::entry`]) with the state
//! built by `preload` already in memory (shared copy-on-write).

use std::collections::HashMap;
use std::os::fd::{OwnedFd, RawFd};
use std::time::Duration;

use crate::activation::{parse_listen_env, Activation, ActivationError, ServiceEnv};
use crate::config::{Config, Listen};
use crate::entry::{EntryFn, Invocation};
use crate::error::{LaunchError, ServerError};
use crate::key::read_key;
use crate::server::Server;

pub use forkserver_protocol::launch::{ALIVE_FD_ENV, KEY_FD_ENV, LISTEN_FD_ENV, PREFORK_ENV};
use forkserver_protocol::launch::{KILL_CHILDREN_ENV, MAX_REASON_LEN, READY, READY_FD_ENV};

/// The zygote builder. Call it at the top of `main`, before any thread exists:
///
/// ```no_run
/// use forkserver_server::{Invocation, Zygote};
///
/// fn resize(call: Invocation) -> i32 {
///     call.payload().len() as i32
/// }
///
/// fn main() {
///     Zygote::new()
///         .preload(|| { /* build state every child shares */ })
///         .entry("resize", resize)
///         .serve_if_requested();
///     // Not launched as a server: the application's own main goes on here.
/// }
/// ```
#[derive(Default)]
pub struct Zygote {
    preload: Vec<Box<dyn FnOnce()>>,
    entries: HashMap<String, EntryFn>,
    prefork: Option<usize>,
    service: bool,
    preload_timeout: Option<Duration>,
}

/// The default of [`Zygote::preload_timeout`].
pub const DEFAULT_PRELOAD_TIMEOUT: Duration = Duration::from_secs(120);

impl std::fmt::Debug for Zygote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zygote")
            .field("entries", &self.entries.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Zygote {
    /// A zygote with no entry points.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` once in the server before it serves (only when launched as a server). Whatever
    /// it builds in memory (in statics, typically `OnceLock`) is inherited by every child,
    /// copy-on-write. Not its fds: a child holds only the fds of its request (PROTOCOL.md §6.5),
    /// so state that needs a file should map or read it in `preload`. It must not leave threads
    /// running: the server forks, and must be single-threaded.
    pub fn preload(mut self, f: impl FnOnce() + 'static) -> Self {
        self.preload.push(Box::new(f));
        self
    }

    /// Registers an entry point under `name`.
    pub fn entry(mut self, name: &str, f: impl Fn(Invocation) -> i32 + 'static) -> Self {
        self.entries.insert(name.to_owned(), Box::new(f));
        self
    }

    /// Registers a typed entry under `name` (PROTOCOL.md §11): `f` is a `fn(A) -> R` or a
    /// `fn(A) -> Result<R, E>` with `A: DeserializeOwned`, `R: Serialize`, `E: Display`,
    /// called with [`forkserver_client`'s] `client.typed::<A, R>(name)`. In the entry child the
    /// argument is decoded, `f` runs, and its value, its error's text or its panic (message
    /// and location) goes back to the client on the call's own result channel; a call with
    /// other types is refused before `f` runs.
    ///
    /// When `E` is itself `Serialize` (a `String`, say), both readings of the return type
    /// fit: use [`Zygote::typed_fallible`].
    ///
    /// [`forkserver_client`'s]: https://docs.rs/forkserver-client
    #[cfg(feature = "typed")]
    pub fn typed<A, O, M>(mut self, name: &str, f: impl Fn(A) -> O + 'static) -> Self
    where
        A: serde::de::DeserializeOwned + 'static,
        O: crate::typed::Outcome<M> + 'static,
        M: 'static,
    {
        self.entries
            .insert(name.to_owned(), crate::typed::entry(name, f));
        self
    }

    /// As [`Zygote::typed`] for a function that returns `Result<R, E>`, read as a value or
    /// an error whatever `E` is.
    #[cfg(feature = "typed")]
    pub fn typed_fallible<A, R, E>(
        self,
        name: &str,
        f: impl Fn(A) -> Result<R, E> + 'static,
    ) -> Self
    where
        A: serde::de::DeserializeOwned + 'static,
        R: serde::Serialize + 'static,
        E: std::fmt::Display + 'static,
    {
        self.typed::<A, Result<R, E>, crate::typed::Fallible>(name, f)
    }

    /// Registers a long-lived worker under `name` (PROTOCOL.md §11.7), started with
    /// [`forkserver_client`'s] `client.worker::<Req, Resp>(name)`: each worker is one child
    /// that runs `init` once, then `handle` on each request the client sends, keeping the
    /// state between calls, until the client closes it. `handle` is a
    /// `fn(&mut S, Req) -> Resp` or `fn(&mut S, Req) -> Result<Resp, E>` (`E: Display`: the
    /// call fails with its text, the worker goes on); a panic is that call's outcome and ends
    /// the worker. A call with other types is refused before `init` runs.
    ///
    /// [`forkserver_client`'s]: https://docs.rs/forkserver-client
    #[cfg(feature = "typed")]
    pub fn worker<S, Req, O, M>(
        mut self,
        name: &str,
        init: impl Fn() -> S + 'static,
        handle: impl Fn(&mut S, Req) -> O + 'static,
    ) -> Self
    where
        S: 'static,
        Req: serde::de::DeserializeOwned + 'static,
        O: crate::typed::Outcome<M> + 'static,
        M: 'static,
    {
        let entry = crate::typed_worker::entry(name, init, handle);
        self.entries.insert(name.to_owned(), entry);
        self
    }

    /// As [`Zygote::worker`] for a `handle` that returns `Result<Resp, E>`, read as a value
    /// or an error whatever `E` is.
    #[cfg(feature = "typed")]
    pub fn worker_fallible<S, Req, Resp, E>(
        self,
        name: &str,
        init: impl Fn() -> S + 'static,
        handle: impl Fn(&mut S, Req) -> Result<Resp, E> + 'static,
    ) -> Self
    where
        S: 'static,
        Req: serde::de::DeserializeOwned + 'static,
        Resp: serde::Serialize + 'static,
        E: std::fmt::Display + 'static,
    {
        self.worker::<S, Req, Result<Resp, E>, crate::typed::Fallible>(name, init, handle)
    }

    /// Keeps `n` children forked and waiting for a job (see [`Config::prefork`]). Without this
    /// call the launcher's environment decides (`FORKSERVER_PREFORK=n`), else 0.
    pub fn prefork(mut self, n: usize) -> Self {
        self.prefork = Some(n);
        self
    }

    /// Also serves when a service manager passes this process a socket (socket activation,
    /// PROTOCOL.md §9.4: `LISTEN_PID` is ours), with the defaults of [`Config`] and the
    /// prefork of [`Zygote::prefork`], notifying the manager: `EXTEND_TIMEOUT_USEC` before
    /// each preload, `READY=1` once preloaded, bound and the pool filled, then `STATUS=`,
    /// `WATCHDOG=1` and `STOPPING=1`. Off by default, so that an application socket-activated
    /// for its own purposes does not turn into a server.
    pub fn service(mut self) -> Self {
        self.service = true;
        self
    }

    /// How long each preload may take under a service manager ([`Zygote::service`]): asked
    /// for with `EXTEND_TIMEOUT_USEC` before it begins. Default [`DEFAULT_PRELOAD_TIMEOUT`].
    pub fn preload_timeout(mut self, timeout: Duration) -> Self {
        self.preload_timeout = Some(timeout);
        self
    }

    /// Whether this process was launched as a server (its environment names a listening fd).
    pub fn is_requested() -> bool {
        std::env::var_os(LISTEN_FD_ENV).is_some()
    }

    /// When the process was launched as a server, runs the preloads and then the server loop
    /// and exits the process (never returning); otherwise returns at once.
    ///
    /// Call it first thing in `main`, **before any thread or async runtime starts** (a tokio
    /// runtime's worker threads included): a server forks, so it must be single-threaded, and
    /// refuses to serve otherwise (the launching client then gets that reason as its error).
    /// For a binary whose `main` is not yours (a libtest test binary), [`zygote!`](crate::zygote!)
    /// does this before `main`.
    pub fn serve_if_requested(self) {
        // This binary serves when launched: `Client::launch_self` may start a copy of it.
        forkserver_protocol::launch::note_serves_itself();
        if !Self::is_requested() {
            if self.service && activated() {
                self.serve_service();
            }
            return;
        }
        // A launched server is nobody's service: a service manager's variables inherited from
        // the launcher are not for it, and its children (pooled and zygote ones included,
        // forked after the preloads) must not inherit them either.
        crate::activation::scrub_env();
        name_after_argv0();
        let named: Vec<_> = [LISTEN_FD_ENV, ALIVE_FD_ENV, KEY_FD_ENV, READY_FD_ENV]
            .iter()
            .filter_map(std::env::var_os)
            .collect();
        if (1..named.len()).any(|i| named[..i].contains(&named[i])) {
            eprintln!("forkserver: launch: the launch variables name the same fd twice");
            std::process::exit(1);
        }
        // Taken first, so that every failure below can be reported on it.
        let mut ready = take_env_fd(READY_FD_ENV)
            .ok()
            .flatten()
            .map(std::fs::File::from);
        let code = match self.serve_launched(&mut ready) {
            Ok(()) => 0,
            Err(e) => {
                // No tracing subscriber may be installed (that is the application's choice).
                eprintln!("forkserver: {e}");
                if let Some(mut r) = ready.take() {
                    let reason = e.to_string();
                    let end = reason.len().min(MAX_REASON_LEN);
                    let _ = std::io::Write::write_all(&mut r, &reason.as_bytes()[..end]);
                }
                1
            }
        };
        std::process::exit(code);
    }

    /// Serves on the socket a service manager passed, and exits the process.
    fn serve_service(self) -> ! {
        let code = match self.serve_activated() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("forkserver: {e}");
                1
            }
        };
        std::process::exit(code);
    }

    #[allow(unsafe_code)]
    fn serve_activated(self) -> Result<(), ServerError> {
        // SAFETY: `serve_if_requested` runs first thing in `main`, before any thread (its
        // documented condition): the passed fds are owned by nothing else yet.
        let mut env = unsafe { ServiceEnv::take() };
        let listen = env.take_listener(false)?.ok_or(ActivationError::NoSocket)?;
        let mut notify = env.notifier();
        let timeout = self.preload_timeout.unwrap_or(DEFAULT_PRELOAD_TIMEOUT);
        for f in self.preload {
            if let Some(n) = notify.as_mut() {
                n.extend_timeout(timeout);
            }
            f();
        }
        let config = Config {
            listen: Listen::Fd(listen),
            prefork: self.prefork.unwrap_or(0),
            notify,
            ..Config::default()
        };
        Server::bind(config)?.with_entries(self.entries).run()
    }

    fn serve_launched(self, ready: &mut Option<std::fs::File>) -> Result<(), ServerError> {
        let listen = take_env_fd(LISTEN_FD_ENV)?
            .ok_or(ServerError::Launch(LaunchError::NotSet(LISTEN_FD_ENV)))?;
        let alive = take_env_fd(ALIVE_FD_ENV)?;
        let key = match take_env_fd(KEY_FD_ENV)? {
            Some(fd) => Some(read_key(std::fs::File::from(fd))?),
            None => None,
        };
        let prefork = match self.prefork {
            Some(n) => n,
            None => match std::env::var(PREFORK_ENV) {
                Ok(value) => value.parse().map_err(|_| {
                    ServerError::Launch(LaunchError::NotACount {
                        var: PREFORK_ENV,
                        value,
                    })
                })?,
                Err(_) => 0,
            },
        };
        std::env::remove_var(PREFORK_ENV);
        for f in self.preload {
            f();
        }
        let kill_children_with_server =
            std::env::var_os(KILL_CHILDREN_ENV).is_some_and(|v| v == "1");
        std::env::remove_var(KILL_CHILDREN_ENV);
        let config = Config {
            listen: Listen::Fd(listen),
            alive_fd: alive,
            key,
            prefork,
            kill_children_with_server,
            ..Config::default()
        };
        let server = Server::bind(config)?.with_entries(self.entries);
        // Preloads done, listener and event loop set up: ready. Written and closed (children
        // must not hold it: it is close-on-exec, and dropped here before the first fork).
        if let Some(mut r) = ready.take() {
            let _ = std::io::Write::write_all(&mut r, READY);
        }
        server.run()
    }
}

/// Whether a service manager passed this process a socket (or meant to, with malformed
/// variables: that is reported when serving). Reads the environment, changes nothing.
fn activated() -> bool {
    let var = std::env::var_os;
    let v = (
        var(crate::activation::LISTEN_PID_ENV),
        var(crate::activation::LISTEN_FDS_ENV),
        var(crate::activation::LISTEN_FDNAMES_ENV),
    );
    !matches!(
        parse_listen_env(
            v.0.as_deref(),
            v.1.as_deref(),
            v.2.as_deref(),
            std::process::id()
        ),
        Ok(Activation::None | Activation::OtherProcess(_))
    )
}

/// Names this process (`/proc/self/comm`, what `ps` and `pgrep` show) after its `argv[0]`: a
/// launcher that started it through an fd (`/proc/self/fd/N`, the client's pinned binary)
/// leaves the fd number there.
fn name_after_argv0() {
    use std::os::unix::ffi::OsStrExt;
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let Some(base) = std::path::Path::new(&argv0).file_name() else {
        return;
    };
    // The kernel keeps 15 bytes; a name with a NUL cannot be given.
    let name = &base.as_bytes()[..base.len().min(15)];
    if let Ok(name) = std::ffi::CString::new(name) {
        let _ = nix::sys::prctl::set_name(&name);
    }
}

/// Takes the fd named by environment variable `var`: removes the variable (children must not
/// see it), checks the fd is open, and makes it close-on-exec.
#[allow(unsafe_code)]
pub(crate) fn take_env_fd(var: &'static str) -> Result<Option<OwnedFd>, ServerError> {
    let Some(v) = std::env::var_os(var) else {
        return Ok(None);
    };
    std::env::remove_var(var);
    let bad = || {
        let value = v.clone();
        ServerError::Launch(LaunchError::NotAnFd { var, value })
    };
    let fd: RawFd = v.to_str().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    if fd < 3 {
        return Err(bad());
    }
    // SAFETY: the launcher handed this fd to us, named in the environment, which was just
    // cleared of the name; nothing else in this process knows of it, so this becomes its only
    // owner.
    let owned = unsafe { crate::sys::take_inherited_fd(fd) }.map_err(|_| bad())?;
    nix::fcntl::fcntl(
        &owned,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|_| bad())?;
    Ok(Some(owned))
}
