//! Worker entries (PROTOCOL.md §11.7, informative): [`crate::Zygote::worker`] wraps an
//! `init: fn() -> S` and a `handle: fn(&mut S, Req) -> Resp` (or `Result<Resp, E>`) into an
//! untyped entry whose child lives for many calls: it checks the worker header as a typed
//! entry checks its header (`typed.rs`), runs `init` once, then reads request frames from the
//! client on the result channel and answers each with a `Value`, an `Error` or a `Panic`
//! frame, until the client closes the channel.
//!
//! Rules of the child side, beside those of `typed.rs`: requests are served one at a time, in
//! order, each with exactly one final frame; a decode error or an `Err` from `handle` answers
//! that request and the worker goes on; a panic (in `init` or `handle`) is sent, and the child
//! exits with [`crate::PANIC_STATUS`], since its state may be broken; the channel closed by the
//! client ends the child with status 0; a frame that is not a request, or a channel error,
//! ends it with [`crate::FAILED_STATUS`].

use std::os::fd::{AsFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use forkserver_protocol::typed::{
    decode, encode, fingerprint, recv_frame, send_frame, Assembler, Received, ResultFrame,
    DEFAULT_MAX_RESULT_LEN,
};
use serde::de::DeserializeOwned;

use crate::entry::{EntryFn, Invocation};
use crate::typed::{
    fail, install_panic_hook, open, panic_frame, send_value, types, Mode, Outcome, FAILED_STATUS,
    PANIC_STATUS,
};

/// The entry that serves a worker of `init` and `handle`.
pub(crate) fn entry<S, Req, O, M, I, H>(name: &str, init: I, handle: H) -> EntryFn
where
    S: 'static,
    Req: DeserializeOwned + 'static,
    O: Outcome<M> + 'static,
    M: 'static,
    I: Fn() -> S + 'static,
    H: Fn(&mut S, Req) -> O + 'static,
{
    let name = name.to_owned();
    Box::new(move |call| serve::<S, Req, O, M>(&name, call, &init, &handle))
}

fn serve<S, Req: DeserializeOwned, O: Outcome<M>, M>(
    name: &str,
    mut call: Invocation,
    init: &dyn Fn() -> S,
    handle: &dyn Fn(&mut S, Req) -> O,
) -> i32 {
    let mode = Mode {
        worker: true,
        fingerprint: &|codec| fingerprint::<Req, O::Value>(name, codec),
        types: &|| types::<Req, O::Value>(),
    };
    let (header, _, channel) = match open(name, &mut call, &mode) {
        Ok(opened) => opened,
        Err(status) => return status,
    };
    // A worker header references no fds: requests bring their own.
    drop(call);
    let codec = header.codec();
    let channel = Arc::new(channel);
    let note = Arc::new(Mutex::new(None));
    install_panic_hook(channel.clone(), std::thread::current().id(), note.clone());
    let mut state = match catch_unwind(AssertUnwindSafe(init)) {
        Ok(state) => state,
        Err(payload) => return panicked(&channel, &note, payload.as_ref()),
    };
    let mut assembler = Assembler::new(DEFAULT_MAX_RESULT_LEN);
    loop {
        let (bytes, fds) = match next_request(&channel, &mut assembler) {
            Ok(Some(request)) => request,
            Ok(None) => return 0,
            Err(text) => return fail(&channel, &text),
        };
        // A panic `handle` caught itself last time is not this call's.
        if let Ok(mut n) = note.lock() {
            n.take();
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let req = decode::<Req>(codec, &bytes, fds)
                .map_err(|e| format!("cannot decode the request: {e}"))?;
            let value = handle(&mut state, req).into_result()?;
            encode(codec, &value).map_err(|e| format!("cannot encode the response: {e}"))
        }));
        let sent = match outcome {
            Ok(Ok((bytes, fds))) => send_value(&channel, bytes, fds) == 0,
            Ok(Err(text)) => send_frame(channel.as_fd(), &ResultFrame::Error(text), &[]).is_ok(),
            Err(payload) => return panicked(&channel, &note, payload.as_ref()),
        };
        if !sent {
            return FAILED_STATUS;
        }
    }
}

/// A request's bytes and the fds sent with it.
type Request = (Vec<u8>, Vec<OwnedFd>);

/// Reads the next whole request: its bytes and fds; `None` once the client closed the channel.
fn next_request(channel: &OwnedFd, assembler: &mut Assembler) -> Result<Option<Request>, String> {
    loop {
        match recv_frame(channel.as_fd(), true) {
            Ok(Received::Closed) => return Ok(None),
            Ok(Received::Empty) => {}
            Ok(Received::Frame(ResultFrame::Chunk(b), _)) => {
                assembler.push(&b).map_err(|e| e.to_string())?;
            }
            Ok(Received::Frame(ResultFrame::Request { bytes, .. }, fds)) => {
                assembler.push(&bytes).map_err(|e| e.to_string())?;
                return Ok(Some((assembler.take(), fds)));
            }
            // §11.7: only Chunk and Request frames travel to a worker.
            Ok(Received::Frame(other, _)) => {
                return Err(format!("frame tag {} where a request belongs", other.tag()))
            }
            Err(e) => return Err(format!("reading a request: {e}")),
        }
    }
}

fn panicked(
    channel: &OwnedFd,
    note: &Mutex<crate::typed::PanicNote>,
    payload: &(dyn std::any::Any + Send),
) -> i32 {
    let _ = send_frame(channel.as_fd(), &panic_frame(note, payload), &[]);
    PANIC_STATUS
}
