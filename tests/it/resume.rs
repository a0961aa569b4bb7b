//! The resume table (DESIGN §3): how a REQUEST starts, by its resourceVersion,
//! and that the history serves resumes without upstream requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::*;
use kubemux::hub::{HistoryLimits, HubConfig};
use kubemux::server::ServerConfig;
use kubemux_sim::SimConfig;
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

fn rv_of(ev: &Value) -> u64 {
    ev["object"]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// A kubemux whose history holds 3 events, a subscriber that has received
/// everything, and a version `old` followed by `n` changes (their versions),
/// so that `old` is older than the history but the simulator still serves it.
async fn past_the_history(n: usize) -> (Env, Client, String, Vec<String>) {
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
    let old = create(&env, "old");
    let later: Vec<String> = (0..n)
        .map(|i| create(&env, &format!("later-{i}")))
        .collect();
    first.events(n + 1).await;
    (env, first, old, later)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_older_than_history_is_backfilled_exactly_once_then_served_locally() {
    let (env, mut first, old, mut later) = past_the_history(4).await;
    assert_upstream_untouched(&env).await;
    let query = format!("watch=1&resourceVersion={old}");
    for client in 0..2 {
        let mut c = env.client().await;
        c.request(PATH, &query).await;
        let evs = c.events(later.len()).await;
        let got: Vec<String> = evs
            .iter()
            .map(|e| {
                e["object"]["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            got, later,
            "client {client}: every event after its version, once, in order"
        );
        let live = create(&env, format!("live-{client}").as_str());
        let (_, ev) = c.event().await;
        assert_eq!(
            ev["object"]["metadata"]["resourceVersion"],
            live.as_str(),
            "then live"
        );
        assert!(c.next_within(Duration::from_millis(300)).await.is_none());
        first.events(1).await;
        later.push(live);
    }
    assert_eq!(
        env.sim.watch_requests("pods"),
        2,
        "one backfill request for the first client, none for the second"
    );
    assert_eq!(env.sim.list_requests("pods"), 1);
    let text = env.metrics_text().await;
    assert_eq!(
        metric(&text, "kubemux_resumes_total{outcome=\"backfilled\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "kubemux_resumes_total{outcome=\"history\"}"),
        Some(1.0),
        "the second client is served from the extended history: {text}"
    );
    assert_eq!(
        metric(&text, "kubemux_backfill_requests_total{cluster=\"sim\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(
        !text.contains("outcome=\"expired\""),
        "no 410 anywhere: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_backfills_from_one_version_share_one_upstream_request() {
    let (env, _first, old, later) = past_the_history(6).await;
    let query = format!("watch=1&resourceVersion={old}");
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut c = env.client().await;
        c.request(PATH, &query).await;
        clients.push(c);
    }
    for c in &mut clients {
        let got: Vec<u64> = c.events(6).await.iter().map(rv_of).collect();
        let want: Vec<u64> = later.iter().map(|v| v.parse().unwrap()).collect();
        assert_eq!(got, want);
    }
    assert!(
        env.sim.watch_requests("pods") <= 3,
        "five clients from one version share their backfills (got {} watch requests)",
        env.sim.watch_requests("pods")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_the_cluster_compacted_gets_the_clusters_own_410_then_complete() {
    let (env, _first, old, _) = past_the_history(4).await;
    env.sim.faults().compact_history();
    // What the API server itself answers to that version.
    let body = http_get_body(
        env.sim.addr(),
        &format!("/api/v1/namespaces/default/pods?watch=1&resourceVersion={old}"),
    )
    .await;
    let line = body.lines().next().expect("one in-band line");
    let theirs: Value = serde_json::from_str(line).unwrap();
    assert_eq!(theirs["object"]["code"], 410, "{line}");

    let mut c = env.client().await;
    c.request(PATH, &format!("watch=1&resourceVersion={old}"))
        .await;
    let (frame, ev) = c.event().await;
    assert_eq!(frame["query"], format!("watch=1&resourceVersion={old}"));
    assert_eq!(ev, theirs, "the API server's Status, verbatim");
    assert_eq!(c.frame().await["type"], "COMPLETE");
    assert!(c.next_within(Duration::from_millis(300)).await.is_none());
    let text = env.metrics_text().await;
    assert_eq!(
        metric(&text, "kubemux_resumes_total{outcome=\"expired\"}"),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_newer_than_seen_waits_for_it() {
    let env = start_default().await;
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
async fn a_version_seconds_ahead_keeps_the_stream_open_until_it_exists() {
    let env = start_default().await;
    let _first = primed(&env).await;
    let target = env.sim.store().resource_version() + 60;
    let mut c = env.client().await;
    c.request(PATH, &format!("watch=1&resourceVersion={target}"))
        .await;
    // 10 changes a second for six seconds: the version exists only at the end.
    let mut made = Vec::new();
    for i in 0..70 {
        made.push(create(&env, &format!("ahead-{i}")).parse::<u64>().unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let owed: Vec<u64> = made.into_iter().filter(|rv| *rv > target).collect();
    assert!(!owed.is_empty());
    let got: Vec<u64> = c.events(owed.len()).await.iter().map(rv_of).collect();
    assert_eq!(
        got, owed,
        "exactly the events after the version, no ERROR before them"
    );
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

/// One ERROR naming `resourceVersion`, then COMPLETE.
async fn assert_refused_version(c: &mut Client, query: &str) {
    let frame = c.frame().await;
    assert_eq!(frame["type"], "ERROR", "{frame}");
    assert_eq!(frame["query"], query);
    let data: Value = serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
    let error = data["error"].as_str().unwrap();
    assert!(
        error.starts_with("resourceVersion: Invalid value"),
        "the API server's own answer: {error}"
    );
    assert_eq!(c.frame().await["type"], "COMPLETE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparsable_versions_get_one_error_and_complete_without_asking_again() {
    let env = start_default().await;
    let _first = primed(&env).await;
    let mut c = env.client().await;
    for rv in ["abc", "-1", "undefined", "99999999999999999999"] {
        let query = format!("watch=1&resourceVersion={rv}");
        c.request(PATH, &query).await;
        assert_refused_version(&mut c, &query).await;
    }
    assert!(c.next_within(Duration::from_millis(300)).await.is_none());
    assert_upstream_untouched(&env).await;
    let text = env.metrics_text().await;
    assert_eq!(
        metric(&text, "kubemux_resumes_total{outcome=\"invalid\"}"),
        Some(4.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unparsable_first_version_costs_one_upstream_request() {
    let env = start_default().await;
    let mut c = env.client().await;
    let query = "watch=1&resourceVersion=undefined";
    c.request(PATH, query).await;
    assert_refused_version(&mut c, query).await;
    env.eventually("the unused watch is gone", || env.hub.watch_count() == 0)
        .await;
    assert_eq!(env.sim.list_requests("pods"), 1);
    assert_eq!(env.sim.watch_requests("pods"), 0, "no WATCH, no retry");
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

/// Reads a Headlamp client's frames for `query` until `done` holds for its
/// applied state (or patience runs out), checking each event: no ERROR, and
/// versions strictly increasing (every event once, in order).
async fn follow_until(
    c: &mut Client,
    query: &str,
    applied: &mut Applied,
    last: &mut u64,
    mut done: impl FnMut(&Applied) -> bool,
) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done(applied) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never converged; last version {last}"
        );
        let Some(frame) = c.next_within(Duration::from_millis(100)).await else {
            continue;
        };
        assert_eq!(frame["query"], query, "{frame}");
        assert_eq!(frame["type"], "DATA", "no ERROR, no COMPLETE: {frame}");
        let ev: Value = serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
        assert_ne!(ev["type"], "ERROR", "{ev}");
        let rv = rv_of(&ev);
        assert!(
            rv > *last,
            "event {rv} after {last}: each event once, in order"
        );
        *last = rv;
        applied.apply(&ev);
    }
}

fn sim_pods(env: &Env) -> std::collections::BTreeMap<String, String> {
    let (objects, _) = env.sim.store().list("pods", None, None, None).unwrap();
    versions_of(&objects)
}

/// Headlamp's flow for the first person to open a list: LIST through
/// kubemux (no shared watch yet, so forwarded), then a REQUEST from the
/// list's version, which creates the shared watch. The cluster serves that
/// version, so kubemux must too. Timing-dependent, hence many rounds with
/// different gaps between the LIST and the REQUEST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headlamps_first_viewer_is_served_from_the_lists_version() {
    let env = start(
        SimConfig {
            churn_rate: 20.0,
            initial_pods: 30,
            ..SimConfig::default()
        },
        quick_hub(),
        ServerConfig::default(),
    )
    .await;
    // Twenty first viewers, each of a list of its own (selectors every pod
    // matches, one of them evaluated by the cluster alone, so the list is
    // its own upstream watch), starting a quarter second apart under the
    // same churn, each followed for 10 s of it.
    env.sim.set_churn_rate(20.0);
    let viewer = |round: u64| {
        let env = &env;
        async move {
            tokio::time::sleep(Duration::from_millis(round * 250)).await;
            let selector = format!("labelSelector=viewer%21%3Dv{round}&{OWN_WATCH}");
            let body = http_get_body(
                env.server.addr(),
                &format!("/clusters/{CLUSTER}/api/v1/pods?{selector}"),
            )
            .await;
            let list: Value = serde_json::from_str(&body).expect("a PodList");
            let list_rv = list["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .to_string();
            let mut applied = Applied::default();
            for item in list["items"].as_array().unwrap() {
                applied.apply(&json!({"type": "ADDED", "object": item}));
            }
            // A browser's round trip between the LIST and the REQUEST.
            tokio::time::sleep(Duration::from_millis(round * 7 % 120)).await;
            let mut c = env.client().await;
            let query = format!("{selector}&watch=1&resourceVersion={list_rv}");
            c.request("/api/v1/pods", &query).await;
            let mut last: u64 = list_rv.parse().unwrap();
            let until = tokio::time::Instant::now() + Duration::from_secs(10);
            follow_until(&mut c, &query, &mut applied, &mut last, |_| {
                tokio::time::Instant::now() >= until
            })
            .await;
            (c, query, applied, last)
        }
    };
    let mut viewers = futures::future::join_all((0..20).map(viewer)).await;
    env.sim.set_churn_rate(0.0);
    for (c, query, applied, last) in &mut viewers {
        follow_until(c, query, applied, last, |a| a.versions() == sim_pods(&env)).await;
    }
    assert_eq!(
        env.sim.list_requests("pods"),
        40,
        "each viewer's LIST was forwarded (no watch had its key yet), and each new watch listed once"
    );
    let text = env.metrics_text().await;
    assert!(!text.contains("outcome=\"expired\""), "no 410: {text}");
    assert_eq!(
        metric(&text, "kubemux_backfill_requests_total{cluster=\"sim\"}"),
        None,
        "each new watch listed at its first subscriber's version: nothing to backfill"
    );
}

/// A client that loses its kubemux (restart, another replica) resumes from
/// its last version on a kubemux with an empty cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_across_a_kubemux_restart_is_exact() {
    let sim = kubemux_sim::SimServer::start(SimConfig::default())
        .await
        .unwrap();
    let (server, _hub) = start_proxy(&sim, quick_hub(), ServerConfig::default()).await;
    let (pods, _) = sim
        .store()
        .list("pods", Some("default"), None, None)
        .unwrap();
    let mut c = Client::connect(&format!("ws://{}/wsMultiplexer", server.addr())).await;
    c.request(PATH, "watch=1").await;
    let mut applied = Applied::default();
    for ev in c.events(pods.len()).await {
        applied.apply(&ev);
    }
    let make = |name: &str| {
        sim.store()
            .create("pods", Some("default"), pod(name))
            .unwrap()["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let before = make("before-restart");
    let (_, ev) = c.event().await;
    applied.apply(&ev);
    assert_eq!(rv_of(&ev), before);
    server.shutdown(Duration::from_secs(2)).await;
    // Changes while no kubemux runs; other resources move the version too.
    let missed: Vec<u64> = (0..5).map(|i| make(&format!("missed-{i}"))).collect();
    sim.store()
        .create(
            "configmaps",
            Some("default"),
            json!({"metadata": {"name": "noise"}, "data": {}}),
        )
        .unwrap();
    let (server, _hub) = start_proxy(&sim, quick_hub(), ServerConfig::default()).await;
    let mut c = Client::connect(&format!("ws://{}/wsMultiplexer", server.addr())).await;
    let query = format!("watch=1&resourceVersion={before}");
    c.request(PATH, &query).await;
    let evs = c.events(missed.len()).await;
    assert_eq!(
        evs.iter().map(rv_of).collect::<Vec<_>>(),
        missed,
        "the first event is the one right after the version"
    );
    for ev in &evs {
        applied.apply(ev);
    }
    let after = make("after-restart");
    let (_, ev) = c.event().await;
    assert_eq!(rv_of(&ev), after, "then live");
    applied.apply(&ev);
    let (pods, _) = sim
        .store()
        .list("pods", Some("default"), None, None)
        .unwrap();
    assert_eq!(applied.versions(), versions_of(&pods));
    let text = http_get(server.addr(), "/metrics").await;
    assert!(!text.contains("outcome=\"expired\""), "no 410: {text}");
    assert_eq!(
        metric(
            &text,
            "kubemux_upstream_watch_requests_total{cluster=\"sim\"}"
        ),
        Some(1.0),
        "the new watch listed at the client's version and watched from it; no backfill: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_options_the_api_server_rejects_are_refused_by_name() {
    let env = start_default().await;
    let mut c = env.client().await;
    let query = "watch=1&resourceVersion=5&resourceVersionMatch=NotOlderThan";
    c.request(PATH, query).await;
    let frame = c.frame().await;
    assert_eq!(frame["type"], "ERROR", "{frame}");
    let data: Value = serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
    assert!(
        data["error"].as_str().unwrap().contains(
            "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"
        ),
        "{data}"
    );
    assert_eq!(c.frame().await["type"], "COMPLETE");
    assert_eq!(env.sim.watch_requests("pods"), 0);
}

/// An API server whose resourceVersions are not integers (not backed by
/// etcd), served over real HTTP by the test: pods in `default` listed at
/// `opaque-7`; a watch from `opaque-3` replays one event (`opaque-5`), any
/// other watch stays quiet. Counts its watch requests.
async fn opaque_cluster() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use axum::extract::{Query, State};
    use axum::routing::get;
    let watches = Arc::new(AtomicUsize::new(0));
    async fn pods(
        State(watches): State<Arc<AtomicUsize>>,
        Query(q): Query<std::collections::HashMap<String, String>>,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        if !q.contains_key("watch") {
            return axum::Json(json!({
                "kind": "PodList", "apiVersion": "v1",
                "metadata": {"resourceVersion": "opaque-7"}, "items": []
            }))
            .into_response();
        }
        watches.fetch_add(1, Ordering::SeqCst);
        let replay =
            (q.get("resourceVersion").map(String::as_str) == Some("opaque-3")).then(|| {
                let ev = json!({"type": "ADDED", "object": {
                    "kind": "Pod", "apiVersion": "v1",
                    "metadata": {"name": "p", "namespace": "default", "resourceVersion": "opaque-5"}
                }});
                Ok::<_, std::convert::Infallible>(bytes::Bytes::from(format!("{ev}\n")))
            });
        let stream =
            futures::StreamExt::chain(futures::stream::iter(replay), futures::stream::pending());
        axum::body::Body::from_stream(stream).into_response()
    }
    let app = axum::Router::new()
        .route(
            "/version",
            get(|| async {
                axum::Json(json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0"}))
            }),
        )
        .route("/api/v1/namespaces/default/pods", get(pods))
        .route("/api/v1/pods", get(pods))
        .with_state(watches.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, watches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_a_cluster_without_integer_versions_uses_share_one_forwarded_watch() {
    let (addr, watches) = opaque_cluster().await;
    let kubeconfig = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "opaque", "cluster": {"server": format!("http://{addr}")}}],
        "users": [{"name": "opaque", "user": {"token": "t"}}],
        "contexts": [{"name": "opaque", "context": {"cluster": "opaque", "user": "opaque"}}],
        "current-context": "opaque"
    })
    .to_string();
    let (server, _hub) =
        start_proxy_with(&kubeconfig, quick_hub(), |_| ServerConfig::default()).await;
    let url = format!("ws://{}/wsMultiplexer", server.addr());
    let mut first = Client::connect(&url).await;
    first
        .send(json!({"clusterId": "opaque", "path": PATH, "query": "watch=1", "type": "REQUEST"}))
        .await;
    eventually("the shared watch is open", || {
        watches.load(Ordering::SeqCst) == 1
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        let mut c = Client::connect(&url).await;
        c.send(json!({"clusterId": "opaque", "path": PATH, "query": "watch=1&resourceVersion=opaque-3", "type": "REQUEST"}))
            .await;
        clients.push(c);
    }
    for c in &mut clients {
        let (_, ev) = c.event().await;
        assert_eq!(ev["object"]["metadata"]["resourceVersion"], "opaque-5");
    }
    assert_eq!(
        watches.load(Ordering::SeqCst),
        2,
        "ten clients from one opaque version share one forwarded watch"
    );
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_a_final_bookmark_to_subscribers_that_asked() {
    let Env { sim, server, hub } = start_default().await;
    let (pods, _) = sim
        .store()
        .list("pods", Some("default"), None, None)
        .unwrap();
    let url = format!("ws://{}/wsMultiplexer", server.addr());
    let mut asked = Client::connect(&url).await;
    asked
        .request(PATH, "watch=1&allowWatchBookmarks=true")
        .await;
    asked.events(pods.len()).await;
    let mut other = Client::connect(&url).await;
    other.request(PATH, "watch=1").await;
    other.events(pods.len()).await;
    // A change elsewhere moves the cache's version past every pod's.
    let created = sim
        .store()
        .create("pods", Some("default"), pod("last-before-shutdown"))
        .unwrap();
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    asked.event().await;
    other.event().await;
    drop(hub);
    server.shutdown(Duration::from_secs(2)).await;
    let (_, ev) = asked.event().await;
    assert_eq!(ev["type"], "BOOKMARK", "{ev}");
    assert_eq!(ev["object"]["metadata"]["resourceVersion"], rv.as_str());
    assert_eq!(asked.frame().await["type"], "COMPLETE");
    assert_eq!(
        other.frame().await["type"],
        "COMPLETE",
        "no bookmark for a subscriber that did not ask"
    );
}
