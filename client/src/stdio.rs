//! [`Stdio`]: what a child's fd 0, 1 or 2 is connected to.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::OFlag;

/// What one of a child's standard streams (fd 0, 1 or 2) is, as [`std::process::Stdio`].
///
/// The child is forked by the server, not by this process, so every choice is turned into an fd
/// that travels to the server with the request.
#[derive(Debug)]
pub struct Stdio(Kind);

#[derive(Debug)]
enum Kind {
    Inherit,
    Null,
    Piped,
    Fd(OwnedFd),
}

/// Which standard stream a [`Stdio`] is for: decides the direction of a pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdin,
    Stdout,
    Stderr,
}

impl Stream {
    pub(crate) const ALL: [Stream; 3] = [Stream::Stdin, Stream::Stdout, Stream::Stderr];

    /// The fd number in the child.
    pub(crate) fn target(self) -> u32 {
        self as u32
    }
}

impl Stdio {
    /// The child gets this process's own fd 0, 1 or 2 (duplicated and sent to the server).
    /// The default for [`crate::Command`]. If this process has that fd closed, nothing is sent
    /// and the server gives the child `/dev/null`.
    pub fn inherit() -> Self {
        Self(Kind::Inherit)
    }

    /// The child gets `/dev/null`.
    pub fn null() -> Self {
        Self(Kind::Null)
    }

    /// A new pipe: the child gets one end, and [`crate::Child`] exposes the other as
    /// `stdin`, `stdout` or `stderr`.
    pub fn piped() -> Self {
        Self(Kind::Piped)
    }

    /// Makes the fd for the child; for a pipe, also the parent's end.
    ///
    /// `Ok((None, None))` means "send nothing" (inherit of a closed fd).
    pub(crate) fn materialize(
        &self,
        stream: Stream,
    ) -> io::Result<(Option<OwnedFd>, Option<File>)> {
        match &self.0 {
            Kind::Inherit => {
                let own = match stream {
                    Stream::Stdin => io::stdin().as_fd().try_clone_to_owned(),
                    Stream::Stdout => io::stdout().as_fd().try_clone_to_owned(),
                    Stream::Stderr => io::stderr().as_fd().try_clone_to_owned(),
                };
                match own {
                    Ok(fd) => Ok((Some(fd), None)),
                    Err(e) if e.raw_os_error() == Some(nix::libc::EBADF) => Ok((None, None)),
                    Err(e) => Err(e),
                }
            }
            Kind::Null => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/null")?;
                Ok((Some(f.into()), None))
            }
            Kind::Piped => {
                let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
                Ok(match stream {
                    Stream::Stdin => (Some(r), Some(File::from(w))),
                    Stream::Stdout | Stream::Stderr => (Some(w), Some(File::from(r))),
                })
            }
            // Duplicated, so that the builder can spawn again with the same fd.
            Kind::Fd(fd) => Ok((Some(fd.try_clone()?), None)),
        }
    }
}

impl From<OwnedFd> for Stdio {
    /// The child gets this fd (a duplicate of it is sent with each spawn; the builder closes
    /// the original when dropped, as `std::process::Command` does).
    fn from(fd: OwnedFd) -> Self {
        Self(Kind::Fd(fd))
    }
}

impl From<File> for Stdio {
    /// The child gets this file, as with [`From<OwnedFd>`].
    fn from(f: File) -> Self {
        Self(Kind::Fd(f.into()))
    }
}

impl From<std::os::unix::net::UnixStream> for Stdio {
    /// The child gets this socket, as with [`From<OwnedFd>`].
    fn from(s: std::os::unix::net::UnixStream) -> Self {
        Self(Kind::Fd(s.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn piped_directions() {
        let (child, mut parent) = Stdio::piped().materialize(Stream::Stdout).unwrap();
        let mut child_end = File::from(child.unwrap());
        child_end.write_all(b"hi").unwrap();
        drop(child_end);
        let mut got = String::new();
        parent.as_mut().unwrap().read_to_string(&mut got).unwrap();
        assert_eq!(got, "hi");

        let (child, parent) = Stdio::piped().materialize(Stream::Stdin).unwrap();
        parent.unwrap().write_all(b"x").unwrap();
        let mut buf = [0u8; 1];
        File::from(child.unwrap()).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"x");
    }

    #[test]
    fn fd_is_duplicated_each_time() {
        let s = Stdio::from(File::open("/dev/null").unwrap());
        let (a, _) = s.materialize(Stream::Stdin).unwrap();
        let (b, _) = s.materialize(Stream::Stdin).unwrap();
        assert!(a.is_some() && b.is_some());
    }
}
