//! Which web origins may open connections.
//!
//! A browser sends `Origin` on every WebSocket upgrade, and a page on
//! another site could otherwise ride a user's cookies into kubemux. Default:
//! same origin only (the `Origin`'s host and port equal the request's
//! `Host`); an allow-list adds trusted dashboard origins. Requests without
//! `Origin` (command-line tools, server-side clients) are not browsers and
//! pass.

use http::HeaderMap;

/// The origin policy.
#[derive(Clone, Debug, Default)]
pub struct OriginPolicy {
    allowed: Vec<String>,
}

/// Why an origin was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "origin {origin:?} is not allowed: only same-origin requests and --allowed-origins are accepted"
)]
pub struct OriginRefused {
    /// The refused origin (as sent).
    pub origin: String,
}

impl OriginPolicy {
    /// Same-origin plus these origins (`https://dash.example.com`, or `*` for any).
    pub fn new(allowed: Vec<String>) -> Self {
        OriginPolicy {
            allowed: allowed
                .into_iter()
                .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        }
    }

    /// Checks a request's `Origin` against its `Host` and the allow-list.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), OriginRefused> {
        let Some(origin) = headers.get(http::header::ORIGIN) else {
            return Ok(());
        };
        let origin = origin
            .to_str()
            .unwrap_or("<not text>")
            .trim()
            .to_ascii_lowercase();
        if self.allowed.iter().any(|a| a == "*" || *a == origin) {
            return Ok(());
        }
        let host = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_ascii_lowercase);
        let origin_host = origin.split_once("://").map(|(_, rest)| rest);
        match (origin_host, host) {
            (Some(o), Some(h)) if o == h => Ok(()),
            _ => Err(OriginRefused { origin }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(http::header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn same_origin_and_allow_list() {
        let p = OriginPolicy::default();
        assert!(p.check(&req(None, "kubemux:4466")).is_ok());
        assert!(
            p.check(&req(Some("http://kubemux:4466"), "kubemux:4466"))
                .is_ok()
        );
        assert!(
            p.check(&req(Some("https://evil.example"), "kubemux:4466"))
                .is_err()
        );
        assert!(
            p.check(&req(Some("http://kubemux:4467"), "kubemux:4466"))
                .is_err()
        );
        let p = OriginPolicy::new(vec!["https://Dash.Example.com/".into()]);
        assert!(
            p.check(&req(Some("https://dash.example.com"), "kubemux:4466"))
                .is_ok()
        );
        assert!(p.check(&req(Some("null"), "kubemux:4466")).is_err());
    }
}
