//! A large argument's sealed memfd (PROTOCOL.md §11.8), both ends: the client writes the
//! encoded argument into a memfd and seals it; the entry child checks the seals and the size
//! before it reads a byte, so a file that could change under it (or is no memfd) is refused.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};

use super::header::{MemfdArg, MAX_MEMFD_ARG_LEN};

/// The name the reference client gives an argument's memfd (it shows in `/proc/<pid>/fd`).
pub const MEMFD_NAME: &str = "forkserver-typed-arg";

/// The seals an entry child requires on an argument's memfd (§11.8): no write, no growth, no
/// shrinking. `F_SEAL_FUTURE_WRITE` is not enough (mappings made before it may still write).
pub const REQUIRED_SEALS: SealFlag = SealFlag::F_SEAL_WRITE
    .union(SealFlag::F_SEAL_GROW)
    .union(SealFlag::F_SEAL_SHRINK);

/// Why an argument's memfd was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MemfdError {
    /// A system call failed.
    #[error("argument memfd: {0}")]
    Io(Errno),
    /// The fd takes no seals (`F_GET_SEALS` fails with `EINVAL`): not a memfd.
    #[error("argument memfd: the fd is not a memfd")]
    NotMemfd,
    /// Some of [`REQUIRED_SEALS`] are missing: its bytes could change while they are read.
    #[error("argument memfd: not sealed against writes, growth and shrinking (seals {0:#x})")]
    NotSealed(i32),
    /// Its size is not the length the header gives.
    #[error("argument memfd: {size} bytes where the header says {len}")]
    Size {
        /// The memfd's size (`fstat`).
        size: u64,
        /// The header's length.
        len: u64,
    },
    /// More bytes than [`MAX_MEMFD_ARG_LEN`].
    #[error("argument of {0} bytes, a memfd holds at most {MAX_MEMFD_ARG_LEN}")]
    TooLong(u64),
}

impl From<std::io::Error> for MemfdError {
    fn from(e: std::io::Error) -> Self {
        MemfdError::Io(e.raw_os_error().map_or(Errno::EIO, Errno::from_raw))
    }
}

/// A close-on-exec memfd ([`MEMFD_NAME`]) holding `bytes`, sealed with [`REQUIRED_SEALS`] and
/// `F_SEAL_SEAL`: what a client sends in the bundle for an argument of §11.8.
///
/// # Errors
/// [`MemfdError::TooLong`] over [`MAX_MEMFD_ARG_LEN`]; what `memfd_create(2)`, `write(2)` or
/// `fcntl(F_ADD_SEALS)` report.
pub fn sealed_arg(bytes: &[u8]) -> Result<OwnedFd, MemfdError> {
    let len = bytes.len() as u64;
    if len > MAX_MEMFD_ARG_LEN {
        return Err(MemfdError::TooLong(len));
    }
    let fd = memfd_create(
        MEMFD_NAME,
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(MemfdError::Io)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    let seals = REQUIRED_SEALS | SealFlag::F_SEAL_SEAL;
    fcntl(&file, FcntlArg::F_ADD_SEALS(seals)).map_err(MemfdError::Io)?;
    Ok(file.into())
}

/// Reads the argument of `arg` from its memfd `fd`, which it closes: first checks that `fd`
/// is a memfd with [`REQUIRED_SEALS`] and exactly `arg.len()` bytes (bounded by the header's
/// [`MAX_MEMFD_ARG_LEN`]), so nothing it reads can change or be cut short.
///
/// # Errors
/// [`MemfdError::NotMemfd`], [`MemfdError::NotSealed`], [`MemfdError::Size`], or the
/// failing call's errno.
pub fn read_sealed_arg(fd: OwnedFd, arg: MemfdArg) -> Result<Vec<u8>, MemfdError> {
    let file = std::fs::File::from(fd);
    let seals = match fcntl(&file, FcntlArg::F_GET_SEALS) {
        Ok(bits) => bits,
        Err(Errno::EINVAL) => return Err(MemfdError::NotMemfd),
        Err(e) => return Err(MemfdError::Io(e)),
    };
    if !SealFlag::from_bits_truncate(seals).contains(REQUIRED_SEALS) {
        return Err(MemfdError::NotSealed(seals));
    }
    let size = file.metadata()?.len();
    if size != arg.len() {
        return Err(MemfdError::Size {
            size,
            len: arg.len(),
        });
    }
    // The header bounds the length (MemfdArg::new), and the seals fix the size checked above.
    let mut bytes = vec![0u8; size as usize];
    file.read_exact_at(&mut bytes, 0)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::{read_sealed_arg, sealed_arg, MemfdError, MEMFD_NAME, REQUIRED_SEALS};
    use crate::typed::MemfdArg;
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MFdFlags};
    use std::io::Write;

    #[test]
    fn a_sealed_memfd_reads_back_and_cannot_change() {
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let fd = sealed_arg(&data).unwrap();
        let mut f = std::fs::File::from(fd.try_clone().unwrap());
        assert!(f.write_all(b"x").is_err(), "sealed against writes");
        assert!(f.set_len(1).is_err(), "sealed against shrinking");
        let seals = fcntl(&f, FcntlArg::F_GET_SEALS).unwrap();
        assert!(
            SealFlag::from_bits_truncate(seals).contains(REQUIRED_SEALS | SealFlag::F_SEAL_SEAL)
        );
        let arg = MemfdArg::new(9, data.len() as u64).unwrap();
        assert_eq!(read_sealed_arg(fd.try_clone().unwrap(), arg).unwrap(), data);
        let wrong = MemfdArg::new(9, 5).unwrap();
        assert_eq!(
            read_sealed_arg(fd, wrong),
            Err(MemfdError::Size {
                size: data.len() as u64,
                len: 5
            })
        );
    }

    #[test]
    fn unsealed_or_partly_sealed_memfds_and_other_files_are_refused() {
        let arg = MemfdArg::new(9, 3).unwrap();
        let flags = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
        for seals in [
            SealFlag::empty(),
            SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK,
            SealFlag::F_SEAL_FUTURE_WRITE | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK,
        ] {
            let mut f = std::fs::File::from(memfd_create(MEMFD_NAME, flags).unwrap());
            f.write_all(b"abc").unwrap();
            fcntl(&f, FcntlArg::F_ADD_SEALS(seals)).unwrap();
            let r = read_sealed_arg(f.into(), arg);
            assert!(
                matches!(r, Err(MemfdError::NotSealed(_))),
                "{seals:?}: {r:?}"
            );
        }
        let null = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(read_sealed_arg(null.into(), arg), Err(MemfdError::NotMemfd));
    }
}
