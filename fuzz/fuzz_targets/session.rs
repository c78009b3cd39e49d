//! Drives one connection's sans-IO `Session` (PROTOCOL.md §6.1) with arbitrary events, the way
//! the server's event loop does, and checks after each step that every action it asks for is
//! legal in its state (`legal` below: §6.1's table, written out) and that the state it ends in
//! is the one the table gives. A panic anywhere (the session's or an assertion) is a finding.
//!
//! The events are those the event loop feeds a session, each only where the loop feeds it:
//! decoded frames (with their fds) while the connection takes input (not SPAWNING, not
//! CLOSING), among them a `Hello` of this version, a `Spawn` that keeps the connection and a
//! right `Auth` (a fuzzer cannot guess a MAC); the outcome of each `Spawn` (forked,
//! with or without waiting for the exec, or refused before the fork); the exec's success; the
//! child's final report (`Exit` or its setup failure); the result of each `kill`; and the loop's
//! own fatal errors (timeouts, malformed input, shutdown). Besides the table, each step checks
//! the state against the loop's own record: a child state names the one live child, a final
//! report ends it (so there is at most one per spawn), and CLOSING is final.
//!
//! The seeds (`fuzz/corpus/session/seed-*`) were picked from fuzz runs, one per path their
//! names say (a kept connection back in READY, a right `Auth`, a signal, ...). What bytes mean
//! depends on the layout of `Input`: after changing it, pick new ones.
#![no_main]

use arbitrary::Arbitrary;
use forkserver_protocol::{
    auth, Auth, ErrorCode, Features, FdMap, Frame, Hello, Job, Message, Spawn, SpawnOptions, CHALLENGE_LEN,
    MAX_SIGNAL,
};
use forkserver_server::fuzzing::{Action, Env, Errno, Pid, Session, State};
use libfuzzer_sys::fuzz_target;
use std::os::fd::OwnedFd;

const KEY: &[u8] = b"the session fuzzer's key";

#[derive(Arbitrary, Debug)]
struct Input {
    /// Whether the server has a key (§9): `Hello` then leads to AWAIT_AUTH.
    with_key: bool,
    /// Which entry names are registered: those whose length has this parity.
    entry_parity: bool,
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// A frame the transport decoded; `fd_skew` adds or removes one fd (the transport checks
    /// counts, the session must still refuse a mismatch cleanly).
    Frame {
        message: Message,
        fd_skew: Skew,
        outcome: Outcome,
    },
    /// A `Hello` offering this crate's version (an arbitrary one rarely has a common version).
    RightHello { outcome: Outcome },
    /// A `Spawn` with `KEEP_CONNECTION`, whose final report leads back to READY (rare among
    /// arbitrary messages).
    KeptSpawn {
        options: SpawnOptions,
        fds: FdMap,
        job: Job,
        outcome: Outcome,
    },
    /// An `Auth` with the right response to AWAIT_AUTH's challenge.
    RightAuth { challenge: [u8; CHALLENGE_LEN] },
    /// SPAWNING: the exec succeeded, the `Pid` goes out.
    ExecDone,
    /// SPAWNING or RUNNING: the child's final report (`Exit`, or `ExecFailed` /
    /// `ChildSetupFailed`) was sent; a server shutting down keeps no connection.
    FinalReport { shutting_down: bool },
    /// The event loop ends the connection with an error of its own.
    LoopFails,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Skew {
    Exact,
    OneMore,
    OneFewer,
}

/// What the event loop makes of the actions a frame leads to.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct Outcome {
    /// The random challenge, or its failure.
    challenge: Option<[u8; CHALLENGE_LEN]>,
    /// A `Spawn` forks child `pid + 1`, or fails before the fork.
    fork: Option<u16>,
    /// `kill` succeeds, or fails with `ESRCH`.
    kill_ok: bool,
}

/// §6.1 as a table: may a session in `before` (the state when the event came) ask for
/// `action`? `child` is the pid of the connection's live child, if any. A new request and its
/// reply need a row here (the fuzzer finds the reply illegal until it has one).
fn legal(before: State, action: &Action, child: Option<Pid>) -> bool {
    use ErrorCode::*;
    let closes =
        |codes: &[ErrorCode]| matches!(action, Action::Close(e) if codes.contains(&e.code()));
    match before {
        State::AwaitHello => {
            matches!(action, Action::Send(Message::HelloOk(_)))
                || closes(&[UnsupportedVersion, UnexpectedMessage, Internal])
        }
        State::AwaitAuth(_) => {
            matches!(action, Action::Send(Message::AuthOk(_)))
                || closes(&[AuthFailed, AuthRequired])
        }
        // At most one child per connection: a Spawn only with none alive.
        State::Ready => {
            matches!(action, Action::Status | Action::Metrics)
                || matches!(action, Action::Send(Message::Features(f)) if *f == Features::current())
                || matches!(action, Action::Spawn(..)) && child.is_none()
                || closes(&[UnexpectedMessage, UnknownEntry, FdMismatch])
        }
        // A signal only to the child of this connection, alive; its answer only here.
        State::Running(pid) => match action {
            Action::Status | Action::Metrics => true,
            Action::Signal(p, signo) => {
                *p == pid && child == Some(pid) && (1..=MAX_SIGNAL as i32).contains(signo)
            }
            Action::Send(Message::Signaled) => true,
            Action::Send(Message::Error(e)) => e.code() == SignalFailed,
            _ => closes(&[UnexpectedMessage]),
        },
        // SPAWNING answers nothing; CLOSING sends nothing more.
        State::Spawning(_) | State::Closing => false,
    }
}

/// The event loop's side of one connection.
struct Loop {
    session: Session,
    with_key: bool,
    entry_parity: bool,
    /// The live child: its pid and whether it keeps the connection.
    child: Option<(Pid, bool)>,
    devnull: OwnedFd,
}

impl Loop {
    fn child_pid(&self) -> Option<Pid> {
        self.child.map(|(pid, _)| pid)
    }

    fn fds(&self, n: usize) -> Vec<OwnedFd> {
        (0..n)
            .map(|_| self.devnull.try_clone().expect("dup"))
            .collect()
    }

    /// One frame, and the loop's handling of what the session asks for.
    fn frame(&mut self, message: Message, fds: Vec<OwnedFd>, outcome: Outcome) {
        let before = self.session.state();
        let parity = self.entry_parity;
        let mut challenge = || {
            outcome
                .challenge
                .ok_or_else(|| std::io::Error::other("no randomness"))
        };
        let mut env = Env {
            key: self.with_key.then_some(KEY),
            challenge: &mut challenge,
            has_entry: &|name: &str| (name.len() % 2 == 0) == parity,
        };
        self.session.handle_frame(Frame { message, fds }, &mut env);
        // One frame, one answer (§6.1 "Ordering"): a reply, or a request to the loop.
        let action = self
            .session
            .poll_action()
            .expect("a frame without an answer");
        assert!(
            legal(before, &action, self.child_pid()),
            "{action:?} in {before:?}"
        );
        let after = self.session.state();
        match action {
            Action::Close(_) => assert_eq!(after, State::Closing),
            Action::Send(Message::HelloOk(_)) => {
                assert_eq!(
                    matches!(after, State::AwaitAuth(_)),
                    self.with_key,
                    "{after:?}"
                );
                assert!(
                    matches!(after, State::AwaitAuth(_) | State::Ready),
                    "{after:?}"
                );
            }
            Action::Send(Message::AuthOk(_)) => assert_eq!(after, State::Ready),
            // Any other reply to a frame answers it and keeps the state.
            Action::Send(_) => assert_eq!(after, before),
            Action::Status | Action::Metrics => assert_eq!(after, before),
            Action::Spawn(spawn, bundle) => {
                assert_eq!(after, State::Ready, "a Spawn waits for the loop's answer");
                assert_eq!(bundle.len(), spawn.fds().len());
                self.spawn(&spawn, outcome);
            }
            Action::Signal(pid, _) => {
                assert_eq!(after, before);
                let result = if outcome.kill_ok {
                    Ok(())
                } else {
                    Err(Errno::ESRCH)
                };
                self.session.signaled(result);
                let reply = self
                    .session
                    .poll_action()
                    .expect("a signal without an answer");
                assert!(
                    legal(after, &reply, Some(pid)),
                    "{reply:?} answering a signal"
                );
                assert!(matches!(reply, Action::Send(_)), "{reply:?}");
                assert_eq!(self.session.state(), State::Running(pid));
            }
        }
        self.no_more_actions();
    }

    /// The loop carries out a `Spawn`: a child, or a refusal before the fork.
    fn spawn(&mut self, spawn: &Spawn, outcome: Outcome) {
        let Some(pid) = outcome.fork else {
            // ForkFailed, ResourceExhausted, ShuttingDown: the loop sends it and closes.
            self.session.close();
            return assert_eq!(self.session.state(), State::Closing);
        };
        let pid = Pid::from_raw(i32::from(pid) + 1);
        let options = spawn.options();
        let wait_exec = options.pid_after_exec && matches!(spawn.job(), Job::Exec(_));
        self.session.spawned(pid, wait_exec);
        self.child = Some((pid, options.keep_connection));
        let expected = if wait_exec {
            State::Spawning(pid)
        } else {
            State::Running(pid)
        };
        assert_eq!(self.session.state(), expected);
    }

    fn no_more_actions(&mut self) {
        let extra = self.session.poll_action();
        assert!(extra.is_none(), "a second answer: {extra:?}");
    }

    fn step(&mut self, step: Step) {
        let state = self.session.state();
        let takes_input = !matches!(state, State::Closing | State::Spawning(_));
        match step {
            Step::Frame {
                message,
                fd_skew,
                outcome,
            } if takes_input => {
                let n = message.fd_count();
                let n = match fd_skew {
                    Skew::Exact => n,
                    Skew::OneMore => n + 1,
                    Skew::OneFewer => n.saturating_sub(1),
                };
                let fds = self.fds(n);
                self.frame(message, fds, outcome);
            }
            Step::RightHello { outcome } if takes_input => {
                self.frame(Message::Hello(Hello::current()), Vec::new(), outcome);
            }
            Step::KeptSpawn {
                mut options,
                fds,
                job,
                outcome,
            } if takes_input => {
                options.keep_connection = true;
                if let Ok(spawn) = Spawn::new(options, fds, job) {
                    let fds = self.fds(spawn.fds().len());
                    self.frame(Message::Spawn(spawn), fds, outcome);
                }
            }
            Step::RightAuth { challenge } => {
                if let State::AwaitAuth(server_challenge) = state {
                    let response = auth::client_response(KEY, &server_challenge);
                    let auth = Message::Auth(Auth {
                        response,
                        challenge,
                    });
                    let outcome = Outcome {
                        challenge: None,
                        fork: None,
                        kill_ok: false,
                    };
                    self.frame(auth, Vec::new(), outcome);
                    assert_eq!(self.session.state(), State::Ready);
                }
            }
            Step::ExecDone => {
                if let State::Spawning(pid) = state {
                    self.session.exec_done(pid);
                    assert_eq!(self.session.state(), State::Running(pid));
                    self.no_more_actions();
                }
            }
            Step::FinalReport { shutting_down } => {
                if let State::Spawning(pid) | State::Running(pid) = state {
                    let (child, keep) = self.child.take().expect("a child state without a child");
                    assert_eq!(child, pid);
                    let keep = keep && !shutting_down;
                    self.session.final_report(keep);
                    let expected = if keep { State::Ready } else { State::Closing };
                    assert_eq!(self.session.state(), expected);
                    self.no_more_actions();
                }
            }
            Step::LoopFails => {
                self.session.close();
                assert_eq!(self.session.state(), State::Closing);
                self.no_more_actions();
            }
            Step::Frame { .. } | Step::RightHello { .. } | Step::KeptSpawn { .. } => {}
        }
        // The states with a child are exactly those the loop has a live child for.
        match self.session.state() {
            State::Spawning(pid) | State::Running(pid) => assert_eq!(self.child_pid(), Some(pid)),
            State::Closing => {}
            s => assert_eq!(self.child, None, "{s:?} with a live child"),
        }
        // CLOSING is final.
        if state == State::Closing {
            assert_eq!(self.session.state(), State::Closing);
        }
    }
}

fuzz_target!(|input: Input| {
    let mut conn = Loop {
        session: Session::new(),
        with_key: input.with_key,
        entry_parity: input.entry_parity,
        child: None,
        devnull: std::fs::File::open("/dev/null").expect("/dev/null").into(),
    };
    for step in input.steps {
        conn.step(step);
    }
});
