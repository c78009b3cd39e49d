//! Benchmarks of forkserver: criterion benches of the codec (`benches/codec.rs`).
