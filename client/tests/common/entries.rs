//! Typed entries that several test binaries register (each binary is its own zygote, so each
//! registers them in its `main`), and the checksum their checks use.

use std::fmt;

/// The area of a `(w, h)` size.
pub fn area((w, h): (u32, u32)) -> u64 {
    u64::from(w) * u64::from(h)
}

/// The error of [`checked_sqrt`]: not `Serialize`, so `typed` infers that the entry may fail
/// and sends its `Display` text.
#[derive(Debug)]
pub struct Negative(i64);

impl fmt::Display for Negative {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is negative", self.0)
    }
}

/// The integer square root of `x`; refuses a negative `x` with an error that is not
/// `Serialize`.
pub fn checked_sqrt(x: i64) -> Result<u32, Negative> {
    if x < 0 {
        return Err(Negative(x));
    }
    Ok((x as f64).sqrt() as u32)
}

/// `n` bytes, `i % 251` each: a value sent in many chunks.
pub fn bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// FNV-1a 64 of `v`: what a large argument came to.
pub fn checksum(v: &[u8]) -> u64 {
    v.iter().fold(0xcbf2_9ce4_8422_2325, |h: u64, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}
