//! Reading the authentication key (PROTOCOL.md §9.1): from a launcher's pipe ([`read_key`]) or
//! from a key file that must be private to the server's user ([`read_key_file`]).
//!
//! The key is read in place into one buffer of its final capacity: no growing `Vec` leaves
//! freed copies on the heap, and no probe buffer leaves one on the stack, so the server's
//! `Config::key` (moved, not copied, into the server's `spawn::ForkContext` when it binds) is
//! the only copy in memory, which the children that run the server's code zero after `fork`
//! (`ForkContext::zero_key`).

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{LaunchError, ServerError};

/// The shortest key accepted (PROTOCOL.md §9.1).
const MIN_KEY_LEN: usize = 16;
/// The longest key accepted (PROTOCOL.md §9.1).
const MAX_KEY_LEN: usize = 1024;

/// Reads a key until EOF: at least 16 and at most 1024 bytes.
///
/// # Errors
/// [`ServerError::Launch`] when it cannot be read ([`LaunchError::ReadKey`]) or has a bad
/// length ([`LaunchError::KeyLength`]).
pub fn read_key(from: impl Read) -> Result<Vec<u8>, ServerError> {
    read_bounded(from)
        .map_err(|e| ServerError::Launch(LaunchError::ReadKey(e)))?
        .map_err(|len| {
            ServerError::Launch(LaunchError::KeyLength {
                len,
                allowed: MIN_KEY_LEN..=MAX_KEY_LEN,
            })
        })
}

/// Reads the key file `path` (16 to 1024 raw bytes), refusing it unless it is owned by the
/// server's effective uid and grants no access to group or others (as sshd's `StrictModes`
/// does for its keys). A symbolic link is followed; the owner and mode checked are those of
/// the file opened (`fstat` on its descriptor), so the file cannot be swapped between the
/// check and the read.
///
/// # Errors
/// [`ServerError::InsecureKeyFile`] for a file of another owner, or one open to group or
/// others; [`ServerError::Io`] (naming the path) when it cannot be opened or read;
/// [`ServerError::KeyFileLength`] when its length is out of bounds.
pub fn read_key_file(path: &Path) -> Result<Vec<u8>, ServerError> {
    let io = |error| ServerError::Io {
        op: "reading the key file",
        path: path.to_owned(),
        error,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid || meta.mode() & 0o077 != 0 {
        return Err(ServerError::InsecureKeyFile {
            path: path.to_path_buf(),
            owner: meta.uid(),
            mode: meta.mode() & 0o7777,
            euid,
        });
    }
    read_bounded(file)
        .map_err(io)?
        .map_err(|len| ServerError::KeyFileLength {
            path: path.to_owned(),
            len,
            allowed: MIN_KEY_LEN..=MAX_KEY_LEN,
        })
}

/// Reads up to EOF into a buffer allocated once: the key, or `Err(length)` when its length is
/// out of bounds (longer keys are cut at `MAX_KEY_LEN + 1`). A buffer not returned is zeroed.
fn read_bounded(mut from: impl Read) -> std::io::Result<Result<Vec<u8>, usize>> {
    let mut key = vec![0u8; MAX_KEY_LEN + 1];
    let mut n = 0;
    while n < key.len() {
        match from.read(&mut key[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                key.fill(0);
                return Err(e);
            }
        }
    }
    if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&n) {
        key.fill(0);
        return Ok(Err(n.min(MAX_KEY_LEN + 1)));
    }
    key.truncate(n);
    Ok(Ok(key))
}
