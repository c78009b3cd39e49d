//! The codecs of the Spawn optional fields (PROTOCOL.md §5.5.1): how each field type named in
//! the options table (`options.rs`) is written, read and checked (its length is what the
//! encoder writes).

use crate::codec::wire::{Reader, Sink};
use crate::error::{BuildError, DecodeError, Field, Limit};
use crate::{MAX_GROUPS, MAX_PGID};

/// Supplementary groups: at most [`MAX_GROUPS`] gids, none of them `(gid_t) -1`. `Copy`, so
/// that [`super::SpawnOptions`] stays `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Groups {
    gids: [u32; MAX_GROUPS],
    len: u8,
}

impl Groups {
    /// # Errors
    /// [`BuildError::LimitExceeded`] past [`MAX_GROUPS`] gids, [`BuildError::InvalidValue`]
    /// ([`Field::Gid`]) for `u32::MAX`.
    pub fn new(gids: &[u32]) -> Result<Self, BuildError> {
        if gids.len() > MAX_GROUPS {
            return Err(BuildError::limit(Limit::Groups, gids.len()));
        }
        if !gids.iter().all(|g| Gid::valid(*g)) {
            return Err(BuildError::InvalidValue(Field::Gid));
        }
        let mut g = Self {
            gids: [0; MAX_GROUPS],
            len: gids.len() as u8,
        };
        g.gids[..gids.len()].copy_from_slice(gids);
        Ok(g)
    }

    /// The gids, in order.
    pub fn as_slice(&self) -> &[u32] {
        &self.gids[..usize::from(self.len)]
    }
}

impl Default for Groups {
    fn default() -> Self {
        Self {
            gids: [0; MAX_GROUPS],
            len: 0,
        }
    }
}

impl core::fmt::Debug for Groups {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// How an optional field of a `Spawn` travels (PROTOCOL.md §5.5.1): one impl per field
/// codec, named in a `field` or `session` line of the table.
pub(super) trait FieldCodec {
    /// The value `SpawnOptions` holds.
    type Value;
    /// Writes the field.
    fn encode(v: &Self::Value, out: &mut impl Sink);
    /// Reads the field, with its checks in wire order.
    fn decode(r: &mut Reader<'_>) -> Result<Self::Value, DecodeError>;
    /// The checks the value's type leaves open, for [`super::Spawn::new`].
    fn check(_v: &Self::Value) -> Result<(), BuildError> {
        Ok(())
    }
}

/// A `u32` field whose valid values one rule decides, written once and used by both the
/// decoder and [`super::Spawn::new`]'s check.
pub(super) trait U32Field {
    /// The field an invalid value is reported as.
    const FIELD: Field;
    /// Whether `v` is allowed (PROTOCOL.md §5.5.1).
    fn valid(v: u32) -> bool;
}

impl<T: U32Field> FieldCodec for T {
    type Value = u32;
    fn encode(v: &u32, out: &mut impl Sink) {
        out.put_u32_le(*v);
    }
    fn decode(r: &mut Reader<'_>) -> Result<u32, DecodeError> {
        let v = r.u32()?;
        if !T::valid(v) {
            return Err(DecodeError::InvalidValue(T::FIELD));
        }
        Ok(v)
    }
    fn check(v: &u32) -> Result<(), BuildError> {
        if !T::valid(*v) {
            return Err(BuildError::InvalidValue(T::FIELD));
        }
        Ok(())
    }
}

/// §5.5.1: `(uid_t) -1` and `(gid_t) -1` are not ids.
fn is_id(v: u32) -> bool {
    v != u32::MAX
}

/// `uid` (u32, not `u32::MAX`).
pub(super) struct Uid;

impl U32Field for Uid {
    const FIELD: Field = Field::Uid;
    fn valid(v: u32) -> bool {
        is_id(v)
    }
}

/// `gid` (u32, not `u32::MAX`); also each gid of [`Groups`].
pub(super) struct Gid;

impl U32Field for Gid {
    const FIELD: Field = Field::Gid;
    fn valid(v: u32) -> bool {
        is_id(v)
    }
}

/// `pgid` (u32, `1..=MAX_PGID`).
pub(super) struct Pgid;

impl U32Field for Pgid {
    const FIELD: Field = Field::Pgid;
    fn valid(v: u32) -> bool {
        // §5.5.1: 1 <= pgid <= 2^31 - 1.
        (1..=MAX_PGID).contains(&v)
    }
}

/// `ngroups` (u16), then `ngroups` gids.
impl FieldCodec for Groups {
    type Value = Groups;
    fn encode(g: &Groups, out: &mut impl Sink) {
        out.put_u16_le(g.as_slice().len() as u16);
        for gid in g.as_slice() {
            out.put_u32_le(*gid);
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Groups, DecodeError> {
        let n = usize::from(r.u16()?);
        // §5.5.1: ngroups <= MAX_GROUPS, and the gids are present, before any is read.
        if n > MAX_GROUPS {
            return Err(DecodeError::LimitExceeded(Limit::Groups));
        }
        if r.remaining() < 4 * n {
            return Err(DecodeError::Truncated);
        }
        let mut g = Groups {
            gids: [0; MAX_GROUPS],
            len: n as u8,
        };
        for slot in &mut g.gids[..n] {
            *slot = <Gid as FieldCodec>::decode(r)?;
        }
        Ok(g)
    }
}
