//! The epoll tokens: what each fd registered in the event loop's epoll set is.

use crate::ids::{ConnId, Serial};

/// What an epoll event is about: the `u64` registered with each fd, typed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Token {
    Listener,
    /// The signalfd (`SIGCHLD`, `SIGTERM`).
    Signals,
    /// The owner's alive pipe.
    Alive,
    /// The report pipe of the child of this spawn serial (`pid_after_exec`).
    Report(Serial),
    /// A connection, by id.
    Conn(ConnId),
}

impl Token {
    /// Report tokens carry this bit; connection ids start above the fixed tokens.
    const REPORT_BIT: u64 = 1 << 62;

    pub(super) fn to_u64(self) -> u64 {
        match self {
            Token::Listener => 0,
            Token::Signals => 1,
            Token::Alive => 2,
            Token::Report(serial) => Self::REPORT_BIT | serial.to_u64(),
            Token::Conn(id) => id.to_u64(),
        }
    }

    pub(super) fn from_u64(v: u64) -> Token {
        match v {
            0 => Token::Listener,
            1 => Token::Signals,
            2 => Token::Alive,
            v if v & Self::REPORT_BIT != 0 => {
                Token::Report(Serial::from_u64(v & !Self::REPORT_BIT))
            }
            id => Token::Conn(ConnId::from_u64(id)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_round_trips_and_none_collide() {
        let tokens = [
            Token::Listener,
            Token::Signals,
            Token::Alive,
            Token::Report(Serial::nth(1)),
            Token::Report(Serial::nth(ConnId::FIRST.to_u64())),
            Token::Conn(ConnId::FIRST),
            Token::Conn(ConnId::FIRST.next()),
        ];
        for (i, t) in tokens.iter().enumerate() {
            assert_eq!(Token::from_u64(t.to_u64()), *t);
            for u in &tokens[i + 1..] {
                assert_ne!(t.to_u64(), u.to_u64(), "{t:?} and {u:?}");
            }
        }
    }
}
