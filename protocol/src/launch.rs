//! The launch convention of PROTOCOL.md §9.4: the environment variables through which a
//! launcher (the client library's `Client::launch`) hands a server program its fds. Both sides
//! take the names from here, so they cannot drift apart.
#![forbid(unsafe_code)]

/// The fd number of the inherited, bound and listening `AF_UNIX` socket.
pub const LISTEN_FD_ENV: &str = "FORKSERVER_LISTEN_FD";

/// The fd number of the read end of the owner's "alive" pipe: its EOF means the owner is gone
/// and the server must exit.
pub const ALIVE_FD_ENV: &str = "FORKSERVER_ALIVE_FD";

/// The fd number of a pipe's read end from which the server reads its authentication key until
/// EOF (§9.1): the key itself never appears in argv or the environment.
pub const KEY_FD_ENV: &str = "FORKSERVER_KEY_FD";

/// The size of the launched server's prefork pool (children forked in advance, §6.4).
pub const PREFORK_ENV: &str = "FORKSERVER_PREFORK";

/// The fd number of a pipe's write end on which the server says when it is ready (§9.4): once
/// its preloads have run and it is about to serve, it writes [`READY`] and closes it; if it
/// cannot serve, it writes the reason (UTF-8 text, at most [`MAX_REASON_LEN`] bytes) instead.
/// End-of-file with nothing written means it died first.
pub const READY_FD_ENV: &str = "FORKSERVER_READY_FD";

/// What a server writes on the ready pipe when it serves.
pub const READY: &[u8] = b"ready\n";

/// Longest reason a server writes on the ready pipe when it cannot serve.
pub const MAX_REASON_LEN: usize = 4096;

/// `1`: the server's children get `PR_SET_PDEATHSIG(SIGKILL)` (they die with it), as
/// `forkserver serve --kill-children-with-server`.
pub const KILL_CHILDREN_ENV: &str = "FORKSERVER_KILL_CHILDREN";

/// Set in a process whose binary serves when launched (a `forkserver_server::zygote!`
/// constructor, or `Zygote::serve_if_requested` returning because it was not launched), so that
/// the client's `Client::launch_self` starts a copy of this binary only when that copy will
/// serve. Kept here because both libraries depend on this crate and never on each other.
static SELF_SERVING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Notes that this process's binary serves when launched (see [`serves_itself`]). Not an
/// interface for applications: `forkserver-server` calls it.
#[doc(hidden)]
pub fn note_serves_itself() {
    SELF_SERVING.store(true, std::sync::atomic::Ordering::Release);
}

/// Whether this process's binary serves when launched: a `forkserver_server::zygote!` is linked
/// in, or `Zygote::serve_if_requested` has run (and returned: not launched). Not an interface
/// for applications: `Client::launch_self` asks it.
#[doc(hidden)]
pub fn serves_itself() -> bool {
    SELF_SERVING.load(std::sync::atomic::Ordering::Acquire)
}
