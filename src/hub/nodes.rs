//! A cluster's node counts, read from a live shared nodes watch's store.
//!
//! The counts are never kept apart from a watch: a number remembered after
//! its watch stopped would be presented as current while nodes come and
//! go. So they are known exactly while some unselected `/api/v1/nodes`
//! watch of the cluster runs (a dashboard's, the notification feed's, a
//! Headlamp client's) and has listed, and are otherwise reported unknown,
//! with the reason.

use std::collections::HashMap;

use kubemux_vocab::object::node_is_ready;
use parking_lot::Mutex;

use super::{Hub, WatchKey};

const NODES: &str = "/api/v1/nodes";

/// Nodes whose Ready condition is True, and all nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeCounts {
    /// Ready nodes.
    pub ready: u32,
    /// All nodes.
    pub total: u32,
}

/// Why a cluster's node counts are not known right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodesUnknown {
    /// Nothing watches the cluster's nodes.
    #[error("no nodes watch runs on this cluster")]
    NotWatched,
    /// A nodes watch exists but has not listed yet.
    #[error("the nodes watch has not listed yet")]
    Listing,
    /// The nodes watch lost the API server and is retrying; its store may
    /// be behind.
    #[error("the nodes watch is reconnecting to the API server")]
    Reconnecting,
}

/// The last count per cluster, by the watch and store version it was taken
/// at, so a status page polling many times between node changes parses
/// the nodes once. One entry per cluster at most.
#[derive(Default)]
pub(crate) struct CountMemo(Mutex<HashMap<String, (WatchKey, String, NodeCounts)>>);

/// Whether a Node object's Ready condition is True (an unreadable object
/// counts as not ready).
fn is_ready(raw: &[u8]) -> bool {
    serde_json::from_slice(raw).is_ok_and(|node| node_is_ready(&node))
}

impl Hub {
    /// `cluster`'s node counts from a live, listed, unselected nodes watch
    /// of any identity (an unselected LIST of nodes is every node whoever
    /// makes it), or why they are not known.
    pub fn node_counts(&self, cluster: &str) -> Result<NodeCounts, NodesUnknown> {
        let candidates: Vec<_> = self
            .inner
            .watches
            .iter()
            .filter(|w| {
                let key = w.key();
                key.cluster() == cluster && key.path() == NODES && key.selectors().is_empty()
            })
            .map(|w| w.value().clone())
            .collect();
        if candidates.is_empty() {
            return Err(NodesUnknown::NotWatched);
        }
        let mut why = NodesUnknown::Listing;
        for watch in candidates {
            if watch.in_outage() {
                why = NodesUnknown::Reconnecting;
                continue;
            }
            let Some(snapshot) = watch.snapshot() else {
                continue;
            };
            let (version, items) = (snapshot.resource_version, snapshot.objects);
            let mut memo = self.inner.node_counts.0.lock();
            if let Some((key, at, counts)) = memo.get(cluster)
                && key == watch.key()
                && *at == version
            {
                return Ok(*counts);
            }
            let counts = NodeCounts {
                ready: u32::try_from(items.iter().filter(|ev| is_ready(ev.object())).count())
                    .unwrap_or(u32::MAX),
                total: u32::try_from(items.len()).unwrap_or(u32::MAX),
            };
            memo.insert(cluster.to_string(), (watch.key().clone(), version, counts));
            return Ok(counts);
        }
        Err(why)
    }

    /// Forgets a removed cluster's memo.
    pub(crate) fn forget_node_counts(&self, cluster: &str) {
        self.inner.node_counts.0.lock().remove(cluster);
    }
}

#[cfg(test)]
mod tests {
    use super::is_ready;

    #[test]
    fn readiness_is_the_ready_condition() {
        assert!(is_ready(
            br#"{"status":{"conditions":[{"type":"MemoryPressure","status":"False"},{"type":"Ready","status":"True"}]}}"#
        ));
        assert!(!is_ready(
            br#"{"status":{"conditions":[{"type":"Ready","status":"Unknown"}]}}"#
        ));
        assert!(!is_ready(br#"{"metadata":{}}"#));
        assert!(!is_ready(b"not json"));
    }
}
