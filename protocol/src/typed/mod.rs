//! The typed entry convention (PROTOCOL.md §11, informative): how a client calls a zygote
//! entry with a serde value and gets a value, an error, a panic or fds back, with no change to
//! the wire protocol of §4-§8.
//!
//! ```text
//!  client                                     entry child (forked by the server)
//!  socketpair(SEQPACKET) ─ child end in the bundle at target `channel` ─▶ fd `channel`
//!  payload = TypedHeader ‖ argument ──── Spawn (Job::Entry) ────▶ TypedHeader::decode
//!                                                                  check fingerprint
//!          ◀──────────── Accepted | Mismatch ──────────────────────┘
//!          ◀──── Chunk* Value(+SCM_RIGHTS) | Error | Panic ──────── entry runs
//! ```
//!
//! * [`TypedHeader`]: the header at the front of the payload (no I/O, never panics).
//! * [`ResultFrame`], [`Assembler`]: the frames on the result channel (no I/O).
//! * [`fingerprint`], [`Codec`], [`encode`], [`decode`], [`Fd`]: the types' identity and their
//!   bytes (no I/O).
//! * [`channel_pair`], [`send_frame`], [`recv_frame`]: the channel's socket calls.
//! * [`encode_arg`] (or [`sealed_arg`]), [`map_sealed_arg`] ([`read_sealed_arg`]): a large
//!   argument's sealed memfd (§11.8), both ends.

mod arg;
#[allow(unsafe_code)] // taking ownership of fds received with SCM_RIGHTS
mod channel;
mod codec;
mod fd;
mod fingerprint;
mod frame;
mod header;
mod memfd;

pub use arg::{encode_arg, ArgError, EncodedArg};
pub use channel::{channel_pair, recv_frame, send_frame, ChannelError, Received};
pub use codec::{decode, encode, CodecError};
pub use fd::Fd;
pub use fingerprint::{fingerprint, fingerprint_of};
pub use frame::{
    cut_text, request_frames, value_frames, Assembler, FrameError, ResultFrame,
    DEFAULT_MAX_RESULT_LEN, MAX_CHUNK_LEN, MAX_RESULT_FRAME_LEN, MAX_TEXT_LEN,
};
pub use header::{
    Codec, HeaderError, MemfdArg, TypedHeader, FLAG_ARG_MEMFD, FLAG_WORKER, MAX_ARG_FDS,
    MAX_MEMFD_ARG_LEN, MEMFD_REF_LEN, TYPED_HEADER_LEN, TYPED_MAGIC, TYPED_VERSION,
};
pub use memfd::{
    map_sealed_arg, read_sealed_arg, sealed_arg, MemfdError, SealedArg, MEMFD_NAME, REQUIRED_SEALS,
};
