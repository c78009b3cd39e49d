//! A large argument's sealed memfd (PROTOCOL.md §11.8), both ends: the client writes the
//! encoded argument into a memfd and seals it; the entry child checks the seals and the size
//! before it maps it, so a file that could change under it (or is no memfd) is refused.

use std::ffi::c_void;
use std::io::Write;
use std::num::NonZeroUsize;
use std::ops::Deref;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use nix::sys::stat::fstat;

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
    let mut file = unsealed_memfd()?;
    file.write_all(bytes)?;
    seal(file)
}

/// A new, empty, close-on-exec memfd ([`MEMFD_NAME`]) that takes seals.
pub(crate) fn unsealed_memfd() -> Result<std::fs::File, MemfdError> {
    let flags = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
    let fd = memfd_create(MEMFD_NAME, flags).map_err(MemfdError::Io)?;
    Ok(fd.into())
}

/// Seals `file` (a memfd written in full) with [`REQUIRED_SEALS`] and `F_SEAL_SEAL`.
pub(crate) fn seal(file: std::fs::File) -> Result<OwnedFd, MemfdError> {
    let seals = REQUIRED_SEALS | SealFlag::F_SEAL_SEAL;
    fcntl(&file, FcntlArg::F_ADD_SEALS(seals)).map_err(MemfdError::Io)?;
    Ok(file.into())
}

/// Reads the argument of `arg` from its memfd `fd`, which it closes: the bytes of
/// [`map_sealed_arg`] (same checks, same errors), copied into a `Vec`.
///
/// # Errors
/// As [`map_sealed_arg`].
pub fn read_sealed_arg(fd: OwnedFd, arg: MemfdArg) -> Result<Vec<u8>, MemfdError> {
    map_sealed_arg(fd, arg).map(|m| m.to_vec())
}

/// Maps the argument of `arg` from its memfd `fd` read-only, and closes `fd`: first checks
/// that `fd` is a memfd with [`REQUIRED_SEALS`] and exactly `arg.len()` bytes (bounded by the
/// header's [`MAX_MEMFD_ARG_LEN`]), so the mapped bytes can neither change nor be cut short
/// (no `SIGBUS`) while they are read. No byte is copied: an entry child decodes straight from
/// the mapping, which goes when the [`SealedArg`] does.
///
/// # Errors
/// [`MemfdError::NotMemfd`], [`MemfdError::NotSealed`], [`MemfdError::Size`], or the
/// failing call's errno (`mmap(2)` included).
#[allow(unsafe_code)]
pub fn map_sealed_arg(fd: OwnedFd, arg: MemfdArg) -> Result<SealedArg, MemfdError> {
    let seals = match fcntl(&fd, FcntlArg::F_GET_SEALS) {
        Ok(bits) => bits,
        Err(Errno::EINVAL) => return Err(MemfdError::NotMemfd),
        Err(e) => return Err(MemfdError::Io(e)),
    };
    if !SealFlag::from_bits_truncate(seals).contains(REQUIRED_SEALS) {
        return Err(MemfdError::NotSealed(seals));
    }
    let size = fstat(&fd).map_err(MemfdError::Io)?.st_size as u64;
    if size != arg.len() {
        return Err(MemfdError::Size {
            size,
            len: arg.len(),
        });
    }
    // The header bounds the length (MemfdArg::new, at most 1 GiB): it fits a usize.
    let Some(len) = NonZeroUsize::new(size as usize) else {
        return Ok(SealedArg { map: None });
    };
    // MAP_POPULATE: the page tables are filled in one call, not one fault per page read.
    let flags = MapFlags::MAP_SHARED | MapFlags::MAP_POPULATE;
    // SAFETY: a new read-only mapping at an address the kernel picks aliases no Rust memory.
    // The seals checked above (no write, growth or shrinking, for every holder of the file)
    // fix its `len` bytes for the mapping's life, so reading them is sound and never faults.
    let ptr = unsafe { mmap(None, len, ProtFlags::PROT_READ, flags, &fd, 0) };
    let ptr = ptr.map_err(MemfdError::Io)?;
    Ok(SealedArg {
        map: Some((ptr, len)),
    })
}

/// The bytes of a sealed argument memfd, mapped read-only by [`map_sealed_arg`]; unmapped on
/// drop. An empty argument maps nothing.
#[derive(Debug)]
pub struct SealedArg {
    map: Option<(NonNull<c_void>, NonZeroUsize)>,
}

#[allow(unsafe_code)]
impl Deref for SealedArg {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self.map {
            // SAFETY: `ptr` maps `len` readable bytes (map_sealed_arg), which the seals keep
            // unchanged, until drop unmaps them; the borrow of `self` outlives this slice.
            Some((ptr, len)) => unsafe {
                std::slice::from_raw_parts(ptr.as_ptr().cast::<u8>(), len.get())
            },
            None => &[],
        }
    }
}

#[allow(unsafe_code)]
impl Drop for SealedArg {
    fn drop(&mut self) {
        if let Some((ptr, len)) = self.map.take() {
            // SAFETY: this mapping is ours alone (made by map_sealed_arg), and no slice of it
            // outlives `self`.
            let _ = unsafe { munmap(ptr, len.get()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::REQUIRED_SEALS;
    use super::{map_sealed_arg, read_sealed_arg, sealed_arg, MemfdError, MEMFD_NAME};
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
        let mapped = map_sealed_arg(fd.try_clone().unwrap(), arg).unwrap();
        assert_eq!(&*mapped, &data[..]);
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

    #[test]
    fn an_empty_argument_maps_to_no_bytes_and_a_wrong_size_is_refused_before_mapping() {
        let empty = MemfdArg::new(9, 0).unwrap();
        let mapped = map_sealed_arg(sealed_arg(&[]).unwrap(), empty).unwrap();
        assert!(mapped.is_empty());
        // An empty memfd where the header says 4096 bytes: a mapping would fault on read.
        let r = map_sealed_arg(sealed_arg(&[]).unwrap(), MemfdArg::new(9, 4096).unwrap());
        assert_eq!(r.unwrap_err(), MemfdError::Size { size: 0, len: 4096 });
        let r = map_sealed_arg(sealed_arg(&[1; 10]).unwrap(), empty);
        assert_eq!(r.unwrap_err(), MemfdError::Size { size: 10, len: 0 });
    }
}
