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

/// The typed convention's decoders (PROTOCOL.md §11) on `data`: the header decoder, and the
/// result-frame decoder on the whole input and on each of its suffixes' first 64 KiB. Checks
/// that whatever decodes re-encodes to the bytes it came from (headers and frames alike), and
/// that the frames' assembler refuses past its cap. Panics (which the fuzzer reports) if a
/// property breaks.
#[cfg(feature = "typed")]
pub fn typed_roundtrip(data: &[u8]) {
    use crate::typed::{Assembler, ResultFrame, TypedHeader};
    if let Ok((header, arg)) = TypedHeader::decode(data) {
        assert_eq!(
            header.encode(arg).as_deref(),
            Some(data),
            "header re-encoding"
        );
        assert_eq!(header.encoded_len() + arg.len(), data.len());
    }
    let mut assembler = Assembler::new(1024);
    let mut total = 0usize;
    for start in 0..data.len().min(16) {
        let bytes = &data[start..];
        if let Ok(frame) = ResultFrame::decode(bytes) {
            assert_eq!(frame.encode(), bytes, "frame re-encoding of {frame:?}");
            if let ResultFrame::Chunk(b)
            | ResultFrame::Value { bytes: b, .. }
            | ResultFrame::Request { bytes: b, .. } = &frame
            {
                let fits = total + b.len() <= 1024;
                assert_eq!(assembler.push(b).is_ok(), fits, "assembler cap");
                if fits {
                    total += b.len();
                }
            }
        }
    }
}
