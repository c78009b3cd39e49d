//! `Features` (0x24), server → client: what the server implements (PROTOCOL.md §5.14, rev
//! 0.6). The answer to `FeaturesRequest` (0x13, §5.13), which has an empty body.

use super::messages::{Body, Tag};
use super::spawn::{flags, Revision};
use super::wire::{Reader, Sink};
use crate::error::{BuildError, DecodeError, Field};

/// The first client tag that `Features::requests` counts: bit `n` is tag `0x10 + n`.
const FIRST_REQUEST_TAG: u8 = 0x10;

/// What a server implements: the draft revision, the `Spawn.flags` bits, the requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Features {
    revision: Revision,
    spawn_flags: u32,
    requests: u32,
}

impl Features {
    /// # Errors
    /// [`BuildError::InvalidValue`] for a revision before 0.6, which has no `Features`.
    pub fn new(revision: Revision, spawn_flags: u32, requests: u32) -> Result<Self, BuildError> {
        if revision < Revision::R0_6 {
            return Err(BuildError::InvalidValue(Field::Revision));
        }
        Ok(Self {
            revision,
            spawn_flags,
            requests,
        })
    }

    /// What this crate implements: [`Revision::CURRENT`], every bit of the Spawn options'
    /// table ([`flags::ALL`]) and every client request of the message table.
    pub fn current() -> Self {
        Self {
            revision: Revision::CURRENT,
            spawn_flags: flags::ALL,
            requests: Tag::ALL
                .iter()
                .filter_map(|&t| request_bit(t))
                .fold(0, |a, b| a | b),
        }
    }

    /// The revision of the specification the server implements.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Every `Spawn.flags` bit the server implements; bits this crate does not know may be
    /// set by a newer server.
    pub fn spawn_flags(&self) -> u32 {
        self.spawn_flags
    }

    /// The requests the server accepts in READY, one bit per client tag from `0x10`: bit `n`
    /// is tag `0x10 + n`.
    pub fn requests(&self) -> u32 {
        self.requests
    }

    /// Whether the server accepts requests of `tag` (always false for `Hello` and `Auth`,
    /// which every server accepts in its handshake, and for server tags).
    pub fn accepts(&self, tag: Tag) -> bool {
        request_bit(tag).is_some_and(|b| self.requests & b != 0)
    }
}

/// The bit of `Features::requests` for a client tag from `0x10` on.
fn request_bit(tag: Tag) -> Option<u32> {
    let n = (tag as u8).checked_sub(FIRST_REQUEST_TAG)?;
    (tag.is_from_client() && n < 32).then(|| 1 << n)
}

impl Body for Features {
    fn encode(&self, out: &mut impl Sink) {
        out.put_u16_le(self.revision.major());
        out.put_u16_le(self.revision.minor());
        out.put_u32_le(self.spawn_flags);
        out.put_u32_le(self.requests);
        out.put_u32_le(0);
    }

    fn decode(r: &mut Reader<'_>, _nfds: u16) -> Result<Self, DecodeError> {
        let revision = Revision::new(r.u16()?, r.u16()?);
        let spawn_flags = r.u32()?;
        let requests = r.u32()?;
        // §5.14 check 1: the reserved field is zero.
        r.reserved::<4>()?;
        // §5.14 check 2: a revision before 0.6 has no Features.
        Self::new(revision, spawn_flags, requests).map_err(DecodeError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_lists_the_tables() {
        let f = Features::current();
        assert_eq!(f.spawn_flags(), flags::ALL);
        for tag in Tag::ALL {
            let request = tag.is_from_client() && !matches!(tag, Tag::Hello | Tag::Auth);
            assert_eq!(f.accepts(tag), request, "{tag:?}");
        }
        assert_eq!(f.requests(), 0b1_1111);
    }

    #[test]
    fn the_table_says_which_bits_each_revision_knows() {
        assert_eq!(flags::known_in(Revision::FIRST), 0x1F);
        assert_eq!(flags::known_in(Revision::R0_3), 0x3F);
        assert_eq!(flags::known_in(Revision::R0_5), 0x7FF);
        assert_eq!(flags::known_in(Revision::R0_6), flags::ALL);
        assert_eq!(flags::ALL, 0xF_FFFF);
        assert_eq!(flags::known_in(Revision::CURRENT), flags::ALL);
        assert_eq!(flags::name(flags::SET_UID), Some("SET_UID"));
        assert_eq!(flags::name(flags::SET_UID | flags::SET_GID), None);
        assert_eq!(flags::name(1 << 31), None);
    }

    #[test]
    fn old_revisions_have_no_features() {
        assert!(Features::new(Revision::R0_5, 0, 0).is_err());
        assert!(Features::new(Revision::R0_6, 0, 0).is_ok());
    }
}
