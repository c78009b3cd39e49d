//! The requests that need no child: `StatusRequest` and `MetricsRequest` (PROTOCOL.md §5.7,
//! §5.15), on a READY connection of the [`Engine`], which stays READY. Only the engine's
//! methods are used here.

use forkserver_protocol::{Message, Metrics, Status, Tag};

use crate::engine::Engine;
use crate::error::{Error, Result};

impl Engine {
    /// The server's status: its pid, live children, connections, total spawns, version.
    ///
    /// # Errors
    /// [`Error::Connect`], [`Error::Launch`] (relaunch failed), [`Error::ServerGone`],
    /// [`Error::Server`], [`Error::Protocol`], [`Error::AuthRequired`], [`Error::Io`].
    pub(crate) fn status(&self) -> Result<Status> {
        self.ask(Message::StatusRequest, "Status", |m| match m {
            Message::Status(s) => Some(s),
            _ => None,
        })
    }

    /// The server's counters (§5.16), refused locally for a server whose `Features` lack
    /// `MetricsRequest`.
    ///
    /// # Errors
    /// As [`Engine::status`], and [`Error::Unsupported`].
    pub(crate) fn metrics(&self) -> Result<Metrics> {
        let features = self.features()?;
        crate::features::check_request(features.as_ref(), Tag::MetricsRequest, "MetricsRequest")?;
        self.ask(Message::MetricsRequest, "Metrics", |m| match m {
            Message::Metrics(m) => Some(m),
            _ => None,
        })
    }

    /// Sends `request` (no fds) and reads its answer, which `pick` takes (`None`: not the one
    /// expected); READY before and after, so the connection can serve the next request.
    fn ask<T>(
        &self,
        request: Message,
        expected: &'static str,
        pick: fn(Message) -> Option<T>,
    ) -> Result<T> {
        let (conn, frame, ()) = self.exchange(|| Ok((Some((request.clone(), Vec::new())), ())))?;
        let tag = frame.message.tag();
        match frame.message {
            Message::Error(e) => Err(e.into()),
            m => match pick(m) {
                Some(answer) => {
                    self.put_idle(conn);
                    Ok(answer)
                }
                None => Err(Error::unexpected(tag, expected)),
            },
        }
    }
}
