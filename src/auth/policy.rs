//! Whose identity an upstream watch runs as, by auth mode.
//!
//! - `passthrough`: the caller's own token; a shared watch is shared only
//!   among the same identity (its key holds a hash of the token).
//! - `shared`: kubemux's own identity upstream, one watch per key for
//!   everyone; each caller is authenticated (TokenReview) and authorised
//!   (SubjectAccessReview) before a single event reaches it, and re-checked
//!   periodically (see [`super::review`]).
//! - `none`: kubemux's own identity for everyone. Only for local use:
//!   refused on a non-loopback listener unless explicitly allowed, and
//!   `secrets` are never served unless allowed too.

use std::net::SocketAddr;

use clap::ValueEnum;
use serde::Deserialize;

use std::sync::Arc;
use std::time::Duration;

use super::credentials::Credentials;
use super::recheck::Rechecks;
use super::review::Reviewer;
use kubemux_vocab::identity::Identity;
use kubemux_vocab::path::ApiPath;
use kubemux_vocab::path::ResourcePath;

/// How clients are identified to the clusters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Each upstream watch runs with the client's own token.
    Passthrough,
    /// One upstream watch per key under kubemux's identity; callers are
    /// reviewed with TokenReview and SubjectAccessReview.
    Shared,
    /// Everyone is served with kubemux's own identity (local use only).
    None,
}

impl AuthMode {
    /// The spelling used in flags and the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Passthrough => "passthrough",
            AuthMode::Shared => "shared",
            AuthMode::None => "none",
        }
    }
}

/// Why a subscription is refused before it reaches a cluster.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Passthrough mode without any credential for the cluster.
    #[error(
        "no credentials for cluster {0:?}: send a bearer token (Authorization header or Headlamp's headlamp-auth cookies)"
    )]
    NoCredentials(String),
    /// `secrets` in `none` mode.
    #[error("secrets are not served when kubemux runs with --auth none (see --allow-secrets)")]
    Secrets,
}

/// The auth policy of a server.
#[derive(Clone)]
pub struct Policy {
    mode: AuthMode,
    allow_secrets: bool,
    /// The reviewer and the re-check service built around it.
    review: Option<Rechecks>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("mode", &self.mode)
            .field("allow_secrets", &self.allow_secrets)
            .finish_non_exhaustive()
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::none(false)
    }
}

/// The auth mode cannot be used on this listener.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--auth none serves everyone with kubemux's own identity and is refused on the non-loopback address {0}; listen on 127.0.0.1, choose another --auth, or pass --allow-unauthenticated-remote"
)]
pub struct UnsafeListener(pub SocketAddr);

impl AuthMode {
    /// Refuses `none` on a non-loopback listener unless `allow_remote`.
    pub fn check_listener(
        self,
        listen: SocketAddr,
        allow_remote: bool,
    ) -> Result<(), UnsafeListener> {
        if self == AuthMode::None && !listen.ip().is_loopback() && !allow_remote {
            return Err(UnsafeListener(listen));
        }
        Ok(())
    }
}

impl Policy {
    /// The `none` mode; `allow_secrets` serves `secrets` too.
    pub fn none(allow_secrets: bool) -> Self {
        Policy {
            mode: AuthMode::None,
            allow_secrets,
            review: None,
        }
    }

    /// The `shared` mode: callers reviewed by `reviewer`, live subscribers
    /// re-checked every `recheck`.
    pub fn shared(reviewer: Arc<Reviewer>, recheck: Duration) -> Self {
        Policy {
            mode: AuthMode::Shared,
            allow_secrets: false,
            review: Some(Rechecks::new(reviewer, recheck)),
        }
    }

    /// The `passthrough` mode: upstream requests run with the caller's own
    /// token, and callers are reviewed by `reviewer` like in `shared` mode,
    /// re-checked every `recheck`. The review is not redundant: a caller
    /// joining a live watch (another tab's, under another connection's copy
    /// of the token) or served a LIST from its store makes no request of
    /// its own, so without it a revoked token would go on being served
    /// until the upstream watch happened to be re-established.
    pub fn passthrough(reviewer: Arc<Reviewer>, recheck: Duration) -> Self {
        Policy {
            mode: AuthMode::Passthrough,
            allow_secrets: false,
            review: Some(Rechecks::new(reviewer, recheck)),
        }
    }

    /// The reviewer and re-check interval, in `shared` and `passthrough` modes.
    pub fn review(&self) -> Option<(&Arc<Reviewer>, Duration)> {
        self.review.as_ref().map(|r| (r.reviewer(), r.every()))
    }

    /// The re-check service of live subscriptions, in `shared` and
    /// `passthrough` modes (one per server, shared by every dialect).
    pub fn rechecks(&self) -> Option<&Rechecks> {
        self.review.as_ref()
    }

    /// The mode.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// The identity a REST GET of `path` runs as.
    pub fn identity_for_path(
        &self,
        credentials: &Credentials,
        cluster: &str,
        path: &ApiPath,
    ) -> Result<Identity, Denied> {
        self.identity_of(credentials, cluster, path.collection())
    }

    /// The identity an upstream watch for this caller and resource runs as.
    pub fn identity(
        &self,
        credentials: &Credentials,
        cluster: &str,
        resource: &ResourcePath,
    ) -> Result<Identity, Denied> {
        self.identity_of(credentials, cluster, Some(resource))
    }

    /// Every rule of the mode, on the parsed resource (`None`: discovery).
    fn identity_of(
        &self,
        credentials: &Credentials,
        cluster: &str,
        resource: Option<&ResourcePath>,
    ) -> Result<Identity, Denied> {
        match self.mode {
            AuthMode::None => {
                if resource.is_some_and(|r| r.group.is_empty() && r.resource == "secrets")
                    && !self.allow_secrets
                {
                    return Err(Denied::Secrets);
                }
                Ok(Identity::Proxy)
            }
            AuthMode::Shared => Ok(Identity::Proxy),
            AuthMode::Passthrough => credentials
                .token_for(cluster)
                .map(|t| Identity::Bearer(t.to_string()))
                .ok_or_else(|| Denied::NoCredentials(cluster.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::key::parse_path;

    #[test]
    fn none_is_local_only_and_hides_secrets() {
        let p = Policy::none(false);
        let none = AuthMode::None;
        assert!(
            none.check_listener("127.0.0.1:1".parse().unwrap(), false)
                .is_ok()
        );
        assert!(
            none.check_listener("0.0.0.0:1".parse().unwrap(), false)
                .is_err()
        );
        assert!(
            none.check_listener("0.0.0.0:1".parse().unwrap(), true)
                .is_ok()
        );
        let creds = Credentials::default();
        let secrets = parse_path("/api/v1/namespaces/a/secrets").unwrap();
        assert_eq!(p.identity(&creds, "c", &secrets), Err(Denied::Secrets));
        let pods = parse_path("/api/v1/pods").unwrap();
        assert_eq!(p.identity(&creds, "c", &pods), Ok(Identity::Proxy));
        let rest = |path| kubemux_vocab::path::parse(path).unwrap();
        for path in [
            "/api/v1/namespaces/a/secrets/s",
            "/api/v1/namespaces/a/secrets/s/status",
            "/api/v1/secrets",
        ] {
            assert_eq!(
                p.identity_for_path(&creds, "c", &rest(path)),
                Err(Denied::Secrets),
                "{path}"
            );
        }
        assert_eq!(
            p.identity_for_path(&creds, "c", &rest("/version")),
            Ok(Identity::Proxy)
        );
        let p = Policy::none(true);
        assert_eq!(p.identity(&creds, "c", &secrets), Ok(Identity::Proxy));
    }

    #[test]
    fn passthrough_needs_a_token() {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let reviewer = Arc::new(Reviewer::new(Duration::from_secs(1), metrics));
        let p = Policy::passthrough(reviewer, Duration::from_secs(1));
        assert!(
            AuthMode::Passthrough
                .check_listener("0.0.0.0:1".parse().unwrap(), false)
                .is_ok()
        );
        let pods = parse_path("/api/v1/pods").unwrap();
        assert!(matches!(
            p.identity(&Credentials::default(), "c", &pods),
            Err(Denied::NoCredentials(_))
        ));
    }
}
