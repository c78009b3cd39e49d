//! New connections: accepting, the peer-uid check, the connection and handshake quotas
//! (closing idle kept connections or the oldest handshakes to make room), refusals.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use forkserver_protocol::{ErrorCode, ErrorReply, ReadLimits};
use nix::errno::Errno;
use nix::sys::epoll::{EpollEvent, EpollFlags};
use nix::sys::socket::{accept4, SockFlag};

use super::conn::{refuse, Conn};
use super::token::Token;
use super::Server;
use crate::ids::ConnId;
use crate::listen::peer_uid;
use crate::metrics::Refusal;
use crate::quota::open_reserve_fd;
use crate::timers::Timer;

impl Server {
    pub(super) fn accept_all(&mut self) {
        for _ in 0..16 {
            let Some(listener) = &self.listener else {
                return;
            };
            match accept4(listener, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK) {
                Ok(fd) => self.on_accept(fd),
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR | Errno::ECONNABORTED) => {}
                // Only a per-process limit: closing one of ours frees nothing system-wide.
                Err(e @ Errno::EMFILE) if self.evict_idle_connection() => {
                    tracing::debug!("accept: {e}; closed an idle connection to make room");
                }
                Err(e @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)) => {
                    tracing::warn!("accept: {e}");
                    self.refuse_one(e);
                    return;
                }
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    return;
                }
            }
        }
    }

    /// Out of fds: free the reserve, take the pending connection, tell it why, close it, and
    /// take the reserve back. Without this the listener would stay readable and spin.
    pub(super) fn refuse_one(&mut self, e: Errno) {
        self.reserve_fd = None;
        if let Some(listener) = &self.listener {
            if let Ok(fd) = accept4(listener, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK) {
                let msg = "server out of file descriptors";
                let reply = ErrorReply::new(ErrorCode::ResourceExhausted, e as i32, msg);
                refuse(fd.as_fd(), reply);
                self.metrics.refused(Refusal::Quota);
            }
        }
        self.reserve_fd = open_reserve_fd();
    }

    pub(super) fn on_accept(&mut self, fd: OwnedFd) {
        self.touch();
        let refuse = |fd: &OwnedFd, code: ErrorCode, msg: &str| {
            refuse(fd.as_fd(), ErrorReply::new(code, 0, msg));
        };
        let (peer, foreign) = match peer_uid(&fd) {
            Ok(uid) if uid == self.uid => (uid, false),
            Ok(uid) if self.config.allowed_uids.contains(&uid) => (uid, true),
            Ok(uid) => {
                tracing::warn!(
                    peer_uid = uid,
                    "refused a peer with a uid that is not allowed"
                );
                refuse(&fd, ErrorCode::PermissionDenied, "peer uid not allowed");
                self.metrics.refused(Refusal::Peer);
                return;
            }
            Err(e) => {
                tracing::warn!("SO_PEERCRED: {e}");
                return;
            }
        };
        if self.shutting_down {
            refuse(&fd, ErrorCode::ShuttingDown, "server is shutting down");
            return;
        }
        let conns = &self.conns;
        let silent = |id| conns.get(&id).is_some_and(Conn::is_silent);
        if let Some(old) = self.handshakes.make_room(silent) {
            self.evict_handshake(old);
        }
        if self.conns.len() >= self.config.max_connections && !self.evict_idle_connection() {
            refuse(&fd, ErrorCode::ResourceExhausted, "too many connections");
            self.metrics.refused(Refusal::Quota);
            return;
        }
        let id = self.next_conn;
        self.next_conn = id.next();
        let interest = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        if let Err(e) = self
            .epoll
            .add(&fd, EpollEvent::new(interest, Token::Conn(id).to_u64()))
        {
            tracing::warn!("epoll_ctl: {e}");
            return;
        }
        let now = Instant::now();
        self.handshakes.start(id);
        self.timers
            .set(now + self.config.handshake_timeout, Timer::Handshake(id));
        // §6.3, §9.3: small frames only before the handshake; no fds before authentication.
        let limits = match self.fork.key() {
            Some(_) => ReadLimits::PRE_AUTH,
            None => ReadLimits::HANDSHAKE,
        };
        tracing::debug!(conn = %id, peer_uid = peer, "accepted");
        self.conns
            .insert(id, Conn::new(fd, limits, interest, now, foreign));
    }

    /// Closes the connection that has been idle in READY the longest, if there is one, to make
    /// room for a new one: connections that clients keep for reuse (§6.6) must not lock others
    /// out. One whose client has sent something the server has not read yet is not idle. The
    /// closed connection gets `Error(ResourceExhausted)` first: a client that sent a request on
    /// it meanwhile reads that as its reply, and knows the request was not acted on (§6.6).
    /// Returns whether one was closed.
    pub(super) fn evict_idle_connection(&mut self) -> bool {
        let oldest = self
            .conns
            .iter()
            .filter(|(_, c)| c.is_idle() && !c.has_unread_input())
            .min_by_key(|(_, c)| c.ready_since())
            .map(|(id, _)| *id);
        let Some(id) = oldest else { return false };
        tracing::debug!(
            conn = %id,
            "closing the longest idle connection to make room"
        );
        if let Some(c) = self.conns.get(&id) {
            let msg = "idle connection closed to make room for another";
            refuse(
                c.fd(),
                ErrorReply::new(ErrorCode::ResourceExhausted, 0, msg),
            );
        }
        self.metrics.refused(Refusal::Quota);
        self.disconnect(id);
        true
    }

    /// The handshake quota is full: closes connection `id` (still in the handshake) to make
    /// room for a new one, after `Error(ResourceExhausted)` (§6.3).
    pub(super) fn evict_handshake(&mut self, id: ConnId) {
        tracing::debug!(conn = %id, "handshake quota full: closing an old handshake");
        if let Some(c) = self.conns.get(&id) {
            let msg = "too many connections in the handshake: the oldest are closed";
            refuse(
                c.fd(),
                ErrorReply::new(ErrorCode::ResourceExhausted, 0, msg),
            );
        }
        self.metrics.refused(Refusal::Quota);
        self.disconnect(id);
    }

    /// Before an idle exit: every connection (all idle in READY) gets `Error(ShuttingDown)`,
    /// so that a client whose request crossed the exit knows it was not acted on (§6.6).
    pub(super) fn say_goodbye(&mut self) {
        for c in self.conns.values() {
            let msg = "idle timeout: the server exits";
            refuse(c.fd(), ErrorReply::new(ErrorCode::ShuttingDown, 0, msg));
        }
    }
}
