//! The raw baseline of `pid_client_vs_raw`: a client written with the protocol crate alone, as
//! a newcomer would write one from the spec, that does per spawn exactly what the wire needs
//! and nothing else.
//!
//! Setup (not timed): connect, `Hello`, the HMAC exchange of PROTOCOL.md §9.2, and the `Spawn`
//! message built once. Per spawn: encode the `Spawn` (`KEEP_CONNECTION` set) into a buffer kept
//! between spawns, one `sendmsg` with the bundle's fds (borrowed: `SCM_RIGHTS` copies them, so
//! nothing is duplicated or closed), one `recvmsg` for the `Pid`, and then the `Exit` read
//! (usually a second `recvmsg`; it may have come with the `Pid`). No poll, no probe, no
//! allocation, no lock.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use forkserver_protocol::{
    auth, decode, send_message, Auth, AuthMethod, Decoded, EntryJob, FdMap, FrameReader, Hello,
    Job, Message, Spawn, SpawnOptions,
};
use nix::errno::Errno;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, MsgFlags, UnixAddr};

use crate::Result;

/// One kept, authenticated connection and the request it repeats.
#[derive(Debug)]
pub struct RawClient {
    sock: UnixStream,
    spawn: Message,
    /// The bundle's fds (owned by the caller), sent by number.
    fds: Vec<RawFd>,
    /// The encoded request, rewritten at each spawn.
    out: Vec<u8>,
    /// Received bytes not yet decoded are `inbuf[..len]`.
    inbuf: [u8; 512],
    len: usize,
}

impl RawClient {
    /// Connects to the server at `socket` (this harness's own launched server: its directory is
    /// private to this uid), does the handshake (authenticating with `key` if given) and
    /// prepares a `Spawn` of the entry point `entry` with `fds` at targets `0..fds.len()`.
    ///
    /// # Errors
    /// Any I/O or protocol failure of the handshake.
    pub fn connect(
        socket: &Path,
        key: Option<&[u8]>,
        entry: &str,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<Self> {
        let sock = UnixStream::connect(socket)?;
        let mut reader = FrameReader::new();
        send_message(sock.as_fd(), &Message::Hello(Hello::current()), Vec::new())?;
        let method = match reader.read_frame(sock.as_fd())?.message {
            Message::HelloOk(ok) => ok.auth(),
            other => return Err(format!("expected HelloOk, got {:?}", other.tag()).into()),
        };
        if let (AuthMethod::HmacSha256 { challenge }, Some(key)) = (method, key) {
            let ours = auth::random_challenge()?;
            let response = auth::client_response(key, &challenge);
            let request = Message::Auth(Auth {
                response,
                challenge: ours,
            });
            send_message(sock.as_fd(), &request, Vec::new())?;
            match reader.read_frame(sock.as_fd())?.message {
                Message::AuthOk(ok) if auth::verify_server(key, &ours, &ok.response) => {}
                other => return Err(format!("authentication failed: {:?}", other.tag()).into()),
            }
        }
        if reader.holds_partial_frame() {
            return Err("stray bytes after the handshake".into());
        }
        let options = SpawnOptions {
            keep_connection: true,
            ..SpawnOptions::default()
        };
        let targets = FdMap::from_targets((0..fds.len() as u32).collect())?;
        let job = Job::Entry(EntryJob::new(entry.to_owned(), Vec::new())?);
        let spawn = Message::Spawn(Spawn::new(options, targets, job)?);
        Ok(Self {
            sock,
            spawn,
            fds: fds.iter().map(AsRawFd::as_raw_fd).collect(),
            out: Vec::with_capacity(256),
            inbuf: [0; 512],
            len: 0,
        })
    }

    /// One spawn: the times from encoding the request to the `Pid` decoded and to the `Exit`
    /// decoded, and the exit code.
    ///
    /// # Errors
    /// Socket errors, or a reply other than `Pid` then `Exit`.
    pub fn spawn(&mut self) -> Result<(Duration, Duration, i32)> {
        let start = Instant::now();
        self.out.clear();
        self.spawn.encode(&mut self.out);
        let iov = [IoSlice::new(&self.out)];
        let cmsg = [ControlMessage::ScmRights(&self.fds)];
        let cmsgs: &[ControlMessage<'_>] = if self.fds.is_empty() { &[] } else { &cmsg };
        let sent = sendmsg::<UnixAddr>(
            self.sock.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        if sent != self.out.len() {
            return Err("short sendmsg".into());
        }
        let Message::Pid(_) = self.next()? else {
            return Err("expected Pid".into());
        };
        let to_pid = start.elapsed();
        match self.next()? {
            Message::Exit(exit) => Ok((to_pid, start.elapsed(), exit.code())),
            other => Err(format!("expected Exit, got {:?}", other.tag()).into()),
        }
    }

    /// The next frame: decoded from what is buffered, else after one more read (no fds are
    /// expected: `Pid` without a pidfd, `Exit`; any would be refused as `MSG_CTRUNC`).
    fn next(&mut self) -> Result<Message> {
        loop {
            if let Decoded::Frame { message, consumed } = decode(&self.inbuf[..self.len])? {
                self.inbuf.copy_within(consumed..self.len, 0);
                self.len -= consumed;
                return Ok(message);
            }
            let n = loop {
                let mut iov = [IoSliceMut::new(&mut self.inbuf[self.len..])];
                match recvmsg::<UnixAddr>(self.sock.as_raw_fd(), &mut iov, None, MsgFlags::empty())
                {
                    Err(Errno::EINTR) => continue,
                    other => break other?.bytes,
                }
            };
            if n == 0 {
                return Err("the server closed the connection".into());
            }
            self.len += n;
        }
    }
}
