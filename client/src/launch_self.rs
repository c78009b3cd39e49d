//! [`Client::launch_self`]: this binary as its own zygote server, one per process, shared by
//! every caller (the tests of a libtest binary run in parallel threads), and stopped when the
//! process exits.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, Once, PoisonError, TryLockError};

use forkserver_protocol::launch::serves_itself;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::launch::Launcher;

/// The process's client of its own server, once launched.
static SHARED: Mutex<Option<Client>> = Mutex::new(None);

impl Client {
    /// This binary, started as its own server once per process: the first call launches it,
    /// every later one (from any thread, at once or not) returns a clone of the same client.
    /// For `#[test]`s that call entries registered with `forkserver_server::zygote!`, which
    /// serves before `main` in the launched copy, so libtest's `main` (no `harness = false`)
    /// never runs there:
    ///
    /// ```
    /// use forkserver_client::Client;
    ///
    /// fn square(x: u32) -> u32 {
    ///     x * x
    /// }
    ///
    /// forkserver_server::zygote!(|z| z.typed("square", square));
    ///
    /// #[test]
    /// fn squares() -> Result<(), Box<dyn std::error::Error>> {
    ///     let client = Client::launch_self()?; // every test of the binary shares this server
    ///     assert_eq!(client.typed::<u32, u32>("square").spawn(&7)?.join()?, 49);
    ///     Ok(())
    /// }
    /// # // Not a test build: the same body, run by the doctest (its binary is the server).
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// #     let client = Client::launch_self()?;
    /// #     assert_eq!(client.typed::<u32, u32>("square").spawn(&7)?.join()?, 49);
    /// #     assert_eq!(Client::launch_self()?.launched_server_pid(), client.launched_server_pid());
    /// #     Ok(())
    /// # }
    /// ```
    ///
    /// No `static LazyLock<Client>` is needed (one still works: it holds one more clone).
    /// Under `cargo nextest`, each test is a process of its own, with its own server. A binary
    /// whose own `main` calls `Zygote::serve_if_requested` first may use it too.
    ///
    /// The server is the file this process runs (`/proc/self/exe`, held open: a relaunch after
    /// it died starts the same binary, whatever its path names by then), started as
    /// [`Client::launch`] does, with its children dying with it
    /// ([`Launcher::kill_children_with_server`]). It lives until this process exits: then an
    /// exit handler (`atexit`) stops it and removes its socket directory, whatever clones
    /// are left; a process killed by a signal leaves the directory, and its server exits as
    /// its alive pipe closes. A launch that failed is tried again by the next call.
    ///
    /// # Errors
    /// [`Error::Launch`] if this binary does not serve (no `zygote!` linked in, and no
    /// `serve_if_requested` has run: the copy would run `main`), and as [`Launcher::launch`].
    #[allow(clippy::test_attr_in_doctest)] // the example is a test binary's
    pub fn launch_self() -> Result<Client> {
        let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = shared.as_ref() {
            return Ok(client.clone());
        }
        if !serves_itself() {
            return Err(Error::Launch(io::Error::other(
                "this binary does not serve when launched: register its entries with \
                 `forkserver_server::zygote!(|z| z...)` (or call `Zygote::...serve_if_requested()` \
                 first thing in `main`) before `Client::launch_self`",
            )));
        }
        let client = Launcher::this_binary().map_err(Error::Launch)?.launch()?;
        stop_at_exit();
        *shared = Some(client.clone());
        Ok(client)
    }
}

/// Registers [`stop_shared`] with `atexit(3)`, once per process.
fn stop_at_exit() {
    static REGISTERED: Once = Once::new();
    REGISTERED.call_once(|| {
        // SAFETY: `stop_shared` is a plain `extern "C" fn()` that never unwinds (it catches
        // panics) and touches only this module's statics, which live until the process ends.
        let r = unsafe { nix::libc::atexit(stop_shared) };
        if r != 0 {
            tracing::warn!("atexit failed: the launched server's socket directory will be left");
        }
    });
}

/// Run by `exit(3)`, i.e. when `main` returns or `std::process::exit` is called: stops the
/// shared server and removes its directory (`Managed::stop`), even if clones of its client are
/// left, and without waiting for a launch in progress in another thread (that one's server
/// exits with this process, its alive pipe closed).
extern "C" fn stop_shared() {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let client = match SHARED.try_lock() {
            Ok(mut shared) => shared.take(),
            Err(TryLockError::Poisoned(p)) => p.into_inner().take(),
            Err(TryLockError::WouldBlock) => None,
        };
        if let Some(client) = client {
            client.engine().stop_launched();
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::SHARED;
    use crate::{Client, Error};

    /// This unit-test binary has no `zygote!`: its copy would run the tests, not serve.
    #[test]
    fn a_binary_that_does_not_serve_is_not_launched() {
        let err = Client::launch_self().unwrap_err();
        assert!(
            matches!(&err, Error::Launch(e) if e.to_string().contains("zygote!")),
            "{err}"
        );
        assert!(
            SHARED.lock().unwrap().is_none(),
            "nothing launched, nothing kept"
        );
    }
}
