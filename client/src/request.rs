//! What [`crate::Command`] and [`crate::Call`] have in common: a [`Request`] gathers options,
//! stdio and extra fds; at `spawn` it becomes an [`FdBundle`] and a [`Spawn`] message, every
//! rule the wire imposes checked before a connection is opened.

use std::fs::File;
use std::num::NonZeroU64;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use forkserver_protocol::{
    spawn_flags, ErrorCode, FdBundle, Features, Frame, Groups, Job, Message, Rlimit, Rlimits,
    Spawn, SpawnOptions, MAX_FDS,
};

use crate::child::Child;
use crate::conn::Conn;
use crate::controls::SandboxFds;
use crate::engine::{Built, Engine};
use crate::error::{Error, Result};
use crate::features;
use crate::stdio::{Stdio, Stream};

/// The stdio of a child where none was set.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Defaults {
    /// Nothing: the server gives `/dev/null` ([`Call`]).
    None,
    /// This process's own fds 0-2 ([`Command::spawn`]).
    Inherit,
    /// stdin `/dev/null`, stdout and stderr piped ([`Command::output`]).
    Output,
}

/// What [`Command`] and [`Call`] have in common: options, stdio and extra fds.
#[derive(Debug, Default)]
pub(crate) struct Request {
    pub(crate) options: SpawnOptions,
    /// Explicit stdin, stdout, stderr.
    stdio: [Option<Stdio>; 3],
    /// Extra fds with their targets, in the order given.
    pub(crate) fds: Vec<(u32, OwnedFd)>,
    /// The OS error of a failed `fd_borrowed` duplication, reported by `spawn`.
    deferred_errno: Option<i32>,
    /// Supplementary groups (checked against `MAX_GROUPS` at spawn).
    pub(crate) groups: Option<Vec<u32>>,
    /// Resource limits, in order (checked against `MAX_RLIMITS` and the wire rules at spawn).
    pub(crate) rlimits: Vec<Rlimit>,
    /// The seccomp program and landlock ruleset, sent after every other fd.
    pub(crate) sandbox: SandboxFds,
}

impl Request {
    pub(crate) fn set_stdio(&mut self, stream: Stream, stdio: Stdio) {
        self.stdio[stream.target() as usize] = Some(stdio);
    }

    pub(crate) fn fd_borrowed(&mut self, target: u32, fd: BorrowedFd<'_>) {
        match fd.try_clone_to_owned() {
            Ok(own) => self.fds.push((target, own)),
            Err(e) => {
                self.deferred_errno
                    .get_or_insert(e.raw_os_error().unwrap_or(nix::libc::EBADF));
            }
        }
    }

    /// The default stdio for `stream` when none was set, unless an extra fd takes that target.
    fn default_for(&self, stream: Stream, defaults: Defaults) -> Option<Stdio> {
        let t = stream.target();
        let unset = self.stdio[t as usize].is_none();
        let taken = self.fds.iter().any(|(x, _)| *x == t);
        if !unset || taken {
            return None;
        }
        match (defaults, stream) {
            (Defaults::None, _) => None,
            (Defaults::Inherit, _) => Some(Stdio::inherit()),
            (Defaults::Output, Stream::Stdin) => Some(Stdio::null()),
            (Defaults::Output, _) => Some(Stdio::piped()),
        }
    }

    /// Builds the fds to send: duplicates of the given ones, new pipes, `/dev/null`. Returns
    /// the bundle and the parent's ends of the pipes (stdin, stdout, stderr).
    ///
    /// # Errors
    /// [`Error::TooManyFds`], [`Error::InvalidRequest`] for a duplicate or too-large target,
    /// [`Error::Io`] if an fd cannot be made.
    fn bundle(&self, defaults: Defaults) -> Result<(FdBundle, [Option<File>; 3])> {
        if let Some(errno) = self.deferred_errno {
            return Err(std::io::Error::from_raw_os_error(errno).into());
        }
        let defaults = Stream::ALL.map(|s| self.default_for(s, defaults));
        let stdio_count = (0..3)
            .filter(|&i| self.stdio[i].is_some() || defaults[i].is_some())
            .count();
        let total = stdio_count + self.fds.len() + self.sandbox.count();
        // PROTOCOL.md §3: at most MAX_FDS fds per request; refuse before making any fd.
        if total > MAX_FDS {
            return Err(Error::TooManyFds(total));
        }
        let mut bundle = FdBundle::new();
        let mut parents: [Option<File>; 3] = [None, None, None];
        for stream in Stream::ALL {
            let i = stream.target() as usize;
            let Some(choice) = self.stdio[i].as_ref().or(defaults[i].as_ref()) else {
                continue;
            };
            let (child_end, parent_end) = choice.materialize(stream)?;
            if let Some(fd) = child_end {
                bundle.push(stream.target(), fd)?;
            }
            parents[i] = parent_end;
        }
        for (target, fd) in &self.fds {
            bundle.push(*target, fd.try_clone()?)?;
        }
        Ok((bundle, parents))
    }

    /// Validates, connects, sends, and reads the `Pid` reply. The request is checked against
    /// what the server implements (its `Features`, asked once per server) before anything is
    /// sent: an option it lacks is [`Error::Unsupported`], and `KEEP_CONNECTION` is used only
    /// if the server has it (PROTOCOL.md §8).
    pub(crate) fn spawn(
        &self,
        client: &Arc<Engine>,
        job: Job,
        defaults: Defaults,
    ) -> Result<Child> {
        self.spawn_ref(client, &job, defaults)
    }

    /// [`Request::spawn`] of a job the caller keeps (a [`crate::Call`]'s, built once for all
    /// its spawns: a large payload is copied once per spawn, into the `Spawn`, not twice).
    pub(crate) fn spawn_ref(
        &self,
        client: &Arc<Engine>,
        job: &Job,
        defaults: Defaults,
    ) -> Result<Child> {
        let features = client.features()?;
        let keep = client.reuses_connections()
            && features::implemented(features.as_ref()) & spawn_flags::KEEP_CONNECTION != 0;
        let r = self.spawn_once(client, job, defaults, keep, features.as_ref());
        // Our frame is valid (the codec cannot encode an invalid one) and within the server's
        // `Features`: a `Malformed` reply means they no longer describe the server at the
        // path. Nothing was spawned; the next request asks again.
        if matches!(&r, Err(Error::Server { code, .. }) if *code == ErrorCode::Malformed) {
            client.forget_features();
        }
        r
    }

    /// [`Request::spawn`] for async code: every step awaited on tokio's reactor
    /// (`engine_async.rs`), the server's `Features` included.
    #[cfg(feature = "tokio")]
    pub(crate) async fn spawn_async(
        &self,
        client: &Arc<Engine>,
        job: &Job,
        defaults: Defaults,
    ) -> Result<Child> {
        let features = crate::engine_async::features(client).await?;
        let keep = client.reuses_connections()
            && features::implemented(features.as_ref()) & spawn_flags::KEEP_CONNECTION != 0;
        let build = self.builder(job, defaults, keep, features.as_ref());
        let r = crate::engine_async::exchange(client, build)
            .await
            .and_then(|(conn, frame, parents)| into_child(client, conn, frame, keep, parents));
        if matches!(&r, Err(Error::Server { code, .. }) if *code == ErrorCode::Malformed) {
            client.forget_features();
        }
        r
    }

    fn spawn_once(
        &self,
        client: &Arc<Engine>,
        job: &Job,
        defaults: Defaults,
        keep: bool,
        features: Option<&Features>,
    ) -> Result<Child> {
        let (conn, frame, parents) =
            client.exchange(self.builder(job, defaults, keep, features))?;
        into_child(client, conn, frame, keep, parents)
    }

    /// What the engine calls to build the `Spawn` (again, for each attempt: the fds go with
    /// the request): the message, its fds, and the parent's ends of piped stdio. A request the
    /// server's `features` lack is refused here, before any connection is used.
    pub(crate) fn builder<'a>(
        &'a self,
        job: &'a Job,
        defaults: Defaults,
        keep: bool,
        features: Option<&'a Features>,
    ) -> impl FnMut() -> Result<Built<[Option<File>; 3]>> + 'a {
        let mut options = SpawnOptions {
            keep_connection: keep,
            ..self.options
        };
        move || {
            if let Some(g) = &self.groups {
                options.credentials.groups = Some(Groups::new(g)?);
            }
            if !self.rlimits.is_empty() {
                options.rlimits = Some(Rlimits::new(&self.rlimits)?);
            }
            let (mut bundle, parents) = self.bundle(defaults)?;
            self.sandbox.add_to(&mut bundle, &mut options)?;
            let (map, fds) = bundle.into_parts();
            let spawn = Spawn::new(options, map, job.clone())?;
            features::check(features, &spawn)?;
            Ok((Some((Message::Spawn(spawn), fds)), parents))
        }
    }
}

/// The child of a `Spawn` whose reply is `frame`, read on `conn`.
pub(crate) fn into_child(
    client: &Arc<Engine>,
    conn: Conn,
    frame: Frame,
    keep: bool,
    parents: [Option<File>; 3],
) -> Result<Child> {
    let e = match frame.message {
        Message::Pid(pid) => {
            let pidfd = frame.fds.into_iter().next();
            return Ok(Child::new(
                client.clone(),
                conn,
                keep,
                pid.pid(),
                pidfd,
                parents,
            ));
        }
        Message::Error(e) => e,
        other => return Err(Error::unexpected(other.tag(), "Pid")),
    };
    // An exec failure under `wait_for_exec` is the child's final report: the connection
    // is READY again (`KEEP_CONNECTION`). Other errors close it.
    if keep && e.code().is_final_report() {
        client.put_idle(conn);
    }
    Err(e.into())
}

pub(crate) fn deadline_ms(d: Duration) -> Option<NonZeroU64> {
    // Rounded up to whole milliseconds, at least 1 (0 would mean "no deadline" on the wire).
    let ms = d.as_nanos().div_ceil(1_000_000).max(1);
    NonZeroU64::new(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// The setters shared by [`Command`] and [`Call`], with their docs.
macro_rules! request_setters {
    () => {
        crate::controls::control_setters!();

        /// Puts `fd` at fd number `target` in the child. The builder keeps `fd` and sends a
        /// duplicate with each spawn; dropping the builder closes it. A target of 0, 1 or 2
        /// replaces the default stdio (an explicit `stdin`/`stdout`/`stderr` for the same
        /// target is an error at spawn).
        pub fn fd(&mut self, target: u32, fd: impl Into<OwnedFd>) -> &mut Self {
            self.req.fds.push((target, fd.into()));
            self
        }

        /// As [`Self::fd`], with a duplicate of a borrowed fd made now. If duplicating fails,
        /// `spawn` reports the error.
        pub fn fd_borrowed(&mut self, target: u32, fd: BorrowedFd<'_>) -> &mut Self {
            self.req.fd_borrowed(target, fd);
            self
        }

        /// The child's standard input (fd 0).
        pub fn stdin(&mut self, stdio: impl Into<Stdio>) -> &mut Self {
            self.req.set_stdio(Stream::Stdin, stdio.into());
            self
        }

        /// The child's standard output (fd 1).
        pub fn stdout(&mut self, stdio: impl Into<Stdio>) -> &mut Self {
            self.req.set_stdio(Stream::Stdout, stdio.into());
            self
        }

        /// The child's standard error (fd 2).
        pub fn stderr(&mut self, stdio: impl Into<Stdio>) -> &mut Self {
            self.req.set_stdio(Stream::Stderr, stdio.into());
            self
        }

        /// The child calls `setsid()`: a new session and process group. Replaces
        /// [`Self::process_group`].
        pub fn new_session(&mut self) -> &mut Self {
            self.req.options.session = Session::NewSession;
            self
        }

        /// The child calls `setpgid(0, pgid)`, as std's `CommandExt::process_group`: 0 makes
        /// a new process group (whose id is the child's pid) in the server's session; another
        /// value joins that existing group, which must be in the server's session (the child
        /// fails with `ChildSetupFailed`, `EPERM`, otherwise). A negative `pgid` fails at
        /// spawn with [`crate::Error::InvalidRequest`]. Replaces [`Self::new_session`].
        /// Joining a group needs a server of protocol rev 0.5.
        pub fn process_group(&mut self, pgid: i32) -> &mut Self {
            self.req.options.session = match pgid {
                0 => Session::NewProcessGroup,
                // A negative pgid reads as above MAX_PGID: `Spawn::new` refuses it.
                p => Session::JoinProcessGroup(p as u32),
            };
            self
        }

        /// The child calls `setuid(id)` before its job runs (after `setgroups` and `setgid`),
        /// as std's `CommandExt::uid`. Without [`Self::groups`] the child first drops its
        /// supplementary groups, when it may. A server without the privilege fails the child
        /// with `ChildSetupFailed` (`EPERM`); the server applies no policy of its own. Needs a
        /// server of protocol rev 0.5, as do [`Self::gid`], [`Self::groups`] and joining a
        /// process group: another gets [`crate::Error::Unsupported`], and nothing is sent.
        pub fn uid(&mut self, id: u32) -> &mut Self {
            self.req.options.credentials.uid = Some(id);
            self
        }

        /// The child calls `setgid(id)` before its job runs, as std's `CommandExt::gid`.
        pub fn gid(&mut self, id: u32) -> &mut Self {
            self.req.options.credentials.gid = Some(id);
            self
        }

        /// The child calls `setgroups(groups)` before `setgid`/`setuid` (std's unstable
        /// `CommandExt::groups`); an empty slice drops every supplementary group. At most
        /// [`forkserver_protocol::MAX_GROUPS`], checked at spawn.
        pub fn groups(&mut self, groups: &[u32]) -> &mut Self {
            self.req.groups = Some(groups.to_vec());
            self
        }

        /// Whether the server reports the child's resource usage (CPU times, peak RSS, from
        /// `wait4`) with its exit: [`crate::ExitStatus::resource_usage`]. Default `false`.
        /// Needs a server of protocol rev 0.6 (`WANT_RUSAGE`): another gets
        /// [`crate::Error::Unsupported`], and nothing is sent.
        pub fn resource_usage(&mut self, want: bool) -> &mut Self {
            self.req.options.want_rusage = want;
            self
        }

        /// The server kills the child with `SIGKILL` once `deadline` has passed since the fork
        /// (rounded up to whole milliseconds). The exit status then reports
        /// [`crate::ExitStatus::deadline_expired`].
        pub fn deadline(&mut self, deadline: Duration) -> &mut Self {
            self.req.options.deadline_ms = deadline_ms(deadline);
            self
        }

        /// Whether the server kills the child (`SIGKILL`) when this connection ends before the
        /// child does: when the [`Child`] is dropped un-waited, or this process dies. Default
        /// `false`: the child runs on.
        pub fn kill_on_disconnect(&mut self, kill: bool) -> &mut Self {
            self.req.options.kill_on_disconnect = kill;
            self
        }

        /// Whether to ask for a pidfd of the child ([`Child::pidfd`]). Default `false`. A
        /// server on a kernel without pidfds may answer without one.
        pub fn pidfd(&mut self, want: bool) -> &mut Self {
            self.req.options.want_pidfd = want;
            self
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_rounds_up() {
        let ms = |d| deadline_ms(d).map(NonZeroU64::get);
        assert_eq!(ms(Duration::ZERO), Some(1));
        assert_eq!(ms(Duration::from_nanos(1)), Some(1));
        assert_eq!(ms(Duration::from_millis(5)), Some(5));
        assert_eq!(ms(Duration::from_micros(5001)), Some(6));
        assert_eq!(ms(Duration::MAX), Some(u64::MAX));
    }

    fn null() -> OwnedFd {
        File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn default_stdio_yields_to_explicit_fd() {
        let mut req = Request::default();
        req.fds.push((1, null()));
        let (bundle, _) = req.bundle(Defaults::Inherit).unwrap();
        assert_eq!(bundle.map().targets(), &[0, 2, 1]);
        let (bundle, _) = req.bundle(Defaults::None).unwrap();
        assert_eq!(bundle.map().targets(), &[1]);
    }

    #[test]
    fn explicit_stdio_and_fd_on_same_target_is_an_error() {
        let mut req = Request::default();
        req.set_stdio(Stream::Stdout, Stdio::null());
        req.fds.push((1, null()));
        assert!(matches!(
            req.bundle(Defaults::None),
            Err(Error::InvalidRequest(
                forkserver_protocol::BuildError::DuplicateTarget(1)
            ))
        ));
    }

    #[test]
    fn too_many_fds_counts_stdio() {
        let mut req = Request::default();
        for t in 3..3 + 254 {
            req.fds.push((t, null()));
        }
        assert!(req.bundle(Defaults::None).is_ok());
        assert!(matches!(
            req.bundle(Defaults::Inherit),
            Err(Error::TooManyFds(257))
        ));
    }
}
