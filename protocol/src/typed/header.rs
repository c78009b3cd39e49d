//! The header at the front of a typed entry's payload (PROTOCOL.md §11.2): which convention,
//! which codec, which types, where the result channel is, and where the argument lies (inline,
//! or in a sealed memfd: §11.8).

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
/// Header flag bit 1 (PROTOCOL.md §11.8): the argument is in a sealed memfd of the bundle; the
/// header's argument field is a [`MemfdArg`] reference of [`MEMFD_REF_LEN`] bytes.
pub const FLAG_ARG_MEMFD: u16 = 0x0002;
/// The length of a memfd reference (§11.8): `u32` target, `u32` reserved, `u64` length.
pub const MEMFD_REF_LEN: usize = 16;
/// The largest argument a memfd may announce (§11.8): 1 GiB.
pub const MAX_MEMFD_ARG_LEN: u64 = 1 << 30;

/// Where an argument that travels in a sealed memfd is (PROTOCOL.md §11.8): the memfd's target
/// fd in the child and the argument's length, which is the memfd's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemfdArg {
    target: u32,
    len: u64,
}

impl MemfdArg {
    /// A reference; `None` if `len` is over [`MAX_MEMFD_ARG_LEN`].
    pub fn new(target: u32, len: u64) -> Option<Self> {
        (len <= MAX_MEMFD_ARG_LEN).then_some(Self { target, len })
    }

    /// The memfd's target fd in the child.
    pub fn target(&self) -> u32 {
        self.target
    }

    /// The argument's length: the memfd's size.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the argument is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

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
    /// Reserved flags (any but [`FLAG_WORKER`] and [`FLAG_ARG_MEMFD`]) or bytes not zero (the
    /// memfd reference's reserved word too).
    #[error("typed header: reserved bits set")]
    Reserved,
    /// More fd targets than [`MAX_ARG_FDS`].
    #[error("typed header: {0} fds, at most {MAX_ARG_FDS}")]
    TooManyFds(u32),
    /// The argument does not begin right after the fd targets, or does not end exactly at
    /// the payload's end, or is not empty in a worker header, or is not a memfd reference's
    /// [`MEMFD_REF_LEN`] bytes under [`FLAG_ARG_MEMFD`].
    #[error("typed header: argument at {offset}+{len} does not fit the payload")]
    Argument {
        /// `arg_offset`.
        offset: u32,
        /// `arg_len`.
        len: u32,
    },
    /// The memfd reference's target is the channel's or an argument fd's.
    #[error("typed header: memfd target {0} is taken by the channel or an argument fd")]
    MemfdTarget(u32),
    /// The memfd reference announces more than [`MAX_MEMFD_ARG_LEN`] bytes.
    #[error("typed header: memfd argument of {0} bytes, at most {MAX_MEMFD_ARG_LEN}")]
    MemfdLen(u64),
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
    memfd: Option<MemfdArg>,
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
            memfd: None,
        })
    }

    /// The header that starts a long-lived worker (PROTOCOL.md §11.7): `worker: true` sets
    /// [`FLAG_WORKER`]; such a header is encoded with an empty argument.
    pub fn with_worker(mut self, worker: bool) -> Self {
        self.worker = worker;
        self
    }

    /// The header of a call whose argument is in a sealed memfd (PROTOCOL.md §11.8): `Some`
    /// sets [`FLAG_ARG_MEMFD`]; such a header is encoded with an empty (inline) argument, and
    /// not in a worker header, nor with the memfd at the channel's or an argument fd's target.
    pub fn with_memfd_arg(mut self, memfd: Option<MemfdArg>) -> Self {
        self.memfd = memfd;
        self
    }

    /// Where the argument is if it is in a memfd ([`FLAG_ARG_MEMFD`]).
    pub fn memfd_arg(&self) -> Option<MemfdArg> {
        self.memfd
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

    /// The header's length: where an inline argument begins (after the memfd reference, if
    /// there is one).
    pub fn encoded_len(&self) -> usize {
        self.arg_offset() + self.memfd.map_or(0, |_| MEMFD_REF_LEN)
    }

    /// `arg_offset`: right after the fd targets.
    fn arg_offset(&self) -> usize {
        TYPED_HEADER_LEN + 4 * self.fd_targets.len()
    }

    /// The payload: this header followed by `arg`. `None` if `arg` is longer than `u32::MAX`,
    /// or not empty in a worker header or with a memfd reference, or if the memfd reference is
    /// in a worker header or at a taken target: what [`TypedHeader::decode`] refuses.
    pub fn encode(&self, arg: &[u8]) -> Option<Vec<u8>> {
        if (self.worker || self.memfd.is_some()) && !arg.is_empty() {
            return None;
        }
        if let Some(m) = self.memfd {
            if self.worker || self.target_taken(m.target) {
                return None;
            }
        }
        let len = match self.memfd {
            Some(_) => MEMFD_REF_LEN as u32,
            None => u32::try_from(arg.len()).ok()?,
        };
        let mut flags = if self.worker { FLAG_WORKER } else { 0 };
        if self.memfd.is_some() {
            flags |= FLAG_ARG_MEMFD;
        }
        let offset = self.arg_offset() as u32;
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
        if let Some(m) = self.memfd {
            v.extend_from_slice(&m.target.to_le_bytes());
            v.extend_from_slice(&0u32.to_le_bytes());
            v.extend_from_slice(&m.len.to_le_bytes());
        }
        v.extend_from_slice(arg);
        Some(v)
    }

    /// Whether fd `target` is the channel's or an argument fd's.
    fn target_taken(&self, target: u32) -> bool {
        target == self.channel || self.fd_targets.contains(&target)
    }

    /// Decodes a whole payload: the header and the inline argument bytes (empty when the
    /// argument is in a memfd: [`TypedHeader::memfd_arg`]).
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
        // §11.2: flags other than FLAG_WORKER (§11.7) and FLAG_ARG_MEMFD (§11.8) are reserved
        // and MUST be zero.
        let flags = u16::from_le_bytes([fixed[6], fixed[7]]);
        if flags & !(FLAG_WORKER | FLAG_ARG_MEMFD) != 0 {
            return Err(HeaderError::Reserved);
        }
        let worker = flags & FLAG_WORKER != 0;
        let in_memfd = flags & FLAG_ARG_MEMFD != 0;
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
        // §11.7: a worker header carries no argument (requests travel on the channel), and
        // §11.8: under ARG_MEMFD the argument field is a memfd reference of 16 bytes.
        let misplaced = offset as usize != end || arg_end != payload.len() as u64;
        let bad_len = if in_memfd {
            worker || len as usize != MEMFD_REF_LEN
        } else {
            worker && len != 0
        };
        if misplaced || bad_len {
            return Err(HeaderError::Argument { offset, len });
        }
        let fd_targets = targets
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let mut header = TypedHeader {
            codec,
            fingerprint,
            channel,
            fd_targets,
            worker,
            memfd: None,
        };
        let arg = &payload[end..];
        if !in_memfd {
            return Ok((header, arg));
        }
        header.memfd = Some(decode_memfd_ref(arg, &header)?);
        Ok((header, &[]))
    }
}

/// The memfd reference of §11.8 (`r` is its 16 bytes): a free target, a zero reserved word, a
/// length within [`MAX_MEMFD_ARG_LEN`].
fn decode_memfd_ref(r: &[u8], header: &TypedHeader) -> Result<MemfdArg, HeaderError> {
    let (Some(target), Some(reserved), Some(len)) = (
        r.get(0..4).and_then(|b| <[u8; 4]>::try_from(b).ok()),
        r.get(4..8),
        r.get(8..16).and_then(|b| <[u8; 8]>::try_from(b).ok()),
    ) else {
        return Err(HeaderError::TooShort(r.len()));
    };
    let target = u32::from_le_bytes(target);
    if reserved != [0; 4] {
        return Err(HeaderError::Reserved);
    }
    let len = u64::from_le_bytes(len);
    // §11.8: the memfd's target MUST differ from the channel's and every argument fd's.
    if header.target_taken(target) {
        return Err(HeaderError::MemfdTarget(target));
    }
    MemfdArg::new(target, len).ok_or(HeaderError::MemfdLen(len))
}

#[cfg(test)]
mod tests {
    use super::{
        Codec, HeaderError, MemfdArg, TypedHeader, MAX_MEMFD_ARG_LEN, MEMFD_REF_LEN,
        TYPED_HEADER_LEN,
    };

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

    #[test]
    fn a_memfd_reference_round_trips_and_its_bounds_hold() {
        let m = MemfdArg::new(5, 64 << 20).unwrap();
        let h = TypedHeader::new(Codec::MessagePack, 9, 3, vec![4])
            .unwrap()
            .with_memfd_arg(Some(m));
        let bytes = h.encode(&[]).unwrap();
        assert_eq!(bytes.len(), TYPED_HEADER_LEN + 4 + MEMFD_REF_LEN);
        assert_eq!(h.encoded_len(), bytes.len());
        let (back, arg) = TypedHeader::decode(&bytes).unwrap();
        assert_eq!((back.memfd_arg(), arg), (Some(m), &[][..]));
        for n in 0..bytes.len() {
            assert!(TypedHeader::decode(&bytes[..n]).is_err(), "prefix {n}");
        }
        // What encode refuses is what decode refuses: an inline argument beside the memfd,
        // a worker, a taken target; the length has its cap in the type.
        assert_eq!(h.encode(b"x"), None);
        assert_eq!(h.clone().with_worker(true).encode(&[]), None);
        for taken in [3, 4] {
            let at = h.clone().with_memfd_arg(MemfdArg::new(taken, 1));
            assert_eq!(at.encode(&[]), None);
            let mut raw = bytes.clone();
            raw[36..40].copy_from_slice(&taken.to_le_bytes());
            assert_eq!(
                TypedHeader::decode(&raw),
                Err(HeaderError::MemfdTarget(taken))
            );
        }
        assert_eq!(MemfdArg::new(5, MAX_MEMFD_ARG_LEN + 1), None);
        let mut over = bytes.clone();
        over[44..52].copy_from_slice(&(MAX_MEMFD_ARG_LEN + 1).to_le_bytes());
        assert_eq!(
            TypedHeader::decode(&over),
            Err(HeaderError::MemfdLen(MAX_MEMFD_ARG_LEN + 1))
        );
        let mut reserved = bytes.clone();
        reserved[40] = 1;
        assert_eq!(TypedHeader::decode(&reserved), Err(HeaderError::Reserved));
    }
}
