//! Encodes (or decodes) the codec benchmarks' requests in a plain loop, for instruction counts
//! that a loaded machine does not disturb:
//!
//! ```sh
//! cargo build --release -p forkserver-benches --example codec_loop
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/codec_loop typical encode 10000
//! ```
//!
//! The instructions of one operation are the difference between two runs of different
//! counts, divided by the difference of the counts (the setup cancels out).

use forkserver_benches::codec_samples::{maximal, typical};
use forkserver_protocol::decode;
use std::hint::black_box;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: codec_loop typical|maximal encode|to_bytes|decode N";
    let [_, which, op, n] = &args[..] else {
        panic!("{usage}");
    };
    let m = match which.as_str() {
        "typical" => typical(),
        "maximal" => maximal(),
        _ => panic!("{usage}"),
    };
    let n: u64 = n.parse().expect(usage);
    let bytes = m.to_bytes();
    let mut buf = Vec::with_capacity(bytes.len());
    for _ in 0..n {
        match op.as_str() {
            "encode" => {
                buf.clear();
                black_box(&m).encode(&mut buf);
                black_box(buf.len());
            }
            // What the server and the client do per frame (`OutFrame::new`).
            "to_bytes" => {
                black_box(black_box(&m).to_bytes());
            }
            "decode" => {
                black_box(decode(black_box(&bytes)).unwrap());
            }
            _ => panic!("{usage}"),
        }
    }
}
