//! Serving before `main`: the [`zygote!`](crate::zygote!) macro puts a constructor in
//! `.init_array` that serves when this binary was launched as a server, so that a binary whose
//! `main` is not ours (a libtest test binary: `cargo test`, `cargo nextest run`) can be its own
//! zygote server for `Client::launch_self`.
//!
//! What runs before `main` in a process that was not launched: [`serve_before_main`] reads one
//! environment variable and stores one atomic flag, and returns. No allocation (the variable is
//! unset), no thread, no `std::thread::current` (std aborts in `main` if code before it named
//! the main thread), no I/O. Only in a launched server (`FORKSERVER_LISTEN_FD` set) does it
//! build the zygote, run its preloads and serve, and then it exits the process: it never
//! returns into the program's `main`, so libtest never starts its threads there.

use std::panic::{catch_unwind, AssertUnwindSafe};

use forkserver_protocol::launch::note_serves_itself;

use crate::launch::Zygote;

/// Makes this binary serve, before `main` runs, when it is launched as a server
/// (`Client::launch`, `Client::launch_self`); otherwise it does nothing and `main` runs as
/// usual. This is how a test binary with libtest's own `main` (no `harness = false`) serves
/// the entries its `#[test]`s call:
///
/// ```
/// use forkserver_server::Invocation;
///
/// fn len(call: Invocation) -> i32 {
///     call.payload().len() as i32
/// }
///
/// // The zygote: a closure that takes `Zygote::new()` and registers entries and preloads
/// // (`.typed("square", square)` for a typed entry, `.worker(..)`, `.preload(..)`).
/// forkserver_server::zygote!(|z| z.entry("len", len));
///
/// fn main() {
///     // Not launched: the constructor returned at once and `main` runs as usual. In a test
///     // binary, `#[test]`s call `forkserver_client::Client::launch_self()` (see there).
/// }
/// ```
///
/// The argument is any `FnOnce(Zygote) -> Zygote` (a closure or a function path, e.g. a
/// library's `pub fn register(z: Zygote) -> Zygote` that several test binaries share). It runs
/// only in the launched server, before `main` and before any thread: what holds for
/// [`Zygote::serve_if_requested`] holds for it (its preloads must not leave threads running),
/// and std's runtime set-up for `main` has not run (`std::env::args` is set; `SIGPIPE` is not
/// yet ignored, the server ignores it itself). A panic in it ends the server with status 1,
/// which the launching client reports.
///
/// Put it once per binary. In a test file, it serves that test binary. In a library's crate
/// root, it serves in every binary that links the library (its integration tests, examples,
/// and applications, when launched as a server); under `#[cfg(test)]`, in the library's unit
/// tests only. To share entries between binaries that each have their own, a library exports
/// a `fn(Zygote) -> Zygote` that each `zygote!` calls. Two in one binary are an error (a
/// duplicate symbol named
/// `forkserver_server_zygote_macro_used_twice_in_one_binary`), as only one could serve:
///
/// ```compile_fail
/// forkserver_server::zygote!(|z| z.entry("a", |_| 0));
/// forkserver_server::zygote!(|z| z.entry("b", |_| 0));
/// fn main() {}
/// ```
///
/// It serves a launched server only: socket activation ([`Zygote::service`]) is for a `main`
/// that calls [`Zygote::serve_if_requested`]. Linux (ELF `.init_array`) only, like the rest of
/// this crate.
#[macro_export]
macro_rules! zygote {
    ($build:expr $(,)?) => {
        const _: () = {
            extern "C" fn forkserver_zygote_constructor() {
                $crate::__private::serve_before_main($build);
            }
            // SAFETY (of code that runs before `main`): the C runtime calls each function
            // pointer of `.init_array` once, before `main`, in the one thread the process then
            // has (with argc, argv and envp, which a C-ABI function of no parameters may
            // ignore); `#[used]` keeps the pointer though nothing names it. The function never
            // unwinds into the runtime (`serve_before_main` catches panics), and in a process
            // that was not launched as a server it only reads the environment and stores one
            // atomic flag: nothing std's runtime set-up for `main` depends on.
            #[used]
            #[allow(unsafe_code)]
            #[link_section = ".init_array"]
            static FORKSERVER_ZYGOTE_CONSTRUCTOR: extern "C" fn() = forkserver_zygote_constructor;
            // One zygote per binary: a second is a duplicate symbol (a compile error in one
            // crate, a link error across crates).
            #[no_mangle]
            #[used]
            #[allow(unsafe_code, non_upper_case_globals)]
            static forkserver_server_zygote_macro_used_twice_in_one_binary: u8 = 0;
        };
    };
}

/// The body of the constructor of [`zygote!`](crate::zygote!): notes that this binary serves
/// when launched; then, if it was launched as a server, builds the zygote with `build`, serves
/// and exits the process, never returning. Not launched, it returns at once.
#[doc(hidden)]
pub fn serve_before_main(build: impl FnOnce(Zygote) -> Zygote) {
    note_serves_itself();
    // `var_os` allocates only when the variable is set: only in a launched server.
    if !Zygote::is_requested() {
        return;
    }
    // It must not unwind into the loader: a panic (in `build` or a preload) is printed by the
    // panic hook and ends the server, which the client sees as an exit before it was ready.
    let served = catch_unwind(AssertUnwindSafe(|| {
        build(Zygote::new()).serve_if_requested()
    }));
    if served.is_err() {
        eprintln!("forkserver: zygote!: the zygote panicked before it served");
    }
    std::process::exit(1);
}
