//! Client credentials as Headlamp and other dashboards send them: an
//! `Authorization: Bearer` header or Headlamp's per-cluster cookies
//! (`headlamp-auth-<cluster>.<n>`, one token split over numbered cookies,
//! the cluster name sanitised as Headlamp's backend does: see
//! [`cookie_cluster_name`]).
//!
//! Headlamp's `base64url.headlamp.backend.authorization.k8s.io.` subprotocol
//! is not one of them: it carries Headlamp's backend token, a secret between
//! its frontend and its backend (see [`super::secret`]), which must never
//! reach a cluster.
//!
//! Tokens never reach logs or metrics: `Debug` is redacted, and only a hash
//! (`kubemux_vocab::identity::identity_hash`) may be used as a label or key.

use std::collections::BTreeMap;
use std::fmt;

use http::HeaderMap;

const COOKIE_PREFIX: &str = "headlamp-auth-";

/// The credentials one connection presented.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    bearer: Option<String>,
    cookies: BTreeMap<String, String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("bearer", &self.bearer.as_ref().map(|_| "<redacted>"))
            .field("cookie_clusters", &self.cookies.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Credentials {
    /// Reads every credential an upgrade (or REST) request carries.
    pub fn from_headers(headers: &HeaderMap) -> Credentials {
        let bearer = headers
            .get_all(http::header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| token.trim().to_string())
            })
            .filter(|t| !t.is_empty());
        let cookies = headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter_map(|(name, value)| {
                let rest = name.strip_prefix(COOKIE_PREFIX)?;
                let (cluster, n) = rest.rsplit_once('.')?;
                Some((
                    cluster.to_string(),
                    n.parse::<u32>().ok()?,
                    value.to_string(),
                ))
            })
            .fold(
                BTreeMap::<String, BTreeMap<u32, String>>::new(),
                |mut acc, (cluster, n, part)| {
                    acc.entry(cluster).or_default().insert(n, part);
                    acc
                },
            )
            .into_iter()
            .map(|(cluster, parts)| (cluster, parts.into_values().collect::<String>()))
            .filter(|(_, token)| !token.is_empty())
            .collect();
        Credentials { bearer, cookies }
    }

    /// The token to use for `cluster`: its own cookie first (the most
    /// specific), then the `Authorization` header.
    pub fn token_for(&self, cluster: &str) -> Option<&str> {
        self.cookies
            .get(&cookie_cluster_name(cluster))
            .or(self.bearer.as_ref())
            .map(String::as_str)
    }

    /// Whether any credential was presented.
    pub fn is_empty(&self) -> bool {
        self.bearer.is_none() && self.cookies.is_empty()
    }
}

/// The cluster part of Headlamp's cookie names for `cluster`, as Headlamp's
/// backend writes it (`SanitizeClusterName`): only `[A-Za-z0-9-_]` kept, the
/// rest dropped, cut to 50 characters. So `my.cluster`'s token arrives in
/// `headlamp-auth-mycluster.0`.
pub fn cookie_cluster_name(cluster: &str) -> String {
    cluster
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .take(50)
        .collect()
}

/// A header map from name/value pairs, for the auth modules' unit tests.
#[cfg(test)]
pub(crate) fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, v.parse().unwrap());
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header() {
        let c = Credentials::from_headers(&headers(&[("authorization", "Bearer abc")]));
        assert_eq!(c.token_for("any"), Some("abc"));
        let c = Credentials::from_headers(&headers(&[("authorization", "Basic xyz")]));
        assert!(c.is_empty());
    }

    #[test]
    fn headlamps_backend_token_is_no_credential() {
        let c = Credentials::from_headers(&headers(&[
            (
                "sec-websocket-protocol",
                "headlamp.multiplexer.k8s.io, base64url.headlamp.backend.authorization.k8s.io.bXktdG9rZW4",
            ),
            ("x-headlamp_backend-token", "my-token"),
        ]));
        assert!(c.is_empty());
        assert_eq!(c.token_for("x"), None);
    }

    #[test]
    fn split_cookies_are_joined_in_order_per_cluster() {
        let c = Credentials::from_headers(&headers(&[
            (
                "cookie",
                "headlamp-auth-prod.1=def; theme=dark; headlamp-auth-prod.0=abc",
            ),
            (
                "cookie",
                "headlamp-auth-mycluster.0=zzz; headlamp-auth-prod.10=ghi",
            ),
            ("authorization", "Bearer fallback"),
        ]));
        assert_eq!(c.token_for("prod"), Some("abcdefghi"));
        assert_eq!(c.token_for("my.cluster"), Some("zzz"));
        assert_eq!(c.token_for("other"), Some("fallback"));
    }

    #[test]
    fn cookie_names_use_headlamps_sanitised_cluster_name() {
        assert_eq!(cookie_cluster_name("my.cluster"), "mycluster");
        assert_eq!(
            cookie_cluster_name("arn:aws:eks:eu-west-1:1234:cluster/prod_1"),
            "arnawsekseu-west-11234clusterprod_1"
        );
        let long = "a".repeat(60);
        assert_eq!(cookie_cluster_name(&long), "a".repeat(50));
        // Two clusters of the same sanitised name share the cookie, as in
        // Headlamp; the unsanitised name is not a cookie name Headlamp uses.
        let c = Credentials::from_headers(&headers(&[(
            "cookie",
            &format!("headlamp-auth-{}.0=tok", "a".repeat(50)),
        )]));
        assert_eq!(c.token_for(&long), Some("tok"));
        let c = Credentials::from_headers(&headers(&[("cookie", "headlamp-auth-my.cluster.0=x")]));
        assert_eq!(c.token_for("my.cluster"), None);
    }

    #[test]
    fn debug_never_shows_tokens() {
        let c = Credentials::from_headers(&headers(&[
            ("authorization", "Bearer secret-token"),
            ("cookie", "headlamp-auth-a.0=secret-cookie"),
        ]));
        let shown = format!("{c:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
