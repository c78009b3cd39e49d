//! Oracles for the fuzzer, kept in the library so that `fuzz/` targets stay a few lines and the
//! property tests can call the same checks.
#![forbid(unsafe_code)]

use crate::codec::{decode, Decoded};

/// Decodes `data` as a stream of frames and checks, for each frame decoded, that it re-encodes
/// to exactly the bytes it was decoded from, and that `decode` made progress. Panics (which the
/// fuzzer reports) if the codec breaks either property; returns the number of frames decoded.
pub fn decode_roundtrip(data: &[u8]) -> usize {
    let mut rest = data;
    let mut frames = 0;
    loop {
        match decode(rest) {
            Ok(Decoded::Frame { message, consumed }) => {
                assert!(
                    consumed > 0 && consumed <= rest.len(),
                    "decode made no progress"
                );
                let again = message.to_bytes();
                assert_eq!(
                    again,
                    &rest[..consumed],
                    "re-encoding {message:?} did not give the decoded bytes"
                );
                assert_eq!(message.encoded_len(), consumed);
                frames += 1;
                rest = &rest[consumed..];
            }
            Ok(Decoded::Incomplete { needed }) => {
                assert!(needed > 0, "incomplete but needs nothing");
                return frames;
            }
            Err(_) => return frames,
        }
    }
}
