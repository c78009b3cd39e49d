//! The options of a `Spawn`: its flag word and the optional fields that flags announce
//! (PROTOCOL.md §5.5.1, rev 0.5 for bits 6-10, rev 0.6 for bits 11-19).
//!
//! ```text
//! flags (u32) | deadline_ms (u64) | targets ... | [uid u32] [gid u32] [ngroups u16, gid u32 x n]
//!                                                 [pgid u32] | job_kind | job body ...
//! ```
//!
//! The optional fields sit between the fd targets and `job_kind`, in the order of their bits,
//! each present exactly when its bit is set. `ENV_REMOVE` announces a field of the exec job
//! body (`job.rs`).
//!
//! # One table
//!
//! Every flag bit is one line of the `spawn_options!` table below: its bit, its name in
//! [`flags`], the [`Revision`] it appeared in, and what it sets in [`SpawnOptions`]. The
//! table generates the flag constants (and [`flags::ALL`], [`flags::SESSION_BITS`],
//! [`flags::known_in`], [`flags::name`]; a server's `Features` list [`flags::ALL`]), the flag
//! word, the fields' encoder, decoder and build-time checks, and the revision a
//! request needs ([`SpawnOptions::required_revision`]). A line is one of:
//!
//! - `flag(field)`: a `bool` of [`SpawnOptions`], no body field (`WANT_PIDFD`);
//! - `field(path: Codec)`: an `Option<T>` at `path` of [`SpawnOptions`], present on the wire
//!   when `Some`; `Codec` implements `FieldCodec<Value = T>` (encode, decode with its
//!   §5.5.1 checks, the build check); `credentials.uid: Uid` (`u32`, `u32::MAX` invalid) and
//!   `credentials.groups: Groups` (a capped list) are the examples;
//! - `session(Variant)` / `session(Variant: Codec)`: one of the mutually exclusive
//!   [`Session`] bits, without or with a field (`JOIN_PROCESS_GROUP` and its pgid);
//! - `job()`: a bit the job decides (`ENV_REMOVE`), counted for the revision only.
//!
//! Adding an option is one line plus its semantics. For example, rlimits (a list of up to 16
//! `(resource, soft, hard)`), a umask and `no_new_privs` would read:
//!
//! ```text
//! /// The body carries rlimits: the child calls `setrlimit` for each (rev 0.7).
//! 11 SET_RLIMITS, R0_7 => field(limits.rlimits: Rlimits);
//! /// The body carries a umask (rev 0.7).
//! 12 SET_UMASK, R0_7 => field(umask: Umask);
//! /// The child sets `PR_SET_NO_NEW_PRIVS` (rev 0.7).
//! 13 NO_NEW_PRIVS, R0_7 => flag(no_new_privs);
//! ```
//!
//! (plus `Revision::R0_7`, with [`Revision::CURRENT`] moved to it: a server's `Features` then
//! list the new bits, and clients check requests against them, with no other change),
//! and `Rlimits` a `Copy` list type like [`Groups`] whose `FieldCodec` reads the count, checks
//! it against its cap and the remaining bytes before reading an entry, and `Umask` a scalar codec
//! like `Uid` whose decode rejects bits above `0o777`. Scalar fields (`nice`, `oom_score_adj`,
//! an fd index, a grace period) are `field` lines with a codec of their own; the fields are
//! then laid out, decoded and checked in bit order, as §5.5.1 requires.

use super::controls::{Grace, Nice, OomScoreAdj, Umask};
pub use super::fields::Groups;
use super::fields::{FieldCodec, Gid, Pgid, Uid};
pub use super::rlimits::Rlimits;
use super::sandbox::BundleIndex;
use crate::codec::wire::{Reader, Sink};
use crate::error::{BuildError, DecodeError, Field};

/// A revision of the protocol specification (PROTOCOL.md change log): the wire facts it added
/// are understood by servers of that revision and later. Ordered, so `a < b` means `a` is older.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    major: u16,
    minor: u16,
}

impl Revision {
    /// The first version of the specification (its change log says "1 (draft)").
    pub const FIRST: Self = Self::new(0, 1);
    /// Rev 0.3: `KEEP_CONNECTION`.
    pub const R0_3: Self = Self::new(0, 3);
    /// Rev 0.5: ids, process group, environment removals.
    pub const R0_5: Self = Self::new(0, 5);
    /// Rev 0.6: `FeaturesRequest` and `Features`, the server's list of what it implements;
    /// `WANT_RUSAGE` and the usage in `Exit`; `MetricsRequest` and `Metrics`; the per-child
    /// controls (`SET_RLIMITS`, `SET_UMASK`, `SET_NICE`, `NO_NEW_PRIVS`, `SET_OOM_SCORE_ADJ`,
    /// `SET_GRACE`, `SECCOMP_FILTER`, `LANDLOCK_RULESET`).
    pub const R0_6: Self = Self::new(0, 6);
    /// The revision this crate implements, which its `Features` names.
    pub const CURRENT: Self = Self::R0_6;

    /// A revision by its numbers, as a `Features` message carries them.
    pub const fn new(major: u16, minor: u16) -> Self {
        Self { major, minor }
    }

    /// The major number (0 for the drafts).
    pub fn major(self) -> u16 {
        self.major
    }

    /// The minor number.
    pub fn minor(self) -> u16 {
        self.minor
    }
}

impl core::fmt::Display for Revision {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "rev {}.{}", self.major, self.minor)
    }
}

/// What one table line does, by kind; `$o` is the [`SpawnOptions`].
macro_rules! option_line {
    // Whether the option is set (its bit goes in the flag word).
    (is_set, $o:ident, flag($($f:ident).+)) => { $o.$($f).+ };
    (is_set, $o:ident, field($($f:ident).+ : $c:ty)) => { $o.$($f).+.is_some() };
    (is_set, $o:ident, session($v:ident)) => { matches!($o.session, Session::$v) };
    (is_set, $o:ident, session($v:ident : $c:ty)) => { matches!($o.session, Session::$v(_)) };
    (is_set, $o:ident, job()) => { false };
    // Whether the bit is one of the session bits.
    (is_session, session($($t:tt)*)) => { true };
    (is_session, $($t:tt)*) => { false };
    // The field's value, if the option carries one and is set.
    (value, $o:ident, field($($f:ident).+ : $c:ty), |$v:ident| $e:expr) => {
        if let Some($v) = &$o.$($f).+ { $e }
    };
    (value, $o:ident, session($var:ident : $c:ty), |$v:ident| $e:expr) => {
        if let Session::$var($v) = &$o.session { $e }
    };
    (value, $o:ident, $($t:tt)*) => {};
    // The codec of the field, for the generated calls.
    (encode, $o:ident, $out:ident, field($($f:ident).+ : $c:ty)) => {
        option_line!(value, $o, field($($f).+ : $c), |v| <$c as FieldCodec>::encode(v, $out))
    };
    (encode, $o:ident, $out:ident, session($var:ident : $c:ty)) => {
        option_line!(value, $o, session($var : $c), |v| <$c as FieldCodec>::encode(v, $out))
    };
    (encode, $($t:tt)*) => {};
    (check, $o:ident, field($($f:ident).+ : $c:ty)) => {
        option_line!(value, $o, field($($f).+ : $c), |v| <$c as FieldCodec>::check(v)?)
    };
    (check, $o:ident, session($var:ident : $c:ty)) => {
        option_line!(value, $o, session($var : $c), |v| <$c as FieldCodec>::check(v)?)
    };
    (check, $($t:tt)*) => {};
    // From the flag word alone (§5.5.1 steps 1-2): bools and the session; a session field
    // gets a placeholder that `decode` replaces.
    (from_flag, $o:ident, $on:expr, flag($($f:ident).+)) => { $o.$($f).+ = $on };
    (from_flag, $o:ident, $on:expr, session($v:ident)) => {
        if $on { $o.session = Session::$v }
    };
    (from_flag, $o:ident, $on:expr, session($v:ident : $c:ty)) => {
        if $on { $o.session = Session::$v(0) }
    };
    (from_flag, $($t:tt)*) => {};
    // Reads the field after the targets (§5.5.1 check 4).
    (decode, $o:ident, $r:ident, $on:expr, field($($f:ident).+ : $c:ty)) => {
        if $on { $o.$($f).+ = Some(<$c as FieldCodec>::decode($r)?) }
    };
    (decode, $o:ident, $r:ident, $on:expr, session($v:ident : $c:ty)) => {
        if $on { $o.session = Session::$v(<$c as FieldCodec>::decode($r)?) }
    };
    (decode, $($t:tt)*) => {};
}

/// The table of Spawn flag bits; see the module doc.
macro_rules! spawn_options {
    ($(
        $(#[$doc:meta])*
        $bit:literal $name:ident, $rev:ident => $kind:ident $args:tt;
    )*) => {
        /// Spawn flag bits (PROTOCOL.md §5.5.1).
        pub mod flags {
            $( $(#[$doc])* pub const $name: u32 = 1 << $bit; )*
            /// Every defined bit; the others are reserved and MUST be zero.
            pub const ALL: u32 = 0 $(| $name)*;
            /// The bits that choose the child's session or process group; at most one may be
            /// set.
            pub const SESSION_BITS: u32 =
                0 $(| if option_line!(is_session, $kind $args) { $name } else { 0 })*;

            /// Every bit a server of revision `rev` implements: those introduced by `rev` or
            /// earlier.
            pub fn known_in(rev: super::Revision) -> u32 {
                0 $(| if super::Revision::$rev <= rev { $name } else { 0 })*
            }

            /// The name of the single bit `flag` (e.g. `"SET_UID"`), `None` for a word that is
            /// not exactly one defined bit.
            pub fn name(flag: u32) -> Option<&'static str> {
                $( if flag == $name { return Some(stringify!($name)); } )*
                None
            }
        }

        /// The revision that introduced each bit set in `f`, the latest of them.
        fn flags_revision(f: u32) -> Revision {
            let mut rev = Revision::FIRST;
            $( if f & flags::$name != 0 { rev = rev.max(Revision::$rev); } )*
            rev
        }

        impl SpawnOptions {
            /// The checks the field types leave open (PROTOCOL.md §5.5.1).
            pub(crate) fn check(&self) -> Result<(), BuildError> {
                let o = self;
                $( option_line!(check, o, $kind $args); )*
                Ok(())
            }

            /// The flag word, without `ENV_REMOVE` (which the job decides).
            pub(crate) fn flags(&self) -> u32 {
                let o = self;
                let mut f = 0;
                $( if option_line!(is_set, o, $kind $args) { f |= flags::$name; } )*
                f
            }

            /// Writes the optional fields, in the order of their bits (their length is what
            /// this writes: `codec` module doc).
            pub(crate) fn encode_fields(&self, out: &mut impl Sink) {
                let o = self;
                $( option_line!(encode, o, out, $kind $args); )*
            }

            /// The flag checks of §5.5.1 (steps 1-2): everything but the optional fields,
            /// which [`SpawnOptions::decode_fields`] reads after the targets.
            pub(crate) fn from_wire(f: u32, deadline_ms: u64) -> Result<Self, DecodeError> {
                // §5.5.1 check 1: undefined flag bits are reserved and MUST be zero.
                if f & !flags::ALL != 0 {
                    return Err(DecodeError::ReservedNotZero);
                }
                // §5.5.1 check 2: at most one of NEW_SESSION, NEW_PROCESS_GROUP,
                // JOIN_PROCESS_GROUP.
                if (f & flags::SESSION_BITS).count_ones() > 1 {
                    return Err(DecodeError::InvalidValue(Field::SpawnFlags));
                }
                let mut o = Self {
                    deadline_ms: core::num::NonZeroU64::new(deadline_ms),
                    ..Self::default()
                };
                $( option_line!(from_flag, o, f & flags::$name != 0, $kind $args); )*
                Ok(o)
            }

            /// Reads the optional fields that the flags `f` announce (§5.5.1 check 4), in
            /// the order of their bits.
            pub(crate) fn decode_fields(
                &mut self,
                f: u32,
                r: &mut Reader<'_>,
            ) -> Result<(), DecodeError> {
                let o = self;
                $( option_line!(decode, o, r, f & flags::$name != 0, $kind $args); )*
                Ok(())
            }
        }
    };
}

spawn_options! {
    /// The child calls `setsid()`: a new session and process group.
    0 NEW_SESSION, FIRST => session(NewSession);
    /// The child calls `setpgid(0, 0)`: a new process group in the server's session.
    1 NEW_PROCESS_GROUP, FIRST => session(NewProcessGroup);
    /// The `Pid` reply carries a pidfd for the child.
    2 WANT_PIDFD, FIRST => flag(want_pidfd);
    /// Exec jobs only: reply `Pid` once `execve` has succeeded, or `Error` if it failed.
    3 PID_AFTER_EXEC, FIRST => flag(pid_after_exec);
    /// The server sends `SIGKILL` to the child when the client's connection ends first.
    4 KILL_ON_DISCONNECT, FIRST => flag(kill_on_disconnect);
    /// After the child's final report the connection returns to READY for another request,
    /// instead of being closed (PROTOCOL.md §6.1, rev 0.3).
    5 KEEP_CONNECTION, R0_3 => flag(keep_connection);
    /// The body carries `uid`: the child calls `setuid(uid)` (rev 0.5).
    6 SET_UID, R0_5 => field(credentials.uid: Uid);
    /// The body carries `gid`: the child calls `setgid(gid)` (rev 0.5).
    7 SET_GID, R0_5 => field(credentials.gid: Gid);
    /// The body carries the supplementary groups: the child calls `setgroups` (rev 0.5).
    8 SET_GROUPS, R0_5 => field(credentials.groups: Groups);
    /// The body carries `pgid`: the child calls `setpgid(0, pgid)` (rev 0.5).
    9 JOIN_PROCESS_GROUP, R0_5 => session(JoinProcessGroup: Pgid);
    /// Exec jobs only: the job body carries names to remove from the inherited environment
    /// (rev 0.5).
    10 ENV_REMOVE, R0_5 => job();
    /// The `Exit` reply carries the child's resource usage (`wait4`: CPU times, peak RSS;
    /// PROTOCOL.md §5.9, rev 0.6).
    11 WANT_RUSAGE, R0_6 => flag(want_rusage);
    /// The body carries resource limits: the child calls `prlimit64(0, resource, ...)` for
    /// each, in order, before its credentials change (rev 0.6).
    12 SET_RLIMITS, R0_6 => field(rlimits: Rlimits);
    /// The body carries a umask: the child calls `umask(umask)` (rev 0.6).
    13 SET_UMASK, R0_6 => field(umask: Umask);
    /// The body carries a nice value: the child calls `setpriority(PRIO_PROCESS, 0, nice)`
    /// (rev 0.6).
    14 SET_NICE, R0_6 => field(nice: Nice);
    /// The child calls `prctl(PR_SET_NO_NEW_PRIVS, 1)`: its `execve` grants no privilege
    /// (setuid bits, file capabilities) (rev 0.6).
    15 NO_NEW_PRIVS, R0_6 => flag(no_new_privs);
    /// The body carries an OOM score adjustment, which the child writes to
    /// `/proc/self/oom_score_adj` (rev 0.6).
    16 SET_OOM_SCORE_ADJ, R0_6 => field(oom_score_adj: OomScoreAdj);
    /// The body carries a grace period: at the deadline the server sends `SIGTERM`, and
    /// `SIGKILL` `grace_ms` later if the child still runs (rev 0.6).
    17 SET_GRACE, R0_6 => field(grace_ms: Grace);
    /// The body carries the index of the bundle entry that holds a compiled classic-BPF
    /// program: the server reads it before the fork, and the child installs it with
    /// `seccomp(SECCOMP_SET_MODE_FILTER)` as its last step before `execve` or its entry
    /// point (rev 0.6).
    18 SECCOMP_FILTER, R0_6 => field(seccomp_index: BundleIndex);
    /// The body carries the index of the bundle entry that holds a landlock ruleset: the
    /// child calls `landlock_restrict_self` with it after its credentials change (rev 0.6).
    19 LANDLOCK_RULESET, R0_6 => field(landlock_index: BundleIndex);
}

/// Which session and process group the child lives in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Session {
    /// The server's session and process group.
    #[default]
    Inherit,
    /// A new process group (`setpgid(0, 0)`) in the server's session.
    NewProcessGroup,
    /// A new session (`setsid()`), which is also a new process group.
    NewSession,
    /// The existing process group `pgid` (`setpgid(0, pgid)`), in `1..=`[`crate::MAX_PGID`]; it must
    /// be in the server's session (the kernel says `EPERM` otherwise). Rev 0.5.
    JoinProcessGroup(u32),
}

/// The credentials the child takes before its job runs (rev 0.5). Each part is optional, as
/// with `std::os::unix::process::CommandExt::{uid, gid, groups}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Credentials {
    /// `setuid(uid)`, last. Not `u32::MAX`.
    pub uid: Option<u32>,
    /// `setgid(gid)`. Not `u32::MAX`.
    pub gid: Option<u32>,
    /// `setgroups(groups)`; an empty list drops every supplementary group.
    pub groups: Option<Groups>,
}

/// The options of a spawn request. [`super::Spawn::new`] checks the values the types cannot
/// (the pgid's range, `u32::MAX` as an id).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SpawnOptions {
    /// Session and process group of the child.
    pub session: Session,
    /// Ask for a pidfd with the `Pid` reply.
    pub want_pidfd: bool,
    /// Exec jobs: reply `Pid` only once `execve` succeeded (as `std::process::Command::spawn`
    /// does), instead of right after `fork`. Ignored for entry jobs.
    pub pid_after_exec: bool,
    /// Kill the child when the connection ends before the child does.
    pub kill_on_disconnect: bool,
    /// Keep the connection open after the child's final report (`Exit`, or an `Error` with
    /// code `ExecFailed`/`ChildSetupFailed`): it returns to READY and can carry the next
    /// request, saving the connection setup and the handshake.
    pub keep_connection: bool,
    /// Milliseconds after the fork when the server kills the child with `SIGKILL`; `None` for
    /// no deadline (encoded as 0).
    pub deadline_ms: Option<core::num::NonZeroU64>,
    /// uid, gid and supplementary groups of the child; by default the server's.
    pub credentials: Credentials,
    /// `WANT_RUSAGE` (rev 0.6): the `Exit` reply carries the child's resource usage.
    pub want_rusage: bool,
    /// `SET_RLIMITS` (rev 0.6): the limits the child sets, in order.
    pub rlimits: Option<Rlimits>,
    /// `SET_UMASK` (rev 0.6): the child's umask, `0..=0o777`.
    pub umask: Option<u16>,
    /// `SET_NICE` (rev 0.6): the child's nice value, `-20..=19`.
    pub nice: Option<i32>,
    /// `NO_NEW_PRIVS` (rev 0.6): `prctl(PR_SET_NO_NEW_PRIVS, 1)` in the child.
    pub no_new_privs: bool,
    /// `SET_OOM_SCORE_ADJ` (rev 0.6): the child's `oom_score_adj`, `-1000..=1000`.
    pub oom_score_adj: Option<i32>,
    /// `SET_GRACE` (rev 0.6): milliseconds between the `SIGTERM` at the deadline and the
    /// `SIGKILL`; `None`: `SIGKILL` at the deadline. No effect without a deadline.
    pub grace_ms: Option<core::num::NonZeroU32>,
    /// `SECCOMP_FILTER` (rev 0.6): the index in the bundle of the fd that holds the child's
    /// seccomp program (1..=4096 `struct sock_filter`s); the entry is consumed, not placed for
    /// the job. `NO_NEW_PRIVS` is implied.
    pub seccomp_index: Option<u16>,
    /// `LANDLOCK_RULESET` (rev 0.6): the index in the bundle of a landlock ruleset fd, which
    /// the child enforces with `landlock_restrict_self`; the entry is consumed, not placed for
    /// the job. Not the `seccomp_index` entry. `NO_NEW_PRIVS` is implied.
    pub landlock_index: Option<u16>,
}

impl SpawnOptions {
    /// The protocol revision a server needs to understand these options: the latest of the
    /// revisions that introduced each flag they set (an exec job's `ENV_REMOVE` is counted by
    /// [`super::Spawn::required_revision`]).
    pub fn required_revision(&self) -> Revision {
        flags_revision(self.flags())
    }
}

/// The revision a flag word needs (for [`super::Spawn::required_revision`]).
pub(crate) fn revision_of(flags: u32) -> Revision {
    flags_revision(flags)
}
