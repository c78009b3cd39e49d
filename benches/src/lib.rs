//! Benchmarks of forkserver.
//!
//! * `benches/codec.rs`: criterion benches of the codec, encode and decode of a typical spawn
//!   request and of a maximal one (256 fds, a long argv):
//!   `cargo bench -p forkserver-benches --bench codec`; `examples/codec_loop.rs` runs the same
//!   encodes in a plain loop, for `valgrind --tool=callgrind` instruction counts.
//! * `src/bin/compare/`: the comparative harness, forkserver against `fork()` in the caller,
//!   `std::process::Command`, CPython's `multiprocessing` forkserver, and typed calls against
//!   the `procspawn` and `zygote` crates (group 8, also alone with `--only typed`):
//!   `cargo run --release -p forkserver-benches --bin compare -- [--quick] [--json FILE]
//!   [--svg DIR]`. What it measures and why is in `benches/BENCHMARKS.md`.
//!
//! The modules here are the harness's building blocks.
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod ballast;
pub mod codec_samples;
pub mod controls;
pub mod cpython;
pub mod direct;
pub mod driven;
pub mod interleave;
pub mod procfs;
pub mod raw;
pub mod small_client;
pub mod stats;
pub mod svg;
pub mod typed_values;

/// The error type of the harness: anything, with a message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The result type of the harness.
pub type Result<T> = std::result::Result<T, BoxError>;
