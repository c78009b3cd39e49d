//! Encode and decode of a typical spawn request and of a maximal one (256 fds, a long argv).
//!
//! `cargo bench -p forkserver-benches --bench codec`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use forkserver_protocol::*;
use std::hint::black_box;

fn typical() -> Message {
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

fn maximal() -> Message {
    let mut job = ExecJob::new("/usr/bin/worker").unwrap();
    // 1000 arguments of 500 bytes: ~0.5 MiB, half the body limit.
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

fn bench(c: &mut Criterion) {
    for (name, m) in [("typical", typical()), ("maximal", maximal())] {
        let bytes = m.to_bytes();
        let mut g = c.benchmark_group(format!("codec/{name}"));
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        let mut buf = Vec::with_capacity(bytes.len());
        g.bench_function("encode", |b| {
            b.iter(|| {
                buf.clear();
                black_box(&m).encode(&mut buf);
                black_box(buf.len())
            })
        });
        g.bench_function("decode", |b| b.iter(|| decode(black_box(&bytes)).unwrap()));
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
