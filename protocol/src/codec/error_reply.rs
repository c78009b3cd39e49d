//! `Error` (0x2F), server → client: a request failed (PROTOCOL.md §5.12, §7).

use super::messages::Body;
use super::wire::{put_bytes16, Reader, Sink};
use crate::error::{DecodeError, Field, Limit};
use crate::MAX_ERROR_MESSAGE_LEN;

macro_rules! error_codes {
    ($(
        $(#[$doc:meta])* $name:ident = $value:literal, fatal = $fatal:literal, report = $report:literal;
    )*) => {
        /// The error codes of PROTOCOL.md §7. Every other value is reserved.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum ErrorCode {
            $( $(#[$doc])* $name = $value, )*
        }

        impl ErrorCode {
            /// Every code, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[$( ErrorCode::$name, )*];

            /// The code for a wire value, if it is defined.
            pub fn from_u16(v: u16) -> Option<Self> {
                match v {
                    $( $value => Some(ErrorCode::$name), )*
                    _ => None,
                }
            }

            /// Whether the server closes the connection after sending this error (§7).
            pub fn is_fatal(self) -> bool {
                match self {
                    $( ErrorCode::$name => $fatal, )*
                }
            }

            /// Whether this error is a child's final report (§5.5.1, §6.1): the child failed before its
            /// job ran and has been reaped, so the error stands in place of its `Exit`, and
            /// under `KEEP_CONNECTION` the connection is READY again.
            pub fn is_final_report(self) -> bool {
                match self {
                    $( ErrorCode::$name => $report, )*
                }
            }

            /// The code's name as the spec and the test vectors spell it.
            pub fn name(self) -> &'static str {
                match self {
                    $( ErrorCode::$name => stringify!($name), )*
                }
            }
        }
    };
}

error_codes! {
    /// A frame broke a rule of §4-§5 (the message says which).
    Malformed = 1, fatal = true, report = false;
    /// No protocol version is spoken by both sides; the message names the server's range.
    UnsupportedVersion = 2, fatal = true, report = false;
    /// A request came before authentication was complete.
    AuthRequired = 3, fatal = true, report = false;
    /// The client's authentication response was wrong.
    AuthFailed = 4, fatal = true, report = false;
    /// A valid message that is not allowed in the connection's state (§6).
    UnexpectedMessage = 5, fatal = true, report = false;
    /// The fds that arrived disagree with the header's `nfds` (§4.3).
    FdMismatch = 6, fatal = true, report = false;
    /// More than 256 fds were announced or attached.
    TooManyFds = 7, fatal = true, report = false;
    /// The server has no entry point of that name.
    UnknownEntry = 8, fatal = true, report = false;
    /// `fork()` failed; `errno` says why (EAGAIN, ENOMEM).
    ForkFailed = 9, fatal = true, report = false;
    /// `execve()` failed in the child; `errno` says why. The child has been reaped.
    ExecFailed = 10, fatal = true, report = true;
    /// The child could not be set up (fd placement, session, cwd); `errno` says why.
    ChildSetupFailed = 11, fatal = true, report = true;
    /// `kill()` failed; `errno` says why. The connection stays open.
    SignalFailed = 12, fatal = false, report = false;
    /// The server ran out of a resource (fds, memory) serving this request.
    ResourceExhausted = 13, fatal = true, report = false;
    /// The peer's credentials are not allowed to use this server.
    PermissionDenied = 14, fatal = true, report = false;
    /// The server is shutting down and takes no new requests.
    ShuttingDown = 15, fatal = true, report = false;
    /// The connection was idle in a state that needs the client to speak (§6.3).
    Timeout = 16, fatal = true, report = false;
    /// A bug in the server.
    Internal = 17, fatal = true, report = false;
}

/// An error reply: a code, the OS error number if one caused it (0 otherwise), and a message
/// for humans.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ErrorReply {
    code: ErrorCode,
    errno: i32,
    message: String,
}

impl ErrorReply {
    /// Builds an error reply; a message over [`MAX_ERROR_MESSAGE_LEN`] bytes is cut at a
    /// character boundary, so this cannot fail.
    pub fn new(code: ErrorCode, errno: i32, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE_LEN {
            let mut cut = MAX_ERROR_MESSAGE_LEN;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Self {
            code,
            errno,
            message,
        }
    }

    /// The error code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The `errno` value behind the error, or 0.
    pub fn errno(&self) -> i32 {
        self.errno
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl Body for ErrorReply {
    fn encode(&self, out: &mut impl Sink) {
        out.put_u16_le(self.code as u16);
        out.put_u16_le(0);
        out.put_i32_le(self.errno);
        put_bytes16(out, self.message.as_bytes());
    }

    fn decode(r: &mut Reader<'_>, _nfds: u16) -> Result<Self, DecodeError> {
        let code = r.u16()?;
        // §7: codes outside the table are reserved.
        let code = ErrorCode::from_u16(code).ok_or(DecodeError::UnknownErrorCode(code))?;
        r.reserved::<2>()?;
        let errno = r.i32()?;
        let m = r.bytes16(MAX_ERROR_MESSAGE_LEN, Limit::ErrorMessage)?;
        let message =
            core::str::from_utf8(m).map_err(|_| DecodeError::InvalidValue(Field::Utf8))?;
        Ok(Self {
            code,
            errno,
            message: message.to_owned(),
        })
    }
}

impl core::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.code.name())?;
        if self.errno != 0 {
            write!(f, " (errno {})", self.errno)?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

impl From<DecodeError> for ErrorReply {
    /// The reply a server sends for a frame it could not decode (§6.2).
    fn from(e: DecodeError) -> Self {
        let code = match e {
            DecodeError::TooManyFds(_) => ErrorCode::TooManyFds,
            _ => ErrorCode::Malformed,
        };
        ErrorReply::new(code, 0, e.to_string())
    }
}
