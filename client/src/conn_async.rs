//! A connection on tokio's reactor (feature `tokio`): the same frames as [`Conn`]'s blocking
//! calls, sent and read in non-blocking steps, each `EAGAIN` an await on the reactor; and the
//! handshake and the connection attempt of `handshake.rs` driven that way. No call here
//! blocks the thread: `connect(2)` is tokio's, the socket's directory is checked with
//! `openat`/`fstat` on an `O_PATH` descriptor (no I/O that can wait), and the handshake is
//! bounded by [`HANDSHAKE_TIMEOUT`] on tokio's timer.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use forkserver_protocol::{Frame, Message, OutFrame};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::conn::{Conn, ConnectError};
use crate::error::{Error, Result};
use crate::handshake::{
    hello, on_auth_reply, on_hello_reply, timed_out, AfterHello, Failure, HANDSHAKE_TIMEOUT,
};

/// A connection registered with the reactor for one exchange, its socket non-blocking.
#[derive(Debug)]
pub(crate) struct Registered {
    /// Declared first, so dropped first: out of the reactor before `conn` closes the fd.
    io: AsyncFd<RawFd>,
    conn: Conn,
}

impl Registered {
    /// Registers `conn` with the current runtime's reactor.
    ///
    /// # Errors
    /// [`Error::Io`] if there is no reactor or the socket's mode cannot be set.
    pub(crate) fn new(mut conn: Conn) -> Result<Self> {
        conn.set_nonblocking(true)?;
        let fd = conn.as_fd().as_raw_fd();
        // SAFETY: `fd` is the socket `conn` owns; `conn` lives in this struct beside `io`, is
        // only given out by `into_conn` after `io` is dropped, and is declared after `io` so
        // that a drop of the struct deregisters before the fd is closed: the fd stays open,
        // and names the same file description, for the whole life of the `AsyncFd`.
        let io =
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE) }
                .map_err(|e| Error::Io(e.into()))?;
        Ok(Self { io, conn })
    }

    /// The connection, out of the reactor (its socket still non-blocking; the engine makes it
    /// block again when it keeps it).
    pub(crate) fn into_conn(self) -> Conn {
        let Self { io, conn } = self;
        drop(io);
        conn
    }

    /// The connection.
    pub(crate) fn conn(&self) -> &Conn {
        &self.conn
    }

    /// The connection, to note which server generation it reaches.
    pub(crate) fn conn_mut(&mut self) -> &mut Conn {
        &mut self.conn
    }

    /// Sends one frame, waiting on the reactor while the socket is full.
    ///
    /// # Errors
    /// As [`Conn::send`].
    pub(crate) async fn send(&mut self, message: &Message, fds: Vec<OwnedFd>) -> Result<()> {
        let mut out = OutFrame::new(message, fds).map_err(Error::from_transport)?;
        while !self.conn.send_step(&mut out)? {
            // Cleared after a step found the socket full; the next step runs after that, so
            // room made in between is not missed.
            self.io.writable().await?.clear_ready();
        }
        Ok(())
    }

    /// Reads the next frame, waiting on the reactor while nothing is there.
    ///
    /// # Errors
    /// As [`Conn::recv`].
    pub(crate) async fn recv(&mut self) -> Result<Frame> {
        loop {
            if let Some(frame) = self.conn.recv_step()? {
                return Ok(frame);
            }
            self.io.readable().await?.clear_ready();
        }
    }

    /// The handshake of [`crate::handshake::handshake`], awaited.
    async fn handshake(
        &mut self,
        key: Option<&[u8]>,
        request: Option<&Message>,
        fds: Vec<OwnedFd>,
    ) -> Result<()> {
        self.send(&hello(), Vec::new()).await?;
        if key.is_none() {
            // As the blocking handshake: a refused hello's reply is the better error.
            let sent = match request {
                Some(message) => self.send(message, fds).await,
                None => Ok(()),
            };
            on_hello_reply(self.recv().await?.message, None)?;
            return sent;
        }
        let reply = self.recv().await?.message;
        if let (AfterHello::Auth(auth, ours), Some(key)) = (on_hello_reply(reply, key)?, key) {
            self.send(&Message::Auth(auth), Vec::new()).await?;
            on_auth_reply(self.recv().await?.message, key, &ours)?;
        }
        match request {
            Some(message) => self.send(message, fds).await,
            None => Ok(()),
        }
    }
}

/// [`crate::handshake::attempt`] on the reactor: connects to the server at `path` (which must
/// run as `server_uid`), checked as §9.3 says before any byte is sent, and does the handshake
/// with `request` behind it. The connection stays registered, for the reply.
pub(crate) async fn attempt(
    path: &Path,
    server_uid: u32,
    key: Option<&[u8]>,
    request: Option<(Message, Vec<OwnedFd>)>,
) -> std::result::Result<Registered, Failure> {
    let (dir, name) = Conn::checked_dir(path, server_uid).map_err(Failure::of_connect)?;
    let io = |e| Failure::of_connect(ConnectError::Io(e));
    let sock = tokio::net::UnixStream::connect(dir.entry(&name))
        .await
        .map_err(io)?;
    drop(dir);
    let sock = sock.into_std().map_err(io)?;
    let conn = Conn::verified(sock, server_uid).map_err(Failure::of_connect)?;
    let mut conn = Registered::new(conn).map_err(Failure::Other)?;
    let (message, fds) = match request {
        Some((m, fds)) => (Some(m), fds),
        None => (None, Vec::new()),
    };
    let handshake = conn.handshake(key, message.as_ref(), fds);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(done) => done.map_err(Failure::of_handshake)?,
        Err(_elapsed) => return Err(Failure::Other(timed_out())),
    }
    Ok(conn)
}
