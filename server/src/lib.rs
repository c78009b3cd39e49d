//! The forkserver server: a small, single-threaded process that forks children on request.
//!
//! ```text
//!  clients ──unix socket──▶ ┌──────────────────────── Server::run ─────────────────────────┐
//!                           │ epoll: listener · connections · signalfd(SIGCHLD, SIGTERM)  │
//!                           │        · alive fd · report pipes (exec result)              │
//!                           │                                                             │
//!                           │ conn state: AwaitHello → AwaitAuth (key set) → Ready        │
//!                           │             → Spawning(pid) (pid_after_exec) → Running(pid) │
//!                           │             → Closing                                       │
//!                           │ Spawn ──▶ spawn::spawn ── fork ──▶ child: reset signals,     │
//!                           │             │                      session, place fds,      │
//!                           │             ▼                      close the rest, run job  │
//!                           │   Pid reply at once; Exit when reaped (waitpid WNOHANG)     │
//!                           └─────────────────────────────────────────────────────────────┘
//! ```
//!
//! Use it as the `forkserver` binary (`forkserver serve`), or embed it: [`Zygote`] turns the
//! application's own binary into the server, with entry points and preloaded state.
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(clippy::multiple_unsafe_ops_per_block)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod activation;
mod config;
mod entry;
mod key;
mod launch;
mod listen;
mod notify;
mod quota;
mod server;
mod session;
mod spawn;
mod sys;
mod timers;

pub use activation::{
    parse_listen_env, Activation, ActivationError, ServiceEnv, LISTEN_FDNAMES_ENV, LISTEN_FDS_ENV,
    LISTEN_FDS_START, LISTEN_FD_NAME, LISTEN_PID_ENV,
};
pub use config::{
    default_socket_path, Config, Listen, DEFAULT_MAX_CHILDREN, DEFAULT_SHUTDOWN_TIMEOUT,
    MAX_PREFORK,
};
pub use entry::{EntryFn, Invocation};
pub use forkserver_protocol::socket_dir::DirError;
pub use key::{read_key, read_key_file};
pub use launch::{
    Zygote, ALIVE_FD_ENV, DEFAULT_PRELOAD_TIMEOUT, KEY_FD_ENV, LISTEN_FD_ENV, PREFORK_ENV,
};
pub use notify::{
    parse_notify_socket, parse_watchdog, Notifier, NotifyAddr, NotifyEnvError, NOTIFY_SOCKET_ENV,
    WATCHDOG_PID_ENV, WATCHDOG_USEC_ENV,
};
pub use server::Server;

use std::path::PathBuf;

/// Why the server could not start or had to stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A system call failed.
    #[error("{0}: {1}")]
    Sys(String, nix::errno::Errno),
    /// A file operation failed.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// Another server answers on the socket path (or the path is not a socket).
    #[error("{0} is in use")]
    InUse(PathBuf),
    /// The socket directory is not fit to hold the socket (owner, mode, a foreign symbolic
    /// link; PROTOCOL.md §9.3).
    #[error("{0}")]
    Insecure(#[from] DirError),
    /// The process has more than one thread: forking it would be unsafe.
    #[error("the server must be single-threaded, this process has {0} threads")]
    Threads(usize),
    /// The key file is not owned by the server's effective uid, or grants access to group or
    /// others.
    #[error(
        "{}: the key file must be owned by uid {euid} and closed to group and others, \
         it is owned by uid {owner} with mode {mode:o}",
        path.display()
    )]
    InsecureKeyFile {
        /// The key file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its permission bits.
        mode: u32,
        /// The server's effective uid.
        euid: u32,
    },
    /// The launch environment (`FORKSERVER_LISTEN_FD`, `FORKSERVER_ALIVE_FD`) is wrong.
    #[error("launch: {0}")]
    Launch(String),
    /// A setting of the [`Config`] is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}
