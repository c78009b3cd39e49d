//! Making a child and preparing it (PROTOCOL.md §6.4, §6.5), two ways. Entry jobs, pooled
//! children and exec jobs with [`crate::EXEC_FORK_ENV`] set are forked: everything here after
//! `fork()` runs in the child, a copy of the single-threaded server, which may allocate
//! freely. Other exec jobs take the `CLONE_VM` path (`vfork.rs`, `plan.rs`, `raw.rs`): the
//! child shares the server's memory, so no page table is copied, whatever the server's size.
//!
//! The `CLONE_VM` child's rules, and why (`cli/tests/clone_child.rs` checks the first one
//! with a recording global allocator; the signal tests, the failure tests and the fd tests
//! check the others through it):
//! * **It allocates, frees and drops nothing**: its heap is the server's, so what it allocates
//!   leaks in the server at its `execve`, and what it frees or drops is freed under the
//!   server's feet (a use after free once the server resumes). Everything it reads (argv and
//!   envp with their pointer arrays, every `PATH` candidate as a full path, the fd calls with
//!   every number fixed, the credentials, the signals to reset) is an `ExecPlan` the server
//!   built before the clone and frees after it.
//! * **Raw system calls only** (`raw.rs`): glibc's wrappers may keep state (`setuid` signals
//!   every thread glibc knows of; `raise` and `abort` use the thread id cached in the TLS the
//!   child shares with the server's thread). errno is written in that shared TLS, read back
//!   at once, and never read by the server after a clone that succeeded.
//! * **No panic, no unwinding, no std I/O, no lock**: a panic would unwind through the
//!   server's frames or abort with the server's thread id. The child's code is a loop over
//!   the plan's arrays that returns `(Stage, Errno)` on failure.
//! * **Its failure goes through memory**: the stage and errno in a slot of the server's
//!   stack frame, read when `clone` returns (`CLONE_VFORK` suspends the server until the child
//!   has exec'd or exited). So `pid_after_exec` costs nothing and there is no report pipe; the
//!   replies are those of the fork path, with the same texts.
//! * **Its stack is the server's `CloneStack`**: 64 KiB, mapped once and reused (one child at
//!   a time: the server is suspended), with a `PROT_NONE` guard page below it.
//! * **Signals**: every signal is blocked across the clone, so none is delivered to the child
//!   (nor runs a server handler on its stack) before it has put `SIG_DFL` back on every signal
//!   the server does not leave at its default; it empties the mask last, just before
//!   `execve`. A fault (a blocked synchronous signal) kills it. `CLONE_CLEAR_SIGHAND` would
//!   save the reset of handled signals, but needs `clone3`, which starts the child on its new
//!   stack at the syscall's return and so needs an assembly trampoline; the reset loop does it
//!   (ignored signals, which `CLONE_CLEAR_SIGHAND` keeps, need it anyway).
//! * **Its pidfd comes from `clone` (`CLONE_PIDFD`)**, so no window between the child's
//!   creation and `pidfd_open` exists on this path.
//! * The key is not zeroed (the memory is the server's); the child loses it at `execve`.
//!
//! What the server pays for it: it is suspended from the clone until the child's `execve` has
//! replaced its memory (or the child exited), so a child that blocks before that point (a
//! `chdir` or an `execve` of a file on a hung NFS or FUSE mount, a `SIGSTOP` from a peer of
//! the same uid) stalls the event loop, which the fork path never does. A server whose
//! clients may point it at such files runs with [`crate::EXEC_FORK_ENV`] set.
//!
//! The steps are the same on both paths, in the same order; the `CLONE_VM` path lists them
//! in `plan.rs` (`STEPS`), where a new per-child control is one row, and here in
//! `child_main`. Before the child exists, the server reads a `SECCOMP_FILTER` entry's program
//! into its own memory (`seccomp.rs`), so the child installs it with one raw call. In the
//! child, before the job runs (the numbers are PROTOCOL.md §6.5's):
//! 1. signal dispositions go back to `SIG_DFL` and the signal mask is emptied (the `CLONE_VM`
//!    child empties the mask late, just before its filter and `execve`);
//! 2. `setsid()`, `setpgid(0, 0)` or `setpgid(0, pgid)` as requested;
//! 3. every fd of the bundle is placed at its target (close-on-exec cleared only there), fds
//!    0-2 that the bundle does not map are opened on `/dev/null`, and every other fd of the
//!    server (listener, connections, epoll, signalfd, other requests' fds) is closed;
//! 4. the resource limits, umask, nice, OOM score and `no_new_privs` (rev 0.6,
//!    `controls.rs`), then the credentials, last because they may
//!    drop privilege: `setgroups`, `setgid`, `setuid` (`identity.rs`);
//! 5. the landlock ruleset (`landlock_restrict_self`), then the seccomp and landlock entries
//!    are closed (`sandbox.rs`): the job never holds them;
//! 6. an exec job: `chdir`, the seccomp filter (the last call before `execve`), and `execve`
//!    (`execvp.rs`; the environment built in `identity.rs`);
//! 7. an entry job: the seccomp filter, then the entry point, whose return value is the exit
//!    status.
//!
//! A failure before the job runs (of `execve` too) is reported to the server, and the child
//! exits with status 127. The report goes either to the child's own report pipe
//! (close-on-exec, so `execve` succeeding closes it: EOF means success), as 5 bytes,
//! `stage: u8` (which call failed, [`Stage`]) and `errno: i32` little-endian; or, when the
//! server needs no news of success (entry jobs, exec jobs without `pid_after_exec`), as one
//! datagram on the server's shared report socket: the spawn's serial (`u64`), then the
//! same 5 bytes. The shared socket costs no system call and no fd per spawn; the server reads
//! it only for a child that exits with status 127.

use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use forkserver_protocol::FdBundle;
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::unistd::{ForkResult, Pid};

use crate::sys;
use place::place_fds;

mod context;
mod controls;
mod execvp;
mod fds;
mod identity;
mod place;
mod plan;
mod raw;
mod report;
mod sandbox;
mod seccomp;
mod stage;
mod vfork;
use crate::entry::{EntryFn, Invocation};
pub(crate) use context::{ChildSpec, ForkContext, ReportTo, Work};
pub(crate) use identity::Context;
use report::report_and_exit;
pub(crate) use report::{
    decode_shared, failure_of, failure_reply, Failure, Report, REPORT_LEN, SHARED_REPORT_LEN,
};
pub(crate) use seccomp::{ProgramError, SeccompProgram};
pub(crate) use stage::{Stage, StageFamily, FAILED_STATUS};
pub(crate) use vfork::Cloned;

/// Exit status of an entry point that panicked (as Rust's runtime uses).
pub(crate) const PANIC_STATUS: i32 = 101;

/// Forks the child `child` describes: it runs its work with its bundle, in the session or
/// group and with the credentials the request asked for. A child that reports to
/// [`ReportTo::Shared`] writes a failure on the shared report socket; one that reports to
/// [`ReportTo::Pipe`] on a report pipe of its own, whose read end is returned with the child's
/// pid. The bundle comes back too, still open in the server: the caller closes it once the
/// `Pid` is out (three `close` calls fewer before it). The key is zeroed in an entry job's
/// child, which runs the server's code; an exec job's child loses it at `execve` and is
/// spared the page copy.
///
/// # Errors
/// `pipe2` or `fork` failing (EAGAIN, ENOMEM, EMFILE).
pub(crate) fn spawn(
    ctx: &mut ForkContext,
    child: ChildSpec<'_>,
) -> Result<(Pid, Option<OwnedFd>, FdBundle), Errno> {
    let zero_key = matches!(child.work, Work::Entry { .. });
    let report_to = child.report;
    // The child takes the spec from this slot (its copy of it); in the server it stays here.
    let mut spec = Some(child);
    let slot = &mut spec;
    let (pid, report_rd) = if let ReportTo::Shared(serial) = report_to {
        let report = ctx.shared_report(serial);
        let pid = fork_child(ctx, zero_key, move |ctx| match slot.take() {
            Some(child) => child_main(ctx, child, report),
            None => sys::exit_now(FAILED_STATUS),
        })?;
        (pid, None)
    } else {
        let (report_rd, report_wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let report_rd_raw = report_rd.as_raw_fd();
        let pid = fork_child(ctx, zero_key, move |ctx| {
            // The child's copy of the read end; the server keeps its own (`report_rd`).
            let _ = nix::unistd::close(report_rd_raw);
            match slot.take() {
                Some(child) => child_main(ctx, child, Report::Own(report_wr.into_raw_fd())),
                None => sys::exit_now(FAILED_STATUS),
            }
        })?;
        (pid, Some(report_rd))
    };
    let bundle = spec.map(|c| c.bundle).unwrap_or_default();
    Ok((pid, report_rd, bundle))
}

/// Forks a child that runs `in_child` (which never returns) with its copy of `ctx`, and
/// returns its pid. In the parent, `in_child` is dropped unrun, closing whatever it owns.
///
/// Every signal is blocked across the fork: one sent to the child before it has reset the
/// dispositions it inherited (SIG_IGN for SIGINT and SIGPIPE) stays pending instead of being
/// discarded, and is delivered once the child unblocks, with the default action. With
/// `die_with_server` the child gets `PR_SET_PDEATHSIG(SIGKILL)`. With `zero_key` the child
/// first overwrites its copy of the key with zeros (it writes to its own pages; the server's
/// copy is intact). A panic in the child ends it (status 127); it never unwinds back into the
/// server's code.
fn fork_child(
    ctx: &mut ForkContext,
    zero_key: bool,
    in_child: impl FnOnce(&ForkContext) -> std::convert::Infallible,
) -> Result<Pid, Errno> {
    let server = ctx.watched_server().map(Pid::from_raw);
    let old_mask = sys::block_all_signals()?;
    // The server is single-threaded: the child may run any code (see `sys::fork`).
    let forked = sys::fork();
    if !matches!(forked, Ok(ForkResult::Child)) {
        sys::restore_signal_mask(&old_mask)?;
    }
    match forked? {
        ForkResult::Parent { child } => Ok(child),
        ForkResult::Child => {
            if zero_key {
                ctx.zero_key();
            }
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                if let Some(server) = server {
                    // SIGKILL when the server dies. If it died between fork and here, the
                    // signal will never come: check the parent is still the server.
                    let ok = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_ok();
                    if !ok || nix::unistd::getppid() != server {
                        sys::exit_now(FAILED_STATUS);
                    }
                }
                in_child(ctx)
            }));
            drop(r);
            sys::exit_now(FAILED_STATUS)
        }
    }
}

/// Forks a pooled child (`--prefork`): it closes every fd but its end of a socketpair and waits
/// there for one `Spawn` frame with its fds, then becomes that job's child exactly as
/// [`spawn`] would have made it, the socket serving as its report pipe (close-on-exec, so
/// `execve` closes it). Returns its pid and the server's end of the socketpair. EOF instead of a
/// job (the server is gone) ends it quietly. The child zeroes its copy of the key at once: it
/// may wait long, and run an entry job, with no use for it.
pub(crate) fn prefork(
    ctx: &mut ForkContext,
    entries: &std::collections::HashMap<String, EntryFn>,
) -> Result<(Pid, OwnedFd), Errno> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    // The server's end never blocks the event loop: a job that does not fit in the socket's
    // buffer at once is not handed to a pooled child (see `Server::take_pooled`).
    let flags = OFlag::from_bits_truncate(nix::fcntl::fcntl(&ours, FcntlArg::F_GETFL)?);
    nix::fcntl::fcntl(&ours, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    let ours_raw = ours.as_raw_fd();
    let server = Pid::from_raw(ctx.server_pid());
    let pid = fork_child(ctx, true, |ctx| {
        let _ = nix::unistd::close(ours_raw);
        match pooled_child(ctx, entries, theirs, server) {}
    })?;
    Ok((pid, ours))
}

/// The signal that wakes a pooled child to read its job ([`wake_pooled`]); also its
/// parent-death signal while it waits, so that a job handed off just before the server died
/// is still run. Blocked in the child while it waits; its default action is to ignore it, so
/// one still pending when the job unblocks signals is harmless.
const WAKE: Signal = Signal::SIGCHLD;

/// Wakes a pooled child once its job is in its socket and the client has the `Pid`: the
/// child does not read the socket (and so is not woken by the job) before this, so the
/// client's wake-up comes first (PROTOCOL.md §6.4). Also used to let a pooled child read the
/// end of its socket when the server lets it go.
pub(crate) fn wake_pooled(pid: Pid) {
    let _ = nix::sys::signal::kill(pid, WAKE);
}

#[allow(unsafe_code)]
fn pooled_child(
    ctx: &ForkContext,
    entries: &std::collections::HashMap<String, EntryFn>,
    sock: OwnedFd,
    server: Pid,
) -> std::convert::Infallible {
    // Hygiene first: nothing of the server's survives while this child waits.
    // SAFETY: this is the forked child, which never touches the server's state again (the
    // rules of this module) and hands `sock`'s number over, to get it back below.
    let sock = match unsafe { place_fds(FdBundle::new(), sock.into_raw_fd()) } {
        Ok((s, _)) => s,
        Err(_) => sys::exit_now(FAILED_STATUS),
    };
    // SAFETY: `place_fds` kept `sock` open, and this code holds its only copy of the number.
    let sock = unsafe { sys::own_fd(sock) };
    let report = Report::Own(sock.as_raw_fd());
    // Sleep until woken (after the job and the client's `Pid`), or until the server dies
    // (then read what it handed off, if anything). With `die_with_server` its death is a
    // SIGKILL instead, set by `fork_child`.
    let watch = !ctx.die_with_server() && nix::sys::prctl::set_pdeathsig(WAKE).is_ok();
    if !watch || nix::unistd::getppid() == server {
        let _ = SigSet::from(WAKE).wait();
    }
    let frame = match forkserver_protocol::FrameReader::new().read_frame(sock.as_fd()) {
        Ok(f) => f,
        // The server closed our socket before handing us a job: it is gone, or shrank the pool.
        Err(forkserver_protocol::TransportError::Closed) => sys::exit_now(0),
        // A job that did not arrive whole: say so on the socket, which is the report channel.
        Err(forkserver_protocol::TransportError::Io(e)) => report_and_exit(report, Stage::Setup, e),
        Err(_) => report_and_exit(report, Stage::Setup, Errno::EPROTO),
    };
    let forkserver_protocol::Message::Spawn(spawn) = frame.message else {
        report_and_exit(report, Stage::Setup, Errno::EPROTO)
    };
    if watch {
        // The job runs whatever happens to the server from here, as a forked one would.
        let _ = nix::sys::prctl::set_pdeathsig(None);
    }
    let (options, map, job) = spawn.into_parts();
    let Ok(bundle) = FdBundle::from_parts(map, frame.fds) else {
        report_and_exit(report, Stage::Setup, Errno::EPROTO)
    };
    // The server read this program before the hand-off (and refused a bad one); this child
    // reads its own copy from the same entry.
    let program = match SeccompProgram::of_request(&options, &bundle) {
        Ok(p) => p,
        Err(e) => report_and_exit(report, Stage::Seccomp, e.errno()),
    };
    let report = Report::Own(sock.into_raw_fd());
    let work = match &job {
        forkserver_protocol::Job::Exec(e) => Work::Exec(e),
        forkserver_protocol::Job::Entry(e) => match entries.get(e.name()) {
            Some(entry) => Work::Entry {
                entry,
                payload: e.payload(),
            },
            None => report_and_exit(report, Stage::Setup, Errno::ENOENT),
        },
    };
    child_main(
        ctx,
        ChildSpec::new(work, &options, bundle, ReportTo::Pipe, program.as_ref()),
        report,
    )
}

#[allow(unsafe_code)]
fn child_main(ctx: &ForkContext, child: ChildSpec<'_>, report: Report) -> ! {
    let ChildSpec {
        work,
        identity,
        bundle,
        sandbox,
        ..
    } = child;
    if let Err(e) = reset_signals(ctx.to_reset()) {
        report_and_exit(report, Stage::Setup, e);
    }
    // PROTOCOL.md §6.5 step 2: the session or process group.
    if let Err(e) = identity.join_session() {
        report_and_exit(report, Stage::Session, e);
    }
    // SAFETY: this is the forked child, which never touches the server's state again (the
    // rules of this module); it manages the report pipe's number by hand from here on.
    let (report, targets) = match unsafe { place_fds(bundle, report.fd()) } {
        Ok((fd, targets)) => (report.with_fd(fd), targets),
        Err((fd, e)) => report_and_exit(report.with_fd(fd), Stage::Setup, e),
    };
    // Step 4: the limits and controls (raising a hard limit, lowering nice or the OOM score
    // need the server's privilege), then groups, gid, uid, after everything that may need
    // the server's privilege.
    if let Err((stage, e)) = identity.controls.apply() {
        report_and_exit(report, stage, e);
    }
    if let Err((stage, e)) = identity.take_credentials() {
        report_and_exit(report, stage, e);
    }
    // Step 5: the landlock ruleset, then the consumed entries closed.
    if let Err((stage, e)) = sandbox.restrict() {
        report_and_exit(report, stage, e);
    }
    match work {
        // Step 6: `chdir`, the filter, `execve`.
        Work::Exec(job) => {
            if let Some(cwd) = job.cwd() {
                if let Err(e) = nix::unistd::chdir(OsStr::from_bytes(cwd)) {
                    report_and_exit(report, Stage::Chdir, e);
                }
            }
            let (stage, e) = execvp::exec(job, &sandbox);
            report_and_exit(report, stage, e)
        }
        // Step 7: the filter, the entry point.
        Work::Entry { entry, payload } => {
            let targets = targets
                .into_iter()
                .filter(|&t| !sandbox.consumes(t))
                .collect();
            // SAFETY: `payload` borrows the request, which a frame of this child's own stack
            // (`spawn`'s or `pooled_child`'s, in this forked copy of the server) owns and never
            // drops: `child_main` does not return, and the child ends in `exit_now`, which runs
            // no destructor; a panic of the entry point unwinds only to the `catch_unwind`
            // below. So the bytes live as long as the process, and are not copied (a copy of a
            // large payload costs a page fault per 4 KiB in the child).
            let payload: &'static [u8] =
                unsafe { std::slice::from_raw_parts(payload.as_ptr(), payload.len()) };
            let call = Invocation::new(payload, targets);
            // The seccomp filter last, while a failure can still be reported.
            if let Err((stage, e)) = sandbox.install_filter() {
                report_and_exit(report, stage, e);
            }
            // Setup succeeded (an own report pipe's EOF tells the server so); the job holds
            // nothing of the server's.
            // SAFETY: the report fd is open (kept by `place_fds`), its number held by this code
            // alone, which forgets it here.
            drop(unsafe { sys::own_fd(report.fd()) });
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| entry(call)))
                .unwrap_or(PANIC_STATUS);
            let _ = std::io::stdout().flush();
            let _ = std::io::stderr().flush();
            sys::exit_now(code & 0xff)
        }
    }
}

/// Puts back `SIG_DFL` on every signal in `to_reset` (bit `n - 1` for signal `n`: the
/// signals not at their default in the server, see [`sys::non_default_signals`]), then empties
/// the signal mask.
fn reset_signals(to_reset: u64) -> Result<(), Errno> {
    let mut left = to_reset;
    while left != 0 {
        let signo = left.trailing_zeros() as i32 + 1;
        sys::set_default_disposition(signo)?;
        left &= left - 1;
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
}
