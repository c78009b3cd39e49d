//! The client of forkserver: ask a fork server for children, from any thread, with any fds.
//!
//! ```text
//!  your threads                    this crate                         forkserver
//! ┌─────────────┐  command()   ┌───────────────────┐  one connection  ┌──────────────┐
//! │ Client      │ ───────────▶ │ Command / Call    │ ───────────────▶ │ fork()       │
//! │ (Arc, Sync) │  call()      │  → FdBundle+Spawn │  Hello, Spawn    │  exec / entry│
//! └─────────────┘              └─────────┬─────────┘  + fds           └──────┬───────┘
//!                                        │ Pid (+ pidfd)                     │ reaps
//!                              ┌─────────▼─────────┐  Signal / Signaled      │
//!                              │ Child             │ ◀────────────────────── ┘
//!                              │  wait, signal     │  Exit (signed code)
//!                              └───────────────────┘
//! ```
//!
//! * [`Client`]: a handle on one server, found by socket path ([`Client::connect`]) or started
//!   by this process and restarted if it dies ([`Client::launch`], see [`Launcher`]).
//! * [`Command`] (exec jobs, shaped like [`std::process::Command`]) and [`Call`] (entry-point
//!   jobs of a zygote server) gather the job, options and fds; `spawn` checks everything the
//!   wire forbids *before* connecting, then sends one `Spawn` request.
//! * [`Child`]: the answer. Each running child has its own connection, over which the server
//!   reports its exit ([`ExitStatus`]) and acknowledges signals; once the exit is read the
//!   connection goes back to the [`Client`] for the next request (PROTOCOL.md §6.6).
//!
//! Messages, the codec and fd passing are the `forkserver-protocol` crate's; this crate adds
//! connections, the launch convention, and std-like types.
//!
//! # Example
//!
//! ```no_run
//! use forkserver_client::{Client, Stdio};
//! use std::io::Read;
//! use std::time::Duration;
//!
//! // Start this very program as the server (its `main` serves when FORKSERVER_LISTEN_FD is
//! // set), or use `Client::connect("/run/forkserver.sock")` for one already running.
//! let client = Client::launch(std::env::current_exe()?)?;
//!
//! let mut child = client
//!     .command("echo")
//!     .arg("hello")
//!     .stdout(Stdio::piped())
//!     .deadline(Duration::from_secs(5))
//!     .spawn()?;
//! let mut out = String::new();
//! child.stdout.take().unwrap().read_to_string(&mut out)?;
//! let status = child.wait()?;
//! assert!(status.success(), "{status}");
//! assert_eq!(out, "hello\n");
//!
//! // The same client, from other threads at once.
//! let handles: Vec<_> = (0..4)
//!     .map(|i| {
//!         let client = client.clone();
//!         std::thread::spawn(move || client.command("true").arg(i.to_string()).spawn()?.wait())
//!     })
//!     .collect();
//! for h in handles {
//!     assert!(h.join().unwrap()?.success());
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(clippy::multiple_unsafe_ops_per_block)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

// First: its `request_setters!` macro serves `command`.
#[macro_use]
mod request;
#[cfg(feature = "tokio")]
#[allow(unsafe_code)] // registering the connection with tokio's reactor
mod async_child;
mod child;
mod child_conn;
mod client;
mod command;
mod conn;
#[cfg(feature = "tokio")]
#[allow(unsafe_code)] // registering a connection with tokio's reactor
mod conn_async;
mod connector;
mod controls;
mod engine;
#[cfg(feature = "tokio")]
mod engine_async;
mod error;
mod exit_status;
mod features;
#[allow(unsafe_code)] // pthread_atfork: a counter bumped in forked children
mod fork_epoch;
mod handshake;
mod idle;
mod launch;
#[allow(unsafe_code)] // atexit: the shared launched server is stopped as the process exits
mod launch_self;
mod managed;
mod output;
mod pinned;
mod pipes;
mod queries;
#[allow(unsafe_code)] // pre_exec: close-on-exec on the client's fds before exec
mod server_process;
mod stdio;
mod target;
#[cfg(feature = "typed")]
mod typed;
mod wait_until;

#[cfg(feature = "tokio")]
pub use async_child::AsyncChild;
pub use child::Child;
pub use client::Client;
pub use command::{Call, Command};
pub use connector::Connector;
pub use error::{Error, ProtocolError, Result};
pub use exit_status::{ExitStatus, ResourceUsage};
/// A file descriptor in a typed argument or result (PROTOCOL.md §11.4), and the codecs.
#[cfg(feature = "typed")]
pub use forkserver_protocol::typed::{Codec, Fd};
/// The server's error codes and status report, from the protocol crate.
pub use forkserver_protocol::{ErrorCode, Metrics, Status};
pub use launch::{Launcher, ALIVE_FD_ENV, KEY_FD_ENV, LISTEN_FD_ENV};
pub use output::Output;
pub use pipes::{ChildStderr, ChildStdin, ChildStdout};
pub use stdio::Stdio;
#[cfg(all(feature = "typed", feature = "tokio"))]
pub use typed::AsyncTypedChild;
#[cfg(feature = "typed")]
pub use typed::{
    CallError, TypedCall, TypedChild, Worker, WorkerBuilder, WorkerPool, INLINE_ARG_MAX,
};

#[cfg(test)]
mod tests;

/// The README's examples, compiled as doctests.
#[cfg(all(doctest, feature = "tokio"))]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
