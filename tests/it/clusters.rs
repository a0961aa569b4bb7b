//! Many clusters: kubeconfig contexts as clusterIds, edits picked up while
//! running, the registry REST API, read-only REST from the cache, origins.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use kubemux::cluster::Registry;
use kubemux::hub::Hub;
use kubemux::server::{Server, ServerConfig};
use kubemux_sim::{SimConfig, SimServer};
use serde_json::{Value, json};

struct Multi {
    sims: Vec<SimServer>,
    files: Vec<PathBuf>,
    registry: Arc<Registry>,
    hub: Hub,
    server: Server,
    dir: PathBuf,
}

async fn multi(contexts: &[&str], config: ServerConfig) -> Multi {
    let dir = std::env::temp_dir().join(format!(
        "kubemux-clusters-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut sims = Vec::new();
    for _ in 0..2 {
        sims.push(SimServer::start(SimConfig::default()).await.unwrap());
    }
    let file = dir.join("config");
    let named: Vec<(&str, &SimServer)> = contexts.iter().zip(&sims).map(|(n, s)| (*n, s)).collect();
    write_kubeconfig(&file, &named);
    let (server, hub) = start_proxy_following(&file, quick_hub(), config).await;
    let registry = hub.clusters().clone();
    Multi {
        sims,
        files: vec![file],
        registry,
        hub,
        server,
        dir,
    }
}

impl Drop for Multi {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

impl Multi {
    async fn client(&self) -> Client {
        Client::connect(&format!("ws://{}/wsMultiplexer", self.server.addr())).await
    }
}

async fn request(c: &mut Client, cluster: &str, path: &str) {
    c.send(json!({"clusterId": cluster, "path": path, "query": "watch=1", "type": "REQUEST"}))
        .await;
}

fn pod(name: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"containers": []}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_path_on_two_clusters_is_two_watches_and_events_never_cross() {
    let m = multi(&["one", "two"], ServerConfig::default()).await;
    let (pods, _) = m.sims[0]
        .store()
        .list("pods", Some("default"), None, None)
        .unwrap();
    let mut c = m.client().await;
    request(&mut c, "one", "/api/v1/namespaces/default/pods").await;
    request(&mut c, "two", "/api/v1/namespaces/default/pods").await;
    for _ in 0..2 * pods.len() {
        c.event().await;
    }
    eventually("each cluster serves one watch", || {
        m.sims[0].active_watches("pods") == 1 && m.sims[1].active_watches("pods") == 1
    })
    .await;
    assert_eq!(m.hub.watch_count(), 2);
    let created = m.sims[1]
        .store()
        .create("pods", Some("default"), pod("only-on-two"))
        .unwrap();
    let (frame, ev) = c.event().await;
    assert_eq!(frame["clusterId"], "two");
    assert_eq!(ev["object"]["metadata"]["uid"], created["metadata"]["uid"]);
    let created = m.sims[0]
        .store()
        .create("pods", Some("default"), pod("only-on-one"))
        .unwrap();
    let (frame, ev) = c.event().await;
    assert_eq!(frame["clusterId"], "one");
    assert_eq!(ev["object"]["metadata"]["uid"], created["metadata"]["uid"]);
    assert!(
        c.next_within(Duration::from_millis(300)).await.is_none(),
        "nothing crossed over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeconfig_edits_add_and_remove_clusters_while_running() {
    let m = multi(&["one"], ServerConfig::default()).await;
    let mut c = m.client().await;
    request(&mut c, "two", "/api/v1/nodes").await;
    let frame = c.frame().await;
    assert_eq!(frame["type"], "ERROR");
    assert!(
        frame["data"].as_str().unwrap().contains("unknown cluster"),
        "{frame}"
    );
    assert_eq!(c.frame().await["type"], "COMPLETE", "after the refusal");

    request(&mut c, "one", "/api/v1/nodes").await;
    assert_eq!(c.event().await.0["clusterId"], "one");
    let mut changes = m.registry.changes();
    write_kubeconfig(&m.files[0], &[("one", &m.sims[0]), ("two", &m.sims[1])]);
    eventually("context two appears", || m.registry.get("two").is_some()).await;
    let mut c2 = m.client().await;
    request(&mut c2, "two", "/api/v1/nodes").await;
    assert_eq!(
        c2.event().await.0["clusterId"],
        "two",
        "the added context is usable"
    );

    write_kubeconfig(&m.files[0], &[("two", &m.sims[1])]);
    let mut saw_error = false;
    loop {
        let frame = c.frame().await;
        if frame["clusterId"] != "one" {
            continue;
        }
        match frame["type"].as_str().unwrap() {
            "ERROR" => {
                assert!(
                    frame["data"].as_str().unwrap().contains("removed"),
                    "{frame}"
                );
                saw_error = true;
            }
            "COMPLETE" => break,
            _ => {}
        }
    }
    assert!(saw_error, "ERROR before COMPLETE");
    assert!(m.registry.get("one").is_none());
    let mut seen = Vec::new();
    while let Ok(Ok(change)) =
        tokio::time::timeout(Duration::from_millis(200), changes.recv()).await
    {
        seen.push(change);
    }
    assert!(
        seen.contains(&kubemux::cluster::ClusterChange::Added("two".into())),
        "{seen:?}"
    );
    assert!(
        seen.contains(&kubemux::cluster::ClusterChange::Removed("one".into())),
        "{seen:?}"
    );
    let status = http_get(m.server.addr(), "/api/clusters/one").await;
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    assert!(status.contains("unknown cluster"), "{status}");
    let status = http_get(m.server.addr(), "/api/clusters/two").await;
    assert!(
        status.starts_with("HTTP/1.1 200") && status.contains("\"name\":\"two\""),
        "{status}"
    );
}

/// `method` with an empty body: the status code and the (de-chunked) body.
async fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    let answer = Request::new(method, path)
        .header("Content-Length", "0")
        .send(addr)
        .await;
    (answer.code, answer.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_lists_come_from_the_cache_when_a_watch_is_live() {
    let env = start_default().await;
    let addr = env.server.addr();
    let mut c = env.client().await;
    c.request("/api/v1/namespaces/default/pods", "watch=1")
        .await;
    c.event().await;
    assert_eq!(env.sim.list_requests("pods"), 1);
    let (code, body) = http(addr, "GET", "/clusters/sim/api/v1/namespaces/default/pods").await;
    assert_eq!(code, 200, "{body}");
    let list: k8s_openapi::List<k8s_openapi::api::core::v1::Pod> =
        serde_json::from_str(&body).expect("a valid PodList");
    let (pods, _) = env
        .sim
        .store()
        .list("pods", Some("default"), None, None)
        .unwrap();
    let mut got: Vec<String> = list
        .items
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    let mut want: Vec<String> = pods
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(
        env.sim.list_requests("pods"),
        1,
        "served from the cache: no LIST reached the cluster"
    );
    let raw: serde_json::Value = serde_json::from_str(&body).unwrap();
    for item in raw["items"].as_array().unwrap() {
        assert!(
            item.get("kind").is_none() && item.get("apiVersion").is_none(),
            "list items carry no type meta of their own, as the API server writes them: {item}"
        );
        assert!(item["metadata"]["name"].is_string());
    }
    assert_eq!(raw["kind"], "PodList");
    // `?watch=1` is a watch stream, never a LIST, even with a live cache.
    let (code, body) = http(
        addr,
        "GET",
        "/clusters/sim/api/v1/namespaces/default/pods?watch=1&timeoutSeconds=1",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let first: serde_json::Value =
        serde_json::from_str(body.lines().next().expect("watch events")).unwrap();
    assert_eq!(first["type"], "ADDED", "{first}");

    let (code, body) = http(addr, "GET", "/clusters/sim/api/v1/nodes?limit=2").await;
    assert_eq!(code, 200, "{body}");
    let nodes: k8s_openapi::List<k8s_openapi::api::core::v1::Node> =
        serde_json::from_str(&body).unwrap();
    assert_eq!(
        nodes.items.len(),
        2,
        "no watch for nodes: forwarded to the cluster"
    );
    assert_eq!(env.sim.list_requests("nodes"), 1);

    let (code, _) = http(
        addr,
        "GET",
        "/clusters/sim/api/v1/namespaces/default/pods/nope",
    )
    .await;
    assert_eq!(code, 404, "the cluster's own answer is relayed");
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        let (code, body) = http(addr, method, "/clusters/sim/api/v1/namespaces/default/pods").await;
        assert_eq!(code, 405, "{method}: {body}");
        assert!(body.contains("read-only"));
    }
    let (code, _) = http(addr, "GET", "/clusters/nope/api/v1/pods").await;
    assert_eq!(code, 404);
    let (code, _) = http(addr, "GET", "/clusters/sim/metrics").await;
    assert_eq!(code, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_refusals_are_kubernetes_status_objects() {
    let env = start_default().await;
    let addr = env.server.addr();
    for (method, path, code, reason, says) in [
        ("GET", "/clusters/nope/api/v1/pods", 404, "NotFound", "nope"),
        ("GET", "/clusters/sim/metrics", 400, "BadRequest", "metrics"),
        (
            "GET",
            "/clusters/sim/api/v1/secrets",
            403,
            "Forbidden",
            "secrets",
        ),
        (
            "DELETE",
            "/clusters/sim/api/v1/namespaces/default/pods",
            405,
            "MethodNotAllowed",
            "read-only",
        ),
    ] {
        let (got, body) = http(addr, method, path).await;
        assert_eq!(got, code, "{method} {path}: {body}");
        let status: Value = serde_json::from_str(&body).expect("a JSON body");
        assert_eq!(status["kind"], "Status", "{body}");
        assert_eq!(status["apiVersion"], "v1", "{body}");
        assert_eq!(status["metadata"], json!({}), "{body}");
        assert_eq!(status["status"], "Failure", "{body}");
        assert_eq!(status["reason"], reason, "{body}");
        assert_eq!(status["code"], code, "{body}");
        assert!(status["message"].as_str().unwrap().contains(says), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_origins_are_refused_unless_allowed() {
    let env = start(
        SimConfig::default(),
        quick_hub(),
        ServerConfig {
            origins: kubemux::auth::origin::OriginPolicy::new(vec![
                "https://dash.example.com".into(),
            ]),
            ..ServerConfig::default()
        },
    )
    .await;
    let url = env.ws_url();
    let with_origin = |origin: &str| WsConnect::new(&url).header("origin", origin).open();
    let refused = with_origin("https://evil.example").await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 403);
            let body =
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).to_string();
            assert!(body.contains("not allowed"), "{body}");
        }
        other => panic!("expected a 403, got {other:?}"),
    }
    assert!(with_origin("https://dash.example.com").await.is_ok());
    let same = format!("http://{}", env.server.addr());
    assert!(with_origin(&same).await.is_ok(), "same origin");
    assert!(
        WsConnect::new(&url).open().await.is_ok(),
        "no Origin: not a browser"
    );
}
