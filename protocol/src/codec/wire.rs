//! Primitive readers and writers: little-endian integers and length-prefixed byte strings.
//! Every read checks the remaining length first, so no input can make it slice out of bounds.

use bytes::BufMut;

use crate::error::{DecodeError, Limit};

/// A cursor over one frame body. Reads fail with [`DecodeError::Truncated`] instead of panicking.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A reserved field of `N` bytes, which MUST be zero.
    pub(crate) fn reserved<const N: usize>(&mut self) -> Result<(), DecodeError> {
        if self.array::<N>()? != [0u8; N] {
            return Err(DecodeError::ReservedNotZero);
        }
        Ok(())
    }

    /// A byte string with a `u16` length prefix, at most `max` bytes.
    pub(crate) fn bytes16(&mut self, max: usize, limit: Limit) -> Result<&'a [u8], DecodeError> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(DecodeError::LimitExceeded(limit));
        }
        self.take(len)
    }

    /// A byte string with a `u32` length prefix, at most `max` bytes. The length is checked
    /// against `max` and against the bytes present before anything is allocated or sliced.
    pub(crate) fn bytes32(&mut self, max: usize, limit: Limit) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(DecodeError::LimitExceeded(limit));
        }
        self.take(len)
    }

    /// PROTOCOL.md §6: bytes left after the last field are an error.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }
}

/// Writes a byte string with a `u16` length prefix. Callers guarantee `b.len() <= u16::MAX`
/// (constructors enforce far smaller limits).
pub(crate) fn put_bytes16(out: &mut impl BufMut, b: &[u8]) {
    debug_assert!(b.len() <= usize::from(u16::MAX));
    out.put_u16_le(b.len() as u16);
    out.put_slice(b);
}

/// Writes a byte string with a `u32` length prefix. Callers guarantee the length fits
/// (constructors bound every field by [`crate::MAX_BODY_LEN`]).
pub(crate) fn put_bytes32(out: &mut impl BufMut, b: &[u8]) {
    debug_assert!(b.len() <= crate::MAX_BODY_LEN);
    out.put_u32_le(b.len() as u32);
    out.put_slice(b);
}
