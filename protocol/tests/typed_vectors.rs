//! The typed entry convention's vectors (`spec/vectors/typed.json`, PROTOCOL.md §11.6):
//! headers, fingerprints and result frames, valid and invalid, built here from the public
//! constructors and checked against the file, so that spec and code cannot drift.
//! `FORKSERVER_REGEN_VECTORS=1` rewrites the file and the `typed` fuzz target's seeds
//! (`fuzz/corpus/typed/seed-*`), which are checked otherwise.

mod common;

use common::{hex, spec_dir, unhex};
use forkserver_protocol::typed::*;
use serde_json::{json, Value};

fn regen() -> bool {
    std::env::var_os("FORKSERVER_REGEN_VECTORS").is_some()
}

fn header_json(h: &TypedHeader, arg: &[u8]) -> Value {
    json!({
        "codec": h.codec().name(),
        "fingerprint": format!("{:016x}", h.fingerprint()),
        "channel": h.channel(),
        "fd_targets": h.fd_targets(),
        "arg": hex(arg),
        "worker": h.is_worker(),
        "memfd": h.memfd_arg().map(|m| json!({"target": m.target(), "len": m.len()})),
    })
}

fn frame_json(f: &ResultFrame) -> Value {
    match f {
        ResultFrame::Accepted => json!({"type": "Accepted"}),
        ResultFrame::Chunk(b) => json!({"type": "Chunk", "bytes": hex(b)}),
        ResultFrame::Value { nfds, bytes } => {
            json!({"type": "Value", "nfds": nfds, "bytes": hex(bytes)})
        }
        ResultFrame::Error(t) => json!({"type": "Error", "text": t}),
        ResultFrame::Panic { message, location } => {
            json!({"type": "Panic", "message": message, "location": location})
        }
        ResultFrame::Mismatch {
            fingerprint,
            detail,
        } => {
            json!({"type": "Mismatch", "fingerprint": format!("{fingerprint:016x}"), "detail": detail})
        }
        ResultFrame::Request { nfds, bytes } => {
            json!({"type": "Request", "nfds": nfds, "bytes": hex(bytes)})
        }
        other => panic!("no JSON form for {other:?}"),
    }
}

fn valid_headers() -> Vec<(&'static str, &'static str, TypedHeader, Vec<u8>)> {
    let fp = fingerprint_of("area", "(u32, u32)", "u64", Codec::MessagePack);
    let fpj = fingerprint_of("area", "(u32, u32)", "u64", Codec::Json);
    vec![
        (
            "header-msgpack-area",
            "area((800, 600)) in MessagePack: [800, 600] = 92 cd 03 20 cd 02 58; channel at fd 3, no fds",
            TypedHeader::new(Codec::MessagePack, fp, 3, vec![]).unwrap(),
            vec![0x92, 0xcd, 0x03, 0x20, 0xcd, 0x02, 0x58],
        ),
        (
            "header-json-area",
            "area((800, 600)) in JSON; channel at fd 3",
            TypedHeader::new(Codec::Json, fpj, 3, vec![]).unwrap(),
            b"[800,600]".to_vec(),
        ),
        (
            "header-json-fds",
            "an argument with two Fds (indexes 0 and 1) placed at fds 4 and 5; channel at fd 3",
            TypedHeader::new(Codec::Json, 0x1122_3344_5566_7788, 3, vec![4, 5]).unwrap(),
            b"[0,1]".to_vec(),
        ),
        (
            "header-worker-kv",
            "starts worker \"kv\" (Req = u32, Resp = u64) in MessagePack: flags = 1 (worker), channel at fd 3, no argument",
            TypedHeader::new(
                Codec::MessagePack,
                fingerprint_of("kv", "u32", "u64", Codec::MessagePack),
                3,
                vec![],
            )
            .unwrap()
            .with_worker(true),
            vec![],
        ),
        (
            "header-memfd-digest",
            "digest(vec![0u8; 64 << 20]) in MessagePack, the argument (dd 04 00 00 00, then 64 MiB of 00: 67108869 bytes) in a sealed memfd at fd 4; flags = 2 (ARG_MEMFD), channel at fd 3",
            TypedHeader::new(
                Codec::MessagePack,
                fingerprint_of("digest", "alloc::vec::Vec<u8>", "(u64, u64)", Codec::MessagePack),
                3,
                vec![],
            )
            .unwrap()
            .with_memfd_arg(MemfdArg::new(4, (64 << 20) + 5)),
            vec![],
        ),
        (
            "header-memfd-fds",
            "an argument with two Fds placed at fds 4 and 5, its bytes in a memfd at fd 6; channel at fd 3",
            TypedHeader::new(Codec::Json, 0x1122_3344_5566_7788, 3, vec![4, 5])
                .unwrap()
                .with_memfd_arg(MemfdArg::new(6, 300_000)),
            vec![],
        ),
    ]
}

fn invalid_headers() -> Vec<(&'static str, Vec<u8>, HeaderError)> {
    let good = valid_headers().remove(0);
    let bytes = good.2.encode(&good.3).unwrap();
    let with = |i: usize, b: u8| {
        let mut v = bytes.clone();
        v[i] = b;
        v
    };
    let mut worker_arg = bytes.clone();
    worker_arg[6] = 1;
    let mut too_many = bytes.clone();
    too_many[20..24].copy_from_slice(&256u32.to_le_bytes());
    let memfd = valid_headers().remove(5);
    let memfd = memfd.2.encode(&memfd.3).unwrap();
    let memfd_with = |i: usize, b: &[u8]| {
        let mut v = memfd.clone();
        v[i..i + b.len()].copy_from_slice(b);
        v
    };
    vec![
        (
            "header-short",
            bytes[..31].to_vec(),
            HeaderError::TooShort(31),
        ),
        ("header-bad-magic", with(0, b'X'), HeaderError::BadMagic),
        ("header-version-2", with(4, 2), HeaderError::Version(2)),
        ("header-codec-0", with(5, 0), HeaderError::Codec(0)),
        ("header-flags", with(6, 4), HeaderError::Reserved),
        ("header-flags-high", with(7, 0x80), HeaderError::Reserved),
        (
            "header-worker-with-arg",
            worker_arg,
            HeaderError::Argument { offset: 32, len: 7 },
        ),
        ("header-256-fds", too_many, HeaderError::TooManyFds(256)),
        (
            "header-memfd-inline-arg",
            with(6, 2),
            HeaderError::Argument { offset: 32, len: 7 },
        ),
        (
            "header-memfd-worker",
            memfd_with(6, &[3]),
            HeaderError::Argument {
                offset: 40,
                len: 16,
            },
        ),
        (
            "header-memfd-reserved",
            memfd_with(44, &[1]),
            HeaderError::Reserved,
        ),
        (
            "header-memfd-target-channel",
            memfd_with(40, &[3]),
            HeaderError::MemfdTarget(3),
        ),
        (
            "header-memfd-target-fd",
            memfd_with(40, &[5]),
            HeaderError::MemfdTarget(5),
        ),
        (
            "header-memfd-len-over",
            memfd_with(48, &(MAX_MEMFD_ARG_LEN + 1).to_le_bytes()),
            HeaderError::MemfdLen(MAX_MEMFD_ARG_LEN + 1),
        ),
        (
            "header-arg-len",
            with(28, 8),
            HeaderError::Argument { offset: 32, len: 8 },
        ),
        (
            "header-arg-offset",
            with(24, 33),
            HeaderError::Argument { offset: 33, len: 7 },
        ),
    ]
}

fn valid_frames() -> Vec<(&'static str, ResultFrame)> {
    vec![
        ("frame-accepted", ResultFrame::Accepted),
        ("frame-chunk", ResultFrame::Chunk(vec![0x92, 0xcd])),
        (
            "frame-value",
            ResultFrame::Value {
                nfds: 0,
                bytes: vec![0xce, 0x00, 0x07, 0x53, 0x00],
            },
        ),
        (
            "frame-value-2-fds",
            ResultFrame::Value {
                nfds: 2,
                bytes: b"[0,1]".to_vec(),
            },
        ),
        ("frame-error", ResultFrame::Error("cannot halve 3x4".into())),
        (
            "frame-panic",
            ResultFrame::Panic {
                message: "typed panic 7".into(),
                location: "src/main.rs:12:5".into(),
            },
        ),
        (
            "frame-mismatch",
            ResultFrame::Mismatch {
                fingerprint: 0x0102_0304_0506_0708,
                detail: "entry \"area\" takes (u32, u32) and gives u64 (msgpack)".into(),
            },
        ),
        (
            "frame-request",
            ResultFrame::Request {
                nfds: 0,
                bytes: vec![0x07],
            },
        ),
        (
            "frame-request-1-fd",
            ResultFrame::Request {
                nfds: 1,
                bytes: b"0".to_vec(),
            },
        ),
    ]
}

fn invalid_frames() -> Vec<(&'static str, Vec<u8>, FrameError)> {
    vec![
        ("frame-empty", vec![], FrameError::Truncated),
        ("frame-unknown-tag", vec![8], FrameError::UnknownTag(8)),
        ("frame-request-short", vec![7, 0, 1], FrameError::Truncated),
        ("frame-accepted-trailing", vec![1, 0], FrameError::Trailing),
        ("frame-value-short", vec![3, 0], FrameError::Truncated),
        (
            "frame-value-reserved",
            vec![3, 1, 0, 0],
            FrameError::Trailing,
        ),
        ("frame-error-not-utf8", vec![4, 0xff], FrameError::Text),
        (
            "frame-panic-len-past-end",
            vec![5, 9, 0, 0, 0, b'x'],
            FrameError::Truncated,
        ),
        ("frame-mismatch-short", vec![6, 1, 2], FrameError::Truncated),
    ]
}

fn fingerprints() -> Vec<(&'static str, &'static str, &'static str, Codec)> {
    vec![
        ("area", "(u32, u32)", "u64", Codec::MessagePack),
        ("area", "(u32, u32)", "u64", Codec::Json),
        ("", "", "", Codec::MessagePack),
    ]
}

fn build() -> Value {
    let headers: Vec<Value> = valid_headers()
        .iter()
        .map(|(name, desc, h, arg)| json!({"name": name, "description": desc, "hex": hex(&h.encode(arg).unwrap()), "decoded": header_json(h, arg)}))
        .collect();
    let bad_headers: Vec<Value> = invalid_headers()
        .iter()
        .map(|(name, b, e)| json!({"name": name, "hex": hex(b), "error": format!("{e:?}")}))
        .collect();
    let frames: Vec<Value> = valid_frames()
        .iter()
        .map(|(name, f)| json!({"name": name, "hex": hex(&f.encode()), "decoded": frame_json(f)}))
        .collect();
    let bad_frames: Vec<Value> = invalid_frames()
        .iter()
        .map(|(name, b, e)| json!({"name": name, "hex": hex(b), "error": format!("{e:?}")}))
        .collect();
    let fps: Vec<Value> = fingerprints()
        .iter()
        .map(|(n, a, r, c)| json!({"entry": n, "arg_type": a, "result_type": r, "codec": c.name(), "fingerprint": format!("{:016x}", fingerprint_of(n, a, r, *c))}))
        .collect();
    json!({
        "typed_version": TYPED_VERSION,
        "headers": headers,
        "invalid_headers": bad_headers,
        "frames": frames,
        "invalid_frames": bad_frames,
        "fingerprints": fps,
    })
}

#[test]
fn the_file_matches_the_code_and_decodes() {
    let path = spec_dir().join("vectors/typed.json");
    let built = build();
    if regen() {
        std::fs::write(&path, serde_json::to_string_pretty(&built).unwrap() + "\n").unwrap();
    }
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        file, built,
        "typed.json differs from the code (FORKSERVER_REGEN_VECTORS=1)"
    );
    // The arguments are what the codecs make of `(800u32, 600u32)`.
    for (codec, i) in [(Codec::MessagePack, 0), (Codec::Json, 1)] {
        let (bytes, _) = encode(codec, &(800u32, 600u32)).unwrap();
        assert_eq!(bytes, valid_headers()[i].3, "{codec:?}");
    }
    // And the file's bytes decode to its decoded forms, as another implementation would check.
    for v in file["headers"].as_array().unwrap() {
        let bytes = unhex(v["hex"].as_str().unwrap());
        let (h, arg) = TypedHeader::decode(&bytes).unwrap();
        assert_eq!(header_json(&h, arg), v["decoded"], "{}", v["name"]);
    }
    for (v, (_, _, e)) in file["invalid_headers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(invalid_headers())
    {
        let bytes = unhex(v["hex"].as_str().unwrap());
        assert_eq!(TypedHeader::decode(&bytes).unwrap_err(), e, "{}", v["name"]);
    }
    for v in file["frames"].as_array().unwrap() {
        let f = ResultFrame::decode(&unhex(v["hex"].as_str().unwrap())).unwrap();
        assert_eq!(frame_json(&f), v["decoded"], "{}", v["name"]);
    }
    for (v, (_, _, e)) in file["invalid_frames"]
        .as_array()
        .unwrap()
        .iter()
        .zip(invalid_frames())
    {
        let bytes = unhex(v["hex"].as_str().unwrap());
        assert_eq!(ResultFrame::decode(&bytes).unwrap_err(), e, "{}", v["name"]);
    }
}

/// The `typed` fuzz target's seeds: one per vector's bytes.
#[test]
fn fuzz_seeds_follow_the_vectors() {
    let dir = spec_dir().join("../fuzz/corpus/typed");
    let built = build();
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    for list in ["headers", "invalid_headers", "frames", "invalid_frames"] {
        for v in built[list].as_array().unwrap() {
            let bytes = unhex(v["hex"].as_str().unwrap());
            seeds.push((format!("seed-{}", v["name"].as_str().unwrap()), bytes));
        }
    }
    if regen() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in &seeds {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    for (name, bytes) in &seeds {
        let got = std::fs::read(dir.join(name)).unwrap_or_default();
        assert!(
            &got == bytes,
            "{name}: missing or stale (FORKSERVER_REGEN_VECTORS=1 rewrites it)"
        );
    }
}

/// The `typed` fuzz target's oracle holds on every vector and on every one-byte change of
/// the memfd headers (§11.8), so the fuzzer starts from inputs that reach the `ARG_MEMFD`
/// paths, valid and invalid.
#[test]
fn the_fuzz_oracle_holds_around_the_memfd_headers() {
    let built = build();
    for list in ["headers", "invalid_headers", "frames", "invalid_frames"] {
        for v in built[list].as_array().unwrap() {
            let bytes = unhex(v["hex"].as_str().unwrap());
            forkserver_protocol::fuzzing::typed_roundtrip(&bytes);
            if v["name"].as_str().unwrap().starts_with("header-memfd") {
                for i in 0..bytes.len() {
                    for b in [0u8, 1, 2, 3, 4, 0x40, 0xff] {
                        let mut m = bytes.clone();
                        m[i] = b;
                        forkserver_protocol::fuzzing::typed_roundtrip(&m);
                    }
                }
            }
        }
    }
}

proptest::proptest! {
    /// Any header round-trips, and every strict prefix of its payload is refused.
    #[test]
    fn headers_round_trip_and_prefixes_fail(
        json in proptest::bool::ANY,
        fp in proptest::num::u64::ANY,
        channel in proptest::num::u32::ANY,
        targets in proptest::collection::vec(proptest::num::u32::ANY, 0..=MAX_ARG_FDS),
        arg in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        memfd_len in proptest::option::of(0..=MAX_MEMFD_ARG_LEN),
    ) {
        let codec = if json { Codec::Json } else { Codec::MessagePack };
        // A memfd reference at a target none of the others takes, with no inline argument.
        let free = (0u32..).find(|t| *t != channel && !targets.contains(t)).unwrap();
        let memfd = memfd_len.and_then(|len| MemfdArg::new(free, len));
        let arg = if memfd.is_some() { Vec::new() } else { arg };
        let h = TypedHeader::new(codec, fp, channel, targets).unwrap().with_memfd_arg(memfd);
        let bytes = h.encode(&arg).unwrap();
        let (back, got) = TypedHeader::decode(&bytes).unwrap();
        proptest::prop_assert_eq!(&back, &h);
        proptest::prop_assert_eq!(got, &arg[..]);
        for n in [0, bytes.len() / 2, bytes.len().saturating_sub(1)] {
            if n < bytes.len() {
                proptest::prop_assert!(TypedHeader::decode(&bytes[..n]).is_err());
            }
        }
    }

    /// Any frame round-trips; text is cut at a character boundary within the cap.
    #[test]
    fn frames_round_trip(text in ".{0,40}", bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64), n in 0u16..=253) {
        for f in [
            ResultFrame::Chunk(bytes.clone()),
            ResultFrame::Value { nfds: n, bytes: bytes.clone() },
            ResultFrame::Error(text.clone()),
            ResultFrame::Panic { message: text.clone(), location: text.clone() },
            ResultFrame::Mismatch { fingerprint: u64::from(n), detail: text.clone() },
            ResultFrame::Request { nfds: n, bytes: bytes.clone() },
        ] {
            proptest::prop_assert_eq!(ResultFrame::decode(&f.encode()), Ok(f));
        }
        let long = text.repeat(MAX_TEXT_LEN / text.len().max(1) + 1) + "é";
        let cut = cut_text(&long);
        proptest::prop_assert!(cut.len() <= MAX_TEXT_LEN && long.starts_with(cut));
    }
}
