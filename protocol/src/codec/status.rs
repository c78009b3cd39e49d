//! `Status` (0x23), server → client: the server's state (PROTOCOL.md §5.11).

use super::messages::Body;
use super::wire::{put_bytes16, Reader, Sink};
use crate::error::{BuildError, DecodeError, Field, Limit};
use crate::MAX_VERSION_STRING_LEN;

/// The server's status.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Status {
    protocol_version: u16,
    server_pid: i32,
    live_children: u32,
    connections: u32,
    spawned_total: u64,
    server_version: String,
}

impl Status {
    /// # Errors
    /// [`BuildError::InvalidValue`] for protocol version 0 or a pid that is not positive;
    /// [`BuildError::LimitExceeded`] for a version string over [`MAX_VERSION_STRING_LEN`] bytes.
    pub fn new(
        protocol_version: u16,
        server_pid: i32,
        live_children: u32,
        connections: u32,
        spawned_total: u64,
        server_version: impl Into<String>,
    ) -> Result<Self, BuildError> {
        let server_version = server_version.into();
        if protocol_version == 0 {
            return Err(BuildError::InvalidValue(Field::Version));
        }
        if server_pid <= 0 {
            return Err(BuildError::InvalidValue(Field::Pid));
        }
        if server_version.len() > MAX_VERSION_STRING_LEN {
            return Err(BuildError::limit(
                Limit::VersionString,
                server_version.len(),
            ));
        }
        Ok(Self {
            protocol_version,
            server_pid,
            live_children,
            connections,
            spawned_total,
            server_version,
        })
    }

    /// The protocol version of this connection.
    pub fn protocol_version(&self) -> u16 {
        self.protocol_version
    }

    /// The server's pid.
    pub fn server_pid(&self) -> i32 {
        self.server_pid
    }

    /// Children forked and not yet reaped.
    pub fn live_children(&self) -> u32 {
        self.live_children
    }

    /// Open client connections, this one included.
    pub fn connections(&self) -> u32 {
        self.connections
    }

    /// Children forked since the server started.
    pub fn spawned_total(&self) -> u64 {
        self.spawned_total
    }

    /// The server implementation's name and version, e.g. `forkserver 0.1.0`.
    pub fn server_version(&self) -> &str {
        &self.server_version
    }
}

impl Body for Status {
    fn encode(&self, out: &mut impl Sink) {
        out.put_u16_le(self.protocol_version);
        out.put_u16_le(0);
        out.put_u32_le(self.server_pid as u32);
        out.put_u32_le(self.live_children);
        out.put_u32_le(self.connections);
        out.put_u64_le(self.spawned_total);
        put_bytes16(out, self.server_version.as_bytes());
    }

    fn decode(r: &mut Reader<'_>, _nfds: u16) -> Result<Self, DecodeError> {
        let protocol_version = r.u16()?;
        r.reserved::<2>()?;
        let server_pid = r.u32()?;
        let live_children = r.u32()?;
        let connections = r.u32()?;
        let spawned_total = r.u64()?;
        let v = r.bytes16(MAX_VERSION_STRING_LEN, Limit::VersionString)?;
        let v = core::str::from_utf8(v).map_err(|_| DecodeError::InvalidValue(Field::Utf8))?;
        let server_pid =
            i32::try_from(server_pid).map_err(|_| DecodeError::InvalidValue(Field::Pid))?;
        Self::new(
            protocol_version,
            server_pid,
            live_children,
            connections,
            spawned_total,
            v,
        )
        .map_err(DecodeError::from)
    }
}
