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
