//! Whose credentials a request runs with, and the name that may stand for
//! a token in keys, logs and metrics.

/// A stable, non-reversible name for a token, usable in keys and logs.
///
/// It separates users: watches and review answers are shared only between
/// callers whose tokens give the same name. So it is an HMAC-SHA-256 under
/// a key drawn at start (truncated to 128 bits), not a fast hash: nobody
/// can make a token that collides with another user's, even knowing the
/// name from a log, and names mean nothing outside this process.
pub fn identity_hash(token: &str) -> String {
    use hmac::digest::KeyInit;
    use hmac::{Hmac, Mac};
    // One SHA-256 block: HMAC's natural key size.
    static KEY: std::sync::OnceLock<[u8; 64]> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(rand::random);
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new(key.into());
    mac.update(token.as_bytes());
    mac.finalize().into_bytes()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whose identity an upstream watch runs as.
#[derive(Clone, PartialEq, Eq)]
pub enum Identity {
    /// kubemux's own (the cluster's configured credentials).
    Proxy,
    /// The caller's bearer token; watches are shared only among callers
    /// with the same token.
    Bearer(String),
}

impl Identity {
    /// The name under which watches and review answers of this identity
    /// are shared ([`identity_hash`] of the token), none for kubemux's own.
    pub fn hash(&self) -> Option<String> {
        match self {
            Identity::Proxy => None,
            Identity::Bearer(token) => Some(identity_hash(token)),
        }
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Proxy => f.write_str("Proxy"),
            Identity::Bearer(t) => {
                write!(f, "Bearer({})", identity_hash(t))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_separate_tokens_and_hide_them() {
        assert_ne!(identity_hash("a"), identity_hash("b"));
        assert_eq!(identity_hash("a"), identity_hash("a"));
        assert_eq!(identity_hash("a").len(), 32);
        assert!(!identity_hash("secret-token").contains("secret"));
        let shown = format!("{:?}", Identity::Bearer("secret-token".into()));
        assert!(!shown.contains("secret"), "{shown}");
        assert_eq!(Identity::Proxy.hash(), None);
    }
}
