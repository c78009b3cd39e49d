//! The header at the front of a typed entry's payload (PROTOCOL.md §11.2): which convention,
//! which codec, which types, where the result channel is, and where the argument lies.

use crate::MAX_FDS;

/// The first four bytes of a typed payload.
pub const TYPED_MAGIC: [u8; 4] = *b"FSTY";
/// The version of the typed entry convention this crate speaks.
pub const TYPED_VERSION: u8 = 1;
/// The length of the fixed part of the header, before the fd targets.
pub const TYPED_HEADER_LEN: usize = 32;
/// At most this many fds referenced by an argument: the bundle's cap less the channel.
pub const MAX_ARG_FDS: usize = MAX_FDS - 1;
/// Header flag bit 0 (PROTOCOL.md §11.7): the call starts a long-lived worker; requests travel
/// on the channel, and the header carries no argument.
pub const FLAG_WORKER: u16 = 0x0001;

/// The serde codec of a typed call's argument and result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Codec {
    /// MessagePack (`rmp-serde`, structs as maps: self-describing, the whole serde data model).
    #[default]
    MessagePack,
    /// JSON (`serde_json`).
    Json,
}

impl Codec {
    /// Every codec, in id order.
    pub const ALL: [Codec; 2] = [Codec::MessagePack, Codec::Json];

    /// The codec's id on the wire.
    pub fn id(self) -> u8 {
        match self {
            Codec::MessagePack => 1,
            Codec::Json => 2,
        }
    }

    /// The codec of wire id `id`, if there is one.
    pub fn from_id(id: u8) -> Option<Codec> {
        Codec::ALL.into_iter().find(|c| c.id() == id)
    }

    /// Its name, as the spec writes it.
    pub fn name(self) -> &'static str {
        match self {
            Codec::MessagePack => "msgpack",
            Codec::Json => "json",
        }
    }
}

/// Why a payload is not a typed header this crate accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// Shorter than the fixed header, or than the fd targets it announces.
    #[error("typed header: {0} bytes, too short")]
    TooShort(usize),
    /// The first four bytes are not [`TYPED_MAGIC`]: not a typed call.
    #[error("typed header: bad magic")]
    BadMagic,
    /// A version this crate does not speak.
    #[error("typed header: unsupported version {0}")]
    Version(u8),
    /// An unknown codec id.
    #[error("typed header: unknown codec {0}")]
    Codec(u8),
    /// Reserved flags (any but [`FLAG_WORKER`]) or bytes not zero.
    #[error("typed header: reserved bits set")]
    Reserved,
    /// More fd targets than [`MAX_ARG_FDS`].
    #[error("typed header: {0} fds, at most {MAX_ARG_FDS}")]
    TooManyFds(u32),
    /// The argument does not begin right after the fd targets, or does not end exactly at
    /// the payload's end, or is not empty in a worker header.
    #[error("typed header: argument at {offset}+{len} does not fit the payload")]
    Argument {
        /// `arg_offset`.
        offset: u32,
        /// `arg_len`.
        len: u32,
    },
}

/// The typed header (PROTOCOL.md §11.2). Encoding it cannot fail: [`TypedHeader::new`] caps
/// the fd targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypedHeader {
    codec: Codec,
    fingerprint: u64,
    channel: u32,
    fd_targets: Vec<u32>,
    worker: bool,
}

impl TypedHeader {
    /// A header; `None` if `fd_targets` holds more than [`MAX_ARG_FDS`].
    pub fn new(codec: Codec, fingerprint: u64, channel: u32, fd_targets: Vec<u32>) -> Option<Self> {
        (fd_targets.len() <= MAX_ARG_FDS).then_some(Self {
            codec,
            fingerprint,
            channel,
            fd_targets,
            worker: false,
        })
    }

    /// The header that starts a long-lived worker (PROTOCOL.md §11.7): `worker: true` sets
    /// [`FLAG_WORKER`]; such a header is encoded with an empty argument.
    pub fn with_worker(mut self, worker: bool) -> Self {
        self.worker = worker;
        self
    }

    /// Whether the call starts a worker ([`FLAG_WORKER`]).
    pub fn is_worker(&self) -> bool {
        self.worker
    }

    /// The codec of the argument and the result.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The caller's fingerprint of entry name, types and codec ([`crate::typed::fingerprint`]).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The target fd of the result channel in the child.
    pub fn channel(&self) -> u32 {
        self.channel
    }

    /// The target fds of the argument's [`crate::typed::Fd`]s: index `i` is at `fd_targets()[i]`.
    pub fn fd_targets(&self) -> &[u32] {
        &self.fd_targets
    }

    /// The header's length: where the argument begins.
    pub fn encoded_len(&self) -> usize {
        TYPED_HEADER_LEN + 4 * self.fd_targets.len()
    }

    /// The payload: this header followed by `arg`. `None` if `arg` is longer than `u32::MAX`,
    /// or not empty in a worker header.
    pub fn encode(&self, arg: &[u8]) -> Option<Vec<u8>> {
        if self.worker && !arg.is_empty() {
            return None;
        }
        let len = u32::try_from(arg.len()).ok()?;
        let flags = if self.worker { FLAG_WORKER } else { 0 };
        let offset = self.encoded_len() as u32;
        let mut v = Vec::with_capacity(self.encoded_len() + arg.len());
        v.extend_from_slice(&TYPED_MAGIC);
        v.push(TYPED_VERSION);
        v.push(self.codec.id());
        v.extend_from_slice(&flags.to_le_bytes());
        v.extend_from_slice(&self.fingerprint.to_le_bytes());
        v.extend_from_slice(&self.channel.to_le_bytes());
        v.extend_from_slice(&(self.fd_targets.len() as u32).to_le_bytes());
        v.extend_from_slice(&offset.to_le_bytes());
        v.extend_from_slice(&len.to_le_bytes());
        for t in &self.fd_targets {
            v.extend_from_slice(&t.to_le_bytes());
        }
        v.extend_from_slice(arg);
        Some(v)
    }

    /// Decodes a whole payload: the header and the argument bytes.
    ///
    /// # Errors
    /// A [`HeaderError`]; never panics, allocates at most the announced fd targets, which are
    /// checked against the payload's length first.
    pub fn decode(payload: &[u8]) -> Result<(TypedHeader, &[u8]), HeaderError> {
        let short = HeaderError::TooShort(payload.len());
        let fixed = payload.get(..TYPED_HEADER_LEN).ok_or(short)?;
        let u32_at =
            |i: usize| u32::from_le_bytes([fixed[i], fixed[i + 1], fixed[i + 2], fixed[i + 3]]);
        // §11.2: a receiver MUST check the magic first: any other payload is not a typed call.
        if fixed[..4] != TYPED_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        if fixed[4] != TYPED_VERSION {
            return Err(HeaderError::Version(fixed[4]));
        }
        let codec = Codec::from_id(fixed[5]).ok_or(HeaderError::Codec(fixed[5]))?;
        // §11.2: flags other than FLAG_WORKER (§11.7) are reserved and MUST be zero.
        let flags = u16::from_le_bytes([fixed[6], fixed[7]]);
        if flags & !FLAG_WORKER != 0 {
            return Err(HeaderError::Reserved);
        }
        let worker = flags & FLAG_WORKER != 0;
        let mut fp = [0u8; 8];
        fp.copy_from_slice(&fixed[8..16]);
        let fingerprint = u64::from_le_bytes(fp);
        let channel = u32_at(16);
        let nfds = u32_at(20);
        let offset = u32_at(24);
        let len = u32_at(28);
        if nfds as usize > MAX_ARG_FDS {
            return Err(HeaderError::TooManyFds(nfds));
        }
        let end = TYPED_HEADER_LEN + 4 * nfds as usize;
        let targets = payload.get(TYPED_HEADER_LEN..end).ok_or(short)?;
        // §11.2: the argument begins right after the targets and ends at the payload's end.
        let arg_end = u64::from(offset) + u64::from(len);
        // §11.7: a worker header carries no argument (requests travel on the channel).
        if offset as usize != end || arg_end != payload.len() as u64 || (worker && len != 0) {
            return Err(HeaderError::Argument { offset, len });
        }
        let fd_targets = targets
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let header = TypedHeader {
            codec,
            fingerprint,
            channel,
            fd_targets,
            worker,
        };
        Ok((header, &payload[offset as usize..]))
    }
}

#[cfg(test)]
mod tests {
    use super::{Codec, HeaderError, TypedHeader, TYPED_HEADER_LEN};

    #[test]
    fn round_trip_and_every_strict_prefix_is_too_short_or_misplaced() {
        let h = TypedHeader::new(Codec::Json, 0x0102_0304_0506_0708, 7, vec![3, 9]).unwrap();
        let bytes = h.encode(b"{}").unwrap();
        let (back, arg) = TypedHeader::decode(&bytes).unwrap();
        assert_eq!((back, arg), (h, &b"{}"[..]));
        for n in 0..bytes.len() {
            assert!(TypedHeader::decode(&bytes[..n]).is_err(), "prefix {n}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            TypedHeader::decode(&trailing),
            Err(HeaderError::Argument { .. })
        ));
    }

    #[test]
    fn every_codec_byte() {
        let mut bytes = TypedHeader::new(Codec::MessagePack, 1, 3, vec![])
            .unwrap()
            .encode(&[])
            .unwrap();
        assert_eq!(bytes.len(), TYPED_HEADER_LEN);
        for id in 0..=255u8 {
            bytes[5] = id;
            let r = TypedHeader::decode(&bytes);
            match Codec::from_id(id) {
                Some(c) => assert_eq!(r.unwrap().0.codec(), c),
                None => assert_eq!(r, Err(HeaderError::Codec(id))),
            }
        }
    }
}
