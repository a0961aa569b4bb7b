//! Running kubemux in production: configuration precedence, metrics that
//! match what happened, readiness, the status API and graceful shutdown.

use std::time::Duration;

use crate::support::*;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;

fn kubemux() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kubemux"));
    c.env_remove("RUST_LOG").kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("KUBEMUX_") {
            c.env_remove(k);
        }
    }
    c
}

async fn effective(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = kubemux();
    c.arg("config").args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().await.expect("kubemux runs")
}

#[tokio::test]
async fn flags_override_env_which_overrides_the_file() {
    let dir = std::env::temp_dir().join(format!("kubemux-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.toml");
    std::fs::write(
        &file,
        "linger = \"11s\"\nping_interval = \"12s\"\npong_timeout = \"13s\"\n",
    )
    .unwrap();
    let out = effective(
        &["--config", file.to_str().unwrap(), "--linger", "1s"],
        &[("KUBEMUX_LINGER", "2s"), ("KUBEMUX_PING_INTERVAL", "3s")],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("linger = \"1s\""), "flag wins: {text}");
    assert!(
        text.contains("ping_interval = \"3s\""),
        "env beats file: {text}"
    );
    assert!(
        text.contains("pong_timeout = \"13s\""),
        "file beats default: {text}"
    );
    assert!(text.contains("max_subscriptions = 1000"), "default: {text}");
    let out = effective(&[], &[("KUBEMUX_CONFIG", file.to_str().unwrap())]).await;
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("linger = \"11s\"")
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_sizes_take_units_in_flags_env_and_file() {
    let dir = std::env::temp_dir().join(format!("kubemux-sizes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.toml");
    std::fs::write(
        &file,
        "max_message_size = \"64 KiB\"\nready_max_queue_bytes = 4096\n",
    )
    .unwrap();
    let out = effective(
        &[
            "--config",
            file.to_str().unwrap(),
            "--queue-max-bytes",
            "8 MiB",
        ],
        &[("KUBEMUX_QUEUE_MEMORY_BUDGET", "1GiB")],
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "queue_max_bytes = 8388608",
        "queue_memory_budget = 1073741824",
        "max_message_size = 65536",
        "ready_max_queue_bytes = 4096",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
    std::fs::remove_dir_all(&dir).ok();
    let demo = spawn_kubemux(
        &[
            "demo",
            "--queue-max-bytes",
            "8 MiB",
            "--listen",
            "127.0.0.1:0",
            "--sim-listen",
            "127.0.0.1:0",
        ],
        &[("KUBEMUX_MAX_MESSAGE_SIZE", "64KiB")],
    )
    .await;
    let mut c = Client::connect(&format!("ws://{}/wsMultiplexer", demo.addr)).await;
    c.send(
        json!({"clusterId": "demo", "path": "/api/v1/pods", "query": "watch=1", "type": "REQUEST"}),
    )
    .await;
    c.event().await;
    let (status, _) = demo.terminate().await;
    assert!(status.success());
}

#[tokio::test]
async fn invalid_settings_are_rejected_at_start_by_name() {
    for (args, env, setting) in [
        (
            vec!["--max-subscriptions", "0"],
            vec![],
            "max_subscriptions",
        ),
        (vec!["--linger", "3h"], vec![], "linger"),
        (
            vec![],
            vec![("KUBEMUX_QUEUE_MAX_BYTES", "12")],
            "queue_max_bytes",
        ),
        (vec!["--history-max-age", "5s"], vec![], "history_max_age"),
        (
            vec!["--console-max-subscriptions", "0"],
            vec![],
            "console_max_subscriptions = 0: accepted 1 to 100000",
        ),
        (
            vec![],
            vec![("KUBEMUX_DASHBOARD_PING_INTERVAL", "0s")],
            "dashboard_ping_interval = 0s: accepted 1s to 10m",
        ),
    ] {
        let out = effective(&args, &env).await;
        assert!(!out.status.success(), "{args:?} {env:?} must be rejected");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(setting) && err.contains("accepted"),
            "{setting}: {err}"
        );
    }
    let out = kubemux().args(["serve", "--help"]).output().await.unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--config",
        "--listen",
        "--linger",
        "--max-message-size",
        "--max-subscriptions",
        "--queue-max-bytes",
        "--queue-max-frames",
        "--history-max-events",
        "--history-max-age",
        "--bookmark-interval",
        "--ping-interval",
        "--pong-timeout",
        "--shutdown-grace",
        "--log-format",
        "--dashboard-message-rate",
        "--notifications-pong-timeout",
        "--console-max-subscriptions",
        "--kubeconfig",
        "--in-cluster",
    ] {
        assert!(help.contains(flag), "serve --help documents {flag}");
    }
}

/// The frame that answers request `id` on a subscription-API socket.
async fn answer(c: &mut Client, id: &str) -> Value {
    loop {
        let frame = c.frame().await;
        if frame["id"] == id {
            return frame;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialect_limit_given_by_flag_env_or_file_reaches_the_dialect() {
    let dir = std::env::temp_dir().join(format!("kubemux-dialect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.toml");
    std::fs::write(&file, "console_max_subscriptions = 2\n").unwrap();
    let file = file.to_str().unwrap();
    for (given, env) in [
        (vec!["--console-max-subscriptions", "2"], vec![]),
        (vec![], vec![("KUBEMUX_CONSOLE_MAX_SUBSCRIPTIONS", "2")]),
        (vec!["--config", file], vec![]),
    ] {
        let on_free_ports = ["--listen", "127.0.0.1:0", "--sim-listen", "127.0.0.1:0"];
        let args = [&["demo", "--print-demo-token"], &on_free_ports[..], &given].concat();
        let demo = spawn_kubemux(&args, &env).await;
        let token = demo
            .printed("demo token for the subscription API (valid 24 h): ")
            .await;
        let mut c = Client::connect(&format!("ws://{}/ws/v1", demo.addr)).await;
        c.send(json!({"type": "auth", "id": "a", "token": token}))
            .await;
        assert_eq!(answer(&mut c, "a").await["success"], true, "{given:?}");
        let workspace = json!({"resource": "workspace", "workspace_id": "demo"});
        for id in ["s0", "s1"] {
            c.send(json!({"type": "subscribe", "id": id, "data": workspace}))
                .await;
            let result = answer(&mut c, id).await;
            assert_eq!(result["success"], true, "{given:?} {env:?}: {result}");
        }
        c.send(json!({"type": "subscribe", "id": "s2", "data": workspace}))
            .await;
        let over = answer(&mut c, "s2").await;
        assert_eq!(over["type"], "error", "{given:?} {env:?}: {over}");
        assert_eq!(
            over["error"]["code"], "SUBSCRIPTION_LIMIT_EXCEEDED",
            "{over}"
        );
        assert_eq!(
            over["error"]["details"]["current_subscriptions"], 2,
            "{over}"
        );
        let (status, _) = demo.terminate().await;
        assert!(status.success());
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened() {
    let env = start_default().await;
    let (pods, _) = env.sim.store().list("pods", None, None, None).unwrap();
    let (nodes, _) = env.sim.store().list("nodes", None, None, None).unwrap();
    let mut a = env.client().await;
    let mut b = env.client().await;
    let mut c = env.client().await;
    a.request("/api/v1/pods", "watch=1").await;
    a.request("/api/v1/nodes", "watch=1").await;
    b.request("/api/v1/pods", "watch=1&timeoutSeconds=600")
        .await;
    c.request("/api/v1/nodes", "watch=1").await;
    c.request("/api/v1/nodes", "watch=1").await;
    let mut frames = 0;
    frames += a.events(pods.len() + nodes.len()).await.len();
    frames += b.events(pods.len()).await.len();
    frames += c.events(nodes.len()).await.len();
    env.sim
        .store()
        .merge_patch(
            "nodes",
            None,
            nodes[0]["metadata"]["name"].as_str().unwrap(),
            &json!({"metadata": {"labels": {"touched": "yes"}}}),
        )
        .unwrap();
    frames += a.events(1).await.len();
    frames += c.events(1).await.len();
    let text = env.metrics_text().await;
    for family in [
        "kubemux_connections",
        "kubemux_subscribers",
        "kubemux_upstream_watches",
        "kubemux_frames_out",
        "kubemux_resumes",
    ] {
        assert!(
            text.contains(&format!("# HELP {family}")),
            "HELP for {family}"
        );
        assert!(
            text.contains(&format!("# TYPE {family}")),
            "TYPE for {family}"
        );
    }
    assert_eq!(
        metric(
            &text,
            "kubemux_connections_opened_total{dialect=\"headlamp\"}"
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "kubemux_connections{dialect=\"headlamp\"}"),
        Some(3.0)
    );
    assert_eq!(
        metric(&text, "kubemux_subscriptions_total"),
        Some(4.0),
        "the repeated REQUEST is not a new subscription"
    );
    assert_eq!(metric(&text, "kubemux_subscribers"), Some(4.0));
    assert_eq!(
        metric(&text, "kubemux_upstream_watches{cluster=\"sim\"}"),
        Some(2.0)
    );
    assert_eq!(
        metric(&text, "kubemux_frames_out_total"),
        Some(frames as f64)
    );
    assert_eq!(
        metric(&text, "kubemux_events_in_total{cluster=\"sim\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "kubemux_resumes_total{outcome=\"snapshot\"}"),
        Some(4.0)
    );
    assert_eq!(
        metric(&text, "kubemux_slow_consumer_terminations_total"),
        Some(0.0)
    );
    assert_eq!(metric(&text, "kubemux_frames_dropped_total"), Some(0.0));
    // Read from the runtime at scrape time: three open connections hold at least a task each.
    let tasks = metric(&text, "kubemux_tasks");
    assert!(tasks.is_some_and(|n| n >= 3.0), "kubemux_tasks = {tasks:?}");
    drop(a);
    drop(b);
    drop(c);
    eventually_ok("the connections close", async || {
        let text = env.metrics_text().await;
        if metric(&text, "kubemux_connections{dialect=\"headlamp\"}") == Some(0.0) {
            assert_eq!(metric(&text, "kubemux_subscribers"), Some(0.0));
            Ok(())
        } else {
            Err(text)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_status_report_the_clusters_and_watches() {
    let env = start_default().await;
    let ready = http_get(env.server.addr(), "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let mut c = env.client().await;
    c.request(
        "/api/v1/pods",
        // A field kubemux does not evaluate: the watch is one of its own.
        "watch=1&labelSelector=app%3Dweb%2Ctier+in+(a%2Cb)&fieldSelector=spec.hostNetwork%3Dfalse",
    )
    .await;
    let status: Value = eventually_ok("the status shows the watch", async || {
        let body = http_get_body(env.server.addr(), "/api/status").await;
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if v["clusters"][0]["reachable"] == true
            && v["watches"].as_array().is_some_and(|w| !w.is_empty())
        {
            Ok(v)
        } else {
            Err(body)
        }
    })
    .await;
    assert_eq!(status["clusters"][0]["name"], CLUSTER);
    assert!(
        status["clusters"][0]["version"]
            .as_str()
            .unwrap()
            .starts_with("v1.")
    );
    assert_eq!(status["watches"][0]["path"], "/api/v1/pods");
    let selectors = status["watches"][0]["selectors"]
        .as_str()
        .unwrap_or_default();
    assert!(
        selectors.contains("app%3Dweb"),
        "the key, encoded: {selectors}"
    );
    assert_eq!(
        status["watches"][0]["selectorText"],
        "fieldSelector: spec.hostNetwork=false; labelSelector: app=web,tier in (a,b)",
        "decoded for the page"
    );
    assert_eq!(status["watches"][0]["subscribers"], 1);
    let verbose = http_get(env.server.addr(), "/readyz?verbose").await;
    assert!(verbose.contains("[+]cluster sim reachable"), "{verbose}");
    assert!(verbose.contains("readyz check passed"));
    let page = http_get(env.server.addr(), "/").await;
    assert!(page.contains("<title>kubemux status</title>") && page.contains("api/status"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_completes_every_subscriber_closes_with_1012_and_exits_zero() {
    let demo = spawn_demo(&["--churn", "5", "--shutdown-grace", "5s"]).await;
    let addr = demo.addr.clone();
    let url = format!("ws://{addr}/wsMultiplexer");
    let mut clients = Vec::new();
    for path in ["/api/v1/pods", "/api/v1/nodes"] {
        let mut c = Client::connect(&url).await;
        c.send(json!({"clusterId": "demo", "path": path, "query": "watch=1", "type": "REQUEST"}))
            .await;
        c.event().await;
        clients.push((c, path));
    }
    let terminated = tokio::spawn(demo.terminate());
    for (c, path) in clients.iter_mut() {
        let mut completed = false;
        let mut close_code = None;
        while let Ok(Some(msg)) = tokio::time::timeout(PATIENCE, c.ws.next()).await {
            match msg {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "COMPLETE" {
                        assert_eq!(v["path"], *path);
                        completed = true;
                    }
                }
                Ok(Message::Close(frame)) => {
                    close_code = frame.map(|f| u16::from(f.code));
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        assert!(completed, "{path}: COMPLETE before the close");
        assert_eq!(
            close_code,
            Some(1012),
            "{path}: closed with 1012 (service restart)"
        );
    }
    let (status, _) = terminated.await.unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_have_a_line_per_connection_and_watch_and_none_per_event() {
    let demo = spawn_demo(&["--churn", "200", "--log-format", "json", "--linger", "0s"]).await;
    let addr = demo.addr.clone();
    let mut c = Client::connect(&format!("ws://{addr}/wsMultiplexer")).await;
    c.send(
        json!({"clusterId": "demo", "path": "/api/v1/pods", "query": "watch=1", "type": "REQUEST"}),
    )
    .await;
    let mut events = 0;
    while events < 300 {
        c.event().await;
        events += 1;
    }
    c.ws.close(None).await.ok();
    drop(c);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, log) = demo.terminate().await;
    assert!(status.success());
    let records: Vec<Value> = log
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
        })
        .collect();
    let count = |msg: &str| records.iter().filter(|r| r["message"] == msg).count();
    assert_eq!(count("connection opened"), 1, "{log}");
    assert_eq!(count("connection closed"), 1, "{log}");
    assert_eq!(count("starting shared watch"), 1, "{log}");
    assert_eq!(count("shared watch idle, stopped"), 1, "{log}");
    let opened = records
        .iter()
        .find(|r| r["message"] == "connection opened")
        .unwrap();
    assert_eq!(opened["span"]["dialect"], "headlamp", "{opened}");
    let started = records
        .iter()
        .find(|r| r["message"] == "starting shared watch")
        .unwrap();
    assert_eq!(started["cluster"], "demo");
    assert!(
        records.len() < 40,
        "{} log lines for {events} events: nothing per event",
        records.len()
    );
    assert!(
        !log.contains("kubemux-sim-token"),
        "credentials never logged"
    );
}

#[tokio::test]
async fn auth_none_refuses_a_non_loopback_listener_without_the_override() {
    let out = kubemux()
        .args([
            "demo",
            "--listen",
            "0.0.0.0:0",
            "--sim-listen",
            "127.0.0.1:0",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        !out.status.success(),
        "demo (auth none) must not serve 0.0.0.0"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--allow-unauthenticated-remote") && err.contains("0.0.0.0"),
        "{err}"
    );
    let out = effective(
        &[
            "--auth",
            "none",
            "--listen",
            "0.0.0.0:4466",
            "--allow-unauthenticated-remote",
        ],
        &[],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = effective(&["--listen", "0.0.0.0:4466"], &[]).await;
    assert!(out.status.success(), "passthrough may listen anywhere");
    assert!(String::from_utf8_lossy(&out.stdout).contains("auth = \"passthrough\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_readiness_first_and_keeps_serving_for_the_shutdown_delay() {
    let demo = spawn_demo(&["--shutdown-delay", "4s"]).await;
    let addr: std::net::SocketAddr = demo.addr.parse().unwrap();
    assert!(http_get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
    let mut c = Client::connect(&format!("ws://{addr}/wsMultiplexer")).await;
    c.send(json!({"clusterId": "demo", "path": "/api/v1/nodes", "query": "watch=1", "type": "REQUEST"}))
        .await;
    c.event().await;
    let terminated = tokio::spawn(demo.terminate());
    eventually_ok("readiness fails", async || {
        let answer = http_get(addr, "/readyz?verbose").await;
        if answer.starts_with("HTTP/1.1 503") {
            assert!(answer.contains("[-]listeners"), "{answer}");
            Ok(())
        } else {
            Err(answer)
        }
    })
    .await;
    // Still served: a new REQUEST on the open socket is answered.
    c.send(json!({"clusterId": "demo", "path": "/api/v1/namespaces", "query": "watch=1", "type": "REQUEST"}))
        .await;
    loop {
        let frame = c.frame().await;
        assert_ne!(
            frame["type"], "COMPLETE",
            "nothing ends during the delay: {frame}"
        );
        if frame["path"] == "/api/v1/namespaces" {
            assert_eq!(frame["type"], "DATA", "{frame}");
            break;
        }
    }
    let (status, _) = terminated.await.unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_above_the_connection_budget() {
    let env = start(
        kubemux_sim::SimConfig::default(),
        quick_hub(),
        kubemux::server::ServerConfig {
            ready_budget: kubemux::server::ReadyBudget {
                max_connections: 2,
                max_queue_bytes: 0,
            },
            ..kubemux::server::ServerConfig::default()
        },
    )
    .await;
    let addr = env.server.addr();
    assert!(http_get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
    let a = env.client().await;
    let b = env.client().await;
    let full = eventually_ok("readiness fails when full", async || {
        let answer = http_get(addr, "/readyz?verbose").await;
        if answer.starts_with("HTTP/1.1 503") {
            Ok(answer)
        } else {
            Err(answer)
        }
    })
    .await;
    assert!(full.contains("[-]budget: 2 connections"), "{full}");
    assert!(full.contains("[+]listeners"), "{full}");
    drop(a);
    drop(b);
    eventually_ok("readiness comes back", async || {
        let answer = http_get(addr, "/readyz").await;
        if answer.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(answer)
        }
    })
    .await;
}

/// GET /metrics with `accept` (none if empty); the content type and body.
async fn metrics_as(addr: std::net::SocketAddr, accept: &str) -> (String, String) {
    let request = Request::get("/metrics");
    let request = if accept.is_empty() {
        request
    } else {
        request.header("Accept", accept)
    };
    let answer = request.send(addr).await;
    let content_type = answer.header("content-type").expect("a content type");
    (content_type.to_string(), answer.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_plain_text_for_browsers_and_openmetrics_for_prometheus() {
    let env = start_default().await;
    let addr = env.server.addr();
    let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    for accept in ["", browser, "text/plain", "*/*"] {
        let (content_type, body) = metrics_as(addr, accept).await;
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "Accept {accept:?}: {content_type}"
        );
        assert!(!body.contains("# EOF"), "Accept {accept:?}");
        assert!(
            body.contains("# TYPE kubemux_subscriptions_total counter"),
            "a counter family is named like its samples: {body}"
        );
    }
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (content_type, body) = metrics_as(addr, prometheus).await;
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(
        body.contains("# TYPE kubemux_subscriptions counter"),
        "{body}"
    );
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    // Refused explicitly (q=0), OpenMetrics is not sent.
    let (content_type, _) = metrics_as(addr, "application/openmetrics-text;q=0, text/plain").await;
    assert!(content_type.starts_with("text/plain"), "{content_type}");
}
