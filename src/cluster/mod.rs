//! The clusters kubemux can reach, by cluster id (kubeconfig context name).

mod health;
pub mod kubeconfig;
mod token;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;

pub use health::Health;
pub use token::TokenClientError;

/// One cluster and the client used to reach it.
pub struct Cluster {
    id: String,
    server: String,
    client: kube::Client,
    config: Option<kube::Config>,
    streaming: std::sync::OnceLock<kube::Client>,
    per_token: token::TokenClients,
    health: RwLock<Health>,
    fingerprint: u64,
}

/// A change to the set of clusters, announced to whoever listens
/// ([`Registry::changes`]): the hub ends subscriptions of removed or edited
/// clusters, the notifications dialect tells its clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterChange {
    /// A new cluster id became usable.
    Added(String),
    /// A cluster's configuration changed; existing watches were made with the old one.
    Updated(String),
    /// A cluster id is gone.
    Removed(String),
}

impl Cluster {
    /// A cluster from a ready client.
    pub fn new(id: impl Into<String>, server: impl Into<String>, client: kube::Client) -> Self {
        let id = id.into();
        Cluster {
            per_token: token::TokenClients::new(id.clone(), None),
            id,
            server: server.into(),
            client,
            config: None,
            streaming: std::sync::OnceLock::new(),
            health: RwLock::new(Health::default()),
            fingerprint: 0,
        }
    }

    /// A cluster whose [`Cluster::client_for_token`] can act as callers.
    pub fn with_config(id: impl Into<String>, config: kube::Config) -> Result<Self, kube::Error> {
        let server = config.cluster_url.to_string();
        let client = kube::Client::try_from(config.clone())?;
        let mut cluster = Cluster::new(id, server, client);
        cluster.per_token = token::TokenClients::new(cluster.id.clone(), Some(config.clone()));
        cluster.config = Some(config);
        Ok(cluster)
    }

    /// A client that authenticates as the holder of `token` (passthrough
    /// mode): the cluster's one connection pool and TLS configuration, with
    /// the token as the `Authorization` of each request (see [`token`]).
    pub fn client_for_token(&self, token: &str) -> Result<kube::Client, TokenClientError> {
        self.per_token.get(token)
    }

    /// A client without a read timeout, for follow streams (pod logs) that
    /// may stay silent for longer than the 295 s read timeout kube gives
    /// every client by default; built once, on first use.
    pub fn streaming_client(&self) -> kube::Client {
        let Some(config) = &self.config else {
            return self.client();
        };
        self.streaming
            .get_or_init(|| {
                let mut config = config.clone();
                config.read_timeout = None;
                kube::Client::try_from(config).unwrap_or_else(|_| self.client())
            })
            .clone()
    }

    /// The latest health probe result.
    pub fn health(&self) -> Health {
        self.health.read().clone()
    }

    /// The cluster id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The API server URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// A client for the cluster (cheap to clone).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }
}

/// Why clusters could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The kubeconfig could not be read or parsed.
    #[error("cannot read kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// What went wrong.
        source: kube::config::KubeconfigError,
    },
    /// The kubeconfig has no contexts.
    #[error("kubeconfig {0} defines no contexts")]
    NoContexts(String),
}

/// Every configured cluster, by id.
pub struct Registry {
    clusters: RwLock<BTreeMap<String, Arc<Cluster>>>,
    default_id: RwLock<Option<String>>,
    loaded: AtomicBool,
    changes: tokio::sync::broadcast::Sender<ClusterChange>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            clusters: RwLock::default(),
            default_id: RwLock::default(),
            loaded: AtomicBool::new(false),
            changes: tokio::sync::broadcast::channel(256).0,
        }
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The cluster with this id.
    pub fn get(&self, id: &str) -> Option<Arc<Cluster>> {
        self.clusters.read().get(id).cloned()
    }

    /// Adds or replaces a cluster.
    pub fn insert(&self, cluster: Cluster) {
        self.clusters
            .write()
            .insert(cluster.id.clone(), Arc::new(cluster));
        self.loaded.store(true, Ordering::Release);
    }

    /// Removes a cluster; whether it was there.
    pub fn remove(&self, id: &str) -> bool {
        self.clusters.write().remove(id).is_some()
    }

    /// Announces a change to listeners.
    pub fn announce(&self, change: ClusterChange) {
        let _ = self.changes.send(change);
    }

    /// Follows changes to the set of clusters from now on.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<ClusterChange> {
        self.changes.subscribe()
    }

    /// Makes `id` the cluster used when a client names none.
    pub fn set_default(&self, id: &str) {
        *self.default_id.write() = Some(id.to_string());
    }

    /// The cluster used when a client names none: the kubeconfig's current
    /// context, else the first cluster id.
    pub fn default_id(&self) -> Option<String> {
        let explicit = self.default_id.read().clone();
        explicit
            .filter(|id| self.get(id).is_some())
            .or_else(|| self.ids().into_iter().next())
    }

    /// Whether at least one cluster has been configured.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Every cluster, by id.
    pub fn all(&self) -> Vec<Arc<Cluster>> {
        self.clusters.read().values().cloned().collect()
    }

    /// Every cluster id, sorted.
    pub fn ids(&self) -> Vec<String> {
        self.clusters.read().keys().cloned().collect()
    }

    /// Makes the clusters exactly the contexts of a kubeconfig document.
    pub async fn load_kubeconfig_text(
        &self,
        text: &str,
        origin: &str,
    ) -> Result<usize, ClusterError> {
        let kubeconfig = kube::config::Kubeconfig::from_yaml(text).map_err(|source| {
            ClusterError::Kubeconfig {
                path: origin.to_string(),
                source,
            }
        })?;
        self.load(kubeconfig, origin).await
    }

    /// Makes the clusters exactly the contexts of a kubeconfig file.
    pub async fn load_kubeconfig_file(&self, path: &Path) -> Result<usize, ClusterError> {
        let origin = path.display().to_string();
        let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|source| {
            ClusterError::Kubeconfig {
                path: origin.clone(),
                source,
            }
        })?;
        self.load(kubeconfig, &origin).await
    }

    /// Makes the clusters exactly the contexts of a parsed kubeconfig
    /// (see [`Registry::sync_kubeconfig`]); returns how many it names.
    pub async fn load(
        &self,
        kubeconfig: kube::config::Kubeconfig,
        origin: &str,
    ) -> Result<usize, ClusterError> {
        let count = kubeconfig.contexts.len();
        self.sync_kubeconfig(kubeconfig, origin).await?;
        Ok(count)
    }
}
