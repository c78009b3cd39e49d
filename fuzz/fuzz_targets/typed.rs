//! The typed entry convention's header and result-frame decoders (PROTOCOL.md §11); the
//! oracle is `forkserver_protocol::fuzzing::typed_roundtrip`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    forkserver_protocol::fuzzing::typed_roundtrip(data);
});
