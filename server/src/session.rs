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
//!      │          │ Auth ok ▲                                   Signal ⟲, Status ⟲
//!      └── anything else: Close(Error) ───────────────────────▶ CLOSING
//! ```

use std::collections::VecDeque;

use forkserver_protocol::{
    auth, AuthMethod, AuthOk, ErrorCode, ErrorReply, FdBundle, Frame, HelloOk, Job, Message, Spawn,
    CHALLENGE_LEN, PROTOCOL_VERSION,
};
use nix::errno::Errno;
use nix::unistd::Pid;

/// Where a connection is in §6.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    AwaitHello,
    /// A key is configured: waiting for `Auth` answering this challenge.
    AwaitAuth([u8; CHALLENGE_LEN]),
    Ready,
    /// Spawned with `pid_after_exec`: waiting for the exec to succeed or fail.
    Spawning(Pid),
    Running(Pid),
    /// Finished: flush the queued replies, then close.
    Closing,
}

impl State {
    /// Still in the handshake (hello, or authentication).
    pub(crate) fn in_handshake(self) -> bool {
        matches!(self, State::AwaitHello | State::AwaitAuth(_))
    }
}

/// What the event loop must do for a connection.
#[derive(Debug)]
pub(crate) enum Action {
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
}

/// What a session needs to know of the server to decide.
pub(crate) struct Env<'a> {
    /// The authentication key (§9), if the server has one.
    pub key: Option<&'a [u8]>,
    /// A fresh random challenge (§9.2).
    pub challenge: &'a mut dyn FnMut() -> std::io::Result<[u8; CHALLENGE_LEN]>,
    /// Whether an entry point of this name is registered (§5.5.2).
    pub has_entry: &'a dyn Fn(&str) -> bool,
}

/// One connection's protocol state.
#[derive(Debug)]
pub(crate) struct Session {
    state: State,
    actions: VecDeque<Action>,
}

impl Session {
    /// A new connection: `Hello` expected.
    pub(crate) fn new() -> Self {
        Self {
            state: State::AwaitHello,
            actions: VecDeque::new(),
        }
    }

    pub(crate) fn state(&self) -> State {
        self.state
    }

    /// The next thing to do, in order.
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn send(&mut self, m: Message) {
        self.actions.push_back(Action::Send(m));
    }

    /// Ends the connection with `reply` (§7: every code but `SignalFailed` is fatal).
    pub(crate) fn fail(&mut self, code: ErrorCode, errno: i32, msg: impl Into<String>) {
        self.state = State::Closing;
        self.actions
            .push_back(Action::Close(ErrorReply::new(code, errno, msg.into())));
    }

    /// Takes one frame the client sent.
    pub(crate) fn handle_frame(&mut self, frame: Frame, env: &mut Env<'_>) {
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
    pub(crate) fn spawned(&mut self, pid: Pid, wait_exec: bool) {
        self.state = if wait_exec {
            State::Spawning(pid)
        } else {
            State::Running(pid)
        };
    }

    /// The exec of a `pid_after_exec` child succeeded: its `Pid` goes out now (the event
    /// loop sends it, with a pidfd if asked for).
    pub(crate) fn exec_done(&mut self, pid: Pid) {
        if self.state == State::Spawning(pid) {
            self.state = State::Running(pid);
        }
    }

    /// The child's final report (its `Exit`, or its failure) was sent: with
    /// `KEEP_CONNECTION` the connection is READY for another request (§6.6), else it closes.
    pub(crate) fn final_report(&mut self, keep: bool) {
        self.state = if keep { State::Ready } else { State::Closing };
    }

    /// The answer to [`Action::Signal`]: `Signaled`, or a non-fatal `SignalFailed`.
    pub(crate) fn signaled(&mut self, result: Result<(), Errno>) {
        let reply = match result {
            Ok(()) => Message::Signaled,
            Err(e) => {
                ErrorReply::new(ErrorCode::SignalFailed, e as i32, format!("kill: {e}")).into()
            }
        };
        self.send(reply);
    }

    /// The connection ends (its error, if any, was queued by the caller): `Closing`.
    pub(crate) fn close(&mut self) {
        self.state = State::Closing;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use forkserver_protocol::{Auth, ExecJob, FdMap, Hello, Signal, SpawnOptions, Tag};

    const KEY: &[u8] = b"a key of sixteen bytes or more";
    const CHALLENGE: [u8; CHALLENGE_LEN] = [7; CHALLENGE_LEN];

    fn frame(message: Message) -> Frame {
        Frame {
            message,
            fds: Vec::new(),
        }
    }

    /// Feeds `m` with (or without) the key; returns the actions it produced.
    fn feed(s: &mut Session, m: Message, key: Option<&[u8]>) -> Vec<Action> {
        let mut challenge = || Ok(CHALLENGE);
        let mut env = Env {
            key,
            challenge: &mut challenge,
            has_entry: &|name| name == "known",
        };
        s.handle_frame(frame(m), &mut env);
        std::iter::from_fn(|| s.poll_action()).collect()
    }

    fn hello() -> Message {
        Message::Hello(Hello::current())
    }

    fn spawn(job: Job) -> Message {
        Message::Spawn(Spawn::new(SpawnOptions::default(), FdMap::default(), job).unwrap())
    }

    fn exec() -> Message {
        spawn(Job::Exec(ExecJob::new(b"/bin/true".to_vec()).unwrap()))
    }

    fn entry(name: &str) -> Message {
        spawn(Job::Entry(
            forkserver_protocol::EntryJob::new(name, Vec::new()).unwrap(),
        ))
    }

    fn closes_with(actions: &[Action], code: ErrorCode) -> bool {
        matches!(actions, [Action::Close(e)] if e.code() == code)
    }

    fn ready() -> Session {
        let mut s = Session::new();
        feed(&mut s, hello(), None);
        assert_eq!(s.state(), State::Ready);
        s
    }

    fn running(pid: i32) -> Session {
        let mut s = ready();
        assert!(matches!(
            feed(&mut s, exec(), None)[..],
            [Action::Spawn(..)]
        ));
        s.spawned(Pid::from_raw(pid), false);
        s
    }

    #[test]
    fn hello_without_a_key_is_ready() {
        let mut s = Session::new();
        let a = feed(&mut s, hello(), None);
        assert!(
            matches!(&a[..], [Action::Send(Message::HelloOk(ok))] if ok.auth() == AuthMethod::None)
        );
        assert_eq!(s.state(), State::Ready);
    }

    #[test]
    fn anything_but_hello_first_closes() {
        for m in [
            exec(),
            Message::StatusRequest,
            Message::Signal(Signal::new(9).unwrap()),
        ] {
            let mut s = Session::new();
            let a = feed(&mut s, m, None);
            assert!(closes_with(&a, ErrorCode::UnexpectedMessage), "{a:?}");
            assert_eq!(s.state(), State::Closing);
        }
    }

    #[test]
    fn an_unsupported_version_closes() {
        let mut s = Session::new();
        let a = feed(&mut s, Message::Hello(Hello::new(2, 3).unwrap()), None);
        assert!(closes_with(&a, ErrorCode::UnsupportedVersion), "{a:?}");
    }

    #[test]
    fn with_a_key_auth_is_required_then_checked() {
        let mut s = Session::new();
        let a = feed(&mut s, hello(), Some(KEY));
        let [Action::Send(Message::HelloOk(ok))] = &a[..] else {
            panic!("{a:?}")
        };
        assert_eq!(
            ok.auth(),
            AuthMethod::HmacSha256 {
                challenge: CHALLENGE
            }
        );
        assert_eq!(s.state(), State::AwaitAuth(CHALLENGE));
        // A request before Auth: AuthRequired, closed.
        let mut early = Session::new();
        feed(&mut early, hello(), Some(KEY));
        assert!(closes_with(
            &feed(&mut early, exec(), Some(KEY)),
            ErrorCode::AuthRequired
        ));
        // A wrong answer: AuthFailed.
        let mut wrong = Session::new();
        feed(&mut wrong, hello(), Some(KEY));
        let bad = Auth {
            response: auth::client_response(b"another key, long enough", &CHALLENGE),
            challenge: [1; CHALLENGE_LEN],
        };
        assert!(closes_with(
            &feed(&mut wrong, Message::Auth(bad), Some(KEY)),
            ErrorCode::AuthFailed
        ));
        // The right one: AuthOk answering our challenge, READY.
        let ours = [3; CHALLENGE_LEN];
        let good = Auth {
            response: auth::client_response(KEY, &CHALLENGE),
            challenge: ours,
        };
        let a = feed(&mut s, Message::Auth(good), Some(KEY));
        let [Action::Send(Message::AuthOk(ok))] = &a[..] else {
            panic!("{a:?}")
        };
        assert!(auth::verify_server(KEY, &ours, &ok.response));
        assert_eq!(s.state(), State::Ready);
    }

    #[test]
    fn no_challenge_is_an_internal_error() {
        let mut s = Session::new();
        let mut challenge = || Err(std::io::Error::from(Errno::EIO));
        let mut env = Env {
            key: Some(KEY),
            challenge: &mut challenge,
            has_entry: &|_| false,
        };
        s.handle_frame(frame(hello()), &mut env);
        let a: Vec<_> = std::iter::from_fn(|| s.poll_action()).collect();
        assert!(closes_with(&a, ErrorCode::Internal), "{a:?}");
    }

    #[test]
    fn ready_takes_spawn_and_status_and_refuses_the_rest() {
        let mut s = ready();
        assert!(matches!(
            feed(&mut s, Message::StatusRequest, None)[..],
            [Action::Status]
        ));
        assert_eq!(s.state(), State::Ready);
        assert!(matches!(
            feed(&mut s, exec(), None)[..],
            [Action::Spawn(..)]
        ));
        // A Signal with no child, a second Hello: refused, closed.
        for m in [Message::Signal(Signal::new(15).unwrap()), hello()] {
            let mut s = ready();
            assert!(closes_with(
                &feed(&mut s, m, None),
                ErrorCode::UnexpectedMessage
            ));
        }
    }

    #[test]
    fn entry_points_are_checked_before_the_fork() {
        let mut s = ready();
        assert!(closes_with(
            &feed(&mut s, entry("unknown"), None),
            ErrorCode::UnknownEntry
        ));
        let mut s = ready();
        assert!(matches!(
            feed(&mut s, entry("known"), None)[..],
            [Action::Spawn(..)]
        ));
    }

    #[test]
    fn fds_that_do_not_match_the_map_close() {
        let mut s = ready();
        let (r, _w) = nix::unistd::pipe().unwrap();
        let mut challenge = || Ok(CHALLENGE);
        let mut env = Env {
            key: None,
            challenge: &mut challenge,
            has_entry: &|_| false,
        };
        s.handle_frame(
            Frame {
                message: exec(),
                fds: vec![r],
            },
            &mut env,
        );
        let a: Vec<_> = std::iter::from_fn(|| s.poll_action()).collect();
        assert!(closes_with(&a, ErrorCode::FdMismatch), "{a:?}");
    }

    #[test]
    fn spawned_waits_for_the_exec_with_pid_after_exec() {
        let mut s = ready();
        feed(&mut s, exec(), None);
        let pid = Pid::from_raw(42);
        s.spawned(pid, true);
        assert_eq!(s.state(), State::Spawning(pid));
        // Nothing is read while spawning (the event loop holds input), but a stray exec_done
        // for another pid changes nothing.
        s.exec_done(Pid::from_raw(43));
        assert_eq!(s.state(), State::Spawning(pid));
        s.exec_done(pid);
        assert_eq!(s.state(), State::Running(pid));
    }

    #[test]
    fn running_takes_signals_and_status() {
        let mut s = running(42);
        let a = feed(&mut s, Message::Signal(Signal::new(15).unwrap()), None);
        assert!(matches!(a[..], [Action::Signal(p, 15)] if p == Pid::from_raw(42)));
        s.signaled(Ok(()));
        assert!(matches!(
            s.poll_action(),
            Some(Action::Send(Message::Signaled))
        ));
        s.signaled(Err(Errno::ESRCH));
        let Some(Action::Send(Message::Error(e))) = s.poll_action() else {
            panic!()
        };
        // Not fatal: still running.
        assert_eq!(
            (e.code(), s.state()),
            (ErrorCode::SignalFailed, State::Running(Pid::from_raw(42)))
        );
        assert!(matches!(
            feed(&mut s, Message::StatusRequest, None)[..],
            [Action::Status]
        ));
        // A second Spawn while running: refused.
        assert!(closes_with(
            &feed(&mut s, exec(), None),
            ErrorCode::UnexpectedMessage
        ));
    }

    #[test]
    fn the_final_report_keeps_or_closes() {
        let mut s = running(42);
        s.final_report(true);
        assert_eq!(s.state(), State::Ready);
        // READY again: another request is taken with no new handshake.
        assert!(matches!(
            feed(&mut s, exec(), None)[..],
            [Action::Spawn(..)]
        ));
        let mut s = running(42);
        s.final_report(false);
        assert_eq!(s.state(), State::Closing);
        // Closing: whatever arrives is refused.
        let a = feed(&mut s, Message::StatusRequest, None);
        assert!(matches!(&a[..], [Action::Close(e)] if e.code() == ErrorCode::UnexpectedMessage));
    }

    #[test]
    fn every_tag_in_every_state_has_an_answer() {
        // Each state and each client message: exactly one decision, never a panic.
        let states: Vec<fn() -> Session> = vec![
            Session::new,
            || {
                let mut s = Session::new();
                feed(&mut s, hello(), Some(KEY));
                s
            },
            ready,
            || running(42),
        ];
        let messages = [
            hello(),
            exec(),
            Message::StatusRequest,
            Message::Signal(Signal::new(1).unwrap()),
        ];
        for make in &states {
            for m in &messages {
                let mut s = make();
                let key = matches!(s.state(), State::AwaitAuth(_)).then_some(KEY);
                let a = feed(&mut s, m.clone(), key);
                assert_eq!(a.len(), 1, "{:?} in {:?}: {a:?}", m.tag(), make().state());
            }
        }
        assert!(Tag::ALL.iter().any(|t| t.is_from_client()));
    }
}
