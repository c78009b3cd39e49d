//! The handshake: `Hello`, `HelloOk`, `Auth`, `AuthOk` (PROTOCOL.md §5.1-§5.4).

use super::messages::Body;
use super::wire::{Reader, Sink};
use crate::error::{BuildError, DecodeError, Field};
use crate::{CHALLENGE_LEN, MAC_LEN, MAGIC};

/// `Hello` (0x01), client → server: the versions the client speaks, `min..=max`.
///
/// Its layout is frozen for every version, so that any server can read it and refuse cleanly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Hello {
    min_version: u16,
    max_version: u16,
}

impl Hello {
    /// A hello offering `min..=max`.
    ///
    /// # Errors
    /// [`BuildError::InvalidValue`] if `min` is 0 or `min > max`.
    pub fn new(min_version: u16, max_version: u16) -> Result<Self, BuildError> {
        if min_version == 0 || min_version > max_version {
            return Err(BuildError::InvalidValue(Field::VersionRange));
        }
        Ok(Self {
            min_version,
            max_version,
        })
    }

    /// A hello offering exactly the version this crate speaks.
    pub fn current() -> Self {
        Self {
            min_version: crate::PROTOCOL_VERSION,
            max_version: crate::PROTOCOL_VERSION,
        }
    }

    /// Lowest version offered.
    pub fn min_version(&self) -> u16 {
        self.min_version
    }

    /// Highest version offered.
    pub fn max_version(&self) -> u16 {
        self.max_version
    }

    /// The highest version both sides speak, given the server's range.
    pub fn negotiate(&self, server_min: u16, server_max: u16) -> Option<u16> {
        let v = self.max_version.min(server_max);
        (v >= self.min_version && v >= server_min).then_some(v)
    }
}

impl Body for Hello {
    fn encode(&self, out: &mut impl Sink) {
        out.put_slice(&MAGIC);
        out.put_u16_le(self.min_version);
        out.put_u16_le(self.max_version);
    }

    fn decode(r: &mut Reader<'_>, _nfds: u16) -> Result<Self, DecodeError> {
        // §5.1: the body starts with the magic "FKSV".
        if r.array::<4>()? != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let min_version = r.u16()?;
        let max_version = r.u16()?;
        // §5.1: 1 <= min_version <= max_version.
        Self::new(min_version, max_version)
            .map_err(|_| DecodeError::InvalidValue(Field::VersionRange))
    }
}

/// How a connection is authenticated (PROTOCOL.md §5.2, §9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// No authentication: the client may send requests at once.
    None,
    /// Mutual HMAC-SHA256 challenge/response over a shared key; carries the server's challenge.
    HmacSha256 {
        /// The server's random nonce.
        challenge: [u8; CHALLENGE_LEN],
    },
}

/// `HelloOk` (0x02), server → client: the version chosen and the authentication required.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HelloOk {
    version: u16,
    auth: AuthMethod,
}

impl HelloOk {
    /// # Errors
    /// [`BuildError::InvalidValue`] if `version` is 0.
    pub fn new(version: u16, auth: AuthMethod) -> Result<Self, BuildError> {
        if version == 0 {
            return Err(BuildError::InvalidValue(Field::Version));
        }
        Ok(Self { version, auth })
    }

    /// The version both sides speak from now on.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// The authentication step the client must take.
    pub fn auth(&self) -> AuthMethod {
        self.auth
    }
}

impl Body for HelloOk {
    fn encode(&self, out: &mut impl Sink) {
        out.put_u16_le(self.version);
        match &self.auth {
            AuthMethod::None => {
                out.put_u8(0);
                out.put_u8(0);
            }
            AuthMethod::HmacSha256 { challenge } => {
                out.put_u8(1);
                out.put_u8(0);
                out.put_slice(challenge);
            }
        }
    }

    fn decode(r: &mut Reader<'_>, _nfds: u16) -> Result<Self, DecodeError> {
        let version = r.u16()?;
        if version == 0 {
            return Err(DecodeError::InvalidValue(Field::Version));
        }
        let method = r.u8()?;
        r.reserved::<1>()?;
        let auth = match method {
            0 => AuthMethod::None,
            1 => AuthMethod::HmacSha256 {
                challenge: r.array()?,
            },
            _ => return Err(DecodeError::InvalidValue(Field::AuthMethod)),
        };
        Ok(Self { version, auth })
    }
}

/// `Auth` (0x03), client → server: the client's answer to the server's challenge, and its own
/// challenge for the server (PROTOCOL.md §9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Auth {
    /// `HMAC-SHA256(key, "forkserver auth v1 client" || server_challenge)`.
    pub response: [u8; MAC_LEN],
    /// The client's random nonce.
    pub challenge: [u8; CHALLENGE_LEN],
}

impl Body for Auth {
    fn encode(&self, out: &mut impl Sink) {
        out.put_slice(&self.response);
        out.put_slice(&self.challenge);
    }

    fn decode(r: &mut Reader<'_>, _nfds: u16) -> Result<Self, DecodeError> {
        Ok(Self {
            response: r.array()?,
            challenge: r.array()?,
        })
    }
}

/// `AuthOk` (0x04), server → client: the server's answer to the client's challenge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AuthOk {
    /// `HMAC-SHA256(key, "forkserver auth v1 server" || client_challenge)`.
    pub response: [u8; MAC_LEN],
}

impl Body for AuthOk {
    fn encode(&self, out: &mut impl Sink) {
        out.put_slice(&self.response);
    }

    fn decode(r: &mut Reader<'_>, _nfds: u16) -> Result<Self, DecodeError> {
        Ok(Self {
            response: r.array()?,
        })
    }
}
