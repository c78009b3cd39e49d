//! The message table (PROTOCOL.md §4.1, §5): one entry per message, from which [`Tag`],
//! [`Message`] and every per-message `match` of the codec are generated. Adding a message means
//! one entry here and its body type, which implements [`Body`].

use super::header::Header;
use super::wire::{Reader, Sink};
use super::{
    Auth, AuthOk, ErrorReply, Exit, Features, Hello, HelloOk, Metrics, Pid, Signal, Spawn, Status,
};
use crate::error::DecodeError;
use crate::MAX_FDS;

/// What the table needs of a message body. There is no length method: a body's length is
/// what its `encode` writes (`codec` module doc); for a fixed-size body (`len N`) a test and a
/// debug assertion check that this is the table's `N`.
pub(super) trait Body: Sized {
    /// Appends the body (no header) to `out`.
    fn encode(&self, out: &mut impl Sink);

    /// Reads the body from `r`; `nfds` is the header's fd count. The caller checks that `r` is
    /// used up.
    fn decode(r: &mut Reader<'_>, nfds: u16) -> Result<Self, DecodeError>;

    /// How many fds travel beside the body (at most the table's `fds`).
    fn fd_count(&self) -> usize {
        0
    }
}

/// Each entry is the message's doc, then `Variant(BodyType) = tag, sender, len N|var, fds N;`,
/// or `Variant = ...` for a message without a body (a unit variant of [`Message`]). The docs of
/// the [`Tag`] and [`Message`] variants are the entry's doc and a line made of its columns.
macro_rules! messages {
    (@dir client) => { "client → server" };
    (@dir server) => { "server → client" };
    (@from_client client) => { true };
    (@from_client server) => { false };
    (@fixed var) => { None };
    (@fixed $len:literal) => { Some($len) };
    (@len_doc var) => { "variable-size body" };
    (@len_doc 0) => { "empty body" };
    (@len_doc $len:literal) => { concat!($len, "-byte body") };
    (@fds_doc 0) => { "no fds" };
    (@fds_doc 1) => { "at most 1 fd" };
    (@fds_doc $max:ident) => { concat!("at most [`", stringify!($max), "`] fds") };
    (@facts $tag:literal, $from:ident, $len:tt, $fds:tt) => {
        concat!(
            "`", stringify!($tag), "`, ", messages!(@dir $from), ", ",
            messages!(@len_doc $len), ", ", messages!(@fds_doc $fds), " (PROTOCOL.md §4.1, §4.2).",
        )
    };
    (@fd_count) => { 0 };
    (@fd_count $m:ident: $body:ident) => { <$body as Body>::fd_count($m) };

    ($(
        $(#[$doc:meta])*
        $name:ident $(($body:ident))? = $tag:literal, $from:ident, len $len:tt, fds $fds:tt;
    )*) => {
        /// The message types of protocol version 1 (PROTOCOL.md §5). Every other tag value is
        /// reserved.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum Tag {
            $(
                $(#[$doc])*
                #[doc = ""]
                #[doc = messages!(@facts $tag, $from, $len, $fds)]
                $name = $tag,
            )*
        }

        impl Tag {
            /// Every tag, in numeric order.
            pub const ALL: [Tag; [$(Tag::$name),*].len()] = [$(Tag::$name),*];

            /// The tag for a byte, if it names a message of this version.
            pub fn from_u8(b: u8) -> Option<Tag> {
                match b {
                    $( $tag => Some(Tag::$name), )*
                    _ => None,
                }
            }

            /// Most fds a frame of this type may carry (PROTOCOL.md §4.2).
            pub fn max_fds(self) -> u16 {
                let max: usize = match self {
                    $( Tag::$name => $fds, )*
                };
                max as u16
            }

            /// The body length of fixed-size messages; `None` for variable-size ones.
            pub fn fixed_body_len(self) -> Option<u32> {
                match self {
                    $( Tag::$name => messages!(@fixed $len), )*
                }
            }

            /// True for messages a client sends, false for those a server sends.
            pub fn is_from_client(self) -> bool {
                match self {
                    $( Tag::$name => messages!(@from_client $from), )*
                }
            }
        }

        /// Every message of protocol version 1.
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub enum Message {
            $(
                $(#[$doc])*
                #[doc = ""]
                #[doc = messages!(@facts $tag, $from, $len, $fds)]
                $name $(($body))?,
            )*
        }

        impl Message {
            /// The message's tag.
            pub fn tag(&self) -> Tag {
                match self {
                    $( Message::$name { .. } => Tag::$name, )*
                }
            }

            /// How many fds travel with this message's frame (the header's `nfds`).
            pub fn fd_count(&self) -> usize {
                match self {
                    $(
                        Message::$name $((m @ $body { .. }))? =>
                            messages!(@fd_count $(m: $body)?),
                    )*
                }
            }

            pub(super) fn encode_body(&self, out: &mut impl Sink) {
                match self {
                    $(
                        Message::$name $((m @ $body { .. }))? => {
                            $(<$body as Body>::encode(m, out);)?
                        }
                    )*
                }
            }

            /// Decodes the body of a frame whose header [`Header::parse`] has checked, with
            /// `r` over that body; returns the length of the entry payload `r` lent, if any
            /// (it is then the body's last bytes: the check of trailing bytes passed).
            pub(super) fn decode_body(
                header: Header,
                mut r: Reader<'_>,
            ) -> Result<(Self, Option<usize>), DecodeError> {
                let m = match header.tag {
                    $(
                        Tag::$name => Message::$name
                            $((<$body as Body>::decode(&mut r, header.nfds)?))?,
                    )*
                };
                let lent = r.lent();
                // PROTOCOL.md §4.1: a body too long for its fields is `TrailingBytes`.
                r.finish()?;
                Ok((m, lent))
            }
        }
    };
}

messages! {
    /// Opens the connection and offers a version range.
    Hello(Hello) = 0x01, client, len 8, fds 0;
    /// The chosen version and the authentication method.
    HelloOk(HelloOk) = 0x02, server, len var, fds 0;
    /// The answer to the server's challenge, and a challenge back.
    Auth(Auth) = 0x03, client, len 64, fds 0;
    /// The answer to the client's challenge.
    AuthOk(AuthOk) = 0x04, server, len 32, fds 0;
    /// Fork a child; the fds of [`Spawn::fds`] travel with the frame.
    Spawn(Spawn) = 0x10, client, len var, fds MAX_FDS;
    /// Send a signal to the child of this connection.
    Signal(Signal) = 0x11, client, len 4, fds 0;
    /// Ask for the server's status.
    StatusRequest = 0x12, client, len 0, fds 0;
    /// Ask what the server implements (rev 0.6).
    FeaturesRequest = 0x13, client, len 0, fds 0;
    /// Ask for the server's counters (rev 0.6).
    MetricsRequest = 0x14, client, len 0, fds 0;
    /// The child's pid; a pidfd for it travels with the frame when [`Pid::has_pidfd`].
    Pid(Pid) = 0x20, server, len 4, fds 1;
    /// The child's signed exit code, and its resource usage when asked for (rev 0.6).
    Exit(Exit) = 0x21, server, len var, fds 0;
    /// A signal request was carried out.
    Signaled = 0x22, server, len 0, fds 0;
    /// The server's status.
    Status(Status) = 0x23, server, len var, fds 0;
    /// What the server implements: its revision, Spawn flag bits and requests (rev 0.6).
    Features(Features) = 0x24, server, len 16, fds 0;
    /// The server's counters (rev 0.6).
    Metrics(Metrics) = 0x25, server, len 168, fds 0;
    /// A request failed.
    Error(ErrorReply) = 0x2F, server, len var, fds 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_u8_agrees_with_the_table() {
        for b in 0..=255u8 {
            let listed = Tag::ALL.iter().copied().find(|t| *t as u8 == b);
            assert_eq!(Tag::from_u8(b), listed, "{b:#04x}");
        }
        assert!(
            Tag::ALL.windows(2).all(|w| (w[0] as u8) < (w[1] as u8)),
            "Tag::ALL is in numeric order"
        );
    }

    #[test]
    fn unit_messages_have_empty_bodies() {
        for m in [
            Message::StatusRequest,
            Message::FeaturesRequest,
            Message::MetricsRequest,
            Message::Signaled,
        ] {
            assert_eq!(m.tag().fixed_body_len(), Some(0));
            assert_eq!(m.to_bytes().len(), crate::HEADER_LEN);
            assert_eq!(crate::decode_exact(&m.to_bytes()), Ok(m));
        }
    }
}
