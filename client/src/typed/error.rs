//! [`CallError`]: every way a typed call can end other than with its value.

use crate::error::Error;

/// How a typed call ended without a value ([`crate::TypedChild::join`]), or why it did not
/// start ([`crate::TypedCall::spawn`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The entry panicked: the panic hook in the child sent its message and location.
    #[error("the entry panicked at {location}: {message}")]
    Panicked {
        /// The panic's message.
        message: String,
        /// `file:line:column` in the entry's source, or empty.
        location: String,
    },
    /// The entry returned `Err`: its `Display` text.
    #[error("the entry failed: {0}")]
    Failed(String),
    /// The child was killed by a signal before it sent a result (a deadline's `SIGKILL`, a
    /// [`crate::TypedChild::kill`], the OOM killer...), even if it was writing one.
    #[error("the entry was killed by signal {signal}{}", if *deadline_expired { " (deadline)" } else { "" })]
    Killed {
        /// The signal's number.
        signal: i32,
        /// The server killed it because its deadline had passed.
        deadline_expired: bool,
    },
    /// The child exited without sending a result (`process::exit` in the entry, say).
    #[error("the entry exited with status {0} without a result")]
    Exited(i32),
    /// The entry is not this call's: other types or codec, not a typed entry, or no entry of
    /// that name. Detected before the entry ran (an untyped entry runs, but its answer is
    /// never taken for a value).
    #[error("typed entry {entry:?}: {detail}")]
    Mismatch {
        /// The entry's name.
        entry: String,
        /// What did not match.
        detail: String,
    },
    /// The request was not made, or the server refused it.
    #[error("spawn failed: {0}")]
    Spawn(#[source] Error),
    /// The connection to the server or the result channel broke while the call ran; its
    /// outcome is unknown.
    #[error("transport: {0}")]
    Transport(#[source] Error),
    /// The argument could not be encoded (before anything was sent).
    #[error("cannot encode the argument: {0}")]
    Encode(String),
    /// The child's answer is not a valid result (malformed or oversized frames, a value that
    /// does not decode as `R`, too many fds).
    #[error("bad result: {0}")]
    Decode(String),
    /// The [`crate::Worker`] had already ended (a panic, a signal, an exit, a bad frame: the
    /// text says which) before this call: spawn a new one ([`crate::WorkerPool`] does).
    #[error("the worker has ended: {0}")]
    Ended(String),
    /// The result was already taken by an earlier `join_timeout`.
    #[error("the result was already taken")]
    Taken,
}
