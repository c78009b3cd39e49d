//! The server's own end: signals (`SIGTERM` begins a bounded shutdown), the owner's alive
//! pipe.

use std::time::Instant;

use forkserver_protocol::{ErrorCode, ErrorReply};
use nix::errno::Errno;
use nix::sys::signal::Signal;

use super::Server;
use crate::error::{sys, ServerError};
use crate::ids::ConnId;
use crate::session::State;
use crate::spawn;
use crate::timers::Timer;

impl Server {
    pub(super) fn read_signals(&mut self) -> Result<(), ServerError> {
        let mut reap = false;
        // One signal per readiness event: the signalfd is level-triggered in epoll, so a
        // second pending signal (SIGTERM beside SIGCHLD) wakes the next turn, and the common
        // case spends no read on EAGAIN.
        loop {
            match self.signals.read_signal() {
                Ok(Some(info)) => match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => reap = true,
                    Ok(Signal::SIGTERM) => self.begin_shutdown(),
                    _ => {}
                },
                Ok(None) | Err(Errno::EAGAIN) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(sys("signalfd read")(e)),
            }
            break;
        }
        if reap {
            self.reap();
        }
        Ok(())
    }

    pub(super) fn begin_shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        tracing::info!("SIGTERM: no longer accepting; exiting once running children end");
        self.shutting_down = true;
        if let Some(n) = self.config.notify.as_mut() {
            n.stopping();
        }
        // A timeout too far away to be an Instant is no timeout.
        if let Some(t) = self
            .config
            .shutdown_timeout
            .and_then(|d| Instant::now().checked_add(d))
        {
            self.timers.set(t, Timer::Shutdown);
        }
        // Pooled children read the end of their socket and exit.
        for (pid, _) in self.pool.drain(..) {
            spawn::wake_pooled(pid);
        }
        if let Some(l) = self.listener.take() {
            let _ = self.epoll.delete(&l);
            // Dropping it removes the socket file: new clients find nobody.
            self.socket_path = None;
        }
        let idle: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                matches!(
                    c.state(),
                    State::AwaitHello | State::AwaitAuth(_) | State::Ready
                )
            })
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            self.fail(
                id,
                ErrorReply::new(ErrorCode::ShuttingDown, 0, "server is shutting down"),
            );
        }
    }

    pub(super) fn alive_closed(&mut self) -> bool {
        let Some(a) = &self.alive else { return false };
        let mut buf = [0u8; 64];
        match nix::unistd::read(a, &mut buf) {
            Ok(0) => true,
            Ok(_) | Err(Errno::EAGAIN | Errno::EINTR) => false,
            Err(_) => true,
        }
    }
}
