//! Interleaved measurement: the scenarios of a group run round-robin (A B C, B C A, C A B, ...)
//! after a warm-up, so that a drift in machine load (other processes, frequency, caches) hits
//! every scenario of the group alike and the ratios between them stay meaningful.
//! [`run_shuffled`] runs each round in a new random order instead, for groups whose scenarios
//! disturb the one after them unequally (a process exec'd and reaped, a MiB copied): under a
//! rotation each scenario always follows the same one.

use std::time::Duration;

use crate::stats::Summary;
use crate::Result;

/// A scenario's body: runs the operation once (or a batch) and pushes the samples.
type RunFn<'a> = Box<dyn FnMut(&mut Vec<Duration>) -> Result<()> + 'a>;

/// One measured operation.
pub struct Scenario<'a> {
    name: String,
    run: RunFn<'a>,
}

impl std::fmt::Debug for Scenario<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scenario")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<'a> Scenario<'a> {
    /// A scenario whose every run yields one sample: `f` times its own region (so that setup
    /// and cleanup, e.g. reaping a child, can stay outside it).
    pub fn new(name: impl Into<String>, mut f: impl FnMut() -> Result<Duration> + 'a) -> Self {
        Self {
            name: name.into(),
            run: Box::new(move |out| {
                out.push(f()?);
                Ok(())
            }),
        }
    }

    /// A scenario whose every run pushes any number of samples (a batch measured elsewhere,
    /// e.g. by another process).
    pub fn batch(
        name: impl Into<String>,
        f: impl FnMut(&mut Vec<Duration>) -> Result<()> + 'a,
    ) -> Self {
        Self {
            name: name.into(),
            run: Box::new(f),
        }
    }

    /// The scenario's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Runs each scenario `warmup` times (discarded), then `rounds` rounds, each running every
/// scenario once, starting one further along each round. Returns each scenario's name and
/// summary, in the order given.
///
/// # Errors
/// The first error of any scenario.
pub fn run(
    scenarios: &mut [Scenario<'_>],
    warmup: usize,
    rounds: usize,
) -> Result<Vec<(String, Summary)>> {
    run_ordered(scenarios, warmup, rounds, |round, order| {
        let k = order.len();
        for (j, slot) in order.iter_mut().enumerate() {
            *slot = (round + j) % k;
        }
    })
}

/// Like [`run`], but each round runs the scenarios in a new pseudo-random order (a
/// Fisher-Yates shuffle driven by xorshift64* from `seed`, so a run can be repeated), and so
/// after a random predecessor.
///
/// # Errors
/// The first error of any scenario.
pub fn run_shuffled(
    scenarios: &mut [Scenario<'_>],
    warmup: usize,
    rounds: usize,
    seed: u64,
) -> Result<Vec<(String, Summary)>> {
    let mut rng = XorShift(seed | 1);
    run_ordered(scenarios, warmup, rounds, |_, order| {
        for j in (1..order.len()).rev() {
            order.swap(j, rng.below(j as u64 + 1) as usize);
        }
    })
}

/// The warm-up, then `rounds` rounds in the order `order_of(round, order)` leaves in `order`
/// (a permutation of the scenarios' indices, given as the previous round's).
fn run_ordered(
    scenarios: &mut [Scenario<'_>],
    warmup: usize,
    rounds: usize,
    mut order_of: impl FnMut(usize, &mut [usize]),
) -> Result<Vec<(String, Summary)>> {
    let k = scenarios.len();
    let mut scratch = Vec::new();
    for _ in 0..warmup {
        for s in scenarios.iter_mut() {
            scratch.clear();
            (s.run)(&mut scratch).map_err(|e| format!("{} (warm-up): {e}", s.name))?;
        }
    }
    let mut order: Vec<usize> = (0..k).collect();
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(rounds); k];
    for round in 0..rounds {
        order_of(round, &mut order);
        for &i in &order {
            let s = &mut scenarios[i];
            (s.run)(&mut samples[i]).map_err(|e| format!("{}: {e}", s.name))?;
        }
    }
    scenarios
        .iter()
        .zip(samples)
        .map(|(s, v)| {
            let summary = Summary::of(&v).ok_or_else(|| format!("{}: no samples", s.name))?;
            Ok((s.name.clone(), summary))
        })
        .collect()
}

/// xorshift64* (Vigna 2014): enough to shuffle a round, no dependency.
struct XorShift(u64);

impl XorShift {
    /// A number in `0..n` (`n` > 0; the modulo's bias is nothing at these sizes).
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn round_robin_with_rotation() {
        let log = RefCell::new(Vec::new());
        let mk = |c: char| {
            let log = &log;
            Scenario::new(c.to_string(), move || {
                log.borrow_mut().push(c);
                Ok(Duration::from_nanos(1))
            })
        };
        let mut s = vec![mk('a'), mk('b'), mk('c')];
        let out = run(&mut s, 1, 3).unwrap();
        let order: String = log.borrow().iter().collect();
        assert_eq!(order, "abc".to_owned() + "abc" + "bca" + "cab");
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|(_, s)| s.n == 3));
    }

    #[test]
    fn shuffled_rounds_hold_each_once_in_varying_orders() {
        let log = RefCell::new(Vec::new());
        let mk = |c: char| {
            let log = &log;
            Scenario::new(c.to_string(), move || {
                log.borrow_mut().push(c);
                Ok(Duration::from_nanos(1))
            })
        };
        let mut s = vec![mk('a'), mk('b'), mk('c'), mk('d')];
        let out = run_shuffled(&mut s, 1, 50, 7).unwrap();
        let log = log.borrow();
        assert_eq!(&log[..4], &['a', 'b', 'c', 'd']);
        let rounds: Vec<String> = log[4..].chunks(4).map(|r| r.iter().collect()).collect();
        assert_eq!(rounds.len(), 50);
        for r in &rounds {
            let mut sorted: Vec<char> = r.chars().collect();
            sorted.sort_unstable();
            assert_eq!(sorted, ['a', 'b', 'c', 'd'], "round {r}");
        }
        // Every scenario follows more than one other over the run.
        for c in ['a', 'b', 'c', 'd'] {
            let mut before: Vec<char> = log[4..]
                .windows(2)
                .filter(|w| w[1] == c)
                .map(|w| w[0])
                .collect();
            before.sort_unstable();
            before.dedup();
            assert!(before.len() > 1, "{c} always follows {before:?}");
        }
        assert!(out.iter().all(|(_, s)| s.n == 50));
    }
}
