//! The steps of [`Server::bind`](super::Server::bind), each one system resource of the event
//! loop, in the order bind takes them: the process must be single-threaded; the listening
//! socket; the signals; the epoll set; the fd limit; the shared report socket.

use std::os::fd::OwnedFd;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use super::token::Token;
use crate::config::{Config, Listen};
use crate::error::{sys, ServerError};
use crate::listen::{bind_listener, BoundPath};

/// A process with more than one thread must not fork: the child would hold locks (the
/// allocator's, stdio's) that no thread of its own will ever release.
pub(super) fn check_single_threaded() -> Result<(), ServerError> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(1);
    match threads {
        0 | 1 => Ok(()),
        n => Err(ServerError::Threads(n)),
    }
}

/// The listening socket, taken out of `config`: the fd it names (`Listen::Fd`, inherited from
/// a launcher), or a socket bound now at its path (after the checks of PROTOCOL.md §9.3: with
/// other uids allowed the directory may be readable by them) or abstract name. The one step
/// that knows where the listener comes from.
pub(super) fn listener(config: &mut Config) -> Result<(OwnedFd, Option<BoundPath>), ServerError> {
    let listen = std::mem::replace(&mut config.listen, Listen::Abstract(Vec::new()));
    let shared = !config.allowed_uids.is_empty();
    bind_listener(listen, shared)
}

/// The server's signals: `SIGCHLD` and `SIGTERM` blocked and read from a signalfd, `SIGINT`
/// and `SIGPIPE` ignored. Returns the signalfd and the set of signals not at their default
/// disposition, bit `n - 1` for signal `n`: from here on the server changes no disposition,
/// so these are what its children reset.
pub(super) fn signals() -> Result<(SignalFd, u64), ServerError> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.add(Signal::SIGTERM);
    mask.thread_block().map_err(sys("sigprocmask"))?;
    crate::sys::ignore(Signal::SIGINT).map_err(sys("signal"))?;
    crate::sys::ignore(Signal::SIGPIPE).map_err(sys("signal"))?;
    let to_reset = crate::sys::non_default_signals().map_err(sys("rt_sigaction"))?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(sys("signalfd"))?;
    Ok((signals, to_reset))
}

/// The epoll set, with the listener, the signalfd and the owner's alive pipe (if any) in it.
/// Connections and report pipes join it as they come.
pub(super) fn event_loop(
    listener: &OwnedFd,
    signals: &SignalFd,
    alive: Option<&OwnedFd>,
) -> Result<Epoll, ServerError> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(sys("epoll_create"))?;
    let readable = |token: Token| EpollEvent::new(EpollFlags::EPOLLIN, token.to_u64());
    epoll
        .add(listener, readable(Token::Listener))
        .map_err(sys("epoll_ctl"))?;
    epoll
        .add(signals, readable(Token::Signals))
        .map_err(sys("epoll_ctl"))?;
    if let Some(a) = alive {
        epoll
            .add(a, readable(Token::Alive))
            .map_err(sys("epoll_ctl"))?;
    }
    Ok(epoll)
}

/// Raises the soft fd limit to the hard one (`quota::raise_fd_limit`), best effort: a server
/// that cannot still serves, within its limit.
pub(super) fn raise_fd_limit() {
    match crate::quota::raise_fd_limit() {
        Ok((soft, hard)) if soft < hard => {
            tracing::debug!("RLIMIT_NOFILE soft limit raised from {soft} to {hard}");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("RLIMIT_NOFILE: {e}"),
    }
}

/// The shared report socket, a datagram socketpair: the server reads the first end, the
/// children without a report pipe of their own write to the second (`spawn::ForkContext`).
pub(super) fn shared_report_socket() -> Result<(OwnedFd, OwnedFd), ServerError> {
    socketpair(
        AddressFamily::Unix,
        SockType::Datagram,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .map_err(sys("socketpair"))
}
