//! The sandbox controls of a `Spawn` (PROTOCOL.md §5.5.1, rev 0.6): `seccomp_index` and
//! `landlock_index`, each the index of a bundle entry (a `u16`) that holds a compiled
//! classic-BPF program or a landlock ruleset. The entries are consumed by the server (§6.5):
//! the job finds no fd at their targets.
//!
//! An index is a plain `u16` on the wire; whether it names an entry of the bundle needs the
//! fd count, so that check ([`check_indexes`]) runs once the fields are read, in the decoder
//! and in [`super::Spawn::new`] alike.

use super::fields::FieldCodec;
use crate::codec::wire::{Reader, Sink};
use crate::error::{DecodeError, Field};

/// A bundle index (u16): `seccomp_index`, `landlock_index`.
pub(super) struct BundleIndex;

impl FieldCodec for BundleIndex {
    type Value = u16;
    fn encode(v: &u16, out: &mut impl Sink) {
        out.put_u16_le(*v);
    }
    fn decode(r: &mut Reader<'_>) -> Result<u16, DecodeError> {
        // §5.5.1 check 5: the index is checked against nfds after the optional fields.
        r.u16()
    }
}

/// §5.5.1 check 6: each index names an entry of the bundle (`< nfds`), and the two name
/// different entries; else the field at fault. It takes the two values, not the
/// `SpawnOptions` that hold them, so that `options` (which uses [`BundleIndex`]) and this
/// module do not depend on each other.
pub(super) fn check_indexes(
    seccomp: Option<u16>,
    landlock: Option<u16>,
    nfds: usize,
) -> Result<(), Field> {
    if seccomp.is_some_and(|i| usize::from(i) >= nfds) {
        return Err(Field::SeccompIndex);
    }
    if landlock.is_some_and(|i| usize::from(i) >= nfds) {
        return Err(Field::LandlockIndex);
    }
    if landlock.is_some() && landlock == seccomp {
        return Err(Field::LandlockIndex);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{ExecJob, FdMap, Job, Spawn, SpawnOptions};
    use crate::error::{BuildError, Field};

    fn build(seccomp: Option<u16>, landlock: Option<u16>, nfds: u32) -> Result<Spawn, BuildError> {
        let options = SpawnOptions {
            seccomp_index: seccomp,
            landlock_index: landlock,
            ..SpawnOptions::default()
        };
        let map = FdMap::from_targets((0..nfds).collect()).unwrap();
        Spawn::new(options, map, Job::Exec(ExecJob::new("/bin/true").unwrap()))
    }

    #[test]
    fn indexes_name_two_different_entries_of_the_bundle() {
        assert!(build(Some(0), Some(1), 2).is_ok());
        assert!(build(None, Some(0), 1).is_ok());
        let invalid = |f| Err(BuildError::InvalidValue(f));
        assert_eq!(build(Some(2), None, 2), invalid(Field::SeccompIndex));
        assert_eq!(build(None, Some(0), 0), invalid(Field::LandlockIndex));
        assert_eq!(build(Some(1), Some(1), 2), invalid(Field::LandlockIndex));
    }
}
