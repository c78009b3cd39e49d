//! fds across a real socketpair: bundles of 0, 1, 253, 254 and 256 arrive as the same open
//! files, in order, close-on-exec, and nothing leaks on any path.

mod common;

use common::open_fds;
use forkserver_protocol::*;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::sys::stat::fstat;
use std::os::fd::{AsFd, OwnedFd};

/// fd counts are per process and tests run on threads: tests that count take this lock.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn pair() -> (OwnedFd, OwnedFd) {
    socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap()
}

/// `n` distinct open files: the read ends of pipes, each its own inode.
fn distinct_files(n: usize) -> Vec<OwnedFd> {
    let mut v = Vec::new();
    while v.len() < n {
        let (r, w) = nix::unistd::pipe().unwrap();
        v.push(r);
        if v.len() < n {
            v.push(w);
        }
    }
    v
}

fn identity(fd: impl AsFd) -> (u64, u64) {
    let st = fstat(fd.as_fd()).unwrap();
    (st.st_dev, st.st_ino)
}

fn spawn_with(n: usize) -> Message {
    let map = FdMap::from_targets((0..n as u32).map(|i| i + 10).collect()).unwrap();
    Message::Spawn(
        Spawn::new(
            SpawnOptions::default(),
            map,
            Job::Entry(EntryJob::new("x", b"payload".to_vec()).unwrap()),
        )
        .unwrap(),
    )
}

#[test]
fn bundles_arrive_as_the_same_files() {
    let _serial = serial();
    let before = open_fds();
    for n in [0usize, 1, 253, 254, 256] {
        let (a, b) = pair();
        let files = distinct_files(n);
        let ids: Vec<_> = files.iter().map(identity).collect();
        // Keep our originals open so the identities stay meaningful; send duplicates.
        let dups: Vec<OwnedFd> = files.iter().map(|f| f.try_clone().unwrap()).collect();
        let msg = spawn_with(n);
        // The sender runs in its own thread: a 256-fd frame takes two sendmsg calls.
        let sender = std::thread::spawn(move || {
            send_message(a.as_fd(), &msg, dups).unwrap();
            send_message(a.as_fd(), &Message::StatusRequest, vec![]).unwrap();
        });
        let mut reader = FrameReader::new();
        let frame = reader.read_frame(b.as_fd()).unwrap();
        sender.join().unwrap();
        assert_eq!(frame.message, spawn_with(n));
        assert_eq!(frame.fds.len(), n);
        for (i, fd) in frame.fds.iter().enumerate() {
            assert_eq!(identity(fd), ids[i], "fd {i} of {n}");
            let flags = FdFlag::from_bits_truncate(fcntl(fd.as_fd(), FcntlArg::F_GETFD).unwrap());
            assert!(
                flags.contains(FdFlag::FD_CLOEXEC),
                "received fds are close-on-exec"
            );
        }
        let next = reader.read_frame(b.as_fd()).unwrap();
        assert_eq!(next.message, Message::StatusRequest);
        assert!(next.fds.is_empty());
        drop((frame, next, files, reader, b));
        assert_eq!(open_fds(), before, "leak after {n} fds");
    }
}

#[test]
fn a_truncated_control_message_closes_what_arrived() {
    let _serial = serial();
    let before = open_fds();
    let (a, b) = pair();
    let msg = spawn_with(10);
    let fds = distinct_files(10);
    send_message(a.as_fd(), &msg, fds).unwrap();
    let mut reader = FrameReader::with_fd_capacity(4);
    let err = reader.recv(b.as_fd()).unwrap_err();
    assert_eq!(err, TransportError::ControlTruncated);
    assert_eq!(reader.pending_fds(), 0);
    drop((a, b, reader));
    assert_eq!(open_fds(), before, "the 4 fds that fit were closed");
}

#[test]
fn mismatched_counts_close_every_fd() {
    let _serial = serial();
    let before = open_fds();
    let (a, b) = pair();
    // The header says 3; only 2 travel.
    let bytes = spawn_with(3).to_bytes();
    OutFrame::from_raw_parts(bytes, distinct_files(2))
        .send(a.as_fd())
        .unwrap();
    let mut reader = FrameReader::new();
    let err = reader.read_frame(b.as_fd()).unwrap_err();
    assert_eq!(
        err,
        TransportError::FdMismatch {
            expected: 3,
            received: 2
        }
    );
    assert_eq!(reader.pending_fds(), 0);
    drop((a, b, reader));
    assert_eq!(open_fds(), before);
}

#[test]
fn excess_fds_are_refused_before_the_frame_completes() {
    let _serial = serial();
    let before = open_fds();
    let (a, b) = pair();
    // The first byte of a 3-fd frame arrives with 5 fds: refused as soon as the header is in.
    let bytes = spawn_with(3).to_bytes();
    OutFrame::from_raw_parts(bytes[..8].to_vec(), distinct_files(5))
        .send(a.as_fd())
        .unwrap();
    let mut reader = FrameReader::new();
    reader.recv(b.as_fd()).unwrap();
    assert_eq!(
        reader.next_frame().unwrap_err(),
        TransportError::FdMismatch {
            expected: 3,
            received: 5
        }
    );
    drop((a, b, reader));
    assert_eq!(open_fds(), before);
}

#[test]
fn a_peer_closing_mid_frame_is_reported() {
    let _serial = serial();
    let (a, b) = pair();
    let bytes = Message::Hello(Hello::current()).to_bytes();
    OutFrame::from_raw_parts(bytes[..5].to_vec(), vec![])
        .send(a.as_fd())
        .unwrap();
    drop(a);
    let mut reader = FrameReader::new();
    assert_eq!(
        reader.read_frame(b.as_fd()).unwrap_err(),
        TransportError::ClosedMidFrame
    );
    let (a, b) = pair();
    drop(a);
    assert_eq!(
        FrameReader::new().read_frame(b.as_fd()).unwrap_err(),
        TransportError::Closed
    );
}

#[test]
fn sending_to_a_closed_peer_is_an_error_not_a_signal() {
    let _serial = serial();
    let (a, b) = pair();
    drop(b);
    let err = send_message(a.as_fd(), &Message::StatusRequest, vec![]).unwrap_err();
    assert_eq!(err, TransportError::Io(nix::errno::Errno::EPIPE));
}
