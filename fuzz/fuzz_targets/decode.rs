//! Decodes arbitrary bytes as a stream of frames; every frame that decodes must re-encode to
//! exactly its bytes (the oracle lives in `forkserver_protocol::fuzzing`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    forkserver_protocol::fuzzing::decode_roundtrip(data);
});
