//! Attacks from a hostile review, each over real sockets against the
//! simulated API server and the real proxy: the legacy watch paths, a
//! revoked passthrough token served from a shared watch, Headlamp's backend
//! token, and what the status endpoints tell strangers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::*;
use kubemux::auth::policy::Policy;
use kubemux::auth::review::Reviewer;
use kubemux::auth::secret::Secret;
use kubemux::metrics::Metrics;
use kubemux::server::ServerConfig;
use kubemux_sim::auth::ADMIN_USER;
use kubemux_sim::{Rule, SimAuth, SimConfig, SimServer, UserInfo};
use serde_json::json;

const PODS: &str = "/api/v1/namespaces/default/pods";

/// The simulator with `auth`, and kubemux in front of it.
async fn setup(auth: SimAuth, config: impl FnOnce(Arc<Metrics>) -> ServerConfig) -> Env {
    setup_via(auth, config, false).await.0
}

/// [`setup`], and with `relay` kubemux reaches the simulator through a
/// relay that counts the TCP connections kubemux opens to it.
async fn setup_via(
    auth: SimAuth,
    config: impl FnOnce(Arc<Metrics>) -> ServerConfig,
    relay: bool,
) -> (Env, Arc<AtomicUsize>) {
    let sim = SimServer::start(SimConfig {
        auth: Some(auth),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let mut kubeconfig = sim.kubeconfig(CLUSTER);
    if relay {
        let via = counting_relay(sim.addr(), connections.clone()).await;
        kubeconfig = kubeconfig.replace(&sim.addr().to_string(), &via.to_string());
    }
    let (server, hub) = start_proxy_with(&kubeconfig, quick_hub(), config).await;
    (Env { sim, server, hub }, connections)
}

/// Accepts on a loopback port, counts each connection and pipes it to `target`.
async fn counting_relay(target: SocketAddr, count: Arc<AtomicUsize>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    addr
}

/// `passthrough` with reviews answered afresh each time (a zero cache
/// TTL, so a revocation is seen by the next join) and re-checks every
/// `recheck`.
fn passthrough(recheck: Duration) -> impl FnOnce(Arc<Metrics>) -> ServerConfig {
    move |metrics| ServerConfig {
        policy: Policy::passthrough(Arc::new(Reviewer::new(Duration::ZERO, metrics)), recheck),
        ..ServerConfig::default()
    }
}

fn pods_rule(user: &str) -> Rule {
    Rule::allow(["get", "list", "watch"], ["pods"])
        .users([user])
        .api_groups([""])
        .namespaces(["default"])
}

fn alice_and_bob() -> SimAuth {
    SimAuth::new()
        .with_admin_token("admin-token")
        .with_token("alice-token", UserInfo::new("alice", "uid-alice", ["dev"]))
        .with_token("bob-token", UserInfo::new("bob", "uid-bob", ["dev"]))
        .with_rule(pods_rule("alice"))
        .with_rule(pods_rule("bob"))
}

/// A WebSocket to `/wsMultiplexer` with these request headers.
fn ws_request(addr: SocketAddr, headers: &[(&'static str, String)]) -> WsConnect {
    headers.iter().fold(
        WsConnect::new(&format!("ws://{addr}/wsMultiplexer")),
        |c, (name, value)| c.header(name, value.clone()),
    )
}

async fn ws_with(addr: SocketAddr, headers: &[(&'static str, String)]) -> Client {
    ws_request(addr, headers)
        .client()
        .await
        .expect("ws connects")
}

async fn bearer(addr: SocketAddr, token: &str) -> Client {
    ws_with(addr, &[("authorization", format!("Bearer {token}"))]).await
}

/// `GET` with extra headers: the status code and (de-chunked) body.
async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let answer = Request::get(path).headers(headers).send(addr).await;
    (answer.code, answer.body)
}

/// `GET` over a plain socket: the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    get_with(addr, path, &[]).await
}

/// Secret requests of any verb kubemux made of the cluster (with its own
/// identity: `--auth none`).
fn secret_requests(env: &Env) -> u64 {
    ["get", "list", "watch"]
        .iter()
        .map(|verb| env.sim.requests_by_verb(ADMIN_USER, verb, "secrets"))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_watch_paths_never_reach_the_cluster_in_auth_none() {
    let env = start_default().await;
    env.sim
        .store()
        .create(
            "secrets",
            Some("default"),
            json!({"metadata": {"name": "db", "namespace": "default"}, "data": {"password": "aHVudGVyMg=="}}),
        )
        .unwrap();
    let addr = env.server.addr();
    for path in [
        "/clusters/sim/api/v1/watch/secrets",
        "/clusters/sim/api/v1/watch/namespaces/default/secrets",
        "/clusters/sim/api/v1/watch/namespaces/default/secrets/db",
        // Percent-encoding is decoded before the path is read, and the
        // decoded path is what would be forwarded.
        "/clusters/sim/api/v1/%77atch/secrets",
        "/clusters/sim/api/v1/watch/secrets?watch=1",
    ] {
        let (status, body) = get(addr, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("legacy"), "{path}: a clear refusal: {body}");
        assert!(!body.contains("aHVudGVyMg"), "{path}: {body}");
    }
    for path in [
        "/clusters/sim/api/v1/secrets",
        "/clusters/sim/api/v1/namespaces/default/secrets/db",
    ] {
        let (status, body) = get(addr, path).await;
        assert_eq!(status, 403, "{path}: {body}");
    }

    let mut ws = env.client().await;
    for path in [
        "/api/v1/watch/secrets",
        "/api/v1/watch/namespaces/default/secrets",
        "/api/v1/watch/namespaces/default/secrets/db",
    ] {
        ws.request(path, "watch=1").await;
        let frame = ws.frame().await;
        assert_eq!(frame["path"], path);
        let err = error_of(&frame);
        assert!(err.contains("legacy"), "{path}: {err}");
        assert_eq!(ws.frame().await["type"], "COMPLETE", "{path}");
    }
    ws.request("/api/v1/namespaces/default/secrets", "watch=1")
        .await;
    assert!(error_of(&ws.frame().await).contains("secrets are not served"));
    assert_eq!(ws.frame().await["type"], "COMPLETE");
    assert_eq!(
        secret_requests(&env),
        0,
        "no secret request ever reached the cluster"
    );
}

/// Reads past DATA frames to the subscription's end: ERROR, then COMPLETE.
async fn ended(client: &mut Client) -> String {
    loop {
        let frame = client.frame().await;
        if frame["type"] == "DATA" {
            continue;
        }
        let err = error_of(&frame);
        assert_eq!(client.frame().await["type"], "COMPLETE");
        return err;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_revocation_ends_shared_watches_and_cached_lists() {
    let s = setup(alice_and_bob(), passthrough(Duration::from_millis(300))).await;
    let addr = s.server.addr();
    let (pods, _) = s
        .sim
        .store()
        .list("pods", Some("default"), None, None)
        .unwrap();
    let mut tab1 = bearer(addr, "alice-token").await;
    let mut tab2 = bearer(addr, "alice-token").await;
    let mut bob = bearer(addr, "bob-token").await;
    for c in [&mut tab1, &mut tab2, &mut bob] {
        c.request(PODS, "watch=1").await;
        c.events(pods.len()).await;
    }
    assert_eq!(
        s.sim.watch_requests_by("alice", "pods"),
        1,
        "alice's second tab joined the first one's watch"
    );
    let rest = format!("/clusters/{CLUSTER}{PODS}");
    let alice = [("authorization", "Bearer alice-token")];
    assert_eq!(get_with(addr, &rest, &alice).await.0, 200);
    let rest_watch = format!("{rest}?watch=1&timeoutSeconds=1");
    let (status, body) = get_with(addr, &rest_watch, &alice).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        s.sim.watch_requests_by("alice", "pods"),
        1,
        "a REST watch streamed from her live watch"
    );

    s.sim.auth().revoke_user("alice");
    let direct = get_with(s.sim.addr(), PODS, &alice).await;
    assert_eq!(direct.0, 403, "the cluster itself refuses alice now");
    let lists_before = s.sim.list_requests_by("alice", "pods");
    let (status, body) = get_with(addr, &rest, &alice).await;
    assert_eq!(status, 403, "no LIST from the live watch's store: {body}");
    assert!(body.contains("may not list pods"), "{body}");
    let (status, body) = get_with(addr, &rest_watch, &alice).await;
    assert_eq!(status, 403, "no watch from the live watch either: {body}");
    assert!(body.contains("may not list pods"), "{body}");
    for tab in [&mut tab1, &mut tab2] {
        let err = ended(tab).await;
        assert!(err.contains("\"alice\" may not"), "{err}");
    }
    let mut tab3 = bearer(addr, "alice-token").await;
    tab3.request(PODS, "watch=1").await;
    assert!(error_of(&tab3.frame().await).contains("\"alice\" may not"));
    assert_eq!(tab3.frame().await["type"], "COMPLETE");
    assert_eq!(
        s.sim.list_requests_by("alice", "pods"),
        lists_before,
        "refused by the review, not by a request made with her token"
    );

    let created = s
        .sim
        .store()
        .create(
            "pods",
            Some("default"),
            json!({"metadata": {"name": "after-revocation", "namespace": "default"}, "spec": {"containers": []}}),
        )
        .unwrap();
    let (_, ev) = bob.event().await;
    assert_eq!(
        ev["object"]["metadata"]["uid"], created["metadata"]["uid"],
        "bob's own watch goes on"
    );
}

const BACKEND_PROTOCOL_PREFIX: &str = "base64url.headlamp.backend.authorization.k8s.io.";

fn backend_protocol(token: &str) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token);
    format!("headlamp.multiplexer.k8s.io, {BACKEND_PROTOCOL_PREFIX}{encoded}")
}

/// The HTTP status a refused WebSocket upgrade got.
async fn refused_upgrade(addr: SocketAddr, headers: &[(&'static str, String)]) -> u16 {
    match ws_request(addr, headers).open().await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        other => panic!("expected a refused upgrade, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headlamps_backend_token_is_never_a_kubernetes_credential() {
    let s = setup(alice_and_bob(), passthrough(Duration::from_secs(30))).await;
    let addr = s.server.addr();
    // alice's Kubernetes token offered as Headlamp's backend token: it is
    // a frontend-to-backend secret, so it must not make kubemux act as her.
    let mut tab = ws_with(
        addr,
        &[("sec-websocket-protocol", backend_protocol("alice-token"))],
    )
    .await;
    tab.request(PODS, "watch=1").await;
    let err = error_of(&tab.frame().await);
    assert!(err.contains("no credentials"), "{err}");
    let rest = format!("/clusters/{CLUSTER}{PODS}");
    let (status, body) =
        get_with(addr, &rest, &[("x-headlamp_backend-token", "alice-token")]).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        s.sim.requests_by("alice"),
        0,
        "alice's token never reached the cluster"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_backend_token_is_required_and_checked() {
    let s = setup(alice_and_bob(), |metrics| ServerConfig {
        headlamp_backend_token: Some(Arc::new(Secret::new("desktop-secret"))),
        ..passthrough(Duration::from_secs(30))(metrics)
    })
    .await;
    let addr = s.server.addr();
    let bob = ("authorization", "Bearer bob-token".to_string());
    assert_eq!(refused_upgrade(addr, std::slice::from_ref(&bob)).await, 403);
    assert_eq!(
        refused_upgrade(
            addr,
            &[
                bob.clone(),
                ("sec-websocket-protocol", backend_protocol("desktop-secreT"))
            ]
        )
        .await,
        403
    );
    let mut tab = ws_with(
        addr,
        &[
            bob.clone(),
            ("sec-websocket-protocol", backend_protocol("desktop-secret")),
        ],
    )
    .await;
    tab.request(PODS, "watch=1").await;
    assert_eq!(tab.frame().await["type"], "DATA", "served as bob");

    let rest = format!("/clusters/{CLUSTER}{PODS}");
    let bob = ("authorization", "Bearer bob-token");
    assert_eq!(get_with(addr, &rest, &[bob]).await.0, 403);
    assert_eq!(
        get_with(addr, &rest, &[bob, ("x-headlamp_backend-token", "nope")])
            .await
            .0,
        403
    );
    let (status, body) = get_with(
        addr,
        &rest,
        &[bob, ("x-headlamp_backend-token", "desktop-secret")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.sim.requests_by("desktop-secret"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_detail_is_for_the_operator_only() {
    let s = setup(alice_and_bob(), |metrics| ServerConfig {
        admin_token: Some(Arc::new(Secret::new("ops-token"))),
        ..passthrough(Duration::from_secs(30))(metrics)
    })
    .await;
    let addr = s.server.addr();
    let mut bob = bearer(addr, "bob-token").await;
    // A field kubemux does not evaluate keeps the selectors in the key.
    bob.request(
        PODS,
        &format!("watch=1&labelSelector=project%3Dskunkworks&{OWN_WATCH}"),
    )
    .await;
    let sim_address = s.sim.addr().to_string();
    let ops = [("authorization", "Bearer ops-token")];
    eventually_ok("the status names the watch", async || {
        let (_, body) = get_with(addr, "/api/status", &ops).await;
        if body.contains("skunkworks") {
            assert!(body.contains(&sim_address), "{body}");
            Ok(())
        } else {
            Err(body)
        }
    })
    .await;
    let (_, body) = get_with(addr, "/api/clusters/sim", &ops).await;
    assert!(body.contains(&sim_address), "{body}");

    for headers in [
        &[][..],
        &[("authorization", "Bearer bob-token")][..],
        &[("authorization", "Bearer ops-tokeN")][..],
    ] {
        for path in ["/api/status", "/api/clusters", "/api/clusters/sim"] {
            let (status, body) = get_with(addr, path, headers).await;
            assert_eq!(status, 200, "{path}: {body}");
            assert!(!body.contains("skunkworks"), "{path}: {body}");
            assert!(!body.contains(&sim_address), "{path}: {body}");
            assert!(!body.contains("/api/v1/"), "{path}: {body}");
            assert!(body.contains("\"name\":\"sim\""), "{path}: {body}");
        }
        let (_, body) = get_with(addr, "/api/status", headers).await;
        assert!(body.contains("\"redacted\":true"), "{body}");
    }
    for path in ["/healthz", "/readyz", "/metrics", "/"] {
        assert_eq!(get(addr, path).await.0, 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_tokens_share_one_upstream_pool() {
    let (s, upstream_connections) =
        setup_via(alice_and_bob(), passthrough(Duration::from_secs(30)), true).await;
    let addr = s.server.addr();
    let rest = format!("/clusters/{CLUSTER}{PODS}");
    let junk = 40;
    for i in 0..junk {
        let token = format!("Bearer junk-{i}");
        let (status, body) = get_with(addr, &rest, &[("authorization", &token)]).await;
        assert_eq!(status, 401, "the cluster's own answer: {body}");
    }
    let bob = get_with(addr, &rest, &[("authorization", "Bearer bob-token")]).await;
    assert_eq!(bob.0, 200, "{}", bob.1);
    let opened = upstream_connections.load(Ordering::SeqCst);
    // Health probes (kubemux's own client) and one pool for every caller:
    // a handful of connections, not one or more per token.
    assert!(
        opened < junk / 4,
        "{opened} upstream connections for {junk} junk tokens"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_not_cached_for_the_whole_review_ttl() {
    let auth = SimAuth::new()
        .with_admin_token("admin-token")
        .with_token("alice-token", UserInfo::new("alice", "uid-alice", ["dev"]));
    let s = setup(auth, |metrics| ServerConfig {
        policy: Policy::shared(
            Arc::new(Reviewer::new(Duration::from_secs(600), metrics)),
            Duration::from_secs(600),
        ),
        ..ServerConfig::default()
    })
    .await;
    let mut alice = bearer(s.server.addr(), "alice-token").await;
    alice.request(PODS, "watch=1").await;
    assert!(error_of(&alice.frame().await).contains("\"alice\" may not"));
    assert_eq!(alice.frame().await["type"], "COMPLETE");
    s.sim.auth().add_rule(pods_rule("alice")).unwrap();
    // Access just granted is seen well within the 10-minute review TTL.
    eventually_ok("a refusal not reused for the whole TTL", async || {
        alice.request(PODS, "watch=1").await;
        let frame = alice.frame().await;
        if frame["type"] == "DATA" {
            return Ok(());
        }
        assert!(error_of(&frame).contains("\"alice\" may not"));
        assert_eq!(alice.frame().await["type"], "COMPLETE");
        Err(frame)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_mode_authorises_discovery_as_non_resource_urls() {
    let s = setup(alice_and_bob(), |metrics| ServerConfig {
        policy: Policy::shared(
            Arc::new(Reviewer::new(Duration::from_secs(30), metrics)),
            Duration::from_secs(30),
        ),
        ..ServerConfig::default()
    })
    .await;
    let addr = s.server.addr();
    // alice may read pods in one namespace only; discovery is hers anyway,
    // as `system:discovery` grants it to every authenticated user.
    for path in ["/api", "/api/v1", "/apis", "/apis/apps/v1", "/version"] {
        let url = format!("/clusters/{CLUSTER}{path}");
        let (status, body) = get_with(addr, &url, &[("authorization", "Bearer alice-token")]).await;
        assert_eq!(status, 200, "{path}: {body}");
        let (status, body) = get_with(addr, &url, &[("authorization", "Bearer junk")]).await;
        assert_eq!(status, 401, "{path}: {body}");
        let (status, body) = get(addr, &url).await;
        assert_eq!(status, 401, "{path}: {body}");
    }
    // Reviews asked about the URL itself, one per distinct path (cached).
    let reviews = s
        .sim
        .requests_by_verb(ADMIN_USER, "create", "subjectaccessreviews");
    assert_eq!(reviews, 5, "one SubjectAccessReview per discovery path");
}
