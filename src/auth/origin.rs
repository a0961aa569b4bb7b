//! Which web origins may open connections.
//!
//! A browser sends `Origin` on every WebSocket upgrade, and a page on
//! another site could otherwise ride a user's cookies into kubemux. Default:
//! same origin only (the `Origin`'s host and port equal the request's
//! `Host`, or, behind a trusted reverse proxy, the host and scheme it
//! forwarded: see `server::forwarded`); an allow-list adds trusted dashboard
//! origins (a development server on another port, such as Headlamp's
//! `http://localhost:3000`, is another origin and needs it). Requests
//! without `Origin` (command-line tools, server-side clients) are not
//! browsers and pass.

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
        let host = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok());
        self.check_site(headers, host, None)
    }

    /// Checks a request's `Origin` against the allow-list and the site the
    /// client addressed: `host` (`name[:port]`) and, when a trusted proxy
    /// said so, `scheme`. Default ports (80 for http, 443 for https) are
    /// the same as none, as browsers write them.
    pub fn check_site(
        &self,
        headers: &HeaderMap,
        host: Option<&str>,
        scheme: Option<&str>,
    ) -> Result<(), OriginRefused> {
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
        let refused = || OriginRefused {
            origin: origin.clone(),
        };
        let (origin_scheme, origin_host) = origin.split_once("://").ok_or_else(refused)?;
        let host = host.ok_or_else(refused)?.trim().to_ascii_lowercase();
        let scheme = scheme.map(str::to_ascii_lowercase);
        if scheme.as_deref().is_some_and(|s| s != origin_scheme) {
            return Err(refused());
        }
        let site_scheme = scheme.as_deref().unwrap_or(origin_scheme);
        if without_default_port(origin_host, origin_scheme)
            == without_default_port(&host, site_scheme)
        {
            Ok(())
        } else {
            Err(refused())
        }
    }
}

/// `host:80` for http and `host:443` for https are `host`.
fn without_default_port<'a>(host: &'a str, scheme: &str) -> &'a str {
    let default = match scheme {
        "http" | "ws" => ":80",
        "https" | "wss" => ":443",
        _ => return host,
    };
    host.strip_suffix(default).unwrap_or(host)
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

    #[test]
    fn a_forwarded_site_replaces_host_and_its_scheme_must_match() {
        let p = OriginPolicy::default();
        let h = req(Some("https://dash.example.com"), "127.0.0.1:4466");
        assert!(p.check(&h).is_err(), "a rewritten Host");
        assert!(
            p.check_site(&h, Some("dash.example.com"), Some("https"))
                .is_ok()
        );
        assert!(
            p.check_site(&h, Some("dash.example.com:443"), Some("https"))
                .is_ok(),
            "the default port is no port"
        );
        assert!(
            p.check_site(&h, Some("dash.example.com"), Some("http"))
                .is_err(),
            "another scheme is another origin"
        );
        assert!(p.check_site(&h, None, None).is_err());
    }
}
