//! Metrics and fault injection, in-process and over `/_sim/`.

mod sim_common;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kubemux_sim::WatchFailure;
use serde_json::json;
use sim_common::{
    client, client_with_retry, eventually, raw_http, start, summary, test_config, try_watch, watch,
};

#[tokio::test]
async fn metrics_track_watches_and_lists() {
    let server = start(test_config()).await;
    let client = client(&server).await;
    let pods: Api<Pod> = Api::all(client.clone());
    pods.list(&ListParams::default()).await.expect("list");
    pods.list(&ListParams::default()).await.expect("list");
    assert_eq!(server.list_requests("pods"), 2);

    let mut stream = watch(&client, "/api/v1/pods?watch=1").await;
    stream.next().await.expect("first event");
    assert_eq!(server.active_watches("pods"), 1);
    assert_eq!(server.watch_requests("pods"), 1);
    let (code, head, text) = raw_http(&server, "GET", "/metrics", "").await;
    assert_eq!(code, 200, "{head}");
    assert!(
        text.contains(r#"sim_active_watches{resource="pods"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"sim_watch_requests_total{resource="pods"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"sim_list_requests_total{resource="pods"} 2"#),
        "{text}"
    );

    // The client going away (TCP connection closed) closes the stream.
    drop(stream);
    drop(pods);
    drop(client);
    eventually(|| server.active_watches("pods") == 0).await;
    server.shutdown().await;
}

#[tokio::test]
async fn drop_watches_ends_streams_cleanly() {
    let server = start(test_config()).await;
    let client = client(&server).await;
    let mut a = watch(&client, "/api/v1/nodes?watch=1").await;
    let mut b = watch(&client, "/api/v1/namespaces?watch=1").await;
    a.next().await.expect("node");
    b.next().await.expect("namespace");
    assert_eq!(server.faults().drop_watches(), 2);
    assert_eq!(a.drain().await.len(), 2);
    assert_eq!(b.drain().await.len(), 3);
    eventually(|| server.active_watches("nodes") + server.active_watches("namespaces") == 0).await;
    // New watches are unaffected; the HTTP route does the same.
    let mut c = watch(&client, "/api/v1/nodes?watch=1").await;
    c.next().await.expect("node");
    let (code, _, body) = raw_http(&server, "POST", "/_sim/drop-watches", "").await;
    assert_eq!((code, body.as_str()), (200, r#"{"droppedWatches":1}"#));
    assert_eq!(c.drain().await.len(), 2);
    server.shutdown().await;
}

#[tokio::test]
async fn injected_watch_failures() {
    let server = start(test_config()).await;
    let client = client_with_retry(&server, false).await;
    server.faults().fail_next_watches(1, WatchFailure::Expired);
    server
        .faults()
        .fail_next_watches(1, WatchFailure::InternalError);
    for (code, reason) in [(410, "Expired"), (500, "InternalError")] {
        match try_watch(&client, "/api/v1/pods?watch=1").await {
            Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (code, reason)),
            Err(e) => panic!("expected {code}, got {e:?}"),
            Ok(_) => panic!("expected {code}, got a stream"),
        }
    }
    let mut ok = watch(&client, "/api/v1/pods?watch=1").await;
    ok.next().await.expect("healthy again");
    assert_eq!(server.watch_requests("pods"), 3);

    let (code, _, _) = raw_http(
        &server,
        "POST",
        "/_sim/fail-watches?count=2&code=429&retryAfter=7",
        "",
    )
    .await;
    assert_eq!(code, 200);
    for _ in 0..2 {
        let (code, head, body) = raw_http(&server, "GET", "/api/v1/pods?watch=1", "").await;
        assert_eq!(code, 429);
        assert!(
            head.to_ascii_lowercase().contains("retry-after: 7"),
            "{head}"
        );
        assert!(body.contains(r#""reason":"TooManyRequests""#), "{body}");
    }
    let (code, _, _) = raw_http(
        &server,
        "POST",
        "/_sim/fail-watches",
        r#"{"count": 1, "code": 410}"#,
    )
    .await;
    assert_eq!(code, 200);
    assert!(
        matches!(try_watch(&client, "/api/v1/pods?watch=1").await, Err(kube::Error::Api(s)) if s.code == 410)
    );
    let (code, _, _) = raw_http(&server, "POST", "/_sim/fail-watches?code=418", "").await;
    assert_eq!(code, 400);
    server.shutdown().await;
}

#[tokio::test]
async fn stalled_watches_send_nothing_until_resumed() {
    let server = start(test_config()).await;
    let client = client(&server).await;
    let mut stream = watch(&client, "/api/v1/namespaces/team-b/configmaps?watch=1").await;
    assert_eq!(
        summary(&stream.next_event().await.expect("initial")).1,
        "kube-root-ca.crt"
    );
    let (code, _, _) = raw_http(&server, "POST", "/_sim/stall", "").await;
    assert_eq!(code, 200);
    assert!(server.faults().is_stalled());
    server
        .store()
        .create(
            "configmaps",
            Some("team-b"),
            json!({"metadata": {"name": "during-stall"}}),
        )
        .expect("create");
    let quiet = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(quiet.is_err(), "a stalled watch sent {quiet:?}");
    assert_eq!(server.active_watches("configmaps"), 1);
    server.faults().resume_watches();
    assert_eq!(
        summary(&stream.next_event().await.expect("after resume")),
        ("ADDED".into(), "during-stall".into())
    );

    // A stalled watch can still be dropped.
    server.faults().stall_watches();
    server.faults().drop_watches();
    assert!(stream.drain().await.is_empty());
    let (code, _, _) = raw_http(&server, "POST", "/_sim/resume", "").await;
    assert_eq!(code, 200);
    assert!(!server.faults().is_stalled());
    server.shutdown().await;
}

async fn refused(server: &kubemux_sim::SimServer) -> bool {
    tokio::net::TcpStream::connect(server.addr()).await.is_err()
}

#[tokio::test]
async fn refused_connections_are_connection_errors() {
    let server = start(test_config()).await;
    let client = client_with_retry(&server, false).await;
    let pods: Api<Pod> = Api::all(client.clone());
    pods.list(&ListParams::default())
        .await
        .expect("pooled connection");
    let mut stream = watch(&client, "/api/v1/pods?watch=1").await;
    stream.next().await.expect("event");

    server
        .faults()
        .refuse_connections(Duration::from_millis(400));
    // The open watch is cut (not a clean, complete stream of events).
    let _ = stream.drain().await;
    let deadline = tokio::time::Instant::now() + sim_common::GUARD;
    while !refused(&server).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listener still accepting"
        );
        tokio::task::yield_now().await;
    }
    match pods.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => panic!("expected a connection error, got status {s:?}"),
        Err(_) => {}
        Ok(_) => panic!("request succeeded while refusing connections"),
    }
    // Afterwards the same address accepts again and the client recovers.
    let deadline = tokio::time::Instant::now() + sim_common::GUARD;
    while pods.list(&ListParams::default()).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "server did not come back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually(|| server.active_watches("pods") == 0).await;

    // Over HTTP the fault applies just after the answer is sent.
    let (code, _, body) =
        raw_http(&server, "POST", "/_sim/refuse-connections?seconds=0.3", "").await;
    assert_eq!(code, 200, "{body}");
    let deadline = tokio::time::Instant::now() + sim_common::GUARD;
    while !refused(&server).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listener still accepting"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let deadline = tokio::time::Instant::now() + sim_common::GUARD;
    while refused(&server).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listener never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn compaction_over_http() {
    let server = start(test_config()).await;
    let client = client(&server).await;
    let old = server.store().resource_version() - 1;
    let (code, _, body) = raw_http(&server, "POST", "/_sim/compact", "").await;
    assert_eq!(code, 200);
    assert_eq!(
        body,
        format!(r#"{{"compactedResourceVersion":"{}"}}"#, old + 1)
    );
    let mut stream = watch(
        &client,
        &format!("/api/v1/pods?watch=1&resourceVersion={old}"),
    )
    .await;
    let events = stream.drain().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["reason"], "Expired");
    server.shutdown().await;
}

#[tokio::test]
async fn a_watcher_that_falls_too_far_behind_is_ended() {
    let server = start(test_config()).await;
    let client = client(&server).await;
    let mut stream = watch(&client, "/api/v1/namespaces/default/configmaps?watch=1").await;
    stream.next().await.expect("initial");
    server.faults().stall_watches();
    let store = server.store();
    store
        .create(
            "configmaps",
            Some("default"),
            json!({"metadata": {"name": "flood"}}),
        )
        .expect("create");
    for i in 0..20_000 {
        store
            .merge_patch(
                "configmaps",
                Some("default"),
                "flood",
                &json!({"data": {"i": i.to_string()}}),
            )
            .expect("patch");
    }
    server.faults().resume_watches();
    // The server ends the stream instead of buffering without bound.
    let rest = stream.drain().await;
    assert!(rest.len() < 20_000, "{} events delivered", rest.len());
    eventually(|| server.active_watches("configmaps") == 0).await;
    server.shutdown().await;
}
