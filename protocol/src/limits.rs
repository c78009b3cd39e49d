//! The protocol's limits. Each is a MUST in `spec/PROTOCOL.md` §3, where its reason is given.

/// The protocol version this crate speaks (PROTOCOL.md §8).
pub const PROTOCOL_VERSION: u16 = 1;

/// The four bytes that open every `Hello` body: `b"FKSV"` (PROTOCOL.md §5.1).
pub const MAGIC: [u8; 4] = *b"FKSV";

/// Size of the frame header that precedes every body (PROTOCOL.md §4).
pub const HEADER_LEN: usize = 8;

/// Largest body a frame may carry: 1 MiB. Bounds the memory a peer can make the other side hold
/// for one frame.
pub const MAX_BODY_LEN: usize = 1 << 20;

/// Largest frame, header included.
pub const MAX_FRAME_LEN: usize = HEADER_LEN + MAX_BODY_LEN;

/// Most file descriptors one frame (one spawn request's bundle) may carry.
pub const MAX_FDS: usize = 256;

/// Most file descriptors Linux passes in one `sendmsg` (`SCM_MAX_FD`): a bundle larger than this
/// travels in several `sendmsg` calls (PROTOCOL.md §4.3).
pub const SCM_MAX_FD: usize = 253;

/// Largest fd number a bundle may target in the child: Linux's default `fs.nr_open` is 1,048,576,
/// so no process can hold a higher descriptor on a default system.
pub const MAX_TARGET_FD: u32 = (1 << 20) - 1;

/// Most argv entries of an exec job (program name included).
pub const MAX_ARGS: usize = 4096;

/// Most environment entries of an exec job.
pub const MAX_ENV: usize = 4096;

/// Longest single argv string, and longest `KEY=VALUE` environment string, in bytes: Linux's
/// `MAX_ARG_STRLEN` (32 pages) less the terminating NUL.
pub const MAX_ARG_LEN: usize = 131_071;

/// Longest program path and working directory, in bytes: `PATH_MAX` (4096) less the NUL.
pub const MAX_PATH_LEN: usize = 4095;

/// Most supplementary groups a spawn request may set (PROTOCOL.md §3): far more than an
/// account normally has, small enough that a request stays small and every size can be tested.
pub const MAX_GROUPS: usize = 64;

/// Most resource limits a spawn request may set (PROTOCOL.md §3, rev 0.6): one per Linux
/// `RLIMIT_*` resource.
pub const MAX_RLIMITS: usize = 16;

/// Largest process-group id a spawn request may join: `pid_t` is a positive `i32`.
pub const MAX_PGID: u32 = i32::MAX as u32;

/// Longest entry-point name, in bytes.
pub const MAX_ENTRY_NAME_LEN: usize = 255;

/// Longest human-readable message of an error reply, in bytes.
pub const MAX_ERROR_MESSAGE_LEN: usize = 1024;

/// Longest server version string in a status reply, in bytes.
pub const MAX_VERSION_STRING_LEN: usize = 64;

/// Length of an authentication challenge (a random nonce), in bytes.
pub const CHALLENGE_LEN: usize = 32;

/// Length of an authentication response (an HMAC-SHA256 tag), in bytes.
pub const MAC_LEN: usize = 32;

/// Largest frame a client sends before its connection is READY: `Auth` (a response and a
/// challenge; `Hello` is 16 bytes). Before the handshake a server refuses a longer frame at its
/// header, so a peer without the key cannot make it buffer more (PROTOCOL.md §6.3).
pub const MAX_HANDSHAKE_FRAME_LEN: usize = HEADER_LEN + MAC_LEN + CHALLENGE_LEN;

/// Most instructions (`struct sock_filter`, 8 bytes each) of the seccomp program a spawn's
/// `SECCOMP_FILTER` entry holds (rev 0.6): the kernel's `BPF_MAXINSNS`. The server reads at
/// most this many before it makes the child (PROTOCOL.md §6.5).
pub const MAX_SECCOMP_INSNS: usize = 4096;

/// Highest signal number a signal request or an exit code may name (`SIGRTMAX` on Linux).
pub const MAX_SIGNAL: u32 = 64;
