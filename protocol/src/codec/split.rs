//! A frame encoded in two parts for a vectored send: the bytes before a large entry payload,
//! and the payload itself, shared with the message rather than copied (PROTOCOL.md §5.5.2: the
//! payload is the last field of a `Spawn` with an entry job). The wire bytes are the same.

use std::sync::Arc;

use super::wire::{Reader, Sink};
use super::{Decoded, Header, Job, Message};
use crate::error::DecodeError;
use crate::HEADER_LEN;

/// Payloads shorter than this are copied into the frame's buffer: one buffer, one `iovec`.
pub(crate) const SPLIT_MIN: usize = 64 * 1024;

/// Writes everything into `head` but the one slice that is `tail` (same address and length),
/// which it only notes; `late` records a write after it (then the split is not used).
struct SplitSink<'a> {
    head: Vec<u8>,
    tail: &'a [u8],
    taken: bool,
    late: bool,
}

impl SplitSink<'_> {
    fn head(&mut self) -> &mut Vec<u8> {
        self.late |= self.taken;
        &mut self.head
    }
}

impl Sink for SplitSink<'_> {
    fn put_u8(&mut self, v: u8) {
        self.head().push(v);
    }
    fn put_u16_le(&mut self, v: u16) {
        self.head().extend_from_slice(&v.to_le_bytes());
    }
    fn put_u32_le(&mut self, v: u32) {
        self.head().extend_from_slice(&v.to_le_bytes());
    }
    fn put_i32_le(&mut self, v: i32) {
        self.head().extend_from_slice(&v.to_le_bytes());
    }
    fn put_u64_le(&mut self, v: u64) {
        self.head().extend_from_slice(&v.to_le_bytes());
    }
    fn put_slice(&mut self, s: &[u8]) {
        if !self.taken && std::ptr::eq(s, self.tail) {
            self.taken = true;
        } else {
            self.head().extend_from_slice(s);
        }
    }
}

/// [`crate::decode`], except that an entry payload of at least [`SPLIT_MIN`] bytes is not
/// copied: `Some(len)` says its last `len` bytes of the frame are that payload, left out of
/// the message, which the caller puts back with [`Message::fill_lent`] (a receiver that holds
/// the frame in a buffer of its own moves them there instead of copying them to new memory).
pub(crate) fn decode_lending(buf: &[u8]) -> Result<(Decoded, Option<usize>), DecodeError> {
    let Some(header) = Header::parse(buf)? else {
        return Ok((
            Decoded::Incomplete {
                needed: HEADER_LEN - buf.len(),
            },
            None,
        ));
    };
    let frame_len = header.frame_len();
    let Some(body) = buf.get(HEADER_LEN..frame_len) else {
        return Ok((
            Decoded::Incomplete {
                needed: frame_len - buf.len(),
            },
            None,
        ));
    };
    let (message, lent) = Message::decode_body(header, Reader::lending(body, SPLIT_MIN))?;
    let frame = Decoded::Frame {
        message,
        consumed: frame_len,
    };
    Ok((frame, lent))
}

impl Message {
    /// Puts back the entry payload [`decode_lending`] left out.
    pub(crate) fn fill_lent(&mut self, payload: Vec<u8>) {
        if let Message::Spawn(spawn) = self {
            if let Job::Entry(entry) = spawn.job_mut() {
                entry.fill_lent(payload);
            }
        }
    }

    /// The encoded frame as `head` followed by `tail`: for a `Spawn` whose entry payload is
    /// at least [`SPLIT_MIN`] bytes, the payload is the tail, shared; otherwise the whole
    /// frame is the head and there is no tail.
    pub(crate) fn to_split_bytes(&self) -> (Vec<u8>, Option<Arc<Vec<u8>>>) {
        let Message::Spawn(spawn) = self else {
            return (self.to_bytes(), None);
        };
        let Job::Entry(entry) = spawn.job() else {
            return (self.to_bytes(), None);
        };
        let payload = entry.payload();
        if payload.len() < SPLIT_MIN {
            return (self.to_bytes(), None);
        }
        let body_len = self.body_len();
        let mut head = Vec::with_capacity(HEADER_LEN + body_len - payload.len());
        Header::for_body(self.tag(), self.fd_count(), body_len).encode(&mut head);
        let mut sink = SplitSink {
            head,
            tail: payload,
            taken: false,
            late: false,
        };
        self.encode_body(&mut sink);
        if !sink.taken || sink.late {
            // Not the layout this expects: one buffer, as always.
            return (self.to_bytes(), None);
        }
        debug_assert_eq!(sink.head.len() + payload.len(), HEADER_LEN + body_len);
        (sink.head, Some(entry.shared_payload()))
    }
}

#[cfg(test)]
mod tests {
    use super::{decode_lending, SPLIT_MIN};
    use crate::{Decoded, EntryJob, FdMap, Job, Message, Spawn, SpawnOptions};

    fn spawn(payload_len: usize, targets: Vec<u32>) -> Message {
        let job = Job::Entry(EntryJob::new("entry", vec![9; payload_len]).unwrap());
        let fds = FdMap::from_targets(targets).unwrap();
        Message::Spawn(Spawn::new(SpawnOptions::default(), fds, job).unwrap())
    }

    #[test]
    fn a_lending_decode_leaves_out_only_a_large_payload() {
        for (len, lends) in [(SPLIT_MIN - 1, false), (SPLIT_MIN, true)] {
            let m = spawn(len, vec![5]);
            let bytes = m.to_bytes();
            let Ok((
                Decoded::Frame {
                    mut message,
                    consumed,
                },
                lent,
            )) = decode_lending(&bytes)
            else {
                panic!("payload of {len}: not a frame");
            };
            assert_eq!(consumed, bytes.len());
            assert_eq!(lent, lends.then_some(len), "payload of {len}");
            if let Some(n) = lent {
                assert_ne!(message, m);
                message.fill_lent(bytes[consumed - n..].to_vec());
            }
            assert_eq!(message, m, "payload of {len}");
        }
        // Whatever the input, the same answer as `decode` but for the payload.
        let m = spawn(SPLIT_MIN, vec![]);
        let bytes = m.to_bytes();
        for cut in [0, 5, bytes.len() - 1] {
            let (d, lent) = decode_lending(&bytes[..cut]).unwrap();
            assert_eq!(d, crate::decode(&bytes[..cut]).unwrap());
            assert_eq!(lent, None);
        }
    }

    #[test]
    fn the_two_parts_are_the_frame() {
        for (len, split) in [
            (0, false),
            (SPLIT_MIN - 1, false),
            (SPLIT_MIN, true),
            ((1 << 20) - 4096, true),
        ] {
            let m = spawn(len, vec![3, 4, 10]);
            let (head, tail) = m.to_split_bytes();
            assert_eq!(tail.is_some(), split, "payload of {len}");
            let mut whole = head;
            whole.extend_from_slice(tail.as_deref().map_or(&[], Vec::as_slice));
            assert_eq!(whole, m.to_bytes(), "payload of {len}");
        }
    }
}
