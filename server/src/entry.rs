//! Entry points of a zygote server (PROTOCOL.md §5.5.2): what a child runs instead of an
//! exec, with the fds of its request placed.

use std::os::fd::{BorrowedFd, OwnedFd, RawFd};

use crate::sys;

/// An entry point: gets the call (payload and fds) and returns the exit status (0-255; other
/// values are truncated to their low 8 bits, as `exit(3)` does).
pub type EntryFn = Box<dyn Fn(Invocation) -> i32>;

/// What an entry point receives in the child.
#[derive(Debug)]
pub struct Invocation {
    /// The request's bytes in the child's copy of the server (never freed before the child
    /// exits: see `child_main`), borrowed, not copied.
    payload: &'static [u8],
    targets: Vec<u32>,
}

impl Invocation {
    pub(crate) fn new(payload: &'static [u8], targets: Vec<u32>) -> Self {
        Self { payload, targets }
    }

    /// The payload bytes of the request.
    pub fn payload(&self) -> &[u8] {
        self.payload
    }

    /// The payload, borrowed for as long as the child lives (a typed entry decodes its
    /// argument from it without a copy).
    pub(crate) fn payload_static(&self) -> &'static [u8] {
        self.payload
    }

    /// The fd numbers the bundle placed in this process, in request order.
    pub fn fd_numbers(&self) -> &[u32] {
        &self.targets
    }

    /// The fd placed at `target`, if the request mapped one there.
    #[allow(unsafe_code)]
    pub fn fd(&self, target: u32) -> Option<BorrowedFd<'_>> {
        // SAFETY: the child placed `target` from the bundle before calling the entry point,
        // and it stays open at least as long as this `Invocation`, to which the borrow's lifetime is
        // tied: only `take_fd` closes it, which takes `&mut self` and forgets the number.
        self.targets
            .contains(&target)
            .then(|| unsafe { sys::placed_fd(target) })
    }

    /// Takes ownership of the fd placed at `target` (it is closed when dropped). Not for 0, 1
    /// and 2 (`None`): closing one of those would let the next `open` become stdin, stdout or
    /// stderr under std's feet; use them through `std::io` or [`Invocation::fd`].
    #[allow(unsafe_code)]
    pub fn take_fd(&mut self, target: u32) -> Option<OwnedFd> {
        if target <= 2 {
            return None;
        }
        let i = self.targets.iter().position(|&t| t == target)?;
        self.targets.remove(i);
        // SAFETY: `target` was placed from the bundle and is owned by this call alone; it was
        // just removed from `targets`, so no other handle to it can be made.
        Some(unsafe { sys::own_fd(target as RawFd) })
    }
}
