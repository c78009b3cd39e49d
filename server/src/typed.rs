//! Typed entries (PROTOCOL.md §11, informative): [`crate::Zygote::typed`] wraps a
//! `fn(A) -> R` or `fn(A) -> Result<R, E>` into an untyped entry ([`crate::EntryFn`]) that,
//! in the entry child, checks the payload's typed header, decodes the argument, runs the
//! function, and sends its value, its error or its panic to the client on the result channel
//! the client made. The server itself never sees a result.
//!
//! Rules of the child side (it runs after the fork, as any entry): it uses only the fds of its
//! request; it sends `Accepted` or `Mismatch`, then at most one final frame; the panic hook it
//! installs only notes the entry thread's panics (sent once one unwinds out of the entry) and
//! keeps the previous hook's behaviour (the message still goes to stderr).

use std::fmt::Display;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use forkserver_protocol::typed::{
    decode, encode, fingerprint, map_sealed_arg, send_frame, value_frames, Codec, ResultFrame,
    TypedHeader,
};
use forkserver_protocol::SCM_MAX_FD;
use serde::{de::DeserializeOwned, Serialize};

use crate::entry::{EntryFn, Invocation};

/// The exit status of an entry child whose payload has no valid typed header, or whose
/// channel was not placed (the client sees its channel close without an answer).
pub const BAD_HEADER_STATUS: i32 = 125;
/// The exit status after a [`ResultFrame::Error`] was sent.
pub const FAILED_STATUS: i32 = 1;
/// The exit status after a [`ResultFrame::Panic`] was sent (std's status for a panic).
pub const PANIC_STATUS: i32 = 101;

/// Marks a function that returns its value as is (`fn(A) -> R`).
#[derive(Debug)]
pub enum Plain {}
/// Marks a function that may fail (`fn(A) -> Result<R, E>`, `E: Display`).
#[derive(Debug)]
pub enum Fallible {}

/// What a typed entry's function returns: a value, or a value or an error. `M` is
/// [`Plain`] or [`Fallible`], inferred.
pub trait Outcome<M> {
    /// The value's type: what the client names as `R` in `typed::<A, R>`.
    type Value: Serialize;
    /// The value, or the error's text.
    ///
    /// # Errors
    /// The function's error, as its `Display` text.
    fn into_result(self) -> Result<Self::Value, String>;
}

impl<R: Serialize> Outcome<Plain> for R {
    type Value = R;
    fn into_result(self) -> Result<R, String> {
        Ok(self)
    }
}

impl<R: Serialize, E: Display> Outcome<Fallible> for Result<R, E> {
    type Value = R;
    fn into_result(self) -> Result<R, String> {
        self.map_err(|e| e.to_string())
    }
}

/// The entry that runs `f` under the typed convention.
pub(crate) fn entry<A, O, M, F>(name: &str, f: F) -> EntryFn
where
    A: DeserializeOwned + 'static,
    O: Outcome<M> + 'static,
    M: 'static,
    F: Fn(A) -> O + 'static,
{
    let name = name.to_owned();
    Box::new(move |call| run::<A, O, M>(&name, call, &f))
}

fn run<A: DeserializeOwned, O: Outcome<M>, M>(
    name: &str,
    mut call: Invocation,
    f: &dyn Fn(A) -> O,
) -> i32 {
    let mode = Mode {
        worker: false,
        fingerprint: &|codec| fingerprint::<A, O::Value>(name, codec),
        types: &|| types::<A, O::Value>(),
    };
    let (header, arg, channel) = match open(name, &mut call, &mode) {
        Ok(opened) => opened,
        Err(status) => return status,
    };
    let codec = header.codec();
    let channel = Arc::new(channel);
    // From here a panic (in decoding the argument too) is reported on the channel.
    let last_panic = Arc::new(Mutex::new(None));
    install_panic_hook(
        channel.clone(),
        std::thread::current().id(),
        last_panic.clone(),
    );
    let mut fds: Vec<OwnedFd> = Vec::with_capacity(header.fd_targets().len());
    for &t in header.fd_targets() {
        match call.take_fd(t) {
            Some(fd) => fds.push(fd),
            // §11.4: index i is the fd at fd_targets[i]; one missing would shift the others.
            None => return fail(&channel, &format!("no argument fd was placed at {t}")),
        }
    }
    // §11.8: an argument in a memfd is mapped read-only (seals and size checked first, the
    // fd closed) and decoded from the mapping, which goes before the entry runs; a bad one is
    // refused like an argument that does not decode.
    let mut mapped = None;
    if let Some(m) = header.memfd_arg() {
        let Some(fd) = call.take_fd(m.target()) else {
            let text = format!("no argument memfd was placed at {}", m.target());
            return fail(&channel, &text);
        };
        match map_sealed_arg(fd, m) {
            Ok(map) => mapped = Some(map),
            Err(e) => return fail(&channel, &format!("cannot read the argument: {e}")),
        }
    }
    drop(call);
    // Decoding, the entry and encoding its value: a panic in any of them is the entry's.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let bytes = mapped.as_deref().unwrap_or(arg);
        let a = decode::<A>(codec, bytes, fds)
            .map_err(|e| format!("cannot decode the argument: {e}"))?;
        // The decoded value owns its data: the mapping goes before the entry runs.
        drop(mapped);
        let value = f(a).into_result()?;
        encode(codec, &value).map_err(|e| format!("cannot encode the result: {e}"))
    }));
    match outcome {
        Ok(Ok((bytes, fds))) => send_value(&channel, bytes, fds),
        Ok(Err(text)) => fail(&channel, &text),
        Err(payload) => {
            let frame = panic_frame(&last_panic, payload.as_ref());
            let _ = send_frame(channel.as_fd(), &frame, &[]);
            PANIC_STATUS
        }
    }
}

/// The `Panic` frame of a panic that unwound out of the entry: what the hook noted (unless
/// the entry replaced the hook), else the payload's message.
pub(crate) fn panic_frame(
    note: &Mutex<PanicNote>,
    payload: &(dyn std::any::Any + Send),
) -> ResultFrame {
    let seen = note.lock().map(|mut p| p.take()).unwrap_or(None);
    let (message, location) =
        seen.unwrap_or_else(|| (panic_message(payload).to_owned(), String::new()));
    ResultFrame::Panic { message, location }
}

/// What an entry child checks a header against: typed call or worker, and its types.
pub(crate) struct Mode<'a> {
    /// A worker entry (§11.7) rather than a one-call entry.
    pub(crate) worker: bool,
    /// The entry's fingerprint in a codec.
    pub(crate) fingerprint: &'a dyn Fn(Codec) -> u64,
    /// The entry's types, as text for a mismatch.
    pub(crate) types: &'a dyn Fn() -> String,
}

/// `takes A and gives R`.
pub(crate) fn types<A: ?Sized, R: ?Sized>() -> String {
    format!(
        "takes {} and gives {}",
        std::any::type_name::<A>(),
        std::any::type_name::<R>()
    )
}

/// The child's first steps (§11.2): decodes the header, takes the channel, checks mode and
/// fingerprint, and sends `Accepted` (or `Mismatch`). `Err` is the status to exit with.
pub(crate) fn open(
    name: &str,
    call: &mut Invocation,
    mode: &Mode<'_>,
) -> Result<(TypedHeader, &'static [u8], OwnedFd), i32> {
    // The argument is borrowed from the request's bytes, which live as long as this child.
    let (header, arg) = match TypedHeader::decode(call.payload_static()) {
        Ok((h, arg)) => (h, arg),
        Err(e) => {
            eprintln!("forkserver: typed entry {name}: {e}");
            return Err(BAD_HEADER_STATUS);
        }
    };
    let Some(channel) = call.take_fd(header.channel()) else {
        eprintln!(
            "forkserver: typed entry {name}: no result channel at fd {}",
            header.channel()
        );
        return Err(BAD_HEADER_STATUS);
    };
    // Grandchildren that exec do not hold the channel open.
    let _ = nix::fcntl::fcntl(
        &channel,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let codec = header.codec();
    let ours = (mode.fingerprint)(codec);
    let kind = |worker: bool| if worker { "a worker" } else { "a typed entry" };
    // §11.2: a fingerprint other than the entry's own, or (§11.7) a worker header for a
    // one-call entry or the reverse: refuse before the entry runs.
    if header.fingerprint() != ours || header.is_worker() != mode.worker {
        let detail = format!(
            "{name:?} is {} that {} ({}); the call asked for {}",
            kind(mode.worker),
            (mode.types)(),
            codec.name(),
            kind(header.is_worker()),
        );
        let frame = ResultFrame::Mismatch {
            fingerprint: ours,
            detail,
        };
        let _ = send_frame(channel.as_fd(), &frame, &[]);
        return Err(FAILED_STATUS);
    }
    if send_frame(channel.as_fd(), &ResultFrame::Accepted, &[]).is_err() {
        return Err(FAILED_STATUS);
    }
    Ok((header, arg, channel))
}

pub(crate) fn fail(channel: &OwnedFd, text: &str) -> i32 {
    let _ = send_frame(channel.as_fd(), &ResultFrame::Error(text.to_owned()), &[]);
    FAILED_STATUS
}

pub(crate) fn send_value(channel: &OwnedFd, bytes: Vec<u8>, fds: Vec<OwnedFd>) -> i32 {
    if fds.len() > SCM_MAX_FD {
        let text = format!("{} fds in the result, at most {SCM_MAX_FD}", fds.len());
        return fail(channel, &text);
    }
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let frames = value_frames(&bytes, raw.len() as u16);
    let last = frames.len() - 1;
    for (i, frame) in frames.iter().enumerate() {
        let attach: &[RawFd] = if i == last { &raw } else { &[] };
        if let Err(e) = send_frame(channel.as_fd(), frame, attach) {
            eprintln!("forkserver: typed entry: sending the result: {e}");
            return FAILED_STATUS;
        }
    }
    0
}

/// A panic's message and `file:line:column`.
pub(crate) type PanicNote = Option<(String, String)>;

/// A hook that notes each panic of the entry's thread (message and location), for the frame
/// sent once the panic has unwound out of the entry: a panic the entry catches itself is not
/// its outcome. Built with `panic = "abort"`, nothing unwinds: the hook sends the frame at
/// once. Then it runs the hook that was there before (stderr still gets the message).
pub(crate) fn install_panic_hook(
    channel: Arc<OwnedFd>,
    entry_thread: ThreadId,
    note: Arc<Mutex<PanicNote>>,
) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() == entry_thread {
            let location = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                .unwrap_or_default();
            let message = panic_message(info.payload()).to_owned();
            if cfg!(panic = "abort") {
                let frame = ResultFrame::Panic { message, location };
                let _ = send_frame(channel.as_fd(), &frame, &[]);
            } else if let Ok(mut n) = note.lock() {
                *n = Some((message, location));
            }
        }
        previous(info);
    }));
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "Box<dyn Any>"
    }
}
