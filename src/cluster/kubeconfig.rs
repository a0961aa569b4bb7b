//! Loading clusters from kubeconfig files, and noticing when they change.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kube::config::{KubeConfigOptions, Kubeconfig};
use tracing::{info, warn};

use super::{Cluster, ClusterChange, ClusterError, Registry};

/// Reads and merges kubeconfig files in order (the first file that sets a
/// context, cluster or user wins, as kubectl does with `KUBECONFIG=a:b`).
pub fn read_merged(paths: &[PathBuf]) -> Result<Kubeconfig, ClusterError> {
    let mut merged: Option<Kubeconfig> = None;
    for path in paths {
        let next = Kubeconfig::read_from(path).map_err(|source| ClusterError::Kubeconfig {
            path: path.display().to_string(),
            source,
        })?;
        merged = Some(match merged {
            None => next,
            Some(m) => m.merge(next).map_err(|source| ClusterError::Kubeconfig {
                path: path.display().to_string(),
                source,
            })?,
        });
    }
    merged.ok_or_else(|| ClusterError::NoContexts("(no kubeconfig files given)".into()))
}

/// The paths of `KUBECONFIG` (colon-separated), or `~/.kube/config`.
pub fn default_paths() -> Vec<PathBuf> {
    match std::env::var_os("KUBECONFIG") {
        Some(v) if !v.is_empty() => std::env::split_paths(&v).collect(),
        _ => std::env::var_os("HOME")
            .map(|h| vec![PathBuf::from(h).join(".kube").join("config")])
            .unwrap_or_default(),
    }
}

/// A stable fingerprint of what a context resolves to (context, cluster
/// entry, user entry), to tell an edited context from an unchanged one.
fn fingerprint(kubeconfig: &Kubeconfig, context: &str) -> u64 {
    let ctx = kubeconfig.contexts.iter().find(|c| c.name == context);
    let inner = ctx.and_then(|c| c.context.as_ref());
    let cluster = inner.and_then(|i| kubeconfig.clusters.iter().find(|c| c.name == i.cluster));
    let user = inner
        .and_then(|i| i.user.as_ref())
        .and_then(|u| kubeconfig.auth_infos.iter().find(|a| &a.name == u));
    let text = serde_json::to_string(&(ctx, cluster, user)).unwrap_or_default();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

impl Registry {
    /// Makes the registry's clusters exactly the contexts of `kubeconfig`:
    /// new contexts are added, vanished ones removed, edited ones replaced.
    /// Announces each change. Contexts that cannot be turned into a client
    /// are skipped with a warning (the others still load).
    pub async fn sync_kubeconfig(
        &self,
        kubeconfig: Kubeconfig,
        origin: &str,
    ) -> Result<Vec<ClusterChange>, ClusterError> {
        if kubeconfig.contexts.is_empty() {
            return Err(ClusterError::NoContexts(origin.to_string()));
        }
        let wanted: BTreeMap<String, u64> = kubeconfig
            .contexts
            .iter()
            .map(|c| (c.name.clone(), fingerprint(&kubeconfig, &c.name)))
            .collect();
        let mut changes = Vec::new();
        for (name, print) in &wanted {
            let existing = self.get(name).map(|c| c.fingerprint);
            if existing == Some(*print) {
                continue;
            }
            let options = KubeConfigOptions {
                context: Some(name.clone()),
                ..Default::default()
            };
            let built = async {
                let config =
                    kube::Config::from_custom_kubeconfig(kubeconfig.clone(), &options).await?;
                Cluster::with_config(name.clone(), config)
            };
            match built.await {
                Ok(mut cluster) => {
                    cluster.fingerprint = *print;
                    self.insert(cluster);
                    changes.push(match existing {
                        Some(_) => ClusterChange::Updated(name.clone()),
                        None => ClusterChange::Added(name.clone()),
                    });
                }
                Err(e) => warn!(context = %name, error = %e, "skipping kubeconfig context"),
            }
        }
        for id in self.ids() {
            if !wanted.contains_key(&id) && self.remove(&id) {
                changes.push(ClusterChange::Removed(id));
            }
        }
        if let Some(current) = kubeconfig
            .current_context
            .filter(|c| wanted.contains_key(c))
        {
            self.set_default(&current);
        }
        for change in &changes {
            info!(change = ?change, origin, "cluster registry changed");
            self.announce(change.clone());
        }
        Ok(changes)
    }

    /// Loads `paths` now, then re-reads them whenever one's modification time
    /// changes (checked every `interval`), applying added, edited and
    /// removed contexts while running.
    pub async fn load_and_follow(
        self: &Arc<Self>,
        paths: Vec<PathBuf>,
        interval: Duration,
    ) -> Result<tokio::task::JoinHandle<()>, ClusterError> {
        let origin = describe(&paths);
        self.sync_kubeconfig(read_merged(&paths)?, &origin).await?;
        let registry = self.clone();
        Ok(tokio::spawn(async move {
            let mut seen = stamps(&paths);
            loop {
                tokio::time::sleep(interval).await;
                let now = stamps(&paths);
                if now == seen {
                    continue;
                }
                seen = now;
                match read_merged(&paths) {
                    Ok(kubeconfig) => {
                        if let Err(e) = registry.sync_kubeconfig(kubeconfig, &origin).await {
                            warn!(error = %e, "kubeconfig reload failed; keeping the current clusters");
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "kubeconfig reload failed; keeping the current clusters")
                    }
                }
            }
        }))
    }
}

fn describe(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

fn stamps(paths: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    paths.iter().map(|p| stamp(p)).collect()
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
