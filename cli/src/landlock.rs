//! `forkserver run --landlock-allow-write DIR`: the landlock ruleset the flag builds (rev 0.6
//! `LANDLOCK_RULESET`), made here in the client and sent as a bundle fd. It handles every
//! write right of the running kernel's landlock ABI and allows them beneath each DIR only, so
//! the command may create, change, rename or remove files there and nowhere else; reading and
//! executing are not handled (allowed everywhere), and `/dev/null` stays writable (so a
//! command's `>/dev/null` still works). Fds the command already holds (its stdio) are not
//! checked: landlock governs opening, not writing to an open fd.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::libc;

/// `WRITE_FILE`.
const WRITE_FILE: u64 = 1 << 1;
/// The write rights of landlock ABI 1: `WRITE_FILE`, `REMOVE_DIR`, `REMOVE_FILE` and every
/// `MAKE_*` (bits 1, 4-12).
const WRITE_ABI1: u64 = WRITE_FILE | (0x1FF << 4);
/// `REFER` (ABI 2: linking or renaming across directories).
const REFER: u64 = 1 << 13;
/// `TRUNCATE` (ABI 3).
const TRUNCATE: u64 = 1 << 14;
/// `LANDLOCK_CREATE_RULESET_VERSION`: ask for the ABI version.
const CREATE_RULESET_VERSION: u32 = 1;
/// `LANDLOCK_RULE_PATH_BENEATH`.
const RULE_PATH_BENEATH: u32 = 1;

/// `struct landlock_path_beneath_attr` (packed in the kernel's header).
#[repr(C, packed)]
struct PathBeneath {
    allowed_access: u64,
    parent_fd: i32,
}

/// The write rights the running kernel's landlock handles.
fn write_rights() -> Result<u64, String> {
    // SAFETY: a null attribute of size 0 with the version flag only returns the ABI.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    if abi < 1 {
        let e = std::io::Error::last_os_error();
        return Err(format!(
            "--landlock-allow-write: this kernel has no landlock ({e})"
        ));
    }
    let mut rights = WRITE_ABI1;
    if abi >= 2 {
        rights |= REFER;
    }
    if abi >= 3 {
        rights |= TRUNCATE;
    }
    Ok(rights)
}

/// A ruleset that allows writing beneath each of `dirs` only.
///
/// # Errors
/// No landlock in the kernel, a directory that cannot be opened, a refused rule: the message
/// names the flag and the directory.
pub(crate) fn allow_writes_beneath(dirs: &[impl AsRef<Path>]) -> Result<OwnedFd, String> {
    let rights = write_rights()?;
    let attr: *const u64 = &rights;
    // SAFETY: `attr` points to a `struct landlock_ruleset_attr` of its first field
    // (`handled_access_fs`, 8 bytes: the size passed), alive for the call.
    let fd = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, attr, 8usize, 0u32) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!(
            "--landlock-allow-write: landlock_create_ruleset: {e}"
        ));
    }
    // SAFETY: a new fd, owned by nothing else.
    let ruleset = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // `/dev/null` is a file: only file rights may be granted on it.
    let null = [(
        Path::new("/dev/null"),
        rights & (WRITE_FILE | TRUNCATE),
        false,
    )];
    let dirs = dirs.iter().map(|d| (d.as_ref(), rights, true));
    for (path, allowed_access, is_dir) in dirs.chain(null) {
        let name = path.display();
        let mut flags = nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC;
        if is_dir {
            flags |= nix::fcntl::OFlag::O_DIRECTORY;
        }
        let parent = nix::fcntl::open(path, flags, nix::sys::stat::Mode::empty())
            .map_err(|e| format!("--landlock-allow-write {name}: {e}"))?;
        let rule = PathBeneath {
            allowed_access,
            parent_fd: parent.as_raw_fd(),
        };
        let ptr: *const PathBeneath = &rule;
        let r = ruleset.as_raw_fd();
        // SAFETY: `ptr` points to a path-beneath rule alive for the call; the kernel reads it.
        let added =
            unsafe { libc::syscall(libc::SYS_landlock_add_rule, r, RULE_PATH_BENEATH, ptr, 0u32) };
        if added < 0 {
            let e = std::io::Error::last_os_error();
            return Err(format!(
                "--landlock-allow-write {name}: landlock_add_rule: {e}"
            ));
        }
    }
    Ok(ruleset)
}
