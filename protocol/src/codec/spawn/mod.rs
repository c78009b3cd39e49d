//! `Spawn` (0x10), client → server: fork a child that runs a job with an fd bundle
//! (PROTOCOL.md §5.5).
//!
//! ```text
//! +---------------+-------------------+------------------------+----------+-----------~
//! | flags (u32)   | deadline_ms (u64) | target fd (u32) x nfds | options  | job_kind | job body...
//! +---------------+-------------------+------------------------+----------+----------+-----------~
//! ```
//!
//! `options` are the optional fields the flags announce (`options.rs`); the jobs are in
//! `job.rs`.

use super::messages::Body;
use super::wire::{encoded_len, Reader, Sink};
use crate::error::{BuildError, DecodeError, Field, Limit};
use crate::{MAX_BODY_LEN, MAX_FDS, MAX_TARGET_FD};

mod controls;
mod fields;
mod job;
mod options;
mod rlimits;
mod sandbox;

pub use controls::{MAX_UMASK, NICE_RANGE, OOM_SCORE_ADJ_RANGE};
pub use job::{EntryJob, ExecJob};
pub use options::{flags, Credentials, Groups, Revision, Session, SpawnOptions};
pub use rlimits::{Rlimit, Rlimits, RESOURCES as RLIMIT_NAMES, RLIM_INFINITY};

/// The fd map of a spawn: for the i-th fd that travels with the frame, the fd number it gets in
/// the child. At most [`MAX_FDS`] entries, each at most [`MAX_TARGET_FD`], no two alike.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FdMap {
    targets: Vec<u32>,
}

impl FdMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// # Errors
    /// [`BuildError::TooManyFds`] past [`MAX_FDS`] entries, [`BuildError::DuplicateTarget`] if
    /// two entries are equal, [`BuildError::LimitExceeded`] for a target above [`MAX_TARGET_FD`].
    pub fn from_targets(targets: Vec<u32>) -> Result<Self, BuildError> {
        let mut map = Self {
            targets: Vec::with_capacity(targets.len().min(MAX_FDS)),
        };
        for t in targets {
            map.push(t)?;
        }
        Ok(map)
    }

    /// Appends a target.
    ///
    /// # Errors
    /// As [`FdMap::from_targets`]; the map is unchanged on error.
    pub fn push(&mut self, target: u32) -> Result<(), BuildError> {
        if self.targets.len() >= MAX_FDS {
            return Err(BuildError::TooManyFds(self.targets.len() + 1));
        }
        if target > MAX_TARGET_FD {
            return Err(BuildError::limit(Limit::TargetFd, target as usize));
        }
        if self.targets.contains(&target) {
            return Err(BuildError::DuplicateTarget(target));
        }
        self.targets.push(target);
        Ok(())
    }

    /// The targets, in the order the fds travel.
    pub fn targets(&self) -> &[u32] {
        &self.targets
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// True when no fd travels.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    fn decode(r: &mut Reader<'_>, nfds: u16) -> Result<Self, DecodeError> {
        // nfds <= MAX_FDS was checked with the header; each entry costs 4 body bytes, so the
        // allocation is bounded by both.
        let n = usize::from(nfds);
        if r.remaining() < 4 * n {
            return Err(DecodeError::Truncated);
        }
        let mut targets = Vec::with_capacity(n);
        for _ in 0..n {
            let t = r.u32()?;
            // §5.5: a target fd is at most MAX_TARGET_FD.
            if t > MAX_TARGET_FD {
                return Err(DecodeError::LimitExceeded(Limit::TargetFd));
            }
            // §5.5: no two entries name the same target.
            if targets.contains(&t) {
                return Err(DecodeError::DuplicateTarget(t));
            }
            targets.push(t);
        }
        Ok(Self { targets })
    }
}

/// What the child runs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Job {
    /// A registered entry point (job kind 1).
    Entry(EntryJob),
    /// An `execve` (job kind 2).
    Exec(ExecJob),
}

/// `Spawn` (0x10): a validated spawn request. The fds themselves travel beside the frame
/// (see [`crate::OutFrame`]); this message carries their target numbers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Spawn {
    /// Boxed: the groups make the options a few hundred bytes, which would make every
    /// [`crate::Message`] that large.
    options: Box<SpawnOptions>,
    fds: FdMap,
    job: Job,
}

impl Spawn {
    /// # Errors
    /// [`BuildError::LimitExceeded`] with [`Limit::Body`] when the encoded body would exceed
    /// [`MAX_BODY_LEN`]; [`BuildError::InvalidValue`] for a pgid outside `1..=`[`crate::MAX_PGID`]
    /// or a uid or gid of `u32::MAX`, a `seccomp_filter` or `landlock_ruleset` index that
    /// names no entry of `fds`, or both naming the same entry. Every other rule is enforced
    /// by the parts' constructors.
    pub fn new(options: SpawnOptions, fds: FdMap, job: Job) -> Result<Self, BuildError> {
        options.check()?;
        sandbox::check_indexes(options.seccomp_index, options.landlock_index, fds.len())
            .map_err(BuildError::InvalidValue)?;
        let s = Self {
            options: Box::new(options),
            fds,
            job,
        };
        // The length is what the encoder writes (`codec` module doc).
        let len = encoded_len(|n| s.encode(n));
        if len > MAX_BODY_LEN {
            return Err(BuildError::limit(Limit::Body, len));
        }
        Ok(s)
    }

    /// The options.
    pub fn options(&self) -> &SpawnOptions {
        &self.options
    }

    /// The fd map.
    pub fn fds(&self) -> &FdMap {
        &self.fds
    }

    /// The job.
    pub fn job(&self) -> &Job {
        &self.job
    }

    /// The job, to put back a payload a lending decode left out (`codec/split.rs`).
    pub(crate) fn job_mut(&mut self) -> &mut Job {
        &mut self.job
    }

    /// Takes the request apart.
    pub fn into_parts(self) -> (SpawnOptions, FdMap, Job) {
        (*self.options, self.fds, self.job)
    }

    /// The protocol revision a server needs to understand this request: the latest of the
    /// revisions that introduced each flag bit it sets (PROTOCOL.md §8), derived from the
    /// table of options. A server of an older revision refuses the request (reserved bits).
    ///
    /// ```
    /// use forkserver_protocol::{EntryJob, FdMap, Job, Revision, Spawn, SpawnOptions};
    /// let job = Job::Entry(EntryJob::new("main", Vec::new()).unwrap());
    /// let mut options = SpawnOptions::default();
    /// let plain = Spawn::new(options, FdMap::new(), job.clone()).unwrap();
    /// assert_eq!(plain.required_revision(), Revision::FIRST);
    /// options.credentials.uid = Some(1000);
    /// let as_user = Spawn::new(options, FdMap::new(), job).unwrap();
    /// assert_eq!(as_user.required_revision(), Revision::R0_5);
    /// ```
    pub fn required_revision(&self) -> Revision {
        options::revision_of(self.flags())
    }

    /// The flag word as encoded (PROTOCOL.md §5.5.1): the options' bits, and `ENV_REMOVE` for
    /// an exec job that removes names. A server implements the request only if it implements
    /// each of these bits (its `Features::spawn_flags`).
    pub fn flags(&self) -> u32 {
        let removes = matches!(&self.job, Job::Exec(e) if !e.env_remove().is_empty());
        self.options.flags() | if removes { flags::ENV_REMOVE } else { 0 }
    }
}

impl Body for Spawn {
    fn encode(&self, out: &mut impl Sink) {
        out.put_u32_le(self.flags());
        out.put_u64_le(self.options.deadline_ms.map_or(0, |d| d.get()));
        for t in self.fds.targets() {
            out.put_u32_le(*t);
        }
        self.options.encode_fields(out);
        match &self.job {
            Job::Entry(e) => {
                out.put_u8(1);
                e.encode(out);
            }
            Job::Exec(e) => {
                out.put_u8(2);
                e.encode(out);
            }
        }
    }

    fn decode(r: &mut Reader<'_>, nfds: u16) -> Result<Self, DecodeError> {
        let f = r.u32()?;
        let deadline = r.u64()?;
        let mut options = SpawnOptions::from_wire(f, deadline)?;
        let fds = FdMap::decode(r, nfds)?;
        options.decode_fields(f, r)?;
        // §5.5.1 check 6: the bundle indexes name entries of this bundle, two different ones.
        sandbox::check_indexes(options.seccomp_index, options.landlock_index, fds.len())
            .map_err(DecodeError::InvalidValue)?;
        let removes = f & flags::ENV_REMOVE != 0;
        let job = match r.u8()? {
            // §5.5.1: ENV_REMOVE is for exec jobs only.
            1 if removes => return Err(DecodeError::InvalidValue(Field::SpawnFlags)),
            1 => Job::Entry(EntryJob::decode(r)?),
            2 => Job::Exec(ExecJob::decode(r, removes)?),
            _ => return Err(DecodeError::InvalidValue(Field::JobKind)),
        };
        Ok(Self {
            options: Box::new(options),
            fds,
            job,
        })
    }

    fn fd_count(&self) -> usize {
        self.fds.len()
    }
}
