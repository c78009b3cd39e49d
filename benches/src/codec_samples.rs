//! The spawn requests the codec benchmarks measure (`benches/codec.rs`, and the
//! `codec_loop` example that callgrind counts instructions of).

use forkserver_protocol::{ExecJob, FdMap, Job, Message, Spawn, SpawnOptions, MAX_FDS};

/// A typical request: an exec job with a few arguments, one variable, three fds.
pub fn typical() -> Message {
    let mut job = ExecJob::new("/usr/bin/worker").unwrap();
    for a in ["--mode", "resize", "--quality", "85"] {
        job.push_arg(a).unwrap();
    }
    job.push_env("RUST_LOG", "info").unwrap();
    Message::Spawn(
        Spawn::new(
            SpawnOptions::default(),
            FdMap::from_targets(vec![0, 1, 2]).unwrap(),
            Job::Exec(job),
        )
        .unwrap(),
    )
}

/// A maximal request: 256 fds, 1000 arguments of 500 bytes (~0.5 MiB, half the body limit),
/// 100 variables and a working directory.
pub fn maximal() -> Message {
    let mut job = ExecJob::new("/usr/bin/worker").unwrap();
    for i in 0..1000 {
        job.push_arg(format!("{i:0>500}")).unwrap();
    }
    for i in 0..100 {
        job.push_env(format!("VAR_{i}"), "x".repeat(100)).unwrap();
    }
    job.set_cwd(Some(b"/var/lib/worker".to_vec())).unwrap();
    Message::Spawn(
        Spawn::new(
            SpawnOptions::default(),
            FdMap::from_targets((0..MAX_FDS as u32).collect()).unwrap(),
            Job::Exec(job),
        )
        .unwrap(),
    )
}
