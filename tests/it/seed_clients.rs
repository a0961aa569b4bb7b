//! The seeds' own client code against the real proxy: `tests/seed-clients/run.js`
//! reads the seed files at run time, extracts their code blocks and runs
//! them in Node with `ws` as the browser's `WebSocket`. Each test here
//! starts the simulator and kubemux, runs one scenario and checks the JSON
//! result it prints; the 001 and 002 scenarios have kubemux restarted on
//! the same port while the seed code is connected.
//!
//! Needs `node` and `npm ci --prefix tests/seed-clients` (`.ci/run` does
//! it); the seeds are `../shared/seeds` beside the repository, or
//! `KUBEMUX_SEEDS`. A missing piece fails the test with what to do.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kubemux::auth::jwt::{JwtSettings, JwtVerifier};
use kubemux::auth::review::Reviewer;
use kubemux::dialect::console::ConsoleAuth;
use kubemux::hub::Hub;
use kubemux::metrics::Metrics;
use kubemux::server::{Server, ServerConfig};
use kubemux_sim::{Rule, SimAuth, SimConfig, SimServer};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

/// The harness's own bound on every wait; it reports a hang as a result.
const NODE_PATIENCE_MS: u64 = 30_000;

fn harness_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/seed-clients")
}

fn seeds_dir() -> PathBuf {
    std::env::var_os("KUBEMUX_SEEDS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/seeds"))
}

/// One `node run.js` and the lines it prints.
struct Harness {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    stderr: tokio::task::JoinHandle<String>,
}

impl Harness {
    /// Starts `scenario`; fails with instructions when Node, the npm
    /// install or the seeds are missing.
    async fn start(scenario: &str, settings: Value) -> Harness {
        let dir = harness_dir();
        let seeds = seeds_dir();
        assert!(
            seeds.is_dir(),
            "the seed files are needed at {} (CI has shared/ beside the repository; or set KUBEMUX_SEEDS)",
            seeds.display()
        );
        for module in ["ws", "typescript"] {
            assert!(
                dir.join("node_modules").join(module).is_dir(),
                "tests/seed-clients/node_modules/{module} is missing: run `npm ci --prefix tests/seed-clients` (.ci/run does)"
            );
        }
        let mut settings = settings;
        settings["patienceMs"] = json!(NODE_PATIENCE_MS);
        let mut child = tokio::process::Command::new("node")
            .current_dir(&dir)
            .arg("run.js")
            .arg(scenario)
            .arg(&seeds)
            .arg(settings.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("the seed-client tests need Node.js (`node` on PATH, 18 or newer): {e}")
            });
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        Harness {
            child,
            lines: BufReader::new(stdout).lines(),
            stderr,
        }
    }

    /// The next JSON line. The harness bounds its own waits, so this only
    /// guards against a harness that stops printing altogether.
    async fn next(&mut self) -> Value {
        let wait = Duration::from_millis(NODE_PATIENCE_MS) + PATIENCE;
        match tokio::time::timeout(wait, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("the harness printed a non-JSON line ({e}): {line}")),
            other => {
                let _ = self.child.start_kill();
                let stderr = (&mut self.stderr).await.unwrap_or_default();
                panic!("the harness stopped ({other:?}); its stderr:\n{stderr}")
            }
        }
    }

    /// The next line that asks for something (`Step::Await`) or the
    /// result (`Step::Done`, which must be `ok`); progress lines are
    /// skipped.
    async fn step(&mut self) -> Step {
        loop {
            let line = self.next().await;
            if let Some(what) = line["await"].as_str() {
                return Step::Await(what.to_string());
            }
            if let Some(ok) = line["ok"].as_bool() {
                if !ok {
                    let _ = self.child.start_kill();
                    let stderr = (&mut self.stderr).await.unwrap_or_default();
                    panic!("the seed client failed: {line}\nits stderr:\n{stderr}");
                }
                return Step::Done(line["result"].clone());
            }
        }
    }
}

enum Step {
    Await(String),
    Done(Value),
}

/// Stops `server` and starts a new one (and hub) with the same settings,
/// its dialect listener on the same `port`, as a restarted proxy would be.
async fn restart(
    server: Server,
    registry: &Arc<kubemux::cluster::Registry>,
    config: impl Fn(SocketAddr) -> ServerConfig,
    port: SocketAddr,
) -> Server {
    server.shutdown(Duration::from_secs(5)).await;
    let hub = Hub::new(quick_hub(), registry.clone(), Arc::new(Metrics::new()));
    Server::start("127.0.0.1:0".parse().unwrap(), hub, config(port))
        .await
        .unwrap_or_else(|e| panic!("kubemux restarts on {port}: {e}"))
}

/// Keeps changing the simulated cluster with `change(n)` (n = 0, 1, …)
/// until dropped, so a connected client always has something to receive.
fn keep_changing(
    sim: &SimServer,
    change: impl Fn(&kubemux_sim::Store, u64) + Send + 'static,
) -> tokio_util::task::AbortOnDropHandle<()> {
    let store = sim.store().clone();
    tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        for n in 0.. {
            change(&store, n);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }))
}

fn set_node_ready(store: &kubemux_sim::Store, name: &str, ready: bool) {
    let status = if ready { "True" } else { "False" };
    store
        .merge_patch(
            "nodes",
            None,
            name,
            &json!({"status": {"conditions": [{"type": "Ready", "status": status}]}}),
        )
        .expect("the node exists");
}

fn first_node(sim: &SimServer) -> String {
    let (nodes, _) = sim.store().list("nodes", None, None, None).unwrap();
    nodes[0]["metadata"]["name"].as_str().unwrap().to_string()
}

/// Runs a scenario whose only request is one restart of kubemux; returns
/// its result.
async fn run_with_restart(
    scenario: &str,
    settings: Value,
    mut server: Server,
    registry: &Arc<kubemux::cluster::Registry>,
    config: impl Fn(SocketAddr) -> ServerConfig,
    port: SocketAddr,
) -> Value {
    let mut node = Harness::start(scenario, settings).await;
    let mut restarted = false;
    loop {
        match node.step().await {
            Step::Await(what) => {
                assert!(
                    what == "restart" && !restarted,
                    "unexpected request {what:?}"
                );
                server = restart(server, registry, &config, port).await;
                restarted = true;
            }
            Step::Done(result) => {
                println!("{scenario}: {result}");
                assert!(
                    restarted,
                    "the scenario ended without its restart: {result}"
                );
                server.shutdown(Duration::from_secs(1)).await;
                return result;
            }
        }
    }
}

fn types(summary: &Value) -> Vec<&str> {
    summary["types"]
        .as_array()
        .map(|t| t.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_001_dashboard_snippet_reconnects_by_the_seeds_strategy() {
    let config = |at: SocketAddr| ServerConfig {
        dashboard_listen: Some(at),
        ..ServerConfig::default()
    };
    let Env { sim, server, hub } = start(
        SimConfig::default(),
        quick_hub(),
        config("127.0.0.1:0".parse().unwrap()),
    )
    .await;
    let port = server.extra_addrs()[0];
    let _churn = keep_changing(&sim, |store, n| {
        let pod = json!({"metadata": {"name": format!("seed-client-{n}"), "namespace": "default"},
                         "spec": {"containers": [{"name": "main", "image": "nginx"}]}});
        store
            .create("pods", Some("default"), pod)
            .expect("pod created");
        if n >= 3 {
            let _ = store.delete("pods", Some("default"), &format!("seed-client-{}", n - 3));
        }
    });
    let settings = json!({"target": format!("ws://{port}")});
    let result =
        run_with_restart("dashboard", settings, server, hub.clusters(), config, port).await;
    // The seed's prose: wait 1 s, back off 2, 4, 8 … up to 30 s, give up after 5.
    assert_eq!(
        result["rules"],
        json!({"firstDelayS": 1, "maxDelayS": 30, "attempts": 5})
    );
    for summary in [&result["first"], &result["again"]] {
        for kind in ["connection", "initial_state", "pong", "pod_event"] {
            assert!(types(summary).contains(&kind), "{kind} missing: {result}");
        }
        assert_eq!(summary["connection"]["status"], "connected", "{result}");
        // A restart is told by the close code, not as a watch error.
        assert_eq!(summary["errors"], json!([]), "{result}");
    }
    assert_eq!(
        result["closedWith"], 1012,
        "shutdown closes with 1012 (service restart): {result}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_002_notification_snippets_reconnect_and_fetch_the_cluster() {
    let config = |at: SocketAddr| ServerConfig {
        health_interval: Duration::from_millis(100),
        notifications: kubemux::dialect::notifications::Settings {
            debounce: Duration::from_millis(100),
            ..Default::default()
        },
        notifications_listen: Some(at),
        ..ServerConfig::default()
    };
    let Env { sim, server, hub } = start(
        SimConfig::default(),
        quick_hub(),
        config("127.0.0.1:0".parse().unwrap()),
    )
    .await;
    let port = server.extra_addrs()[0];
    let node = first_node(&sim);
    let _churn = keep_changing(&sim, move |store, n| {
        set_node_ready(store, &node, n % 2 == 1)
    });
    let settings = json!({"target": format!("ws://{port}"), "http": format!("http://{port}")});
    let result = run_with_restart(
        "notifications",
        settings,
        server,
        hub.clusters(),
        config,
        port,
    )
    .await;
    assert!(
        result["first"]
            .as_array()
            .is_some_and(|t| t.contains(&json!("cluster.updated"))),
        "{result}"
    );
    assert!(
        result["again"]
            .as_array()
            .is_some_and(|t| t.contains(&json!("cluster.updated"))),
        "{result}"
    );
    assert_eq!(result["sample"]["data"]["name"], CLUSTER, "{result}");
    assert_eq!(
        result["fetched"],
        json!({"url": format!("/api/clusters/{CLUSTER}"), "status": 200}),
        "{result}"
    );
}

const SECRET: &str = "seed-clients-secret";
const AUDIENCE: &str = "kubemux-console";
const ISSUER: &str = "https://platform.test";

fn jwt(user: &str, groups: &[&str]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims =
        json!({"sub": user, "groups": groups, "exp": now + 600, "iss": ISSUER, "aud": AUDIENCE});
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_003_client_class_subscribes_receives_and_is_denied() {
    let secret = std::env::temp_dir().join(format!("kubemux-seed-clients-{}", std::process::id()));
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let verifier = JwtVerifier::from_settings(&JwtSettings {
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        user_claim: "sub".into(),
        groups_claim: "groups".into(),
        hs256_secret_file: Some(secret.clone()),
        ..JwtSettings::default()
    })
    .unwrap()
    .unwrap();
    let auth = Arc::new(ConsoleAuth {
        verifier,
        rechecks: kubemux::auth::recheck::Rechecks::new(
            Arc::new(Reviewer::new(
                Duration::from_secs(30),
                Arc::new(Metrics::new()),
            )),
            Duration::from_secs(30),
        ),
    });
    // console-admins may read what a workspace subscription watches; bob nothing.
    let rbac = SimAuth::new().with_admin_token("admin-token").with_rule(
        Rule::allow(["get", "list", "watch"], ["nodes", "pods", "namespaces"])
            .groups(["console-admins"]),
    );
    let env = start(
        SimConfig {
            auth: Some(rbac),
            ..SimConfig::default()
        },
        quick_hub(),
        ServerConfig {
            console_auth: Some(auth),
            subscriptions_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..ServerConfig::default()
        },
    )
    .await;
    std::fs::remove_file(&secret).ok();
    let port = env.server.extra_addrs()[0];
    let settings = json!({
        "target": format!("ws://{port}"),
        "token": jwt("alice", &["console-admins"]),
        "deniedToken": jwt("bob", &[]),
        "workspace": CLUSTER,
    });
    let mut node = Harness::start("subscriptions", settings).await;
    let node_name = first_node(&env.sim);
    let result = loop {
        match node.step().await {
            Step::Await(what) => {
                assert_eq!(what, "change");
                set_node_ready(env.sim.store(), &node_name, false);
            }
            Step::Done(result) => break result,
        }
    };
    println!("subscriptions: {result}");
    assert_eq!(
        result["usage"]["subscribe"],
        json!({"resource": "workspace", "events": ["status_changed", "alert_triggered"]}),
        "the seed's usage example: {result}"
    );
    assert!(
        result["subscriptionId"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "subscribe() resolves with the subscription id: {result}"
    );
    let event = &result["event"];
    assert!(
        ["workspace.status_changed", "workspace.alert_triggered"]
            .contains(&event["name"].as_str().unwrap_or_default()),
        "{result}"
    );
    assert_eq!(event["data"]["workspace_id"], CLUSTER, "{result}");
    // metrics_update has the seed's fields but `network` (README: why).
    assert_eq!(
        result["shapes"]["monitoring.metrics_update"],
        json!(["data.metrics.network",]),
        "{result}"
    );
    let rejected = result["denied"]["rejected"].as_str().unwrap_or_default();
    assert!(
        rejected.contains("\"bob\" may not list"),
        "a denied subscribe() rejects with the server's reason: {result}"
    );
}
