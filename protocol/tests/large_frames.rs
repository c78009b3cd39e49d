//! A long frame over a real socketpair: read in growing steps (fewer `recvmsg` calls than
//! 16 KiB at a time), yet never asking for more than the bytes of it already received, nor
//! past the frame, nor more than the narrowed limits allow before the handshake.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use forkserver_protocol::*;

fn pair() -> (UnixStream, UnixStream) {
    UnixStream::pair().unwrap()
}

fn big_spawn(payload_len: usize) -> Message {
    Message::Spawn(
        Spawn::new(
            SpawnOptions::default(),
            FdMap::from_targets(Vec::new()).unwrap(),
            Job::Entry(EntryJob::new("x", vec![7; payload_len]).unwrap()),
        )
        .unwrap(),
    )
}

#[test]
fn a_long_frame_is_read_in_growing_steps_within_what_arrived() {
    let (a, b) = pair();
    let message = big_spawn(MAX_BODY_LEN - 64);
    let bytes = message.to_bytes();
    let frame_len = bytes.len();
    let writer = std::thread::spawn(move || {
        let mut a = a;
        a.write_all(&bytes).unwrap();
        a
    });
    let sock = OwnedFd::from(b);
    let mut reader = FrameReader::new();
    let (mut calls, mut largest) = (0, 0);
    let frame = loop {
        if let Some(f) = reader.next_frame().unwrap() {
            break f;
        }
        let before = reader.buffered();
        let n = reader.recv(sock.as_fd()).unwrap();
        calls += 1;
        let ask = reader.last_ask();
        assert!(n <= ask);
        // Never more than what has arrived of the frame (or one chunk), never past it.
        assert!(
            ask <= before.max(FrameReader::RECV_MAX),
            "asked {ask} with {before} held"
        );
        assert!(before + ask <= frame_len.max(before + FrameReader::RECV_MAX));
        largest = largest.max(ask);
    };
    assert_eq!(frame.message, message);
    assert!(largest > FrameReader::RECV_MAX, "the asks never grew");
    assert!(
        calls < frame_len / FrameReader::RECV_MAX,
        "{calls} recvmsg calls"
    );
    drop(writer.join().unwrap());
}

#[test]
fn a_frame_announced_long_but_not_sent_gets_no_larger_asks() {
    let (mut a, b) = pair();
    let bytes = big_spawn(MAX_BODY_LEN - 64).to_bytes();
    // The header and 20 KiB of a 1 MiB frame; the rest never comes.
    a.write_all(&bytes[..20 * 1024]).unwrap();
    let sock = OwnedFd::from(b);
    let mut reader = FrameReader::new();
    while reader.buffered() < 20 * 1024 {
        let before = reader.buffered();
        reader.recv(sock.as_fd()).unwrap();
        assert!(reader.last_ask() <= before.max(FrameReader::RECV_MAX));
        assert!(reader.next_frame().unwrap().is_none());
    }
    assert_eq!(reader.buffered(), 20 * 1024);
}

#[test]
fn before_authentication_each_read_stays_at_one_handshake_frame() {
    let (mut a, b) = pair();
    let bytes = Message::Hello(Hello::new(1, 3).unwrap()).to_bytes();
    a.write_all(&bytes).unwrap();
    let sock = OwnedFd::from(b);
    let mut reader = FrameReader::new();
    reader.set_limits(ReadLimits::PRE_AUTH);
    let frame = loop {
        if let Some(f) = reader.next_frame().unwrap() {
            break f;
        }
        reader.recv(sock.as_fd()).unwrap();
        assert_eq!(reader.last_ask(), MAX_HANDSHAKE_FRAME_LEN);
    };
    assert!(matches!(frame.message, Message::Hello(_)));
}

#[test]
fn a_large_payload_sent_in_two_parts_arrives_whole_with_its_fds() {
    // MAX_FDS fds: the first sendmsg carries one byte and 253 of them (§4.3), the last the rest of the
    // head and the payload from its own buffer.
    let (a, b) = pair();
    let targets: Vec<u32> = (10..10 + MAX_FDS as u32).collect();
    let payload: Vec<u8> = (0..MAX_BODY_LEN - 4096).map(|i| (i % 251) as u8).collect();
    let message = Message::Spawn(
        Spawn::new(
            SpawnOptions::default(),
            FdMap::from_targets(targets.clone()).unwrap(),
            Job::Entry(EntryJob::new("x", payload).unwrap()),
        )
        .unwrap(),
    );
    let fds: Vec<OwnedFd> = targets
        .iter()
        .map(|_| OwnedFd::from(std::fs::File::open("/dev/null").unwrap()))
        .collect();
    let sent = message.clone();
    let writer = std::thread::spawn(move || {
        let a = OwnedFd::from(a);
        send_message(a.as_fd(), &sent, fds).unwrap();
        a
    });
    let sock = OwnedFd::from(b);
    let frame = FrameReader::new().read_frame(sock.as_fd()).unwrap();
    assert_eq!(frame.message, message);
    assert_eq!(frame.fds.len(), targets.len());
    drop(writer.join().unwrap());
}

#[test]
fn a_large_frame_and_the_next_one_in_one_write_both_arrive() {
    let (a, b) = pair();
    let big = big_spawn(MAX_BODY_LEN - 64);
    let small = Message::Hello(Hello::new(1, 3).unwrap());
    let mut bytes = big.to_bytes();
    bytes.extend_from_slice(&small.to_bytes());
    bytes.extend_from_slice(&big.to_bytes());
    let writer = std::thread::spawn(move || {
        let mut a = a;
        a.write_all(&bytes).unwrap();
        a
    });
    let sock = OwnedFd::from(b);
    let mut reader = FrameReader::new();
    for expected in [&big, &small, &big] {
        assert_eq!(&reader.read_frame(sock.as_fd()).unwrap().message, expected);
    }
    drop(writer.join().unwrap());
}
