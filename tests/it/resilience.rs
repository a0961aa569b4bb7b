//! Upstream failures stay invisible (or are reported once) and slow clients
//! are cut off without hurting anyone else.

use std::time::Duration;

use crate::support::*;
use kubemux::hub::HubConfig;
use kubemux::server::ServerConfig;
use kubemux::upstream::UpstreamConfig;
use kubemux::ws::outbound::QueueLimits;
use kubemux_sim::{SimConfig, WatchFailure};
use serde_json::{Value, json};

fn fast_retries() -> HubConfig {
    HubConfig {
        upstream: UpstreamConfig {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(400),
            rewatch_delay: Duration::from_millis(20),
            ..UpstreamConfig::default()
        },
        ..quick_hub()
    }
}

fn churning() -> SimConfig {
    SimConfig {
        churn_rate: 100.0,
        ..SimConfig::default()
    }
}

/// Follows one subscription: applies DATA events, counts ERROR frames, and
/// checks that versions only move forward after the initial state (which
/// ends with the `initial-events-end` bookmark).
struct Follower {
    client: Client,
    query: String,
    applied: Applied,
    errors: Vec<String>,
    last_rv: u64,
    live_events: usize,
    in_snapshot: bool,
    delivered: std::collections::HashSet<(String, u64, String)>,
}

impl Follower {
    async fn start(env: &Env, path: &str, extra: &str) -> Follower {
        let query =
            format!("watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan{extra}");
        let mut client = env.client().await;
        client.request(path, &query).await;
        let mut f = Follower {
            client,
            query,
            applied: Applied::default(),
            errors: Vec::new(),
            last_rv: 0,
            live_events: 0,
            in_snapshot: true,
            delivered: Default::default(),
        };
        while f.in_snapshot {
            assert!(f.read(PATIENCE).await, "initial state arrives");
        }
        f
    }

    /// Reads one frame; false if none came within `wait`.
    async fn read(&mut self, wait: Duration) -> bool {
        let Some(frame) = self.client.next_within(wait).await else {
            return false;
        };
        assert_eq!(frame["query"], self.query.as_str());
        match frame["type"].as_str().unwrap() {
            "DATA" => {
                let ev: Value = serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
                assert_ne!(
                    ev["type"], "ERROR",
                    "a subscriber must never see an upstream 410: {ev}"
                );
                let rv: u64 = ev["object"]["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                if ev["type"] == "BOOKMARK" {
                    let marker =
                        &ev["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"];
                    if marker == "true" {
                        self.in_snapshot = false;
                        self.last_rv = rv;
                    }
                    return true;
                }
                if !self.in_snapshot {
                    // Versions never go back; two events share one only when a
                    // relist reports a deletion at the listing's version.
                    assert!(
                        rv >= self.last_rv,
                        "versions move forward: {rv} after {}",
                        self.last_rv
                    );
                    let id = (object_key(&ev["object"]), rv, ev["type"].to_string());
                    assert!(self.delivered.insert(id), "no event twice: {ev}");
                    self.live_events += 1;
                    self.last_rv = rv;
                }
                self.applied.apply(&ev);
            }
            "ERROR" => {
                let data: Value = serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
                self.errors
                    .push(data["error"].as_str().unwrap().to_string());
            }
            other => panic!("unexpected {other} frame: {frame}"),
        }
        true
    }

    async fn read_live(&mut self, n: usize) {
        let target = self.live_events + n;
        while self.live_events < target {
            assert!(self.read(PATIENCE).await, "events keep coming");
        }
    }

    /// Reads until the applied state equals the server's.
    async fn converge(&mut self, env: &Env, resource: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let (objects, _) = env.sim.store().list(resource, None, None, None).unwrap();
            if self.applied.versions() == versions_of(&objects) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "state never converged"
            );
            self.read(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_upstream_watches_are_invisible() {
    let env = start(churning(), fast_retries(), ServerConfig::default()).await;
    let mut f = Follower::start(&env, "/api/v1/pods", "").await;
    f.read_live(20).await;
    assert_eq!(env.sim.watch_requests("pods"), 1);
    env.sim.faults().drop_watches();
    f.read_live(50).await;
    env.sim.set_churn_rate(0.0);
    f.converge(&env, "pods").await;
    assert!(f.errors.is_empty(), "no ERROR frames: {:?}", f.errors);
    assert_eq!(env.sim.watch_requests("pods"), 2, "exactly one re-watch");
    assert_eq!(env.sim.list_requests("pods"), 1, "no relist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_410_relists_and_subscribers_stay_exact() {
    let env = start(churning(), fast_retries(), ServerConfig::default()).await;
    let mut f = Follower::start(&env, "/api/v1/pods", "").await;
    f.read_live(20).await;
    env.sim.faults().fail_next_watches(1, WatchFailure::Expired);
    env.sim.faults().drop_watches();
    env.eventually("a relist happened", || env.sim.list_requests("pods") == 2)
        .await;
    f.read_live(30).await;
    env.sim.set_churn_rate(0.0);
    f.converge(&env, "pods").await;
    assert!(f.errors.is_empty(), "no ERROR frames: {:?}", f.errors);
    let text = env.metrics_text().await;
    assert_eq!(
        metric(&text, "kubemux_upstream_lists_total{cluster=\"sim\"}"),
        Some(2.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_while_disconnected_relists_without_a_client_410() {
    let env = start(
        SimConfig::default(),
        fast_retries(),
        ServerConfig::default(),
    )
    .await;
    let mut f = Follower::start(&env, "/api/v1/pods", "").await;
    env.sim.faults().stall_watches();
    for i in 0..5 {
        let obj = json!({"metadata": {"name": format!("during-{i}"), "namespace": "default"}, "spec": {"containers": []}});
        env.sim
            .store()
            .create("pods", Some("default"), obj)
            .unwrap();
    }
    env.sim
        .store()
        .delete("pods", Some("default"), "during-0")
        .unwrap();
    env.sim.faults().compact_history();
    env.sim.faults().drop_watches();
    env.sim.faults().resume_watches();
    f.converge(&env, "pods").await;
    assert!(f.errors.is_empty(), "no ERROR frames: {:?}", f.errors);
    assert!(env.sim.list_requests("pods") >= 2, "the proxy relisted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_give_one_error_per_subscription_then_resume() {
    let env = start(churning(), fast_retries(), ServerConfig::default()).await;
    let mut f = Follower::start(&env, "/api/v1/pods", "").await;
    let mut g = Follower::start(&env, "/api/v1/nodes", "").await;
    f.read_live(10).await;
    env.sim
        .faults()
        .refuse_connections(Duration::from_millis(1500));
    while f.errors.is_empty() {
        assert!(f.read(PATIENCE).await);
    }
    f.read_live(50).await;
    env.sim.set_churn_rate(0.0);
    f.converge(&env, "pods").await;
    g.converge(&env, "nodes").await;
    while g.read(Duration::from_millis(300)).await {}
    assert_eq!(
        f.errors.len(),
        1,
        "one ERROR for the outage: {:?}",
        f.errors
    );
    assert_eq!(
        g.errors.len(),
        1,
        "one ERROR for the outage: {:?}",
        g.errors
    );
    assert!(
        f.errors[0].contains("upstream watch interrupted"),
        "{}",
        f.errors[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_and_others_get_everything() {
    let env = start(
        SimConfig::default(),
        quick_hub(),
        ServerConfig {
            queue: QueueLimits {
                max_bytes: 1 << 20,
                max_frames: 4096,
                ..QueueLimits::default()
            },
            ..ServerConfig::default()
        },
    )
    .await;
    let mut stuck = env.client().await;
    stuck.request("/api/v1/configmaps", "watch=1").await;
    let mut reader = Follower::start(&env, "/api/v1/configmaps", "&timeoutSeconds=3600").await;
    let payload = "x".repeat(2048);
    let store = env.sim.store().clone();
    const N: usize = 8_000;
    let producer = tokio::spawn(async move {
        for i in 0..N {
            churn_configmap(&store, i, &payload);
            if i % 5 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    reader.read_live(N).await;
    producer.await.unwrap();
    reader.converge(&env, "configmaps").await;
    assert!(
        reader.errors.is_empty(),
        "the reading client is unaffected: {:?}",
        reader.errors
    );
    let text = env.metrics_text().await;
    assert_eq!(
        metric(&text, "kubemux_slow_consumer_terminations_total"),
        Some(1.0),
        "{text}"
    );
    let queued = metric(&text, "kubemux_queue_bytes").unwrap();
    assert!(
        queued <= ((1 << 20) + 64 * 1024) as f64,
        "queues stay bounded: {queued}"
    );
    let mut saw_error = false;
    loop {
        let frame = stuck.frame().await;
        match frame["type"].as_str().unwrap() {
            "ERROR" => {
                let data: Value = serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
                assert!(data["error"].as_str().unwrap().contains("slow consumer"));
                saw_error = true;
            }
            "COMPLETE" => break,
            _ => {}
        }
    }
    assert!(saw_error);
}

/// Regression (chaos seed 1): a shared watch whose only subscriber was cut
/// as a slow consumer kept its upstream watch forever, because the cut
/// subscriber's handle found nothing to remove and never started the linger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_whose_subscribers_were_all_cut_stops_after_its_linger() {
    let env = start(
        SimConfig::default(),
        quick_hub(),
        ServerConfig {
            queue: QueueLimits {
                max_bytes: 256 * 1024,
                max_frames: 1024,
                ..QueueLimits::default()
            },
            ..ServerConfig::default()
        },
    )
    .await;
    let mut stuck = env.client().await;
    stuck.request("/api/v1/configmaps", "watch=1").await;
    env.eventually("the watch started", || {
        env.sim.active_watches("configmaps") == 1
    })
    .await;
    let payload = "x".repeat(2048);
    let store = env.sim.store();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for i in 0.. {
        churn_configmap(store, i, &payload);
        if i % 100 == 0 {
            let text = env.metrics_text().await;
            if metric(&text, "kubemux_slow_consumer_terminations_total") == Some(1.0) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the stuck client was never cut"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // The stuck client is still connected; its subscription is gone, and so
    // must the upstream watch be once the linger has passed.
    env.eventually("the upstream watch stopped", || {
        env.sim.active_watches("configmaps") == 0
    })
    .await;
    let text = env.metrics_text().await;
    assert_eq!(
        metric(&text, "kubemux_upstream_watches{cluster=\"sim\"}"),
        Some(0.0),
        "{text}"
    );
    drop(stuck);
}
