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
//! application's own binary into the server, with entry points and preloaded state; [`zygote!`]
//! does it before `main`, for test binaries whose `main` is libtest's.
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(clippy::multiple_unsafe_ops_per_block)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod activation;
mod before_main;
mod config;
mod entry;
mod error;
mod ids;
mod key;
mod launch;
mod listen;
mod metrics;
mod notify;
mod quota;
mod server;
mod session;
mod spawn;
mod sys;
mod timers;
#[cfg(feature = "typed")]
mod typed;
#[cfg(feature = "typed")]
mod typed_worker;

pub use activation::{
    parse_listen_env, Activation, ActivationError, ServiceEnv, LISTEN_FDNAMES_ENV, LISTEN_FDS_ENV,
    LISTEN_FDS_START, LISTEN_FD_NAME, LISTEN_PID_ENV,
};
pub use config::{
    default_socket_path, Config, Listen, DEFAULT_MAX_CHILDREN, DEFAULT_SHUTDOWN_TIMEOUT,
    MAX_PREFORK,
};
pub use entry::{EntryFn, Invocation};
pub use error::{ConfigError, LaunchError, ServerError};
pub use forkserver_protocol::socket_dir::DirError;
/// A file descriptor in a typed argument or result (PROTOCOL.md §11.4), and the codecs.
#[cfg(feature = "typed")]
pub use forkserver_protocol::typed::{Codec, Fd};
pub use key::{read_key, read_key_file};
pub use launch::{
    Zygote, ALIVE_FD_ENV, DEFAULT_PRELOAD_TIMEOUT, KEY_FD_ENV, LISTEN_FD_ENV, PREFORK_ENV,
};
pub use notify::{
    parse_notify_socket, parse_watchdog, Notifier, NotifyAddr, NotifyEnvError, NOTIFY_SOCKET_ENV,
    WATCHDOG_PID_ENV, WATCHDOG_USEC_ENV,
};
pub use server::{Server, EXEC_FORK_ENV};
#[cfg(feature = "typed")]
pub use typed::{Fallible, Outcome, Plain, BAD_HEADER_STATUS, FAILED_STATUS, PANIC_STATUS};

/// Not an interface: what the [`zygote!`] macro expands to.
#[doc(hidden)]
pub mod __private {
    pub use crate::before_main::serve_before_main;
}

/// Not an interface: the sans-IO connection session (PROTOCOL.md §6.1) and what it is fed,
/// for the `session` fuzz target (`fuzz/fuzz_targets/session.rs`).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::session::{Action, Env, Session, State};
    pub use nix::{errno::Errno, unistd::Pid};
}
