//! One connection's state machine (PROTOCOL.md §6.1), without I/O, after quinn-proto's
//! `Connection`: frames go in ([`Session::handle_frame`]), decisions come out
//! ([`Session::poll_action`]), and what the event loop made of them goes back in
//! ([`Session::spawned`], [`Session::exec_done`], [`Session::final_report`],
//! [`Session::signaled`], [`Session::close`]). No socket, fork, clock or randomness here: the
//! challenge comes from the caller, so every transition is tested in memory below.
//!
//! ```text
//!  AWAIT_HELLO ──Hello──▶ READY ◀──────────── final report, KEEP_CONNECTION ──┐
//!      │        (key) ▼     │ Spawn ─▶ Action::Spawn ─▶ spawned(pid_after_exec?) │
//!      │       AWAIT_AUTH   ├──────────────────▶ SPAWNING ──exec_done──▶ RUNNING ─┘
//!      │          │ Auth ok ▲ Status ⟲, Features ⟲                  Signal ⟲, Status ⟲
//!      └── anything else: Close(Error) ───────────────────────▶ CLOSING
//! ```

use std::collections::VecDeque;

use forkserver_protocol::{
    auth, AuthMethod, AuthOk, ErrorCode, ErrorReply, FdBundle, Features, Frame, HelloOk, Job,
    Message, Spawn, CHALLENGE_LEN, PROTOCOL_VERSION,
};
use nix::errno::Errno;
use nix::unistd::Pid;

/// Where a connection is in §6.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for `Hello`.
    AwaitHello,
    /// A key is configured: waiting for `Auth` answering this challenge.
    AwaitAuth([u8; CHALLENGE_LEN]),
    /// Waiting for a request.
    Ready,
    /// Spawned with `pid_after_exec`: waiting for the exec to succeed or fail.
    Spawning(Pid),
    /// The child `pid` runs (its `Pid` was sent); its final report is awaited.
    Running(Pid),
    /// Finished: flush the queued replies, then close.
    Closing,
}

impl State {
    /// Still in the handshake (hello, or authentication).
    pub fn in_handshake(self) -> bool {
        matches!(self, State::AwaitHello | State::AwaitAuth(_))
    }
}

/// What the event loop must do for a connection.
#[derive(Debug)]
pub enum Action {
    /// Send this message.
    Send(Message),
    /// Send this error, then close: the connection is in `Closing` already.
    Close(ErrorReply),
    /// Fork a child for this request (or hand it to a pooled one), then call
    /// [`Session::spawned`]; or [`Session::close`] with the reason it failed.
    Spawn(Spawn, FdBundle),
    /// Send signal `signo` to the connection's child `pid`, then call [`Session::signaled`].
    Signal(Pid, i32),
    /// Send the server's `Status` (the event loop has the counters).
    Status,
    /// Send the server's `Metrics` (§5.16, rev 0.6).
    Metrics,
}

/// What a session needs to know of the server to decide.
pub struct Env<'a> {
    /// The authentication key (§9), if the server has one.
    pub key: Option<&'a [u8]>,
    /// A fresh random challenge (§9.2).
    pub challenge: &'a mut dyn FnMut() -> std::io::Result<[u8; CHALLENGE_LEN]>,
    /// Whether an entry point of this name is registered (§5.5.2).
    pub has_entry: &'a dyn Fn(&str) -> bool,
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct Session {
    state: State,
    actions: VecDeque<Action>,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    /// A new connection: `Hello` expected.
    pub fn new() -> Self {
        Self {
            state: State::AwaitHello,
            actions: VecDeque::new(),
        }
    }

    /// Where the connection is in §6.1.
    pub fn state(&self) -> State {
        self.state
    }

    /// The next thing to do, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn send(&mut self, m: Message) {
        self.actions.push_back(Action::Send(m));
    }

    /// Ends the connection with `reply` (§7: every code but `SignalFailed` is fatal).
    pub fn fail(&mut self, code: ErrorCode, errno: i32, msg: impl Into<String>) {
        self.state = State::Closing;
        self.actions
            .push_back(Action::Close(ErrorReply::new(code, errno, msg.into())));
    }

    /// Takes one frame the client sent.
    pub fn handle_frame(&mut self, frame: Frame, env: &mut Env<'_>) {
        let Frame { message, fds } = frame;
        match (self.state, message) {
            (State::AwaitHello, Message::Hello(h)) => {
                let Some(v) = h.negotiate(PROTOCOL_VERSION, PROTOCOL_VERSION) else {
                    let msg =
                        format!("server speaks versions {PROTOCOL_VERSION}..={PROTOCOL_VERSION}");
                    return self.fail(ErrorCode::UnsupportedVersion, 0, msg);
                };
                if env.key.is_none() {
                    let ok = HelloOk::new(v, AuthMethod::None).expect("version is non-zero");
                    self.send(Message::HelloOk(ok));
                    self.state = State::Ready;
                    return;
                }
                // §9.1: with a key, nothing but Auth is read until it checks out.
                match (env.challenge)() {
                    Ok(challenge) => {
                        let auth = AuthMethod::HmacSha256 { challenge };
                        let ok = HelloOk::new(v, auth).expect("version is non-zero");
                        self.send(Message::HelloOk(ok));
                        self.state = State::AwaitAuth(challenge);
                    }
                    Err(e) => {
                        self.fail(ErrorCode::Internal, 0, format!("no random challenge: {e}"))
                    }
                }
            }
            (State::AwaitAuth(challenge), Message::Auth(a)) => {
                let key = env.key.unwrap_or_default();
                if auth::verify_client(key, &challenge, &a.response) {
                    let response = auth::server_response(key, &a.challenge);
                    self.send(Message::AuthOk(AuthOk { response }));
                    self.state = State::Ready;
                } else {
                    tracing::warn!("authentication failed");
                    self.fail(ErrorCode::AuthFailed, 0, "wrong key");
                }
            }
            (State::AwaitAuth(_), m) => {
                let msg = format!("expected Auth, got {:?}", m.tag());
                self.fail(ErrorCode::AuthRequired, 0, msg);
            }
            (State::Ready | State::Running(_), Message::StatusRequest) => {
                self.actions.push_back(Action::Status);
            }
            // §5.15 (rev 0.6): like StatusRequest, in READY and RUNNING.
            (State::Ready | State::Running(_), Message::MetricsRequest) => {
                self.actions.push_back(Action::Metrics);
            }
            // §5.13 (rev 0.6): what this server implements, from the protocol's tables; the
            // connection stays READY.
            (State::Ready, Message::FeaturesRequest) => {
                self.send(Message::Features(Features::current()));
            }
            (State::Ready, Message::Spawn(spawn)) => {
                if let Job::Entry(e) = spawn.job() {
                    if !(env.has_entry)(e.name()) {
                        let msg = format!("no entry point named {:?}", e.name());
                        return self.fail(ErrorCode::UnknownEntry, 0, msg);
                    }
                }
                match FdBundle::from_parts(spawn.fds().clone(), fds) {
                    Ok(bundle) => self.actions.push_back(Action::Spawn(spawn, bundle)),
                    Err(_) => self.fail(ErrorCode::FdMismatch, 0, "fd count mismatch"),
                }
            }
            // The pid is still ours: a child leaves `Running` in the turn it is reaped.
            (State::Running(pid), Message::Signal(s)) => {
                self.actions
                    .push_back(Action::Signal(pid, s.signo() as i32));
            }
            (State::AwaitHello, m) => {
                let msg = format!("expected Hello, got {:?}", m.tag());
                self.fail(ErrorCode::UnexpectedMessage, 0, msg);
            }
            (state, m) => {
                let msg = format!("{:?} is not allowed in state {state:?}", m.tag());
                self.fail(ErrorCode::UnexpectedMessage, 0, msg);
            }
        }
    }

    /// The `Spawn` became child `pid`. With `pid_after_exec` (`wait_exec`) its `Pid` waits for
    /// the exec ([`Session::exec_done`]); otherwise the event loop sends it now.
    pub fn spawned(&mut self, pid: Pid, wait_exec: bool) {
        self.state = if wait_exec {
            State::Spawning(pid)
        } else {
            State::Running(pid)
        };
    }

    /// The exec of a `pid_after_exec` child succeeded: its `Pid` goes out now (the event
    /// loop sends it, with a pidfd if asked for).
    pub fn exec_done(&mut self, pid: Pid) {
        if self.state == State::Spawning(pid) {
            self.state = State::Running(pid);
        }
    }

    /// The child's final report (its `Exit`, or its failure) was sent: with
    /// `KEEP_CONNECTION` the connection is READY for another request (§6.6), else it closes.
    pub fn final_report(&mut self, keep: bool) {
        self.state = if keep { State::Ready } else { State::Closing };
    }

    /// The answer to [`Action::Signal`]: `Signaled`, or a non-fatal `SignalFailed`.
    pub fn signaled(&mut self, result: Result<(), Errno>) {
        let reply = match result {
            Ok(()) => Message::Signaled,
            Err(e) => {
                ErrorReply::new(ErrorCode::SignalFailed, e as i32, format!("kill: {e}")).into()
            }
        };
        self.send(reply);
    }

    /// The connection ends (its error, if any, was queued by the caller): `Closing`.
    pub fn close(&mut self) {
        self.state = State::Closing;
    }
}

#[cfg(test)]
mod tests;
