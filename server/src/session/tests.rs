//! Every transition of the session, in memory.

use forkserver_protocol::{
    auth, Auth, AuthMethod, ErrorCode, ExecJob, FdMap, Features, Frame, Hello, Job, Message,
    Signal, Spawn, SpawnOptions, Tag, CHALLENGE_LEN,
};
use nix::errno::Errno;
use nix::unistd::Pid;

use super::{Action, Env, Session, State};

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
fn features_name_every_spawn_flag_and_stay_ready() {
    let mut s = ready();
    let a = feed(&mut s, Message::FeaturesRequest, None);
    let [Action::Send(Message::Features(f))] = &a[..] else {
        panic!("{a:?}")
    };
    assert_eq!(f.spawn_flags(), forkserver_protocol::spawn_flags::ALL);
    assert_eq!(f.revision(), forkserver_protocol::Revision::CURRENT);
    assert_eq!(s.state(), State::Ready);
    // Still READY: a Spawn follows on the same connection.
    assert!(matches!(
        feed(&mut s, exec(), None)[..],
        [Action::Spawn(..)]
    ));
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

/// One valid message of each client tag (a right `Auth` answers [`CHALLENGE`] with [`KEY`]).
fn sample(tag: Tag) -> Message {
    match tag {
        Tag::Hello => hello(),
        Tag::Auth => Message::Auth(Auth {
            response: auth::client_response(KEY, &CHALLENGE),
            challenge: [9; CHALLENGE_LEN],
        }),
        Tag::Spawn => exec(),
        Tag::Signal => Message::Signal(Signal::new(15).unwrap()),
        Tag::StatusRequest => Message::StatusRequest,
        Tag::FeaturesRequest => Message::FeaturesRequest,
        Tag::MetricsRequest => Message::MetricsRequest,
        t => panic!("no sample message for the client tag {t:?}: add one"),
    }
}

/// What §6.1's table says a state does with a message of `tag`: the action asked for and
/// the state after it. Every cell not written here is "any other message": an error, closed.
fn expected(state: State, tag: Tag) -> (Option<ErrorCode>, State) {
    let refused = |code| (Some(code), State::Closing);
    match (state, tag) {
        (State::AwaitHello, Tag::Hello) => (None, State::Ready),
        (State::AwaitHello, _) => refused(ErrorCode::UnexpectedMessage),
        (State::AwaitAuth(_), Tag::Auth) => (None, State::Ready),
        (State::AwaitAuth(_), _) => refused(ErrorCode::AuthRequired),
        // A Spawn waits in READY for the event loop's `spawned`.
        (
            State::Ready,
            Tag::StatusRequest | Tag::FeaturesRequest | Tag::MetricsRequest | Tag::Spawn,
        ) => (None, State::Ready),
        (State::Running(pid), Tag::StatusRequest | Tag::MetricsRequest | Tag::Signal) => {
            (None, State::Running(pid))
        }
        // SPAWNING answers nothing (the table lists no message for it): any frame is refused.
        _ => refused(ErrorCode::UnexpectedMessage),
    }
}

/// A state of §6.1 by name, and how to reach it.
type Reached = (&'static str, fn() -> Session);

#[test]
fn every_tag_in_every_state_has_an_answer() {
    // Each state of §6.1 and each client message: the one action the table gives, and the
    // state it leads to.
    let states: Vec<Reached> = vec![
        ("AWAIT_HELLO", Session::new),
        ("AWAIT_AUTH", || {
            let mut s = Session::new();
            feed(&mut s, hello(), Some(KEY));
            s
        }),
        ("READY", ready),
        ("SPAWNING", || {
            let mut s = ready();
            feed(&mut s, exec(), None);
            s.spawned(Pid::from_raw(41), true);
            s
        }),
        ("RUNNING", || running(42)),
    ];
    let tags: Vec<Tag> = Tag::ALL
        .into_iter()
        .filter(|t| t.is_from_client())
        .collect();
    assert_eq!(tags.len(), 7, "{tags:?}");
    for (name, make) in &states {
        for &tag in &tags {
            let mut s = make();
            let before = s.state();
            let key = matches!(before, State::AwaitAuth(_)).then_some(KEY);
            let a = feed(&mut s, sample(tag), key);
            let (error, after) = expected(before, tag);
            let what = format!("{tag:?} in {name}: {a:?}");
            assert_eq!(s.state(), after, "{what}");
            match error {
                Some(code) => assert!(closes_with(&a, code), "{what}"),
                None => match (&a[..], tag) {
                    ([Action::Send(Message::HelloOk(_))], Tag::Hello)
                    | ([Action::Send(Message::AuthOk(_))], Tag::Auth)
                    | ([Action::Spawn(..)], Tag::Spawn)
                    | ([Action::Status], Tag::StatusRequest)
                    | ([Action::Metrics], Tag::MetricsRequest) => {}
                    ([Action::Send(Message::Features(f))], Tag::FeaturesRequest) => {
                        assert_eq!(*f, Features::current(), "{what}")
                    }
                    ([Action::Signal(pid, 15)], Tag::Signal) => {
                        assert_eq!(State::Running(*pid), before, "{what}")
                    }
                    _ => panic!("{what}"),
                },
            }
        }
    }
}

#[test]
fn a_closing_session_asks_for_nothing_but_its_close() {
    // After a refusal nothing a late frame says is acted on: no spawn, signal, status or
    // reply, and the session stays closing.
    for tag in Tag::ALL.into_iter().filter(|t| t.is_from_client()) {
        let mut s = Session::new();
        assert!(closes_with(
            &feed(&mut s, Message::StatusRequest, None),
            ErrorCode::UnexpectedMessage
        ));
        let a = feed(&mut s, sample(tag), None);
        assert!(
            a.iter().all(|a| matches!(a, Action::Close(_))),
            "{tag:?}: {a:?}"
        );
        assert_eq!(s.state(), State::Closing, "{tag:?}");
    }
}
