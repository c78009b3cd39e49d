//! Where a client's server is: at a path (a server someone else runs), or a process this
//! client launched ([`Managed`]), and what each answers about itself.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::managed::Managed;

/// Locks `m`, whether or not a thread panicked holding it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state stays consistent across a panic (each field is replaced whole).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The server of one engine.
pub(crate) enum Target {
    /// A server someone else runs, the key to authenticate with, if any, and the uid the
    /// server must run as.
    Path(PathBuf, Option<Vec<u8>>, u32),
    /// A server this client launched.
    Launched(Box<Mutex<Managed>>),
}

/// Where the server is, for a request that does not reuse a kept connection.
#[cfg(feature = "tokio")]
pub(crate) enum Located {
    /// A server at a path: its path, key, and the uid it must run as.
    Path(PathBuf, Option<Vec<u8>>, u32),
    /// The launched server, running: its path, key and generation.
    Launched(PathBuf, Option<Vec<u8>>, u64),
    /// The launched server of this generation has exited.
    Dead(u64),
}

impl Target {
    /// The path of the server's socket; for a launched server, the current one's.
    pub(crate) fn socket_path(&self) -> PathBuf {
        match self {
            Target::Path(p, ..) => p.clone(),
            Target::Launched(m) => lock(m).socket_path(),
        }
    }

    /// The pid of the launched server (the current one); `None` for a server at a path.
    pub(crate) fn launched_server_pid(&self) -> Option<u32> {
        match self {
            Target::Path(..) => None,
            Target::Launched(m) => Some(lock(m).pid()),
        }
    }

    /// The key connections authenticate with.
    pub(crate) fn auth_key(&self) -> Option<Vec<u8>> {
        match self {
            Target::Path(_, key, _) => key.clone(),
            Target::Launched(m) => lock(m).current_key().1,
        }
    }

    /// The generation of the current server (0 for a server at a path; bumped at each
    /// relaunch), without checking that it still runs.
    pub(crate) fn generation(&self) -> u64 {
        match self {
            Target::Path(..) => 0,
            Target::Launched(m) => lock(m).generation(),
        }
    }

    /// Stops a launched server for good ([`Managed::stop`]), unless another thread holds its
    /// state right now (this runs as the process exits, and must not wait for a relaunch).
    pub(crate) fn stop_launched(&self) {
        if let Target::Launched(m) = self {
            match m.try_lock() {
                Ok(mut managed) => managed.stop(),
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().stop(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
    }

    /// Where the server is; for a launched one, whether it still runs (without relaunching).
    #[cfg(feature = "tokio")]
    pub(crate) fn locate(&self) -> Located {
        match self {
            Target::Path(path, key, uid) => Located::Path(path.clone(), key.clone(), *uid),
            Target::Launched(m) => match lock(m).check_running() {
                Ok((path, key, generation)) => Located::Launched(path, key, generation),
                Err(generation) => Located::Dead(generation),
            },
        }
    }
}
