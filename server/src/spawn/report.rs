//! The child's failure report, one codec for both ends: the child writes which call of its
//! setup failed and the errno ([`report_and_exit`]); the server reads it back and turns it into
//! the `Error` the client gets ([`decode_shared`], [`failure_reply`]).
//!
//! On the child's own report pipe (or a pooled child's socket) a report is 5 bytes: the
//! [`Stage`] and the errno as an `i32`, little-endian; end-of-file with nothing written means
//! the exec succeeded. On the server's shared report socket (a datagram socket) it is one
//! datagram of [`SHARED_REPORT_LEN`] bytes: the spawn's serial (`u64`, little-endian), then the
//! same 5 bytes.

use std::os::fd::RawFd;

use forkserver_protocol::{ErrorCode, ErrorReply, Message, Rlimit, Session, RLIM_INFINITY};
use nix::errno::Errno;

use super::identity::Context;
use super::stage::{Stage, FAILED_STATUS};
use crate::ids::Serial;
use crate::sys;

/// Length of a report on a child's own pipe: stage, errno.
pub(crate) const REPORT_LEN: usize = 5;

/// Length of a datagram on the shared report socket: serial, stage, errno.
pub(crate) const SHARED_REPORT_LEN: usize = 13;

/// A child's failure before its job ran: the reply its client gets (`ExecFailed` or
/// `ChildSetupFailed`) and the stage that failed, which the metrics count (PROTOCOL.md §5.16).
#[derive(Debug)]
pub(crate) struct Failure {
    reply: Message,
    stage: Stage,
}

impl Failure {
    /// A failure the server saw itself (a pooled child that could not take its job): the
    /// [`Stage::Setup`] stage.
    pub(crate) fn setup(reply: Message) -> Self {
        Self {
            reply,
            stage: Stage::Setup,
        }
    }

    /// The reply for the client.
    pub(crate) fn reply(&self) -> &Message {
        &self.reply
    }

    /// The reply for the client, by value.
    pub(crate) fn into_reply(self) -> Message {
        self.reply
    }

    /// The stage that failed.
    pub(crate) fn stage(&self) -> Stage {
        self.stage
    }
}

/// Where a child reports a failure before its job runs.
#[derive(Clone, Copy)]
pub(crate) enum Report {
    /// Its own pipe (or a pooled child's socket): 5 bytes; EOF tells success.
    Own(RawFd),
    /// The server's shared report socket (a datagram socket), with the spawn's serial.
    Shared(RawFd, Serial),
}

impl Report {
    pub(crate) fn fd(self) -> RawFd {
        match self {
            Report::Own(fd) | Report::Shared(fd, _) => fd,
        }
    }

    pub(crate) fn with_fd(self, fd: RawFd) -> Report {
        match self {
            Report::Own(_) => Report::Own(fd),
            Report::Shared(_, serial) => Report::Shared(fd, serial),
        }
    }
}

/// The 5 bytes of a report.
pub(crate) fn encode(stage: Stage, errno: Errno) -> [u8; REPORT_LEN] {
    let mut r = [stage.into(), 0, 0, 0, 0];
    r[1..].copy_from_slice(&(errno as i32).to_le_bytes());
    r
}

/// A datagram of the shared report socket: the spawn's serial, then the report.
pub(crate) fn encode_shared(serial: Serial, stage: Stage, errno: Errno) -> [u8; SHARED_REPORT_LEN] {
    let mut d = [0u8; SHARED_REPORT_LEN];
    d[..8].copy_from_slice(&serial.to_le_bytes());
    d[8..].copy_from_slice(&encode(stage, errno));
    d
}

/// The serial and the report of a shared datagram.
pub(crate) fn decode_shared(d: &[u8; SHARED_REPORT_LEN]) -> (Serial, [u8; REPORT_LEN]) {
    let mut serial = [0u8; 8];
    serial.copy_from_slice(&d[..8]);
    let mut report = [0u8; REPORT_LEN];
    report.copy_from_slice(&d[8..]);
    (Serial::from_le_bytes(serial), report)
}

pub(crate) fn report_and_exit(report: Report, stage: Stage, errno: Errno) -> ! {
    // The report fd is open (the child's pipe, or its copy of the shared socket) until the
    // child exits.
    let fd = report.fd();
    match report {
        Report::Own(_) => {
            let _ = sys::write_fd(fd, &encode(stage, errno));
        }
        Report::Shared(_, serial) => {
            let msg = encode_shared(serial, stage, errno);
            // Never blocks: if the shared socket's buffer is full (a few hundred reports of
            // children not reaped yet) the report is lost, and the server reports status 127
            // as an exit instead of a setup failure.
            let _ = nix::sys::socket::send(fd, &msg, nix::sys::socket::MsgFlags::MSG_DONTWAIT);
        }
    }
    sys::exit_now(FAILED_STATUS)
}

/// The reply for a failure the server learnt of in memory (the `CLONE_VM` path's slot), as
/// [`failure_reply`] gives for the same report read from a pipe.
pub(crate) fn failure_of(stage: Stage, errno: Errno, ctx: &Context) -> Failure {
    failure_reply(&encode(stage, errno), Some(ctx))
}

/// The reply for a child's failure report (`stage`, `errno` as an `i32` LE), naming the call
/// that failed and, with the request's [`Context`], the value it was given: e.g.
/// `chdir("/no/such"): No such file or directory (ENOENT)`.
pub(crate) fn failure_reply(report: &[u8; 5], ctx: Option<&Context>) -> Failure {
    let stage = Stage::from_byte(report[0]);
    Failure {
        reply: reply_for(stage, report, ctx),
        stage,
    }
}

/// The `Error` for a failure report of `stage`.
fn reply_for(stage: Stage, report: &[u8; 5], ctx: Option<&Context>) -> Message {
    let errno = i32::from_le_bytes([report[1], report[2], report[3], report[4]]);
    let e = Errno::from_raw(errno);
    let why = format!("{} ({e:?})", e.desc());
    tracing::debug!(stage = ?stage, errno, "child failure report");
    let c = ctx.map(|c| &c.identity.credentials);
    let call = match stage {
        Stage::Exec => {
            return ErrorReply::new(ErrorCode::ExecFailed, errno, format!("execve: {why}")).into()
        }
        Stage::Setup => "child setup".to_owned(),
        Stage::Chdir => match ctx.and_then(|c| c.cwd.as_deref()) {
            Some(cwd) => format!("chdir(\"{}\")", cwd.escape_ascii()),
            None => "chdir".to_owned(),
        },
        Stage::Session => match ctx.map(|c| c.identity.session) {
            Some(Session::NewSession) => "setsid()".to_owned(),
            Some(Session::NewProcessGroup) => "setpgid(0, 0)".to_owned(),
            Some(Session::JoinProcessGroup(pgid)) => format!("setpgid(0, {pgid})"),
            _ => "setsid/setpgid".to_owned(),
        },
        Stage::Groups => match c.map(|c| c.groups) {
            Some(Some(g)) => format!("setgroups({:?})", g.as_slice()),
            Some(None) => "setgroups([]) (dropping the groups for setuid)".to_owned(),
            None => "setgroups".to_owned(),
        },
        Stage::Gid => match c.and_then(|c| c.gid) {
            Some(gid) => format!("setgid({gid})"),
            None => "setgid".to_owned(),
        },
        Stage::Uid => match c.and_then(|c| c.uid) {
            Some(uid) => format!("setuid({uid})"),
            None => "setuid".to_owned(),
        },
        Stage::Rlimit(i) => {
            let limits = ctx.and_then(|c| c.identity.controls.rlimits);
            match limits.and_then(|l| l.as_slice().get(usize::from(i)).copied()) {
                Some(l) => format!("setrlimit({})", rlimit_args(&l)),
                None => "setrlimit".to_owned(),
            }
        }
        Stage::Nice => match ctx.and_then(|c| c.identity.controls.nice) {
            Some(n) => format!("setpriority(PRIO_PROCESS, 0, {n})"),
            None => "setpriority".to_owned(),
        },
        Stage::OomScoreAdj => match ctx.and_then(|c| c.identity.controls.oom_score_adj) {
            Some(n) => format!("write(\"/proc/self/oom_score_adj\", \"{n}\")"),
            None => "write(/proc/self/oom_score_adj)".to_owned(),
        },
        Stage::NoNewPrivs => "prctl(PR_SET_NO_NEW_PRIVS, 1)".to_owned(),
    };
    ErrorReply::new(ErrorCode::ChildSetupFailed, errno, format!("{call}: {why}")).into()
}

/// `RLIMIT_NOFILE, 64, 1048576` (`RLIM_INFINITY` for no limit).
fn rlimit_args(l: &Rlimit) -> String {
    let value = |v: u64| match v {
        RLIM_INFINITY => "RLIM_INFINITY".to_owned(),
        v => v.to_string(),
    };
    let resource = Rlimit::resource_name(l.resource).unwrap_or_else(|| l.resource.to_string());
    format!("{resource}, {}, {}", value(l.soft), value(l.hard))
}

#[cfg(test)]
mod tests {
    use super::*;
    use forkserver_protocol::{Credentials, ExecJob, FdMap, Groups, Job, Spawn, SpawnOptions};

    #[test]
    fn reports_round_trip_on_both_channels() {
        let r = encode(Stage::Chdir, Errno::ENOENT);
        assert_eq!(r, [3, 2, 0, 0, 0]);
        let serial = Serial::nth(0x0102_0304_0506_0708);
        let d = encode_shared(serial, Stage::Uid, Errno::EPERM);
        assert_eq!(&d[..8], [8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(
            decode_shared(&d),
            (serial, encode(Stage::Uid, Errno::EPERM))
        );
        // An unknown stage byte is a setup failure, never a panic.
        let f = failure_reply(&[200, 1, 0, 0, 0], None);
        assert_eq!(f.stage(), Stage::Setup);
        let Message::Error(e) = f.reply() else {
            panic!()
        };
        assert_eq!(e.code(), ErrorCode::ChildSetupFailed);
        assert_eq!(failure_reply(&[3, 2, 0, 0, 0], None).stage(), Stage::Chdir);
    }

    fn report(stage: Stage, errno: Errno) -> [u8; 5] {
        encode(stage, errno)
    }

    fn message(f: Failure) -> (ErrorCode, i32, String) {
        let m = f.into_reply();
        let Message::Error(e) = m else {
            panic!("not an error: {m:?}")
        };
        (e.code(), e.errno(), e.message().to_owned())
    }

    fn context(options: SpawnOptions, cwd: Option<&[u8]>) -> Context {
        let mut job = ExecJob::new("/bin/true").unwrap();
        job.set_cwd(cwd.map(<[u8]>::to_vec)).unwrap();
        Context::of(&Spawn::new(options, FdMap::new(), Job::Exec(job)).unwrap())
    }

    #[test]
    fn a_failed_chdir_names_the_call_and_the_path() {
        let ctx = context(SpawnOptions::default(), Some(b"/no/such\xffdir"));
        let (code, errno, msg) = message(failure_reply(
            &report(Stage::Chdir, Errno::ENOENT),
            Some(&ctx),
        ));
        assert_eq!(code, ErrorCode::ChildSetupFailed);
        assert_eq!(errno, Errno::ENOENT as i32);
        assert_eq!(
            msg,
            r#"chdir("/no/such\xffdir"): No such file or directory (ENOENT)"#
        );
        let (_, _, msg) = message(failure_reply(&report(Stage::Chdir, Errno::ENOENT), None));
        assert_eq!(msg, "chdir: No such file or directory (ENOENT)");
    }

    #[test]
    fn failed_credentials_name_the_call_and_the_id() {
        let options = SpawnOptions {
            session: Session::JoinProcessGroup(4242),
            credentials: Credentials {
                uid: Some(1000),
                gid: Some(100),
                groups: Some(Groups::new(&[10, 20]).unwrap()),
            },
            ..SpawnOptions::default()
        };
        let ctx = context(options, None);
        let msg = |stage| message(failure_reply(&report(stage, Errno::EPERM), Some(&ctx))).2;
        assert_eq!(
            msg(Stage::Uid),
            "setuid(1000): Operation not permitted (EPERM)"
        );
        assert_eq!(
            msg(Stage::Gid),
            "setgid(100): Operation not permitted (EPERM)"
        );
        assert_eq!(
            msg(Stage::Groups),
            "setgroups([10, 20]): Operation not permitted (EPERM)"
        );
        assert_eq!(
            msg(Stage::Session),
            "setpgid(0, 4242): Operation not permitted (EPERM)"
        );
        let (code, _, msg) = message(failure_reply(&report(Stage::Exec, Errno::ENOENT), None));
        assert_eq!(code, ErrorCode::ExecFailed);
        assert_eq!(msg, "execve: No such file or directory (ENOENT)");
    }

    #[test]
    fn failed_controls_name_the_call_and_the_value() {
        use forkserver_protocol::Rlimits;
        let limits = [
            Rlimit {
                resource: 4,
                soft: 0,
                hard: 0,
            },
            Rlimit {
                resource: 7,
                soft: 64,
                hard: RLIM_INFINITY,
            },
        ];
        let options = SpawnOptions {
            rlimits: Some(Rlimits::new(&limits).unwrap()),
            nice: Some(-5),
            oom_score_adj: Some(-500),
            ..SpawnOptions::default()
        };
        let ctx = context(options, None);
        let msg = |stage, e| message(failure_reply(&report(stage, e), Some(&ctx))).2;
        assert_eq!(
            msg(Stage::Rlimit(1), Errno::EPERM),
            "setrlimit(RLIMIT_NOFILE, 64, RLIM_INFINITY): Operation not permitted (EPERM)"
        );
        assert_eq!(
            msg(Stage::Rlimit(0), Errno::EINVAL),
            "setrlimit(RLIMIT_CORE, 0, 0): Invalid argument (EINVAL)"
        );
        assert_eq!(
            msg(Stage::Nice, Errno::EACCES),
            "setpriority(PRIO_PROCESS, 0, -5): Permission denied (EACCES)"
        );
        assert_eq!(
            msg(Stage::OomScoreAdj, Errno::EACCES),
            r#"write("/proc/self/oom_score_adj", "-500"): Permission denied (EACCES)"#
        );
        assert_eq!(
            msg(Stage::NoNewPrivs, Errno::EINVAL),
            "prctl(PR_SET_NO_NEW_PRIVS, 1): Invalid argument (EINVAL)"
        );
        // A stage byte naming an entry the request does not have: the call alone.
        assert_eq!(
            msg(Stage::Rlimit(5), Errno::EPERM),
            "setrlimit: Operation not permitted (EPERM)"
        );
    }
}
