//! [`ChildStdin`], [`ChildStdout`], [`ChildStderr`]: the parent's ends of a child's piped
//! stdio, as `std::process` has them. Each wraps the pipe's [`File`]: it reads or writes,
//! lends its fd, and gives it up as an [`OwnedFd`] or a [`Stdio`] for another child.

use std::fmt;
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};

use crate::stdio::Stdio;

macro_rules! pipe_end {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub struct $name {
            inner: File,
        }

        impl $name {
            pub(crate) fn new(inner: File) -> Self {
                Self { inner }
            }

            // Used by `AsyncChild` (feature `tokio`) and by `wait_with_output` for the readers.
            #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
            pub(crate) fn into_file(self) -> File {
                self.inner
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("fd", &self.inner.as_raw_fd())
                    .finish()
            }
        }

        impl AsFd for $name {
            fn as_fd(&self) -> BorrowedFd<'_> {
                self.inner.as_fd()
            }
        }

        impl AsRawFd for $name {
            fn as_raw_fd(&self) -> RawFd {
                self.inner.as_raw_fd()
            }
        }

        impl IntoRawFd for $name {
            fn into_raw_fd(self) -> RawFd {
                self.inner.into_raw_fd()
            }
        }

        impl From<$name> for OwnedFd {
            fn from(p: $name) -> OwnedFd {
                p.inner.into()
            }
        }

        impl From<OwnedFd> for $name {
            /// Wraps an fd that is expected to be a pipe end (as std's does; not checked).
            fn from(fd: OwnedFd) -> Self {
                Self::new(fd.into())
            }
        }

        impl From<$name> for Stdio {
            /// Hands the pipe to another child, as `std::process::Stdio: From<ChildStdout>`.
            fn from(p: $name) -> Stdio {
                Stdio::from(p.inner)
            }
        }
    };
}

macro_rules! readable {
    ($name:ident) => {
        impl Read for $name {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.inner.read(buf)
            }

            fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
                self.inner.read_vectored(bufs)
            }

            fn read_to_end(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
                self.inner.read_to_end(buf)
            }
        }
    };
}

pipe_end!(
    /// The parent's end of a child's piped stdin ([`Stdio::piped`]): [`Write`] to it; drop it
    /// (or [`crate::Child::wait`]) to give the child end-of-file.
    ChildStdin
);
pipe_end!(
    /// The parent's end of a child's piped stdout: [`Read`] from it.
    ChildStdout
);
pipe_end!(
    /// The parent's end of a child's piped stderr: [`Read`] from it.
    ChildStderr
);
readable!(ChildStdout);
readable!(ChildStderr);

impl Write for ChildStdin {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.inner.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stdio::Stream;

    #[test]
    fn the_ends_read_write_and_give_up_their_fd() {
        let (child, parent) = Stdio::piped().materialize(Stream::Stdin).unwrap();
        let mut stdin = ChildStdin::new(parent.unwrap());
        stdin.write_all(b"hi").unwrap();
        let raw = stdin.as_raw_fd();
        assert!(format!("{stdin:?}").contains(&format!("fd: {raw}")));
        let fd: OwnedFd = stdin.into();
        assert_eq!(fd.as_raw_fd(), raw);
        drop(fd);
        let mut out = ChildStdout::from(child.unwrap());
        let mut got = String::new();
        out.read_to_string(&mut got).unwrap();
        assert_eq!(got, "hi");
    }
}
