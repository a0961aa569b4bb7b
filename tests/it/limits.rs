//! Abuse limits over real sockets: connections per address, the handshake
//! deadline, the idle deadline, the message rate and the outbound memory
//! budget. Each refusal must be explained to the client and counted.

use std::time::Duration;

use crate::support::*;
use kubemux::server::ServerConfig;
use kubemux::ws::conn::Liveness;
use kubemux::ws::limits::Limits;
use kubemux::ws::outbound::QueueLimits;
use kubemux_sim::SimConfig;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn with_limits(limits: Limits) -> ServerConfig {
    ServerConfig {
        limits,
        ..ServerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_per_address_cap_get_429_until_one_closes() {
    let env = start(
        SimConfig::default(),
        quick_hub(),
        with_limits(Limits {
            connections_per_address: 3,
            ..Limits::default()
        }),
    )
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(env.client().await);
    }
    let refused = http_get(env.server.addr(), "/healthz").await;
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
    assert!(
        refused.contains("too many connections from 127.0.0.1: at most 3 per client address"),
        "{refused}"
    );
    assert!(
        WsConnect::new(&env.ws_url()).open().await.is_err(),
        "a fourth WebSocket is refused too"
    );
    assert_eq!(refusals(&env, "connections_per_address"), 2.0);

    // The upgraded sockets hold their slots; closing one frees it.
    let mut first = open.remove(0);
    first.ws.close(None).await.unwrap();
    while first.next().await.is_some() {}
    eventually_ok("the freed slot serves /healthz", async || {
        let ok = http_get(env.server.addr(), "/healthz").await;
        if ok.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(ok)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_handshake_is_disconnected() {
    let env = start(
        SimConfig::default(),
        quick_hub(),
        with_limits(Limits {
            handshake_timeout: Duration::from_millis(500),
            ..Limits::default()
        }),
    )
    .await;
    let mut slow = TcpStream::connect(env.server.addr()).await.unwrap();
    slow.write_all(b"GET /wsMultiplexer HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(PATIENCE, slow.read_to_end(&mut rest))
        .await
        .expect("the server closes the socket");
    assert!(
        read.is_err() || !String::from_utf8_lossy(&rest).contains("101"),
        "never upgraded"
    );
    env.eventually("the timeout is counted", || {
        refusals(&env, "handshake_timeout") == 1.0
    })
    .await;
    // A prompt client is unaffected.
    let mut fine = env.client().await;
    fine.request("/api/v1/namespaces", "watch=1").await;
    assert_eq!(fine.event().await.1["type"], "ADDED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_and_a_subscribed_one_is_not() {
    let env = start(
        SimConfig::default(),
        quick_hub(),
        ServerConfig {
            headlamp: kubemux::dialect::headlamp::Settings {
                liveness: Liveness {
                    ping_interval: Duration::from_millis(100),
                    idle_timeout: Some(Duration::from_millis(500)),
                    ..Liveness::default()
                },
                ..Default::default()
            },
            ..ServerConfig::default()
        },
    )
    .await;
    let mut idle = env.client().await;
    let mut busy = env.client().await;
    busy.request("/api/v1/namespaces", "watch=1").await;
    assert_eq!(busy.event().await.1["type"], "ADDED");
    let close = loop {
        match tokio::time::timeout(PATIENCE, futures::StreamExt::next(&mut idle.ws))
            .await
            .expect("the idle socket is closed")
        {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let close = close.expect("a close frame with a reason");
    assert_eq!(u16::from(close.code), 1000);
    assert!(close.reason.contains("idle"), "{}", close.reason);
    assert_eq!(refusals(&env, "idle_timeout"), 1.0);
    // Several idle periods later the subscribed connection still works.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    busy.request("/api/v1/nodes", "watch=1").await;
    while busy.event().await.0["path"] != "/api/v1/nodes" {}
    assert_eq!(refusals(&env, "idle_timeout"), 1.0);
}

/// A REQUEST of `/api/v1/namespaces` the client names by `i` (`limit` is
/// ignored by the watch, so every `i` is its own subscription, answered
/// at once with the namespaces as ADDED).
fn namespaces_query(i: usize) -> String {
    format!("watch=1&limit={i}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_beyond_the_rate_are_delayed_and_all_processed_in_order() {
    let env = start(
        SimConfig::default(),
        quick_hub(),
        ServerConfig {
            headlamp: kubemux::dialect::headlamp::Settings {
                message_rate: 20.0,
                message_burst: 3.0,
                ..Default::default()
            },
            ..ServerConfig::default()
        },
    )
    .await;
    let mut c = env.client().await;
    const SENT: usize = 30;
    for i in 0..SENT {
        c.request("/api/v1/namespaces", &namespaces_query(i)).await;
    }
    // A bad message waits its turn too, and is answered after them all.
    c.send(json!({"type": "NOPE"})).await;
    let mut answered = Vec::new();
    loop {
        let frame = c.frame().await;
        assert_ne!(frame["type"], "COMPLETE", "nothing is refused: {frame}");
        if frame["type"] == "ERROR" {
            let data = frame["data"].as_str().unwrap_or_default();
            assert!(data.contains("unknown type"), "only NOPE errs: {frame}");
            break;
        }
        let query = frame["query"].as_str().unwrap_or_default().to_string();
        if !answered.contains(&query) {
            answered.push(query);
        }
    }
    assert_eq!(
        answered,
        (0..SENT).map(namespaces_query).collect::<Vec<_>>(),
        "every REQUEST answered, in the order sent"
    );
    assert_eq!(refusals(&env, "message_rate"), 0.0);
    assert_eq!(
        metric(&env.hub.metrics().encode(), "kubemux_subscribers"),
        Some(SENT as f64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_overtakes_delayed_messages_and_a_flood_past_the_backlog_closes_with_1008() {
    // One token, then none for the rest of the test.
    let env = start(
        SimConfig::default(),
        quick_hub(),
        ServerConfig {
            headlamp: kubemux::dialect::headlamp::Settings {
                message_rate: 0.0001,
                message_burst: 1.0,
                ..Default::default()
            },
            ..ServerConfig::default()
        },
    )
    .await;
    let subscribers = || metric(&env.hub.metrics().encode(), "kubemux_subscribers");
    let mut c = env.client().await;
    c.request("/api/v1/namespaces", &namespaces_query(0)).await;
    assert_eq!(c.event().await.0["query"], namespaces_query(0));
    // Delayed behind the empty bucket; the CLOSE after it goes first.
    c.request("/api/v1/namespaces", &namespaces_query(1)).await;
    c.close("/api/v1/namespaces", &namespaces_query(0)).await;
    env.eventually("the CLOSE is honoured before the delayed REQUEST", || {
        subscribers() == Some(0.0)
    })
    .await;
    // A CLOSE also drops the REQUEST for the same subscription still
    // waiting, as processing in order would have ended it.
    c.close("/api/v1/namespaces", &namespaces_query(1)).await;

    // Thousands of messages more than the backlog holds.
    for i in 2..10_000 {
        let msg = json!({"clusterId": CLUSTER, "path": "/api/v1/namespaces", "query": namespaces_query(i), "type": "REQUEST"});
        let text = tokio_tungstenite::tungstenite::Message::text(msg.to_string());
        if futures::SinkExt::feed(&mut c.ws, text).await.is_err() {
            break;
        }
    }
    let _ = futures::SinkExt::flush(&mut c.ws).await;
    let close = loop {
        match tokio::time::timeout(PATIENCE, futures::StreamExt::next(&mut c.ws))
            .await
            .expect("the flooding socket is closed")
        {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => break frame,
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                // The rest of the first subscription's namespaces.
                assert!(
                    t.contains(&namespaces_query(0)),
                    "no delayed message is processed: {t}"
                )
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let close = close.expect("a close frame with a reason");
    assert_eq!(u16::from(close.code), 1008);
    assert!(close.reason.contains("message_rate"), "{}", close.reason);
    assert_eq!(refusals(&env, "message_rate"), 1.0);
    assert_eq!(subscribers(), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_memory_budget_new_sockets_get_503_and_the_backlogged_client_is_cut() {
    const BUDGET: usize = 1 << 20;
    let env = start(
        SimConfig::default(),
        quick_hub(),
        ServerConfig {
            queue: QueueLimits {
                budget: BUDGET,
                ..QueueLimits::default()
            },
            limits: Limits {
                queue_budget: BUDGET,
                ..Limits::default()
            },
            ..ServerConfig::default()
        },
    )
    .await;
    let mut stuck = env.client().await;
    stuck.request("/api/v1/configmaps", "watch=1").await;
    env.eventually("the watch is open", || {
        env.sim.watch_requests("configmaps") == 1
    })
    .await;
    let payload = "x".repeat(4096);
    let mut i = 0;
    while refusals(&env, "queue_budget") == 0.0 {
        churn_configmap(env.sim.store(), i, &payload);
        i += 1;
        assert!(i < 200_000, "the budget was never reached");
        if i % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let refused = http_get_upgrade(&env).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("outbound memory budget"), "{refused}");
    let text = env.hub.metrics().encode();
    assert_eq!(
        metric(&text, "kubemux_slow_consumer_terminations_total"),
        Some(1.0)
    );
    assert!(
        metric(&text, "kubemux_queue_bytes").unwrap() <= (BUDGET + 64 * 1024) as f64,
        "{text}"
    );
    drop(stuck);
    env.eventually("the stuck client's queue is released", || {
        metric(&env.hub.metrics().encode(), "kubemux_queue_bytes") == Some(0.0)
    })
    .await;
    let mut fresh = env.client().await;
    fresh.request("/api/v1/namespaces", "watch=1").await;
    assert_eq!(fresh.event().await.1["type"], "ADDED");
}

/// A WebSocket handshake by hand, returning the whole response.
async fn http_get_upgrade(env: &Env) -> String {
    Request::websocket("/wsMultiplexer")
        .upgrade(env.server.addr())
        .await
        .text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_keys_beyond_the_upstream_watch_limit_are_refused_by_name() {
    let env = start(
        SimConfig::default(),
        kubemux::hub::HubConfig {
            max_watches_per_cluster: 3,
            ..quick_hub()
        },
        ServerConfig::default(),
    )
    .await;
    let mut c = env.client().await;
    for i in 0..3 {
        c.request(
            "/api/v1/pods",
            &format!("watch=1&labelSelector=k%3D{i}&{OWN_WATCH}"),
        )
        .await;
    }
    env.eventually("three upstream watches", || {
        env.sim.active_watches("pods") == 3
    })
    .await;
    let mut other = env.client().await;
    other
        .request(
            "/api/v1/pods",
            &format!("watch=1&labelSelector=k%3D3&{OWN_WATCH}"),
        )
        .await;
    let err = error_of(&other.frame().await);
    assert!(
        err.contains("--max-upstream-watches") && err.contains('3'),
        "{err}"
    );
    assert_eq!(
        env.sim.active_watches("pods"),
        3,
        "no fourth upstream watch"
    );
    // Joining a watch that exists is not a new upstream watch.
    other
        .request(
            "/api/v1/pods",
            &format!("watch=1&labelSelector=k%3D0&timeoutSeconds=600&{OWN_WATCH}"),
        )
        .await;
    env.eventually("the join is served", || {
        env.hub.watches().iter().any(|w| w.subscribers == 2)
    })
    .await;
    // A watch that lingered out frees its place.
    c.close(
        "/api/v1/pods",
        &format!("watch=1&labelSelector=k%3D2&{OWN_WATCH}"),
    )
    .await;
    env.eventually("the closed key's watch stopped", || {
        env.hub.watch_count() == 2
    })
    .await;
    other
        .request(
            "/api/v1/pods",
            &format!("watch=1&labelSelector=k%3D3&{OWN_WATCH}"),
        )
        .await;
    env.eventually("the new key got its watch", || env.hub.watch_count() == 3)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_passthrough_identity_cannot_take_every_upstream_watch() {
    use kubemux::auth::policy::Policy;
    use kubemux::auth::review::Reviewer;
    use kubemux_sim::{Rule, SimAuth, UserInfo};
    let auth = SimAuth::new()
        .with_admin_token("admin-token")
        .with_token("token-a", UserInfo::new("a", "uid-a", ["team"]))
        .with_token("token-b", UserInfo::new("b", "uid-b", ["team"]))
        .with_rule(
            Rule::allow(["get", "list", "watch"], ["pods"])
                .users(["a", "b"])
                .api_groups([""]),
        );
    let env = start(
        SimConfig {
            auth: Some(auth),
            ..SimConfig::default()
        },
        kubemux::hub::HubConfig {
            max_watches_per_identity: 2,
            ..quick_hub()
        },
        ServerConfig {
            policy: Policy::passthrough(
                std::sync::Arc::new(Reviewer::new(
                    Duration::from_secs(30),
                    std::sync::Arc::new(kubemux::metrics::Metrics::new()),
                )),
                Duration::from_secs(30),
            ),
            ..ServerConfig::default()
        },
    )
    .await;
    let connect = |token: &'static str| {
        let url = env.ws_url();
        async move { WsConnect::new(&url).bearer(token).client().await.unwrap() }
    };
    let mut a = connect("token-a").await;
    for ns in ["default", "team-a"] {
        a.request(
            &format!("/api/v1/namespaces/{ns}/pods"),
            &format!("watch=1&{OWN_WATCH}"),
        )
        .await;
    }
    env.eventually("a's two watches", || env.hub.watch_count() == 2)
        .await;
    a.request(
        "/api/v1/namespaces/team-b/pods",
        &format!("watch=1&{OWN_WATCH}"),
    )
    .await;
    let refused = loop {
        let frame = a.frame().await;
        if frame["type"] == "ERROR" {
            break error_of(&frame);
        }
    };
    assert!(refused.contains("--max-watches-per-identity"), "{refused}");
    let mut b = connect("token-b").await;
    b.request(
        "/api/v1/namespaces/team-b/pods",
        &format!("watch=1&{OWN_WATCH}"),
    )
    .await;
    env.eventually("b still gets a watch of its own", || {
        env.hub.watch_count() == 3
    })
    .await;
}

/// Floods `path` on `addr` with `bad` messages from a socket with a tiny
/// receive buffer, reading nothing until kubemux has refused the flood as
/// unread answers, then reads: the connection ends with a 1008 close frame.
async fn flood_without_reading(env: &Env, addr: std::net::SocketAddr, path: &str, bad: &str) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let ws = WsConnect::new(&format!("ws://{addr}{path}"))
        .recv_buffer(4096)
        .open()
        .await
        .unwrap();
    let (mut sink, mut stream) = ws.split();
    let bad = bad.to_string();
    let flood =
        tokio::spawn(async move { while sink.send(Message::text(bad.clone())).await.is_ok() {} });
    env.eventually("the unread answers are refused", || {
        refusals(env, "unread_answers") == 1.0
    })
    .await;
    let code = loop {
        match tokio::time::timeout(PATIENCE, stream.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            other => panic!("{path}: the connection ended without a close frame: {other:?}"),
        }
    };
    flood.abort();
    assert_eq!(code, Some(1008), "{path}");
}

fn tiny_queue(config: ServerConfig) -> ServerConfig {
    ServerConfig {
        queue: QueueLimits {
            max_bytes: 4096,
            ..QueueLimits::default()
        },
        ..config
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_messages_without_reading_is_closed_with_1008() {
    let env = start(
        SimConfig::default(),
        quick_hub(),
        tiny_queue(ServerConfig::default()),
    )
    .await;
    flood_without_reading(&env, env.server.addr(), "/wsMultiplexer", "not json").await;
    let env = start(
        SimConfig::default(),
        quick_hub(),
        tiny_queue(ServerConfig {
            dashboard_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..ServerConfig::default()
        }),
    )
    .await;
    flood_without_reading(&env, env.server.extra_addrs()[0], "/ws", "not json").await;
    let secret = std::env::temp_dir().join(format!("kubemux-flood-{}", std::process::id()));
    std::fs::write(&secret, "flood-secret").unwrap();
    let verifier =
        kubemux::auth::jwt::JwtVerifier::from_settings(&kubemux::auth::jwt::JwtSettings {
            hs256_secret_file: Some(secret.clone()),
            user_claim: "sub".into(),
            groups_claim: "groups".into(),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
    std::fs::remove_file(&secret).ok();
    let metrics = std::sync::Arc::new(kubemux::metrics::Metrics::new());
    let env = start(
        SimConfig::default(),
        quick_hub(),
        tiny_queue(ServerConfig {
            console_auth: Some(std::sync::Arc::new(
                kubemux::dialect::console::ConsoleAuth {
                    verifier,
                    rechecks: kubemux::auth::recheck::Rechecks::new(
                        std::sync::Arc::new(kubemux::auth::review::Reviewer::new(
                            Duration::from_secs(30),
                            metrics,
                        )),
                        Duration::from_secs(30),
                    ),
                },
            )),
            subscriptions_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..ServerConfig::default()
        }),
    )
    .await;
    flood_without_reading(&env, env.server.extra_addrs()[0], "/ws", "not json").await;
}

/// A simulator whose pod list is at least 100 times the tiny queue's bound.
async fn big_snapshot_env(server: ServerConfig) -> (Env, usize) {
    let env = start(
        SimConfig {
            initial_pods: 250,
            object_size: 2048,
            ..SimConfig::default()
        },
        quick_hub(),
        tiny_queue(server),
    )
    .await;
    let list: Value =
        serde_json::from_str(&http_get_body(env.sim.addr(), "/api/v1/pods").await).unwrap();
    let pods = list["items"].as_array().unwrap();
    let bytes: usize = pods.iter().map(|p| p.to_string().len()).sum();
    assert!(
        bytes >= 100 * 4096,
        "the snapshot ({bytes} bytes) is 100x the queue's 4096"
    );
    (env, pods.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_receives_a_snapshot_a_hundred_times_its_queue() {
    let (env, pods) = big_snapshot_env(ServerConfig {
        dashboard_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..ServerConfig::default()
    })
    .await;
    let mut headlamp = env.client().await;
    headlamp.request("/api/v1/pods", "watch=1").await;
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < pods {
        let frame = headlamp.frame().await;
        assert_eq!(
            frame["type"], "DATA",
            "a reading client is not cut: {frame}"
        );
        let event: Value = serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
        assert_eq!(event["type"], "ADDED", "{event}");
        seen.insert(object_key(&event["object"]));
    }

    let mut dashboard = Client::connect(&format!("ws://{}/ws", env.server.extra_addrs()[0])).await;
    let state = loop {
        let frame = dashboard.frame().await;
        assert_ne!(frame["type"], "error", "{frame}");
        if frame["type"] == "initial_state" {
            break frame;
        }
    };
    assert_eq!(
        state["data"]["pods"].as_array().map(Vec::len),
        Some(pods),
        "every pod in the dashboard's initial state"
    );
    assert_eq!(
        metric(
            &env.hub.metrics().encode(),
            "kubemux_slow_consumer_terminations_total"
        ),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_after_a_big_snapshot_is_still_cut() {
    let env = start(
        SimConfig {
            initial_pods: 250,
            object_size: 2048,
            churn_rate: 1000.0,
            ..SimConfig::default()
        },
        quick_hub(),
        tiny_queue(ServerConfig::default()),
    )
    .await;
    let mut silent = RawWs::connect(env.server.addr(), "/wsMultiplexer", &[]).await;
    silent
        .send_text(
            &json!({"clusterId": CLUSTER, "path": "/api/v1/pods", "query": "watch=1",
                    "userId": "u", "type": "REQUEST"})
            .to_string(),
        )
        .await;
    env.eventually("the client that does not read is cut", || {
        metric(
            &env.hub.metrics().encode(),
            "kubemux_slow_consumer_terminations_total",
        )
        .unwrap_or(0.0)
            >= 1.0
    })
    .await;
}
