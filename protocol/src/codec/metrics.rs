//! `Metrics` (0x25), server → client: the server's counters since it started (PROTOCOL.md
//! §5.16, rev 0.6). The answer to `MetricsRequest` (0x14, §5.15), which has an empty body.
//!
//! `Status` is unchanged, so a client of an earlier revision still reads it; an operator's
//! figures come in this message of their own, which only a client that asks for it receives.
//!
//! # One table
//!
//! The body is twenty-one `u64` values, little-endian, in the order of the `metrics!` table below;
//! every value is valid. The table generates the struct, its encoder and decoder, and
//! [`Metrics::fields`], the names and values in wire order that the CLI prints.

use super::messages::Body;
use super::wire::{Reader, Sink};
use crate::error::DecodeError;

macro_rules! metrics {
    ($( $(#[$doc:meta])* $name:ident; )*) => {
        /// The server's counters (all since it started) and gauges (now). Every value is
        /// valid; a field is a plain number.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        pub struct Metrics {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl Metrics {
            /// How many values the body holds.
            pub const LEN: usize = [$(stringify!($name)),*].len();

            /// Every field's name (as in the struct and the spec) and value, in wire order.
            pub fn fields(&self) -> [(&'static str, u64); Self::LEN] {
                [$( (stringify!($name), self.$name) ),*]
            }
        }

        impl Body for Metrics {
            fn encode(&self, out: &mut impl Sink) {
                $( out.put_u64_le(self.$name); )*
            }

            fn decode(r: &mut Reader<'_>, _nfds: u16) -> Result<Self, DecodeError> {
                // §5.16: no checks; the header's fixed length is the only rule.
                Ok(Self { $( $name: r.u64()?, )* })
            }
        }
    };
}

metrics! {
    /// Seconds since the server started (a gauge).
    uptime_s;
    /// Exec jobs whose `execve` succeeded.
    spawns_exec_ok;
    /// Exec jobs whose `execve` failed (`ExecFailed`).
    spawns_exec_failed;
    /// Exec jobs whose child failed before `execve` (`ChildSetupFailed`).
    spawns_exec_setup_failed;
    /// Entry jobs whose entry point ran.
    spawns_entry_ok;
    /// Entry jobs whose child failed before its entry point ran (`ChildSetupFailed`).
    spawns_entry_setup_failed;
    /// Children the server killed at their deadline.
    kills_deadline;
    /// Children the server killed because their connection ended (`KILL_ON_DISCONNECT`).
    kills_disconnect;
    /// Connections refused or closed by a quota: the connection limit, the handshake quota,
    /// out of fds (`ResourceExhausted` before READY).
    refused_quota;
    /// Connections refused for their peer's credentials (`PermissionDenied`, §9.3).
    refused_peer;
    /// Spawns refused at the child limit (`ResourceExhausted`, `--max-children`).
    refused_max_children;
    /// Handshakes that failed authentication (`AuthFailed`).
    auth_failures;
    /// Children reaped that no request was waiting for: pooled children that died before a
    /// job, and processes the server did not fork that it inherited as a subreaper.
    orphans_reaped;
    /// Pooled children the server keeps (`--prefork`; a gauge).
    pool_size;
    /// Pooled children waiting for a job now (a gauge).
    pool_idle;
    /// Setup failures (`ChildSetupFailed`, exec and entry jobs) at the `setup` stage: signals,
    /// fd placement, a pooled child taking its job.
    setup_failed_setup;
    /// Setup failures at the `session` stage: `setsid`, `setpgid`.
    setup_failed_session;
    /// Setup failures at the `limits` stage: `prlimit64`, `setpriority`, `oom_score_adj`.
    setup_failed_limits;
    /// Setup failures at the `credentials` stage: `setgroups`, `setgid`, `setuid`.
    setup_failed_credentials;
    /// Setup failures at the `sandbox` stage: `PR_SET_NO_NEW_PRIVS` and the filters after it.
    setup_failed_sandbox;
    /// Setup failures at the `chdir` stage.
    setup_failed_chdir;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_in_wire_order() {
        let m = Metrics {
            uptime_s: 1,
            pool_idle: 15,
            ..Metrics::default()
        };
        let f = m.fields();
        assert_eq!(f.len(), 21);
        assert_eq!(f[0], ("uptime_s", 1));
        assert_eq!(f[14], ("pool_idle", 15));
        assert_eq!(f[20], ("setup_failed_chdir", 0));
        let mut v = Vec::new();
        m.encode(&mut v);
        assert_eq!(v.len(), 8 * Metrics::LEN);
        assert_eq!(v[..8], 1u64.to_le_bytes());
        assert_eq!(v[112..120], 15u64.to_le_bytes());
    }
}
