//! Property tests of the codec. Messages come from the same `Arbitrary` generator the fuzzer
//! uses (fed by proptest's bytes), so both explore the same space.

use arbitrary::{Arbitrary, Unstructured};
use forkserver_protocol::fuzzing::decode_roundtrip;
use forkserver_protocol::*;
use proptest::prelude::*;

fn message() -> impl Strategy<Value = Message> {
    proptest::collection::vec(any::<u8>(), 0..2048).prop_filter_map("not enough entropy", |bytes| {
        Message::arbitrary(&mut Unstructured::new(&bytes)).ok()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn roundtrip(m in message()) {
        let bytes = m.to_bytes();
        prop_assert_eq!(bytes.len(), m.encoded_len());
        prop_assert_eq!(decode_exact(&bytes), Ok(m.clone()));
        match decode(&bytes).unwrap() {
            Decoded::Frame { message, consumed } => {
                prop_assert_eq!(consumed, bytes.len());
                prop_assert_eq!(message, m);
            }
            Decoded::Incomplete { .. } => prop_assert!(false, "whole frame reported incomplete"),
        }
    }

    #[test]
    fn every_strict_prefix_is_incomplete(m in message()) {
        let bytes = m.to_bytes();
        for cut in 0..bytes.len() {
            match decode(&bytes[..cut]) {
                Ok(Decoded::Incomplete { needed }) => {
                    prop_assert!(needed >= 1 && cut + needed <= bytes.len());
                }
                other => prop_assert!(false, "prefix of {} bytes: {:?}", cut, other),
            }
        }
    }

    #[test]
    fn concatenated_frames_decode_in_order(ms in proptest::collection::vec(message(), 1..6)) {
        let mut stream = Vec::new();
        for m in &ms {
            m.encode(&mut stream);
        }
        prop_assert_eq!(decode_roundtrip(&stream), ms.len());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_roundtrip(&bytes);
    }

    #[test]
    fn single_byte_corruption_is_rejected_or_canonical(m in message(), pos in any::<usize>(), x in 1u8..) {
        let mut bytes = m.to_bytes();
        let i = pos % bytes.len();
        bytes[i] ^= x;
        // Whatever decodes must re-encode to the same bytes (the encoding is canonical).
        decode_roundtrip(&bytes);
    }

    #[test]
    fn fd_maps_up_to_256_roundtrip(n in 0usize..=256, seed in any::<u32>()) {
        let targets: Vec<u32> = (0..n as u32).map(|i| (i.wrapping_mul(2654435761) ^ seed) % (MAX_TARGET_FD + 1)).collect();
        let mut unique = targets.clone();
        unique.sort_unstable();
        unique.dedup();
        match FdMap::from_targets(targets.clone()) {
            Ok(map) => {
                prop_assert_eq!(unique.len(), n);
                let spawn = Message::Spawn(Spawn::new(
                    SpawnOptions::default(),
                    map,
                    Job::Entry(EntryJob::new("e", vec![]).unwrap()),
                ).unwrap());
                let bytes = spawn.to_bytes();
                prop_assert_eq!(u16::from_le_bytes([bytes[2], bytes[3]]) as usize, n);
                prop_assert_eq!(decode_exact(&bytes), Ok(spawn));
            }
            Err(BuildError::DuplicateTarget(_)) => prop_assert!(unique.len() < n),
            Err(e) => prop_assert!(false, "{}", e),
        }
    }

    #[test]
    fn more_than_256_fds_refused_by_the_decoder(n in 257u16..) {
        let mut header = vec![Tag::Spawn as u8, 0];
        header.extend_from_slice(&n.to_le_bytes());
        header.extend_from_slice(&100u32.to_le_bytes());
        prop_assert_eq!(decode(&header), Err(DecodeError::TooManyFds(n)));
        // Refused from the nfds field on, before the body length is even read.
        prop_assert_eq!(decode(&header[..4]), Err(DecodeError::TooManyFds(n)));
    }
}

#[test]
fn the_257th_fd_is_refused_by_the_constructors() {
    let mut map = FdMap::new();
    for t in 0..256 {
        map.push(t).unwrap();
    }
    assert_eq!(map.push(256), Err(BuildError::TooManyFds(257)));
    assert_eq!(map.len(), 256);
    assert_eq!(
        FdMap::from_targets((0..257).collect()),
        Err(BuildError::TooManyFds(257))
    );
    let mut bundle = FdBundle::new();
    for t in 0..256 {
        bundle
            .push(t, std::fs::File::open("/dev/null").unwrap().into())
            .unwrap();
    }
    let extra = std::fs::File::open("/dev/null").unwrap().into();
    assert_eq!(bundle.push(300, extra), Err(BuildError::TooManyFds(257)));
    assert_eq!(bundle.len(), 256);
}

#[test]
fn duplicate_and_out_of_range_targets_are_refused() {
    assert_eq!(
        FdMap::from_targets(vec![1, 2, 1]),
        Err(BuildError::DuplicateTarget(1))
    );
    assert_eq!(
        FdMap::from_targets(vec![MAX_TARGET_FD + 1]),
        Err(BuildError::LimitExceeded {
            limit: Limit::TargetFd,
            value: MAX_TARGET_FD as usize + 1
        })
    );
}

#[test]
fn the_encoder_refuses_a_frame_whose_fds_disagree() {
    // The transport will not send 257 fds, nor a count that differs from the header.
    let m = Message::StatusRequest;
    let fd = std::fs::File::open("/dev/null").unwrap().into();
    assert!(matches!(
        OutFrame::new(&m, vec![fd]),
        Err(TransportError::FdMismatch {
            expected: 0,
            received: 1
        })
    ));
}

#[test]
fn every_tag_byte_is_known_or_refused() {
    for b in 0..=255u8 {
        match Tag::from_u8(b) {
            Some(t) => assert_eq!(t as u8, b),
            None => assert_eq!(Header::parse(&[b]), Err(DecodeError::UnknownTag(b))),
        }
    }
}

#[test]
fn every_error_code_value_is_known_or_refused() {
    for v in 0..=u16::MAX {
        match ErrorCode::from_u16(v) {
            Some(c) => assert_eq!(c as u16, v),
            None => assert!(!(1..=17).contains(&v)),
        }
    }
}

#[test]
fn oversized_requests_are_refused_by_the_constructor() {
    let mut job = ExecJob::new("/bin/true").unwrap();
    for _ in 0..9 {
        job.push_arg(vec![b'a'; MAX_ARG_LEN]).unwrap();
    }
    let e = Spawn::new(SpawnOptions::default(), FdMap::new(), Job::Exec(job)).unwrap_err();
    assert!(
        matches!(e, BuildError::LimitExceeded { limit: Limit::Body, value } if value > MAX_BODY_LEN),
        "{e:?}"
    );
}

#[test]
fn build_errors_name_the_cause_and_the_value() {
    let mut job = ExecJob::new("/bin/echo").unwrap();
    job.push_arg("ok").unwrap();
    let e = job.push_arg(b"a\0b".to_vec()).unwrap_err();
    assert_eq!(e.to_string(), r#"argument 2 holds a NUL byte: "a\x00b""#);
    let long = [vec![b'x'; 50], vec![0]].concat();
    let e = job.push_arg(long).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            r#"argument 2 holds a NUL byte: "{}...""#,
            "x".repeat(Snippet::CAP)
        )
    );
    let e = job.push_env("K", b"v\0".to_vec()).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"environment value 0 holds a NUL byte: "v\x00""#
    );
    let e = ExecJob::new(b"/bin/t\0rue".to_vec()).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"the program holds a NUL byte: "/bin/t\x00rue""#
    );
    let e = job.set_cwd(Some(b"/t\0p".to_vec())).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"the working directory holds a NUL byte: "/t\x00p""#
    );
    let e = job.push_arg(vec![b'a'; MAX_ARG_LEN + 1]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "limit exceeded: 131072 bytes in one argument or KEY=VALUE string, \
         at most 131071 bytes in one argument or KEY=VALUE string"
    );
    let e = Groups::new(&[7; MAX_GROUPS + 1]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "limit exceeded: 65 supplementary groups, at most 64 supplementary groups"
    );
    let e = FdMap::from_targets(vec![MAX_TARGET_FD + 1]).unwrap_err();
    assert!(e.to_string().contains("1048576"), "{e}");
    assert!(e.to_string().contains("1048575"), "{e}");
    let e = job.push_env_remove("A=B").unwrap_err();
    assert_eq!(e.to_string(), "invalid value in environment removal");
}

#[test]
fn rev05_options_are_checked_by_the_constructor() {
    let spawn = |options| {
        Spawn::new(
            options,
            FdMap::new(),
            Job::Entry(EntryJob::new("x", vec![]).unwrap()),
        )
    };
    for (pgid, ok) in [
        (0, false),
        (1, true),
        (MAX_PGID, true),
        (MAX_PGID + 1, false),
    ] {
        let o = SpawnOptions {
            session: Session::JoinProcessGroup(pgid),
            ..SpawnOptions::default()
        };
        assert_eq!(spawn(o).is_ok(), ok, "pgid {pgid}");
    }
    let o = SpawnOptions {
        credentials: Credentials {
            uid: Some(u32::MAX),
            ..Credentials::default()
        },
        ..SpawnOptions::default()
    };
    assert_eq!(spawn(o), Err(BuildError::InvalidValue(Field::Uid)));
    let o = SpawnOptions {
        credentials: Credentials {
            gid: Some(u32::MAX),
            ..Credentials::default()
        },
        ..SpawnOptions::default()
    };
    assert_eq!(spawn(o), Err(BuildError::InvalidValue(Field::Gid)));
    assert_eq!(
        Groups::new(&[1, u32::MAX]),
        Err(BuildError::InvalidValue(Field::Gid))
    );
    assert_eq!(Groups::new(&[1, 2]).unwrap().as_slice(), &[1, 2]);
}

#[test]
fn a_hostile_length_costs_nothing() {
    // A header announcing a 1 MiB body, followed by 3 bytes: incomplete, nothing allocated for
    // the body (decode only borrows the input).
    let mut b = vec![Tag::Spawn as u8, 0, 0, 0];
    b.extend_from_slice(&(MAX_BODY_LEN as u32).to_le_bytes());
    b.extend_from_slice(&[0, 0, 0]);
    assert_eq!(
        decode(&b),
        Ok(Decoded::Incomplete {
            needed: MAX_BODY_LEN - 3
        })
    );
}
