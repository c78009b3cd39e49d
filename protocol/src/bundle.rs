//! [`FdBundle`]: the fds of a spawn request together with their targets.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::codec::FdMap;
use crate::error::BuildError;

/// Up to [`crate::MAX_FDS`] owned fds, each with the fd number it must have in the child.
///
/// The invariants of [`FdMap`] hold by construction: no 257th fd, no target twice. Dropping the
/// bundle closes its fds.
///
/// ```
/// use forkserver_protocol::FdBundle;
/// use std::os::fd::OwnedFd;
///
/// let mut bundle = FdBundle::new();
/// let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
/// bundle.push(0, null).unwrap();
/// let again: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
/// assert!(bundle.push(0, again).is_err()); // target 0 is taken; `again` is closed
/// assert_eq!(bundle.map().targets(), &[0]);
/// ```
#[derive(Debug, Default)]
pub struct FdBundle {
    map: FdMap,
    fds: Vec<OwnedFd>,
}

impl FdBundle {
    /// An empty bundle.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `fd`, to become fd number `target` in the child.
    ///
    /// # Errors
    /// [`BuildError::TooManyFds`] for a 257th fd, [`BuildError::DuplicateTarget`] for a target
    /// already in the bundle, [`BuildError::LimitExceeded`] for a target above
    /// [`crate::MAX_TARGET_FD`]. On error `fd` is closed and the bundle is unchanged.
    pub fn push(&mut self, target: u32, fd: OwnedFd) -> Result<(), BuildError> {
        self.map.push(target)?;
        self.fds.push(fd);
        Ok(())
    }

    /// Pairs a received fd map with the fds that arrived beside it.
    ///
    /// # Errors
    /// [`BuildError::FdCountMismatch`] when the counts differ (the fds are closed).
    pub fn from_parts(map: FdMap, fds: Vec<OwnedFd>) -> Result<Self, BuildError> {
        if map.len() != fds.len() {
            return Err(BuildError::FdCountMismatch {
                targets: map.len(),
                fds: fds.len(),
            });
        }
        Ok(Self { map, fds })
    }

    /// The targets, in the order the fds travel.
    pub fn map(&self) -> &FdMap {
        &self.map
    }

    /// Number of fds.
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// True when the bundle holds no fd.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// `(target, fd)` pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, BorrowedFd<'_>)> {
        self.map
            .targets()
            .iter()
            .copied()
            .zip(self.fds.iter().map(AsFd::as_fd))
    }

    /// Takes the bundle apart.
    pub fn into_parts(self) -> (FdMap, Vec<OwnedFd>) {
        (self.map, self.fds)
    }
}
