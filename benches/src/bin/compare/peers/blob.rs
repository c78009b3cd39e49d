//! [`Blob`]: the large argument, a byte string.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A byte string that serializes as bytes (MessagePack `bin`, postcard's length and bytes),
/// not as a sequence of numbers: what a user would get from `serde_bytes`, in a few lines.
#[derive(Clone, Debug)]
pub(crate) struct Blob(pub(crate) Vec<u8>);

impl Blob {
    /// `len` bytes, `0, 1, .., 255, 0, ..`.
    pub(crate) fn new(len: usize) -> Blob {
        Blob((0..len).map(|i| i as u8).collect())
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Blob, D::Error> {
        struct Bytes;
        impl Visitor<'_> for Bytes {
            type Value = Blob;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Blob, E> {
                Ok(Blob(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Blob, E> {
                Ok(Blob(v))
            }
        }
        d.deserialize_byte_buf(Bytes)
    }
}
