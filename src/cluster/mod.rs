//! The clusters kubemux can reach, by cluster id (kubeconfig context name).

mod health;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;

pub use health::Health;

/// One cluster and the client used to reach it.
pub struct Cluster {
    id: String,
    server: String,
    client: kube::Client,
    health: RwLock<Health>,
}

impl Cluster {
    /// A cluster from a ready client.
    pub fn new(id: impl Into<String>, server: impl Into<String>, client: kube::Client) -> Self {
        Cluster {
            id: id.into(),
            server: server.into(),
            client,
            health: RwLock::new(Health::default()),
        }
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
    /// A context could not be turned into a client.
    #[error("context {context:?}: {message}")]
    Context {
        /// The context name.
        context: String,
        /// What went wrong.
        message: String,
    },
    /// The kubeconfig has no contexts.
    #[error("kubeconfig {0} defines no contexts")]
    NoContexts(String),
}

/// Every configured cluster, by id.
#[derive(Default)]
pub struct Registry {
    clusters: RwLock<BTreeMap<String, Arc<Cluster>>>,
    loaded: AtomicBool,
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

    /// Loads every context of a kubeconfig document as a cluster.
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

    /// Loads every context of a kubeconfig file as a cluster.
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

    /// Loads every context of a parsed kubeconfig as a cluster.
    pub async fn load(
        &self,
        kubeconfig: kube::config::Kubeconfig,
        origin: &str,
    ) -> Result<usize, ClusterError> {
        let names: Vec<String> = kubeconfig.contexts.iter().map(|c| c.name.clone()).collect();
        if names.is_empty() {
            return Err(ClusterError::NoContexts(origin.to_string()));
        }
        for name in &names {
            let options = kube::config::KubeConfigOptions {
                context: Some(name.clone()),
                ..Default::default()
            };
            let config = kube::Config::from_custom_kubeconfig(kubeconfig.clone(), &options)
                .await
                .map_err(|e| ClusterError::Context {
                    context: name.clone(),
                    message: e.to_string(),
                })?;
            let server = config.cluster_url.to_string();
            let client = kube::Client::try_from(config).map_err(|e| ClusterError::Context {
                context: name.clone(),
                message: e.to_string(),
            })?;
            self.insert(Cluster::new(name.clone(), server, client));
        }
        Ok(names.len())
    }
}
