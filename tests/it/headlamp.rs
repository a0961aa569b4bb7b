//! Acceptance tests of the Headlamp `/wsMultiplexer` dialect against the
//! simulated API server and the real proxy, over loopback sockets.

use std::collections::HashSet;
use std::time::Duration;

use crate::support::*;
use kubemux::server::ServerConfig;
use kubemux_sim::SimConfig;
use rand::{Rng, SeedableRng};
use serde_json::json;

fn pod(name: &str, labels: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_connections_share_one_upstream_watch() {
    let env = start_default().await;
    let (pods, _) = env.sim.store().list("pods", None, None, None).unwrap();
    let mut clients = Vec::new();
    for i in 0..50 {
        let mut c = env.client().await;
        c.request(
            "/api/v1/pods",
            &format!("watch=1&timeoutSeconds={}", 1000 + i),
        )
        .await;
        clients.push(c);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let query = format!("watch=1&timeoutSeconds={}", 1000 + i);
        for _ in 0..pods.len() {
            let (frame, ev) = c.event().await;
            assert_eq!(frame["query"], query);
            assert_eq!(frame["clusterId"], CLUSTER);
            assert_eq!(frame["path"], "/api/v1/pods");
            assert_eq!(ev["type"], "ADDED");
        }
    }
    env.eventually("the one upstream watch is open", || {
        env.sim.active_watches("pods") == 1
    })
    .await;
    assert_eq!(env.sim.watch_requests("pods"), 1);
    let text = env.metrics_text().await;
    assert_eq!(
        metric(&text, "kubemux_upstream_watches{cluster=\"sim\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(metric(&text, "kubemux_subscribers"), Some(50.0));
    assert_eq!(
        metric(&text, "kubemux_connections{dialect=\"headlamp\"}"),
        Some(50.0)
    );

    env.sim
        .store()
        .create("pods", Some("default"), pod("fresh", json!({"app": "x"})))
        .unwrap();
    for (i, c) in clients.iter_mut().enumerate() {
        let (frame, ev) = c.event().await;
        assert_eq!(
            frame["query"],
            format!("watch=1&timeoutSeconds={}", 1000 + i)
        );
        assert_eq!(ev["type"], "ADDED");
        assert_eq!(ev["object"]["metadata"]["name"], "fresh");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_split_keys_only_when_they_differ() {
    let env = start_default().await;
    let mut c = env.client().await;
    for q in [
        "watch=1&labelSelector=app%3Dweb%2Ctier%3Dfront",
        "labelSelector=tier==front,app=web&watch=true",
        "watch=1&labelSelector=app%3Ddb",
    ] {
        c.request("/api/v1/pods", &format!("{q}&{OWN_WATCH}")).await;
    }
    let expect_watches = 2;
    env.eventually("two upstream watches", || {
        env.sim.active_watches("pods") == expect_watches
    })
    .await;
    assert_eq!(env.hub.watch_count(), 2);
    assert_eq!(env.sim.watch_requests("pods"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_close_stops_the_watch_after_linger_and_linger_reuses_it() {
    let env = start(
        SimConfig::default(),
        kubemux::hub::HubConfig {
            linger: Duration::from_secs(2),
            ..quick_hub()
        },
        ServerConfig::default(),
    )
    .await;
    let (pods, _) = env.sim.store().list("pods", None, None, None).unwrap();
    let mut c = env.client().await;
    c.request("/api/v1/pods", "watch=1").await;
    c.events(pods.len()).await;
    c.close("/api/v1/pods", "watch=1").await;
    c.request("/api/v1/pods", "watch=1&labelSelector=").await;
    let evs = c.events(pods.len()).await;
    assert!(evs.iter().all(|e| e["type"] == "ADDED"));
    assert_eq!(
        env.sim.watch_requests("pods"),
        1,
        "the lingering watch was reused"
    );
    assert_eq!(env.sim.list_requests("pods"), 1);
    c.close("/api/v1/pods", "watch=1&labelSelector=").await;
    env.eventually("the upstream watch stops after the linger", || {
        env.sim.active_watches("pods") == 0 && env.hub.watch_count() == 0
    })
    .await;
    assert_eq!(env.sim.watch_requests("pods"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_concurrent_churn_leaves_exactly_the_live_keys() {
    let env = start(
        SimConfig::default(),
        kubemux::hub::HubConfig {
            linger: Duration::ZERO,
            ..quick_hub()
        },
        ServerConfig::default(),
    )
    .await;
    // Each key with the upstream watch that serves it: half have one of
    // their own, half are filtered from their resource type's one
    // cluster-wide watch.
    let keys: Vec<(String, String, String)> = (0..8)
        .map(|i| match i % 4 {
            0 => (
                "/api/v1/pods".to_string(),
                format!("labelSelector=k{i}%3Dv&{OWN_WATCH}"),
                format!("pods, key {i}"),
            ),
            1 => (
                "/api/v1/namespaces/default/pods".to_string(),
                format!("labelSelector=k{i}%3Dv"),
                "every pod".to_string(),
            ),
            2 => (
                "/api/v1/nodes".to_string(),
                format!("labelSelector=k{i}&fieldSelector=spec.unschedulable%3Dfalse"),
                format!("nodes, key {i}"),
            ),
            _ => (
                "/apis/apps/v1/deployments".to_string(),
                format!("labelSelector=!k{i}"),
                "every deployment".to_string(),
            ),
        })
        .collect();
    let mut tasks = Vec::new();
    for seed in 0..16u64 {
        let url = env.ws_url();
        let keys = keys.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut client = Some(Client::connect(&url).await);
            let mut live: HashSet<usize> = HashSet::new();
            for _ in 0..60 {
                let Some(c) = client.as_mut() else {
                    client = Some(Client::connect(&url).await);
                    live.clear();
                    continue;
                };
                let k = rng.random_range(0..keys.len());
                match rng.random_range(0..10) {
                    0 => {
                        client = None;
                    }
                    1..=5 => {
                        c.request(&keys[k].0, &keys[k].1).await;
                        live.insert(k);
                    }
                    _ => {
                        c.close(&keys[k].0, &keys[k].1).await;
                        live.remove(&k);
                    }
                }
                if rng.random_bool(0.3) {
                    tokio::task::yield_now().await;
                }
            }
            (client, live)
        }));
    }
    let mut clients = Vec::new();
    let mut live_keys = HashSet::new();
    for t in tasks {
        let (client, live) = t.await.unwrap();
        if let Some(c) = client {
            live_keys.extend(live);
            clients.push(c);
        }
    }
    let want = live_keys
        .iter()
        .map(|k| &keys[*k].2)
        .collect::<HashSet<_>>()
        .len();
    env.eventually(
        "upstream watches equal the distinct live keys' watches",
        || env.hub.watch_count() == want,
    )
    .await;
    env.eventually("simulated server agrees", || {
        ["pods", "nodes", "deployments"]
            .iter()
            .map(|r| env.sim.active_watches(r))
            .sum::<i64>()
            == want as i64
    })
    .await;
    drop(clients);
    env.eventually("everything released", || env.hub.watch_count() == 0)
        .await;
    let text = env.metrics_text().await;
    assert_eq!(metric(&text, "kubemux_subscribers"), Some(0.0), "{text}");
    env.eventually("no upstream watches left", || {
        ["pods", "nodes", "deployments"]
            .iter()
            .all(|r| env.sim.active_watches(r) == 0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_specific_errors_and_the_connection_keeps_working() {
    let env = start(
        SimConfig::default(),
        quick_hub(),
        ServerConfig {
            headlamp: kubemux::dialect::headlamp::Settings {
                max_subscriptions: 2,
                ..Default::default()
            },
            ..ServerConfig::default()
        },
    )
    .await;
    let mut c = env.client().await;
    let cases: Vec<(String, &str)> = vec![
        ("this is not json".into(), "not JSON"),
        (json!(["REQUEST"]).to_string(), "expected an object"),
        (json!({"clusterId": CLUSTER, "path": "/api/v1/pods", "query": "", "type": "SUBSCRIBE"}).to_string(), "unknown type \"SUBSCRIBE\""),
        (json!({"clusterId": CLUSTER, "path": "/api/v1/pods", "query": ""}).to_string(), "missing field type"),
        (json!({"clusterId": "", "path": "/api/v1/pods", "query": "", "type": "REQUEST"}).to_string(), "clusterId"),
        (json!({"clusterId": CLUSTER, "path": "", "query": "", "type": "REQUEST"}).to_string(), "missing or empty field: path"),
        (json!({"clusterId": "nope", "path": "/api/v1/pods", "query": "", "type": "REQUEST"}).to_string(), "unknown cluster \"nope\""),
        (json!({"clusterId": CLUSTER, "path": "/api/v1/namespaces/x/pods/y/exec", "query": "", "type": "REQUEST"}).to_string(), "not a watchable collection"),
        (json!({"clusterId": CLUSTER, "path": "/metrics", "query": "", "type": "REQUEST"}).to_string(), "not a watchable collection"),
        (json!({"clusterId": CLUSTER, "path": "/api/v1/../secrets", "query": "", "type": "REQUEST"}).to_string(), "relative segments"),
        (json!({"clusterId": CLUSTER, "path": "/api/v1/pods", "query": "follow=true", "type": "REQUEST"}).to_string(), "unknown query parameter \"follow\""),
    ];
    for (input, expected) in &cases {
        c.send_raw(input).await;
        let frame = c.frame().await;
        let err = error_of(&frame);
        assert!(
            err.contains(expected),
            "{input}: error {err:?} should mention {expected:?}"
        );
        let is_request = serde_json::from_str::<serde_json::Value>(input)
            .is_ok_and(|v| v.get("type").is_some_and(|t| t == "REQUEST"));
        if is_request {
            let complete = c.frame().await;
            assert_eq!(complete["type"], "COMPLETE", "{input}: {complete}");
            assert_eq!(complete["path"], frame["path"]);
        }
    }
    c.request("/api/v1/nodes", "watch=1").await;
    c.request("/api/v1/namespaces", "watch=1").await;
    c.request("/api/v1/pods", "watch=1").await;
    let mut saw_limit = false;
    let mut saw_data = false;
    while !(saw_limit && saw_data) {
        let frame = c.frame().await;
        match frame["type"].as_str().unwrap() {
            "ERROR" => {
                assert!(error_of(&frame).contains("too many subscriptions"));
                assert_eq!(frame["path"], "/api/v1/pods");
                saw_limit = true;
            }
            "DATA" => saw_data = true,
            "COMPLETE" => assert!(saw_limit, "COMPLETE follows the refusal"),
            other => panic!("unexpected {other}"),
        }
    }
    c.close("/api/v1/not-subscribed", "").await;
    c.close("/api/v1/nodes", "watch=1").await;
    c.request("/api/v1/pods", "watch=1").await;
    loop {
        let frame = c.frame().await;
        if frame["type"] == "DATA" && frame["path"] == "/api/v1/pods" {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_closes_with_1009() {
    let env = start_default().await;
    let mut c = env.client().await;
    c.send_raw(&"x".repeat(70 * 1024)).await;
    use futures::StreamExt;
    let mut code = None;
    while let Ok(Some(msg)) = tokio::time::timeout(PATIENCE, c.ws.next()).await {
        match msg {
            Ok(tokio_tungstenite::tungstenite::Message::Close(Some(frame))) => {
                code = Some(u16::from(frame.code));
                break;
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    assert_eq!(code, Some(1009));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_request_is_idempotent() {
    let env = start_default().await;
    let (nodes, _) = env.sim.store().list("nodes", None, None, None).unwrap();
    let mut c = env.client().await;
    c.request("/api/v1/nodes", "watch=1").await;
    c.request("/api/v1/nodes", "watch=1").await;
    c.events(nodes.len()).await;
    assert!(
        c.next_within(Duration::from_millis(500)).await.is_none(),
        "no duplicate snapshot"
    );
    let text = env.metrics_text().await;
    assert_eq!(metric(&text, "kubemux_subscribers"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_events_equal_the_servers_objects_after_churn() {
    let env = start(
        SimConfig {
            churn_rate: 200.0,
            ..SimConfig::default()
        },
        quick_hub(),
        ServerConfig::default(),
    )
    .await;
    let mut c = env.client().await;
    c.request("/api/v1/pods", "watch=1").await;
    let mut applied = Applied::default();
    let mut received = 0;
    while received < 300 {
        let (_, ev) = c.event().await;
        applied.apply(&ev);
        received += 1;
    }
    env.sim.set_churn_rate(0.0);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (objects, _) = env.sim.store().list("pods", None, None, None).unwrap();
        if applied.versions() == versions_of(&objects) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "state never converged"
        );
        if let Some(frame) = c.next_within(Duration::from_millis(300)).await {
            let ev: serde_json::Value =
                serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
            applied.apply(&ev);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_end_with_complete_after_the_error() {
    let env = start_default().await;
    let mut c = env.client().await;
    for (cluster, path, query, says) in [
        ("nope", "/api/v1/pods", "watch=1", "unknown cluster"),
        (CLUSTER, "/api/v1/secrets", "watch=1", "secrets"),
        (CLUSTER, "/api/v1/pods/x/log", "watch=1", ""),
        (CLUSTER, "/api/v1/pods", "watch=1&bogus=1", "bogus"),
        ("", "/api/v1/pods", "watch=1", "clusterId"),
    ] {
        c.send(json!({"clusterId": cluster, "path": path, "query": query, "userId": "u", "type": "REQUEST"}))
            .await;
        let error = c.frame().await;
        assert_eq!(error["type"], "ERROR", "{error}");
        assert_eq!(
            (&error["clusterId"], &error["path"], &error["query"]),
            (&json!(cluster), &json!(path), &json!(query))
        );
        let data: serde_json::Value =
            serde_json::from_str(error["data"].as_str().unwrap()).unwrap();
        assert!(data["error"].as_str().unwrap().contains(says), "{data}");
        let complete = c
            .next()
            .await
            .unwrap_or_else(|| panic!("no COMPLETE after {error}"));
        assert_eq!(complete["type"], "COMPLETE", "{complete}");
        assert_eq!(
            (
                &complete["clusterId"],
                &complete["path"],
                &complete["query"]
            ),
            (&json!(cluster), &json!(path), &json!(query))
        );
    }
    // A message that asks for no subscription gets its ERROR only.
    c.send_raw("not json").await;
    assert_eq!(c.frame().await["type"], "ERROR");
    assert!(c.next_within(Duration::from_millis(300)).await.is_none());
}

/// Clients offering permessage-deflate get DATA frames compressed, and
/// they inflate to exactly the bytes a client without compression gets for
/// the same events: the initial state and live churn, frame by frame. A
/// browser's offer keeps the server's context, so frames that several
/// clients get in the same order refer back into the one before; a client
/// asking for `server_no_context_takeover` gets every message on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_frames_inflate_to_what_an_uncompressed_client_gets() {
    let env = start_default().await;
    let addr = env.server.addr();
    let browser = [(
        "Sec-WebSocket-Extensions",
        "permessage-deflate; client_max_window_bits",
    )];
    let independent = [(
        "Sec-WebSocket-Extensions",
        "permessage-deflate; server_no_context_takeover",
    )];
    /// A client, its inflater, and whether it keeps its window.
    struct Client(RawWs, Inflater, bool);
    let mut clients = Vec::new();
    for i in 0..4 {
        let (offer, takeover) = if i < 3 {
            (&browser, true)
        } else {
            (&independent, false)
        };
        let (ws, head) = RawWs::connect_head(addr, "/wsMultiplexer", offer).await;
        let expected = if takeover {
            "sec-websocket-extensions: permessage-deflate; client_no_context_takeover\r\n"
        } else {
            "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"
        };
        assert!(head.to_ascii_lowercase().contains(expected), "{head}");
        clients.push(Client(ws, Inflater::default(), takeover));
    }
    let (plain, head) = RawWs::connect_head(addr, "/wsMultiplexer", &[]).await;
    let mut plain = Client(plain, Inflater::default(), false);
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "{head}"
    );
    let request = json!({"clusterId": CLUSTER, "path": "/api/v1/pods", "query": "watch=1", "type": "REQUEST"});
    for c in &mut clients {
        c.0.send_text(&request.to_string()).await;
    }
    plain.0.send_text(&request.to_string()).await;
    let (pods, _) = env.sim.store().list("pods", None, None, None).unwrap();
    let initial = pods.len();
    /// What a client read of one message: the text, and the payload's
    /// length when it came compressed.
    struct Read {
        text: String,
        compressed: Option<usize>,
    }
    /// The next `n` text messages, inflated when compressed.
    async fn texts(c: &mut Client, n: usize) -> Vec<Read> {
        let mut out = Vec::new();
        while out.len() < n {
            let frame = c.0.next_frame().await.expect("the connection stays open");
            if frame.opcode != 1 {
                continue;
            }
            let (payload, compressed) = match (frame.rsv1, c.2) {
                (false, _) => (frame.payload, None),
                (true, true) => (c.1.inflate(&frame.payload), Some(frame.payload.len())),
                (true, false) => (
                    deflate_raw(&frame.payload, false),
                    Some(frame.payload.len()),
                ),
            };
            let text = String::from_utf8(payload).expect("UTF-8 text");
            out.push(Read { text, compressed });
        }
        out
    }
    async fn plain_texts(c: &mut Client, n: usize) -> Vec<String> {
        let reads = texts(c, n).await;
        assert!(
            reads.iter().all(|r| r.compressed.is_none()),
            "nothing compressed for a client that did not offer it"
        );
        reads.into_iter().map(|r| r.text).collect()
    }
    let expected = plain_texts(&mut plain, initial).await;
    for c in &mut clients {
        let got: Vec<String> = texts(c, initial)
            .await
            .into_iter()
            .map(|r| r.text)
            .collect();
        assert_eq!(got, expected, "the initial state");
    }
    env.sim.set_churn_rate(100.0);
    let expected = plain_texts(&mut plain, 200).await;
    let mut referring_back = 0;
    for (i, c) in clients.iter_mut().enumerate() {
        let live = texts(c, 200).await;
        let got: Vec<&str> = live.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(got, expected, "client {i}: the live events");
        let large = expected.iter().filter(|t| t.len() >= 1024).count();
        assert!(large > 0, "some frames are over the threshold");
        assert_eq!(
            live.iter().filter(|r| r.compressed.is_some()).count(),
            large,
            "client {i}: exactly the frames over the threshold came compressed"
        );
        // A payload under half what the frame costs deflated on its own
        // refers back into the message before it.
        let back = live
            .iter()
            .filter(|r| {
                r.compressed
                    .is_some_and(|n| n * 2 < deflate_raw(r.text.as_bytes(), true).len())
            })
            .count();
        if !c.2 {
            assert_eq!(back, 0, "client {i} asked for no context takeover");
        }
        referring_back += back;
    }
    env.sim.set_churn_rate(0.0);
    assert!(
        referring_back > 0,
        "frames the browsers got in the same order refer back"
    );
    for text in &expected {
        let frame: serde_json::Value = serde_json::from_str(text).expect("a JSON frame");
        assert_eq!(frame["type"], "DATA");
    }
}
