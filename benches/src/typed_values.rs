//! The values of the typed-call benchmarks (`examples/typed_call.rs`, `examples/big_call.rs`,
//! `compare`'s group 8): [`Job`], the small argument and result, with [`scale`], the function
//! every side runs on it; [`Blob`], the large argument, a byte string.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A 4-field struct: a name, a size and a factor.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    name: String,
    w: u32,
    h: u32,
    factor: f64,
}

impl Job {
    /// The job every benchmark sends: an 800x600 "thumbnail" scaled by a quarter.
    pub fn new() -> Job {
        Job {
            name: "thumbnail".into(),
            w: 800,
            h: 600,
            factor: 0.25,
        }
    }

    /// Whether `self` is what [`scale`] makes of [`Job::new`].
    pub fn is_scaled(&self) -> bool {
        (self.w, self.h) == (200, 150)
    }
}

impl Default for Job {
    fn default() -> Self {
        Self::new()
    }
}

/// The typed entry (and worker handler) of the benchmarks: the size scaled by the factor.
pub fn scale(j: Job) -> Job {
    Job {
        w: (f64::from(j.w) * j.factor) as u32,
        h: (f64::from(j.h) * j.factor) as u32,
        ..j
    }
}

/// A byte string that serializes as bytes (MessagePack `bin`, postcard's length and bytes),
/// not as a sequence of numbers: what a user would get from `serde_bytes`, in a few lines.
#[derive(Clone, Debug)]
pub struct Blob(pub Vec<u8>);

impl Blob {
    /// `len` bytes, `0, 1, .., 255, 0, ..`.
    pub fn new(len: usize) -> Blob {
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
