//! The resume table (DESIGN §3): how a REQUEST starts, by its resourceVersion,
//! and that the history serves resumes without upstream requests.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use kubemux::hub::{HistoryLimits, HubConfig};
use kubemux::server::ServerConfig;
use kubemux::sim::SimConfig;
use serde_json::{Value, json};

fn pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]}
    })
}

fn create(env: &Env, name: &str) -> String {
    let obj = env
        .sim
        .store()
        .create("pods", Some("default"), pod(name))
        .unwrap();
    obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A subscriber on the default-namespace pods that has received its snapshot.
async fn primed(env: &Env) -> Client {
    let (pods, _) = env
        .sim
        .store()
        .list("pods", Some("default"), None, None)
        .unwrap();
    let mut c = env.client().await;
    c.request("/api/v1/namespaces/default/pods", "watch=1")
        .await;
    c.events(pods.len()).await;
    c
}

const PATH: &str = "/api/v1/namespaces/default/pods";

async fn assert_upstream_untouched(env: &Env) {
    // The shared watch's own request follows its LIST; wait for it first.
    env.eventually("the shared watch is open", || {
        env.sim.watch_requests("pods") >= 1
    })
    .await;
    assert_eq!(env.sim.watch_requests("pods"), 1, "one upstream watch only");
    assert_eq!(env.sim.list_requests("pods"), 1, "one upstream list only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_zero_gets_the_snapshot() {
    let env = start_default().await;
    let mut first = primed(&env).await;
    let (pods, rv) = env
        .sim
        .store()
        .list("pods", Some("default"), None, None)
        .unwrap();
    let mut c = env.client().await;
    c.request(PATH, "watch=1&resourceVersion=0").await;
    let evs = c.events(pods.len()).await;
    assert!(evs.iter().all(|e| e["type"] == "ADDED"));
    let mut applied = Applied::default();
    evs.iter().for_each(|e| applied.apply(e));
    assert_eq!(applied.versions(), versions_of(&pods));
    assert!(c.next_within(Duration::from_millis(300)).await.is_none());
    assert!(rv > 0);
    assert_upstream_untouched(&env).await;
    drop(first.ws.close(None).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_in_history_replays_only_newer_events() {
    let env = start_default().await;
    let mut first = primed(&env).await;
    let rv_a = create(&env, "a");
    let rv_b = create(&env, "b");
    let rv_c = create(&env, "c");
    first.events(3).await;
    let mut c = env.client().await;
    c.request(PATH, &format!("watch=1&resourceVersion={rv_a}"))
        .await;
    let evs = c.events(2).await;
    let got: Vec<&str> = evs
        .iter()
        .map(|e| e["object"]["metadata"]["resourceVersion"].as_str().unwrap())
        .collect();
    assert_eq!(got, [rv_b.as_str(), rv_c.as_str()]);
    assert!(evs.iter().all(|e| e["type"] == "ADDED"));
    assert!(
        c.next_within(Duration::from_millis(300)).await.is_none(),
        "nothing else replayed"
    );
    assert_upstream_untouched(&env).await;
    let text = env.metrics_text().await;
    assert_eq!(
        metric(&text, "kubemux_resumes_total{outcome=\"history\"}"),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_older_than_history_gets_one_in_band_410_then_complete() {
    let env = start(
        SimConfig::default(),
        HubConfig {
            history: HistoryLimits {
                max_events: 3,
                max_age: Duration::from_secs(600),
            },
            ..quick_hub()
        },
        ServerConfig::default(),
    )
    .await;
    let mut first = primed(&env).await;
    let old = create(&env, "a");
    for name in ["b", "c", "d", "e"] {
        create(&env, name);
    }
    first.events(5).await;
    let mut c = env.client().await;
    c.request(PATH, &format!("watch=1&resourceVersion={old}"))
        .await;
    let (frame, ev) = c.event().await;
    assert_eq!(frame["query"], format!("watch=1&resourceVersion={old}"));
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["kind"], "Status");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");
    assert!(
        ev["object"]["message"]
            .as_str()
            .unwrap()
            .starts_with("too old resource version")
    );
    assert_eq!(c.frame().await["type"], "COMPLETE");
    assert!(c.next_within(Duration::from_millis(300)).await.is_none());
    assert_upstream_untouched(&env).await;
    let text = env.metrics_text().await;
    assert_eq!(
        metric(&text, "kubemux_resumes_total{outcome=\"expired\"}"),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_newer_than_seen_waits_for_it() {
    let env = start(
        SimConfig::default(),
        HubConfig {
            wait_limit: Duration::from_secs(15),
            ..quick_hub()
        },
        ServerConfig::default(),
    )
    .await;
    let _first = primed(&env).await;
    let now = env.sim.store().resource_version();
    let mut c = env.client().await;
    c.request(PATH, &format!("watch=1&resourceVersion={}", now + 1))
        .await;
    assert!(
        c.next_within(Duration::from_millis(300)).await.is_none(),
        "waits, sends nothing"
    );
    create(&env, "reaches-the-version");
    let rv = create(&env, "after-it");
    let (_, ev) = c.event().await;
    assert_eq!(ev["object"]["metadata"]["name"], "after-it");
    assert_eq!(ev["object"]["metadata"]["resourceVersion"], rv.as_str());
    assert_upstream_untouched(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_runs_out_gets_the_410_style_error() {
    let env = start(
        SimConfig::default(),
        HubConfig {
            wait_limit: Duration::from_millis(300),
            ..quick_hub()
        },
        ServerConfig::default(),
    )
    .await;
    let _first = primed(&env).await;
    let mut c = env.client().await;
    c.request(PATH, "watch=1&resourceVersion=999999").await;
    let (_, ev) = c.event().await;
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(c.frame().await["type"], "COMPLETE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_initial_events_ends_with_the_annotated_bookmark() {
    let env = start_default().await;
    let _first = primed(&env).await;
    let (pods, rv) = env
        .sim
        .store()
        .list("pods", Some("default"), None, None)
        .unwrap();
    let mut c = env.client().await;
    c.request(
        PATH,
        "watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true",
    )
    .await;
    let evs = c.events(pods.len() + 1).await;
    assert!(evs[..pods.len()].iter().all(|e| e["type"] == "ADDED"));
    let bookmark = &evs[pods.len()];
    assert_eq!(bookmark["type"], "BOOKMARK");
    assert_eq!(
        bookmark["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert_eq!(
        bookmark["object"]["metadata"]["resourceVersion"],
        rv.to_string()
    );
    assert_eq!(bookmark["object"]["kind"], "Pod");
    let new_rv = create(&env, "live");
    let (_, ev) = c.event().await;
    assert_eq!(ev["object"]["metadata"]["resourceVersion"], new_rv.as_str());
    assert_upstream_untouched(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headlamp_resubscribe_pattern_costs_nothing_upstream() {
    let env = start(
        SimConfig::default(),
        HubConfig {
            linger: Duration::ZERO,
            ..quick_hub()
        },
        ServerConfig::default(),
    )
    .await;
    let mut witness = primed(&env).await;
    let start_rv = env.sim.store().resource_version();
    const N: usize = 1000;
    for i in 0..5 {
        create(&env, &format!("churn-{i}"));
    }
    let store = env.sim.store().clone();
    // Live events arrive while the client re-subscribes, as in a browser,
    // at most a few ahead of it (each re-subscription replays the backlog
    // after its version, so a long backlog would only make the test slow).
    let progress = Arc::new(AtomicUsize::new(0));
    let acked = progress.clone();
    let producer = tokio::spawn(async move {
        for i in 0..N {
            while i >= acked.load(Ordering::Relaxed) + 10 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let patch = json!({"metadata": {"labels": {"step": i.to_string()}}});
            store
                .merge_patch("pods", Some("default"), &format!("churn-{}", i % 5), &patch)
                .ok();
        }
    });
    let mut c = env.client().await;
    let mut query = format!("watch=1&resourceVersion={start_rv}");
    c.request(PATH, &query).await;
    let mut seen = Vec::new();
    while seen.len() < N + 5 {
        let frame = c.frame().await;
        if frame["query"] != query.as_str() {
            continue;
        }
        assert_eq!(frame["type"], "DATA", "{frame}");
        let ev: Value = serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
        let rv = ev["object"]["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string();
        seen.push(rv.clone());
        progress.store(seen.len(), Ordering::Relaxed);
        let old = std::mem::replace(&mut query, format!("watch=1&resourceVersion={rv}"));
        c.request(PATH, &query).await;
        c.close(PATH, &old).await;
    }
    producer.await.unwrap();
    let expected: Vec<String> = witness
        .events(N + 5)
        .await
        .iter()
        .map(|e| {
            e["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(seen, expected, "every event exactly once, in order");
    assert_upstream_untouched(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_timeout_completes_only_that_subscriber() {
    let env = start_default().await;
    let (pods, _) = env
        .sim
        .store()
        .list("pods", Some("default"), None, None)
        .unwrap();
    let mut short = env.client().await;
    short.request(PATH, "watch=1&timeoutSeconds=2").await;
    short.events(pods.len()).await;
    let mut long = primed(&env).await;
    loop {
        let frame = short.frame().await;
        if frame["type"] == "COMPLETE" {
            assert_eq!(frame["query"], "watch=1&timeoutSeconds=2");
            break;
        }
    }
    let rv = create(&env, "after-timeout");
    let (_, ev) = long.event().await;
    assert_eq!(ev["object"]["metadata"]["resourceVersion"], rv.as_str());
    assert!(
        short
            .next_within(Duration::from_millis(300))
            .await
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_the_cache_cannot_place_is_forwarded_upstream() {
    let env = start_default().await;
    let _first = primed(&env).await;
    let mut c = env.client().await;
    c.request(PATH, "watch=1&resourceVersion=not-a-number")
        .await;
    let frame = c.frame().await;
    assert_eq!(frame["type"], "ERROR", "{frame}");
    let data: Value = serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
    assert!(
        data["error"].as_str().unwrap().contains("400"),
        "the API server's own answer is relayed: {data}"
    );
    assert_eq!(c.frame().await["type"], "COMPLETE");
    assert_eq!(
        env.sim.watch_requests("pods"),
        2,
        "the resume went to the API server"
    );
    let text = env.metrics_text().await;
    assert_eq!(
        metric(&text, "kubemux_resumes_total{outcome=\"forwarded\"}"),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_bookmarks_go_only_to_subscribers_that_asked() {
    let env = start(
        SimConfig::default(),
        HubConfig {
            bookmark_interval: Duration::from_millis(200),
            ..quick_hub()
        },
        ServerConfig::default(),
    )
    .await;
    let mut plain = primed(&env).await;
    let (pods, rv) = env
        .sim
        .store()
        .list("pods", Some("default"), None, None)
        .unwrap();
    let mut asks = env.client().await;
    asks.request(PATH, "watch=1&allowWatchBookmarks=true").await;
    asks.events(pods.len()).await;
    let (_, ev) = asks.event().await;
    assert_eq!(ev["type"], "BOOKMARK");
    assert_eq!(ev["object"]["kind"], "Pod");
    assert_eq!(ev["object"]["apiVersion"], "v1");
    let bookmarked: u64 = ev["object"]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(bookmarked >= rv);
    assert!(
        plain
            .next_within(Duration::from_millis(600))
            .await
            .is_none(),
        "no bookmarks without allowWatchBookmarks"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_the_cluster_does_not_serve_ends_with_error_and_complete() {
    let env = start_default().await;
    let mut c = env.client().await;
    c.request("/apis/example.com/v1/widgets", "watch=1").await;
    let frame = c.frame().await;
    assert_eq!(frame["type"], "ERROR", "{frame}");
    assert_eq!(frame["path"], "/apis/example.com/v1/widgets");
    let data: Value = serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
    assert!(data["error"].as_str().unwrap().contains("404"), "{data}");
    assert_eq!(c.frame().await["type"], "COMPLETE");
    env.eventually("the failed watch leaves the hub", || {
        env.hub.watch_count() == 0
    })
    .await;
    c.request(PATH, "watch=1").await;
    assert_eq!(
        c.event().await.1["type"],
        "ADDED",
        "the connection still works"
    );
}
