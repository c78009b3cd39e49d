//! The test vectors of `spec/vectors/`: every file is loaded and checked against the codec, so
//! the spec and the code cannot drift.
//!
//! The vectors are built by `build_*` below from the public constructors (valid ones) and from
//! deliberate corruptions with the error each must cause (invalid ones). Set
//! `FORKSERVER_REGEN_VECTORS=1` to rewrite the files after a reviewed change of the format; that
//! also rewrites the `decode` fuzz target's seeds (`fuzz/corpus/decode/seed-*`), which the test
//! checks otherwise.

mod common;

use common::*;
use forkserver_protocol::*;
use serde_json::{json, Value};
use std::num::NonZeroU64;

/// fd counts are per process and tests run on threads: every test here takes this lock, so
/// that a file another test has open does not show up as a leak.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn frame(tag: u8, nfds: u16, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag, 0];
    v.extend_from_slice(&nfds.to_le_bytes());
    v.extend_from_slice(&(body.len() as u32).to_le_bytes());
    v.extend_from_slice(body);
    v
}

fn header_only(tag: u8, nfds: u16, len: u32) -> Vec<u8> {
    let mut v = vec![tag, 0];
    v.extend_from_slice(&nfds.to_le_bytes());
    v.extend_from_slice(&len.to_le_bytes());
    v
}

fn entry_spawn(n: usize) -> Message {
    let map = FdMap::from_targets((0..n as u32).collect()).unwrap();
    Message::Spawn(
        Spawn::new(
            SpawnOptions::default(),
            map,
            Job::Entry(EntryJob::new("worker", b"job-1".to_vec()).unwrap()),
        )
        .unwrap(),
    )
}

fn echo_spawn() -> Message {
    let mut job = ExecJob::new("/bin/echo").unwrap();
    job.push_arg("hi").unwrap();
    Message::Spawn(
        Spawn::new(
            SpawnOptions::default(),
            FdMap::from_targets(vec![1]).unwrap(),
            Job::Exec(job),
        )
        .unwrap(),
    )
}

fn build_valid() -> Vec<(String, String, Message)> {
    let mut v: Vec<(String, String, Message)> = Vec::new();
    let mut add = |name: &str, desc: &str, m: Message| v.push((name.into(), desc.into(), m));
    add(
        "hello-v1",
        "Hello offering exactly version 1",
        Message::Hello(Hello::current()),
    );
    add(
        "hello-v1-to-v3",
        "Hello offering versions 1..=3",
        Message::Hello(Hello::new(1, 3).unwrap()),
    );
    add(
        "hellook-none",
        "HelloOk: version 1, no authentication",
        Message::HelloOk(HelloOk::new(1, AuthMethod::None).unwrap()),
    );
    add(
        "hellook-hmac",
        "HelloOk: version 1, HMAC-SHA256 authentication with the server's challenge",
        Message::HelloOk(
            HelloOk::new(
                1,
                AuthMethod::HmacSha256 {
                    challenge: std::array::from_fn(|i| i as u8),
                },
            )
            .unwrap(),
        ),
    );
    add(
        "auth",
        "Auth: the client's response and its own challenge",
        Message::Auth(Auth {
            response: [0xAA; 32],
            challenge: std::array::from_fn(|i| 0x20 + i as u8),
        }),
    );
    add(
        "authok",
        "AuthOk: the server's response",
        Message::AuthOk(AuthOk {
            response: [0xBB; 32],
        }),
    );
    add(
        "spawn-exec-echo",
        "exec /bin/echo hi with the caller's stdout as fd 1",
        echo_spawn(),
    );
    {
        let mut job = ExecJob::new("sh").unwrap();
        job.push_arg("-c").unwrap();
        job.push_arg("exit 3").unwrap();
        job.push_arg(vec![0xff, 0xfe, b'x']).unwrap();
        job.set_env_clear(true);
        job.push_env("PATH", "/usr/bin:/bin").unwrap();
        job.push_env("LANG", "C.UTF-8").unwrap();
        job.set_cwd(Some(b"/tmp".to_vec())).unwrap();
        let opts = SpawnOptions {
            session: Session::NewSession,
            want_pidfd: true,
            pid_after_exec: true,
            kill_on_disconnect: true,
            keep_connection: false,
            deadline_ms: NonZeroU64::new(30_000),
            credentials: Credentials::default(),
            want_rusage: false,
            rlimits: None,
            umask: None,
            nice: None,
            no_new_privs: false,
            oom_score_adj: None,
            grace_ms: None,
        };
        add(
            "spawn-exec-full",
            "exec with every option of rev 0.2 (not keep_connection): new session, pidfd, pid after exec, kill on disconnect, 30 s deadline, cleared env, cwd, a non-UTF-8 argument, fds 0-2",
            Message::Spawn(Spawn::new(opts, FdMap::from_targets(vec![0, 1, 2]).unwrap(), Job::Exec(job)).unwrap()),
        );
    }
    add(
        "spawn-entry",
        "entry point 'resize' with a 4-byte payload, new process group, fd 7 mapped to 3",
        Message::Spawn(
            Spawn::new(
                SpawnOptions {
                    session: Session::NewProcessGroup,
                    ..SpawnOptions::default()
                },
                FdMap::from_targets(vec![3]).unwrap(),
                Job::Entry(EntryJob::new("resize", vec![0, 1, 2, 0xff]).unwrap()),
            )
            .unwrap(),
        ),
    );
    add(
        "spawn-entry-keep",
        "entry point 'noop', empty payload, no fds, KEEP_CONNECTION: the connection returns to READY after the child's Exit",
        Message::Spawn(
            Spawn::new(
                SpawnOptions {
                    keep_connection: true,
                    ..SpawnOptions::default()
                },
                FdMap::default(),
                Job::Entry(EntryJob::new("noop", Vec::new()).unwrap()),
            )
            .unwrap(),
        ),
    );
    // Rev 0.5: credentials, joining a process group, environment removals.
    let with = |options: SpawnOptions, job: Job| {
        Message::Spawn(Spawn::new(options, FdMap::from_targets(vec![1]).unwrap(), job).unwrap())
    };
    let echo_job = || {
        let mut job = ExecJob::new("/bin/echo").unwrap();
        job.push_arg("hi").unwrap();
        job
    };
    let creds = |uid, gid, groups: Option<&[u32]>| SpawnOptions {
        credentials: Credentials {
            uid,
            gid,
            groups: groups.map(|g| Groups::new(g).unwrap()),
        },
        ..SpawnOptions::default()
    };
    add(
        "spawn-uid",
        "rev 0.5: echo as uid 1000 (SET_UID, the uid after the targets)",
        with(creds(Some(1000), None, None), Job::Exec(echo_job())),
    );
    add(
        "spawn-gid",
        "rev 0.5: echo as gid 100 (SET_GID)",
        with(creds(None, Some(100), None), Job::Exec(echo_job())),
    );
    add(
        "spawn-groups",
        "rev 0.5: echo with supplementary groups 10 and 20 (SET_GROUPS)",
        with(creds(None, None, Some(&[10, 20])), Job::Exec(echo_job())),
    );
    add(
        "spawn-groups-empty",
        "rev 0.5: echo with no supplementary groups at all (SET_GROUPS, ngroups = 0)",
        with(creds(None, None, Some(&[])), Job::Exec(echo_job())),
    );
    add(
        "spawn-join-pgid",
        "rev 0.5: echo joining process group 4194304 (JOIN_PROCESS_GROUP); 2^22 is above every Linux pid (PID_MAX_LIMIT), so no such group exists: live, setpgid fails, ChildSetupFailed(EPERM)",
        with(
            SpawnOptions {
                session: Session::JoinProcessGroup(4_194_304),
                ..SpawnOptions::default()
            },
            Job::Exec(echo_job()),
        ),
    );
    {
        let mut job = echo_job();
        job.push_env_remove("HOME").unwrap();
        add(
            "spawn-env-remove",
            "rev 0.5: echo without HOME in the inherited environment (ENV_REMOVE)",
            with(SpawnOptions::default(), Job::Exec(job)),
        );
    }
    {
        let mut job = echo_job();
        job.push_env("LANG", "C").unwrap();
        job.push_env_remove("HOME").unwrap();
        job.push_env_remove("TERM").unwrap();
        let options = SpawnOptions {
            // 2^22: no Linux pid, so no group: setpgid fails before any id is changed, and the
            // live outcome is ChildSetupFailed(EPERM) on every host, root or not.
            session: Session::JoinProcessGroup(4_194_304),
            ..creds(Some(1000), Some(1000), Some(&[1000, 27]))
        };
        add(
            "spawn-rev05-all",
            "rev 0.5: uid, gid, groups, process group 4194304 and environment removals together; live, the process-group step fails first: ChildSetupFailed(EPERM)",
            with(options, Job::Exec(job)),
        );
    }
    add(
        "spawn-want-rusage",
        "rev 0.6: echo whose Exit carries its resource usage (WANT_RUSAGE, no body field)",
        with(
            SpawnOptions {
                want_rusage: true,
                ..SpawnOptions::default()
            },
            Job::Exec(echo_job()),
        ),
    );
    add(
        "spawn-rlimits",
        "rev 0.6: echo with RLIMIT_NOFILE 64/128 and RLIMIT_CORE 0/infinity (SET_RLIMITS)",
        with(
            SpawnOptions {
                rlimits: Some(
                    Rlimits::new(&[
                        Rlimit {
                            resource: 7,
                            soft: 64,
                            hard: 128,
                        },
                        Rlimit {
                            resource: 4,
                            soft: 0,
                            hard: RLIM_INFINITY,
                        },
                    ])
                    .unwrap(),
                ),
                ..SpawnOptions::default()
            },
            Job::Exec(echo_job()),
        ),
    );
    add(
        "spawn-controls",
        "rev 0.6: echo with umask 077, nice 10, no_new_privs and oom_score_adj 500",
        with(
            SpawnOptions {
                umask: Some(0o077),
                nice: Some(10),
                no_new_privs: true,
                oom_score_adj: Some(500),
                ..SpawnOptions::default()
            },
            Job::Exec(echo_job()),
        ),
    );
    add(
        "spawn-grace",
        "rev 0.6: echo with a 30 s deadline and a 5 s grace: SIGTERM at the deadline, SIGKILL 5 s later (SET_GRACE)",
        with(
            SpawnOptions {
                deadline_ms: NonZeroU64::new(30_000),
                grace_ms: core::num::NonZeroU32::new(5_000),
                ..SpawnOptions::default()
            },
            Job::Exec(echo_job()),
        ),
    );
    add(
        "spawn-entry-uid",
        "rev 0.5: entry point 'noop' run as uid 65534, gid 65534, no groups",
        Message::Spawn(
            Spawn::new(
                creds(Some(65534), Some(65534), Some(&[])),
                FdMap::default(),
                Job::Entry(EntryJob::new("noop", Vec::new()).unwrap()),
            )
            .unwrap(),
        ),
    );
    for n in [0usize, 1, 3, 253, 254, 256] {
        add(
            &format!("spawn-fds-{n}"),
            &format!("entry spawn with a bundle of {n} fds, targets 0..{n}"),
            entry_spawn(n),
        );
    }
    add(
        "signal-sigterm",
        "Signal 15 (SIGTERM)",
        Message::Signal(Signal::new(15).unwrap()),
    );
    add(
        "signal-64",
        "Signal 64, the highest allowed",
        Message::Signal(Signal::new(64).unwrap()),
    );
    add("status-request", "StatusRequest", Message::StatusRequest);
    add(
        "features-request",
        "FeaturesRequest (rev 0.6)",
        Message::FeaturesRequest,
    );
    add(
        "pid",
        "Pid 4242 without a pidfd",
        Message::Pid(Pid::new(4242, false).unwrap()),
    );
    add(
        "pid-with-pidfd",
        "Pid 4242 with a pidfd attached",
        Message::Pid(Pid::new(4242, true).unwrap()),
    );
    add(
        "exit-0",
        "Exit 0",
        Message::Exit(Exit::new(0, false, false).unwrap()),
    );
    add(
        "exit-3",
        "Exit 3",
        Message::Exit(Exit::new(3, false, false).unwrap()),
    );
    add(
        "exit-255",
        "Exit 255",
        Message::Exit(Exit::new(255, false, false).unwrap()),
    );
    add(
        "exit-sigkill-deadline",
        "killed by SIGKILL at its deadline: -9",
        Message::Exit(Exit::new(-9, true, false).unwrap()),
    );
    add(
        "exit-sigsegv-core",
        "killed by SIGSEGV, core dumped: -11",
        Message::Exit(Exit::new(-11, false, true).unwrap()),
    );
    add(
        "exit-sig64",
        "killed by signal 64: -64",
        Message::Exit(Exit::new(-64, false, false).unwrap()),
    );
    add(
        "exit-usage",
        "rev 0.6: Exit 0 with its resource usage (WANT_RUSAGE): 0.25 s user, 0.01 s system, 65536 KiB peak RSS",
        Message::Exit(Exit::new(0, false, false).unwrap().with_usage(Some(ResourceUsage {
            user_us: 250_000,
            system_us: 10_000,
            maxrss_kib: 65_536,
        }))),
    );
    add("signaled", "Signaled", Message::Signaled);
    add(
        "metrics-request",
        "MetricsRequest (rev 0.6)",
        Message::MetricsRequest,
    );
    add(
        "metrics",
        "Metrics of a server up 3600 s (rev 0.6): each counter a different value",
        Message::Metrics(Metrics {
            uptime_s: 3600,
            spawns_exec_ok: 1000,
            spawns_exec_failed: 3,
            spawns_exec_setup_failed: 2,
            spawns_entry_ok: 500,
            spawns_entry_setup_failed: 1,
            kills_deadline: 7,
            kills_disconnect: 4,
            refused_quota: 9,
            refused_peer: 5,
            refused_max_children: 6,
            auth_failures: 8,
            orphans_reaped: 11,
            pool_size: 4,
            pool_idle: 3,
            setup_failed_setup: 12,
            setup_failed_session: 13,
            setup_failed_limits: 14,
            setup_failed_credentials: 15,
            setup_failed_sandbox: 16,
            setup_failed_chdir: 17,
        }),
    );
    add(
        "status",
        "Status of a server with 2 live children",
        Message::Status(Status::new(1, 100, 2, 3, 12345, "forkserver 0.1.0").unwrap()),
    );
    add(
        "features",
        "Features of a rev 0.6 server: every Spawn flag bit (0-11), requests 0x10-0x14",
        Message::Features(Features::current()),
    );
    add(
        "features-later-revision",
        "Features of a later server (rev 0.7), with bits a rev 0.6 reader does not know",
        Message::Features(Features::new(Revision::new(0, 7), 0x0001_ffff, 0x1f).unwrap()),
    );
    for code in ErrorCode::ALL {
        let errno = match code {
            ErrorCode::ForkFailed => 11,
            ErrorCode::ExecFailed => 2,
            ErrorCode::ChildSetupFailed => 9,
            ErrorCode::SignalFailed => 1,
            ErrorCode::ResourceExhausted => 24,
            _ => 0,
        };
        add(
            &format!("error-{}", code.name()),
            &format!("Error {} ({})", code.name(), *code as u16),
            Message::Error(ErrorReply::new(
                *code,
                errno,
                format!("example {}", code.name()),
            )),
        );
    }
    add(
        "error-empty-message",
        "Error with an empty message",
        Message::Error(ErrorReply::new(ErrorCode::Internal, 0, "")),
    );
    v
}

fn body_of(m: &Message) -> Vec<u8> {
    m.to_bytes()[HEADER_LEN..].to_vec()
}

fn build_invalid() -> Vec<(String, String, Vec<u8>, DecodeError)> {
    use DecodeError as E;
    let mut v = Vec::new();
    let mut add = |name: &str, desc: &str, bytes: Vec<u8>, err: DecodeError| {
        v.push((name.to_owned(), desc.to_owned(), bytes, err))
    };
    let hello = Message::Hello(Hello::current()).to_bytes();

    add(
        "tag-00",
        "tag 0x00 is reserved",
        frame(0x00, 0, &[]),
        E::UnknownTag(0),
    );
    add(
        "tag-15",
        "tag 0x15 is reserved",
        frame(0x15, 0, &[]),
        E::UnknownTag(0x15),
    );
    add(
        "tag-ff",
        "tag 0xff is reserved",
        vec![0xff],
        E::UnknownTag(0xff),
    );
    let mut b = hello.clone();
    b[1] = 1;
    add(
        "header-flags",
        "header flags byte not zero",
        b,
        E::ReservedNotZero,
    );
    add(
        "spawn-257-fds",
        "Spawn header announcing 257 fds",
        header_only(0x10, 257, 100),
        E::TooManyFds(257),
    );
    add(
        "spawn-65535-fds",
        "Spawn header announcing 65535 fds",
        header_only(0x10, 65535, 100),
        E::TooManyFds(65535),
    );
    add(
        "hello-with-fd",
        "Hello cannot carry fds",
        header_only(0x01, 1, 8),
        E::UnexpectedFds { tag: 1, nfds: 1 },
    );
    add(
        "pid-with-2-fds",
        "Pid carries at most one fd",
        header_only(0x20, 2, 4),
        E::UnexpectedFds { tag: 0x20, nfds: 2 },
    );
    add(
        "status-request-with-fd",
        "StatusRequest cannot carry fds",
        header_only(0x12, 1, 0),
        E::UnexpectedFds { tag: 0x12, nfds: 1 },
    );
    add(
        "body-too-long",
        "body_len of 1 MiB + 1",
        header_only(0x10, 0, (MAX_BODY_LEN + 1) as u32),
        E::BodyTooLong(MAX_BODY_LEN as u32 + 1),
    );
    add(
        "body-len-max-u32",
        "body_len of 2^32-1",
        header_only(0x23, 0, u32::MAX),
        E::BodyTooLong(u32::MAX),
    );
    add(
        "hello-len-9",
        "Hello body must be 8 bytes",
        frame(0x01, 0, b"FKSV\x01\x00\x01\x00\x00"),
        E::BadBodyLength { tag: 1, len: 9 },
    );
    add(
        "exit-len-4",
        "Exit body of 4 bytes: the flags are missing (Exit is variable-size from rev 0.6)",
        frame(0x21, 0, &[0; 4]),
        E::Truncated,
    );
    add(
        "metrics-request-len-1",
        "MetricsRequest body must be empty",
        frame(0x14, 0, &[0]),
        E::BadBodyLength { tag: 0x14, len: 1 },
    );
    add(
        "metrics-len-160",
        "Metrics body must be 168 bytes (a rev 0.6 draft server's 120 bytes is refused too)",
        header_only(0x25, 0, 160),
        E::BadBodyLength {
            tag: 0x25,
            len: 160,
        },
    );
    add(
        "features-request-len-1",
        "FeaturesRequest body must be empty",
        frame(0x13, 0, &[0]),
        E::BadBodyLength { tag: 0x13, len: 1 },
    );
    add(
        "features-request-with-fd",
        "FeaturesRequest cannot carry fds",
        header_only(0x13, 1, 0),
        E::UnexpectedFds { tag: 0x13, nfds: 1 },
    );
    let features = body_of(&Message::Features(Features::current()));
    add(
        "features-len-12",
        "Features body must be 16 bytes",
        frame(0x24, 0, &features[..12]),
        E::BadBodyLength { tag: 0x24, len: 12 },
    );
    let mut b = features.clone();
    b[12] = 1;
    add(
        "features-reserved-not-zero",
        "Features reserved field not zero",
        frame(0x24, 0, &b),
        E::ReservedNotZero,
    );
    let mut b = features.clone();
    b[2] = 5;
    add(
        "features-revision-0-5",
        "Features naming rev 0.5, which has no Features",
        frame(0x24, 0, &b),
        E::InvalidValue(Field::Revision),
    );
    add(
        "status-request-len-1",
        "StatusRequest body must be empty",
        frame(0x12, 0, &[0]),
        E::BadBodyLength { tag: 0x12, len: 1 },
    );
    add(
        "hello-bad-magic",
        "Hello body must start with FKSV",
        frame(0x01, 0, b"FKSW\x01\x00\x01\x00"),
        E::BadMagic,
    );
    add(
        "hello-version-0",
        "min_version 0 is not allowed",
        frame(0x01, 0, b"FKSV\x00\x00\x01\x00"),
        E::InvalidValue(Field::VersionRange),
    );
    add(
        "hello-min-above-max",
        "min_version > max_version",
        frame(0x01, 0, b"FKSV\x02\x00\x01\x00"),
        E::InvalidValue(Field::VersionRange),
    );
    add(
        "hellook-version-0",
        "HelloOk version 0",
        frame(0x02, 0, &[0, 0, 0, 0]),
        E::InvalidValue(Field::Version),
    );
    add(
        "hellook-auth-2",
        "auth method 2 is undefined",
        frame(0x02, 0, &[1, 0, 2, 0]),
        E::InvalidValue(Field::AuthMethod),
    );
    add(
        "hellook-reserved",
        "HelloOk reserved byte not zero",
        frame(0x02, 0, &[1, 0, 0, 1]),
        E::ReservedNotZero,
    );
    add(
        "hellook-hmac-short",
        "auth method 1 without its 32-byte challenge",
        frame(0x02, 0, &[1, 0, 1, 0]),
        E::Truncated,
    );
    add(
        "hellook-trailing",
        "auth method 0 with a challenge after it",
        frame(0x02, 0, &[1, 0, 0, 0, 9]),
        E::TrailingBytes,
    );

    // Spawn corruptions, starting from the echo request (flags at body offset 0, the fd map at 12,
    // the job kind at 16).
    let echo = body_of(&echo_spawn());
    let spawn = |body: &[u8], nfds: u16| frame(0x10, nfds, body);
    let mut b = echo.clone();
    b[3] = 0x80;
    add(
        "spawn-reserved-flag",
        "Spawn flag bit 31 is reserved (bits 11-17 are defined since rev 0.6, bits 6-10 since rev 0.5, bit 5 since 0.3)",
        spawn(&b, 1),
        E::ReservedNotZero,
    );
    let mut b = echo.clone();
    b[2] = 0x04;
    add(
        "spawn-reserved-flag-18",
        "Spawn flag bit 18, the lowest reserved bit (bits 11-17 are defined since rev 0.6)",
        spawn(&b, 1),
        E::ReservedNotZero,
    );
    // Rev 0.5: the optional fields after the targets (echo: the target at 12..16, the job from
    // 16), the removals in the exec body.
    let opt = |flags: u32, fields: &[u8]| {
        let mut b = echo[..16].to_vec();
        b[..4].copy_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(fields);
        b.extend_from_slice(&echo[16..]);
        spawn(&b, 1)
    };
    let le = |v: &[u32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    assert!(decode_exact(&opt(spawn_flags::SET_UID, &le(&[0]))).is_ok());
    add(
        "spawn-join-and-session",
        "JOIN_PROCESS_GROUP together with NEW_SESSION",
        opt(
            spawn_flags::JOIN_PROCESS_GROUP | spawn_flags::NEW_SESSION,
            &le(&[5]),
        ),
        E::InvalidValue(Field::SpawnFlags),
    );
    add(
        "spawn-join-and-group",
        "JOIN_PROCESS_GROUP together with NEW_PROCESS_GROUP",
        opt(
            spawn_flags::JOIN_PROCESS_GROUP | spawn_flags::NEW_PROCESS_GROUP,
            &le(&[5]),
        ),
        E::InvalidValue(Field::SpawnFlags),
    );
    add(
        "spawn-uid-minus-1",
        "uid 0xffffffff, (uid_t) -1, is not a uid",
        opt(spawn_flags::SET_UID, &le(&[u32::MAX])),
        E::InvalidValue(Field::Uid),
    );
    add(
        "spawn-gid-minus-1",
        "gid 0xffffffff, (gid_t) -1, is not a gid",
        opt(spawn_flags::SET_GID, &le(&[u32::MAX])),
        E::InvalidValue(Field::Gid),
    );
    add(
        "spawn-group-minus-1",
        "a supplementary group of 0xffffffff",
        opt(
            spawn_flags::SET_GROUPS,
            &[&[2, 0][..], &le(&[10, u32::MAX])].concat(),
        ),
        E::InvalidValue(Field::Gid),
    );
    {
        let mut f = ((MAX_GROUPS + 1) as u16).to_le_bytes().to_vec();
        f.extend_from_slice(&le(&vec![10; MAX_GROUPS + 1]));
        add(
            "spawn-groups-65",
            "65 supplementary groups, one over the limit (checked before the gids are read)",
            opt(spawn_flags::SET_GROUPS, &f),
            E::LimitExceeded(Limit::Groups),
        );
    }
    {
        let mut b = echo[..16].to_vec();
        b[..4].copy_from_slice(&spawn_flags::SET_GROUPS.to_le_bytes());
        b.extend_from_slice(&[3, 0]);
        b.extend_from_slice(&le(&[10, 20]));
        add(
            "spawn-groups-truncated",
            "ngroups = 3 but the body ends after 2 gids",
            spawn(&b, 1),
            E::Truncated,
        );
    }
    {
        let entry = |resource: u32, soft: u64, hard: u64| {
            let mut e = resource.to_le_bytes().to_vec();
            e.extend_from_slice(&soft.to_le_bytes());
            e.extend_from_slice(&hard.to_le_bytes());
            e
        };
        let list = |n: u16, entries: &[Vec<u8>]| {
            let mut f = n.to_le_bytes().to_vec();
            f.extend(entries.iter().flatten());
            f
        };
        let i32s = |v: i32| v.to_le_bytes().to_vec();
        add(
            "spawn-umask-0o1000",
            "umask 0o1000, a bit above the permission bits",
            opt(spawn_flags::SET_UMASK, &0o1000u16.to_le_bytes()),
            E::InvalidValue(Field::Umask),
        );
        add(
            "spawn-nice-20",
            "nice 20, one above the highest (19)",
            opt(spawn_flags::SET_NICE, &i32s(20)),
            E::InvalidValue(Field::Nice),
        );
        add(
            "spawn-nice-minus-21",
            "nice -21, one below the lowest (-20)",
            opt(spawn_flags::SET_NICE, &i32s(-21)),
            E::InvalidValue(Field::Nice),
        );
        add(
            "spawn-oom-score-adj-1001",
            "oom_score_adj 1001, one above the highest (1000)",
            opt(spawn_flags::SET_OOM_SCORE_ADJ, &i32s(1001)),
            E::InvalidValue(Field::OomScoreAdj),
        );
        add(
            "spawn-grace-0",
            "grace_ms 0 (no grace is SET_GRACE unset)",
            opt(spawn_flags::SET_GRACE, &i32s(0)),
            E::InvalidValue(Field::Grace),
        );
        add(
            "spawn-rlimits-17",
            "17 resource limits, one over the limit (checked before the entries are read)",
            opt(
                spawn_flags::SET_RLIMITS,
                &list(17, &vec![entry(7, 1, 1); 17]),
            ),
            E::LimitExceeded(Limit::Rlimits),
        );
        add(
            "spawn-rlimit-soft-above-hard",
            "RLIMIT_NOFILE with soft 129 above hard 128",
            opt(spawn_flags::SET_RLIMITS, &list(1, &[entry(7, 129, 128)])),
            E::InvalidValue(Field::Rlimit),
        );
        add(
            "spawn-rlimit-resource-16",
            "resource 16, past RLIMIT_RTTIME (15), the last Linux resource",
            opt(spawn_flags::SET_RLIMITS, &list(1, &[entry(16, 1, 1)])),
            E::InvalidValue(Field::Rlimit),
        );
        let mut b = echo[..16].to_vec();
        b[..4].copy_from_slice(&spawn_flags::SET_RLIMITS.to_le_bytes());
        b.extend_from_slice(&list(2, &[entry(7, 64, 128)]));
        add(
            "spawn-rlimits-truncated",
            "nrlimits = 2 but the body ends after one entry",
            spawn(&b, 1),
            E::Truncated,
        );
    }
    add(
        "spawn-pgid-0",
        "JOIN_PROCESS_GROUP with pgid 0 (a new group is NEW_PROCESS_GROUP)",
        opt(spawn_flags::JOIN_PROCESS_GROUP, &le(&[0])),
        E::InvalidValue(Field::Pgid),
    );
    add(
        "spawn-pgid-2-31",
        "JOIN_PROCESS_GROUP with pgid 2^31, above pid_t",
        opt(spawn_flags::JOIN_PROCESS_GROUP, &le(&[1 << 31])),
        E::InvalidValue(Field::Pgid),
    );
    {
        let mut b = echo[..16].to_vec();
        b[..4].copy_from_slice(&(spawn_flags::SET_UID | spawn_flags::SET_GID).to_le_bytes());
        b.extend_from_slice(&le(&[1000]));
        add(
            "spawn-gid-missing",
            "SET_UID and SET_GID set, the body ends after the uid",
            spawn(&b, 1),
            E::Truncated,
        );
    }
    add(
        "spawn-uid-flag-without-field",
        "SET_UID set but no uid sent: the job's first bytes are read as the uid, and the next as job_kind 0x62",
        opt(spawn_flags::SET_UID, &[]),
        E::InvalidValue(Field::JobKind),
    );
    {
        let mut b = body_of(&entry_spawn(0));
        b[1] = (spawn_flags::ENV_REMOVE >> 8) as u8;
        add(
            "spawn-entry-env-remove",
            "ENV_REMOVE on an entry job",
            spawn(&b, 0),
            E::InvalidValue(Field::SpawnFlags),
        );
    }
    let mut b = echo.clone();
    b[0] = 0x03;
    add(
        "spawn-session-and-group",
        "NEW_SESSION and NEW_PROCESS_GROUP together",
        spawn(&b, 1),
        E::InvalidValue(Field::SpawnFlags),
    );
    let mut b = echo.clone();
    b[16] = 3;
    add(
        "spawn-job-kind-3",
        "job kind 3 is undefined",
        spawn(&b, 1),
        E::InvalidValue(Field::JobKind),
    );
    let mut b = echo.clone();
    b[12..16].copy_from_slice(&(MAX_TARGET_FD + 1).to_le_bytes());
    add(
        "spawn-target-too-high",
        "target fd 2^20",
        spawn(&b, 1),
        E::LimitExceeded(Limit::TargetFd),
    );
    let mut b = echo[..12].to_vec();
    b.extend_from_slice(&5u32.to_le_bytes());
    b.extend_from_slice(&5u32.to_le_bytes());
    b.extend_from_slice(&echo[16..]);
    add(
        "spawn-duplicate-target",
        "two fds mapped to target 5",
        spawn(&b, 2),
        E::DuplicateTarget(5),
    );
    let mut b = echo.clone();
    b.push(0);
    add(
        "spawn-trailing",
        "a byte after the last field",
        spawn(&b, 1),
        E::TrailingBytes,
    );
    add(
        "spawn-truncated",
        "the body ends inside the job",
        spawn(&echo[..echo.len() - 3], 1),
        E::Truncated,
    );
    add(
        "spawn-fd-map-truncated",
        "nfds = 3 but the body holds one target",
        spawn(&echo[..14], 3),
        E::Truncated,
    );

    let exec_body =
        |program: &[u8], args: &[&[u8]], env_clear: u8, env: &[(&[u8], &[u8])], cwd: &[u8]| {
            let mut b = vec![0u8; 12];
            b.push(2);
            b.extend_from_slice(&(program.len() as u16).to_le_bytes());
            b.extend_from_slice(program);
            b.extend_from_slice(&(args.len() as u16).to_le_bytes());
            for a in args {
                b.extend_from_slice(&(a.len() as u32).to_le_bytes());
                b.extend_from_slice(a);
            }
            b.push(env_clear);
            b.extend_from_slice(&(env.len() as u16).to_le_bytes());
            for (k, val) in env {
                b.extend_from_slice(&(k.len() as u32).to_le_bytes());
                b.extend_from_slice(k);
                b.extend_from_slice(&(val.len() as u32).to_le_bytes());
                b.extend_from_slice(val);
            }
            b.extend_from_slice(&(cwd.len() as u16).to_le_bytes());
            b.extend_from_slice(cwd);
            b
        };
    let t: &[u8] = b"/bin/true";
    assert!(decode_exact(&spawn(&exec_body(t, &[t], 0, &[], b""), 0)).is_ok());
    add(
        "exec-empty-program",
        "empty program path",
        spawn(&exec_body(b"", &[t], 0, &[], b""), 0),
        E::InvalidValue(Field::Program),
    );
    add(
        "exec-program-nul",
        "NUL in the program path",
        spawn(&exec_body(b"/bin/t\0ue", &[t], 0, &[], b""), 0),
        E::InvalidValue(Field::Program),
    );
    add(
        "exec-argc-0",
        "argv must hold at least argv[0]",
        spawn(&exec_body(t, &[], 0, &[], b""), 0),
        E::InvalidValue(Field::Arg),
    );
    let many: Vec<&[u8]> = vec![b""; MAX_ARGS + 1];
    add(
        "exec-argc-4097",
        "4097 arguments",
        spawn(&exec_body(t, &many, 0, &[], b""), 0),
        E::LimitExceeded(Limit::Args),
    );
    add(
        "exec-arg-nul",
        "NUL inside an argument",
        spawn(&exec_body(t, &[t, b"a\0b"], 0, &[], b""), 0),
        E::InvalidValue(Field::Arg),
    );
    {
        let mut b = vec![0u8; 12];
        b.push(2);
        b.extend_from_slice(&(t.len() as u16).to_le_bytes());
        b.extend_from_slice(t);
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&((MAX_ARG_LEN + 1) as u32).to_le_bytes());
        add(
            "exec-arg-too-long",
            "an argument length of 131072 (checked before the bytes arrive)",
            spawn(&b, 0),
            E::LimitExceeded(Limit::ArgLen),
        );
    }
    add(
        "exec-env-clear-2",
        "env_clear must be 0 or 1",
        spawn(&exec_body(t, &[t], 2, &[], b""), 0),
        E::InvalidValue(Field::Bool),
    );
    add(
        "exec-env-key-equals",
        "'=' in an environment key",
        spawn(&exec_body(t, &[t], 0, &[(b"A=B", b"c")], b""), 0),
        E::InvalidValue(Field::EnvKey),
    );
    add(
        "exec-env-key-empty",
        "empty environment key",
        spawn(&exec_body(t, &[t], 0, &[(b"", b"c")], b""), 0),
        E::InvalidValue(Field::EnvKey),
    );
    add(
        "exec-env-value-nul",
        "NUL in an environment value",
        spawn(&exec_body(t, &[t], 0, &[(b"A", b"c\0")], b""), 0),
        E::InvalidValue(Field::EnvValue),
    );
    add(
        "exec-cwd-nul",
        "NUL in the working directory",
        spawn(&exec_body(t, &[t], 0, &[], b"/t\0p"), 0),
        E::InvalidValue(Field::Cwd),
    );
    // Rev 0.5: ENV_REMOVE: the removals between the environment and the cwd.
    let removing = |count: u16, names: &[&[u8]]| {
        let mut b = exec_body(t, &[t], 0, &[], b"");
        b[..4].copy_from_slice(&spawn_flags::ENV_REMOVE.to_le_bytes());
        let cwd_at = b.len() - 2;
        let mut r = count.to_le_bytes().to_vec();
        for n in names {
            r.extend_from_slice(&(n.len() as u32).to_le_bytes());
            r.extend_from_slice(n);
        }
        b.splice(cwd_at..cwd_at, r);
        spawn(&b, 0)
    };
    assert!(decode_exact(&removing(1, &[b"HOME"])).is_ok());
    add(
        "exec-env-remove-0",
        "ENV_REMOVE with an empty list (the flag without its field)",
        removing(0, &[]),
        E::InvalidValue(Field::EnvRemove),
    );
    add(
        "exec-env-remove-4097",
        "4097 names to remove (checked before any is read)",
        removing((MAX_ENV + 1) as u16, &[]),
        E::LimitExceeded(Limit::Env),
    );
    add(
        "exec-env-remove-equals",
        "'=' in a name to remove",
        removing(1, &[b"A=B"]),
        E::InvalidValue(Field::EnvRemove),
    );
    add(
        "exec-env-remove-empty-name",
        "an empty name to remove",
        removing(1, &[b""]),
        E::InvalidValue(Field::EnvRemove),
    );
    add(
        "exec-env-remove-nul",
        "NUL in a name to remove",
        removing(1, &[b"HO\0ME"]),
        E::InvalidValue(Field::EnvRemove),
    );
    {
        let mut b = exec_body(t, &[t], 0, &[], b"");
        b[..4].copy_from_slice(&spawn_flags::ENV_REMOVE.to_le_bytes());
        b.truncate(b.len() - 2);
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&((MAX_ARG_LEN + 1) as u32).to_le_bytes());
        add(
            "exec-env-remove-too-long",
            "a name of 131072 bytes to remove (checked before the bytes arrive)",
            spawn(&b, 0),
            E::LimitExceeded(Limit::ArgLen),
        );
    }
    {
        let mut b = exec_body(t, &[t], 0, &[], b"");
        b[..4].copy_from_slice(&spawn_flags::ENV_REMOVE.to_le_bytes());
        add(
            "exec-env-remove-missing",
            "ENV_REMOVE set but the body ends where the removals should start (cwd_len read as the count)",
            spawn(&b, 0),
            E::InvalidValue(Field::EnvRemove),
        );
    }
    {
        let mut b = vec![0u8; 12];
        b.push(1);
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        add(
            "entry-empty-name",
            "empty entry-point name",
            spawn(&b, 0),
            E::InvalidValue(Field::EntryName),
        );
        let mut b = vec![0u8; 12];
        b.push(1);
        b.extend_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(&[0xc3, 0x28]);
        b.extend_from_slice(&0u32.to_le_bytes());
        add(
            "entry-name-not-utf8",
            "entry-point name that is not UTF-8",
            spawn(&b, 0),
            E::InvalidValue(Field::EntryName),
        );
        let mut b = vec![0u8; 12];
        b.push(1);
        b.extend_from_slice(&256u16.to_le_bytes());
        b.extend_from_slice(&[b'a'; 256]);
        b.extend_from_slice(&0u32.to_le_bytes());
        add(
            "entry-name-256",
            "entry-point name of 256 bytes",
            spawn(&b, 0),
            E::LimitExceeded(Limit::EntryName),
        );
        let mut b = vec![0u8; 12];
        b.push(1);
        b.extend_from_slice(&1u16.to_le_bytes());
        b.push(b'a');
        b.extend_from_slice(&100u32.to_le_bytes());
        b.extend_from_slice(&[7; 10]);
        add(
            "entry-payload-truncated",
            "payload length runs past the body",
            spawn(&b, 0),
            E::Truncated,
        );
    }

    add(
        "signal-0",
        "signal 0 is not allowed",
        frame(0x11, 0, &0u32.to_le_bytes()),
        E::InvalidValue(Field::Signal),
    );
    add(
        "signal-65",
        "signal 65 is above the limit",
        frame(0x11, 0, &65u32.to_le_bytes()),
        E::InvalidValue(Field::Signal),
    );
    add(
        "pid-0",
        "pid 0",
        frame(0x20, 0, &0u32.to_le_bytes()),
        E::InvalidValue(Field::Pid),
    );
    add(
        "pid-negative",
        "pid 2^31 (negative as i32)",
        frame(0x20, 0, &(1u32 << 31).to_le_bytes()),
        E::InvalidValue(Field::Pid),
    );
    let exit = |code: i32, flags: u8, pad: [u8; 3]| {
        let mut b = code.to_le_bytes().to_vec();
        b.push(flags);
        b.extend_from_slice(&pad);
        frame(0x21, 0, &b)
    };
    add(
        "exit-256",
        "exit code 256",
        exit(256, 0, [0; 3]),
        E::InvalidValue(Field::ExitCode),
    );
    add(
        "exit-minus-65",
        "exit code -65",
        exit(-65, 0, [0; 3]),
        E::InvalidValue(Field::ExitCode),
    );
    add(
        "exit-flag-bit-3",
        "Exit flag bit 3 is reserved",
        exit(0, 8, [0; 3]),
        E::ReservedNotZero,
    );
    add(
        "exit-usage-truncated",
        "Exit with USAGE and only two of its three usage fields",
        frame(0x21, 0, &[&[0u8; 4][..], &[4, 0, 0, 0], &[0; 16]].concat()),
        E::Truncated,
    );
    add(
        "exit-trailing",
        "Exit without USAGE followed by 24 bytes",
        frame(0x21, 0, &[0u8; 32]),
        E::TrailingBytes,
    );
    add(
        "exit-reserved",
        "Exit reserved bytes not zero",
        exit(0, 0, [0, 1, 0]),
        E::ReservedNotZero,
    );
    let status = body_of(&Message::Status(
        Status::new(1, 100, 2, 3, 12345, "v").unwrap(),
    ));
    let mut b = status.clone();
    b[2] = 1;
    add(
        "status-reserved",
        "Status reserved bytes not zero",
        frame(0x23, 0, &b),
        E::ReservedNotZero,
    );
    let mut b = status.clone();
    *b.last_mut().unwrap() = 0xff;
    add(
        "status-version-not-utf8",
        "server version that is not UTF-8",
        frame(0x23, 0, &b),
        E::InvalidValue(Field::Utf8),
    );
    let err = |code: u16, msg: &[u8]| {
        let mut b = code.to_le_bytes().to_vec();
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&0i32.to_le_bytes());
        b.extend_from_slice(&(msg.len() as u16).to_le_bytes());
        b.extend_from_slice(msg);
        frame(0x2f, 0, &b)
    };
    add(
        "error-code-0",
        "error code 0 is reserved",
        err(0, b""),
        E::UnknownErrorCode(0),
    );
    add(
        "error-code-18",
        "error code 18 is reserved",
        err(18, b""),
        E::UnknownErrorCode(18),
    );
    add(
        "error-message-1025",
        "error message of 1025 bytes",
        err(1, &[b'x'; 1025]),
        E::LimitExceeded(Limit::ErrorMessage),
    );
    add(
        "error-message-not-utf8",
        "error message that is not UTF-8",
        err(1, &[0xff]),
        E::InvalidValue(Field::Utf8),
    );
    v
}

/// Transport vectors: frames sent in given `sendmsg` calls, `(bytes, fds)` each.
/// name, description, bytes, `(bytes, fds)` per sendmsg, expected outcome.
type TransportVector = (String, String, Vec<u8>, Vec<(usize, usize)>, &'static str);

fn build_transport() -> Vec<TransportVector> {
    let mut v = Vec::new();
    let mut add = |name: &str,
                   desc: &str,
                   bytes: Vec<u8>,
                   sends: Vec<(usize, usize)>,
                   expected: &'static str| {
        assert_eq!(
            sends.iter().map(|s| s.0).sum::<usize>(),
            bytes.len(),
            "{name}"
        );
        v.push((name.to_owned(), desc.to_owned(), bytes, sends, expected))
    };
    for n in [0usize, 1, 253] {
        let b = entry_spawn(n).to_bytes();
        let l = b.len();
        add(
            &format!("spawn-{n}-fds"),
            &format!("{n} fds in one sendmsg"),
            b,
            vec![(l, n)],
            "ok",
        );
    }
    for n in [254usize, 256] {
        let b = entry_spawn(n).to_bytes();
        let l = b.len();
        add(
            &format!("spawn-{n}-fds"),
            &format!("{n} fds: 1 byte + 253 fds, then the rest + {} fds", n - 253),
            b,
            vec![(1, 253), (l - 1, n - 253)],
            "ok",
        );
    }
    let b = entry_spawn(256).to_bytes();
    let l = b.len();
    add(
        "spawn-256-fds-split-bytes",
        "256 fds where the last call's bytes are split over two sendmsg",
        b,
        vec![(1, 253), (10, 3), (l - 11, 0)],
        "ok",
    );
    let mut b = entry_spawn(257 - 1).to_bytes();
    b[2..4].copy_from_slice(&257u16.to_le_bytes());
    let l = b.len();
    add(
        "spawn-257-fds",
        "a header announcing 257 fds, with 257 attached",
        b,
        vec![(1, 253), (l - 1, 4)],
        "TooManyFds",
    );
    let b = entry_spawn(3).to_bytes();
    let l = b.len();
    add(
        "spawn-3-announced-2-sent",
        "header says 3 fds, 2 attached",
        b.clone(),
        vec![(l, 2)],
        "FdMismatch",
    );
    add(
        "spawn-3-announced-4-sent",
        "header says 3 fds, 4 attached",
        b,
        vec![(l, 4)],
        "FdMismatch",
    );
    let b = entry_spawn(0).to_bytes();
    let l = b.len();
    add(
        "spawn-0-announced-1-sent",
        "header says no fds, 1 attached",
        b,
        vec![(l, 1)],
        "FdMismatch",
    );
    let b = Message::StatusRequest.to_bytes();
    add(
        "status-request-with-fd",
        "an fd attached to a message that carries none",
        b,
        vec![(8, 1)],
        "FdMismatch",
    );
    let mut b = Message::StatusRequest.to_bytes();
    let s = entry_spawn(1).to_bytes();
    let sl = s.len();
    b.extend_from_slice(&s);
    add(
        "fd-on-wrong-frame",
        "the fd of the following Spawn attached to the StatusRequest before it",
        b,
        vec![(8, 1), (sl, 0)],
        "FdMismatch",
    );
    let s = entry_spawn(1).to_bytes();
    let sl = s.len();
    let mut b = s.clone();
    b.extend_from_slice(&Message::StatusRequest.to_bytes());
    add(
        "fd-after-its-frame",
        "a Spawn's fd sent with the bytes of the next frame",
        b,
        vec![(sl, 0), (8, 1)],
        "FdMismatch",
    );
    v
}

fn err_json(e: &DecodeError) -> Value {
    Value::String(e.name().to_owned())
}

fn wire_error(e: &DecodeError) -> &'static str {
    ErrorReply::from(*e).code().name()
}

fn load(name: &str) -> Value {
    let path = spec_dir().join("vectors").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn regen() -> bool {
    std::env::var_os("FORKSERVER_REGEN_VECTORS").is_some()
}

fn write(name: &str, v: Value) {
    let path = spec_dir().join("vectors").join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap() + "\n").unwrap();
}

#[test]
fn valid_vectors() {
    let _serial = serial();
    let built: Vec<Value> = build_valid()
        .into_iter()
        .map(|(name, desc, m)| {
            json!({"name": name, "description": desc, "hex": hex(&m.to_bytes()), "nfds": m.fd_count(), "decoded": to_json(&m)})
        })
        .collect();
    if regen() {
        write(
            "valid.json",
            json!({"protocol_version": PROTOCOL_VERSION, "vectors": built}),
        );
    }
    let file = load("valid.json");
    let vectors = file["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), built.len(), "valid.json is out of date");
    let mut tags = std::collections::HashSet::new();
    for v in vectors {
        let name = v["name"].as_str().unwrap();
        let bytes = unhex(v["hex"].as_str().unwrap());
        let m = decode_exact(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(to_json(&m), v["decoded"], "{name}: decoded form");
        assert_eq!(m.to_bytes(), bytes, "{name}: re-encoding");
        assert_eq!(
            m.fd_count() as u64,
            v["nfds"].as_u64().unwrap(),
            "{name}: nfds"
        );
        tags.insert(m.tag());
    }
    assert_eq!(
        tags.len(),
        Tag::ALL.len(),
        "every message type has a valid vector"
    );
    assert_eq!(
        vectors, &built,
        "valid.json differs from the constructors' output"
    );
}

#[test]
fn invalid_vectors() {
    let _serial = serial();
    let built: Vec<Value> = build_invalid()
        .into_iter()
        .map(|(name, desc, bytes, e)| {
            json!({"name": name, "description": desc, "hex": hex(&bytes), "error": err_json(&e), "wire_error": wire_error(&e)})
        })
        .collect();
    if regen() {
        write(
            "invalid.json",
            json!({"protocol_version": PROTOCOL_VERSION, "vectors": built}),
        );
    }
    let file = load("invalid.json");
    let vectors = file["vectors"].as_array().unwrap();
    let mut seen = std::collections::HashSet::new();
    for (v, (name, _, _, expected)) in vectors.iter().zip(build_invalid()) {
        assert_eq!(v["name"], name);
        let bytes = unhex(v["hex"].as_str().unwrap());
        let got = decode(&bytes).expect_err(&name);
        assert_eq!(got, expected, "{name}");
        assert_eq!(got.name(), v["error"].as_str().unwrap(), "{name}");
        assert_eq!(
            wire_error(&got),
            v["wire_error"].as_str().unwrap(),
            "{name}"
        );
        seen.insert(got.name());
    }
    assert_eq!(vectors, &built, "invalid.json differs from the generator");
    for name in [
        "UnknownTag",
        "ReservedNotZero",
        "UnexpectedFds",
        "TooManyFds",
        "BodyTooLong",
        "BadBodyLength",
        "Truncated",
        "TrailingBytes",
        "BadMagic",
        "LimitExceeded",
        "InvalidValue",
        "DuplicateTarget",
        "UnknownErrorCode",
    ] {
        assert!(seen.contains(name), "no invalid vector for {name}");
    }
}

/// The seed corpus of the `decode` fuzz target (`fuzz/corpus/decode/`): one file
/// `seed-<file>-<name>` per vector of `valid.json`, `invalid.json` and `transport.json`, holding
/// the vector's bytes. A vector whose bytes an earlier one already has (a transport vector
/// differs from a valid one only in the fds it sends) adds no file: libFuzzer sees bytes only.
/// Other files there (libFuzzer's findings, named by hash) are kept as they are.
fn fuzz_seeds() -> Vec<(String, Vec<u8>)> {
    let valid = build_valid()
        .into_iter()
        .map(|(name, _, m)| (format!("seed-valid-{name}"), m.to_bytes()));
    let invalid = build_invalid()
        .into_iter()
        .map(|(name, _, bytes, _)| (format!("seed-invalid-{name}"), bytes));
    let transport = build_transport()
        .into_iter()
        .map(|(name, _, bytes, _, _)| (format!("seed-transport-{name}"), bytes));
    let mut seen = std::collections::HashSet::new();
    valid
        .chain(invalid)
        .chain(transport)
        .filter(|(_, bytes)| seen.insert(bytes.clone()))
        .collect()
}

/// With `FORKSERVER_REGEN_VECTORS=1`, writes the seeds and removes `seed-*` files no vector
/// makes; without, checks that the directory holds exactly those seeds, so that a vector
/// changed without its seed fails here.
#[test]
fn fuzz_seeds_follow_the_vectors() {
    let _serial = serial();
    let dir = spec_dir().join("../fuzz/corpus/decode");
    let seeds = fuzz_seeds();
    let names: std::collections::HashSet<&str> = seeds.iter().map(|(n, _)| n.as_str()).collect();
    let on_disk = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("seed-"))
            .collect();
        v.sort();
        v
    };
    if regen() {
        for stale in on_disk().iter().filter(|n| !names.contains(n.as_str())) {
            std::fs::remove_file(dir.join(stale)).unwrap();
        }
        for (name, bytes) in &seeds {
            let path = dir.join(name);
            // Written only when it differs, so that a second run touches nothing.
            if std::fs::read(&path).ok().as_ref() != Some(bytes) {
                std::fs::write(&path, bytes).unwrap();
            }
        }
    }
    let stale: Vec<String> = on_disk()
        .into_iter()
        .filter(|n| !names.contains(n.as_str()))
        .collect();
    assert!(
        stale.is_empty(),
        "seeds no vector makes (FORKSERVER_REGEN_VECTORS=1 removes them): {stale:?}"
    );
    for (name, bytes) in &seeds {
        let got = std::fs::read(dir.join(name)).unwrap_or_default();
        assert!(
            &got == bytes,
            "{name}: missing or stale (FORKSERVER_REGEN_VECTORS=1 rewrites it)"
        );
    }
}

mod transport_vectors {
    use super::*;
    use nix::sys::socket::{
        sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr,
    };
    use std::io::IoSlice;
    use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

    fn devnull() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn transport_vectors() {
        let _serial = serial();
        let built: Vec<Value> = build_transport()
            .into_iter()
            .map(|(name, desc, bytes, sends, expected)| {
                json!({"name": name, "description": desc, "hex": hex(&bytes),
                       "sends": sends.iter().map(|(b, f)| json!({"bytes": b, "fds": f})).collect::<Vec<_>>(),
                       "expected": expected})
            })
            .collect();
        if regen() {
            write(
                "transport.json",
                json!({"protocol_version": PROTOCOL_VERSION, "vectors": built}),
            );
        }
        let file = load("transport.json");
        let vectors = file["vectors"].as_array().unwrap();
        assert_eq!(vectors, &built, "transport.json differs from the generator");
        let before = open_fds();
        for v in vectors {
            let name = v["name"].as_str().unwrap();
            let bytes = unhex(v["hex"].as_str().unwrap());
            let (a, b) = socketpair(
                AddressFamily::Unix,
                SockType::Stream,
                None,
                SockFlag::SOCK_CLOEXEC,
            )
            .unwrap();
            let mut off = 0;
            for s in v["sends"].as_array().unwrap() {
                let n = s["bytes"].as_u64().unwrap() as usize;
                let k = s["fds"].as_u64().unwrap() as usize;
                let fds: Vec<OwnedFd> = (0..k).map(|_| devnull()).collect();
                let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
                let cmsg = [ControlMessage::ScmRights(&raw)];
                let cm: &[ControlMessage<'_>] = if k == 0 { &[] } else { &cmsg };
                let sent = sendmsg::<UnixAddr>(
                    a.as_raw_fd(),
                    &[IoSlice::new(&bytes[off..off + n])],
                    cm,
                    MsgFlags::empty(),
                    None,
                )
                .unwrap();
                assert_eq!(sent, n, "{name}");
                off += n;
            }
            drop(a);
            let mut reader = FrameReader::new();
            let mut frames = Vec::new();
            let outcome = loop {
                match reader.read_frame(b.as_fd()) {
                    Ok(f) => frames.push(f),
                    Err(TransportError::Closed) => break "ok".to_owned(),
                    Err(TransportError::Decode(e)) => break e.name().to_owned(),
                    Err(TransportError::FdMismatch { .. }) => break "FdMismatch".to_owned(),
                    Err(e) => break format!("{e:?}"),
                }
            };
            assert_eq!(outcome, v["expected"].as_str().unwrap(), "{name}");
            if outcome == "ok" {
                let total: usize = frames.iter().map(|f| f.fds.len()).sum();
                let sent: u64 = v["sends"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["fds"].as_u64().unwrap())
                    .sum();
                assert_eq!(total as u64, sent, "{name}");
            }
            assert_eq!(
                reader.pending_fds(),
                0,
                "{name}: fds held after the outcome"
            );
            drop(frames);
            drop(reader);
            drop(b);
            assert_eq!(open_fds(), before, "{name}: fd leak");
        }
    }
}

/// The worked HMAC example of PROTOCOL.md §9.2, read from the spec itself.
#[test]
fn auth_example_from_the_spec() {
    let _serial = serial();
    let spec = std::fs::read_to_string(spec_dir().join("PROTOCOL.md")).unwrap();
    let find = |label: &str| -> Vec<u8> {
        let line = spec
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .unwrap_or_else(|| panic!("§9.2 has no line starting {label:?}"));
        unhex(line.trim())
    };
    let key: Vec<u8> = (0x00..0x20).collect();
    let cs: [u8; 32] = std::array::from_fn(|i| 0x20 + i as u8);
    let cc: [u8; 32] = std::array::from_fn(|i| 0x40 + i as u8);
    let client = auth::client_response(&key, &cs);
    let server = auth::server_response(&key, &cc);
    assert_eq!(client.to_vec(), find("client response = "));
    assert_eq!(server.to_vec(), find("server response = "));
    assert!(auth::verify_client(&key, &cs, &client));
    assert!(auth::verify_server(&key, &cc, &server));
    assert!(
        !auth::verify_client(&key, &cc, &client),
        "the labels differ: no reflection"
    );
}
