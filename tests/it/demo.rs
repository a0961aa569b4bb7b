//! `kubemux demo` as a user runs it: the real binary, a real client.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_starts_and_a_client_sees_live_pod_events() {
    let demo = spawn_demo(&["--churn", "50"]).await;
    let mut c = Client::connect(&format!("ws://{}/wsMultiplexer", demo.addr)).await;
    c.send(serde_json::json!({"clusterId": "demo", "path": "/api/v1/pods", "query": "watch=1", "userId": "", "type": "REQUEST"}))
        .await;
    loop {
        let (frame, ev) = c.event().await;
        assert_eq!(frame["clusterId"], "demo");
        if ev["type"] == "MODIFIED" || ev["type"] == "DELETED" {
            break;
        }
    }
    let (status, _) = demo.terminate().await;
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn print_demo_token_enables_the_subscription_api_and_its_token_authenticates() {
    let demo = spawn_demo(&["--print-demo-token"]).await;
    let endpoint = demo.printed("subscription API (JWT): ").await;
    assert_eq!(endpoint, format!("ws://{}/ws/v1", demo.addr));
    let token = demo
        .printed("demo token for the subscription API (valid 24 h): ")
        .await;
    let mut c = Client::connect(&endpoint).await;
    c.send(serde_json::json!({"type": "auth", "id": "a1", "token": token}))
        .await;
    let result = loop {
        let frame = c.frame().await;
        if frame["type"] == "auth_result" {
            break frame;
        }
        assert_ne!(frame["type"], "error", "{frame}");
    };
    assert_eq!(result["success"], true, "{result}");
    assert_eq!(result["user_id"], kubemux_sim::auth::ADMIN_USER, "{result}");
    // The simulator's RBAC allows the token's user: a subscription starts.
    c.send(serde_json::json!({"type": "subscribe", "id": "w", "data": {"resource": "workspace", "workspace_id": "demo"}}))
        .await;
    let reply = loop {
        let frame = c.frame().await;
        if frame["id"] == "w" {
            break frame;
        }
    };
    assert_eq!(reply["type"], "subscribe_result", "{reply}");
    assert_eq!(reply["success"], true, "{reply}");
    let (status, _) = demo.terminate().await;
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_banner_lists_every_listener_it_opened() {
    let demo = spawn_demo(&[
        "--dashboard-listen",
        "127.0.0.1:0",
        "--notifications-listen",
        "127.0.0.1:0",
    ])
    .await;
    let addr = &demo.addr;
    let main = demo.printed("status page: ").await;
    assert!(
        main.contains(&format!("ws://{addr}/wsMultiplexer")),
        "{main}"
    );
    assert!(main.contains(&format!("http://{addr}/metrics")), "{main}");
    let also = demo.printed("dashboard stream: ").await;
    assert!(
        also.contains(&format!("ws://{addr}/ws/dashboard")),
        "{also}"
    );
    assert!(also.contains(&format!("ws://{addr}/ws/clusters")), "{also}");
    // Each dialect listener is printed at the address it bound, and answers.
    let dashboard = demo.printed("--dashboard-listen: ws://").await;
    let dashboard: std::net::SocketAddr = dashboard
        .strip_suffix("/ws")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("an address: {dashboard}"));
    assert_ne!(dashboard.port(), 0);
    let mut c = Client::connect(&format!("ws://{dashboard}/ws")).await;
    assert_eq!(c.frame().await["type"], "connection");
    let notifications = demo.printed("--notifications-listen: ws://").await;
    let rest: std::net::SocketAddr = notifications
        .split_once("/ws")
        .and_then(|(a, _)| a.parse().ok())
        .unwrap_or_else(|| panic!("an address: {notifications}"));
    assert!(
        notifications.ends_with(&format!("http://{rest}/api/clusters")),
        "{notifications}"
    );
    let body = http_get_body(rest, "/api/clusters").await;
    assert!(body.contains("demo"), "{body}");
    let (status, _) = demo.terminate().await;
    assert!(status.success());
}
