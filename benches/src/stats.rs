//! Order statistics of latency samples: median, p90, p99 (nearest rank).

use std::time::Duration;

/// The summary of one scenario's samples, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Smallest sample.
    pub min_ns: u64,
    /// 50th percentile.
    pub median_ns: u64,
    /// 90th percentile.
    pub p90_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// Largest sample.
    pub max_ns: u64,
}

/// The `p`-th percentile (0 < `p` <= 100) of `sorted` by the nearest-rank method: the smallest
/// sample such that at least `p`% of the samples are less than or equal to it. `sorted` must be
/// sorted ascending and non-empty.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    assert!(!sorted.is_empty(), "percentile of no samples");
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Summary {
    /// Summarizes `samples` (in any order). Returns `None` when there are none.
    pub fn of_ns(samples: &[u64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_unstable();
        Some(Summary {
            n: s.len(),
            min_ns: s[0],
            median_ns: percentile(&s, 50.0),
            p90_ns: percentile(&s, 90.0),
            p99_ns: percentile(&s, 99.0),
            max_ns: s[s.len() - 1],
        })
    }

    /// Summarizes durations.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        let ns: Vec<u64> = samples.iter().map(|d| duration_ns(*d)).collect();
        Self::of_ns(&ns)
    }

    /// The median in microseconds, for display and ratios.
    pub fn median_us(&self) -> f64 {
        self.median_ns as f64 / 1e3
    }

    /// The summary as a JSON object (nanoseconds).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "n": self.n,
            "min_ns": self.min_ns,
            "median_ns": self.median_ns,
            "p90_ns": self.p90_ns,
            "p99_ns": self.p99_ns,
            "max_ns": self.max_ns,
        })
    }
}

/// A duration in whole nanoseconds, saturating.
pub fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `a / b` of two medians, or `None` if `b` is zero.
pub fn ratio(a: &Summary, b: &Summary) -> Option<f64> {
    (b.median_ns > 0).then(|| a.median_ns as f64 / b.median_ns as f64)
}

/// A duration in nanoseconds, formatted with a unit that keeps 3-4 significant digits.
pub fn fmt_ns(ns: u64) -> String {
    let ns = ns as f64;
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let s: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&s, 50.0), 50);
        assert_eq!(percentile(&s, 90.0), 90);
        assert_eq!(percentile(&s, 99.0), 99);
        assert_eq!(percentile(&s, 100.0), 100);
        assert_eq!(percentile(&[7], 50.0), 7);
        assert_eq!(percentile(&[1, 2, 3], 50.0), 2);
        assert_eq!(percentile(&[1, 2, 3, 4], 50.0), 2);
    }

    #[test]
    fn summary_sorts() {
        let s = Summary::of_ns(&[5, 1, 4, 2, 3]).unwrap();
        assert_eq!((s.n, s.min_ns, s.median_ns, s.max_ns), (5, 1, 3, 5));
        assert!(Summary::of_ns(&[]).is_none());
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_ns(999), "999 ns");
        assert_eq!(fmt_ns(12_345), "12.3 µs");
        assert_eq!(fmt_ns(180_000_000), "180.00 ms");
    }
}
