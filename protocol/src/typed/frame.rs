//! Result frames (PROTOCOL.md §11.3): what the entry child sends the client over the result
//! channel, one `SOCK_SEQPACKET` message each, and [`Assembler`], which puts a value sent in
//! chunks back together within a bound.

/// The largest result frame: a receiver reads with a buffer of this size, and a longer message
/// (`MSG_TRUNC`) is an error. Senders split values into [`ResultFrame::Chunk`]s of at most
/// [`MAX_CHUNK_LEN`] bytes.
pub const MAX_RESULT_FRAME_LEN: usize = 64 * 1024;
/// The most value bytes one frame carries.
pub const MAX_CHUNK_LEN: usize = MAX_RESULT_FRAME_LEN - 8;
/// The most bytes of a text field (error and panic messages, locations, mismatch detail);
/// senders cut longer text at a character boundary.
pub const MAX_TEXT_LEN: usize = 8 * 1024;
/// The default cap on a whole value, chunks included ([`Assembler::new`]).
pub const DEFAULT_MAX_RESULT_LEN: usize = 64 * 1024 * 1024;

/// A frame on the result channel. All but [`ResultFrame::Request`] travel child → client;
/// in a worker (PROTOCOL.md §11.7) `Chunk`s and `Request` also travel client → child.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResultFrame {
    /// Tag 1: the child checked the header; the entry is about to run.
    Accepted,
    /// Tag 2: the leading bytes of a value; more chunks or the [`ResultFrame::Value`] follow.
    Chunk(Vec<u8>),
    /// Tag 3: the value's last bytes, with the number of fds sent with this frame
    /// (`SCM_RIGHTS`; index `i` of a result's `Fd` is the `i`-th).
    Value {
        /// fds attached to this message.
        nfds: u16,
        /// The last bytes of the encoded value.
        bytes: Vec<u8>,
    },
    /// Tag 4: the entry returned `Err`: its `Display` text.
    Error(String),
    /// Tag 5: the entry panicked.
    Panic {
        /// The panic's message (`&str` or `String` payloads; otherwise a placeholder).
        message: String,
        /// `file:line:column`, or empty if unknown.
        location: String,
    },
    /// Tag 6: the header's fingerprint is not the entry's; the entry did not run.
    Mismatch {
        /// The entry's own fingerprint.
        fingerprint: u64,
        /// The entry's types and codec, as text.
        detail: String,
    },
    /// Tag 7 (client → worker, §11.7): a request's last bytes, after its `Chunk`s, with the
    /// number of fds sent with this frame (index `i` of the request's `Fd`s is the `i`-th).
    Request {
        /// fds attached to this message.
        nfds: u16,
        /// The last bytes of the encoded request.
        bytes: Vec<u8>,
    },
}

/// Why bytes are not a result frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// An empty message, or shorter than its tag's fixed fields.
    #[error("result frame: truncated")]
    Truncated,
    /// A tag this crate does not know.
    #[error("result frame: unknown tag {0}")]
    UnknownTag(u8),
    /// Bytes after the frame's last field, where it has no variable field.
    #[error("result frame: trailing bytes")]
    Trailing,
    /// A text field that is not UTF-8, or longer than [`MAX_TEXT_LEN`].
    #[error("result frame: bad text")]
    Text,
    /// Longer than [`MAX_RESULT_FRAME_LEN`].
    #[error("result frame: too long")]
    TooLong,
    /// A value's chunks add up to more than the receiver's cap.
    #[error("result frame: value longer than {0} bytes")]
    ValueTooLong(usize),
    /// The fds attached to a message are not what its frame announces.
    #[error("result frame: fd count")]
    FdCount,
}

fn text(b: &[u8]) -> Result<String, FrameError> {
    if b.len() > MAX_TEXT_LEN {
        return Err(FrameError::Text);
    }
    String::from_utf8(b.to_vec()).map_err(|_| FrameError::Text)
}

/// `s` cut to at most [`MAX_TEXT_LEN`] bytes at a character boundary.
pub fn cut_text(s: &str) -> &str {
    let mut end = s.len().min(MAX_TEXT_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl ResultFrame {
    /// The frame's tag.
    pub fn tag(&self) -> u8 {
        match self {
            ResultFrame::Accepted => 1,
            ResultFrame::Chunk(_) => 2,
            ResultFrame::Value { .. } => 3,
            ResultFrame::Error(_) => 4,
            ResultFrame::Panic { .. } => 5,
            ResultFrame::Mismatch { .. } => 6,
            ResultFrame::Request { .. } => 7,
        }
    }

    /// The frame's bytes. Text fields are cut to [`MAX_TEXT_LEN`]; the caller keeps value
    /// bytes within [`MAX_CHUNK_LEN`] (longer ones give a frame receivers refuse).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![self.tag()];
        match self {
            ResultFrame::Accepted => {}
            ResultFrame::Chunk(b) => v.extend_from_slice(b),
            ResultFrame::Value { nfds, bytes } | ResultFrame::Request { nfds, bytes } => {
                v.push(0);
                v.extend_from_slice(&nfds.to_le_bytes());
                v.extend_from_slice(bytes);
            }
            ResultFrame::Error(m) => v.extend_from_slice(cut_text(m).as_bytes()),
            ResultFrame::Panic { message, location } => {
                let m = cut_text(message);
                v.extend_from_slice(&(m.len() as u32).to_le_bytes());
                v.extend_from_slice(m.as_bytes());
                v.extend_from_slice(cut_text(location).as_bytes());
            }
            ResultFrame::Mismatch {
                fingerprint,
                detail,
            } => {
                v.extend_from_slice(&fingerprint.to_le_bytes());
                v.extend_from_slice(cut_text(detail).as_bytes());
            }
        }
        v
    }

    /// Decodes one whole message.
    ///
    /// # Errors
    /// A [`FrameError`]; never panics, allocates at most the message's length.
    pub fn decode(b: &[u8]) -> Result<ResultFrame, FrameError> {
        if b.len() > MAX_RESULT_FRAME_LEN {
            return Err(FrameError::TooLong);
        }
        let (&tag, rest) = b.split_first().ok_or(FrameError::Truncated)?;
        Ok(match tag {
            1 if rest.is_empty() => ResultFrame::Accepted,
            1 => return Err(FrameError::Trailing),
            2 => ResultFrame::Chunk(rest.to_vec()),
            3 | 7 => {
                let fixed = rest.get(..3).ok_or(FrameError::Truncated)?;
                // §11.3: the reserved byte MUST be zero.
                if fixed[0] != 0 {
                    return Err(FrameError::Trailing);
                }
                let nfds = u16::from_le_bytes([fixed[1], fixed[2]]);
                let bytes = rest[3..].to_vec();
                if tag == 3 {
                    ResultFrame::Value { nfds, bytes }
                } else {
                    ResultFrame::Request { nfds, bytes }
                }
            }
            4 => ResultFrame::Error(text(rest)?),
            5 => {
                let len = rest.get(..4).ok_or(FrameError::Truncated)?;
                let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
                let message = rest
                    .get(4..4usize.saturating_add(len))
                    .ok_or(FrameError::Truncated)?;
                ResultFrame::Panic {
                    message: text(message)?,
                    location: text(&rest[4 + len..])?,
                }
            }
            6 => {
                let fp = rest.get(..8).ok_or(FrameError::Truncated)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(fp);
                ResultFrame::Mismatch {
                    fingerprint: u64::from_le_bytes(a),
                    detail: text(&rest[8..])?,
                }
            }
            t => return Err(FrameError::UnknownTag(t)),
        })
    }
}

/// Puts a value's chunks together, refusing more than its cap before it allocates.
#[derive(Debug)]
pub struct Assembler {
    buf: Vec<u8>,
    max: usize,
}

impl Assembler {
    /// An assembler that takes values of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
        }
    }

    /// Appends a chunk's or the final value's bytes.
    ///
    /// # Errors
    /// [`FrameError::ValueTooLong`] past the cap.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        if self.buf.len().saturating_add(bytes.len()) > self.max {
            return Err(FrameError::ValueTooLong(self.max));
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// The value's bytes so far.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

/// The frames that carry `bytes`: chunks of at most [`MAX_CHUNK_LEN`], then the `Value`
/// frame (with `nfds`), which may be empty.
pub fn value_frames(bytes: &[u8], nfds: u16) -> Vec<ResultFrame> {
    let (mut out, last) = chunks(bytes);
    out.push(ResultFrame::Value { nfds, bytes: last });
    out
}

/// As [`value_frames`], ending with a worker's [`ResultFrame::Request`] (§11.7).
pub fn request_frames(bytes: &[u8], nfds: u16) -> Vec<ResultFrame> {
    let (mut out, last) = chunks(bytes);
    out.push(ResultFrame::Request { nfds, bytes: last });
    out
}

/// The `Chunk`s of `bytes` and the bytes left for the final frame.
fn chunks(bytes: &[u8]) -> (Vec<ResultFrame>, Vec<u8>) {
    let mut out: Vec<ResultFrame> = Vec::new();
    let mut rest = bytes;
    while rest.len() > MAX_CHUNK_LEN {
        let (head, tail) = rest.split_at(MAX_CHUNK_LEN);
        out.push(ResultFrame::Chunk(head.to_vec()));
        rest = tail;
    }
    (out, rest.to_vec())
}

#[cfg(test)]
mod tests {
    use super::{value_frames, Assembler, FrameError, ResultFrame, MAX_CHUNK_LEN};

    #[test]
    fn every_frame_round_trips_and_prefixes_fail_or_differ() {
        let frames = [
            ResultFrame::Accepted,
            ResultFrame::Chunk(vec![1, 2]),
            ResultFrame::Value {
                nfds: 2,
                bytes: vec![9],
            },
            ResultFrame::Error("bad".into()),
            ResultFrame::Panic {
                message: "boom ✓".into(),
                location: "src/x.rs:1:2".into(),
            },
            ResultFrame::Mismatch {
                fingerprint: 5,
                detail: "u32 -> u32".into(),
            },
            ResultFrame::Request {
                nfds: 1,
                bytes: vec![7],
            },
        ];
        for f in frames {
            let b = f.encode();
            assert_eq!(ResultFrame::decode(&b), Ok(f.clone()));
        }
        assert_eq!(ResultFrame::decode(&[]), Err(FrameError::Truncated));
        assert_eq!(ResultFrame::decode(&[1, 0]), Err(FrameError::Trailing));
        for t in 8..=255u8 {
            assert_eq!(ResultFrame::decode(&[t]), Err(FrameError::UnknownTag(t)));
        }
        assert_eq!(
            ResultFrame::decode(&[5, 255, 255, 255, 255]),
            Err(FrameError::Truncated)
        );
        assert_eq!(ResultFrame::decode(&[4, 0xff]), Err(FrameError::Text));
    }

    #[test]
    fn chunks_reassemble_within_the_cap() {
        let value: Vec<u8> = (0..3 * MAX_CHUNK_LEN + 5).map(|i| i as u8).collect();
        let frames = value_frames(&value, 1);
        assert_eq!(frames.len(), 4);
        let mut a = Assembler::new(value.len());
        for f in &frames {
            match ResultFrame::decode(&f.encode()).unwrap() {
                ResultFrame::Chunk(b) | ResultFrame::Value { bytes: b, .. } => a.push(&b).unwrap(),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(a.take(), value);
        let mut small = Assembler::new(10);
        assert_eq!(small.push(&[0; 11]), Err(FrameError::ValueTooLong(10)));
    }
}
