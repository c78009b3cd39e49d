//! The launched server's binary, held open from the first launch so that every relaunch execs
//! that same file, not whatever is at its path by then (a package upgrade that renamed a new
//! build over it, a deleted file): new code never ends up behind old typed calls.
//!
//! The file is opened once, close-on-exec, and exec'd through its `/proc/self/fd/N` link (what
//! `fexecve(3)` does; `std::process::Command`, which sets up the launch, takes a path): the
//! kernel resolves the link to the open file, deleted or not, before the exec closes the fd,
//! so the server never holds it. The server's `argv[0]` stays the program as given; its
//! `/proc/<pid>/comm` is the fd number, as with `execveat(fd, "", AT_EMPTY_PATH)`.
//!
//! Not pinned, exec'd by path as before: an interpreter script (`#!`: the interpreter opens
//! the script by the path it is given, and the fd is closed by then) and a system without
//! `/proc`.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::libc;

/// The search path `execvp(3)` uses when `PATH` is unset.
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// A server binary held open: what a launch execs.
#[derive(Debug)]
pub(crate) struct Pinned {
    /// Close-on-exec: no child of this process inherits it.
    file: File,
}

impl Pinned {
    /// Opens the file that starting `program` would exec: `program` itself if it holds a `/`
    /// (relative to the current directory now, not at a relaunch), else the first executable
    /// file of that name in `path_var` (the server's `PATH`), as `execvp(3)` searches.
    /// `Ok(None)` for a file that cannot be pinned (see the module doc): it is started by path.
    ///
    /// # Errors
    /// `NotFound` if there is no such program; the error of opening it.
    pub(crate) fn open(program: &OsStr, path_var: Option<&OsStr>) -> io::Result<Option<Pinned>> {
        let file = match program.as_bytes().contains(&b'/') {
            true => open_program(Path::new(program))?,
            false => search(program, path_var.unwrap_or(OsStr::new(DEFAULT_PATH)))?,
        };
        let meta = file.metadata()?;
        if !meta.is_file() {
            // Not an executable file: starting it by path fails with its own error.
            return Ok(None);
        }
        let mut magic = [0u8; 2];
        // An exec-only file opened with O_PATH cannot be read: a binary, then.
        if file.read_at(&mut magic, 0).is_ok_and(|n| n == 2) && magic == *b"#!" {
            tracing::debug!(program = ?program, "an interpreter script: started by path");
            return Ok(None);
        }
        let pinned = Pinned { file };
        match std::fs::metadata(pinned.exec_path()) {
            Ok(m) if (m.dev(), m.ino()) == (meta.dev(), meta.ino()) => Ok(Some(pinned)),
            _ => {
                tracing::debug!(program = ?program, "no /proc/self/fd: started by path");
                Ok(None)
            }
        }
    }

    /// The path to exec to start the pinned file: `/proc/self/fd/N`, valid in this process
    /// and in a child forked from it, until its exec closes the fd.
    pub(crate) fn exec_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// Opens `path` to exec it later: for reading (so that a script can be told apart), or, for an
/// executable file we may not read, as a path only. Close-on-exec either way (std's default);
/// `O_NONBLOCK` so that a FIFO at that path does not block the open.
fn open_program(path: &Path) -> io::Result<File> {
    let open = |flags| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(path)
    };
    match open(libc::O_NONBLOCK) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => open(libc::O_PATH),
        r => r,
    }
}

/// The first file named `name` in the `:`-separated `path_var` that we may execute (an empty
/// entry is the current directory), opened.
fn search(name: &OsStr, path_var: &OsStr) -> io::Result<File> {
    for dir in path_var.as_bytes().split(|&b| b == b':') {
        let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
        let candidate = Path::new(OsStr::from_bytes(dir)).join(name);
        if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok()
            && candidate.is_file()
        {
            return open_program(&candidate);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found in PATH", Path::new(name).display()),
    ))
}

#[cfg(test)]
mod tests {
    use std::ffi::{OsStr, OsString};
    use std::io;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::PathBuf;

    use nix::libc;

    use super::Pinned;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("forkserver-pin-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn a_binary_in_path_is_pinned_to_its_file() {
        let dir = scratch("path");
        std::fs::copy("/bin/sh", dir.join("fs-pin-test-sh")).unwrap();
        let path = OsString::from(format!("/nonexistent:{}", dir.display()));
        let pin = Pinned::open(OsStr::new("fs-pin-test-sh"), Some(&path))
            .unwrap()
            .expect("an ELF binary is pinned");
        let before = std::fs::metadata(dir.join("fs-pin-test-sh")).unwrap();
        std::fs::remove_file(dir.join("fs-pin-test-sh")).unwrap();
        // Deleted, the file is still reachable through the fd, which is close-on-exec.
        let now = std::fs::metadata(pin.exec_path()).unwrap();
        assert_eq!((now.dev(), now.ino()), (before.dev(), before.ino()));
        let flags = nix::fcntl::fcntl(&pin.file, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
        let out = std::process::Command::new(pin.exec_path())
            .args(["-c", "echo pinned"])
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"pinned\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_script_is_not_pinned_and_a_missing_program_is_not_found() {
        let dir = scratch("script");
        let script = dir.join("script");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(Pinned::open(script.as_os_str(), None).unwrap().is_none());
        let missing = Pinned::open(OsStr::new("fs-no-such-program"), Some(dir.as_os_str()));
        assert_eq!(missing.unwrap_err().kind(), io::ErrorKind::NotFound);
        let missing = Pinned::open(dir.join("nothing").as_os_str(), None);
        assert_eq!(missing.unwrap_err().kind(), io::ErrorKind::NotFound);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
