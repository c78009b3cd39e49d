//! Encoding and decoding of typed values in a [`Codec`], with their [`crate::typed::Fd`]s
//! gathered beside the bytes. No I/O.

use std::os::fd::OwnedFd;

use serde::{de::DeserializeOwned, Serialize};

use super::fd::{collecting, providing};
use super::header::Codec;

/// A value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[error("{codec} codec: {message}")]
pub struct CodecError {
    /// The codec's name.
    pub codec: &'static str,
    /// What the codec said.
    pub message: String,
}

/// The codec's error `e` as a [`CodecError`].
pub(crate) fn err(codec: Codec, e: impl std::fmt::Display) -> CodecError {
    CodecError {
        codec: codec.name(),
        message: e.to_string(),
    }
}

/// Encodes `value`; returns the bytes and the duplicates of the fds it holds, index order.
///
/// # Errors
/// What the codec or an fd duplication reports.
pub fn encode<T: Serialize + ?Sized>(
    codec: Codec,
    value: &T,
) -> Result<(Vec<u8>, Vec<OwnedFd>), CodecError> {
    let (bytes, fds) = collecting(|| match codec {
        Codec::MessagePack => rmp_serde::to_vec_named(value).map_err(|e| err(codec, e)),
        Codec::Json => serde_json::to_vec(value).map_err(|e| err(codec, e)),
    });
    Ok((bytes?, fds))
}

/// Decodes a `T` from `bytes`, its `Fd`s taken from `fds` by index; fds it does not take are
/// closed.
///
/// # Errors
/// What the codec reports: malformed or trailing bytes, another type, an fd index out of range.
pub fn decode<T: DeserializeOwned>(
    codec: Codec,
    bytes: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<T, CodecError> {
    providing(fds, || match codec {
        Codec::MessagePack => rmp_serde::from_slice(bytes).map_err(|e| err(codec, e)),
        Codec::Json => serde_json::from_slice(bytes).map_err(|e| err(codec, e)),
    })
}

#[cfg(test)]
mod tests {
    use super::{decode, encode, Codec};
    use crate::typed::Fd;
    use std::os::fd::{AsRawFd, OwnedFd};

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Inner {
        b: String,
    }
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    #[serde(untagged)]
    enum Either {
        N(u32),
        S(String),
    }
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Outer {
        a: u32,
        #[serde(flatten)]
        inner: Inner,
        e: Vec<Either>,
    }

    #[test]
    fn flatten_untagged_and_fds_in_both_codecs() {
        for codec in Codec::ALL {
            let v = Outer {
                a: 1,
                inner: Inner { b: "x".into() },
                e: vec![Either::N(2), Either::S("y".into())],
            };
            let (bytes, fds) = encode(codec, &v).unwrap();
            assert!(fds.is_empty());
            assert_eq!(decode::<Outer>(codec, &bytes, vec![]).unwrap(), v);

            let file: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
            let pair = (Fd::from(file), 7u8);
            let (bytes, fds) = encode(codec, &pair).unwrap();
            assert_eq!(fds.len(), 1);
            assert_ne!(fds[0].as_raw_fd(), pair.0.as_raw_fd());
            let (back, n): (Fd, u8) = decode(codec, &bytes, fds).unwrap();
            assert_eq!(n, 7);
            drop(back);
            // The index refers to nothing without the fds.
            assert!(decode::<(Fd, u8)>(codec, &bytes, vec![]).is_err());
        }
    }
}
