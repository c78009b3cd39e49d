//! The wire protocol of forkserver: typed messages, a sans-IO codec, and the transport that
//! moves frames and their file descriptors over an `AF_UNIX` socket.
//!
//! ```text
//!   client crate                                             server crate
//!  ┌────────────────┐                                     ┌────────────────┐
//!  │ Command / call │                                     │ event loop     │
//!  └───────┬────────┘                                     └───────▲────────┘
//!          │ Message + FdBundle                     Message + fds │
//!  ┌───────▼────────┐   codec (this crate, no I/O)        ┌───────┴────────┐
//!  │ Message::encode│ ─────────── bytes ────────────────▶ │ decode()       │
//!  └───────┬────────┘                                     └───────▲────────┘
//!  ┌───────▼────────┐   transport (this crate, nix)       ┌───────┴────────┐
//!  │ OutFrame::send │ ── sendmsg + SCM_RIGHTS ──────────▶ │ FrameReader    │
//!  └────────────────┘   (≤ 253 fds per call, §4.3)        └────────────────┘
//! ```
//!
//! * The codec (`codec/`): every message of `spec/PROTOCOL.md` as a type whose constructor
//!   enforces the spec's rules, so [`Message::encode`] cannot fail; and [`decode`], incremental
//!   and total: a frame and the bytes it used, [`Decoded::Incomplete`], or a [`DecodeError`].
//!   It does no I/O and holds no `unsafe`. Each item has one path: the crate root.
//! * The transport (`transport/`): [`OutFrame`] and [`FrameReader`] carry frames and up to
//!   256 fds over a stream socket (`MSG_CMSG_CLOEXEC`, `MSG_CTRUNC` and fd-count checks, every
//!   received fd closed on error).
//! * [`FdBundle`]: the owned fds of a spawn request with their target numbers.
//!
//! The limits ([`MAX_FDS`], [`MAX_BODY_LEN`], ...) are the spec's; see `spec/PROTOCOL.md` §3.
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(clippy::multiple_unsafe_ops_per_block)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "arbitrary")]
mod arbitrary_impls;
pub mod auth;
mod bundle;
mod codec;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod launch;
mod limits;
pub mod socket_dir;
#[allow(unsafe_code)]
mod transport;
#[cfg(feature = "typed")]
pub mod typed;

pub use bundle::FdBundle;
pub use codec::{
    decode, decode_exact, exit_flags, spawn_flags, Auth, AuthMethod, AuthOk, Credentials, Decoded,
    EntryJob, ErrorCode, ErrorReply, ExecJob, Exit, FdMap, Features, Groups, Header, Hello,
    HelloOk, Job, Message, Metrics, Pid, ResourceUsage, Revision, Rlimit, Rlimits, Session, Signal,
    Spawn, SpawnOptions, Status, Tag, MAX_UMASK, NICE_RANGE, OOM_SCORE_ADJ_RANGE, RLIMIT_NAMES,
    RLIM_INFINITY,
};
pub use error::{BuildError, DecodeError, Field, Limit, Snippet};
pub use limits::*;
pub use transport::{
    peek_pending, send_message, Frame, FrameReader, OutFrame, Pending, ReadLimits, TransportError,
};
