//! `kubemux demo` as a user runs it: the real binary, a real client.

mod common;

use std::process::Stdio;

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_starts_and_a_client_sees_live_pod_events() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubemux"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--sim-listen",
            "127.0.0.1:0",
            "--churn",
            "50",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("kubemux starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("demo prints its address in time")
            .unwrap()
            .expect("demo keeps running");
        if let Some(rest) = line.strip_prefix("kubemux listening on http://") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let mut c = Client::connect(&format!("ws://{addr}/wsMultiplexer")).await;
    c.send(serde_json::json!({"clusterId": "demo", "path": "/api/v1/pods", "query": "watch=1", "userId": "", "type": "REQUEST"}))
        .await;
    loop {
        let (frame, ev) = c.event().await;
        assert_eq!(frame["clusterId"], "demo");
        if ev["type"] == "MODIFIED" || ev["type"] == "DELETED" {
            break;
        }
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}
