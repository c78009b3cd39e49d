//! The event loop's side of the timer table: how long to sleep, and what an expired timer
//! does.

use std::time::{Duration, Instant};

use forkserver_protocol::{ErrorCode, ErrorReply};
use nix::sys::epoll::EpollTimeout;

use super::Server;
use crate::metrics::Kill;
use crate::session::State;
use crate::timers::Timer;

impl Server {
    pub(super) fn next_timeout(&self) -> EpollTimeout {
        let mut next = self.timers.next();
        if let Some(idle) = self.config.idle_timeout {
            if self.is_idle() {
                let t = self.idle_since + idle;
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        match next {
            None => EpollTimeout::NONE,
            Some(t) => {
                // Round up to whole milliseconds so the timer has passed when we wake.
                let d = t.saturating_duration_since(Instant::now()) + Duration::from_micros(999);
                EpollTimeout::try_from(d).unwrap_or(EpollTimeout::MAX)
            }
        }
    }

    pub(super) fn expire(&mut self, now: Instant) {
        while let Some((key, timer)) = self.timers.pop_expired(now) {
            match timer {
                Timer::Shutdown => self.kill_remaining_children(),
                Timer::Status | Timer::Watchdog => {
                    let stats = self.service_stats();
                    if let Some(n) = self.config.notify.as_mut() {
                        n.on_timer(timer, now, stats, &mut self.timers);
                    }
                }
                Timer::Deadline { serial, pid } => {
                    if let Some(c) = self.children.get_mut(&pid) {
                        if c.deadline_expired(serial) {
                            self.metrics.killed(Kill::Deadline);
                            if let Some(grace) = c.grace() {
                                self.timers.set(now + grace, Timer::Grace { serial, pid });
                            }
                        }
                    }
                }
                Timer::Grace { serial, pid } => {
                    if let Some(c) = self.children.get_mut(&pid) {
                        c.grace_expired(serial);
                    }
                }
                Timer::Handshake(id) => {
                    if self.handshakes.contains(id) {
                        self.handshakes.finish(id);
                        let msg = "handshake not completed in time";
                        self.fail(id, ErrorReply::new(ErrorCode::Timeout, 0, msg));
                    }
                }
                Timer::PartialFrame(id) => {
                    // Only a frame the server is reading (see `Conn::partial_frame_expired`).
                    if self
                        .conns
                        .get_mut(&id)
                        .is_some_and(|c| c.partial_frame_expired(key))
                    {
                        let msg = "frame not completed in time";
                        self.fail(id, ErrorReply::new(ErrorCode::Timeout, 0, msg));
                    }
                }
                Timer::Closing(id) => {
                    if self
                        .conns
                        .get(&id)
                        .is_some_and(|c| c.state() == State::Closing)
                    {
                        tracing::debug!(conn = %id, "replies not read in time: dropped");
                        self.disconnect(id);
                    }
                }
            }
        }
        // Timers of reaped children and closed connections linger until their time.
        let (children, conns, handshakes) = (&self.children, &self.conns, &self.handshakes);
        self.timers.prune(
            children.len() + 2 * conns.len() + 1,
            |key, timer| match *timer {
                Timer::Deadline { serial, pid } | Timer::Grace { serial, pid } => {
                    children.get(&pid).is_some_and(|c| c.serial() == serial)
                }
                Timer::Handshake(id) => handshakes.contains(id),
                Timer::PartialFrame(id) => conns
                    .get(&id)
                    .is_some_and(|c| c.is_partial_frame_timer(key)),
                Timer::Closing(id) => conns.contains_key(&id),
                Timer::Shutdown | Timer::Status | Timer::Watchdog => true,
            },
        );
    }
}
