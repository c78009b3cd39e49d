//! [`Limit`]: the bounded quantities of the protocol (PROTOCOL.md §3), named by the
//! `LimitExceeded` errors.

use core::fmt;

/// A bounded quantity of the protocol; names the limit a [`DecodeError::LimitExceeded`](super::DecodeError::LimitExceeded) or a
/// [`BuildError::LimitExceeded`](super::BuildError::LimitExceeded) refers to.
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
    /// [`crate::MAX_GROUPS`]: supplementary groups of a spawn.
    Groups,
    /// [`crate::MAX_RLIMITS`]: resource limits of a spawn.
    Rlimits,
}

impl Limit {
    /// The limit's value (PROTOCOL.md §3).
    pub fn max(&self) -> usize {
        match self {
            Self::Body => crate::MAX_BODY_LEN,
            Self::Fds => crate::MAX_FDS,
            Self::Args => crate::MAX_ARGS,
            Self::Env => crate::MAX_ENV,
            Self::ArgLen => crate::MAX_ARG_LEN,
            Self::PathLen => crate::MAX_PATH_LEN,
            Self::EntryName => crate::MAX_ENTRY_NAME_LEN,
            Self::ErrorMessage => crate::MAX_ERROR_MESSAGE_LEN,
            Self::VersionString => crate::MAX_VERSION_STRING_LEN,
            Self::TargetFd => crate::MAX_TARGET_FD as usize,
            Self::Groups => crate::MAX_GROUPS,
            Self::Rlimits => crate::MAX_RLIMITS,
        }
    }

    /// What the limit counts, as a plural noun phrase ("arguments").
    pub fn counts(&self) -> &'static str {
        match self {
            Self::Body => "body bytes",
            Self::Fds => "fds",
            Self::Args => "arguments",
            Self::Env => "environment entries (or removals)",
            Self::ArgLen => "bytes in one argument or KEY=VALUE string",
            Self::PathLen => "bytes in a path",
            Self::EntryName => "bytes in an entry-point name",
            Self::ErrorMessage => "bytes in an error message",
            Self::VersionString => "bytes in a version string",
            Self::TargetFd => "as a target fd number",
            Self::Groups => "supplementary groups",
            Self::Rlimits => "resource limits",
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at most {} {}", self.max(), self.counts())
    }
}
