//! Where a child's fds go (PROTOCOL.md §6.5), decided without touching a descriptor: a
//! [`Placement`] says which system call comes next and is told what the kernel answered, so the
//! order can be checked in memory (the property tests below run it against a simulated fd
//! table) and the child only executes it.
//!
//! The order never overwrites a bundle fd before it is placed: a target whose number holds
//! another unplaced source waits until that source is placed. Only a cycle (a on b's target,
//! b on a's) blocks every remaining source; one of it is then moved to a number that is no
//! target. With the usual layout (sources received just above the targets) nothing moves: one
//! system call per fd.

use std::collections::HashMap;
use std::os::fd::RawFd;

/// One step of the placement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// `dup2(from, to)`: `to` ends up without close-on-exec.
    Dup2 {
        /// The source's current number.
        from: RawFd,
        /// Its target.
        to: RawFd,
    },
    /// The source is at its target already: clear its close-on-exec flag.
    ClearCloexec(RawFd),
    /// Duplicate the fd to a number that is no target (`F_DUPFD_CLOEXEC`, searching upwards
    /// past numbers that are targets; see [`Placement::is_target`]) and report the new number
    /// with [`Placement::moved`]. The old number is left as it is: it is a target, or it is
    /// closed with the rest.
    MoveOff(RawFd),
}

/// The placement of one bundle: sources (the fds as received), their targets, and the report
/// fd that must survive it.
#[derive(Debug)]
pub(crate) struct Placement {
    targets: Vec<u32>,
    srcs: Vec<RawFd>,
    placed: Vec<bool>,
    /// Which unplaced source holds a number: a lookup, so that many cycles (a client chooses
    /// the targets) cost O(n) per pass, not O(n²).
    holder: HashMap<RawFd, usize>,
    left: usize,
    cursor: usize,
    report: RawFd,
    report_checked: bool,
}

impl Placement {
    /// `srcs[i]` goes to `targets[i]`; `report` must stay open, off every target.
    pub(crate) fn new(srcs: Vec<RawFd>, targets: Vec<u32>, report: RawFd) -> Self {
        debug_assert_eq!(srcs.len(), targets.len());
        let holder = srcs.iter().enumerate().map(|(i, &s)| (s, i)).collect();
        Self {
            placed: vec![false; srcs.len()],
            left: srcs.len(),
            holder,
            targets,
            srcs,
            cursor: 0,
            report,
            report_checked: false,
        }
    }

    /// Whether `fd` is some source's target.
    pub(crate) fn is_target(&self, fd: RawFd) -> bool {
        u32::try_from(fd).is_ok_and(|fd| self.targets.contains(&fd))
    }

    /// The report fd's number (it moves off a target first, if it sits on one).
    pub(crate) fn report(&self) -> RawFd {
        self.report
    }

    /// The targets, in bundle order.
    pub(crate) fn targets(&self) -> &[u32] {
        &self.targets
    }

    /// The next system call, or `None` once every source is at its target. A returned
    /// `Dup2` or `ClearCloexec` counts as done: if it fails, the placement is abandoned.
    pub(crate) fn next_op(&mut self) -> Option<Op> {
        if !self.report_checked {
            self.report_checked = true;
            if self.is_target(self.report) {
                return Some(Op::MoveOff(self.report));
            }
        }
        let n = self.srcs.len();
        if self.left == 0 {
            return None;
        }
        for _ in 0..n {
            let i = self.cursor;
            self.cursor = (self.cursor + 1) % n;
            if self.placed[i] {
                continue;
            }
            let t = self.targets[i] as RawFd;
            let op = match self.holder.get(&t).copied() {
                Some(j) if j != i => continue,
                Some(_) => Op::ClearCloexec(t),
                None => Op::Dup2 {
                    from: self.srcs[i],
                    to: t,
                },
            };
            self.placed[i] = true;
            self.holder.remove(&self.srcs[i]);
            self.left -= 1;
            return Some(op);
        }
        // A whole round and nothing placeable: what is left is cycles. Break one.
        let i = (0..n).find(|&i| !self.placed[i])?;
        Some(Op::MoveOff(self.srcs[i]))
    }

    /// The answer to [`Op::MoveOff`]: `old` now also lives at `new`, which is no target.
    pub(crate) fn moved(&mut self, old: RawFd, new: RawFd) {
        if old == self.report {
            self.report = new;
        } else if let Some(i) = self.holder.remove(&old) {
            self.srcs[i] = new;
            self.holder.insert(new, i);
        }
    }
}

/// One fd system call of the `CLONE_VM` child (`plan.rs`), every number decided by the server
/// before the clone ([`plan_fds`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FdOp {
    /// `dup3(from, to, 0)`: `to` without close-on-exec.
    Dup2 { from: RawFd, to: RawFd },
    /// The source is at its target: clear close-on-exec.
    ClearCloexec(RawFd),
    /// `dup3(from, to, O_CLOEXEC)` to a number that is no target and no source: breaks a
    /// cycle of the placement. Whatever the child had at `to` (its copy of a server fd) is
    /// closed by it, as it would have been with the rest.
    Aside { from: RawFd, to: RawFd },
}

/// The fd placement of a bundle whose fds are at `srcs` (and go to `targets`) as a list of
/// system calls with every number fixed, and the sorted targets. A cycle is broken by a
/// duplicate at the lowest number that is no source, no target and no earlier duplicate: in
/// the child's copy of the fd table that number holds nothing the placement needs.
pub(super) fn plan_fds(srcs: Vec<RawFd>, targets: Vec<u32>) -> (Vec<FdOp>, Vec<u32>) {
    let mut taken: Vec<RawFd> = srcs.clone();
    taken.extend(targets.iter().map(|&t| t as RawFd));
    // No report fd on this path: -1 is no fd and no target.
    let mut plan = Placement::new(srcs, targets, -1);
    let mut ops = Vec::new();
    while let Some(op) = plan.next_op() {
        ops.push(match op {
            Op::Dup2 { from, to } => FdOp::Dup2 { from, to },
            Op::ClearCloexec(fd) => FdOp::ClearCloexec(fd),
            Op::MoveOff(from) => {
                let to = (0..).find(|n| !taken.contains(n)).unwrap_or(RawFd::MAX);
                taken.push(to);
                plan.moved(from, to);
                FdOp::Aside { from, to }
            }
        });
    }
    let mut keep = plan.targets().to_vec();
    keep.sort_unstable();
    (ops, keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// What an fd number refers to in the simulated table.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum File {
        Source(usize),
        Report,
        Other,
    }

    /// Runs the placement against a simulated fd table, as the child's executor does with
    /// real system calls. Returns the table and the number of steps.
    fn simulate(
        srcs: &[RawFd],
        targets: &[u32],
        report: RawFd,
        others: &[RawFd],
    ) -> (BTreeMap<RawFd, File>, Placement, usize) {
        let mut table = BTreeMap::new();
        for &o in others {
            table.insert(o, File::Other);
        }
        for (i, &s) in srcs.iter().enumerate() {
            table.insert(s, File::Source(i));
        }
        table.insert(report, File::Report);
        let mut p = Placement::new(srcs.to_vec(), targets.to_vec(), report);
        let mut steps = 0;
        while let Some(op) = p.next_op() {
            steps += 1;
            assert!(steps <= 4 * srcs.len() + 4, "no end");
            match op {
                Op::Dup2 { from, to } => {
                    let f = *table.get(&from).expect("dup2 from a closed fd");
                    table.insert(to, f);
                }
                Op::ClearCloexec(fd) => assert!(table.contains_key(&fd)),
                Op::MoveOff(fd) => {
                    let f = *table.get(&fd).expect("move of a closed fd");
                    // F_DUPFD_CLOEXEC: the lowest free number from `from` up; the executor
                    // searches past targets, leaving the duplicates there as placeholders.
                    let mut from = 0;
                    let new = loop {
                        let d = (from..).find(|d| !table.contains_key(d)).unwrap();
                        table.insert(d, f);
                        if !p.is_target(d) {
                            break d;
                        }
                        from = d + 1;
                    };
                    p.moved(fd, new);
                }
            }
        }
        (table, p, steps)
    }

    fn check(srcs: &[RawFd], targets: &[u32], report: RawFd, others: &[RawFd]) {
        let (table, p, steps) = simulate(srcs, targets, report, others);
        for (i, &t) in targets.iter().enumerate() {
            assert_eq!(
                table.get(&(t as RawFd)),
                Some(&File::Source(i)),
                "target {t}"
            );
        }
        assert_eq!(table.get(&p.report()), Some(&File::Report));
        assert!(!p.is_target(p.report()));
        // One step per fd, plus one per cycle broken, plus the report's move.
        assert!(steps <= srcs.len() + srcs.len() / 2 + 1, "{steps} steps");
    }

    #[test]
    fn the_usual_layout_is_one_step_per_fd() {
        let srcs = [10, 11, 12];
        let (_, _, steps) = simulate(&srcs, &[0, 1, 2], 9, &[3, 4]);
        assert_eq!(steps, 3);
        check(&srcs, &[0, 1, 2], 9, &[3, 4]);
    }

    #[test]
    fn cycles_fixed_points_and_a_report_on_a_target() {
        // 5<->6 swap, 7 stays, 8->5's number chain, report on a target.
        check(&[5, 6, 7, 8], &[6, 5, 7, 9], 9, &[0, 1, 2]);
        // A 3-cycle.
        check(&[3, 4, 5], &[4, 5, 3], 20, &[]);
        // Reversed targets over the same numbers.
        let srcs: Vec<RawFd> = (3..40).collect();
        let targets: Vec<u32> = (3..40u32).rev().collect();
        check(&srcs, &targets, 2, &[0, 1]);
    }

    /// Distinct sources, distinct targets, a report and other open fds, all from 0..64 so that
    /// they collide often.
    fn layouts() -> impl Strategy<Value = (Vec<RawFd>, Vec<u32>, RawFd, Vec<RawFd>)> {
        (1usize..24).prop_flat_map(|n| {
            (
                Just(n),
                Just((0..64).collect::<Vec<RawFd>>()).prop_shuffle(),
                Just((0..64).collect::<Vec<u32>>()).prop_shuffle(),
                0usize..4,
            )
                .prop_map(|(n, numbers, targets, extra)| {
                    let srcs = numbers[..n].to_vec();
                    let report = numbers[n];
                    let others = numbers[n + 1..n + 1 + extra].to_vec();
                    (srcs, targets[..n].to_vec(), report, others)
                })
        })
    }

    proptest! {
        #[test]
        fn every_source_reaches_its_target_and_nothing_is_clobbered(
            (srcs, targets, report, others) in layouts()
        ) {
            check(&srcs, &targets, report, &others);
        }
    }

    #[test]
    fn a_swap_goes_through_a_number_no_fd_of_the_plan_uses() {
        // 3 -> 4 and 4 -> 3: a cycle; 0, 1, 2 are no source or target, so 0 is free.
        let (ops, keep) = plan_fds(vec![3, 4], vec![4, 3]);
        assert_eq!(keep, [3, 4]);
        assert_eq!(ops[0], FdOp::Aside { from: 3, to: 0 });
        assert!(ops.contains(&FdOp::Dup2 { from: 4, to: 3 }));
        assert!(ops.contains(&FdOp::Dup2 { from: 0, to: 4 }));
        // The usual layout: one call per fd, nothing aside.
        let (ops, _) = plan_fds(vec![10, 11, 12], vec![0, 1, 2]);
        assert_eq!(ops.len(), 3);
        assert!(ops.iter().all(|op| matches!(op, FdOp::Dup2 { .. })));
    }
}
