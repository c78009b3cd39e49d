//! The crate's error types: what a peer got wrong ([`DecodeError`]) kept apart from what the
//! caller got wrong ([`BuildError`]).

use core::fmt;

/// A bounded quantity of the protocol; names the limit a [`DecodeError::LimitExceeded`] or a
/// [`BuildError::LimitExceeded`] refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Limit {
    /// [`crate::MAX_BODY_LEN`]: the body of one frame.
    Body,
    /// [`crate::MAX_FDS`]: fds carried by one frame.
    Fds,
    /// [`crate::MAX_ARGS`]: argv entries.
    Args,
    /// [`crate::MAX_ENV`]: environment entries.
    Env,
    /// [`crate::MAX_ARG_LEN`]: one argv or `KEY=VALUE` string.
    ArgLen,
    /// [`crate::MAX_PATH_LEN`]: the program path or the working directory.
    PathLen,
    /// [`crate::MAX_ENTRY_NAME_LEN`]: an entry-point name.
    EntryName,
    /// [`crate::MAX_ERROR_MESSAGE_LEN`]: an error reply's message.
    ErrorMessage,
    /// [`crate::MAX_VERSION_STRING_LEN`]: the server version string.
    VersionString,
    /// [`crate::MAX_TARGET_FD`]: a target fd number.
    TargetFd,
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
            Self::TooManyFds(n) => {
                write!(f, "{n} fds announced, at most {} allowed", crate::MAX_FDS)
            }
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
            Self::LimitExceeded(l) => write!(f, "limit exceeded: {l:?}"),
            Self::InvalidValue(field) => write!(f, "invalid value in field {field:?}"),
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
    LimitExceeded(Limit),
    /// A field holds a value the spec does not allow.
    InvalidValue(Field),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooManyFds(n) => {
                write!(
                    f,
                    "{n} fds in one bundle, at most {} allowed",
                    crate::MAX_FDS
                )
            }
            Self::FdCountMismatch { targets, fds } => {
                write!(f, "{fds} fds for an fd map of {targets} targets")
            }
            Self::DuplicateTarget(t) => write!(f, "target fd {t} given twice"),
            Self::LimitExceeded(l) => write!(f, "limit exceeded: {l:?}"),
            Self::InvalidValue(field) => write!(f, "invalid value in field {field:?}"),
        }
    }
}

impl std::error::Error for BuildError {}
