//! The 8-byte frame header (PROTOCOL.md §4).
//!
//! ```text
//!  0        1        2                 4                                 8
//! +--------+--------+--------+--------+--------+--------+--------+--------+
//! |  tag   | flags  |   nfds (u16)    |           body_len (u32)          |
//! +--------+--------+--------+--------+--------+--------+--------+--------+
//! ```

use super::wire::Sink;
use super::Tag;
use crate::error::DecodeError;
use crate::{HEADER_LEN, MAX_BODY_LEN, MAX_FDS};

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

    /// The header of a frame the encoder is about to write: `body_len` is what the body's
    /// encoder writes (measured, never kept by hand). Constructors keep every message within
    /// the limits, so this cannot fail; debug builds (the tests, the fuzzers) check the
    /// header against the same §4.1 rules as [`Header::parse`].
    pub(crate) fn for_body(tag: Tag, nfds: usize, body_len: usize) -> Header {
        debug_assert!(
            nfds <= MAX_FDS && body_len <= MAX_BODY_LEN,
            "{tag:?} {nfds} {body_len}"
        );
        let header = Header {
            tag,
            nfds: nfds as u16,
            body_len: body_len as u32,
        };
        debug_assert_eq!(header.check_nfds(), Ok(()));
        debug_assert_eq!(header.check_body_len(), Ok(()));
        header
    }

    pub(crate) fn encode(&self, out: &mut impl Sink) {
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
        let mut header = Header {
            tag,
            nfds: u16::from_le_bytes([nfds[0], nfds[1]]),
            body_len: 0,
        };
        header.check_nfds()?;
        // §4.1 rule 4.
        let Some(len) = buf.get(4..8) else {
            return Ok(None);
        };
        header.body_len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
        header.check_body_len()?;
        Ok(Some(header))
    }

    /// §4.1 rule 3: nfds <= 256, and no more than the message type may carry.
    fn check_nfds(&self) -> Result<(), DecodeError> {
        if usize::from(self.nfds) > MAX_FDS {
            return Err(DecodeError::TooManyFds(self.nfds));
        }
        if self.nfds > self.tag.max_fds() {
            return Err(DecodeError::UnexpectedFds {
                tag: self.tag as u8,
                nfds: self.nfds,
            });
        }
        Ok(())
    }

    /// §4.1 rule 4: body_len <= MAX_BODY_LEN, and exact for fixed-size messages.
    fn check_body_len(&self) -> Result<(), DecodeError> {
        if self.body_len as usize > MAX_BODY_LEN {
            return Err(DecodeError::BodyTooLong(self.body_len));
        }
        match self.tag.fixed_body_len() {
            Some(fixed) if self.body_len != fixed => Err(DecodeError::BadBodyLength {
                tag: self.tag as u8,
                len: self.body_len,
            }),
            _ => Ok(()),
        }
    }
}
