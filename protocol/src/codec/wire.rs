//! Primitive readers and writers: little-endian integers and length-prefixed byte strings.
//! Every read checks the remaining length first, so no input can make it slice out of bounds.
//!
//! Encoders write to a [`Sink`]: any [`BufMut`], or a [`LenCounter`] that only adds up the
//! lengths. A body's length is its encoder run into a `LenCounter` ([`encoded_len`]), so no
//! length is kept by hand beside an encoder (module doc of `codec`).

use bytes::BufMut;

use crate::error::{DecodeError, Limit};

/// A cursor over one frame body. Reads fail with [`DecodeError::Truncated`] instead of panicking.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    /// Entry payloads of at least this many bytes are lent, not copied
    /// ([`Reader::lend`]); `None`: every payload is copied.
    lend_from: Option<usize>,
    /// The length of the payload lent, if one was.
    lent: Option<usize>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            lend_from: None,
            lent: None,
        }
    }

    /// A reader that lends entry payloads of at least `min` bytes (`codec/split.rs`).
    pub(crate) fn lending(buf: &'a [u8], min: usize) -> Self {
        Self {
            lend_from: Some(min),
            ..Self::new(buf)
        }
    }

    /// Whether `payload`, just read, is lent rather than copied: its bytes stay in the input,
    /// and the caller fills them in ([`Reader::lent`]). At most one payload per frame is.
    pub(crate) fn lend(&mut self, payload: &[u8]) -> bool {
        let lend = self.lent.is_none() && self.lend_from.is_some_and(|m| payload.len() >= m);
        if lend {
            self.lent = Some(payload.len());
        }
        lend
    }

    /// The length of the payload lent, if any.
    pub(crate) fn lent(&self) -> Option<usize> {
        self.lent
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

/// Where an encoder writes. The methods are those of [`BufMut`] that the codec uses; a new
/// encoder that needs another adds it here, to the blanket impl and to [`LenCounter`].
pub(crate) trait Sink {
    fn put_u8(&mut self, v: u8);
    fn put_u16_le(&mut self, v: u16);
    fn put_u32_le(&mut self, v: u32);
    fn put_i32_le(&mut self, v: i32);
    fn put_u64_le(&mut self, v: u64);
    fn put_slice(&mut self, s: &[u8]);
}

impl<B: BufMut + ?Sized> Sink for B {
    #[inline]
    fn put_u8(&mut self, v: u8) {
        BufMut::put_u8(self, v);
    }
    #[inline]
    fn put_u16_le(&mut self, v: u16) {
        BufMut::put_u16_le(self, v);
    }
    #[inline]
    fn put_u32_le(&mut self, v: u32) {
        BufMut::put_u32_le(self, v);
    }
    #[inline]
    fn put_i32_le(&mut self, v: i32) {
        BufMut::put_i32_le(self, v);
    }
    #[inline]
    fn put_u64_le(&mut self, v: u64) {
        BufMut::put_u64_le(self, v);
    }
    #[inline]
    fn put_slice(&mut self, s: &[u8]) {
        BufMut::put_slice(self, s);
    }
}

/// A [`Sink`] that writes nothing and counts the bytes it is given: running an encoder into it
/// measures what the encoder would write, with the encoder's own code (no allocation).
#[derive(Default)]
pub(crate) struct LenCounter(usize);

impl Sink for LenCounter {
    #[inline]
    fn put_u8(&mut self, _: u8) {
        self.0 += 1;
    }
    #[inline]
    fn put_u16_le(&mut self, _: u16) {
        self.0 += 2;
    }
    #[inline]
    fn put_u32_le(&mut self, _: u32) {
        self.0 += 4;
    }
    #[inline]
    fn put_i32_le(&mut self, _: i32) {
        self.0 += 4;
    }
    #[inline]
    fn put_u64_le(&mut self, _: u64) {
        self.0 += 8;
    }
    #[inline]
    fn put_slice(&mut self, s: &[u8]) {
        self.0 += s.len();
    }
}

/// The number of bytes `encode` writes: `encode` run into a [`LenCounter`].
#[inline]
pub(crate) fn encoded_len(encode: impl FnOnce(&mut LenCounter)) -> usize {
    let mut n = LenCounter::default();
    encode(&mut n);
    n.0
}

/// Writes a byte string with a `u16` length prefix. Callers guarantee `b.len() <= u16::MAX`
/// (constructors enforce far smaller limits).
pub(crate) fn put_bytes16(out: &mut impl Sink, b: &[u8]) {
    debug_assert!(b.len() <= usize::from(u16::MAX));
    out.put_u16_le(b.len() as u16);
    out.put_slice(b);
}

/// Writes a byte string with a `u32` length prefix. Callers guarantee the length fits
/// (constructors bound every field by [`crate::MAX_BODY_LEN`]).
pub(crate) fn put_bytes32(out: &mut impl Sink, b: &[u8]) {
    debug_assert!(b.len() <= crate::MAX_BODY_LEN);
    out.put_u32_le(b.len() as u32);
    out.put_slice(b);
}
