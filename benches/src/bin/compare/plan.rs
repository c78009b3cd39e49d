//! How much of everything to do: the quick plan and the full one.

use std::time::Duration;

use serde_json::{json, Value};

const MIB: usize = 1 << 20;
pub(crate) const GIB: usize = 1 << 30;

/// How much of everything to do.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) latency_warmup: usize,
    pub(crate) latency_rounds: usize,
    pub(crate) exec_warmup: usize,
    pub(crate) exec_rounds: usize,
    pub(crate) rss_sizes: Vec<usize>,
    pub(crate) rss_warmup: usize,
    pub(crate) rss_rounds: usize,
    pub(crate) cpython_batch: usize,
    pub(crate) cpython_rounds: usize,
    pub(crate) throughput_rounds: usize,
    pub(crate) throughput_slice: Duration,
    pub(crate) footprint_spawns: u64,
    /// Group 8, spawn to result (ours, procspawn, raw `Call`).
    pub(crate) typed_warmup: usize,
    pub(crate) typed_rounds: usize,
    /// Group 8, a worker's call against `zygote::Zygote::run`.
    pub(crate) worker_warmup: usize,
    pub(crate) worker_rounds: usize,
}

impl Plan {
    pub(crate) fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                latency_warmup: 20,
                latency_rounds: 300,
                exec_warmup: 10,
                exec_rounds: 200,
                rss_sizes: vec![0, 256 * MIB, GIB],
                rss_warmup: 2,
                rss_rounds: 15,
                cpython_batch: 10,
                cpython_rounds: 8,
                throughput_rounds: 3,
                throughput_slice: Duration::from_millis(300),
                footprint_spawns: 2_000,
                typed_warmup: 5,
                typed_rounds: 150,
                worker_warmup: 100,
                worker_rounds: 3_000,
            }
        } else {
            Plan {
                latency_warmup: 100,
                latency_rounds: 3_000,
                exec_warmup: 50,
                exec_rounds: 1_000,
                rss_sizes: vec![0, GIB, 4 * GIB, 8 * GIB],
                rss_warmup: 2,
                rss_rounds: 25,
                cpython_batch: 10,
                cpython_rounds: 30,
                throughput_rounds: 5,
                throughput_slice: Duration::from_secs(1),
                footprint_spawns: 10_000,
                typed_warmup: 20,
                typed_rounds: 1_000,
                worker_warmup: 500,
                worker_rounds: 20_000,
            }
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "latency": {"warmup": self.latency_warmup, "rounds": self.latency_rounds},
            "exec": {"warmup": self.exec_warmup, "rounds": self.exec_rounds},
            "rss": {"sizes_bytes": self.rss_sizes, "warmup": self.rss_warmup,
                    "rounds": self.rss_rounds},
            "cpython": {"batch": self.cpython_batch, "rounds": self.cpython_rounds},
            "throughput": {"rounds": self.throughput_rounds,
                           "slice_ms": self.throughput_slice.as_millis() as u64},
            "footprint_spawns": self.footprint_spawns,
            "typed": {"warmup": self.typed_warmup, "rounds": self.typed_rounds},
            "worker": {"warmup": self.worker_warmup, "rounds": self.worker_rounds},
        })
    }
}
