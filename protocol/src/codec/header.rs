//! The 8-byte frame header (PROTOCOL.md §4).
//!
//! ```text
//!  0        1        2                 4                                 8
//! +--------+--------+--------+--------+--------+--------+--------+--------+
//! |  tag   | flags  |   nfds (u16)    |           body_len (u32)          |
//! +--------+--------+--------+--------+--------+--------+--------+--------+
//! ```

use bytes::BufMut;

use crate::error::DecodeError;
use crate::{HEADER_LEN, MAX_BODY_LEN, MAX_FDS};

/// The message types of protocol version 1 (PROTOCOL.md §5). Every other tag value is reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Tag {
    /// Client → server: opens the connection and offers a version range.
    Hello = 0x01,
    /// Server → client: the chosen version and the authentication method.
    HelloOk = 0x02,
    /// Client → server: the answer to the server's challenge, and a challenge back.
    Auth = 0x03,
    /// Server → client: the answer to the client's challenge.
    AuthOk = 0x04,
    /// Client → server: fork a child.
    Spawn = 0x10,
    /// Client → server: send a signal to the child of this connection.
    Signal = 0x11,
    /// Client → server: ask for the server's status.
    StatusRequest = 0x12,
    /// Server → client: the child's pid (and maybe a pidfd).
    Pid = 0x20,
    /// Server → client: the child's signed exit code.
    Exit = 0x21,
    /// Server → client: a signal request was carried out.
    Signaled = 0x22,
    /// Server → client: the server's status.
    Status = 0x23,
    /// Server → client: a request failed.
    Error = 0x2F,
}

impl Tag {
    /// Every tag, in numeric order.
    pub const ALL: [Tag; 12] = [
        Tag::Hello,
        Tag::HelloOk,
        Tag::Auth,
        Tag::AuthOk,
        Tag::Spawn,
        Tag::Signal,
        Tag::StatusRequest,
        Tag::Pid,
        Tag::Exit,
        Tag::Signaled,
        Tag::Status,
        Tag::Error,
    ];

    /// The tag for a byte, if it names a message of this version.
    pub fn from_u8(b: u8) -> Option<Tag> {
        Tag::ALL.into_iter().find(|t| *t as u8 == b)
    }

    /// Most fds a frame of this type may carry (PROTOCOL.md §4.2).
    pub fn max_fds(self) -> u16 {
        match self {
            Tag::Spawn => MAX_FDS as u16,
            Tag::Pid => 1,
            _ => 0,
        }
    }

    /// The body length of fixed-size messages; `None` for variable-size ones.
    pub fn fixed_body_len(self) -> Option<u32> {
        match self {
            Tag::Hello => Some(8),
            Tag::Auth => Some(64),
            Tag::AuthOk => Some(32),
            Tag::Signal => Some(4),
            Tag::StatusRequest => Some(0),
            Tag::Pid => Some(4),
            Tag::Exit => Some(8),
            Tag::Signaled => Some(0),
            Tag::HelloOk | Tag::Spawn | Tag::Status | Tag::Error => None,
        }
    }

    /// True for messages a client sends, false for those a server sends.
    pub fn is_from_client(self) -> bool {
        matches!(
            self,
            Tag::Hello | Tag::Auth | Tag::Spawn | Tag::Signal | Tag::StatusRequest
        )
    }
}

/// A validated frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The message type.
    pub tag: Tag,
    /// How many fds travel with this frame (PROTOCOL.md §4.3).
    pub nfds: u16,
    /// Length of the body that follows the header.
    pub body_len: u32,
}

impl Header {
    /// Total frame length, header included.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.body_len as usize
    }

    pub(crate) fn encode(&self, out: &mut impl BufMut) {
        out.put_u8(self.tag as u8);
        out.put_u8(0);
        out.put_u16_le(self.nfds);
        out.put_u32_le(self.body_len);
    }

    /// Checks as much of a header as `buf` holds, so that garbage is refused at its first byte
    /// rather than after the peer has sent (or claimed to send) a whole body.
    ///
    /// Returns `Ok(None)` when `buf` is a valid prefix of a header shorter than 8 bytes.
    ///
    /// # Errors
    /// The first rule of PROTOCOL.md §4.1 the bytes break.
    pub fn parse(buf: &[u8]) -> Result<Option<Header>, DecodeError> {
        // §4.1 rule 1: the tag must name a message of the negotiated version.
        let Some(&tag_byte) = buf.first() else {
            return Ok(None);
        };
        let tag = Tag::from_u8(tag_byte).ok_or(DecodeError::UnknownTag(tag_byte))?;
        // §4.1 rule 2: the flags byte is reserved and must be zero.
        match buf.get(1) {
            None => return Ok(None),
            Some(0) => {}
            Some(_) => return Err(DecodeError::ReservedNotZero),
        }
        // §4.1 rule 3: nfds <= 256, and no more than the message type may carry.
        let Some(nfds) = buf.get(2..4) else {
            return Ok(None);
        };
        let nfds = u16::from_le_bytes([nfds[0], nfds[1]]);
        if usize::from(nfds) > MAX_FDS {
            return Err(DecodeError::TooManyFds(nfds));
        }
        if nfds > tag.max_fds() {
            return Err(DecodeError::UnexpectedFds {
                tag: tag as u8,
                nfds,
            });
        }
        // §4.1 rule 4: body_len <= MAX_BODY_LEN, and exact for fixed-size messages.
        let Some(len) = buf.get(4..8) else {
            return Ok(None);
        };
        let body_len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
        if body_len as usize > MAX_BODY_LEN {
            return Err(DecodeError::BodyTooLong(body_len));
        }
        if let Some(fixed) = tag.fixed_body_len() {
            if body_len != fixed {
                return Err(DecodeError::BadBodyLength {
                    tag: tag as u8,
                    len: body_len,
                });
            }
        }
        Ok(Some(Header {
            tag,
            nfds,
            body_len,
        }))
    }
}
