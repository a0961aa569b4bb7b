//! Seed 001: the cluster-dashboard stream, built from the shared caches.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::*;
use kubemux::server::ServerConfig;
use kubemux_sim::SimConfig;
use serde_json::{Value, json};

/// The dashboard's view: pods by namespace/name with their resourceVersions
/// are not in the projection, so compare names, phases and node status.
#[derive(Default, Debug, PartialEq)]
struct View {
    pods: BTreeMap<String, String>,
    nodes: BTreeMap<String, String>,
}

impl View {
    fn from_initial(state: &Value) -> View {
        let mut v = View::default();
        for p in state["data"]["pods"].as_array().unwrap() {
            v.pods.insert(
                format!(
                    "{}/{}",
                    p["namespace"].as_str().unwrap(),
                    p["name"].as_str().unwrap()
                ),
                p["phase"].as_str().unwrap().to_string(),
            );
        }
        for n in state["data"]["nodes"].as_array().unwrap() {
            v.nodes.insert(
                n["name"].as_str().unwrap().to_string(),
                n["status"].as_str().unwrap().to_string(),
            );
        }
        v
    }

    fn apply(&mut self, event: &Value) {
        let d = &event["data"];
        match (
            event["type"].as_str().unwrap(),
            event["action"].as_str().unwrap(),
        ) {
            ("pod_event", "DELETED") => {
                self.pods.remove(&format!(
                    "{}/{}",
                    d["namespace"].as_str().unwrap(),
                    d["name"].as_str().unwrap()
                ));
            }
            ("pod_event", _) => {
                self.pods.insert(
                    format!(
                        "{}/{}",
                        d["namespace"].as_str().unwrap(),
                        d["name"].as_str().unwrap()
                    ),
                    d["phase"].as_str().unwrap().to_string(),
                );
            }
            ("node_event", "DELETED") => {
                self.nodes.remove(d["name"].as_str().unwrap());
            }
            ("node_event", _) => {
                self.nodes.insert(
                    d["name"].as_str().unwrap().to_string(),
                    d["status"].as_str().unwrap().to_string(),
                );
            }
            other => panic!("unexpected event {other:?}"),
        }
    }

    /// Applies a frame; returns how many events it carried.
    fn take(&mut self, frame: &Value) -> usize {
        match frame["type"].as_str().unwrap() {
            "pod_event" | "node_event" => {
                self.apply(frame);
                1
            }
            "batch" => {
                let events = frame["events"].as_array().unwrap();
                assert_eq!(frame["count"], events.len());
                events.iter().for_each(|e| self.apply(e));
                events.len()
            }
            _ => 0,
        }
    }

    fn of_server(env: &Env, namespaces: Option<&[&str]>) -> View {
        let mut v = View::default();
        let (pods, _) = env.sim.store().list("pods", None, None, None).unwrap();
        for p in pods {
            let ns = p["metadata"]["namespace"].as_str().unwrap();
            if namespaces.is_none_or(|w| w.contains(&ns)) {
                v.pods.insert(
                    format!("{ns}/{}", p["metadata"]["name"].as_str().unwrap()),
                    p["status"]["phase"]
                        .as_str()
                        .unwrap_or("Pending")
                        .to_string(),
                );
            }
        }
        let (nodes, _) = env.sim.store().list("nodes", None, None, None).unwrap();
        for n in nodes {
            let ready = node_ready(&n);
            v.nodes.insert(
                n["metadata"]["name"].as_str().unwrap().to_string(),
                if ready { "Ready" } else { "NotReady" }.to_string(),
            );
        }
        v
    }
}

async fn connect(env: &Env, query: &str) -> (Client, Value) {
    let mut c = Client::connect(&format!("ws://{}/ws/dashboard{query}", env.server.addr())).await;
    let ack = c.frame().await;
    assert_eq!(ack["type"], "connection", "{ack}");
    assert_eq!(ack["status"], "connected");
    assert_eq!(ack["cluster"]["name"], CLUSTER);
    assert!(
        ack["cluster"]["version"]
            .as_str()
            .unwrap()
            .starts_with("v1.")
    );
    let initial = c.frame().await;
    assert_eq!(initial["type"], "initial_state", "{initial}");
    (c, initial)
}

fn dashboard_config() -> ServerConfig {
    ServerConfig {
        dashboard: kubemux::dialect::dashboard::Settings {
            metrics_interval: Duration::from_secs(1),
            ..Default::default()
        },
        ..ServerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_state_events_and_metrics_match_the_server() {
    let env = start(
        SimConfig {
            churn_rate: 20.0,
            ..SimConfig::default()
        },
        quick_hub(),
        dashboard_config(),
    )
    .await;
    let (mut c, initial) = connect(&env, "?namespaces=default,team-a").await;
    let mut view = View::from_initial(&initial);
    let namespaces: Vec<&str> = initial["data"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(namespaces, ["default", "team-a"]);
    for ns in initial["data"]["namespaces"].as_array().unwrap() {
        let count = view
            .pods
            .keys()
            .filter(|k| k.starts_with(&format!("{}/", ns["name"].as_str().unwrap())))
            .count();
        assert_eq!(ns["podCount"], count, "{ns}");
    }
    let pod = &initial["data"]["pods"][0];
    for field in [
        "name",
        "uid",
        "namespace",
        "phase",
        "status",
        "containers",
        "labels",
        "creationTimestamp",
    ] {
        assert!(!pod[field].is_null(), "pod field {field}: {pod}");
    }
    let node = &initial["data"]["nodes"][0];
    for field in [
        "name",
        "uid",
        "status",
        "role",
        "capacity",
        "conditions",
        "labels",
    ] {
        assert!(!node[field].is_null(), "node field {field}: {node}");
    }
    let mut events = 0;
    while events < 30 {
        events += view.take(&c.frame().await);
    }
    env.sim.set_churn_rate(0.0);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if view == View::of_server(&env, Some(&["default", "team-a"])) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dashboard state never converged"
        );
        if let Some(frame) = c.next_within(Duration::from_millis(200)).await {
            view.take(&frame);
        }
    }
    loop {
        let frame = c.frame().await;
        if frame["type"] == "metrics" {
            let d = &frame["data"];
            assert_eq!(d["totalNodes"], view.nodes.len());
            assert_eq!(
                d["readyNodes"],
                view.nodes.values().filter(|s| *s == "Ready").count()
            );
            assert_eq!(d["totalPods"], view.pods.len());
            assert_eq!(
                d["runningPods"],
                view.pods.values().filter(|s| *s == "Running").count()
            );
            break;
        }
        view.take(&frame);
    }
    c.send(json!({"type": "ping", "timestamp": "2025-01-24T10:03:00Z"}))
        .await;
    loop {
        let frame = c.frame().await;
        if frame["type"] == "pong" {
            assert!(frame["timestamp"].is_string());
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_dashboards_cost_one_watch_per_resource() {
    let env = start(SimConfig::default(), quick_hub(), dashboard_config()).await;
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(connect(&env, "").await.0);
    }
    eventually("one watch each", || {
        env.sim.active_watches("nodes") == 1
            && env.sim.active_watches("pods") == 1
            && env.sim.active_watches("namespaces") == 1
    })
    .await;
    assert_eq!(env.sim.watch_requests("pods"), 1);
    assert_eq!(env.sim.watch_requests("nodes"), 1);
    assert_eq!(env.sim.watch_requests("namespaces"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_batched_within_the_rate_limit_and_nothing_is_lost() {
    let env = start(
        SimConfig::default(),
        quick_hub(),
        ServerConfig {
            dashboard: kubemux::dialect::dashboard::Settings {
                metrics_interval: Duration::from_secs(600),
                ..Default::default()
            },
            ..ServerConfig::default()
        },
    )
    .await;
    let (mut c, initial) = connect(&env, "?namespaces=default").await;
    let mut view = View::from_initial(&initial);
    let store = env.sim.store().clone();
    let producer = tokio::task::spawn_blocking(move || {
        for i in 0..5000 {
            let name = format!("burst-{}", i % 100);
            let phase = if i % 2 == 0 { "Running" } else { "Pending" };
            let obj = json!({"metadata": {"name": name, "namespace": "default", "labels": {"i": i.to_string()}}, "spec": {"containers": []}, "status": {"phase": phase}});
            if i < 100 {
                store.create("pods", Some("default"), obj).unwrap();
            } else {
                store.update("pods", Some("default"), obj).unwrap();
            }
        }
    });
    producer.await.unwrap();
    let (mut frames, mut events, mut batches) = (0usize, 0usize, 0usize);
    while events < 5000 {
        let frame = c.frame().await;
        assert_ne!(frame["type"], "error", "{frame}");
        frames += 1;
        if frame["type"] == "batch" {
            batches += 1;
        }
        events += view.take(&frame);
    }
    assert_eq!(events, 5000, "every change arrived");
    assert!(
        batches > 0 && frames < 500,
        "{frames} frames, {batches} batches for 5000 events"
    );
    assert_eq!(view, View::of_server(&env, Some(&["default"])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_configmaps_never_appear_and_the_own_listener_works() {
    let env = start(
        SimConfig::default(),
        quick_hub(),
        ServerConfig {
            dashboard_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..dashboard_config()
        },
    )
    .await;
    env.sim.store().create("secrets", Some("default"), json!({"metadata": {"name": "top-secret-xyz", "namespace": "default"}, "data": {"k": "c2VjcmV0"}})).unwrap();
    env.sim.store().create("configmaps", Some("default"), json!({"metadata": {"name": "config-map-xyz", "namespace": "default"}, "data": {"k": "v"}})).unwrap();
    let mut c = Client::connect(&format!("ws://{}/ws", env.server.extra_addrs()[0])).await;
    let mut seen = String::new();
    for _ in 0..2 {
        seen.push_str(&c.frame().await.to_string());
    }
    env.sim
        .store()
        .create(
            "secrets",
            Some("default"),
            json!({"metadata": {"name": "later-secret-xyz", "namespace": "default"}}),
        )
        .unwrap();
    let mut metrics = 0;
    while metrics < 2 {
        let frame = c.frame().await;
        if frame["type"] == "metrics" {
            metrics += 1;
        }
        seen.push_str(&frame.to_string());
    }
    assert!(
        seen.contains("initial_state") && seen.contains("metrics"),
        "{seen}"
    );
    for hidden in [
        "top-secret-xyz",
        "config-map-xyz",
        "later-secret-xyz",
        "c2VjcmV0",
    ] {
        assert!(!seen.contains(hidden), "{hidden} leaked");
    }
    assert_eq!(env.sim.watch_requests("secrets"), 0);
    assert_eq!(env.sim.watch_requests("configmaps"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_cluster_is_invalid_kubeconfig() {
    let env = start_default().await;
    let mut c = Client::connect(&format!(
        "ws://{}/ws/dashboard?cluster=nope",
        env.server.addr()
    ))
    .await;
    let frame = c.frame().await;
    assert_eq!(frame["type"], "error");
    assert_eq!(frame["error"]["code"], "INVALID_KUBECONFIG");
    assert!(frame["error"]["details"].as_str().unwrap().contains("nope"));
}

/// A [`RawWs`] offering permessage-deflate, because the tungstenite
/// client cannot negotiate it.
struct RawClient(RawWs, Inflater);

impl RawClient {
    /// Connects to `path` offering permessage-deflate; returns the client
    /// and the response head, lower-cased.
    async fn connect(addr: std::net::SocketAddr, path: &str) -> (RawClient, String) {
        let offer = [(
            "Sec-WebSocket-Extensions",
            "permessage-deflate; client_max_window_bits",
        )];
        let (ws, head) = RawWs::connect_head(addr, path, &offer).await;
        (
            RawClient(ws, Inflater::default()),
            head.to_ascii_lowercase(),
        )
    }

    /// The next frame: (RSV1 set, opcode, payload).
    async fn frame(&mut self) -> (bool, u8, Vec<u8>) {
        let frame = self.0.next_frame().await.expect("connection closed");
        (frame.rsv1, frame.opcode, frame.payload)
    }

    /// The next text message as JSON, inflated if it came compressed.
    async fn json(&mut self) -> (bool, Value) {
        loop {
            let (rsv1, opcode, payload) = self.frame().await;
            if opcode != 1 {
                continue;
            }
            let text = if rsv1 {
                self.1.inflate(&payload)
            } else {
                payload
            };
            return (rsv1, serde_json::from_slice(&text).unwrap());
        }
    }

    /// Sends `text` as one text frame, compressed (RSV1) when `compress`.
    async fn send(&mut self, text: &str, compress: bool) {
        if compress {
            self.0
                .send_frame(0xC1, &deflate_raw(text.as_bytes(), true))
                .await;
        } else {
            self.0.send_frame(0x81, text.as_bytes()).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_frames_are_compressed_when_the_client_negotiates_deflate() {
    let env = start(SimConfig::default(), quick_hub(), dashboard_config()).await;
    let (mut c, head) = RawClient::connect(env.server.addr(), "/ws/dashboard").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains(
            "sec-websocket-extensions: permessage-deflate; client_no_context_takeover\r\n"
        ),
        "{head}"
    );
    let (compressed, ack) = c.json().await;
    assert_eq!(ack["type"], "connection");
    assert!(!compressed, "a small frame is sent as it is");
    let (rsv1, payload_len, initial) = loop {
        let (rsv1, opcode, payload) = c.frame().await;
        if opcode == 1 {
            let text = if rsv1 {
                c.1.inflate(&payload)
            } else {
                payload.clone()
            };
            break (
                rsv1,
                payload.len(),
                serde_json::from_slice::<Value>(&text).unwrap(),
            );
        }
    };
    assert_eq!(initial["type"], "initial_state");
    let text_len = initial.to_string().len();
    assert!(rsv1, "the {text_len}-byte initial_state is compressed");
    assert!(
        payload_len * 3 < text_len,
        "{payload_len} of {text_len} bytes"
    );
    assert_eq!(View::from_initial(&initial), View::of_server(&env, None));

    // A compressed client message is understood as well as a plain one.
    c.send(r#"{"type":"ping"}"#, true).await;
    c.send(r#"{"type":"ping"}"#, false).await;
    let mut pongs = 0;
    while pongs < 2 {
        let (_, frame) = c.json().await;
        if frame["type"] == "pong" {
            pongs += 1;
        }
    }

    // Headlamp's endpoint negotiates it too (its frames are tested in
    // `headlamp::compressed_frames_inflate_to_what_an_uncompressed_client_gets`).
    let (_, head) = RawClient::connect(env.server.addr(), "/wsMultiplexer").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains(
            "sec-websocket-extensions: permessage-deflate; client_no_context_takeover\r\n"
        ),
        "{head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_answers_pings_is_closed_with_1008() {
    // Seed 001's heartbeat at test speed: the limits are the dialect's own.
    let env = start(
        SimConfig::default(),
        quick_hub(),
        ServerConfig {
            dashboard: kubemux::dialect::dashboard::Settings {
                liveness: quick_pings(kubemux::dialect::dashboard::Settings::default().liveness),
                ..Default::default()
            },
            ..ServerConfig::default()
        },
    )
    .await;
    assert_closed_for_no_pong(env.server.addr(), "/ws/dashboard").await;
}

/// Partial permissions (issue 15, item 11): the simulator's RBAC, in the
/// `shared` and `passthrough` auth modes.
mod permissions {
    use super::*;
    use futures::StreamExt;
    use kubemux::auth::policy::Policy;
    use kubemux::auth::review::Reviewer;
    use kubemux::metrics::Metrics;
    use kubemux_sim::{Rule, SimAuth, UserInfo};
    use std::sync::Arc;
    use tokio_tungstenite::tungstenite::Message;

    #[derive(Clone, Copy)]
    enum Mode {
        Shared,
        Passthrough,
    }

    fn pods_in(ns: &str) -> Rule {
        Rule::allow(["list", "watch"], ["pods"])
            .users(["u0"])
            .api_groups([""])
            .namespaces([ns])
    }

    fn nodes() -> Rule {
        Rule::allow(["list", "watch"], ["nodes"])
            .users(["u0"])
            .api_groups([""])
    }

    async fn env(mode: Mode, rules: Vec<Rule>) -> Env {
        let mut auth = SimAuth::new()
            .with_admin_token("admin-token")
            .with_token("token-u0", UserInfo::new("u0", "uid-0", ["team"]));
        for rule in rules {
            auth = auth.with_rule(rule);
        }
        let reviewer = Arc::new(Reviewer::new(
            Duration::from_secs(30),
            Arc::new(Metrics::new()),
        ));
        let recheck = Duration::from_millis(200);
        let policy = match mode {
            Mode::Shared => Policy::shared(reviewer, recheck),
            Mode::Passthrough => Policy::passthrough(reviewer, recheck),
        };
        start(
            SimConfig {
                auth: Some(auth),
                ..SimConfig::default()
            },
            quick_hub(),
            ServerConfig {
                policy,
                dashboard: kubemux::dialect::dashboard::Settings {
                    metrics_interval: Duration::from_millis(200),
                    ..Default::default()
                },
                ..ServerConfig::default()
            },
        )
        .await
    }

    async fn open(env: &Env, query: &str) -> Client {
        let mut c = WsConnect::new(&format!("ws://{}/ws/dashboard{query}", env.server.addr()))
            .bearer("token-u0")
            .client()
            .await
            .unwrap();
        assert_eq!(c.frame().await["type"], "connection");
        c
    }

    /// `(resource, namespace)` of each stream a PERMISSION_DENIED names.
    fn denied(frame: &Value) -> Vec<(String, Option<String>)> {
        assert_eq!(frame["type"], "error", "{frame}");
        assert_eq!(frame["error"]["code"], "PERMISSION_DENIED", "{frame}");
        let mut out: Vec<_> = frame["error"]["denied"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                let resource = d["resource"].as_str().unwrap().to_string();
                let ns = d["namespace"].as_str().map(str::to_string);
                let words = match &ns {
                    Some(ns) => format!("'{resource}' in namespace '{ns}'"),
                    None => format!("'{resource}'"),
                };
                let details = frame["error"]["details"].as_str().unwrap();
                assert!(details.contains(&words), "{words} in {details}");
                (resource, ns)
            })
            .collect();
        out.sort();
        out
    }

    fn named(list: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        let mut out: Vec<_> = list
            .iter()
            .map(|(r, ns)| (r.to_string(), ns.map(str::to_string)))
            .collect();
        out.sort();
        out
    }

    /// Patches a pod of `ns` at the simulator; returns its name.
    fn touch_pod(env: &Env, ns: &str, mark: &str) -> String {
        let (pods, _) = env.sim.store().list("pods", Some(ns), None, None).unwrap();
        let name = pods[0]["metadata"]["name"].as_str().unwrap().to_string();
        env.sim
            .store()
            .merge_patch(
                "pods",
                Some(ns),
                &name,
                &json!({"metadata": {"labels": {"mark": mark}}}),
            )
            .unwrap();
        name
    }

    /// Reads frames until a `pod_event` for `name` (checking every pod
    /// event is in `ns`), returning the other error frames seen.
    async fn until_pod_event(c: &mut Client, ns: &str, name: &str) -> Vec<Value> {
        let mut errors = Vec::new();
        loop {
            let frame = c.frame().await;
            let events: Vec<Value> = match frame["type"].as_str().unwrap() {
                "pod_event" => vec![frame.clone()],
                "batch" => frame["events"].as_array().unwrap().clone(),
                "error" => {
                    errors.push(frame);
                    continue;
                }
                _ => continue,
            };
            for e in events {
                assert_eq!(e["type"], "pod_event", "{e}");
                assert_eq!(e["data"]["namespace"], ns, "{e}");
                if e["data"]["name"] == name {
                    return errors;
                }
            }
        }
    }

    /// Reads until the socket closes; the close code.
    async fn close_code(c: &mut Client) -> Option<u16> {
        while let Ok(Some(msg)) = tokio::time::timeout(PATIENCE, c.ws.next()).await {
            match msg {
                Ok(Message::Close(frame)) => return frame.map(|f| f.code.into()),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        panic!("the socket was left open");
    }

    /// Who may watch pods in `default` only sees them, and is told exactly
    /// what they may not watch.
    async fn only_pods_of_one_namespace(mode: Mode) {
        let env = env(mode, vec![pods_in("default")]).await;
        // A stray comma names no namespace (it once made `/namespaces//pods`).
        let mut c = open(&env, "?namespaces=default,,kube-system,").await;
        let error = c.frame().await;
        assert_eq!(
            denied(&error),
            named(&[
                ("namespaces", None),
                ("nodes", None),
                ("pods", Some("kube-system")),
            ]),
            "{error}"
        );
        let initial = c.frame().await;
        assert_eq!(initial["type"], "initial_state", "{initial}");
        let keys: Vec<&String> = initial["data"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["pods"], "only the pods stream is shown: {initial}");
        let shown: BTreeMap<String, String> = initial["data"]["pods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                assert_eq!(p["namespace"], "default", "{p}");
                (
                    p["name"].as_str().unwrap().to_string(),
                    p["phase"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let (pods, _) = env
            .sim
            .store()
            .list("pods", Some("default"), None, None)
            .unwrap();
        assert_eq!(shown.len(), pods.len());
        touch_pod(&env, "kube-system", "unseen");
        let name = touch_pod(&env, "default", "seen");
        let errors = until_pod_event(&mut c, "default", &name).await;
        assert!(errors.is_empty(), "no further error: {errors:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_mode_shows_the_permitted_streams_and_names_the_rest() {
        only_pods_of_one_namespace(Mode::Shared).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passthrough_mode_shows_the_permitted_streams_and_names_the_rest() {
        only_pods_of_one_namespace(Mode::Passthrough).await;
    }

    /// A permission lost stops its stream alone; losing the last closes
    /// the socket with 1008 after naming it.
    async fn a_revocation_stops_only_its_stream(mode: Mode) {
        let env = env(mode, vec![pods_in("default"), nodes()]).await;
        let mut c = open(&env, "?namespaces=default").await;
        assert_eq!(denied(&c.frame().await), named(&[("namespaces", None)]));
        let initial = c.frame().await;
        assert_eq!(initial["type"], "initial_state", "{initial}");
        assert!(initial["data"]["nodes"].is_array(), "{initial}");
        assert!(initial["data"]["namespaces"].is_null(), "{initial}");

        env.sim.auth().set_rules(vec![pods_in("default")]).unwrap();
        let revoked = loop {
            let frame = c.frame().await;
            if frame["type"] == "error" {
                break frame;
            }
        };
        assert_eq!(denied(&revoked), named(&[("nodes", None)]), "{revoked}");
        let name = touch_pod(&env, "default", "after-nodes");
        let errors = until_pod_event(&mut c, "default", &name).await;
        assert!(errors.is_empty(), "{errors:?}");
        loop {
            let frame = c.frame().await;
            if frame["type"] == "metrics" {
                assert!(frame["data"]["totalNodes"].is_null(), "{frame}");
                assert!(frame["data"]["totalPods"].is_u64(), "{frame}");
                break;
            }
        }

        env.sim.auth().set_rules(Vec::new()).unwrap();
        let last = loop {
            let frame = c.frame().await;
            if frame["type"] == "error" {
                break frame;
            }
        };
        assert_eq!(denied(&last), named(&[("pods", Some("default"))]), "{last}");
        assert_eq!(close_code(&mut c).await, Some(1008));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_mode_revocation_stops_only_the_revoked_stream() {
        a_revocation_stops_only_its_stream(Mode::Shared).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passthrough_mode_revocation_stops_only_the_revoked_stream() {
        a_revocation_stops_only_its_stream(Mode::Passthrough).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_user_who_may_watch_nothing_is_told_and_closed() {
        let env = env(Mode::Passthrough, Vec::new()).await;
        let mut c = open(&env, "").await;
        assert_eq!(
            denied(&c.frame().await),
            named(&[("namespaces", None), ("nodes", None), ("pods", None)])
        );
        assert_eq!(close_code(&mut c).await, Some(1008));
    }
}

/// `/api/clusters/{name}`'s node counts while a nodes watch runs, and none
/// (with the reason) once it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_node_counts_follow_the_nodes_and_are_absent_when_unknown() {
    let env = start(SimConfig::default(), quick_hub(), dashboard_config()).await;
    let record = || async {
        let body = http_get_body(env.server.addr(), &format!("/api/clusters/{CLUSTER}")).await;
        serde_json::from_str::<Value>(&body).unwrap()
    };
    let before = record().await;
    assert!(before["nodesTotal"].is_null(), "{before}");
    assert!(before["nodesReady"].is_null(), "{before}");
    assert!(before["nodesUnknown"].is_string(), "{before}");

    let truth = |env: &Env| {
        let (nodes, _) = env.sim.store().list("nodes", None, None, None).unwrap();
        let ready = ready_nodes(&nodes);
        (ready, nodes)
    };
    let follows = |want: (usize, usize)| async move {
        eventually_ok(&format!("counts {want:?}"), async || {
            let r = record().await;
            if r["nodesReady"] == want.0 && r["nodesTotal"] == want.1 {
                assert!(r.get("nodesUnknown").is_none(), "{r}");
                return Ok(());
            }
            Err(r)
        })
        .await
    };
    let (dash, _) = connect(&env, "").await;
    let (ready, nodes) = truth(&env);
    follows((ready, nodes.len())).await;

    let first = nodes[1]["metadata"]["name"].as_str().unwrap().to_string();
    env.sim
        .store()
        .merge_patch(
            "nodes",
            None,
            &first,
            &json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
        )
        .unwrap();
    let second = nodes[2]["metadata"]["name"].as_str().unwrap().to_string();
    env.sim.store().delete("nodes", None, &second).unwrap();
    let (ready, nodes) = truth(&env);
    follows((ready, nodes.len())).await;

    drop(dash);
    eventually_ok("counts left out once no nodes watch runs", async || {
        let r = record().await;
        if r["nodesTotal"].is_null() && r["nodesUnknown"].is_string() {
            return Ok(());
        }
        Err(r)
    })
    .await;
}
