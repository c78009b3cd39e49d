//! The server's counters for `Metrics` (PROTOCOL.md §5.16, rev 0.6): one [`Metrics`] value,
//! owned by the event loop, moved only through the methods below (one call at each place
//! where something happens), read once per `MetricsRequest` by [`Metrics::snapshot`].

use std::time::Instant;

use forkserver_protocol::ErrorCode;

use crate::spawn::{Failure, StageFamily};

/// What a child's request ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum JobKind {
    Exec,
    Entry,
}

/// Why a connection or request was refused before any child existed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The connection limit, the handshake quota, or out of fds (`ResourceExhausted`).
    Quota,
    /// The peer's credentials (`PermissionDenied`, §9.3).
    Peer,
    /// The child limit (`--max-children`).
    MaxChildren,
}

/// Why the server killed a child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kill {
    Deadline,
    Disconnect,
}

/// The counters since the server started.
#[derive(Debug)]
pub(crate) struct Metrics {
    started: Instant,
    m: forkserver_protocol::Metrics,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Self {
            started: Instant::now(),
            m: forkserver_protocol::Metrics::default(),
        }
    }

    /// The child of a `kind` request ran its job (`failure` is `None`) or reported `failure`,
    /// its final report: an exec failure, or a setup failure counted by its stage's family.
    pub(crate) fn spawn_result(&mut self, kind: JobKind, failure: Option<&Failure>) {
        let family = failure.and_then(|f| f.stage().family());
        let exec_failed = failure.is_some() && family.is_none();
        let m = &mut self.m;
        if let Some(family) = family {
            *match family {
                StageFamily::Setup => &mut m.setup_failed_setup,
                StageFamily::Session => &mut m.setup_failed_session,
                StageFamily::Limits => &mut m.setup_failed_limits,
                StageFamily::Credentials => &mut m.setup_failed_credentials,
                StageFamily::Sandbox => &mut m.setup_failed_sandbox,
                StageFamily::Chdir => &mut m.setup_failed_chdir,
            } += 1;
        }
        let counter = match (kind, failure.is_some(), exec_failed) {
            (JobKind::Exec, false, _) => &mut m.spawns_exec_ok,
            (JobKind::Exec, true, true) => &mut m.spawns_exec_failed,
            (JobKind::Exec, true, false) => &mut m.spawns_exec_setup_failed,
            (JobKind::Entry, false, _) => &mut m.spawns_entry_ok,
            (JobKind::Entry, true, _) => &mut m.spawns_entry_setup_failed,
        };
        *counter += 1;
    }

    pub(crate) fn killed(&mut self, why: Kill) {
        match why {
            Kill::Deadline => self.m.kills_deadline += 1,
            Kill::Disconnect => self.m.kills_disconnect += 1,
        }
    }

    pub(crate) fn refused(&mut self, why: Refusal) {
        match why {
            Refusal::Quota => self.m.refused_quota += 1,
            Refusal::Peer => self.m.refused_peer += 1,
            Refusal::MaxChildren => self.m.refused_max_children += 1,
        }
    }

    /// A connection's final error went out: an `AuthFailed` one is counted.
    pub(crate) fn closed_with(&mut self, code: ErrorCode) {
        if code == ErrorCode::AuthFailed {
            self.m.auth_failures += 1;
        }
    }

    /// A child was reaped that no request waited for.
    pub(crate) fn orphan_reaped(&mut self) {
        self.m.orphans_reaped += 1;
    }

    /// The figures now, with the pool's `size` (its target) and `idle` children.
    pub(crate) fn snapshot(
        &self,
        pool_size: usize,
        pool_idle: usize,
    ) -> forkserver_protocol::Metrics {
        forkserver_protocol::Metrics {
            uptime_s: self.started.elapsed().as_secs(),
            pool_size: pool_size as u64,
            pool_idle: pool_idle as u64,
            ..self.m
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spawn::{failure_reply, Stage};
    use forkserver_protocol::Message;

    #[test]
    fn each_event_moves_its_counter() {
        let mut m = Metrics::new();
        let failure = |stage| failure_reply(&[u8::from(stage), 1, 0, 0, 0], None);
        m.spawn_result(JobKind::Exec, None);
        m.spawn_result(JobKind::Exec, Some(&failure(Stage::Exec)));
        m.spawn_result(JobKind::Exec, Some(&failure(Stage::Uid)));
        m.spawn_result(JobKind::Entry, None);
        m.spawn_result(JobKind::Entry, Some(&failure(Stage::Chdir)));
        m.killed(Kill::Deadline);
        m.refused(Refusal::Peer);
        m.closed_with(ErrorCode::AuthFailed);
        m.closed_with(ErrorCode::Timeout);
        m.orphan_reaped();
        let s = m.snapshot(4, 3);
        let f = s.fields();
        assert!(f[1..6].iter().all(|(_, v)| *v == 1), "{f:?}");
        assert_eq!((s.kills_deadline, s.kills_disconnect), (1, 0));
        assert_eq!((s.refused_peer, s.refused_quota), (1, 0));
        assert_eq!((s.auth_failures, s.orphans_reaped), (1, 1));
        assert_eq!((s.pool_size, s.pool_idle), (4, 3));
        assert_eq!((s.setup_failed_credentials, s.setup_failed_chdir), (1, 1));
        assert_eq!(s.setup_failed_setup + s.setup_failed_limits, 0);
    }

    #[test]
    fn setup_failures_by_stage_add_up_to_the_setup_failures() {
        let mut m = Metrics::new();
        // Every stage a setup failure can name (not `Exec`: an `ExecFailed`), one limit.
        let stages = Stage::FIXED
            .into_iter()
            .filter(|&s| s != Stage::Exec)
            .chain([Stage::Rlimit(3)]);
        for (i, stage) in stages.enumerate() {
            let kind = [JobKind::Exec, JobKind::Entry][i % 2];
            m.spawn_result(
                kind,
                Some(&failure_reply(&[u8::from(stage), 1, 0, 0, 0], None)),
            );
        }
        m.spawn_result(JobKind::Exec, Some(&Failure::setup(Message::Signaled)));
        let s = m.snapshot(0, 0);
        let by_stage: u64 = s
            .fields()
            .iter()
            .filter(|(name, _)| name.starts_with("setup_failed_"))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(by_stage, 13);
        assert_eq!(s.spawns_exec_setup_failed + s.spawns_entry_setup_failed, 13);
        assert_eq!(s.spawns_exec_failed, 0);
        assert_eq!(
            (
                s.setup_failed_credentials,
                s.setup_failed_limits,
                s.setup_failed_setup,
                s.setup_failed_sandbox,
                s.setup_failed_session,
                s.setup_failed_chdir,
            ),
            (3, 3, 2, 3, 1, 1)
        );
    }
}
