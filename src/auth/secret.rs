//! Shared secrets that are kubemux's own, never Kubernetes credentials:
//! Headlamp's backend token (its frontend proves to its backend that it is
//! the desktop app's own page) and the operator's admin token (who may see
//! every user's watches on the status endpoints).
//!
//! Both are read from a file, so they never appear in `ps` or a shell
//! history, and compared in constant time: the presented value and the
//! configured one are each MACed under a key drawn at start and the MACs
//! compared with [`hmac::Mac::verify_slice`], so neither the position of
//! the first wrong byte nor the length of the secret shows in the timing.

use std::path::{Path, PathBuf};

use base64::Engine;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use http::HeaderMap;

type HmacSha256 = Hmac<sha2::Sha256>;

/// Headlamp's header for its backend token.
pub const BACKEND_TOKEN_HEADER: &str = "x-headlamp_backend-token";
/// Prefix of the subprotocol that carries Headlamp's backend token, base64url.
pub const BACKEND_TOKEN_PROTOCOL_PREFIX: &str = "base64url.headlamp.backend.authorization.k8s.io.";

/// A configured secret.
pub struct Secret {
    key: [u8; 64],
    mac: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The secret's file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// It could not be read.
    #[error("cannot read {setting} {path}: {source}")]
    Read {
        /// The setting naming the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// It holds nothing (after trimming whitespace) or not UTF-8.
    #[error("{setting} {path} must hold a non-empty UTF-8 token")]
    Empty {
        /// The setting naming the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
    },
}

/// Why Headlamp's backend token was refused. The messages go to the client
/// and never echo a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendTokenRefused {
    /// A backend token is configured and none was sent.
    #[error(
        "access denied: kubemux requires Headlamp's backend token (X-HEADLAMP_BACKEND-TOKEN or its WebSocket subprotocol)"
    )]
    Missing,
    /// The token sent is not the configured one.
    #[error("access denied: wrong Headlamp backend token")]
    Wrong,
    /// The subprotocol token is not base64url, or was offered twice, or
    /// differs from the header's.
    #[error("access denied: {0}")]
    Malformed(&'static str),
}

impl Secret {
    /// The secret in `path` (surrounding whitespace, such as a trailing
    /// newline, is not part of it). `setting` names the file in errors.
    pub fn from_file(setting: &'static str, path: &Path) -> Result<Secret, SecretFileError> {
        let bytes = std::fs::read(path).map_err(|source| SecretFileError::Read {
            setting,
            path: path.to_path_buf(),
            source,
        })?;
        match String::from_utf8(bytes) {
            Ok(text) if !text.trim().is_empty() => Ok(Secret::new(text.trim())),
            _ => Err(SecretFileError::Empty {
                setting,
                path: path.to_path_buf(),
            }),
        }
    }

    /// A secret with this value.
    pub fn new(value: &str) -> Secret {
        let key: [u8; 64] = rand::random();
        let mac = Self::mac_of(&key, value);
        Secret { key, mac }
    }

    fn mac_of(key: &[u8; 64], value: &str) -> Vec<u8> {
        let mut mac = <HmacSha256 as KeyInit>::new(key.into());
        mac.update(value.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// Whether `presented` is the secret, in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        let mut mac = <HmacSha256 as KeyInit>::new((&self.key).into());
        mac.update(presented.as_bytes());
        mac.verify_slice(&self.mac).is_ok()
    }

    /// Checks the backend token a Headlamp request carries, as Headlamp's
    /// own backend does: from its header or its subprotocol (one of each at
    /// most, and the same if both).
    pub fn check_backend_token(&self, headers: &HeaderMap) -> Result<(), BackendTokenRefused> {
        match presented_backend_token(headers)? {
            None => Err(BackendTokenRefused::Missing),
            Some(token) if self.matches(&token) => Ok(()),
            Some(_) => Err(BackendTokenRefused::Wrong),
        }
    }

    /// Whether `headers` carry `Authorization: Bearer <the secret>`.
    pub fn is_bearer_of(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(http::header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.trim().split_once(' '))
            .any(|(scheme, token)| {
                scheme.eq_ignore_ascii_case("bearer") && self.matches(token.trim())
            })
    }
}

/// The backend token a request presents, if any.
fn presented_backend_token(headers: &HeaderMap) -> Result<Option<String>, BackendTokenRefused> {
    let mut from_protocol: Option<String> = None;
    for protocol in headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
    {
        let Some(encoded) = protocol.strip_prefix(BACKEND_TOKEN_PROTOCOL_PREFIX) else {
            continue;
        };
        if from_protocol.is_some() {
            return Err(BackendTokenRefused::Malformed(
                "more than one backend token subprotocol",
            ));
        }
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(encoded)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .filter(|t| !t.is_empty())
            .ok_or(BackendTokenRefused::Malformed(
                "the backend token subprotocol is not base64url",
            ))?;
        from_protocol = Some(token);
    }
    let from_header = headers
        .get(BACKEND_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    match (from_protocol, from_header) {
        (Some(p), Some(h)) if p != h => Err(BackendTokenRefused::Malformed(
            "the backend token subprotocol and header differ",
        )),
        (p, h) => Ok(p.or(h)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::credentials::headers;

    #[test]
    fn backend_token_by_header_or_subprotocol() {
        let secret = Secret::new("desktop-token");
        let protocol = "headlamp.multiplexer.k8s.io, base64url.headlamp.backend.authorization.k8s.io.ZGVza3RvcC10b2tlbg";
        assert_eq!(
            secret.check_backend_token(&headers(&[("sec-websocket-protocol", protocol)])),
            Ok(())
        );
        assert_eq!(
            secret.check_backend_token(&headers(&[(BACKEND_TOKEN_HEADER, "desktop-token")])),
            Ok(())
        );
        assert_eq!(
            secret.check_backend_token(&headers(&[])),
            Err(BackendTokenRefused::Missing)
        );
        assert_eq!(
            secret.check_backend_token(&headers(&[(BACKEND_TOKEN_HEADER, "desktop-tokeN")])),
            Err(BackendTokenRefused::Wrong)
        );
        assert!(matches!(
            secret.check_backend_token(&headers(&[
                ("sec-websocket-protocol", protocol),
                (BACKEND_TOKEN_HEADER, "other")
            ])),
            Err(BackendTokenRefused::Malformed(_))
        ));
        assert!(matches!(
            secret.check_backend_token(&headers(&[(
                "sec-websocket-protocol",
                "base64url.headlamp.backend.authorization.k8s.io.!!"
            )])),
            Err(BackendTokenRefused::Malformed(_))
        ));
        assert!(!format!("{secret:?}").contains("desktop"));
    }

    #[test]
    fn admin_bearer() {
        let secret = Secret::new("ops");
        assert!(secret.is_bearer_of(&headers(&[("authorization", "Bearer ops")])));
        assert!(!secret.is_bearer_of(&headers(&[("authorization", "Bearer op")])));
        assert!(!secret.is_bearer_of(&headers(&[("authorization", "Basic ops")])));
    }
}
