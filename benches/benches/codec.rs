//! Encode and decode of a typical spawn request and of a maximal one (256 fds, a long argv).
//!
//! `cargo bench -p forkserver-benches --bench codec`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use forkserver_benches::codec_samples::{maximal, typical};
use forkserver_protocol::decode;
use std::hint::black_box;

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
