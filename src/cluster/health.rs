//! Background health probes: is each cluster's API server answering, and
//! with which version.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tracing::{info, warn};

use super::{Cluster, Registry};

/// What the last probe of a cluster found.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// `None` until the first probe finished.
    pub reachable: Option<bool>,
    /// The API server's `gitVersion`, once known.
    pub version: Option<String>,
    /// The last probe error, if the last probe failed.
    pub last_error: Option<String>,
    /// When the API server last answered (RFC 3339).
    pub last_seen: Option<String>,
    /// When `reachable` or `version` last changed (RFC 3339).
    pub last_change: Option<String>,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl Cluster {
    /// Probes the API server once (`GET /version`) and records the result.
    pub async fn probe(&self, timeout: Duration) {
        let result = tokio::time::timeout(timeout, self.client.apiserver_version()).await;
        let mut health = self.health.write();
        let before = (health.reachable, health.version.clone());
        match result {
            Ok(Ok(info)) => {
                health.reachable = Some(true);
                health.version = Some(info.git_version);
                health.last_error = None;
                health.last_seen = Some(now_rfc3339());
            }
            Ok(Err(e)) => {
                health.reachable = Some(false);
                health.last_error = Some(e.to_string());
            }
            Err(_) => {
                health.reachable = Some(false);
                health.last_error = Some(format!("no answer within {timeout:?}"));
            }
        }
        if before != (health.reachable, health.version.clone()) {
            health.last_change = Some(now_rfc3339());
            match health.reachable {
                Some(true) => {
                    info!(cluster = %self.id, version = ?health.version, "cluster reachable")
                }
                _ => warn!(cluster = %self.id, error = ?health.last_error, "cluster unreachable"),
            }
        }
    }
}

impl Registry {
    /// Probes every cluster now and then every `interval`, until the
    /// returned task is aborted.
    pub fn spawn_health_probes(
        self: &Arc<Self>,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let registry = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let clusters = registry.all();
                let timeout = interval.min(Duration::from_secs(10));
                futures::future::join_all(clusters.iter().map(|c| c.probe(timeout))).await;
            }
        })
    }
}
