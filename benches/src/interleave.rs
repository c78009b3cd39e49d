//! Interleaved measurement: the scenarios of a group run round-robin (A B C, B C A, C A B, ...)
//! after a warm-up, so that a drift in machine load (other processes, frequency, caches) hits
//! every scenario of the group alike and the ratios between them stay meaningful.

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
    let k = scenarios.len();
    let mut scratch = Vec::new();
    for _ in 0..warmup {
        for s in scenarios.iter_mut() {
            scratch.clear();
            (s.run)(&mut scratch).map_err(|e| format!("{} (warm-up): {e}", s.name))?;
        }
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(rounds); k];
    for round in 0..rounds {
        for j in 0..k {
            let i = (round + j) % k;
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
}
