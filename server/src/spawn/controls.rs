//! The per-child controls of rev 0.6 (PROTOCOL.md §6.5 step 4, before the credentials):
//! resource limits, umask, nice value, OOM score adjustment, `no_new_privs`. [`Controls`] is
//! built by the server from the request (the OOM score's decimal text included), so that the
//! child, on either path, only makes the raw system calls of `raw.rs`: nothing here allocates
//! after the fork or the `CLONE_VM` clone.

use forkserver_protocol::{Rlimits, SpawnOptions};
use nix::errno::Errno;

use super::raw;
use super::stage::Stage;

/// The path the OOM score adjustment is written to (the child's own: `/proc/self` is the
/// calling process, the child on both paths).
const OOM_SCORE_ADJ: &std::ffi::CStr = c"/proc/self/oom_score_adj";

/// A decimal number as text, built before the fork (`i32` needs at most 11 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Decimal {
    buf: [u8; 11],
    len: u8,
}

impl Decimal {
    fn of(n: i32) -> Self {
        let mut d = Self::default();
        let mut digits = [0u8; 10];
        let (mut v, mut k) = (n.unsigned_abs(), 0);
        loop {
            digits[k] = b'0' + (v % 10) as u8;
            k += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        let mut at = 0;
        if n < 0 {
            d.buf[0] = b'-';
            at = 1;
        }
        for (slot, digit) in d.buf[at..].iter_mut().zip(digits[..k].iter().rev()) {
            *slot = *digit;
        }
        d.len = (at + k) as u8;
        d
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

/// What the child sets before its credentials change, as the request asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Controls {
    /// `SET_RLIMITS`: `prlimit64(0, ...)` for each, in order.
    pub(crate) rlimits: Option<Rlimits>,
    /// `SET_UMASK`.
    pub(crate) umask: Option<u16>,
    /// `SET_NICE`: `setpriority(PRIO_PROCESS, 0, nice)`.
    pub(crate) nice: Option<i32>,
    /// `SET_OOM_SCORE_ADJ`, with its text.
    pub(crate) oom_score_adj: Option<i32>,
    oom_text: Decimal,
    /// `NO_NEW_PRIVS`, or implied by `SECCOMP_FILTER` or `LANDLOCK_RULESET`.
    pub(crate) no_new_privs: bool,
}

impl From<&SpawnOptions> for Controls {
    fn from(o: &SpawnOptions) -> Self {
        Self {
            rlimits: o.rlimits,
            umask: o.umask,
            nice: o.nice,
            oom_score_adj: o.oom_score_adj,
            oom_text: o.oom_score_adj.map(Decimal::of).unwrap_or_default(),
            // PROTOCOL.md §6.5: a seccomp filter or a landlock ruleset implies it.
            no_new_privs: o.no_new_privs || o.seccomp_index.is_some() || o.landlock_index.is_some(),
        }
    }
}

impl Controls {
    /// The limits in order, then umask, nice, OOM score, `no_new_privs` (PROTOCOL.md §6.5):
    /// raw system calls on this value only, so the fork path and the `CLONE_VM` child share
    /// it. Fails with the stage of the call that failed.
    pub(crate) fn apply(&self) -> Result<(), (Stage, Errno)> {
        if let Some(limits) = &self.rlimits {
            for (i, l) in limits.as_slice().iter().enumerate() {
                // At most MAX_RLIMITS (16) entries: the index fits the stage byte.
                raw::set_rlimit(l.resource, l.soft, l.hard)
                    .map_err(|e| (Stage::Rlimit(i as u8), e))?;
            }
        }
        if let Some(mask) = self.umask {
            raw::umask(mask);
        }
        if let Some(n) = self.nice {
            raw::set_nice(n).map_err(|e| (Stage::Nice, e))?;
        }
        if self.oom_score_adj.is_some() {
            raw::write_file(OOM_SCORE_ADJ, self.oom_text.as_bytes())
                .map_err(|e| (Stage::OomScoreAdj, e))?;
        }
        if self.no_new_privs {
            raw::set_no_new_privs().map_err(|e| (Stage::NoNewPrivs, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Decimal;

    #[test]
    fn decimals_are_what_format_gives() {
        for n in [0, 7, -1, 500, -1000, 1000, i32::MIN, i32::MAX] {
            assert_eq!(Decimal::of(n).as_bytes(), n.to_string().as_bytes());
        }
    }
}
