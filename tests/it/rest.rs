//! REST on `/clusters/{cluster}/{path}` as the API server answers: each
//! case is asked of kubemux and of the simulator itself over sockets, and
//! the answers compared. A live shared watch answers LISTs and watch streams
//! only when its answer is the API server's; everything else is forwarded.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::support::*;
use kubemux::hub::{EndReason, Identity, Overflow, SubscribeRequest, Subscriber, Subscription};
use kubemux::server::ServerConfig;
use kubemux::upstream::event::WatchEvent;
use kubemux::ws::outbound::QueueLimits;
use kubemux_sim::SimConfig;
use serde_json::{Value, json};

const PODS: &str = "/api/v1/namespaces/default/pods";

async fn get(addr: SocketAddr, path: &str) -> Answer {
    Request::get(path).send(addr).await
}

fn pod(name: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"containers": []}})
}

fn rest_count(text: &str, request: &str, served: &str) -> f64 {
    metric(
        text,
        &format!("kubemux_rest_requests_total{{request=\"{request}\",served=\"{served}\"}}"),
    )
    .unwrap_or(0.0)
}

/// A list with its items in key order, for comparing answers that may
/// order them differently.
fn sorted(mut list: Value) -> Value {
    if let Some(items) = list["items"].as_array_mut() {
        items.sort_by_key(object_key);
    }
    list
}

/// A subscriber that takes every event and keeps none.
struct Keep;

impl Subscriber for Keep {
    fn event(&self, _: &Arc<WatchEvent>) -> Result<(), Overflow> {
        Ok(())
    }
    fn warning(&self, _: &str) {}
    fn end(&self, _: EndReason) {}
}

/// A live shared watch on the default namespace's pods, held by a
/// subscriber that never falls behind, as long as the subscription lives.
async fn live_watch(env: &Env) -> Subscription {
    let subscription = env
        .hub
        .subscribe(
            SubscribeRequest {
                cluster: CLUSTER,
                path: PODS,
                query: "watch=1",
                identity: &Identity::Proxy,
            },
            Arc::new(Keep),
        )
        .unwrap();
    caught_up(env).await;
    subscription
}

/// Waits until the shared watch's store holds the simulator's version.
async fn caught_up(env: &Env) {
    env.eventually("the shared watch holds the cluster's version", || {
        env.hub
            .cached_list(CLUSTER, PODS, "", &Identity::Proxy)
            .is_some_and(|l| l.resource_version == env.sim.store().resource_version().to_string())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_is_streamed_from_a_live_shared_watch_as_the_api_server_streams_it() {
    let env = start_default().await;
    let _reader = live_watch(&env).await;
    caught_up(&env).await;
    let from = env.sim.store().resource_version();
    let store = env.sim.store();
    for name in ["w-1", "w-2", "w-3"] {
        store.create("pods", Some("default"), pod(name)).unwrap();
    }
    let mut changed = store.list("pods", Some("default"), None, None).unwrap().0;
    changed.retain(|p| p["metadata"]["name"] == "w-2");
    let mut w2 = changed.remove(0);
    w2["metadata"]["labels"] = json!({"changed": "yes"});
    store.update("pods", Some("default"), w2).unwrap();
    store.delete("pods", Some("default"), "w-3").unwrap();
    caught_up(&env).await;
    let watches = env.sim.watch_requests("pods");

    // Resumed from the history: exactly the events the cluster replays.
    let query = format!("{PODS}?watch=1&resourceVersion={from}&timeoutSeconds=1");
    let (ours, theirs) = both(&env, &query).await;
    assert_eq!(ours.code, 200, "{}", ours.body);
    assert!(
        ours.head.contains("transfer-encoding: chunked"),
        "{}",
        ours.head
    );
    assert!(
        ours.head.contains("content-type: application/json"),
        "{}",
        ours.head
    );
    assert!(ours.terminated, "timeoutSeconds ends the response cleanly");
    assert_eq!(ours.events().len(), 5, "{}", ours.body);
    assert_eq!(ours.events(), theirs.events());

    // sendInitialEvents: the state, then the initial-events-end bookmark.
    let query = format!(
        "{PODS}?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1"
    );
    let (ours, theirs) = both(&env, &query).await;
    let (mut ours, mut theirs) = (ours.events(), theirs.events());
    let (our_end, their_end) = (ours.pop().unwrap(), theirs.pop().unwrap());
    assert_eq!(our_end["type"], "BOOKMARK", "{our_end}");
    assert_eq!(
        our_end["object"]["metadata"],
        their_end["object"]["metadata"]
    );
    assert_eq!(
        our_end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    ours.sort_by_key(|e| object_key(&e["object"]));
    theirs.sort_by_key(|e| object_key(&e["object"]));
    assert_eq!(ours, theirs, "the initial state, as ADDED events");
    assert_eq!(
        env.sim.watch_requests("pods"),
        watches + 2,
        "only the simulator's own answers were watches of the cluster"
    );

    // A version the cluster compacted: its own 410, in-band.
    env.sim.faults().compact_history();
    let (ours, theirs) = both(&env, &format!("{PODS}?watch=1&resourceVersion=1")).await;
    assert_eq!(ours.code, 200);
    assert_eq!(ours.events(), theirs.events(), "{}", ours.body);
    assert_eq!(ours.events()[0]["object"]["code"], 410, "{}", ours.body);
    assert!(ours.terminated, "the stream ends after the 410");

    let text = env.metrics_text().await;
    assert_eq!(rest_count(&text, "watch", "shared_watch"), 3.0, "{text}");
    assert_eq!(rest_count(&text, "watch", "cluster"), 0.0, "{text}");

    // Without a live watch for its key, a watch is the cluster's.
    let nodes = env.sim.watch_requests("nodes");
    let ours = get(
        env.server.addr(),
        &format!("/clusters/{CLUSTER}/api/v1/nodes?watch=true&timeoutSeconds=1"),
    )
    .await;
    assert_eq!(ours.code, 200);
    assert_eq!(ours.events()[0]["type"], "ADDED", "{}", ours.body);
    assert_eq!(env.sim.watch_requests("nodes"), nodes + 1);
    // So is a version the cluster refuses before streaming.
    let (ours, theirs) = both(&env, &format!("{PODS}?watch=1&resourceVersion=abc")).await;
    assert_eq!((ours.code, ours.body), (theirs.code, theirs.body));
    let text = env.metrics_text().await;
    assert_eq!(rest_count(&text, "watch", "cluster"), 2.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_watch_that_is_not_read_is_cut_as_a_slow_consumer() {
    let env = start(
        SimConfig::default(),
        quick_hub(),
        ServerConfig {
            queue: QueueLimits {
                max_bytes: 256 << 10,
                ..QueueLimits::default()
            },
            ..ServerConfig::default()
        },
    )
    .await;
    let _reader = live_watch(&env).await;
    caught_up(&env).await;
    let from = env.sim.store().resource_version();
    let unread = Request::get(&format!(
        "/clusters/{CLUSTER}{PODS}?watch=1&resourceVersion={from}"
    ))
    .start(env.server.addr())
    .await;
    let filler = "x".repeat(16 << 10);
    let mut created = 0;
    loop {
        let text = env.metrics_text().await;
        if metric(&text, "kubemux_slow_consumer_terminations_total") == Some(1.0) {
            break;
        }
        assert!(created < 4_000, "never cut after {created} events: {text}");
        for _ in 0..50 {
            let mut p = pod(&format!("big-{created}"));
            p["metadata"]["annotations"] = json!({ "filler": filler });
            env.sim.store().create("pods", Some("default"), p).unwrap();
            created += 1;
        }
        // Fanned out before the counter is read again: a loaded machine
        // slows kubemux down, it does not let the unread queue grow.
        caught_up(&env).await;
    }
    let cut = read_answer(unread).await.expect("an HTTP answer");
    assert_eq!(cut.code, 200);
    assert!(cut.terminated, "the response ends cleanly");
    let events = cut.events();
    assert!(
        events.len() < created,
        "cut before the end ({} of {created})",
        events.len()
    );
    for (i, ev) in events.iter().enumerate() {
        assert_eq!(ev["type"], "ADDED");
        assert_eq!(ev["object"]["metadata"]["name"], format!("big-{i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_come_from_the_store_only_when_the_api_server_would_answer_the_same() {
    let env = start_default().await;
    let _reader = live_watch(&env).await;
    let store = env.sim.store();
    for name in ["l-1", "l-2"] {
        store.create("pods", Some("default"), pod(name)).unwrap();
    }
    caught_up(&env).await;
    let now = store.resource_version();
    let older = now - 1;
    let lists = env.sim.list_requests("pods");
    let cached = [
        String::new(),
        "resourceVersion=0".into(),
        format!("resourceVersion={now}"),
        format!("resourceVersion={older}"),
        format!("resourceVersion={now}&resourceVersionMatch=NotOlderThan"),
        format!("resourceVersion={older}&resourceVersionMatch=NotOlderThan"),
        format!("resourceVersion={now}&resourceVersionMatch=Exact"),
        "resourceVersion=0&resourceVersionMatch=NotOlderThan".into(),
        "limit=0".into(),
        "watch=false".into(),
    ];
    for query in &cached {
        let (ours, theirs) = both(&env, &format!("{PODS}?{query}")).await;
        assert_eq!(ours.code, 200, "{query}: {}", ours.body);
        let ours_json = ours.json();
        assert_eq!(
            sorted(ours_json.clone()),
            sorted(theirs.json()),
            "{query}: the cluster's own list"
        );
        assert_eq!(ours_json["metadata"]["resourceVersion"], now.to_string());
        for item in ours_json["items"].as_array().unwrap() {
            assert!(item.get("kind").is_none() && item.get("apiVersion").is_none());
        }
    }
    assert_eq!(
        env.sim.list_requests("pods"),
        lists + cached.len() as u64,
        "only the simulator's own answers were LISTs of the cluster"
    );
    let text = env.metrics_text().await;
    assert_eq!(
        rest_count(&text, "list", "shared_watch"),
        cached.len() as f64
    );

    // Each is the cluster's to answer, verbatim: a state the store does
    // not hold, pages, and the combinations the API server refuses.
    let forwarded = [
        format!("resourceVersion={older}&resourceVersionMatch=Exact"),
        "resourceVersionMatch=Exact".into(),
        "resourceVersionMatch=NotOlderThan".into(),
        "resourceVersion=0&resourceVersionMatch=Exact".into(),
        "resourceVersion=1&resourceVersionMatch=Bogus".into(),
        format!("resourceVersion={now}&resourceVersionMatch=NotOlderThan&continue=x"),
        "sendInitialEvents=true".into(),
        "resourceVersion=abc".into(),
        "limit=2".into(),
    ];
    for query in &forwarded {
        let (ours, theirs) = both(&env, &format!("{PODS}?{query}")).await;
        assert_eq!(
            (ours.code, &ours.body),
            (theirs.code, &theirs.body),
            "{query}"
        );
    }
    let (exact, _) = both(
        &env,
        &format!("{PODS}?resourceVersion={older}&resourceVersionMatch=Exact"),
    )
    .await;
    assert_eq!(
        exact.json()["metadata"]["resourceVersion"],
        older.to_string()
    );
    assert_eq!(exact.json()["items"].as_array().unwrap().len() + 1, {
        let (items, _) = store.list("pods", Some("default"), None, None).unwrap();
        items.len()
    });
    let (invalid, _) = both(&env, &format!("{PODS}?resourceVersionMatch=Exact")).await;
    assert_eq!(invalid.code, 422, "{}", invalid.body);
    let text = env.metrics_text().await;
    assert_eq!(
        rest_count(&text, "list", "cluster"),
        forwarded.len() as f64 + 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_through_kubemux_yields_the_clusters_full_list() {
    let env = start_default().await;
    let _reader = live_watch(&env).await;
    for i in 0..10 {
        env.sim
            .store()
            .create("pods", Some("default"), pod(&format!("p-{i}")))
            .unwrap();
    }
    caught_up(&env).await;
    let (all, _) = env
        .sim
        .store()
        .list("pods", Some("default"), None, None)
        .unwrap();
    let mut want: Vec<String> = all.iter().map(object_key).collect();
    want.sort();
    assert!(want.len() > 6, "enough pods for several pages");
    let lists = env.sim.list_requests("pods");
    let mut got = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &token {
            Some(t) => format!("limit=3&continue={t}"),
            None => "limit=3".into(),
        };
        let (ours, theirs) = both(&env, &format!("{PODS}?{query}")).await;
        assert_eq!((ours.code, &ours.body), (theirs.code, &theirs.body));
        let page = ours.json();
        pages += 1;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        got.extend(items.iter().map(object_key));
        token = page["metadata"]["continue"].as_str().map(String::from);
        match &token {
            Some(_) => assert_eq!(
                page["metadata"]["remainingItemCount"],
                want.len() - got.len(),
                "{page}"
            ),
            None => {
                assert!(page["metadata"].get("remainingItemCount").is_none());
                break;
            }
        }
    }
    assert_eq!(got, want, "every pod, once, in order");
    assert_eq!(env.sim.list_requests("pods"), lists + 2 * pages);

    // A continue token whose snapshot was compacted: the cluster's 410.
    let first = get(
        env.server.addr(),
        &format!("/clusters/{CLUSTER}{PODS}?limit=2"),
    )
    .await
    .json();
    let token = first["metadata"]["continue"].as_str().unwrap().to_string();
    env.sim
        .store()
        .create("pods", Some("default"), pod("after"))
        .unwrap();
    env.sim.faults().compact_history();
    let (ours, theirs) = both(&env, &format!("{PODS}?limit=2&continue={token}")).await;
    assert_eq!(ours.code, 410, "{}", ours.body);
    assert_eq!(ours.json()["reason"], "Expired");
    assert_eq!((ours.code, ours.body), (theirs.code, theirs.body));
}
