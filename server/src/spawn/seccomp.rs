//! The seccomp program of a `SECCOMP_FILTER` request (PROTOCOL.md §5.5.1, §6.5, rev 0.6): read
//! by the server from its bundle entry before the child is made ([`SeccompProgram::read`]),
//! so that a bad program is refused with a reply that says what is wrong and no child exists;
//! installed by the child as its last step ([`SeccompProgram::install`]: one raw system call
//! on memory read before the fork or the `CLONE_VM` clone). The server never parses the
//! program: the kernel checks it when the child installs it.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd};

use forkserver_protocol::{FdBundle, SpawnOptions, MAX_SECCOMP_INSNS};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::libc;
use nix::sys::stat::{fstat, SFlag};

use super::raw;

/// The size of one classic-BPF instruction (`struct sock_filter`).
const INSN_LEN: usize = std::mem::size_of::<libc::sock_filter>();

/// A compiled classic-BPF program of 1..=[`MAX_SECCOMP_INSNS`] instructions, as the kernel
/// takes it (`struct sock_filter`, native byte order).
pub(crate) struct SeccompProgram {
    filter: Vec<libc::sock_filter>,
}

impl fmt::Debug for SeccompProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SeccompProgram({} instructions)", self.filter.len())
    }
}

/// Why a bundle entry holds no program the server can hand to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProgramError {
    /// Not a memfd (`F_GET_SEALS` fails): a file on a disk or a network mount could block the
    /// server's loop while it is read, and a pipe or socket has no offset 0 (the reference
    /// client copies a regular file into a memfd).
    NotMemfd,
    /// The size is no whole number of instructions.
    Partial(u64),
    /// No instruction.
    Empty,
    /// More than [`MAX_SECCOMP_INSNS`] instructions.
    TooLong(u64),
    /// `fstat` or `pread` failed.
    Io(&'static str, Errno),
    /// The file shrank while it was read: this many bytes of the size `fstat` gave.
    Short(usize, usize),
}

impl ProgramError {
    /// The errno of the `Error` reply: the call's, else `EINVAL`.
    pub(crate) fn errno(self) -> Errno {
        match self {
            Self::Io(_, e) => e,
            _ => Errno::EINVAL,
        }
    }
}

impl fmt::Display for ProgramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("seccomp filter: ")?;
        match *self {
            Self::NotMemfd => f.write_str("not a memfd"),
            Self::Partial(n) => write!(
                f,
                "{n} bytes, not a multiple of {INSN_LEN} (struct sock_filter)"
            ),
            Self::Empty => f.write_str("0 instructions, at least 1"),
            Self::TooLong(n) => write!(f, "{n} instructions, at most {MAX_SECCOMP_INSNS}"),
            Self::Io(call, e) => write!(f, "{call}: {} ({e:?})", e.desc()),
            Self::Short(got, want) => write!(f, "read {got} of its {want} bytes"),
        }
    }
}

impl SeccompProgram {
    /// Reads the program in `fd`, a memfd, from offset 0 (the fd's offset is neither used nor
    /// moved): its size from `fstat`, checked before anything is read, so at most
    /// [`MAX_SECCOMP_INSNS`] instructions are ever read. Only a memfd: its pages are in memory,
    /// so no read of a client's fd can block the event loop (a file on a hung mount would).
    ///
    /// # Errors
    /// What is wrong with the entry, as [`ProgramError`] says.
    pub(crate) fn read(fd: BorrowedFd<'_>) -> Result<Self, ProgramError> {
        // F_GET_SEALS answers for memfds (and other shmem files) only, without touching the
        // file's contents; EINVAL for anything else.
        if fcntl(fd, FcntlArg::F_GET_SEALS).is_err() {
            return Err(ProgramError::NotMemfd);
        }
        let st = fstat(fd.as_fd()).map_err(|e| ProgramError::Io("fstat", e))?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(ProgramError::NotMemfd);
        }
        let size = st.st_size.max(0) as u64;
        if size % INSN_LEN as u64 != 0 {
            return Err(ProgramError::Partial(size));
        }
        let n = size / INSN_LEN as u64;
        if n == 0 {
            return Err(ProgramError::Empty);
        }
        if n > MAX_SECCOMP_INSNS as u64 {
            return Err(ProgramError::TooLong(n));
        }
        let len = size as usize;
        let mut bytes = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match nix::sys::uio::pread(fd, &mut bytes[got..], got as i64) {
                Ok(0) => return Err(ProgramError::Short(got, len)),
                Ok(k) => got += k,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(ProgramError::Io("pread", e)),
            }
        }
        Ok(Self::from_bytes(&bytes))
    }

    /// The program of a request with `options` and `bundle`: read from its `SECCOMP_FILTER`
    /// entry, `None` without the flag.
    ///
    /// # Errors
    /// As [`SeccompProgram::read`]; `EBADF` for an index past the bundle (which the decoder
    /// refuses).
    pub(crate) fn of_request(
        options: &SpawnOptions,
        bundle: &FdBundle,
    ) -> Result<Option<Self>, ProgramError> {
        let Some(i) = options.seccomp_index else {
            return Ok(None);
        };
        match bundle.iter().nth(usize::from(i)) {
            Some((_, fd)) => Self::read(fd).map(Some),
            None => Err(ProgramError::Io("the bundle entry", Errno::EBADF)),
        }
    }

    /// The instructions of `bytes`, a whole number of them.
    fn from_bytes(bytes: &[u8]) -> Self {
        let filter = bytes
            .chunks_exact(INSN_LEN)
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        Self { filter }
    }

    /// The number of instructions.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.filter.len()
    }

    /// `seccomp(SECCOMP_SET_MODE_FILTER, 0, ..)` in the child: one raw system call, no
    /// allocation (the `CLONE_VM` child may make it). Needs `no_new_privs` (set before, §6.5).
    pub(super) fn install(&self) -> Result<(), Errno> {
        raw::seccomp_set_filter(&self.filter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A memfd holding `bytes`, its offset at their end.
    fn file_of(bytes: &[u8]) -> std::fs::File {
        let fd =
            nix::sys::memfd::memfd_create("seccomp-test", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .unwrap();
        let mut f = std::fs::File::from(fd);
        f.write_all(bytes).unwrap();
        f
    }

    /// An unnamed temporary file (`O_TMPFILE`), gone when closed.
    fn tempfile_in_tmp() -> std::fs::File {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .open(std::env::temp_dir())
            .unwrap()
    }

    #[test]
    fn a_program_is_a_whole_number_of_instructions_within_the_cap() {
        let read = |bytes: &[u8]| SeccompProgram::read(file_of(bytes).as_fd()).map(|p| p.len());
        // BPF_RET | BPF_K, SECCOMP_RET_ALLOW: one instruction.
        let allow = [0x06, 0, 0, 0, 0, 0, 0xff, 0x7f];
        assert_eq!(read(&allow), Ok(1));
        assert_eq!(
            read(&allow.repeat(MAX_SECCOMP_INSNS)),
            Ok(MAX_SECCOMP_INSNS)
        );
        let too_long = allow.repeat(MAX_SECCOMP_INSNS + 4);
        assert_eq!(read(&too_long), Err(ProgramError::TooLong(4100)));
        assert_eq!(read(&[]), Err(ProgramError::Empty));
        assert_eq!(read(&allow[..5]), Err(ProgramError::Partial(5)));
        let null = std::fs::File::open("/dev/null").unwrap();
        let e = SeccompProgram::read(null.as_fd()).unwrap_err();
        assert_eq!(e, ProgramError::NotMemfd);
        // A regular file is refused too: reading it could block the server's loop.
        let mut file = tempfile_in_tmp();
        file.write_all(&allow).unwrap();
        assert_eq!(
            SeccompProgram::read(file.as_fd()).map(|p| p.len()),
            Err(ProgramError::NotMemfd)
        );
        assert_eq!(
            ProgramError::TooLong(4100).to_string(),
            "seccomp filter: 4100 instructions, at most 4096"
        );
        assert_eq!(
            ProgramError::Partial(12).to_string(),
            "seccomp filter: 12 bytes, not a multiple of 8 (struct sock_filter)"
        );
        // The fd's own offset is not where the program is read from.
        let f = file_of(&allow.repeat(2));
        assert_eq!(SeccompProgram::read(f.as_fd()).map(|p| p.len()), Ok(2));
    }
}
