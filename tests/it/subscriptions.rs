//! Seed 003: the authenticated subscription API at `/ws/v1`, over real
//! sockets against the simulated API server with RBAC rules.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kubemux::auth::jwt::{JwtSettings, JwtVerifier};
use kubemux::auth::recheck::Rechecks;
use kubemux::auth::review::Reviewer;
use kubemux::dialect::console::ConsoleAuth;
use kubemux::metrics::Metrics;
use kubemux::server::ServerConfig;
use kubemux_sim::{Rule, SimAuth, SimConfig};
use serde_json::{Value, json};

const SECRET: &str = "console-test-secret";
const AUDIENCE: &str = "kubemux-console";
const ISSUER: &str = "https://platform.test";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "kubemux-subscriptions-{}-{name}",
        std::process::id()
    ));
    std::fs::write(&path, contents).unwrap();
    path
}

fn claims(user: &str, groups: &[&str]) -> Value {
    json!({"sub": user, "groups": groups, "exp": now() + 600, "iss": ISSUER, "aud": AUDIENCE})
}

fn hs256(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn console_auth(settings: JwtSettings, recheck: Duration) -> Arc<ConsoleAuth> {
    Arc::new(ConsoleAuth {
        verifier: JwtVerifier::from_settings(&settings).unwrap().unwrap(),
        rechecks: Rechecks::new(
            Arc::new(Reviewer::new(
                Duration::from_secs(30),
                Arc::new(Metrics::new()),
            )),
            recheck,
        ),
    })
}

fn jwt_settings() -> JwtSettings {
    JwtSettings {
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        user_claim: "sub".into(),
        groups_claim: "groups".into(),
        ..JwtSettings::default()
    }
}

/// alice's group may read nodes, pods, their logs and quotas everywhere;
/// bob may do nothing.
fn rbac() -> SimAuth {
    SimAuth::new().with_admin_token("admin-token").with_rule(
        Rule::allow(
            ["get", "list", "watch"],
            ["nodes", "pods", "pods/log", "resourcequotas", "namespaces"],
        )
        .groups(["console-admins"]),
    )
}

async fn env_with(server: ServerConfig, recheck: Duration) -> Env {
    let secret = temp_file(&format!("secret-{}", rand_suffix()), &format!("{SECRET}\n"));
    let auth = console_auth(
        JwtSettings {
            hs256_secret_file: Some(secret),
            ..jwt_settings()
        },
        recheck,
    );
    start(
        SimConfig {
            auth: Some(rbac()),
            ..SimConfig::default()
        },
        quick_hub(),
        ServerConfig {
            console_auth: Some(auth),
            ..server
        },
    )
    .await
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

async fn env() -> Env {
    env_with(ServerConfig::default(), Duration::from_secs(30)).await
}

async fn connect(env: &Env) -> Client {
    Client::connect(&format!("ws://{}/ws/v1", env.server.addr())).await
}

/// Reads until a frame of type `kind` (skipping the seed's pings).
async fn next_of(c: &mut Client, kind: &str) -> Value {
    loop {
        let frame = c.frame().await;
        if frame["type"] == kind {
            return frame;
        }
        assert_ne!(frame["type"], "error", "expected {kind}, got {frame}");
    }
}

/// Reads until the reply to request `id`.
async fn reply(c: &mut Client, id: &str) -> Value {
    loop {
        let frame = c.frame().await;
        if frame["id"] == id && frame["type"] != "log_entry" {
            return frame;
        }
    }
}

async fn authed(env: &Env, user: &str, groups: &[&str]) -> Client {
    let mut c = connect(env).await;
    c.send(json!({"type": "auth", "token": hs256(&claims(user, groups), SECRET)}))
        .await;
    let result = next_of(&mut c, "auth_result").await;
    assert_eq!(result["success"], true, "{result}");
    assert_eq!(result["user_id"], user);
    c
}

/// Subscribes; returns the `subscribe_result`, or the `error` of a refusal
/// (after checking the `subscribe_result` with `success: false` that
/// follows it, which seed 003's client class needs to settle).
async fn subscribe(c: &mut Client, id: &str, data: Value) -> Value {
    c.send(json!({"type": "subscribe", "id": id, "data": data}))
        .await;
    let frame = reply(c, id).await;
    if frame["type"] == "error" {
        assert_refused_result(&reply(c, id).await, &frame);
    }
    frame
}

/// A refused subscribe's `subscribe_result`, in the seed class's terms.
fn assert_refused_result(result: &Value, error: &Value) {
    assert_eq!(result["type"], "subscribe_result", "{result}");
    assert_eq!(result["id"], error["id"], "{result}");
    assert_eq!(result["success"], false, "{result}");
    assert_eq!(result["data"]["id"], error["id"], "{result}");
    assert_eq!(result["data"]["success"], false, "{result}");
    assert_eq!(
        result["data"]["error"], error["error"]["message"],
        "{result}"
    );
    assert_eq!(result["data"]["code"], error["error"]["code"], "{result}");
}

fn assert_error(frame: &Value, code: &str) {
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["error"]["code"], code, "{frame}");
    assert!(frame["error"]["message"].is_string(), "{frame}");
    assert!(frame["timestamp"].is_string(), "{frame}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_flow() {
    let env = env().await;
    let mut c = connect(&env).await;
    c.send(json!({"type": "subscribe", "id": "early", "data": {"resource": "workspace"}}))
        .await;
    let frame = c.frame().await;
    assert_error(&frame, "AUTH_REQUIRED");
    assert_eq!(frame["id"], "early");
    assert_refused_result(&c.frame().await, &frame);
    c.send(json!({"type": "auth", "id": "a1", "token": hs256(&claims("alice", &["console-admins"]), SECRET)}))
        .await;
    let ok = c.frame().await;
    assert_eq!(ok["type"], "auth_result");
    assert_eq!(
        (ok["success"].clone(), ok["user_id"].clone()),
        (json!(true), json!("alice"))
    );

    let mut expired = claims("alice", &[]);
    expired["exp"] = json!(now() - 3600);
    let mut wrong_audience = claims("alice", &[]);
    wrong_audience["aud"] = json!("someone-else");
    // A token that expires while connected ends the connection.
    let mut short = claims("alice", &["console-admins"]);
    short["exp"] = json!(now() + 1);
    let mut c = connect(&env).await;
    c.send(json!({"type": "auth", "token": hs256(&short, SECRET)}))
        .await;
    assert_eq!(next_of(&mut c, "auth_result").await["success"], true);
    assert_error(&next_of_error(&mut c).await, "INVALID_TOKEN");
    assert!(c.next().await.is_none(), "the socket closes at exp");

    let cases = [
        (hs256(&expired, SECRET), "expired"),
        (hs256(&claims("alice", &[]), "not-the-secret"), "signature"),
        (hs256(&wrong_audience, SECRET), "audience"),
        ("not.a.jwt".to_string(), "malformed"),
    ];
    for (token, what) in cases {
        let mut c = connect(&env).await;
        c.send(json!({"type": "auth", "id": "a", "token": token}))
            .await;
        let result = c.frame().await;
        assert_eq!(result["type"], "auth_result", "{what}: {result}");
        assert_eq!(result["success"], false, "{what}: {result}");
        let error = c.frame().await;
        assert_error(&error, "INVALID_TOKEN");
        assert_eq!(error["id"], "a");
        assert!(c.next().await.is_none(), "{what}: the socket closes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_tokens_on_the_own_listener_and_families_without_a_source() {
    let public = temp_file(
        "es256-public.pem",
        include_str!("../data/console-es256-public.pem"),
    );
    let env = start(
        SimConfig {
            auth: Some(rbac()),
            ..SimConfig::default()
        },
        quick_hub(),
        ServerConfig {
            console_auth: Some(console_auth(
                JwtSettings {
                    public_key_file: Some(public),
                    ..jwt_settings()
                },
                Duration::from_secs(30),
            )),
            subscriptions_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..ServerConfig::default()
        },
    )
    .await;
    let key =
        EncodingKey::from_ec_pem(include_bytes!("../data/console-es256-private.pem")).unwrap();
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &claims("carol", &["console-admins"]),
        &key,
    )
    .unwrap();
    let mut c = Client::connect(&format!("ws://{}/ws", env.server.extra_addrs()[0])).await;
    c.send(json!({"type": "auth", "token": token})).await;
    let ok = next_of(&mut c, "auth_result").await;
    assert_eq!(ok["user_id"], "carol");
    for resource in ["organization", "provisioning"] {
        let frame = subscribe(
            &mut c,
            resource,
            json!({"resource": resource, "organization_id": "org-1"}),
        )
        .await;
        assert_error(&frame, "RESOURCE_NOT_FOUND");
        assert!(
            frame["error"]["message"]
                .as_str()
                .unwrap()
                .contains("no Kubernetes source"),
            "{frame}"
        );
    }
    let monitoring = json!({"resource": "monitoring", "workspace_id": CLUSTER});
    let ok = subscribe(&mut c, "m", monitoring.clone()).await;
    assert_eq!(
        ok["data"]["events"],
        json!(["monitoring.health_changed", "monitoring.metrics_update"]),
        "{ok}"
    );
    let update = next_of(&mut c, "monitoring.metrics_update").await;
    let metrics = &update["data"]["metrics"];
    assert!(
        metrics["cpu"]["instant"].as_f64().unwrap() > 0.0,
        "{update}"
    );
    assert_eq!(metrics["nodes"], 3);
    // The seed's averages: over kubemux's own samples, so the first sample
    // is its own average.
    assert_eq!(metrics["samples"], json!({"5m": 1, "1h": 1}), "{update}");
    for (metric, window) in [("cpu", "average_5m"), ("memory", "average_1h")] {
        assert_eq!(
            metrics[metric][window], metrics[metric]["instant"],
            "{update}"
        );
    }
    let (nodes, _) = env.sim.store().list("nodes", None, None, None).unwrap();
    let mut node = nodes[0].clone();
    kubemux_sim::templates::toggle_node_ready(&mut node);
    env.sim.store().update("nodes", None, node.clone()).unwrap();
    let health = next_of(&mut c, "monitoring.health_changed").await;
    assert_eq!(
        health["data"]["component"],
        format!("node/{}", node["metadata"]["name"].as_str().unwrap())
    );
    assert_eq!(
        (
            health["data"]["previous_status"].clone(),
            health["data"]["new_status"].clone()
        ),
        (json!("healthy"), json!("unhealthy"))
    );

    env.sim.resource_metrics().set_served(false);
    let mut explicit = monitoring.clone();
    explicit["events"] = json!(["metrics_update"]);
    let frame = subscribe(&mut c, "m2", explicit).await;
    assert_error(&frame, "RESOURCE_NOT_FOUND");
    assert!(
        frame["error"]["message"]
            .as_str()
            .unwrap()
            .contains("metrics.k8s.io")
    );
    let ok = subscribe(&mut c, "m3", monitoring).await;
    assert_eq!(
        ok["data"]["events"],
        json!(["monitoring.health_changed"]),
        "{ok}"
    );
    let frame = subscribe(
        &mut c,
        "w",
        json!({"resource": "workspace", "workspace_id": "nope"}),
    )
    .await;
    assert_error(&frame, "RESOURCE_NOT_FOUND");
    c.send_raw("{not json").await;
    assert_error(&c.frame().await, "INVALID_MESSAGE_FORMAT");
}

fn namespace(env: &Env, name: &str) -> Value {
    env.sim.store().get("namespaces", None, name).unwrap()
}

fn quota(used: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ResourceQuota",
           "metadata": {"name": "compute", "namespace": "team-a"},
           "spec": {"hard": {"pods": "2"}},
           "status": {"hard": {"pods": "2"}, "used": {"pods": used}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_events_quota_and_permission() {
    let env = env().await;
    let mut alice = authed(&env, "alice", &["console-admins"]).await;
    let mut bob = authed(&env, "bob", &[]).await;
    let data = json!({"resource": "project", "project_id": "team-a", "workspace_id": CLUSTER});
    let ok = subscribe(&mut alice, "s1", data.clone()).await;
    assert_eq!(ok["type"], "subscribe_result", "{ok}");
    assert_eq!(ok["success"], true);
    // Repeated in `data`, where seed 003's client class looks.
    assert_eq!(ok["data"]["id"], "s1", "{ok}");
    assert_eq!(ok["data"]["success"], true, "{ok}");
    assert_eq!(ok["data"]["subscription_id"], ok["subscription_id"], "{ok}");
    let sid = ok["subscription_id"].as_str().unwrap().to_string();
    let denied = subscribe(&mut bob, "s2", data).await;
    assert_error(&denied, "PERMISSION_DENIED");
    assert_eq!(denied["id"], "s2");

    env.sim
        .store()
        .create("resourcequotas", Some("team-a"), quota("1"))
        .unwrap();
    let mut ns = namespace(&env, "team-a");
    ns["metadata"]["labels"] = json!({"tier": "gold"});
    env.sim.store().update("namespaces", None, ns).unwrap();
    let updated = next_of(&mut alice, "project.updated").await;
    assert_eq!(updated["id"], sid);
    assert_eq!(updated["data"]["subscription_id"], sid);
    assert_eq!(updated["data"]["project"]["id"], "team-a");
    assert_eq!(updated["data"]["project"]["workspace_id"], CLUSTER);
    assert_eq!(updated["data"]["project"]["labels"]["tier"], "gold");

    env.sim
        .store()
        .update("resourcequotas", Some("team-a"), quota("2"))
        .unwrap();
    let full = next_of(&mut alice, "project.resource_quota_exceeded").await;
    let d = &full["data"];
    assert_eq!(
        (d["project_id"].clone(), d["resource"].clone()),
        (json!("team-a"), json!("pods"))
    );
    assert_eq!(
        (d["limit"].clone(), d["current_usage"].clone()),
        (json!("2"), json!("2"))
    );
    assert_eq!(d["quota"], "compute");

    // bob saw none of it: everything before his pong is checked.
    bob.send(json!({"type": "ping", "id": "p"})).await;
    loop {
        let frame = bob.frame().await;
        let kind = frame["type"].as_str().unwrap().to_string();
        assert!(!kind.starts_with("project."), "bob got {frame}");
        if kind == "pong" {
            break;
        }
    }

    alice
        .send(json!({"type": "unsubscribe", "id": "u1", "data": {"subscription_id": sid}}))
        .await;
    assert_eq!(reply(&mut alice, "u1").await["type"], "unsubscribe_result");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_user_loses_subscriptions_and_log_streams() {
    let env = env_with(ServerConfig::default(), Duration::from_secs(1)).await;
    let mut alice = authed(&env, "alice", &["console-admins"]).await;
    let ok = subscribe(
        &mut alice,
        "s",
        json!({"resource": "project", "project_id": "default"}),
    )
    .await;
    let sid = ok["subscription_id"].clone();
    let pod = running_pods(&env).remove(0);
    alice
        .send(json!({"type": "stream_logs", "id": "logs", "data": {
            "namespace": pod["metadata"]["namespace"], "pod": pod["metadata"]["name"], "follow": true}}))
        .await;
    next_of(&mut alice, "log_entry").await;
    env.sim.auth().set_rules(Vec::new()).unwrap();
    let mut revoked = Vec::new();
    while revoked.len() < 2 {
        let frame = next_of_error(&mut alice).await;
        assert_error(&frame, "PERMISSION_DENIED");
        revoked.push(frame["id"].clone());
    }
    assert!(
        revoked.contains(&sid) && revoked.contains(&json!("logs")),
        "{revoked:?}"
    );
    eventually("the revoked log stream's upstream request closes", || {
        env.sim.logs().open_streams() == 0
    })
    .await;
}

/// A monitoring subscription that receives `metrics_update` is re-checked
/// for what it was admitted with, node metrics included: losing only
/// `list` on `nodes.metrics.k8s.io` ends it, as losing the nodes would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitoring_subscription_loses_metrics_access_at_the_recheck() {
    let env = env_with(ServerConfig::default(), Duration::from_secs(1)).await;
    let mut alice = authed(&env, "alice", &["console-admins"]).await;
    let ok = subscribe(
        &mut alice,
        "m",
        json!({"resource": "monitoring", "workspace_id": CLUSTER}),
    )
    .await;
    assert_eq!(
        ok["data"]["events"],
        json!(["monitoring.health_changed", "monitoring.metrics_update"]),
        "{ok}"
    );
    let sid = ok["subscription_id"].clone();
    env.sim
        .auth()
        .set_rules(vec![
            Rule::allow(["list", "watch", "get"], ["nodes", "pods", "namespaces"])
                .api_groups([""])
                .groups(["console-admins"]),
        ])
        .unwrap();
    let frame = next_of_error(&mut alice).await;
    assert_error(&frame, "PERMISSION_DENIED");
    assert_eq!(frame["id"], sid, "{frame}");
}

/// The console's re-checks go through the one re-check service: 20
/// consoles of one user with 5 project subscriptions each are two
/// SubjectAccessReviews (list and watch on the project's quotas) per tick,
/// counted at the simulator; a closed console's registrations are gone;
/// a revocation ends every subscription with PERMISSION_DENIED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_rechecks_ask_once_per_tick_across_consoles_and_revoke_them_all() {
    const CONSOLES: usize = 20;
    const SUBSCRIPTIONS: usize = 5;
    let metrics = Arc::new(Metrics::new());
    let secret = temp_file(&format!("secret-{}", rand_suffix()), &format!("{SECRET}\n"));
    let auth = Arc::new(ConsoleAuth {
        verifier: JwtVerifier::from_settings(&JwtSettings {
            hs256_secret_file: Some(secret),
            ..jwt_settings()
        })
        .unwrap()
        .unwrap(),
        rechecks: Rechecks::new(
            Arc::new(Reviewer::new(Duration::from_secs(30), metrics.clone())),
            Duration::from_millis(500),
        ),
    });
    let env = start(
        SimConfig {
            auth: Some(rbac()),
            ..SimConfig::default()
        },
        quick_hub(),
        ServerConfig {
            console_auth: Some(auth),
            ..ServerConfig::default()
        },
    )
    .await;
    let registered = || metric(&metrics.encode(), "kubemux_auth_rechecks").unwrap_or(0.0);
    let open = || async {
        let mut c = authed(&env, "alice", &["console-admins"]).await;
        for i in 0..SUBSCRIPTIONS {
            let ok = subscribe(
                &mut c,
                &format!("s{i}"),
                json!({"resource": "project", "project_id": "default"}),
            )
            .await;
            assert_eq!(ok["success"], true, "{ok}");
        }
        c
    };
    let mut consoles = Vec::new();
    for _ in 0..CONSOLES {
        consoles.push(open().await);
    }
    let mut extra = open().await;
    assert_eq!(registered(), ((CONSOLES + 1) * SUBSCRIPTIONS) as f64);
    extra.ws.close(None).await.unwrap();
    while extra.next().await.is_some() {}
    let live = (CONSOLES * SUBSCRIPTIONS) as f64;
    eventually("the closed console's registrations are gone", || {
        registered() == live
    })
    .await;

    let ticks = || metric(&metrics.encode(), "kubemux_auth_recheck_ticks_total").unwrap_or(0.0);
    let sars = || {
        env.sim
            .requests_by_verb("kubemux-sim", "create", "subjectaccessreviews")
    };
    let (t0, sar0) = (ticks(), sars());
    eventually("three more ticks", || ticks() >= t0 + 3.0).await;
    let (t1, sar1) = (ticks(), sars());
    // A tick under way at either end may add its reviews: one tick more.
    assert!(
        sar1 - sar0 <= 2 * (t1 - t0 + 1.0) as u64 && sar1 - sar0 >= 2,
        "{} SubjectAccessReviews in {} ticks for {live} subscriptions",
        sar1 - sar0,
        t1 - t0
    );

    env.sim.auth().set_rules(Vec::new()).unwrap();
    for c in &mut consoles {
        for _ in 0..SUBSCRIPTIONS {
            let frame = next_of_error(c).await;
            assert_error(&frame, "PERMISSION_DENIED");
            assert!(
                frame["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("access revoked") && m.contains("alice")),
                "{frame}"
            );
        }
    }
    eventually("revoked subscriptions are unregistered", || {
        registered() == 0.0
    })
    .await;
}

async fn next_of_error(c: &mut Client) -> Value {
    loop {
        let frame = c.frame().await;
        if frame["type"] == "error" {
            return frame;
        }
    }
}

fn running_pods(env: &Env) -> Vec<Value> {
    let (pods, _) = env.sim.store().list("pods", None, None, None).unwrap();
    pods.into_iter()
        .filter(|p| p["status"]["phase"] == "Running")
        .collect()
}

fn set_waiting(env: &Env, pod: &Value, reason: &str, restarts: u64) {
    let mut pod = pod.clone();
    let container = pod["spec"]["containers"][0]["name"].clone();
    pod["status"]["containerStatuses"] = json!([{
        "name": container, "ready": false, "restartCount": restarts, "image": "x",
        "state": {"waiting": {"reason": reason, "message": "back-off restarting failed container"}}
    }]);
    let ns = pod["metadata"]["namespace"].as_str().unwrap().to_string();
    env.sim.store().update("pods", Some(&ns), pod).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_raises_one_alert_naming_the_pod() {
    let env = env().await;
    let mut c = authed(&env, "alice", &["console-admins"]).await;
    let ok = subscribe(
        &mut c,
        "w",
        json!({"resource": "workspace", "workspace_id": CLUSTER}),
    )
    .await;
    assert_eq!(ok["success"], true, "{ok}");
    let first = next_of(&mut c, "workspace.resource_updated").await;
    let cpu = &first["data"]["resources"]["cpu"];
    assert_eq!(cpu["unit"], "cores");
    assert!(cpu["percentage"].as_f64().unwrap() > 0.0, "{first}");

    let pods = running_pods(&env);
    let (victim, other) = (&pods[0], &pods[1]);
    set_waiting(&env, victim, "CrashLoopBackOff", 1);
    let alert = next_of(&mut c, "workspace.alert_triggered").await;
    let a = &alert["data"]["alert"];
    assert_eq!(a["type"], "crash_loop_back_off", "{alert}");
    assert_eq!(a["severity"], "critical");
    assert_eq!(a["object"]["kind"], "Pod");
    assert_eq!(a["object"]["name"], victim["metadata"]["name"]);
    assert_eq!(a["object"]["uid"], victim["metadata"]["uid"]);
    assert_eq!(alert["data"]["workspace_id"], CLUSTER);

    // Still crash looping: no second alert before the next, unrelated one.
    let again = env
        .sim
        .store()
        .get(
            "pods",
            victim["metadata"]["namespace"].as_str(),
            victim["metadata"]["name"].as_str().unwrap(),
        )
        .unwrap();
    set_waiting(&env, &again, "CrashLoopBackOff", 2);
    set_waiting(&env, other, "ImagePullBackOff", 0);
    let next = next_of(&mut c, "workspace.alert_triggered").await;
    assert_eq!(
        next["data"]["alert"]["type"], "image_pull_failure",
        "{next}"
    );
    assert_eq!(
        next["data"]["alert"]["object"]["name"],
        other["metadata"]["name"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_status_equals_the_servers_counts() {
    let env = env().await;
    let mut c = authed(&env, "alice", &["console-admins"]).await;
    c.send(json!({"type": "get_workspace_status", "id": "st", "data": {"workspace_id": CLUSTER}}))
        .await;
    let status = reply(&mut c, "st").await;
    assert_eq!(status["type"], "workspace_status", "{status}");
    let (pods, _) = env.sim.store().list("pods", None, None, None).unwrap();
    let (nodes, _) = env.sim.store().list("nodes", None, None, None).unwrap();
    let phase = |p: &str| pods.iter().filter(|x| x["status"]["phase"] == p).count();
    let ready = ready_nodes(&nodes);
    let d = &status["data"];
    assert_eq!(d["workspace_id"], CLUSTER);
    assert_eq!(d["status"], "active");
    assert_eq!(d["nodes"], json!({"ready": ready, "total": nodes.len()}));
    assert_eq!(d["pods"]["running"], phase("Running"));
    assert_eq!(d["pods"]["pending"], phase("Pending"));
    assert_eq!(d["pods"]["failed"], phase("Failed"));

    let mut bob = authed(&env, "bob", &[]).await;
    bob.send(json!({"type": "get_workspace_status", "id": "st"}))
        .await;
    assert_error(&reply(&mut bob, "st").await, "PERMISSION_DENIED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_streams_tail_follow_stop_and_close() {
    let env = env().await;
    let mut c = authed(&env, "alice", &["console-admins"]).await;
    let pod = running_pods(&env).remove(0);
    let (ns, name) = (
        pod["metadata"]["namespace"].as_str().unwrap().to_string(),
        pod["metadata"]["name"].as_str().unwrap().to_string(),
    );
    let container = pod["spec"]["containers"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let request = |id: &str| {
        json!({"type": "stream_logs", "id": id, "data": {"workspace_id": CLUSTER,
               "namespace": ns, "pod": name, "container": container, "follow": true, "tail_lines": 3}})
    };
    c.send(request("logs-1")).await;
    let mut messages = Vec::new();
    while messages.len() < 3 {
        let entry = next_of(&mut c, "log_entry").await;
        assert_eq!(entry["data"]["stream_id"], "logs-1");
        assert_eq!(entry["data"]["pod"], name.as_str());
        messages.push(entry["data"]["message"].as_str().unwrap().to_string());
    }
    for (line, i) in messages.iter().zip(7..) {
        assert!(
            line.ends_with(&format!("handled request {i}")),
            "{messages:?}"
        );
    }
    env.sim.logs().append(
        &ns,
        &name,
        &container,
        "2026-01-01T00:01:00Z ERROR database unreachable",
    );
    let live = next_of(&mut c, "log_entry").await;
    assert_eq!(
        live["data"]["message"],
        "2026-01-01T00:01:00Z ERROR database unreachable"
    );
    assert_eq!(live["data"]["level"], "error");
    assert_eq!(live["data"]["timestamp"], "2026-01-01T00:01:00Z");
    assert_eq!(env.sim.logs().open_streams(), 1);

    c.send(json!({"type": "stop_stream", "id": "stop", "data": {"stream_id": "logs-1"}}))
        .await;
    let ended = reply(&mut c, "stop").await;
    assert_eq!(ended["type"], "stream_ended", "{ended}");
    assert_eq!(ended["data"]["reason"], "stopped");
    eventually("the stopped stream's upstream request closes", || {
        env.sim.logs().open_streams() == 0
    })
    .await;

    c.send(request("logs-2")).await;
    next_of(&mut c, "log_entry").await;
    assert_eq!(env.sim.logs().open_streams(), 1);
    for i in 3..=6 {
        c.send(request(&format!("logs-{i}"))).await;
    }
    eventually("five streams open upstream", || {
        env.sim.logs().open_streams() == 5
    })
    .await;
    c.send(request("logs-7")).await;
    let refused = reply(&mut c, "logs-7").await;
    assert_error(&refused, "SUBSCRIPTION_LIMIT_EXCEEDED");
    assert_eq!(
        refused["error"]["details"]["current_streams"], 5,
        "{refused}"
    );
    assert_eq!(
        env.sim.logs().open_streams(),
        5,
        "the sixth never reached the cluster"
    );
    drop(c);
    eventually("closing the socket closes the upstream request", || {
        env.sim.logs().open_streams() == 0
    })
    .await;

    let mut c = authed(&env, "alice", &["console-admins"]).await;
    c.send(json!({"type": "stream_logs", "id": "once", "data": {
        "namespace": ns, "pod": name, "follow": false, "tail_lines": 2}}))
        .await;
    let mut entries = 0;
    let ended = loop {
        let frame = c.frame().await;
        match frame["type"].as_str() {
            Some("log_entry") => entries += 1,
            _ if frame["id"] == "once" => break frame,
            _ => {}
        }
    };
    assert_eq!(ended["type"], "stream_ended", "{ended}");
    assert_eq!(ended["data"]["reason"], "completed");
    assert_eq!(entries, 2);

    let mut bob = authed(&env, "bob", &[]).await;
    bob.send(json!({"type": "stream_logs", "id": "l", "data": {"namespace": ns, "pod": name}}))
        .await;
    assert_error(&reply(&mut bob, "l").await, "PERMISSION_DENIED");

    let mut c = authed(&env, "alice", &["console-admins"]).await;
    c.send(json!({"type": "stream_logs", "id": "gone", "data": {"namespace": ns, "pod": "no-such-pod"}}))
        .await;
    let missing = reply(&mut c, "gone").await;
    assert_error(&missing, "RESOURCE_NOT_FOUND");
    assert!(
        missing["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-such-pod"),
        "{missing}"
    );
    let text = http_get(env.sim.addr(), "/metrics").await;
    assert_eq!(metric(&text, "sim_log_streams"), Some(0.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_each_get_their_error_code() {
    let env = env().await;
    let mut c = authed(&env, "alice", &["console-admins"]).await;
    for i in 0..100 {
        c.send(json!({"type": "subscribe", "id": format!("s{i}"), "data": {"resource": "project", "project_id": "default"}}))
            .await;
    }
    let mut subscribed = 0;
    while subscribed < 100 {
        let frame = c.frame().await;
        assert_ne!(frame["type"], "error", "{frame}");
        if frame["type"] == "subscribe_result" {
            subscribed += 1;
        }
    }
    let over = subscribe(
        &mut c,
        "s100",
        json!({"resource": "workspace", "workspace_id": CLUSTER}),
    )
    .await;
    assert_error(&over, "SUBSCRIPTION_LIMIT_EXCEEDED");
    assert_eq!(over["error"]["details"]["current_subscriptions"], 100);
    assert_eq!(
        over["error"]["details"]["requested_subscription"],
        format!("workspace:{CLUSTER}")
    );

    for i in 0..600 {
        c.send(json!({"type": "pong", "id": format!("f{i}")})).await;
    }
    let limited = next_of_error(&mut c).await;
    assert_error(&limited, "RATE_LIMIT_EXCEEDED");
    assert!(limited["id"].as_str().unwrap().starts_with('f'));
    // The connection survives: once tokens refill, a ping is answered.
    loop {
        c.send(json!({"type": "ping", "id": "alive"})).await;
        let frame = loop {
            let frame = c.frame().await;
            if frame["id"] == "alive" {
                break frame;
            }
        };
        if frame["type"] == "pong" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let big = json!({"type": "subscribe", "id": "big", "data": {"pad": "x".repeat(1_100_000)}});
    c.send(big).await;
    let frame = next_of_error(&mut c).await;
    assert_error(&frame, "MESSAGE_TOO_LARGE");
    assert_eq!(frame["id"], "big");
    while c.next().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_consoles_share_one_watch_per_resource() {
    let env = env().await;
    let mut clients = Vec::new();
    for i in 0..50 {
        let mut c = authed(&env, "alice", &["console-admins"]).await;
        let ok = subscribe(
            &mut c,
            &format!("w{i}"),
            json!({"resource": "workspace", "workspace_id": CLUSTER}),
        )
        .await;
        assert_eq!(ok["success"], true, "{ok}");
        clients.push(c);
    }
    eventually("one upstream watch per resource", || {
        env.sim.active_watches("nodes") == 1 && env.sim.active_watches("pods") == 1
    })
    .await;
    assert_eq!(env.sim.watch_requests("nodes"), 1);
    assert_eq!(env.sim.watch_requests("pods"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_jwt_key_the_endpoint_is_refused_with_a_reason() {
    let env = start_default().await;
    let err = WsConnect::new(&format!("ws://{}/ws/v1", env.server.addr()))
        .open()
        .await
        .expect_err("no upgrade without a JWT key");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), 503);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned();
            assert!(body.contains("--jwt-hs256-secret-file"), "{body}");
        }
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

fn fast_liveness(idle: Option<Duration>) -> ServerConfig {
    ServerConfig {
        console: kubemux::dialect::console::Settings {
            liveness: kubemux::ws::conn::Liveness {
                idle_timeout: idle,
                ..quick_pings(kubemux::dialect::console::Settings::default().liveness)
            },
            ..Default::default()
        },
        ..ServerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_answers_pings_is_closed_with_1008() {
    let env = env_with(
        fast_liveness(
            kubemux::dialect::console::Settings::default()
                .liveness
                .idle_timeout,
        ),
        Duration::from_secs(30),
    )
    .await;
    let mut silent = RawWs::connect(env.server.addr(), "/ws/v1", &[]).await;
    let token = hs256(&claims("alice", &["console-admins"]), SECRET);
    silent
        .send_text(&json!({"type": "auth", "token": token}).to_string())
        .await;
    let closed = silent.until_closed().await;
    assert_eq!(closed.code, Some(1008), "{closed:?}");
    assert_eq!(closed.reason, "no pong received", "{closed:?}");
    assert!(closed.pings >= 1, "{closed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_only_answers_websocket_pings_is_closed_when_idle() {
    // The seed's idle timeout counts messages: WebSocket pongs (which
    // tungstenite sends by itself) do not keep a connection open.
    let env = env_with(
        fast_liveness(Some(Duration::from_secs(1))),
        Duration::from_secs(30),
    )
    .await;
    let mut c = authed(&env, "alice", &["console-admins"]).await;
    use futures::StreamExt;
    let code = loop {
        match tokio::time::timeout(PATIENCE, c.ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame)))) => {
                break frame.map(|f| (u16::from(f.code), f.reason.to_string()));
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    let (code, reason) = code.expect("a close frame with a code");
    assert_eq!(code, 1000, "{reason}");
    assert!(reason.starts_with("idle"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_whose_initial_state_is_a_hundred_times_the_queue_is_served() {
    let queue = kubemux::ws::outbound::QueueLimits {
        max_bytes: 4096,
        ..kubemux::ws::outbound::QueueLimits::default()
    };
    let env = env_with(
        ServerConfig {
            queue,
            ..ServerConfig::default()
        },
        Duration::from_secs(30),
    )
    .await;
    let padding = "x".repeat(2048);
    for i in 0..250 {
        env.sim
            .store()
            .create(
                "pods",
                Some("default"),
                json!({"metadata": {"name": format!("big-{i}"), "namespace": "default",
                        "annotations": {"padding": padding}},
                       "spec": {"containers": []}}),
            )
            .unwrap();
    }
    let (pods, _) = env.sim.store().list("pods", None, None, None).unwrap();
    let bytes: usize = pods.iter().map(|p| p.to_string().len()).sum();
    assert!(bytes >= 100 * queue.max_bytes, "{bytes} bytes of pods");
    let mut alice = authed(&env, "alice", &["console-admins"]).await;
    let ok = subscribe(
        &mut alice,
        "w",
        json!({"resource": "workspace", "workspace_id": CLUSTER}),
    )
    .await;
    assert_eq!(ok["type"], "subscribe_result", "{ok}");
    assert_eq!(ok["success"], true, "{ok}");
}
