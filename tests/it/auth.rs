//! Real identities (issue 6): `shared` mode shares one upstream watch among
//! many users while reviewing each; `passthrough` watches as each user;
//! tokens arrive by header or split cookies.

use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use kubemux::auth::policy::Policy;
use kubemux::auth::review::Reviewer;
use kubemux::metrics::Metrics;
use kubemux::server::ServerConfig;
use kubemux_sim::{Rule, SimAuth, SimConfig, SimServer, UserInfo};
use serde_json::json;

const ADMIN: &str = "kubemux-sim";
const PATH: &str = "/api/v1/namespaces/default/pods";

fn users(n: usize) -> SimAuth {
    let mut auth = SimAuth::new().with_admin_token("admin-token");
    for i in 0..n {
        auth = auth.with_token(
            format!("token-u{i}"),
            UserInfo::new(format!("u{i}"), format!("uid-{i}"), ["team"]),
        );
    }
    auth.with_token("alice-token", UserInfo::new("alice", "uid-alice", ["dev"]))
        .with_rule(pods_rule((0..n).map(|i| format!("u{i}")).collect()))
        .with_rule(
            Rule::allow(["list", "watch"], ["pods"])
                .users(["alice"])
                .api_groups([""])
                .namespaces(["team-a"]),
        )
}

fn pods_rule(users: Vec<String>) -> Rule {
    Rule::allow(["get", "list", "watch"], ["pods"])
        .users(users)
        .api_groups([""])
        .namespaces(["default"])
}

/// The simulator with `auth`, and kubemux in front of it with `policy`.
async fn setup(auth: SimAuth, policy: impl FnOnce(Arc<Metrics>) -> Policy) -> Env {
    start_with(
        SimConfig {
            auth: Some(auth),
            ..SimConfig::default()
        },
        quick_hub(),
        |metrics| ServerConfig {
            policy: policy(metrics),
            ..ServerConfig::default()
        },
    )
    .await
}

fn passthrough(recheck: Duration) -> impl FnOnce(Arc<Metrics>) -> Policy {
    move |metrics| {
        Policy::passthrough(
            Arc::new(Reviewer::new(Duration::from_secs(30), metrics)),
            recheck,
        )
    }
}

fn shared(recheck: Duration) -> impl FnOnce(Arc<Metrics>) -> Policy {
    move |metrics| {
        Policy::shared(
            Arc::new(Reviewer::new(Duration::from_secs(30), metrics)),
            recheck,
        )
    }
}

async fn client_with(s: &Env, header: (&'static str, String)) -> Client {
    WsConnect::new(&s.ws_url())
        .header(header.0, header.1)
        .client()
        .await
        .expect("ws connects")
}

async fn bearer(s: &Env, token: &str) -> Client {
    client_with(s, ("authorization", format!("Bearer {token}"))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_mode_serves_many_users_from_one_watch_and_enforces_rbac() {
    let s = setup(users(20), shared(Duration::from_millis(300))).await;
    let (pods, _) = s
        .sim
        .store()
        .list("pods", Some("default"), None, None)
        .unwrap();
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut c = bearer(&s, &format!("token-u{i}")).await;
        c.request(PATH, "watch=1").await;
        clients.push(c);
    }
    for c in clients.iter_mut() {
        c.events(pods.len()).await;
    }
    eventually("one shared watch", || s.sim.active_watches("pods") == 1).await;
    assert_eq!(
        s.sim.watch_requests("pods"),
        1,
        "20 users, one upstream watch"
    );
    assert_eq!(
        s.sim.watch_requests_by(ADMIN, "pods"),
        1,
        "under kubemux's identity"
    );
    for i in 0..20 {
        assert_eq!(
            s.sim.requests_by(&format!("u{i}")),
            0,
            "users never reach the cluster"
        );
    }

    let mut alice = bearer(&s, "alice-token").await;
    alice.request(PATH, "watch=1").await;
    let err = error_of(&alice.frame().await);
    assert!(err.contains("alice") && err.contains("default"), "{err}");
    assert_eq!(alice.frame().await["type"], "COMPLETE");
    alice
        .request("/api/v1/namespaces/team-a/pods", "watch=1")
        .await;
    assert_eq!(
        alice.event().await.0["path"],
        "/api/v1/namespaces/team-a/pods",
        "allowed where the rules say"
    );

    let mut bad = bearer(&s, "no-such-token").await;
    bad.request(PATH, "watch=1").await;
    assert!(error_of(&bad.frame().await).contains("token was rejected"));

    s.sim
        .auth()
        .set_rules(vec![pods_rule((1..20).map(|i| format!("u{i}")).collect())])
        .unwrap();
    loop {
        let frame = clients[0].frame().await;
        match frame["type"].as_str().unwrap() {
            "ERROR" => assert!(error_of(&frame).contains("u0"), "{frame}"),
            "COMPLETE" => break,
            _ => {}
        }
    }
    let created = s.sim.store().create("pods", Some("default"), json!({"metadata": {"name": "after-revoke", "namespace": "default"}, "spec": {"containers": []}})).unwrap();
    for c in clients.iter_mut().skip(1) {
        let (_, ev) = c.event().await;
        assert_eq!(
            ev["object"]["metadata"]["uid"], created["metadata"]["uid"],
            "the others continue"
        );
    }
    assert!(
        clients[0]
            .next_within(Duration::from_millis(300))
            .await
            .is_none(),
        "the revoked user gets nothing more"
    );
    let text = s.hub.metrics().encode();
    assert!(
        metric(
            &text,
            "kubemux_auth_decisions_total{kind=\"access\",outcome=\"allowed\"}"
        )
        .unwrap()
            >= 40.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "kubemux_auth_decisions_total{kind=\"access\",outcome=\"denied\"}"
        )
        .unwrap()
            >= 2.0,
        "{text}"
    );
    assert!(!text.contains("token-u"), "tokens never appear in metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_watches_as_each_user_and_shares_only_within_one() {
    let s = setup(users(2), passthrough(Duration::from_secs(30))).await;
    let (pods, _) = s
        .sim
        .store()
        .list("pods", Some("default"), None, None)
        .unwrap();
    let mut tab1 = bearer(&s, "token-u0").await;
    let mut tab2 = bearer(&s, "token-u0").await;
    let mut other = bearer(&s, "token-u1").await;
    for c in [&mut tab1, &mut tab2, &mut other] {
        c.request(PATH, "watch=1").await;
        c.events(pods.len()).await;
    }
    eventually("two upstream watches", || s.sim.active_watches("pods") == 2).await;
    assert_eq!(
        s.sim.watch_requests_by("u0", "pods"),
        1,
        "two tabs of one user share a watch"
    );
    assert_eq!(
        s.sim.watch_requests_by("u1", "pods"),
        1,
        "another user gets their own"
    );
    assert_eq!(
        s.sim.watch_requests_by(ADMIN, "pods"),
        0,
        "never kubemux's identity"
    );

    let mut alice = bearer(&s, "alice-token").await;
    alice.request(PATH, "watch=1").await;
    let err = error_of(&alice.frame().await);
    assert!(
        err.contains("\"alice\" may not list pods"),
        "refused by the review at join: {err}"
    );
    assert_eq!(alice.frame().await["type"], "COMPLETE");
    let mut nobody = Client::connect(&format!("ws://{}/wsMultiplexer", s.server.addr())).await;
    nobody.request(PATH, "watch=1").await;
    assert!(error_of(&nobody.frame().await).contains("no credentials"));
    let mut wrong = bearer(&s, "wrong-token").await;
    wrong.request(PATH, "watch=1").await;
    assert!(error_of(&wrong.frame().await).contains("rejected by cluster"));
    tab1.request("/api/v1/nodes", "watch=1").await;
    let frame = tab1.frame().await;
    assert_eq!(frame["path"], "/api/v1/nodes");
    assert!(error_of(&frame).contains("may not list nodes"));
    assert_eq!(tab1.frame().await["type"], "COMPLETE");
    let created = s
        .sim
        .store()
        .create("pods", Some("default"), json!({"metadata": {"name": "seen-by-all", "namespace": "default"}, "spec": {"containers": []}}))
        .unwrap();
    for c in [&mut tab1, &mut tab2, &mut other] {
        let (frame, ev) = c.event().await;
        assert_eq!(
            frame["path"], PATH,
            "the denied subscription affected nothing else"
        );
        assert_eq!(ev["object"]["metadata"]["uid"], created["metadata"]["uid"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_arrive_by_header_and_split_cookie() {
    let s = setup(users(3), passthrough(Duration::from_secs(30))).await;
    let by_cookie = client_with(
        &s,
        (
            "cookie",
            format!("headlamp-auth-{CLUSTER}.1=n-u2; other=1; headlamp-auth-{CLUSTER}.0=toke"),
        ),
    )
    .await;
    let by_header = bearer(&s, "token-u0").await;
    for (mut c, user) in [(by_header, "u0"), (by_cookie, "u2")] {
        c.request(PATH, "watch=1").await;
        c.event().await;
        eventually(&format!("{user}'s own watch"), || {
            s.sim.watch_requests_by(user, "pods") == 1
        })
        .await;
    }
}

#[tokio::test]
async fn tokens_never_reach_the_logs() {
    let sim = SimServer::start(SimConfig {
        auth: Some(users(1)),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("kubemux-auth-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("config");
    std::fs::write(&kubeconfig, sim.kubeconfig(CLUSTER)).unwrap();
    let kubeconfig = kubeconfig.to_str().unwrap().to_string();
    let serve = spawn_kubemux(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--auth",
            "passthrough",
            "--log-format",
            "json",
            "--kubeconfig",
            &kubeconfig,
        ],
        &[("RUST_LOG", "kubemux=debug,info")],
    )
    .await;
    let addr = serve.addr.clone();
    for token in ["token-u0", "bogus-secret-token"] {
        let mut c = WsConnect::new(&format!("ws://{addr}/wsMultiplexer"))
            .bearer(token)
            .client()
            .await
            .unwrap();
        c.request(PATH, "watch=1").await;
        c.frame().await;
    }
    let (_, log) = serve.terminate().await;
    assert!(
        log.contains("connection opened"),
        "logs were captured: {log}"
    );
    for secret in ["token-u0", "bogus-secret-token", "admin-token"] {
        assert!(!log.contains(secret), "{secret} leaked into the logs");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_in_shared_mode_is_cut_off_when_access_is_revoked() {
    let viewer = || {
        Rule::allow(["list", "watch"], ["nodes", "namespaces", "pods"])
            .users(["u0"])
            .api_groups([""])
    };
    let auth = SimAuth::new()
        .with_admin_token("admin-token")
        .with_token("token-u0", UserInfo::new("u0", "uid-0", ["team"]))
        .with_token("token-u1", UserInfo::new("u1", "uid-1", ["team"]))
        .with_rule(viewer());
    let s = setup(auth, shared(Duration::from_millis(300))).await;
    let open = |token: &'static str| {
        let addr = s.server.addr();
        async move {
            WsConnect::new(&format!("ws://{addr}/ws/dashboard"))
                .bearer(token)
                .client()
                .await
                .unwrap()
        }
    };
    let mut denied = open("token-u1").await;
    assert_eq!(denied.frame().await["type"], "connection");
    let err = denied.frame().await;
    assert_eq!(err["error"]["code"], "PERMISSION_DENIED", "{err}");

    let mut allowed = open("token-u0").await;
    assert_eq!(allowed.frame().await["type"], "connection");
    assert_eq!(allowed.frame().await["type"], "initial_state");
    s.sim.auth().set_rules(Vec::new()).unwrap();
    // Each stream's loss is named as it is found; once nothing is left to
    // show, the connection closes.
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut denied = 0;
    let close = loop {
        match tokio::time::timeout(PATIENCE, allowed.ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                if frame["type"] == "error" {
                    assert_eq!(frame["error"]["code"], "PERMISSION_DENIED", "{frame}");
                    denied += 1;
                }
            }
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            other => panic!("the connection ended without a close frame: {other:?}"),
        }
    };
    assert!(denied >= 1, "the revocation is explained before the close");
    assert_eq!(close, Some(1008), "closed as a policy refusal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headlamps_cookie_for_a_dotted_cluster_name_is_its_sanitised_name() {
    let sim = SimServer::start(SimConfig {
        auth: Some(users(1)),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let (server, _hub) = start_proxy_with(&sim.kubeconfig("my.cluster"), quick_hub(), |metrics| {
        ServerConfig {
            policy: passthrough(Duration::from_secs(30))(metrics),
            ..ServerConfig::default()
        }
    })
    .await;
    // What Headlamp's backend sets for "my.cluster": headlamp-auth-mycluster.<n>.
    let mut c = WsConnect::new(&format!("ws://{}/wsMultiplexer", server.addr()))
        .header(
            "cookie",
            "headlamp-auth-mycluster.0=token-; headlamp-auth-mycluster.1=u0",
        )
        .client()
        .await
        .unwrap();
    c.send(json!({"clusterId": "my.cluster", "path": PATH, "query": "watch=1", "userId": "", "type": "REQUEST"}))
        .await;
    let (frame, _) = c.event().await;
    assert_eq!(frame["clusterId"], "my.cluster");
    eventually("u0's own watch", || {
        sim.watch_requests_by("u0", "pods") == 1
    })
    .await;
}

/// How a passthrough identity reaches `/wsMultiplexer` behind Headlamp:
/// Headlamp's auth cookies carry `Path=/clusters/<cluster>`, so a browser
/// never sends them to `/wsMultiplexer`; the deployment's auth proxy (here
/// HAProxy, as oauth2-proxy's `--set-authorization-header` would) puts the
/// user's token in `Authorization` on every request it forwards, and the
/// socket, opened with no credential of its own, watches as that user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_proxy_injected_authorization_header_is_the_sockets_identity() {
    let s = setup(users(1), passthrough(Duration::from_secs(30))).await;
    let front = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = format!(
        "{HAPROXY_DEFAULTS}frontend front\n  bind {front}\n  \
         http-request set-header Authorization \"Bearer token-u0\"\n  default_backend kubemux\n\
         backend kubemux\n  server k {}\n",
        s.server.addr()
    );
    let _haproxy = start_haproxy(&config, front).await;
    let (pods, _) = s
        .sim
        .store()
        .list("pods", Some("default"), None, None)
        .unwrap();
    // What the browser sends: no Authorization, no cookie on this path.
    let mut browser = Client::connect(&format!("ws://{front}/wsMultiplexer")).await;
    browser.request(PATH, "watch=1").await;
    browser.events(pods.len()).await;
    eventually("the upstream watch runs as the proxy's user", || {
        s.sim.watch_requests_by("u0", "pods") == 1
    })
    .await;
    assert_eq!(
        s.sim.watch_requests_by(ADMIN, "pods"),
        0,
        "never as kubemux"
    );
    // The same socket straight to kubemux has no identity at all.
    let mut direct = Client::connect(&format!("ws://{}/wsMultiplexer", s.server.addr())).await;
    direct.request(PATH, "watch=1").await;
    assert!(error_of(&direct.frame().await).contains("no credentials"));
}

/// Re-checks are one service for the server: 50 connections of one user,
/// 20 subscriptions each on one collection (different selectors), are one
/// TokenReview and two SubjectAccessReviews (list, watch) per tick, counted
/// at the simulator; a closed connection's registrations are gone; the
/// revocation the next tick finds reaches every subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rechecks_ask_once_per_tick_across_all_connections() {
    const CONNECTIONS: usize = 50;
    const SUBSCRIPTIONS: usize = 20;
    let s = setup(users(1), shared(Duration::from_millis(500))).await;
    let registered = || metric(&s.hub.metrics().encode(), "kubemux_auth_rechecks").unwrap_or(0.0);
    let open = || async {
        let mut c = bearer(&s, "token-u0").await;
        for i in 0..SUBSCRIPTIONS {
            c.request(PATH, &format!("watch=1&labelSelector=n%3D{i}"))
                .await;
        }
        c
    };
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(open().await);
    }
    let mut extra = open().await;
    let all = ((CONNECTIONS + 1) * SUBSCRIPTIONS) as f64;
    eventually("every subscription is registered", || registered() == all).await;
    // A closed connection is no longer re-checked.
    extra.ws.close(None).await.unwrap();
    while extra.next().await.is_some() {}
    let live = (CONNECTIONS * SUBSCRIPTIONS) as f64;
    eventually("the closed connection's registrations are gone", || {
        registered() == live
    })
    .await;

    let ticks = || {
        metric(
            &s.hub.metrics().encode(),
            "kubemux_auth_recheck_ticks_total",
        )
        .unwrap_or(0.0)
    };
    let sars = || {
        s.sim
            .requests_by_verb(ADMIN, "create", "subjectaccessreviews")
    };
    let token_reviews = || s.sim.requests_by_verb(ADMIN, "create", "tokenreviews");
    let (t0, sar0, tr0) = (ticks(), sars(), token_reviews());
    eventually("three more ticks", || ticks() >= t0 + 3.0).await;
    let (t1, sar1, tr1) = (ticks(), sars(), token_reviews());
    // A tick under way at either end may add its reviews: one tick more.
    let bound = (t1 - t0 + 1.0) as u64;
    assert!(
        sar1 - sar0 <= 2 * bound && sar1 - sar0 >= 2,
        "{} SubjectAccessReviews in {} ticks for {live} subscriptions",
        sar1 - sar0,
        t1 - t0
    );
    assert!(
        tr1 - tr0 <= bound && tr1 > tr0,
        "{} TokenReviews in {} ticks",
        tr1 - tr0,
        t1 - t0
    );
    assert_eq!(
        metric(
            &s.hub.metrics().encode(),
            "kubemux_auth_recheck_last_reviews"
        ),
        Some(3.0),
        "a tick asks one TokenReview and two SubjectAccessReviews"
    );

    s.sim.auth().revoke_user("u0");
    for c in &mut clients {
        let mut completed = 0;
        while completed < SUBSCRIPTIONS {
            let frame = c.frame().await;
            match frame["type"].as_str() {
                Some("ERROR") => assert!(error_of(&frame).contains("u0"), "{frame}"),
                Some("COMPLETE") => completed += 1,
                _ => {}
            }
        }
    }
    eventually("revoked subscriptions are unregistered", || {
        registered() == 0.0
    })
    .await;
}
