//! The scalar per-child controls of a `Spawn` (PROTOCOL.md §5.5.1, rev 0.6): `umask`, `nice`,
//! `oom_score_adj` and `grace_ms`, each a field codec with the range check both the decoder and
//! [`super::Spawn::new`] apply.

use super::fields::FieldCodec;
use crate::codec::wire::{Reader, Sink};
use crate::error::{BuildError, DecodeError, Field};

/// The largest `umask`: the permission bits.
pub const MAX_UMASK: u16 = 0o777;
/// The range of `nice` (`setpriority(PRIO_PROCESS, 0, nice)`).
pub const NICE_RANGE: core::ops::RangeInclusive<i32> = -20..=19;
/// The range of `oom_score_adj` (`/proc/self/oom_score_adj`).
pub const OOM_SCORE_ADJ_RANGE: core::ops::RangeInclusive<i32> = -1000..=1000;

/// `umask` (u16, `0..=0o777`).
pub(super) struct Umask;

impl Umask {
    fn valid(v: u16) -> bool {
        v <= MAX_UMASK
    }
}

impl FieldCodec for Umask {
    type Value = u16;
    fn encode(v: &u16, out: &mut impl Sink) {
        out.put_u16_le(*v);
    }
    fn decode(r: &mut Reader<'_>) -> Result<u16, DecodeError> {
        let v = r.u16()?;
        // §5.5.1: no bit above 0o777.
        if !Self::valid(v) {
            return Err(DecodeError::InvalidValue(Field::Umask));
        }
        Ok(v)
    }
    fn check(v: &u16) -> Result<(), BuildError> {
        match Self::valid(*v) {
            true => Ok(()),
            false => Err(BuildError::InvalidValue(Field::Umask)),
        }
    }
}

/// A codec for an `i32` field whose valid values are a range: `$t`, reported as `$field`.
macro_rules! i32_range {
    ($(#[$doc:meta])* $t:ident, $field:ident, $range:expr) => {
        $(#[$doc])*
        pub(super) struct $t;

        impl FieldCodec for $t {
            type Value = i32;
            fn encode(v: &i32, out: &mut impl Sink) {
                out.put_i32_le(*v);
            }
            fn decode(r: &mut Reader<'_>) -> Result<i32, DecodeError> {
                let v = r.i32()?;
                // §5.5.1: the field's range.
                if !$range.contains(&v) {
                    return Err(DecodeError::InvalidValue(Field::$field));
                }
                Ok(v)
            }
            fn check(v: &i32) -> Result<(), BuildError> {
                match $range.contains(v) {
                    true => Ok(()),
                    false => Err(BuildError::InvalidValue(Field::$field)),
                }
            }
        }
    };
}

i32_range!(
    /// `nice` (i32, `-20..=19`).
    Nice,
    Nice,
    NICE_RANGE
);
i32_range!(
    /// `oom_score_adj` (i32, `-1000..=1000`).
    OomScoreAdj,
    OomScoreAdj,
    OOM_SCORE_ADJ_RANGE
);

/// `grace_ms` (u32, at least 1: no grace is the flag unset).
pub(super) struct Grace;

impl FieldCodec for Grace {
    type Value = core::num::NonZeroU32;
    fn encode(v: &core::num::NonZeroU32, out: &mut impl Sink) {
        out.put_u32_le(v.get());
    }
    fn decode(r: &mut Reader<'_>) -> Result<core::num::NonZeroU32, DecodeError> {
        // §5.5.1: grace_ms >= 1.
        core::num::NonZeroU32::new(r.u32()?).ok_or(DecodeError::InvalidValue(Field::Grace))
    }
}
