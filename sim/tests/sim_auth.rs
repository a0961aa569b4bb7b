//! Identities on the simulated API server: static tokens (401), RBAC-like
//! rules (403 with the real message), runtime revocation, TokenReview,
//! SubjectAccessReview and per-user request counts, through real `kube`
//! clients holding different tokens.

mod sim_common;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, ResourceExt};
use kubemux_sim::{Rule, SimAuth, SimConfig, SimServer, UserInfo};
use serde_json::{Value, json};
use sim_common::{GUARD, eventually, raw_http, start, test_config, try_watch, watch};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ADMIN: &str = "kubemux-sim";

/// alice: pods in team-a; carol (group viewers): deployments everywhere;
/// bob: one configmap by name; dave: no rules at all.
fn auth() -> SimAuth {
    SimAuth::new()
        .with_admin_token("root-token")
        .with_token("alice-token", UserInfo::new("alice", "u-alice", ["dev"]))
        .with_token(
            "bob-token",
            UserInfo::new("bob", "u-bob", Vec::<String>::new()),
        )
        .with_token("carol-token", UserInfo::new("carol", "", ["viewers"]))
        .with_token("dave-token", UserInfo::new("dave", "", ["nobody"]))
        .with_rule(
            Rule::allow(["get", "list", "watch"], ["pods"])
                .users(["alice"])
                .api_groups([""])
                .namespaces(["team-a"]),
        )
        .with_rule(
            Rule::allow(["list", "watch"], ["deployments"])
                .groups(["viewers"])
                .api_groups(["apps"]),
        )
        .with_rule(
            Rule::allow(["get", "list"], ["configmaps"])
                .users(["bob"])
                .namespaces(["*"])
                .resource_names(["kube-root-ca.crt"]),
        )
}

async fn start_with_auth() -> SimServer {
    start(SimConfig {
        auth: Some(auth()),
        ..test_config()
    })
    .await
}

/// A `kube` client for the server's kubeconfig with `token` swapped in.
async fn client_as(server: &SimServer, token: &str) -> Client {
    let mut kubeconfig: Value =
        serde_json::from_str(&server.kubeconfig("sim")).expect("kubeconfig is JSON");
    kubeconfig["users"][0]["user"]["token"] = token.into();
    let kubeconfig = Kubeconfig::from_yaml(&kubeconfig.to_string()).expect("parse kubeconfig");
    let options = KubeConfigOptions {
        context: Some("sim".into()),
        ..KubeConfigOptions::default()
    };
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .expect("kube config");
    config.default_retry = false;
    Client::try_from(config).expect("kube client")
}

/// The `Status` of a failed call.
fn status(err: kube::Error) -> kube::core::Status {
    match err {
        kube::Error::Api(status) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// A raw request with an optional bearer token: (status, parsed body).
async fn raw(
    server: &SimServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connect");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        server.addr(),
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(GUARD, stream.read_to_end(&mut response))
        .await
        .expect("response within guard")
        .expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (code, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn unknown_or_missing_tokens_are_401() {
    let server = start_with_auth().await;
    let stranger = client_as(&server, "not-a-token").await;
    let err = Api::<Pod>::all(stranger.clone())
        .list(&ListParams::default())
        .await
        .expect_err("unknown token");
    let err = status(err);
    assert_eq!((err.code, err.reason.as_str()), (401, "Unauthorized"));
    assert!(stranger.apiserver_version().await.is_err());
    let expected = json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401});
    for path in ["/api/v1/pods", "/version", "/apis"] {
        assert_eq!(
            raw(&server, "GET", path, None, "").await,
            (401, expected.clone())
        );
    }
    // The kubeconfig carries the admin token, which may do anything.
    let admin = client_as(&server, "root-token").await;
    assert!(server.kubeconfig("x").contains("root-token"));
    Api::<Pod>::all(admin)
        .list(&ListParams::default())
        .await
        .expect("admin lists");
    // Test tooling stays open.
    assert_eq!(raw_http(&server, "GET", "/metrics", "").await.0, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn namespaced_rule_allows_team_a_and_forbids_default() {
    let server = start_with_auth().await;
    let alice = client_as(&server, "alice-token").await;
    let pods = Api::<Pod>::namespaced(alice.clone(), "team-a")
        .list(&ListParams::default())
        .await
        .expect("alice lists team-a");
    assert!(!pods.items.is_empty());
    let mut stream = watch(&alice, "/api/v1/namespaces/team-a/pods?watch=1").await;
    assert_eq!(stream.next_event().await.expect("event")["type"], "ADDED");
    assert_eq!(server.active_watches_by("alice", "pods"), 1);

    let err = status(
        Api::<Pod>::namespaced(alice.clone(), "default")
            .list(&ListParams::default())
            .await
            .expect_err("default is forbidden"),
    );
    assert_eq!((err.code, err.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        err.message,
        r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "default""#
    );
    let (code, body) = raw(
        &server,
        "GET",
        "/api/v1/namespaces/default/pods?watch=true",
        Some("alice-token"),
        "",
    )
    .await;
    assert_eq!(code, 403);
    assert_eq!(
        body,
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
            "message":"pods is forbidden: User \"alice\" cannot watch resource \"pods\" in API group \"\" in the namespace \"default\"",
            "reason":"Forbidden","details":{"kind":"pods"},"code":403})
    );
    let err = status(
        Api::<Pod>::all(alice.clone())
            .list(&ListParams::default())
            .await
            .expect_err("all namespaces is forbidden"),
    );
    assert!(
        err.message.ends_with("at the cluster scope"),
        "{}",
        err.message
    );
    // Discovery is open to any authenticated user.
    alice.apiserver_version().await.expect("version");
    let (code, _) = raw(&server, "GET", "/api/v1", Some("alice-token"), "").await;
    assert_eq!(code, 200);
    drop(stream);
    eventually(|| server.active_watches_by("alice", "pods") == 0).await;
    server.shutdown().await;
}

#[tokio::test]
async fn group_rules_and_resource_names() {
    let server = start_with_auth().await;
    let carol = client_as(&server, "carol-token").await;
    let deployments = Api::<Deployment>::all(carol.clone())
        .list(&ListParams::default())
        .await
        .expect("viewers list deployments everywhere");
    assert!(!deployments.items.is_empty());
    let dave = client_as(&server, "dave-token").await;
    let err = status(
        Api::<Deployment>::namespaced(dave, "team-b")
            .list(&ListParams::default())
            .await
            .expect_err("dave is not a viewer"),
    );
    assert_eq!(
        err.message,
        r#"deployments.apps is forbidden: User "dave" cannot list resource "deployments" in API group "apps" in the namespace "team-b""#
    );
    assert!(
        Api::<Pod>::all(carol)
            .list(&ListParams::default())
            .await
            .is_err()
    );

    let bob = client_as(&server, "bob-token").await;
    let configmaps = Api::<ConfigMap>::namespaced(bob.clone(), "team-a");
    let cm = configmaps.get("kube-root-ca.crt").await.expect("named get");
    assert_eq!(cm.name_any(), "kube-root-ca.crt");
    let err = status(configmaps.get("other").await.expect_err("other name"));
    assert_eq!(err.code, 403);
    assert_eq!(
        err.message,
        r#"configmaps "other" is forbidden: User "bob" cannot get resource "configmaps" in API group "" in the namespace "team-a""#
    );
    assert!(configmaps.list(&ListParams::default()).await.is_err());
    let one = configmaps
        .list(&ListParams::default().fields("metadata.name=kube-root-ca.crt"))
        .await
        .expect("a list naming the object is allowed");
    assert_eq!(one.items.len(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn revoking_access_denies_the_next_request_but_not_open_watches() {
    let server = start_with_auth().await;
    let alice = client_as(&server, "alice-token").await;
    let pods = Api::<Pod>::namespaced(alice.clone(), "team-a");
    pods.list(&ListParams::default()).await.expect("allowed");
    let mut stream = watch(
        &alice,
        "/api/v1/namespaces/team-a/pods?watch=1&resourceVersion=0",
    )
    .await;
    stream.next_event().await.expect("initial event");

    assert_eq!(server.auth().revoke_user("alice"), 1);
    let err = status(
        pods.list(&ListParams::default())
            .await
            .expect_err("revoked"),
    );
    assert_eq!(err.code, 403);
    assert!(
        try_watch(&alice, "/api/v1/namespaces/team-a/pods?watch=1")
            .await
            .is_err()
    );
    // The watch opened before the revocation keeps streaming.
    let pod = json!({"metadata": {"name": "after-revoke"}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
    server
        .store()
        .create("pods", Some("team-a"), pod)
        .expect("create");
    loop {
        let event = stream.next_event().await.expect("stream still open");
        if event["object"]["metadata"]["name"] == "after-revoke" {
            break;
        }
    }
    assert_eq!(server.active_watches_by("alice", "pods"), 1);

    // Rules replaced over HTTP grant access again; a bad body is a 400.
    let rules = json!([{"users": ["alice"], "verbs": ["list"], "resources": ["pods"], "namespaces": ["team-a"]}]);
    let (code, _, body) = raw_http(&server, "POST", "/_sim/auth/rules", &rules.to_string()).await;
    assert_eq!(code, 200, "{body}");
    pods.list(&ListParams::default())
        .await
        .expect("granted again");
    for bad in [
        "nope",
        r#"[{"users":["a"],"verbs":["fly"],"resources":["pods"]}]"#,
        "{}",
    ] {
        let (code, _, _) = raw_http(&server, "POST", "/_sim/auth/rules", bad).await;
        assert_eq!(code, 400, "{bad}");
    }
    let (_, _, body) = raw_http(&server, "GET", "/_sim/auth/rules", "").await;
    let body: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["rules"].as_array().map(Vec::len), Some(1));
    server.shutdown().await;
}

fn token_review(token: &str) -> TokenReview {
    TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.into()),
            ..TokenReviewSpec::default()
        },
        ..TokenReview::default()
    }
}

#[tokio::test]
async fn token_reviews() {
    let server = start_with_auth().await;
    let admin = Api::<TokenReview>::all(client_as(&server, "root-token").await);
    let pp = PostParams::default();
    let review = admin
        .create(&pp, &token_review("alice-token"))
        .await
        .expect("review");
    let status_ = review.status.expect("status");
    assert_eq!(status_.authenticated, Some(true));
    let user = status_.user.expect("user");
    assert_eq!(user.username.as_deref(), Some("alice"));
    assert_eq!(user.uid.as_deref(), Some("u-alice"));
    assert_eq!(
        user.groups,
        Some(vec!["dev".to_string(), "system:authenticated".to_string()])
    );
    let bad = admin
        .create(&pp, &token_review("wrong"))
        .await
        .expect("review");
    let bad = bad.status.expect("status");
    assert_eq!(bad.authenticated, Some(false));
    assert!(bad.error.is_some());
    assert_eq!(
        status(
            admin
                .create(&pp, &token_review(""))
                .await
                .expect_err("empty")
        )
        .code,
        400
    );

    let alice = Api::<TokenReview>::all(client_as(&server, "alice-token").await);
    let err = status(
        alice
            .create(&pp, &token_review("bob-token"))
            .await
            .expect_err("403"),
    );
    assert_eq!(
        err.message,
        r#"tokenreviews.authentication.k8s.io is forbidden: User "alice" cannot create resource "tokenreviews" in API group "authentication.k8s.io" at the cluster scope"#
    );
    assert_eq!(server.review_requests("tokenreviews"), 4);
    assert_eq!(server.review_requests("TokenReview"), 4);
    // A token revoked at runtime stops authenticating.
    assert!(server.auth().revoke_token("alice-token"));
    let gone = admin
        .create(&pp, &token_review("alice-token"))
        .await
        .expect("review");
    assert_eq!(gone.status.and_then(|s| s.authenticated), Some(false));
    let (code, _) = raw(
        &server,
        "GET",
        "/api/v1/namespaces/team-a/pods",
        Some("alice-token"),
        "",
    )
    .await;
    assert_eq!(code, 401);
    server.shutdown().await;
}

fn access_review(
    user: &str,
    groups: &[&str],
    verb: &str,
    resource: &str,
    ns: &str,
) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            groups: Some(groups.iter().map(|g| g.to_string()).collect()),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                resource: Some(resource.into()),
                namespace: (!ns.is_empty()).then(|| ns.to_string()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    }
}

/// Whether a SubjectAccessReview for these attributes is allowed.
async fn sar(
    api: &Api<SubjectAccessReview>,
    user: &str,
    groups: &[&str],
    verb: &str,
    resource: &str,
    ns: &str,
) -> bool {
    let review = access_review(user, groups, verb, resource, ns);
    let answer = api
        .create(&PostParams::default(), &review)
        .await
        .expect("sar");
    answer.status.expect("status").allowed
}

#[tokio::test]
async fn subject_access_reviews() {
    let server = start_with_auth().await;
    server
        .auth()
        .add_rule(Rule::allow(["create"], ["subjectaccessreviews"]).users(["reviewer"]))
        .expect("rule");
    server
        .auth()
        .add_token(
            "reviewer-token",
            UserInfo::new("reviewer", "", Vec::<String>::new()),
        )
        .expect("token");
    let pp = PostParams::default();
    let allowed = |review: SubjectAccessReview| review.status.expect("status").allowed;
    for token in ["root-token", "reviewer-token"] {
        let api = Api::<SubjectAccessReview>::all(client_as(&server, token).await);
        assert!(sar(&api, "alice", &[], "watch", "pods", "team-a").await);
        assert!(!sar(&api, "alice", &[], "list", "pods", "default").await);
        assert!(!sar(&api, "alice", &[], "delete", "pods", "team-a").await);
        assert!(sar(&api, "x", &["system:masters"], "delete", "nodes", "").await);
        let mut by_group = access_review("someone", &["viewers"], "list", "deployments", "");
        if let Some(attrs) = by_group.spec.resource_attributes.as_mut() {
            attrs.group = Some("apps".into());
        }
        let answer = api.create(&pp, &by_group).await.expect("sar");
        let answer = answer.status.expect("status");
        assert!(answer.allowed);
        assert!(answer.reason.is_some());
    }
    // Non-resource attributes: discovery is open to system:authenticated.
    let admin = Api::<SubjectAccessReview>::all(client_as(&server, "root-token").await);
    let mut discovery = access_review("dave", &["system:authenticated"], "get", "", "");
    discovery.spec.resource_attributes = None;
    discovery.spec.non_resource_attributes = Some(NonResourceAttributes {
        path: Some("/apis".into()),
        verb: Some("get".into()),
    });
    assert!(allowed(admin.create(&pp, &discovery).await.expect("sar")));
    // Invalid reviews and bodies.
    let nobody = access_review("", &[], "get", "pods", "");
    assert_eq!(
        status(admin.create(&pp, &nobody).await.expect_err("422")).code,
        422
    );
    let path = "/apis/authorization.k8s.io/v1/subjectaccessreviews";
    for bad in [
        "not json",
        "[]",
        r#"{"kind":"Pod"}"#,
        r#"{"spec":{"user":5}}"#,
    ] {
        let (code, body) = raw(&server, "POST", path, Some("root-token"), bad).await;
        assert_eq!(
            (code, body["reason"].as_str()),
            (400, Some("BadRequest")),
            "{bad}"
        );
    }
    let (code, _) = raw(&server, "GET", path, Some("root-token"), "").await;
    assert_eq!(code, 405);
    // A caller without the create rule is refused.
    let alice = Api::<SubjectAccessReview>::all(client_as(&server, "alice-token").await);
    let err = status(
        alice
            .create(&pp, &access_review("alice", &[], "list", "pods", "team-a"))
            .await
            .expect_err("403"),
    );
    assert_eq!((err.code, err.reason.as_str()), (403, "Forbidden"));
    // 10 + 1 discovery + 1 invalid + 4 bad bodies + 1 refused; the GET is not a create.
    assert_eq!(server.review_requests("subjectaccessreviews"), 17);
    server.shutdown().await;
}

#[tokio::test]
async fn requests_are_counted_per_user() {
    let server = start_with_auth().await;
    let alice = client_as(&server, "alice-token").await;
    let pods = Api::<Pod>::namespaced(alice.clone(), "team-a");
    pods.list(&ListParams::default()).await.expect("list");
    pods.list(&ListParams::default()).await.expect("list");
    let _stream = watch(&alice, "/api/v1/namespaces/team-a/pods?watch=1").await;
    let _ = Api::<Pod>::namespaced(alice, "default")
        .list(&ListParams::default())
        .await;
    let admin = client_as(&server, "root-token").await;
    Api::<Pod>::all(admin)
        .list(&ListParams::default())
        .await
        .expect("list");

    assert_eq!(server.requests_by("alice"), 4);
    assert_eq!(server.list_requests_by("alice", "pods"), 3);
    assert_eq!(server.watch_requests_by("alice", "pods"), 1);
    assert_eq!(server.active_watches_by("alice", "pods"), 1);
    assert_eq!(server.requests_by(ADMIN), 1);
    assert_eq!(server.requests_by("bob"), 0);
    let (_, _, metrics) = raw_http(&server, "GET", "/metrics", "").await;
    assert!(
        metrics.contains(r#"sim_requests_total{user="alice",verb="list",resource="pods"} 3"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"sim_user_active_watches{user="alice",resource="pods"} 1"#));
    server.shutdown().await;
}

#[tokio::test]
async fn disabled_auth_keeps_everything_open() {
    let server = start(test_config()).await;
    assert!(!server.auth().enabled());
    let anyone = client_as(&server, "whatever").await;
    Api::<Pod>::namespaced(anyone.clone(), "default")
        .list(&ListParams::default())
        .await
        .expect("open");
    let (code, _, _) = raw_http(&server, "GET", "/api/v1/pods", "").await;
    assert_eq!(code, 200);
    assert_eq!(server.requests_by(ADMIN), 2);
    // The review endpoints still answer from the (admin-only) token table.
    let reviews = Api::<TokenReview>::all(anyone);
    let pp = PostParams::default();
    let admin = reviews
        .create(&pp, &token_review("kubemux-sim-token"))
        .await
        .expect("review");
    let user = admin.status.and_then(|s| s.user).expect("user");
    assert_eq!(user.username.as_deref(), Some(ADMIN));
    let other = reviews
        .create(&pp, &token_review("whatever"))
        .await
        .expect("review");
    assert_eq!(other.status.and_then(|s| s.authenticated), Some(false));
    assert!(server.kubeconfig("sim").contains("kubemux-sim-token"));
    server.shutdown().await;
}

#[tokio::test]
async fn rules_load_from_a_file_and_discovery_lists_the_reviews() {
    let path = std::env::temp_dir().join(format!("kubemux-sim-auth-{}.yaml", std::process::id()));
    std::fs::write(
        &path,
        "adminToken: file-admin\ntokens:\n  eve-token: {username: eve, groups: [dev]}\nrules:\n  - groups: [dev]\n    verbs: [list]\n    apiGroups: [\"\"]\n    resources: [\"*\"]\n    namespaces: [team-b]\n",
    )
    .expect("write auth file");
    let auth = SimAuth::from_file(&path).expect("load");
    std::fs::remove_file(&path).expect("remove");
    let server = start(SimConfig {
        auth: Some(auth),
        ..test_config()
    })
    .await;
    let eve = client_as(&server, "eve-token").await;
    Api::<ConfigMap>::namespaced(eve.clone(), "team-b")
        .list(&ListParams::default())
        .await
        .expect("eve lists in team-b");
    let discovery = kube::discovery::Discovery::new(eve)
        .run()
        .await
        .expect("discovery as a non-admin");
    let reviews: Vec<(String, Vec<String>)> = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .filter(|(r, _)| r.kind.ends_with("Review"))
        .map(|(r, caps)| (r.kind, caps.operations))
        .collect();
    assert_eq!(reviews.len(), 2, "{reviews:?}");
    assert!(
        reviews
            .iter()
            .all(|(_, verbs)| verbs == &["create".to_string()])
    );
    assert!(SimAuth::from_file(&path).is_err());
    server.shutdown().await;
    let invalid = SimAuth::new().with_rule(Rule::allow(["get"], ["pods"]));
    let refused = SimServer::start(SimConfig {
        auth: Some(invalid),
        ..test_config()
    })
    .await;
    assert!(matches!(refused, Err(kubemux_sim::SimError::Auth(_))));
}

#[tokio::test]
async fn legacy_watch_paths_pass_the_same_checks_as_watches() {
    let server = start_with_auth().await;
    let alice = client_as(&server, "alice-token").await;
    let mut allowed = watch(&alice, "/api/v1/watch/namespaces/team-a/pods").await;
    assert_eq!(allowed.next().await.expect("initial")["type"], "ADDED");
    assert_eq!(server.watch_requests_by("alice", "pods"), 1);
    assert_eq!(server.active_watches_by("alice", "pods"), 1);
    let denied = status(
        try_watch(&alice, "/api/v1/watch/namespaces/default/pods")
            .await
            .err()
            .expect("403"),
    );
    assert_eq!(denied.code, 403);
    assert_eq!(
        denied.message,
        r#"pods is forbidden: User "alice" cannot watch resource "pods" in API group "" in the namespace "default""#
    );
    // bob may get and list his one configmap but not watch it; the path's
    // name is the one RBAC sees.
    let bob = client_as(&server, "bob-token").await;
    let denied = status(
        try_watch(
            &bob,
            "/api/v1/watch/namespaces/default/configmaps/kube-root-ca.crt",
        )
        .await
        .err()
        .expect("403"),
    );
    assert_eq!(
        denied.message,
        r#"configmaps "kube-root-ca.crt" is forbidden: User "bob" cannot watch resource "configmaps" in API group "" in the namespace "default""#
    );
    let carol = client_as(&server, "carol-token").await;
    let mut deployments = watch(&carol, "/apis/apps/v1/watch/deployments").await;
    assert_eq!(
        deployments.next().await.expect("initial")["object"]["kind"],
        "Deployment"
    );
    let (code, _) = raw(&server, "GET", "/api/v1/watch/pods", None, "").await;
    assert_eq!(code, 401);
    server.shutdown().await;
}
