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
