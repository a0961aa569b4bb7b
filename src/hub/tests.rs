//! The hub against the real simulated API server on loopback: who starts a
//! shared watch, what a joiner is served from the history and what only
//! the cluster can answer, and the admission and identity rules a store
//! shares with a subscription.

use std::sync::Arc;
use std::time::Duration;

use kubemux_sim::{SimConfig, SimServer};
use parking_lot::Mutex;
use serde_json::json;

use super::{
    EndReason, HistoryLimits, Hub, HubConfig, Identity, Overflow, StoreEnded, SubscribeError,
    SubscribeRequest, Subscriber,
};
use crate::cluster::Registry;
use crate::metrics::{Metrics, OutcomeLabel};
use crate::upstream::event::WatchEvent;

const CLUSTER: &str = "sim";
const PODS: &str = "/api/v1/namespaces/default/pods";
const NODES: &str = "/api/v1/nodes";
/// Generous bound for what a test waits for; never asserted as a speed.
const PATIENCE: Duration = Duration::from_secs(20);

/// What a subscriber was given, in order.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Recorder {
    fn seen(&self) -> Vec<String> {
        self.0.lock().clone()
    }
}

impl Subscriber for Recorder {
    fn event(&self, event: &Arc<WatchEvent>) -> Result<(), Overflow> {
        self.0
            .lock()
            .push(format!("{}@{}", event.kind(), event.resource_version()));
        Ok(())
    }
    fn replay(&self, events: Vec<Arc<WatchEvent>>) -> Result<(), Overflow> {
        let versions: Vec<&str> = events.iter().map(|e| e.resource_version()).collect();
        self.0
            .lock()
            .push(format!("replay[{}]", versions.join(" ")));
        Ok(())
    }
    fn warning(&self, _: &str) {}
    fn end(&self, reason: EndReason) {
        self.0.lock().push(format!("end:{reason:?}"));
    }
}

async fn start(config: HubConfig) -> (SimServer, Hub) {
    let sim = SimServer::start(SimConfig {
        initial_pods: 3,
        initial_nodes: 2,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let clusters = registry(&sim).await;
    (sim, Hub::new(config, clusters, Arc::new(Metrics::new())))
}

/// The clusters of `sim`'s kubeconfig: one, named `sim`.
pub(crate) async fn registry(sim: &SimServer) -> Arc<Registry> {
    let registry = Arc::new(Registry::new());
    registry
        .load_kubeconfig_text(&sim.kubeconfig(CLUSTER), "test")
        .await
        .unwrap();
    registry
}

async fn eventually(what: &str, f: impl Fn() -> bool) {
    tokio::time::timeout(PATIENCE, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

fn request<'a>(path: &'a str, query: &'a str, identity: &'a Identity) -> SubscribeRequest<'a> {
    SubscribeRequest {
        cluster: CLUSTER,
        path,
        query,
        identity,
    }
}

fn lists(hub: &Hub) -> u64 {
    hub.metrics()
        .upstream_lists
        .get_or_create(&Metrics::cluster(CLUSTER))
        .get()
}

#[tokio::test]
async fn the_first_holder_starts_the_watch_and_later_ones_join_it() {
    let (sim, hub) = start(HubConfig::default()).await;
    assert_eq!(hub.watch_count(), 0);
    let first = Arc::new(Recorder::default());
    let _a = hub
        .subscribe(request(PODS, "watch=1", &Identity::Proxy), first.clone())
        .unwrap();
    assert_eq!(hub.watch_count(), 1);
    let store = hub.store(request(PODS, "", &Identity::Proxy)).unwrap();
    store.wait_until_synced().await.unwrap();
    assert_eq!(
        first.seen().len(),
        1,
        "the first listing served the subscriber that caused it: {:?}",
        first.seen()
    );
    let second = Arc::new(Recorder::default());
    let b = hub
        .subscribe(request(PODS, "watch=1", &Identity::Proxy), second.clone())
        .unwrap();
    assert_eq!(second.seen().len(), 1, "served from the store at once");
    assert_eq!(hub.watch_count(), 1);
    assert_eq!(lists(&hub), 1, "one LIST for every holder");
    assert_eq!(store.key(), b.key());
    let in_cluster = sim
        .store()
        .list("pods", Some("default"), None, None)
        .unwrap()
        .0;
    assert_eq!(store.snapshot().unwrap().objects.len(), in_cluster.len());
}

#[tokio::test]
async fn a_version_in_the_history_is_replayed_and_one_the_cluster_compacted_gets_its_410() {
    let (sim, hub) = start(HubConfig {
        history: HistoryLimits {
            max_events: 2,
            max_age: Duration::from_secs(600),
        },
        ..HubConfig::default()
    })
    .await;
    let store = hub.store(request(PODS, "", &Identity::Proxy)).unwrap();
    store.wait_until_synced().await.unwrap();
    let base = sim.store().resource_version();
    for name in ["h-1", "h-2", "h-3", "h-4"] {
        let pod =
            json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"containers": []}});
        sim.store().create("pods", Some("default"), pod).unwrap();
    }
    let latest = sim.store().resource_version();
    eventually("the store holds the cluster's version", || {
        store
            .snapshot()
            .is_some_and(|s| s.resource_version == latest.to_string())
    })
    .await;
    let versions: Vec<u64> = (base + 1..=latest).collect();
    assert_eq!(versions.len(), 4, "one version per create");

    let in_ring = Arc::new(Recorder::default());
    let query = format!("watch=1&resourceVersion={}", versions[1]);
    let _in_ring = hub
        .subscribe(request(PODS, &query, &Identity::Proxy), in_ring.clone())
        .unwrap();
    assert_eq!(
        in_ring.seen(),
        [format!("replay[{} {}]", versions[2], versions[3])],
        "the history after its version, without asking the cluster"
    );

    sim.faults().compact_history();
    let too_old = Arc::new(Recorder::default());
    let query = format!("watch=1&resourceVersion={}", versions[0]);
    let _too_old = hub
        .subscribe(request(PODS, &query, &Identity::Proxy), too_old.clone())
        .unwrap();
    eventually("the cluster's answer reached the subscriber", || {
        too_old.seen().iter().any(|s| s.starts_with("end:"))
    })
    .await;
    let seen = too_old.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].starts_with("ERROR"), "the cluster's 410: {seen:?}");
    assert_eq!(seen[1], "end:Expired");
    let expired = hub
        .metrics()
        .resumes
        .get_or_create(&OutcomeLabel { outcome: "expired" })
        .get();
    assert_eq!(expired, 1);
}

#[tokio::test]
async fn a_store_is_admitted_and_keyed_by_identity_like_a_subscription() {
    let (_sim, hub) = start(HubConfig {
        max_watches_per_cluster: 3,
        max_watches_per_identity: 1,
        ..HubConfig::default()
    })
    .await;
    let one = Identity::Bearer("token-one".into());
    let two = Identity::Bearer("token-two".into());
    let one_pods = hub.store(request(PODS, "", &one)).unwrap();
    let refused = hub.store(request(NODES, "", &one)).err();
    assert!(
        matches!(
            refused,
            Some(SubscribeError::TooManyWatches {
                scope: "for this identity",
                ..
            })
        ),
        "{refused:?}"
    );
    let two_pods = hub.store(request(PODS, "", &two)).unwrap();
    let proxy_pods = hub.store(request(PODS, "", &Identity::Proxy)).unwrap();
    assert_ne!(one_pods.key(), two_pods.key(), "each token has its own");
    assert_ne!(one_pods.key(), proxy_pods.key());
    assert!(proxy_pods.key().identity().is_none());
    let refused = hub.store(request(NODES, "", &Identity::Proxy)).err();
    assert!(
        matches!(
            refused,
            Some(SubscribeError::TooManyWatches {
                scope: "in all",
                ..
            })
        ),
        "{refused:?}"
    );
    let joined = hub.store(request(PODS, "", &one)).unwrap();
    assert_eq!(joined.key(), one_pods.key(), "joining is always allowed");
    assert!(matches!(
        hub.store(request("/api/v1/pods/x/y", "", &Identity::Proxy)),
        Err(SubscribeError::Key(_))
    ));
    assert!(matches!(
        hub.store(SubscribeRequest {
            cluster: "elsewhere",
            ..request(PODS, "", &Identity::Proxy)
        }),
        Err(SubscribeError::UnknownCluster(_))
    ));
    hub.shutdown();
    assert_eq!(one_pods.wait_until_synced().await, Err(StoreEnded));
    assert!(matches!(
        hub.store(request(PODS, "", &Identity::Proxy)),
        Err(SubscribeError::ShuttingDown)
    ));
}
