//! Headlamp's own compiled frontend code (the v2 Kubernetes API modules of
//! `@kinvolk/headlamp-plugin`: `useKubeObjectList`, `useKubeObject`,
//! `WebSocketManager`, `clusterFetch`, `KubeList`) run by Node against the
//! real proxy and the simulated API server, through a loopback relay that
//! delays every chunk (30 ms each way) as a remote browser's network does.
//!
//! The harness lives in `tests/headlamp-client/` (`npm ci` there first; CI
//! does it in `.ci/run`). Each scenario is one `node run.mjs <scenario>`
//! process that asks this test, over stdio, to drive the simulator and the
//! proxy, and ends with a JSON result asserted on here.
//!
//! `KUBEMUX_HEADLAMP_SECS` sets the churn time of each scenario (default
//! 5 s; the first-viewer scenario runs it three times); 60 reproduces a
//! long-lived browser tab.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use kubemux::auth::policy::Policy;
use kubemux::cluster::Registry;
use kubemux::hub::Hub;
use kubemux::metrics::Metrics;
use kubemux::server::{Server, ServerConfig};
use kubemux_sim::{Rule, SimAuth, SimConfig, SimServer, UserInfo};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Churn the issue asks for: about 20 changes a second.
const CHURN: f64 = 20.0;
/// The longest a scenario may run before the test gives up on it.
const SCENARIO_PATIENCE: Duration = Duration::from_secs(300);

fn secs() -> u64 {
    std::env::var("KUBEMUX_HEADLAMP_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

fn harness_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/headlamp-client")
}

/// Makes sure Node and the harness's packages are there: installs them with
/// `npm ci` when `node_modules` is missing (one test process at a time),
/// and fails, never skips, when that is impossible.
fn ensure_installed() {
    let dir = harness_dir();
    let marker = dir.join("node_modules/@kinvolk/headlamp-plugin/package.json");
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "the Headlamp harness needs Node.js (`node` on PATH): {node:?}"
    );
    let lock = dir.join(".install.lock");
    let deadline = std::time::Instant::now() + SCENARIO_PATIENCE;
    while !marker.exists() {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(_) => {
                let out = std::process::Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
                    .arg("--prefix")
                    .arg(&dir)
                    .output();
                std::fs::remove_file(&lock).ok();
                let out =
                    out.expect("the Headlamp harness needs npm on PATH to install its packages");
                assert!(
                    out.status.success() && marker.exists(),
                    "`npm ci --prefix tests/headlamp-client` failed:\n{}\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Err(_) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "gave up waiting for another test's `npm ci` ({} exists)",
                    lock.display()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Simulated clusters and the proxy in front of them.
struct World {
    sims: Vec<(String, SimServer)>,
    kubeconfig: String,
    config: ServerConfig,
    hub: Hub,
    server: Option<Server>,
    addr: SocketAddr,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

async fn proxy(
    kubeconfig: &str,
    at: SocketAddr,
    config: &ServerConfig,
) -> std::io::Result<(Hub, Server)> {
    let registry = Arc::new(Registry::new());
    registry
        .load_kubeconfig_text(kubeconfig, "test")
        .await
        .expect("kubeconfig loads");
    let hub = Hub::new(quick_hub(), registry, Arc::new(Metrics::new()));
    let server = Server::start(at, hub.clone(), config.clone()).await?;
    Ok((hub, server))
}

async fn world(names: &[&str]) -> World {
    world_with(names, SimConfig::default(), ServerConfig::default()).await
}

async fn world_with(names: &[&str], sim: SimConfig, config: ServerConfig) -> World {
    let dir = std::env::temp_dir().join(format!(
        "kubemux-headlamp-client-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut sims = Vec::new();
    for name in names {
        let sim = SimServer::start(sim.clone()).await.unwrap();
        sims.push((name.to_string(), sim));
    }
    let file = dir.join("config");
    let named: Vec<(&str, &SimServer)> = sims.iter().map(|(n, s)| (n.as_str(), s)).collect();
    write_kubeconfig(&file, &named);
    let kubeconfig = std::fs::read_to_string(&file).unwrap();
    let (hub, server) = proxy(&kubeconfig, "127.0.0.1:0".parse().unwrap(), &config)
        .await
        .expect("proxy starts");
    World {
        sims,
        kubeconfig,
        config,
        hub,
        addr: server.addr(),
        server: Some(server),
        _dir: TempDir(dir),
    }
}

impl World {
    fn sim(&self, cluster: &str) -> &SimServer {
        &self
            .sims
            .iter()
            .find(|(n, _)| n == cluster)
            .unwrap_or_else(|| panic!("no simulated cluster {cluster:?}"))
            .1
    }

    /// The simulator's own LIST of pods: `namespace/name -> resourceVersion`.
    fn pods(&self, cluster: &str) -> BTreeMap<String, String> {
        let (pods, _) = self
            .sim(cluster)
            .store()
            .list("pods", None, None, None)
            .unwrap();
        versions_of(&pods)
    }

    async fn answer(&mut self, ask: &Value) -> Value {
        let cluster = ask["cluster"].as_str().unwrap_or_default();
        match ask["ask"].as_str().unwrap() {
            "churn" => {
                let rate = ask["rate"].as_f64().unwrap();
                for (_, sim) in &self.sims {
                    sim.set_churn_rate(rate);
                }
                // Lets a tick already under way land before anyone lists.
                tokio::time::sleep(Duration::from_millis(50)).await;
                json!({})
            }
            "list" => json!({ "versions": self.pods(cluster) }),
            "counters" => {
                let sim = self.sim(cluster);
                json!({
                    "watch_requests": sim.watch_requests("pods"),
                    "list_requests": sim.list_requests("pods"),
                    "active_watches": sim.active_watches("pods"),
                    "hub_watches": self.hub.watch_count(),
                })
            }
            "idle" => {
                eventually("no shared watch is left", || {
                    self.hub.watch_count() == 0
                        && self.sims.iter().all(|(_, s)| s.active_watches("pods") == 0)
                })
                .await;
                json!({})
            }
            "stop" => {
                let server = self.server.take().expect("the proxy is running");
                server.shutdown(Duration::from_secs(5)).await;
                json!({})
            }
            "start" => {
                // A new kubemux (empty hub), on the same port when it is free.
                let mut started = None;
                for _ in 0..20 {
                    if let Ok(s) = proxy(&self.kubeconfig, self.addr, &self.config).await {
                        started = Some(s);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let (hub, server) = match started {
                    Some(s) => s,
                    None => proxy(
                        &self.kubeconfig,
                        "127.0.0.1:0".parse().unwrap(),
                        &self.config,
                    )
                    .await
                    .expect("a new proxy starts"),
                };
                self.hub = hub;
                self.addr = server.addr();
                self.server = Some(server);
                json!({ "addr": self.addr.to_string() })
            }
            "modify" => {
                let ns = ask["namespace"].as_str().unwrap();
                let name = ask["name"].as_str().unwrap();
                let patch =
                    json!({"metadata": {"labels": {"harness": rand::random::<u32>().to_string()}}});
                let pod = self
                    .sim(cluster)
                    .store()
                    .merge_patch("pods", Some(ns), name, &patch)
                    .unwrap();
                json!({ "resourceVersion": pod["metadata"]["resourceVersion"] })
            }
            other => panic!("the harness asked for {other:?}"),
        }
    }

    /// Runs one scenario and returns its result.
    async fn run(&mut self, scenario: &str, mut options: Value) -> Value {
        ensure_installed();
        options["proxy"] = json!(self.addr.to_string());
        options["delayMs"] = json!(30);
        if options.get("cluster").is_none() {
            options["cluster"] = json!(self.sims[0].0);
        }
        let mut child = tokio::process::Command::new("node")
            .arg(harness_dir().join("run.mjs"))
            .arg(scenario)
            .arg(options.to_string())
            .current_dir(harness_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node starts");
        let mut stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let result = tokio::time::timeout(SCENARIO_PATIENCE, async {
            loop {
                let line =
                    lines.next_line().await.unwrap().unwrap_or_else(|| {
                        panic!("the harness ended without a result ({scenario})")
                    });
                let msg: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("harness printed {line:?}: {e}"));
                if msg.get("ask").is_some() {
                    let answer = self.answer(&msg).await;
                    stdin
                        .write_all(format!("{answer}\n").as_bytes())
                        .await
                        .unwrap();
                } else if let Some(result) = msg.get("result") {
                    break result.clone();
                } else {
                    panic!(
                        "scenario {scenario} failed in the harness: {}",
                        msg["failed"]
                    );
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("scenario {scenario} did not finish in time"));
        let status = child.wait().await.unwrap();
        assert!(status.success(), "harness exited with {status}");
        eprintln!("{scenario}: {}", summary(&result));
        result
    }
}

/// The result without its (long) rendered lists, for the log.
fn summary(result: &Value) -> Value {
    let mut out = result.clone();
    strip(&mut out);
    out
}

fn strip(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("rendered");
            m.values_mut().for_each(strip);
        }
        Value::Array(a) => a.iter_mut().for_each(strip),
        _ => {}
    }
}

fn versions(v: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(v.clone()).expect("a namespace/name -> resourceVersion map")
}

/// No watch ended with the in-band 410 ("too old resourceVersion").
fn assert_no_410(result: &Value) {
    assert_eq!(
        result["gone"],
        json!([]),
        "kubemux answered Headlamp's REQUEST with a 410: {}",
        summary(result)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_viewer_of_a_churning_list_converges() {
    let mut w = world(&["sim"]).await;
    let r = w
        .run(
            "first_viewer",
            json!({"rounds": 3, "secs": secs(), "rate": CHURN}),
        )
        .await;
    let server = w.pods("sim");
    assert_no_410(&r);
    // `ws` offers permessage-deflate as browsers do, so Headlamp's code
    // read DATA frames (small pods are over the 1 KiB threshold) compressed.
    let extensions = r["extensions"].as_array().expect("the sockets' extensions");
    assert!(
        !extensions.is_empty()
            && extensions
                .iter()
                .all(|e| e.as_str().is_some_and(|e| e.contains("permessage-deflate"))),
        "every socket negotiated permessage-deflate: {extensions:?}"
    );
    let rounds = r["rounds"].as_array().unwrap();
    for (i, round) in rounds.iter().enumerate() {
        // Each round was compared, in the harness, with the simulator's LIST
        // taken once that round's churn stopped.
        assert_eq!(
            round["converged"],
            true,
            "round {i}: Headlamp's list differs from the simulator's LIST: {}",
            summary(&r)
        );
    }
    let last = rounds.last().expect("rounds ran");
    assert_eq!(
        versions(&last["rendered"]["sim"]),
        server,
        "the last round's list is the simulator's LIST now"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_view_of_a_live_list_opens_no_upstream_watch() {
    let mut w = world(&["sim"]).await;
    let r = w
        .run("second_view", json!({"secs": secs(), "rate": CHURN}))
        .await;
    let server = w.pods("sim");
    assert_no_410(&r);
    for (i, rendered) in r["rendered"].as_array().unwrap().iter().enumerate() {
        assert_eq!(versions(&rendered["sim"]), server, "view {i}");
    }
    assert_eq!(
        r["after"]["sim"]["watch_requests"], r["before"]["sim"]["watch_requests"],
        "the second view cost an upstream watch"
    );
    assert_eq!(
        r["after"]["sim"]["list_requests"], r["before"]["sim"]["list_requests"],
        "the second view's LIST reached the cluster"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribing_after_every_event_converges_without_upstream_watches() {
    let mut w = world(&["sim"]).await;
    let r = w
        .run("resubscribe_churn", json!({"secs": secs(), "rate": CHURN}))
        .await;
    let server = w.pods("sim");
    assert_no_410(&r);
    assert!(r["resubscriptions"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(versions(&r["rendered"]), server);
    assert_eq!(
        r["after"]["sim"]["watch_requests"], r["before"]["sim"]["watch_requests"],
        "re-subscriptions reached the cluster"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_on_one_socket_each_converge() {
    let mut w = world(&["sim", "my.cluster"]).await;
    let r = w
        .run(
            "clusters",
            json!({"clusters": ["sim", "my.cluster"], "secs": secs(), "rate": CHURN}),
        )
        .await;
    assert_no_410(&r);
    assert_eq!(r["sockets"], 1, "one multiplexed socket");
    for cluster in ["sim", "my.cluster"] {
        assert_eq!(
            versions(&r["rendered"][cluster]),
            w.pods(cluster),
            "{cluster}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn navigating_back_after_a_restart_resumes_from_the_cached_version() {
    let mut w = world(&["sim"]).await;
    let r = w
        .run("restart", json!({"secs": 2 * secs(), "rate": CHURN}))
        .await;
    let server = w.pods("sim");
    assert_no_410(&r);
    let requested = r["requests"].as_array().unwrap();
    assert_eq!(
        requested.last(),
        Some(&r["cachedVersion"]),
        "the re-opened list is watched from the cached version"
    );
    assert_eq!(versions(&r["rendered"]["sim"]), server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn details_view_shows_the_modified_object() {
    let mut w = world(&["sim"]).await;
    let r = w.run("details", json!({})).await;
    assert_eq!(r["loaded"], true, "{r}");
    assert_eq!(r["subscribed"], true, "{r}");
    assert_ne!(r["initial"], r["expected"]);
    assert_eq!(r["shown"], r["expected"], "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_show_the_kubernetes_message_and_complete() {
    let mut w = world(&["sim"]).await;
    let r = w.run("errors", json!({})).await;
    for (what, status) in [("unknown_cluster", 404), ("forbidden", 403)] {
        let shown = &r["shown"][what];
        assert_eq!(shown["status"], status, "{what}: {shown}");
        let message = shown["message"].as_str().unwrap_or_default();
        assert!(
            !message.is_empty() && message != "Unreachable",
            "{what}: Headlamp shows {message:?} instead of the Status message"
        );
    }
    assert!(
        r["shown"]["unknown_cluster"]["message"]
            .as_str()
            .unwrap()
            .contains("no-such-cluster")
    );
    for what in ["ws_unknown_cluster", "ws_forbidden"] {
        let ws = &r["ws"][what];
        assert!(
            ws["updates"][0]["error"].is_string(),
            "{what}: Headlamp's listener got {ws}"
        );
        assert_eq!(
            ws["completed"], true,
            "{what}: no COMPLETE after the ERROR: {ws}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headlamps_auth_cookie_for_a_dotted_cluster_name_works() {
    let auth = SimAuth::new()
        .with_admin_token("admin-token")
        .with_token("token-u0", UserInfo::new("u0", "uid-0", ["team"]))
        .with_rule(
            Rule::allow(["get", "list", "watch"], ["pods"])
                .users(["u0"])
                .api_groups([""]),
        );
    let mut w = world_with(
        &["my.cluster"],
        SimConfig {
            auth: Some(auth),
            ..SimConfig::default()
        },
        ServerConfig {
            policy: Policy::passthrough(
                Arc::new(kubemux::auth::review::Reviewer::new(
                    Duration::from_secs(30),
                    Arc::new(Metrics::new()),
                )),
                Duration::from_secs(30),
            ),
            ..ServerConfig::default()
        },
    )
    .await;
    // The cookies Headlamp's backend sets for "my.cluster", token split in two.
    let r = w
        .run(
            "clusters",
            json!({
                "clusters": ["my.cluster"],
                "secs": secs(),
                "rate": CHURN,
                "cookies": {"headlamp-auth-mycluster.0": "token-", "headlamp-auth-mycluster.1": "u0"},
            }),
        )
        .await;
    assert_eq!(
        r["shown"],
        json!([]),
        "Headlamp shows errors: {}",
        summary(&r)
    );
    assert_eq!(r["errors"], json!([]), "{}", summary(&r));
    assert_no_410(&r);
    assert_eq!(versions(&r["rendered"]["my.cluster"]), w.pods("my.cluster"));
    let sim = w.sim("my.cluster");
    assert!(sim.watch_requests_by("u0", "pods") >= 1, "watched as u0");
    assert!(sim.list_requests_by("u0", "pods") >= 1, "listed as u0");
}
