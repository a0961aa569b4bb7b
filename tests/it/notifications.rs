//! Seed 002: cluster notifications over `/ws/clusters` (and `/ws` on a
//! listener of its own), and `/api/clusters/{name}` after each event.

use std::time::Duration;

use crate::support::*;
use futures::StreamExt;
use kubemux::server::ServerConfig;
use kubemux_sim::{SimConfig, SimServer};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

async fn next_notification(c: &mut Client) -> Value {
    let frame = c.frame().await;
    assert!(frame["data"]["name"].is_string(), "{frame}");
    frame
}

/// Reads notifications until one of `kind` for `name` arrives.
async fn expect(c: &mut Client, kind: &str, name: &str) {
    loop {
        let n = next_notification(c).await;
        if n["type"] == kind && n["data"]["name"] == name {
            return;
        }
    }
}

async fn cluster_record(addr: std::net::SocketAddr, name: &str) -> (u16, Value) {
    let answer = Request::get(&format!("/api/clusters/{name}"))
        .send(addr)
        .await;
    (
        answer.code,
        serde_json::from_str(&answer.body).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contexts_and_reachability_become_notifications() {
    let dir = std::env::temp_dir().join(format!(
        "kubemux-notify-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let one = SimServer::start(SimConfig::default()).await.unwrap();
    let two = SimServer::start(SimConfig::default()).await.unwrap();
    let file = dir.join("config");
    write_kubeconfig(&file, &[("one", &one)]);
    let (server, _hub) = start_proxy_following(
        &file,
        quick_hub(),
        ServerConfig {
            health_interval: Duration::from_millis(100),
            notifications: kubemux::dialect::notifications::Settings {
                debounce: Duration::from_millis(200),
                ..Default::default()
            },
            notifications_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..ServerConfig::default()
        },
    )
    .await;
    let mut main = Client::connect(&format!("ws://{}/ws/clusters", server.addr())).await;
    let mut own = Client::connect(&format!("ws://{}/ws", server.extra_addrs()[0])).await;

    // Known once the feed's nodes watch has listed.
    let (code, record) = eventually_ok("node counts become known", async || {
        let (code, record) = cluster_record(server.addr(), "one").await;
        if code != 200 || !record["nodesTotal"].is_null() {
            Ok((code, record))
        } else {
            Err(record)
        }
    })
    .await;
    assert_eq!(code, 200);
    assert_eq!(record["name"], "one");
    assert_eq!(record["reachable"], true);
    let (nodes, _) = one.store().list("nodes", None, None, None).unwrap();
    assert_eq!(record["nodesTotal"], nodes.len());

    write_kubeconfig(&file, &[("one", &one), ("two", &two)]);
    expect(&mut main, "cluster.added", "two").await;
    expect(&mut own, "cluster.added", "two").await;

    one.faults().refuse_connections(Duration::from_secs(30));
    expect(&mut main, "cluster.updated", "one").await;
    expect(&mut own, "cluster.updated", "one").await;
    let (_, record) = cluster_record(server.extra_addrs()[0], "one").await;
    assert_eq!(record["reachable"], false, "{record}");
    assert!(record["lastError"].is_string());

    let name = nodes[0]["metadata"]["name"].as_str().unwrap().to_string();
    two.store()
        .merge_patch(
            "nodes",
            None,
            &name,
            &serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
        )
        .unwrap();
    expect(&mut main, "cluster.updated", "two").await;
    let (_, record) = cluster_record(server.addr(), "two").await;
    assert_eq!(
        record["nodesReady"].as_u64().unwrap() + 1,
        record["nodesTotal"].as_u64().unwrap(),
        "{record}"
    );

    write_kubeconfig(&file, &[("two", &two)]);
    expect(&mut main, "cluster.deleted", "one").await;
    expect(&mut own, "cluster.deleted", "one").await;
    let (code, record) = cluster_record(server.addr(), "one").await;
    assert_eq!(code, 404);
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .contains("unknown cluster")
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_512_bytes_closes_with_1009_and_others_are_ignored() {
    let env = start_default().await;
    let mut c = Client::connect(&format!("ws://{}/ws/clusters", env.server.addr())).await;
    c.send_raw("{\"type\":\"hello\"}").await;
    assert!(
        c.next_within(Duration::from_millis(300)).await.is_none(),
        "incoming data is ignored"
    );
    c.send_raw(&"x".repeat(600)).await;
    let mut code = None;
    while let Ok(Some(msg)) = tokio::time::timeout(PATIENCE, c.ws.next()).await {
        if let Ok(Message::Close(Some(frame))) = msg {
            code = Some(u16::from(frame.code));
            break;
        }
    }
    assert_eq!(code, Some(1009));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_answers_pings_is_closed_with_1008() {
    // Seed 002's ping period and pong wait at test speed.
    let env = start(
        SimConfig::default(),
        quick_hub(),
        ServerConfig {
            notifications: kubemux::dialect::notifications::Settings {
                liveness: quick_pings(
                    kubemux::dialect::notifications::Settings::default().liveness,
                ),
                ..Default::default()
            },
            ..ServerConfig::default()
        },
    )
    .await;
    assert_closed_for_no_pong(env.server.addr(), "/ws/clusters").await;
}
