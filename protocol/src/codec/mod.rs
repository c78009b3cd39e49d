//! The sans-IO codec: typed messages, [`Message::encode`] and [`decode`]. No I/O, no `unsafe`.
//!
//! # How a body is encoded (the style every message follows)
//!
//! A body type implements the table's `Body` trait (`messages.rs`): `encode` writes the body
//! to a `Sink` (`wire.rs`), `decode` reads it. **No length is written by hand.** The header's
//! `body_len`, [`Message::encoded_len`], and the `MAX_BODY_LEN` check of [`Spawn::new`] all run
//! the same `encode` into a `LenCounter`, a `Sink` that only adds up what it is given (the
//! counting `BufMut` of the issue; rustls's `LengthPrefixedBuffer` reaches the same goal by
//! patching the length in afterwards, which a generic [`BufMut`] cannot do). So a new message
//! or field is written once, in `encode`, and its length cannot drift from its bytes:
//!
//! ```text
//! impl Body for Features {
//!     fn encode(&self, out: &mut impl Sink) {
//!         out.put_u32_le(self.spawn_flags);
//!         put_bytes16(out, self.name.as_bytes());
//!     }
//!     fn decode(r: &mut Reader<'_>, _nfds: u16) -> Result<Self, DecodeError> { ... }
//! }
//! ```
//!
//! plus its `messages!` line (`len var`, or `len N` for a fixed size, which the tests and a debug
//! assertion in `Header::for_body` check against what `encode` writes). A constructor that must
//! bound a variable body measures it the same way: `wire::encoded_len(|n| body.encode(n))`.
//! Encoding stays infallible: constructors keep every value within the limits, and
//! `Header::for_body` checks the header against the §4.1 rules in debug builds.
#![forbid(unsafe_code)]

mod control;
mod error_reply;
mod exit;
mod features;
mod handshake;
mod header;
mod messages;
mod metrics;
mod spawn;
mod split;
mod status;
mod wire;

use bytes::BufMut;

pub use control::{Pid, Signal};
pub use error_reply::{ErrorCode, ErrorReply};
pub use exit::{exit_flags, Exit, ResourceUsage};
pub use features::Features;
pub use handshake::{Auth, AuthMethod, AuthOk, Hello, HelloOk};
pub use header::Header;
pub use messages::{Message, Tag};
pub use metrics::Metrics;
pub use spawn::{
    flags as spawn_flags, Credentials, EntryJob, ExecJob, FdMap, Groups, Job, Revision, Rlimit,
    Rlimits, Session, Spawn, SpawnOptions, MAX_UMASK, NICE_RANGE, OOM_SCORE_ADJ_RANGE,
    RLIMIT_NAMES, RLIM_INFINITY,
};
pub use status::Status;

use crate::error::DecodeError;
use crate::HEADER_LEN;
use wire::encoded_len;

pub(crate) use split::decode_lending;

impl From<ErrorReply> for Message {
    fn from(e: ErrorReply) -> Self {
        Message::Error(e)
    }
}

impl Message {
    /// Length of the encoded frame, header included: what [`Message::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.body_len()
    }

    /// The body's length: the body's encoder run into a counter (module doc).
    fn body_len(&self) -> usize {
        encoded_len(|n| self.encode_body(n))
    }

    /// Appends the frame (header and body) to `out`. Cannot fail: every message that can be
    /// built fits the limits of the spec.
    pub fn encode(&self, out: &mut impl BufMut) {
        self.encode_measured(self.body_len(), out);
    }

    /// The encoded frame as a new vector, allocated once at its exact size.
    pub fn to_bytes(&self) -> Vec<u8> {
        let body_len = self.body_len();
        let mut v = Vec::with_capacity(HEADER_LEN + body_len);
        self.encode_measured(body_len, &mut v);
        debug_assert_eq!(v.len(), HEADER_LEN + body_len);
        v
    }

    /// [`Message::encode`] with the body's length already measured.
    fn encode_measured(&self, body_len: usize, out: &mut impl BufMut) {
        Header::for_body(self.tag(), self.fd_count(), body_len).encode(out);
        self.encode_body(out);
    }
}

/// The outcome of [`decode`] on bytes that are not (yet) invalid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame: the message and how many bytes of the input it used.
    Frame {
        /// The decoded message.
        message: Message,
        /// Bytes of the input the frame took; the rest belongs to later frames.
        consumed: usize,
    },
    /// The input is a strict prefix of a frame that could still be valid.
    Incomplete {
        /// At least this many more bytes are needed before anything changes.
        needed: usize,
    },
}

/// Decodes the first frame of `buf`.
///
/// Incremental and total: for any input it returns a frame and the bytes it took,
/// [`Decoded::Incomplete`] when `buf` is a prefix of a frame that may still turn out valid, or
/// the first rule the bytes break. It never panics, and it allocates only once the whole frame is
/// present, in proportion to the frame's actual bytes (at most [`crate::MAX_FRAME_LEN`]).
///
/// # Errors
/// A [`DecodeError`] naming the broken rule. No later bytes can repair it: the connection is
/// beyond recovery (PROTOCOL.md §6.2).
///
/// # Examples
/// ```
/// use forkserver_protocol::{decode, Decoded, Hello, Message};
///
/// let bytes = Message::Hello(Hello::current()).to_bytes();
/// assert!(matches!(decode(&bytes[..5]), Ok(Decoded::Incomplete { .. })));
/// match decode(&bytes) {
///     Ok(Decoded::Frame { message: Message::Hello(h), consumed }) => {
///         assert_eq!(consumed, bytes.len());
///         assert_eq!(h.max_version(), 1);
///     }
///     other => panic!("{other:?}"),
/// }
/// ```
pub fn decode(buf: &[u8]) -> Result<Decoded, DecodeError> {
    let Some(header) = Header::parse(buf)? else {
        return Ok(Decoded::Incomplete {
            needed: HEADER_LEN - buf.len(),
        });
    };
    let frame_len = header.frame_len();
    let Some(body) = buf.get(HEADER_LEN..frame_len) else {
        return Ok(Decoded::Incomplete {
            needed: frame_len - buf.len(),
        });
    };
    let (message, _) = Message::decode_body(header, wire::Reader::new(body))?;
    Ok(Decoded::Frame {
        message,
        consumed: frame_len,
    })
}

/// Decodes `buf` as exactly one frame: an incomplete frame is [`DecodeError::Truncated`] and
/// bytes after the frame are [`DecodeError::TrailingBytes`].
///
/// # Errors
/// As [`decode`], plus the two above.
pub fn decode_exact(buf: &[u8]) -> Result<Message, DecodeError> {
    match decode(buf)? {
        Decoded::Frame { message, consumed } if consumed == buf.len() => Ok(message),
        Decoded::Frame { .. } => Err(DecodeError::TrailingBytes),
        Decoded::Incomplete { .. } => Err(DecodeError::Truncated),
    }
}
