//! Seed 001: the cluster-dashboard stream, built from the shared caches.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use kubemux::server::ServerConfig;
use kubemux::sim::SimConfig;
use serde_json::{Value, json};

/// The dashboard's view: pods by namespace/name with their resourceVersions
/// are not in the projection, so compare names, phases and node status.
#[derive(Default, Debug, PartialEq)]
struct View {
    pods: BTreeMap<String, String>,
    nodes: BTreeMap<String, String>,
}

impl View {
    fn from_initial(state: &Value) -> View {
        let mut v = View::default();
        for p in state["data"]["pods"].as_array().unwrap() {
            v.pods.insert(
                format!(
                    "{}/{}",
                    p["namespace"].as_str().unwrap(),
                    p["name"].as_str().unwrap()
                ),
                p["phase"].as_str().unwrap().to_string(),
            );
        }
        for n in state["data"]["nodes"].as_array().unwrap() {
            v.nodes.insert(
                n["name"].as_str().unwrap().to_string(),
                n["status"].as_str().unwrap().to_string(),
            );
        }
        v
    }

    fn apply(&mut self, event: &Value) {
        let d = &event["data"];
        match (
            event["type"].as_str().unwrap(),
            event["action"].as_str().unwrap(),
        ) {
            ("pod_event", "DELETED") => {
                self.pods.remove(&format!(
                    "{}/{}",
                    d["namespace"].as_str().unwrap(),
                    d["name"].as_str().unwrap()
                ));
            }
            ("pod_event", _) => {
                self.pods.insert(
                    format!(
                        "{}/{}",
                        d["namespace"].as_str().unwrap(),
                        d["name"].as_str().unwrap()
                    ),
                    d["phase"].as_str().unwrap().to_string(),
                );
            }
            ("node_event", "DELETED") => {
                self.nodes.remove(d["name"].as_str().unwrap());
            }
            ("node_event", _) => {
                self.nodes.insert(
                    d["name"].as_str().unwrap().to_string(),
                    d["status"].as_str().unwrap().to_string(),
                );
            }
            other => panic!("unexpected event {other:?}"),
        }
    }

    /// Applies a frame; returns how many events it carried.
    fn take(&mut self, frame: &Value) -> usize {
        match frame["type"].as_str().unwrap() {
            "pod_event" | "node_event" => {
                self.apply(frame);
                1
            }
            "batch" => {
                let events = frame["events"].as_array().unwrap();
                assert_eq!(frame["count"], events.len());
                events.iter().for_each(|e| self.apply(e));
                events.len()
            }
            _ => 0,
        }
    }

    fn of_server(env: &Env, namespaces: Option<&[&str]>) -> View {
        let mut v = View::default();
        let (pods, _) = env.sim.store().list("pods", None, None, None).unwrap();
        for p in pods {
            let ns = p["metadata"]["namespace"].as_str().unwrap();
            if namespaces.is_none_or(|w| w.contains(&ns)) {
                v.pods.insert(
                    format!("{ns}/{}", p["metadata"]["name"].as_str().unwrap()),
                    p["status"]["phase"]
                        .as_str()
                        .unwrap_or("Pending")
                        .to_string(),
                );
            }
        }
        let (nodes, _) = env.sim.store().list("nodes", None, None, None).unwrap();
        for n in nodes {
            let ready = n["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            v.nodes.insert(
                n["metadata"]["name"].as_str().unwrap().to_string(),
                if ready { "Ready" } else { "NotReady" }.to_string(),
            );
        }
        v
    }
}

async fn connect(env: &Env, query: &str) -> (Client, Value) {
    let mut c = Client::connect(&format!("ws://{}/ws/dashboard{query}", env.server.addr())).await;
    let ack = c.frame().await;
    assert_eq!(ack["type"], "connection", "{ack}");
    assert_eq!(ack["status"], "connected");
    assert_eq!(ack["cluster"]["name"], CLUSTER);
    assert!(
        ack["cluster"]["version"]
            .as_str()
            .unwrap()
            .starts_with("v1.")
    );
    let initial = c.frame().await;
    assert_eq!(initial["type"], "initial_state", "{initial}");
    (c, initial)
}

fn dashboard_config() -> ServerConfig {
    ServerConfig {
        dashboard_metrics_interval: Duration::from_secs(1),
        ..ServerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_state_events_and_metrics_match_the_server() {
    let env = start(
        SimConfig {
            churn_rate: 20.0,
            ..SimConfig::default()
        },
        quick_hub(),
        dashboard_config(),
    )
    .await;
    let (mut c, initial) = connect(&env, "?namespaces=default,team-a").await;
    let mut view = View::from_initial(&initial);
    let namespaces: Vec<&str> = initial["data"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(namespaces, ["default", "team-a"]);
    for ns in initial["data"]["namespaces"].as_array().unwrap() {
        let count = view
            .pods
            .keys()
            .filter(|k| k.starts_with(&format!("{}/", ns["name"].as_str().unwrap())))
            .count();
        assert_eq!(ns["podCount"], count, "{ns}");
    }
    let pod = &initial["data"]["pods"][0];
    for field in [
        "name",
        "uid",
        "namespace",
        "phase",
        "status",
        "containers",
        "labels",
        "creationTimestamp",
    ] {
        assert!(!pod[field].is_null(), "pod field {field}: {pod}");
    }
    let node = &initial["data"]["nodes"][0];
    for field in [
        "name",
        "uid",
        "status",
        "role",
        "capacity",
        "conditions",
        "labels",
    ] {
        assert!(!node[field].is_null(), "node field {field}: {node}");
    }
    let mut events = 0;
    while events < 30 {
        events += view.take(&c.frame().await);
    }
    env.sim.set_churn_rate(0.0);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if view == View::of_server(&env, Some(&["default", "team-a"])) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dashboard state never converged"
        );
        if let Some(frame) = c.next_within(Duration::from_millis(200)).await {
            view.take(&frame);
        }
    }
    loop {
        let frame = c.frame().await;
        if frame["type"] == "metrics" {
            let d = &frame["data"];
            assert_eq!(d["totalNodes"], view.nodes.len());
            assert_eq!(
                d["readyNodes"],
                view.nodes.values().filter(|s| *s == "Ready").count()
            );
            assert_eq!(d["totalPods"], view.pods.len());
            assert_eq!(
                d["runningPods"],
                view.pods.values().filter(|s| *s == "Running").count()
            );
            break;
        }
        view.take(&frame);
    }
    c.send(json!({"type": "ping", "timestamp": "2025-01-24T10:03:00Z"}))
        .await;
    loop {
        let frame = c.frame().await;
        if frame["type"] == "pong" {
            assert!(frame["timestamp"].is_string());
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_dashboards_cost_one_watch_per_resource() {
    let env = start(SimConfig::default(), quick_hub(), dashboard_config()).await;
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(connect(&env, "").await.0);
    }
    eventually("one watch each", || {
        env.sim.active_watches("nodes") == 1
            && env.sim.active_watches("pods") == 1
            && env.sim.active_watches("namespaces") == 1
    })
    .await;
    assert_eq!(env.sim.watch_requests("pods"), 1);
    assert_eq!(env.sim.watch_requests("nodes"), 1);
    assert_eq!(env.sim.watch_requests("namespaces"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_batched_within_the_rate_limit_and_nothing_is_lost() {
    let env = start(
        SimConfig::default(),
        quick_hub(),
        ServerConfig {
            dashboard_metrics_interval: Duration::from_secs(600),
            ..ServerConfig::default()
        },
    )
    .await;
    let (mut c, initial) = connect(&env, "?namespaces=default").await;
    let mut view = View::from_initial(&initial);
    let store = env.sim.store().clone();
    let producer = tokio::task::spawn_blocking(move || {
        for i in 0..5000 {
            let name = format!("burst-{}", i % 100);
            let phase = if i % 2 == 0 { "Running" } else { "Pending" };
            let obj = json!({"metadata": {"name": name, "namespace": "default", "labels": {"i": i.to_string()}}, "spec": {"containers": []}, "status": {"phase": phase}});
            if i < 100 {
                store.create("pods", Some("default"), obj).unwrap();
            } else {
                store.update("pods", Some("default"), obj).unwrap();
            }
        }
    });
    producer.await.unwrap();
    let (mut frames, mut events, mut batches) = (0usize, 0usize, 0usize);
    while events < 5000 {
        let frame = c.frame().await;
        assert_ne!(frame["type"], "error", "{frame}");
        frames += 1;
        if frame["type"] == "batch" {
            batches += 1;
        }
        events += view.take(&frame);
    }
    assert_eq!(events, 5000, "every change arrived");
    assert!(
        batches > 0 && frames < 500,
        "{frames} frames, {batches} batches for 5000 events"
    );
    assert_eq!(view, View::of_server(&env, Some(&["default"])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_configmaps_never_appear_and_the_own_listener_works() {
    let env = start(
        SimConfig::default(),
        quick_hub(),
        ServerConfig {
            dashboard_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..dashboard_config()
        },
    )
    .await;
    env.sim.store().create("secrets", Some("default"), json!({"metadata": {"name": "top-secret-xyz", "namespace": "default"}, "data": {"k": "c2VjcmV0"}})).unwrap();
    env.sim.store().create("configmaps", Some("default"), json!({"metadata": {"name": "config-map-xyz", "namespace": "default"}, "data": {"k": "v"}})).unwrap();
    let mut c = Client::connect(&format!("ws://{}/ws", env.server.extra_addrs()[0])).await;
    let mut seen = String::new();
    for _ in 0..2 {
        seen.push_str(&c.frame().await.to_string());
    }
    env.sim
        .store()
        .create(
            "secrets",
            Some("default"),
            json!({"metadata": {"name": "later-secret-xyz", "namespace": "default"}}),
        )
        .unwrap();
    let mut metrics = 0;
    while metrics < 2 {
        let frame = c.frame().await;
        if frame["type"] == "metrics" {
            metrics += 1;
        }
        seen.push_str(&frame.to_string());
    }
    assert!(
        seen.contains("initial_state") && seen.contains("metrics"),
        "{seen}"
    );
    for hidden in [
        "top-secret-xyz",
        "config-map-xyz",
        "later-secret-xyz",
        "c2VjcmV0",
    ] {
        assert!(!seen.contains(hidden), "{hidden} leaked");
    }
    assert_eq!(env.sim.watch_requests("secrets"), 0);
    assert_eq!(env.sim.watch_requests("configmaps"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_cluster_is_invalid_kubeconfig() {
    let env = start_default().await;
    let mut c = Client::connect(&format!(
        "ws://{}/ws/dashboard?cluster=nope",
        env.server.addr()
    ))
    .await;
    let frame = c.frame().await;
    assert_eq!(frame["type"], "error");
    assert_eq!(frame["error"]["code"], "INVALID_KUBECONFIG");
    assert!(frame["error"]["details"].as_str().unwrap().contains("nope"));
}
