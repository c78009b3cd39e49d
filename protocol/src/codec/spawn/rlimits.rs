//! The resource limits of a `Spawn` (PROTOCOL.md §5.5.1, rev 0.6, `SET_RLIMITS`): up to
//! [`MAX_RLIMITS`] `(resource u32, soft u64, hard u64)` triples, which the child sets with
//! `prlimit64(0, resource, ...)` in order, before its credentials change.

use super::fields::FieldCodec;
use crate::codec::wire::{Reader, Sink};
use crate::error::{BuildError, DecodeError, Field, Limit};
use crate::MAX_RLIMITS;

/// `RLIM_INFINITY` on the wire: no limit.
pub const RLIM_INFINITY: u64 = u64::MAX;

/// The Linux resource numbers (`RLIMIT_*`), in order, by the names `forkserver run --rlimit`
/// takes (the constant lowercased, without the prefix). A resource is valid on the wire when it
/// is an index of this table (§5.5.1).
pub const RESOURCES: [&str; 16] = [
    "cpu",
    "fsize",
    "data",
    "stack",
    "core",
    "rss",
    "nproc",
    "nofile",
    "memlock",
    "as",
    "locks",
    "sigpending",
    "msgqueue",
    "nice",
    "rtprio",
    "rttime",
];

/// One resource limit: `resource` (an `RLIMIT_*` number, an index of [`RESOURCES`]), its soft
/// and its hard limit ([`RLIM_INFINITY`] for none), soft ≤ hard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Rlimit {
    /// The `RLIMIT_*` number.
    pub resource: u32,
    /// The soft limit.
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

impl Rlimit {
    /// The resource's name as `setrlimit(2)` spells it (`"RLIMIT_NOFILE"`), or `None` for a
    /// number outside [`RESOURCES`].
    pub fn resource_name(resource: u32) -> Option<String> {
        RESOURCES
            .get(resource as usize)
            .map(|n| format!("RLIMIT_{}", n.to_ascii_uppercase()))
    }

    /// The number of a resource by its short name (`"nofile"`), as in [`RESOURCES`].
    pub fn resource_by_name(name: &str) -> Option<u32> {
        RESOURCES.iter().position(|n| *n == name).map(|i| i as u32)
    }

    /// §5.5.1: the resource is a Linux `RLIMIT_*` number and soft ≤ hard.
    fn valid(&self) -> bool {
        (self.resource as usize) < RESOURCES.len() && self.soft <= self.hard
    }
}

/// The limits of a spawn, in order: at most [`MAX_RLIMITS`], each valid. `Copy`, so that
/// [`super::SpawnOptions`] stays `Copy`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Rlimits {
    limits: [Rlimit; MAX_RLIMITS],
    len: u8,
}

impl Rlimits {
    /// # Errors
    /// [`BuildError::LimitExceeded`] past [`MAX_RLIMITS`] limits, [`BuildError::InvalidValue`]
    /// ([`Field::Rlimit`]) for an unknown resource or a soft limit above the hard one.
    pub fn new(limits: &[Rlimit]) -> Result<Self, BuildError> {
        let mut r = Self::default();
        for l in limits {
            r.push(*l)?;
        }
        Ok(r)
    }

    /// Adds a limit after the others.
    ///
    /// # Errors
    /// As [`Rlimits::new`].
    pub fn push(&mut self, l: Rlimit) -> Result<(), BuildError> {
        let n = usize::from(self.len);
        if n == MAX_RLIMITS {
            return Err(BuildError::limit(Limit::Rlimits, n + 1));
        }
        if !l.valid() {
            return Err(BuildError::InvalidValue(Field::Rlimit));
        }
        self.limits[n] = l;
        self.len += 1;
        Ok(())
    }

    /// The limits, in order.
    pub fn as_slice(&self) -> &[Rlimit] {
        &self.limits[..usize::from(self.len)]
    }
}

impl core::fmt::Debug for Rlimits {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// `nrlimits` (u16), then `nrlimits` × `(resource u32, soft u64, hard u64)`.
impl FieldCodec for Rlimits {
    type Value = Rlimits;
    fn encode(r: &Rlimits, out: &mut impl Sink) {
        out.put_u16_le(r.as_slice().len() as u16);
        for l in r.as_slice() {
            out.put_u32_le(l.resource);
            out.put_u64_le(l.soft);
            out.put_u64_le(l.hard);
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Rlimits, DecodeError> {
        let n = usize::from(r.u16()?);
        // §5.5.1: nrlimits <= MAX_RLIMITS, and the entries are present, before any is read.
        if n > MAX_RLIMITS {
            return Err(DecodeError::LimitExceeded(Limit::Rlimits));
        }
        if r.remaining() < 20 * n {
            return Err(DecodeError::Truncated);
        }
        let mut out = Rlimits::default();
        for _ in 0..n {
            let l = Rlimit {
                resource: r.u32()?,
                soft: r.u64()?,
                hard: r.u64()?,
            };
            // §5.5.1: a Linux resource number, soft <= hard.
            out.push(l)
                .map_err(|_| DecodeError::InvalidValue(Field::Rlimit))?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_linux_numbers() {
        assert_eq!(Rlimit::resource_by_name("nofile"), Some(7));
        assert_eq!(Rlimit::resource_name(7).as_deref(), Some("RLIMIT_NOFILE"));
        assert_eq!(Rlimit::resource_by_name("rttime"), Some(15));
        assert_eq!(Rlimit::resource_name(16), None);
    }

    #[test]
    fn the_builder_enforces_the_wire_rules() {
        let l = |resource, soft, hard| Rlimit {
            resource,
            soft,
            hard,
        };
        assert!(Rlimits::new(&[l(7, 64, 128), l(4, 0, RLIM_INFINITY)]).is_ok());
        assert_eq!(
            Rlimits::new(&[l(7, 129, 128)]),
            Err(BuildError::InvalidValue(Field::Rlimit))
        );
        assert_eq!(
            Rlimits::new(&[l(16, 1, 1)]),
            Err(BuildError::InvalidValue(Field::Rlimit))
        );
        assert!(Rlimits::new(&[l(0, 1, 1); MAX_RLIMITS]).is_ok());
        assert!(matches!(
            Rlimits::new(&[l(0, 1, 1); MAX_RLIMITS + 1]),
            Err(BuildError::LimitExceeded { .. })
        ));
    }
}
