//! A typed call's argument, encoded where it will travel (PROTOCOL.md §11.8): in memory while
//! it fits the inline limit, else straight into its memfd, so a large argument is copied once
//! (by `write(2)`, into the memfd) rather than encoded into a `Vec` and then written.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::fd::OwnedFd;

use serde::Serialize;

use super::codec::{err as codec_error, CodecError};
use super::fd::collecting;
use super::header::{Codec, MAX_MEMFD_ARG_LEN};
use super::memfd::{seal, unsealed_memfd, MemfdError};

/// The buffer in front of the memfd: small pieces of an encoding are gathered, a piece at
/// least this long goes to `write(2)` as is.
const SPILL_BUFFER: usize = 64 << 10;

/// An encoded argument and where it goes.
#[derive(Debug)]
pub enum EncodedArg {
    /// At most the inline limit: the bytes, for the payload.
    Inline(Vec<u8>),
    /// Longer: a memfd sealed as [`super::sealed_arg`] seals it, holding `len` bytes.
    Memfd {
        /// The sealed memfd.
        fd: OwnedFd,
        /// The encoding's length (the memfd's size).
        len: u64,
    },
}

/// Why an argument was not encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArgError {
    /// The codec failed (or an fd could not be duplicated).
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The memfd could not be made, written or sealed, or the encoding is over 1 GiB.
    #[error(transparent)]
    Memfd(#[from] MemfdError),
}

/// Encodes `value` as [`super::encode`] does, into an [`EncodedArg::Inline`] while the bytes
/// number at most `inline_max`, else into an [`EncodedArg::Memfd`]: at the first write past
/// `inline_max` the bytes so far move to a new memfd and the rest is written there (through a
/// 64 KiB buffer; a longer piece, such as a byte string's contents, is written directly).
/// Returns the argument and the duplicates of the fds it holds, index order.
///
/// # Errors
/// [`ArgError::Codec`] as [`super::encode`]; [`ArgError::Memfd`] with
/// [`MemfdError::TooLong`] for an encoding over [`MAX_MEMFD_ARG_LEN`] (encoding stops there),
/// or the errno of `memfd_create(2)`, `write(2)` or `fcntl(F_ADD_SEALS)`.
pub fn encode_arg<T: Serialize + ?Sized>(
    codec: Codec,
    value: &T,
    inline_max: usize,
) -> Result<(EncodedArg, Vec<OwnedFd>), ArgError> {
    let mut out = Spill {
        inline: Vec::new(),
        inline_max,
        file: None,
        len: 0,
        failed: None,
    };
    let (encoded, fds) = collecting(|| match codec {
        Codec::MessagePack => {
            rmp_serde::encode::write_named(&mut out, value).map_err(|e| codec_error(codec, e))
        }
        Codec::Json => serde_json::to_writer(&mut out, value).map_err(|e| codec_error(codec, e)),
    });
    // The memfd's own failure first: the codec only saw it as an I/O error.
    if let Some(e) = out.failed {
        return Err(e.into());
    }
    encoded?;
    let arg = match out.file {
        None => EncodedArg::Inline(out.inline),
        Some(file) => {
            let file = file
                .into_inner()
                .map_err(|e| MemfdError::from(e.into_error()))?;
            EncodedArg::Memfd {
                fd: seal(file)?,
                len: out.len,
            }
        }
    };
    Ok((arg, fds))
}

/// The encoder's output: a `Vec` up to `inline_max` bytes, then a memfd.
struct Spill {
    inline: Vec<u8>,
    inline_max: usize,
    file: Option<BufWriter<File>>,
    len: u64,
    /// Why writing stopped, for the caller (the codec wraps it as its own error).
    failed: Option<MemfdError>,
}

impl Spill {
    fn put(&mut self, bytes: &[u8]) -> Result<(), MemfdError> {
        self.len += bytes.len() as u64;
        if self.len > MAX_MEMFD_ARG_LEN {
            return Err(MemfdError::TooLong(self.len));
        }
        if self.file.is_none() && self.len > self.inline_max as u64 {
            let mut file = BufWriter::with_capacity(SPILL_BUFFER, unsealed_memfd()?);
            file.write_all(&std::mem::take(&mut self.inline))?;
            self.file = Some(file);
        }
        match &mut self.file {
            Some(file) => file.write_all(bytes)?,
            None => self.inline.extend_from_slice(bytes),
        }
        Ok(())
    }
}

impl Write for Spill {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self.put(bytes) {
            Ok(()) => Ok(bytes.len()),
            Err(e) => {
                self.failed = Some(e);
                Err(io::Error::other(e))
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{encode_arg, ArgError, EncodedArg};
    use crate::typed::{encode, read_sealed_arg, Codec, MemfdArg};

    #[derive(serde::Serialize)]
    struct Big<'a> {
        name: &'a str,
        #[serde(with = "serde_bytes_shim")]
        data: &'a [u8],
        tail: Vec<u32>,
    }

    mod serde_bytes_shim {
        pub fn serialize<S: serde::Serializer>(b: &&[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(b)
        }
    }

    #[test]
    fn an_argument_is_inline_up_to_the_limit_and_the_same_bytes_in_a_memfd_past_it() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        let big = Big {
            name: "x",
            data: &data,
            tail: (0..5000).collect(),
        };
        for codec in [Codec::MessagePack, Codec::Json] {
            let (want, _) = encode(codec, &big).unwrap();
            for max in [0, 10, want.len() - 1] {
                let (arg, fds) = encode_arg(codec, &big, max).unwrap();
                assert!(fds.is_empty());
                let EncodedArg::Memfd { fd, len } = arg else {
                    panic!("{codec:?} {max}: inline")
                };
                assert_eq!(len, want.len() as u64);
                let got = read_sealed_arg(fd, MemfdArg::new(9, len).unwrap()).unwrap();
                assert!(got == want, "{codec:?} {max}: other bytes");
            }
            for max in [want.len(), usize::MAX] {
                match encode_arg(codec, &big, max).unwrap().0 {
                    EncodedArg::Inline(got) => assert!(got == want, "{codec:?} {max}"),
                    other => panic!("{codec:?} {max}: {other:?}"),
                }
            }
        }
        // A short encoding: the limit is inclusive.
        let (arg, _) = encode_arg(Codec::Json, &(), 4).unwrap();
        assert!(matches!(arg, EncodedArg::Inline(b) if b == b"null"));
        let (arg, _) = encode_arg(Codec::Json, &(), 3).unwrap();
        assert!(matches!(arg, EncodedArg::Memfd { len: 4, .. }));
    }

    #[test]
    fn a_codec_error_is_the_codecs() {
        struct Refuses;
        impl serde::Serialize for Refuses {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("no"))
            }
        }
        let e = encode_arg(Codec::MessagePack, &Refuses, 0).unwrap_err();
        assert!(matches!(e, ArgError::Codec(_)), "{e:?}");
    }
}
