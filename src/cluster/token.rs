//! Clients that act as a caller (`passthrough`), one per token, all over one
//! connection pool per cluster.
//!
//! A client built from the cluster's configuration per token reloaded the CA
//! bundle, built a TLS configuration and kept an idle upstream connection of
//! its own for every token ever presented, junk included: a client sending
//! one request per made-up token grew kubemux's memory, file descriptors and
//! the API server's connection count without bound. Instead each cluster
//! builds one *anonymous* client (its TLS settings, no credentials: not even
//! kubemux's client certificate) once, and a caller's client is that client
//! with the caller's `Authorization` header set on every request. The
//! per-token clients are few bytes each, kept for [`IDLE`] after last use
//! and at most [`CAPACITY`] of them (least recently used first out), and a
//! client whose token the cluster answered `401` is dropped at once: a
//! rejected token is never kept.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response, StatusCode};
use kube::client::Body;
use parking_lot::Mutex;

use kubemux_vocab::identity::identity_hash;

/// Per-token clients are kept this long after their last use.
pub const IDLE: Duration = Duration::from_secs(600);
/// At most this many per-token clients are kept per cluster.
pub const CAPACITY: usize = 1024;

/// Why no client could be made for a caller.
#[derive(Debug, thiserror::Error)]
pub enum TokenClientError {
    /// The cluster was configured from a ready client, without a
    /// configuration to act as others.
    #[error("cluster {0:?} cannot act as callers")]
    NoConfig(String),
    /// The token cannot be sent in a header.
    #[error("the token holds characters an HTTP header cannot carry")]
    BadToken,
    /// The shared anonymous client could not be built.
    #[error("cannot build a client for cluster {cluster:?}: {source}")]
    Build {
        /// Cluster id.
        cluster: String,
        /// What kube reported.
        source: kube::Error,
    },
}

type Cache = Mutex<HashMap<String, (kube::Client, Instant)>>;

/// One cluster's per-token clients.
pub(super) struct TokenClients {
    cluster: String,
    config: Option<kube::Config>,
    anonymous: OnceLock<Result<kube::Client, String>>,
    cache: Arc<Cache>,
}

impl TokenClients {
    pub(super) fn new(cluster: String, config: Option<kube::Config>) -> Self {
        TokenClients {
            cluster,
            config,
            anonymous: OnceLock::new(),
            cache: Arc::default(),
        }
    }

    /// The cluster's client without credentials, built on first use.
    fn anonymous(&self) -> Result<kube::Client, TokenClientError> {
        let config = self
            .config
            .as_ref()
            .ok_or_else(|| TokenClientError::NoConfig(self.cluster.clone()))?;
        self.anonymous
            .get_or_init(|| {
                let mut config = config.clone();
                config.auth_info = kube::config::AuthInfo::default();
                kube::Client::try_from(config).map_err(|e| e.to_string())
            })
            .clone()
            .map_err(|message| TokenClientError::Build {
                cluster: self.cluster.clone(),
                source: kube::Error::Service(message.into()),
            })
    }

    /// The client acting as the holder of `token`.
    pub(super) fn get(&self, token: &str) -> Result<kube::Client, TokenClientError> {
        let hash = identity_hash(token);
        let now = Instant::now();
        if let Some((client, used)) = self.cache.lock().get_mut(&hash) {
            *used = now;
            return Ok(client.clone());
        }
        let mut authorization = HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| TokenClientError::BadToken)?;
        authorization.set_sensitive(true);
        let service = AsCaller {
            inner: self.anonymous()?,
            authorization,
            hash: hash.clone(),
            cache: Arc::downgrade(&self.cache),
        };
        let namespace = self
            .config
            .as_ref()
            .map_or("default", |c| c.default_namespace.as_str());
        let client = kube::Client::new(service, namespace);
        let mut cache = self.cache.lock();
        cache.retain(|_, (_, used)| now.duration_since(*used) < IDLE);
        if cache.len() >= CAPACITY
            && let Some(oldest) = cache
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
        {
            cache.remove(&oldest);
        }
        cache.insert(hash, (client.clone(), now));
        Ok(client)
    }

    /// How many per-token clients are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.cache.lock().len()
    }
}

/// The anonymous client, with the caller's `Authorization` on every request.
#[derive(Clone)]
struct AsCaller {
    inner: kube::Client,
    authorization: HeaderValue,
    hash: String,
    cache: Weak<Cache>,
}

impl tower_service::Service<Request<Body>> for AsCaller {
    type Response = Response<Body>;
    type Error = kube::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, kube::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, self.authorization.clone());
        let (inner, hash, cache) = (self.inner.clone(), self.hash.clone(), self.cache.clone());
        Box::pin(async move {
            let response = inner.send(request).await?;
            if response.status() == StatusCode::UNAUTHORIZED
                && let Some(cache) = cache.upgrade()
            {
                cache.lock().remove(&hash);
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubemux_sim::{SimAuth, SimConfig, SimServer, UserInfo};

    async fn clients() -> (SimServer, TokenClients) {
        let sim = SimServer::start(SimConfig {
            auth: Some(
                SimAuth::new()
                    .with_admin_token("admin-token")
                    .with_token("alice-token", UserInfo::new("alice", "uid-alice", ["dev"])),
            ),
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&sim.kubeconfig("sim")).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        (sim, TokenClients::new("sim".into(), Some(config)))
    }

    async fn status_as(clients: &TokenClients, token: &str) -> StatusCode {
        let request = Request::get("/api/v1/namespaces/default/pods")
            .body(Body::empty())
            .unwrap();
        clients
            .get(token)
            .unwrap()
            .send(request)
            .await
            .unwrap()
            .status()
    }

    #[tokio::test]
    async fn a_token_the_cluster_rejects_is_not_kept() {
        let (_sim, clients) = clients().await;
        assert_eq!(status_as(&clients, "junk").await, StatusCode::UNAUTHORIZED);
        assert_eq!(clients.len(), 0);
        // alice's own identity upstream, not kubemux's: she may list nothing.
        assert_eq!(
            status_as(&clients, "alice-token").await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(clients.len(), 1);
        assert!(matches!(
            clients.get("bad\ntoken"),
            Err(TokenClientError::BadToken)
        ));
    }

    #[tokio::test]
    async fn at_most_capacity_clients_are_kept_least_recently_used_first_out() {
        let (_sim, clients) = clients().await;
        clients.get("first").unwrap();
        for i in 0..CAPACITY {
            clients.get(&format!("t{i}")).unwrap();
        }
        assert_eq!(clients.len(), CAPACITY);
        let first = identity_hash("first");
        assert!(!clients.cache.lock().contains_key(&first));
        assert!(clients.cache.lock().contains_key(&identity_hash("t0")));
    }
}
