//! The fingerprint of a typed entry (PROTOCOL.md §11.2): FNV-1a 64 over the entry's name, the
//! argument's and the result's type names and the codec id, so that a call whose types are
//! not the entry's is refused before the entry runs.

use super::header::Codec;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `bytes`, continuing from `hash`.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// FNV-1a 64 over `name 0x00 arg 0x00 result 0x00 codec_id`: the spec's definition, on the
/// type names as given.
pub fn fingerprint_of(name: &str, arg: &str, result: &str, codec: Codec) -> u64 {
    let mut h = FNV_OFFSET;
    for part in [name.as_bytes(), arg.as_bytes(), result.as_bytes()] {
        h = fnv1a(h, part);
        h = fnv1a(h, &[0]);
    }
    fnv1a(h, &[codec.id()])
}

/// The fingerprint of entry `name` taking `A` and giving `R` in `codec`, on
/// `std::any::type_name` (the same in client and server when both are built from the same
/// types by the same compiler, as a launched zygote is).
pub fn fingerprint<A: ?Sized, R: ?Sized>(name: &str, codec: Codec) -> u64 {
    fingerprint_of(
        name,
        std::any::type_name::<A>(),
        std::any::type_name::<R>(),
        codec,
    )
}

#[cfg(test)]
mod tests {
    use super::{fingerprint_of, fnv1a, FNV_OFFSET};
    use crate::typed::Codec;

    #[test]
    fn fnv1a_matches_the_published_values() {
        // From the FNV reference test suite.
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn every_part_counts() {
        let base = fingerprint_of("square", "u32", "u32", Codec::MessagePack);
        assert_ne!(
            base,
            fingerprint_of("square", "u32", "u64", Codec::MessagePack)
        );
        assert_ne!(
            base,
            fingerprint_of("square", "u64", "u32", Codec::MessagePack)
        );
        assert_ne!(
            base,
            fingerprint_of("squar", "eu32", "u32", Codec::MessagePack)
        );
        assert_ne!(base, fingerprint_of("square", "u32", "u32", Codec::Json));
    }
}
