//! The crate's error types: what a peer got wrong ([`DecodeError`]) kept apart from what the
//! caller got wrong ([`BuildError`]).

use core::fmt;

use crate::MAX_FDS;

mod limit;
pub use limit::Limit;

/// The start of a byte string, kept in an error so that its message can show the value: at
/// most [`Snippet::CAP`] bytes, shown escaped, with `...` when cut. `Copy`, so errors stay so.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Snippet {
    bytes: [u8; Snippet::CAP],
    len: u8,
    cut: bool,
}

impl Snippet {
    /// How many bytes a snippet keeps.
    pub const CAP: usize = 40;

    /// The first [`Snippet::CAP`] bytes of `b`.
    pub fn new(b: &[u8]) -> Self {
        let n = b.len().min(Self::CAP);
        let mut bytes = [0u8; Self::CAP];
        bytes[..n].copy_from_slice(&b[..n]);
        Self {
            bytes,
            len: n as u8,
            cut: b.len() > n,
        }
    }

    /// The bytes kept.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl fmt::Display for Snippet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}", self.as_bytes().escape_ascii())?;
        f.write_str(if self.cut { "...\"" } else { "\"" })
    }
}

impl fmt::Debug for Snippet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A field whose value broke a rule of the spec; named by [`DecodeError::InvalidValue`] and
/// [`BuildError::InvalidValue`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Field {
    /// `Hello.min_version`/`max_version`: zero, or min > max.
    VersionRange,
    /// `HelloOk.version`/`Status.protocol_version`: zero.
    Version,
    /// `HelloOk.auth`: not a defined method.
    AuthMethod,
    /// `Spawn.flags`: both `NEW_SESSION` and `NEW_PROCESS_GROUP`.
    SpawnFlags,
    /// `Spawn.job_kind`: not a defined kind.
    JobKind,
    /// An entry-point name: empty or not UTF-8.
    EntryName,
    /// The program path: empty, or holds a NUL byte.
    Program,
    /// An argv string holds a NUL byte (or argv is empty).
    Arg,
    /// An environment key: empty, or holds `=` or NUL.
    EnvKey,
    /// An environment value holds a NUL byte.
    EnvValue,
    /// The working directory holds a NUL byte.
    Cwd,
    /// `Spawn.env_clear`: neither 0 nor 1.
    Bool,
    /// A signal number outside `1..=64`.
    Signal,
    /// A pid of zero or above `i32::MAX`.
    Pid,
    /// An exit code outside `-64..=255`.
    ExitCode,
    /// A text field (error message, version string) that is not UTF-8.
    Utf8,
    /// `Spawn.uid`: `(uid_t) -1`, which is not a user id.
    Uid,
    /// `Spawn.gid` or a supplementary group: `(gid_t) -1`, which is not a group id.
    Gid,
    /// `Spawn.pgid`: zero or above `i32::MAX`.
    Pgid,
    /// An exec job's environment removals: the list is empty while `ENV_REMOVE` is set, or a
    /// name is empty or holds `=` or NUL.
    EnvRemove,
    /// `Features.revision`: before 0.6, which has no `Features`.
    Revision,
    /// `Spawn.rlimits`: a resource that is no Linux `RLIMIT_*` number, or soft above hard.
    Rlimit,
    /// `Spawn.umask`: a bit above `0o777`.
    Umask,
    /// `Spawn.nice`: outside `-20..=19`.
    Nice,
    /// `Spawn.oom_score_adj`: outside `-1000..=1000`.
    OomScoreAdj,
    /// `Spawn.grace_ms`: zero.
    Grace,
    /// `Spawn.seccomp_index`: no entry of the bundle.
    SeccompIndex,
    /// `Spawn.landlock_index`: no entry of the bundle, or the `seccomp_index` entry.
    LandlockIndex,
}

impl Field {
    /// The field, as a noun phrase for messages.
    pub fn noun(&self) -> &'static str {
        match self {
            Self::VersionRange => "the version range",
            Self::Version => "the protocol version",
            Self::AuthMethod => "the authentication method",
            Self::SpawnFlags => "the spawn flags",
            Self::JobKind => "the job kind",
            Self::EntryName => "the entry-point name",
            Self::Program => "the program",
            Self::Arg => "argument",
            Self::EnvKey => "environment key",
            Self::EnvValue => "environment value",
            Self::Cwd => "the working directory",
            Self::Bool => "a boolean",
            Self::Signal => "the signal number",
            Self::Pid => "the pid",
            Self::ExitCode => "the exit code",
            Self::Utf8 => "a text field",
            Self::Uid => "the uid",
            Self::Gid => "a gid",
            Self::Pgid => "the process group",
            Self::EnvRemove => "environment removal",
            Self::Revision => "the revision",
            Self::Rlimit => "a resource limit",
            Self::Umask => "the umask",
            Self::Nice => "the nice value",
            Self::OomScoreAdj => "the OOM score adjustment",
            Self::Grace => "the grace period",
            Self::SeccompIndex => "the seccomp filter's bundle index",
            Self::LandlockIndex => "the landlock ruleset's bundle index",
        }
    }

    /// Whether the field is one of a list, so that a message names its index.
    fn indexed(&self) -> bool {
        matches!(
            self,
            Self::Arg | Self::EnvKey | Self::EnvValue | Self::EnvRemove
        )
    }
}

/// Why bytes received from a peer are not a valid frame. Every variant is final: more bytes
/// cannot make the input valid (that case is [`crate::Decoded::Incomplete`], not an error).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DecodeError {
    /// The header's tag names no message of this version.
    UnknownTag(u8),
    /// A reserved field (header flags, padding, undefined flag bits) is not zero.
    ReservedNotZero,
    /// The header announces more fds than this message type may carry.
    UnexpectedFds {
        /// The message's tag.
        tag: u8,
        /// The fd count from the header.
        nfds: u16,
    },
    /// The header announces more than [`crate::MAX_FDS`] fds.
    TooManyFds(u16),
    /// The header announces a body longer than [`crate::MAX_BODY_LEN`].
    BodyTooLong(u32),
    /// The body length is not the fixed length this message type has.
    BadBodyLength {
        /// The message's tag.
        tag: u8,
        /// The body length from the header.
        len: u32,
    },
    /// A field runs past the end of the body.
    Truncated,
    /// The body has bytes left over after its last field.
    TrailingBytes,
    /// A `Hello` body does not start with `FKSV`.
    BadMagic,
    /// A count or length exceeds its limit.
    LimitExceeded(Limit),
    /// A field holds a value the spec does not allow.
    InvalidValue(Field),
    /// Two entries of a spawn's fd map name the same target fd.
    DuplicateTarget(u32),
    /// An error reply's code is not in the table of PROTOCOL.md §7.
    UnknownErrorCode(u16),
}

impl DecodeError {
    /// The variant's name as the test vectors spell it (`spec/vectors/*.json`, field `error`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::UnknownTag(_) => "UnknownTag",
            Self::ReservedNotZero => "ReservedNotZero",
            Self::UnexpectedFds { .. } => "UnexpectedFds",
            Self::TooManyFds(_) => "TooManyFds",
            Self::BodyTooLong(_) => "BodyTooLong",
            Self::BadBodyLength { .. } => "BadBodyLength",
            Self::Truncated => "Truncated",
            Self::TrailingBytes => "TrailingBytes",
            Self::BadMagic => "BadMagic",
            Self::LimitExceeded(_) => "LimitExceeded",
            Self::InvalidValue(_) => "InvalidValue",
            Self::DuplicateTarget(_) => "DuplicateTarget",
            Self::UnknownErrorCode(_) => "UnknownErrorCode",
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownTag(t) => write!(f, "unknown message tag 0x{t:02x}"),
            Self::ReservedNotZero => f.write_str("a reserved field is not zero"),
            Self::UnexpectedFds { tag, nfds } => {
                write!(f, "message 0x{tag:02x} cannot carry {nfds} fds")
            }
            Self::TooManyFds(n) => write!(f, "{n} fds announced, at most {MAX_FDS} allowed"),
            Self::BodyTooLong(n) => {
                write!(
                    f,
                    "body of {n} bytes announced, at most {} allowed",
                    crate::MAX_BODY_LEN
                )
            }
            Self::BadBodyLength { tag, len } => {
                write!(f, "message 0x{tag:02x} cannot have a body of {len} bytes")
            }
            Self::Truncated => f.write_str("a field runs past the end of the body"),
            Self::TrailingBytes => f.write_str("bytes left over after the last field"),
            Self::BadMagic => f.write_str("hello does not start with the magic FKSV"),
            Self::LimitExceeded(l) => write!(f, "limit exceeded: {l}"),
            Self::InvalidValue(field) => write!(f, "invalid value in {}", field.noun()),
            Self::DuplicateTarget(t) => write!(f, "target fd {t} appears twice in the fd map"),
            Self::UnknownErrorCode(c) => write!(f, "unknown error code {c}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a message could not be built: the caller asked for something the protocol cannot carry.
/// Returned by constructors, so that a built message always encodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BuildError {
    /// More than [`crate::MAX_FDS`] fds in one bundle.
    TooManyFds(usize),
    /// An fd map and a list of fds of different lengths were paired.
    FdCountMismatch {
        /// Entries of the map.
        targets: usize,
        /// fds given.
        fds: usize,
    },
    /// Two fds of a bundle target the same fd number.
    DuplicateTarget(u32),
    /// A count or length exceeds its limit.
    LimitExceeded {
        /// Which limit.
        limit: Limit,
        /// The count, length or number asked for.
        value: usize,
    },
    /// A field holds a value the spec does not allow.
    InvalidValue(Field),
    /// A byte string holds a NUL byte, which its field forbids.
    Nul {
        /// The field.
        field: Field,
        /// Its position in its list (argv index, environment entry), for list fields.
        index: usize,
        /// The start of the value.
        value: Snippet,
    },
}

impl BuildError {
    pub(crate) fn limit(limit: Limit, value: usize) -> Self {
        Self::LimitExceeded { limit, value }
    }
}

/// A decoder builds its values with the same constructors a sender uses, so what they refuse
/// is what the bytes broke. One map, each variant to the decode error of the same rule.
impl From<BuildError> for DecodeError {
    fn from(e: BuildError) -> Self {
        let saturate = |n: usize| u16::try_from(n).unwrap_or(u16::MAX);
        match e {
            BuildError::LimitExceeded { limit, .. } => Self::LimitExceeded(limit),
            BuildError::InvalidValue(field) | BuildError::Nul { field, .. } => {
                Self::InvalidValue(field)
            }
            BuildError::TooManyFds(n) => Self::TooManyFds(saturate(n)),
            BuildError::DuplicateTarget(t) => Self::DuplicateTarget(t),
            // The fds that travel do not match the Spawn's fd map: on the wire, the header's
            // nfds is the number of fds the frame carries beside the map.
            BuildError::FdCountMismatch { fds, .. } => Self::UnexpectedFds {
                tag: crate::Tag::Spawn as u8,
                nfds: saturate(fds),
            },
        }
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooManyFds(n) => write!(f, "{n} fds in one bundle, at most {MAX_FDS} allowed"),
            Self::FdCountMismatch { targets, fds } => {
                write!(f, "{fds} fds for an fd map of {targets} targets")
            }
            Self::DuplicateTarget(t) => write!(f, "target fd {t} given twice"),
            Self::LimitExceeded { limit, value } => {
                write!(f, "limit exceeded: {value} {}, {limit}", limit.counts())
            }
            Self::InvalidValue(field) => write!(f, "invalid value in {}", field.noun()),
            Self::Nul {
                field,
                index,
                value,
            } => {
                f.write_str(field.noun())?;
                if field.indexed() {
                    write!(f, " {index}")?;
                }
                write!(f, " holds a NUL byte: {value}")
            }
        }
    }
}

impl std::error::Error for BuildError {}
