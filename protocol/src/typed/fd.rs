//! [`Fd`]: a file descriptor inside a typed argument or result. It serializes as an index into
//! the fds that travel beside the encoded bytes (PROTOCOL.md §11.4); the table is set up by
//! [`crate::typed::encode`] and [`crate::typed::decode`] for the thread that runs them.

use std::cell::RefCell;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use serde::{de, ser, Deserialize, Deserializer, Serialize, Serializer};

thread_local! {
    /// While encoding: the duplicates of the fds serialized so far.
    static SINK: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
    /// While decoding: the fds that came with the bytes, each taken at most once.
    static SOURCE: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
}

/// An owned fd that can be part of a typed call's argument or result.
#[derive(Debug)]
pub struct Fd(OwnedFd);

impl Fd {
    /// The fd inside.
    pub fn into_owned(self) -> OwnedFd {
        self.0
    }
}

impl From<OwnedFd> for Fd {
    fn from(fd: OwnedFd) -> Self {
        Fd(fd)
    }
}

impl From<Fd> for OwnedFd {
    fn from(fd: Fd) -> Self {
        fd.0
    }
}

impl From<std::fs::File> for Fd {
    fn from(f: std::fs::File) -> Self {
        Fd(f.into())
    }
}

impl From<Fd> for std::fs::File {
    fn from(fd: Fd) -> Self {
        std::fs::File::from(fd.0)
    }
}

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl AsFd for Fd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Serialize for Fd {
    /// Serializes as its index (a `u32`); a duplicate of the fd joins the table. Fails outside
    /// [`crate::typed::encode`].
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let dup = self.0.try_clone().map_err(ser::Error::custom)?;
        let index = SINK.with(|sink| {
            let mut sink = sink.borrow_mut();
            let fds = sink.as_mut()?;
            fds.push(dup);
            u32::try_from(fds.len() - 1).ok()
        });
        match index {
            Some(i) => s.serialize_u32(i),
            None => Err(ser::Error::custom("an Fd serialized outside a typed call")),
        }
    }
}

impl<'de> Deserialize<'de> for Fd {
    /// Takes the fd at the decoded index; an index out of range or taken before is an error.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let index = u32::deserialize(d)? as usize;
        SOURCE
            .with(|src| {
                src.borrow_mut()
                    .as_mut()
                    .and_then(|fds| fds.get_mut(index))
                    .and_then(Option::take)
            })
            .map(Fd)
            .ok_or_else(|| de::Error::custom(format!("no fd at index {index}")))
    }
}

/// Runs `f` with an empty fd table for encoding; returns its result and the table.
pub(crate) fn collecting<T>(f: impl FnOnce() -> T) -> (T, Vec<OwnedFd>) {
    let outer = SINK.with(|s| s.borrow_mut().replace(Vec::new()));
    let out = f();
    let fds = SINK.with(|s| std::mem::replace(&mut *s.borrow_mut(), outer));
    (out, fds.unwrap_or_default())
}

/// Runs `f` with `fds` as the table for decoding; the fds it did not take are closed.
pub(crate) fn providing<T>(fds: Vec<OwnedFd>, f: impl FnOnce() -> T) -> T {
    let table = fds.into_iter().map(Some).collect();
    let outer = SOURCE.with(|s| s.borrow_mut().replace(table));
    let out = f();
    SOURCE.with(|s| *s.borrow_mut() = outer);
    out
}
