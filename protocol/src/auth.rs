//! The HMAC-SHA256 challenge/response of PROTOCOL.md §9: pure computation, no I/O.
//!
//! ```
//! use forkserver_protocol::auth;
//!
//! let key = b"a shared secret of any length";
//! let server_challenge = [7u8; 32];
//! let response = auth::client_response(key, &server_challenge);
//! assert!(auth::verify_client(key, &server_challenge, &response));
//! assert!(!auth::verify_client(b"another key", &server_challenge, &response));
//! ```
#![forbid(unsafe_code)]

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{CHALLENGE_LEN, MAC_LEN};

/// What the client's response authenticates: `"forkserver auth v1 client" || server_challenge`.
pub const CLIENT_CONTEXT: &[u8] = b"forkserver auth v1 client";
/// What the server's response authenticates: `"forkserver auth v1 server" || client_challenge`.
pub const SERVER_CONTEXT: &[u8] = b"forkserver auth v1 server";

fn mac(key: &[u8], context: &[u8], challenge: &[u8; CHALLENGE_LEN]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    m.update(context);
    m.update(challenge);
    m
}

/// `HMAC-SHA256(key, CLIENT_CONTEXT || server_challenge)`: the `Auth.response` a client sends.
pub fn client_response(key: &[u8], server_challenge: &[u8; CHALLENGE_LEN]) -> [u8; MAC_LEN] {
    mac(key, CLIENT_CONTEXT, server_challenge)
        .finalize()
        .into_bytes()
        .into()
}

/// `HMAC-SHA256(key, SERVER_CONTEXT || client_challenge)`: the `AuthOk.response` a server sends.
pub fn server_response(key: &[u8], client_challenge: &[u8; CHALLENGE_LEN]) -> [u8; MAC_LEN] {
    mac(key, SERVER_CONTEXT, client_challenge)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks a client's response in constant time.
pub fn verify_client(
    key: &[u8],
    server_challenge: &[u8; CHALLENGE_LEN],
    response: &[u8; MAC_LEN],
) -> bool {
    mac(key, CLIENT_CONTEXT, server_challenge)
        .verify_slice(response)
        .is_ok()
}

/// Checks a server's response in constant time.
pub fn verify_server(
    key: &[u8],
    client_challenge: &[u8; CHALLENGE_LEN],
    response: &[u8; MAC_LEN],
) -> bool {
    mac(key, SERVER_CONTEXT, client_challenge)
        .verify_slice(response)
        .is_ok()
}

/// A fresh 32-byte challenge from the kernel's CSPRNG (`getrandom(2)`: one system call).
///
/// # Errors
/// The kernel's random source is unavailable.
pub fn random_challenge() -> std::io::Result<[u8; CHALLENGE_LEN]> {
    let mut c = [0u8; CHALLENGE_LEN];
    getrandom::fill(&mut c).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(c)
}
