//! `kubemux demo` as a user runs it: the real binary, a real client.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_starts_and_a_client_sees_live_pod_events() {
    let demo = spawn_kubemux(
        &[
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--sim-listen",
            "127.0.0.1:0",
            "--churn",
            "50",
        ],
        &[],
    )
    .await;
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
