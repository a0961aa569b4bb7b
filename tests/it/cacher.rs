//! The cacher's model: one upstream watch per resource type, each
//! subscriber's namespace and selectors evaluated by kubemux, and what
//! every subscriber receives compared, event by event, with a watch of the
//! same query made straight to the simulated API server.

use std::time::Duration;

use crate::support::*;
use kubemux::server::ServerConfig;
use kubemux_sim::{Rule, SimAuth, SimConfig, UserInfo};
use serde_json::{Value, json};

/// Namespaces, label selectors and field selectors of one resource.
const VIEWS: &[(&str, &str)] = &[
    ("/api/v1/namespaces/a/pods", "watch=1"),
    ("/api/v1/pods", "watch=1&labelSelector=app%3Dweb"),
    (
        "/api/v1/namespaces/b/pods",
        "watch=1&labelSelector=app%20in%20(web,db)",
    ),
    (
        "/api/v1/pods",
        "watch=1&fieldSelector=status.phase%3DRunning",
    ),
    ("/api/v1/pods", "watch=1&labelSelector=app!%3Dweb,tier"),
    (
        "/api/v1/pods",
        "watch=1&fieldSelector=metadata.namespace%3Da,spec.nodeName!%3Dn1",
    ),
];

/// The hub of the tests, sharing one watch per resource type.
fn quiet_sim() -> SimConfig {
    SimConfig {
        churn_rate: 0.0,
        initial_pods: 0,
        initial_nodes: 0,
        ..SimConfig::default()
    }
}

fn create_namespaces(env: &Env) {
    for ns in ["a", "b"] {
        env.sim
            .store()
            .create("namespaces", None, json!({"metadata": {"name": ns}}))
            .unwrap();
    }
}

fn pod(ns: &str, name: &str, labels: Value, node: &str, phase: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx"}]},
        "status": {"phase": phase}
    })
}

/// One change `mutate` makes, to the pod `name` in `namespace`.
enum Step {
    Create(
        &'static str,
        &'static str,
        Value,
        &'static str,
        &'static str,
    ),
    Update(
        &'static str,
        &'static str,
        Value,
        &'static str,
        &'static str,
    ),
    Delete(&'static str, &'static str),
}

/// Creates, relabels, moves between phases and nodes, and deletes pods, so
/// that objects move into and out of every view. Returns the version after
/// the first half, to resume from.
fn mutate(env: &Env) -> String {
    use Step::*;
    #[rustfmt::skip]
    let steps = [
        Create("a", "p1", json!({"app": "web", "tier": "fe"}), "n1", "Pending"),
        Create("b", "p2", json!({"app": "db"}), "n2", "Running"),
        Create("a", "p3", json!({"app": "cache", "tier": "be"}), "n2", "Running"),
        Update("a", "p1", json!({"app": "web", "tier": "fe"}), "n1", "Running"),
        Update("a", "p1", json!({"app": "api", "tier": "fe"}), "n1", "Running"),
        Update("b", "p2", json!({"app": "web"}), "n2", "Running"),
        Update("a", "p3", json!({"app": "cache", "tier": "be"}), "n2", "Failed"),
        Update("a", "p3", json!({"app": "cache", "tier": "be"}), "n1", "Failed"),
        Delete("b", "p2"),
        Delete("a", "p1"),
    ];
    let store = env.sim.store();
    let mut half = None;
    for (i, step) in steps.into_iter().enumerate() {
        let object = match step {
            Create(ns, name, labels, node, phase) => store
                .create("pods", Some(ns), pod(ns, name, labels, node, phase))
                .unwrap(),
            Update(ns, name, labels, node, phase) => store
                .update("pods", Some(ns), pod(ns, name, labels, node, phase))
                .unwrap(),
            Delete(ns, name) => store.delete("pods", Some(ns), name).unwrap(),
        };
        if i == 3 {
            half = object["metadata"]["resourceVersion"]
                .as_str()
                .map(str::to_string);
        }
    }
    half.expect("the first half's version")
}

/// What is compared of an event: type, object, version and labels.
fn summary(event: &Value) -> String {
    let meta = &event["object"]["metadata"];
    format!(
        "{} {}/{}@{} {}",
        event["type"].as_str().unwrap_or_default(),
        meta["namespace"].as_str().unwrap_or_default(),
        meta["name"].as_str().unwrap_or_default(),
        meta["resourceVersion"].as_str().unwrap_or_default(),
        meta["labels"],
    )
}

/// One view seen both ways: through kubemux and straight from the simulator.
struct Pair {
    view: (&'static str, &'static str),
    ours: Client,
    theirs: WatchStream,
    ours_seen: Vec<String>,
    theirs_seen: Vec<String>,
}

impl Pair {
    async fn open(env: &Env, view: (&'static str, &'static str), from: Option<&str>) -> Pair {
        let query = match from {
            Some(rv) => format!("{}&resourceVersion={rv}", view.1),
            None => view.1.to_string(),
        };
        let mut ours = env.client().await;
        ours.request(view.0, &query).await;
        let theirs = WatchStream::open(env.sim.addr(), &format!("{}?{query}", view.0)).await;
        Pair {
            view,
            ours,
            theirs,
            ours_seen: Vec::new(),
            theirs_seen: Vec::new(),
        }
    }

    /// Reads what arrived on both sides; whether they now agree.
    async fn agree(&mut self) -> bool {
        while let Some(frame) = self.ours.next_within(Duration::from_millis(20)).await {
            assert_eq!(frame["type"], "DATA", "{:?}: {frame}", self.view);
            let event: Value = serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
            self.ours_seen.push(summary(&event));
        }
        for event in self.theirs.read_available().await {
            self.theirs_seen.push(summary(&event));
        }
        self.ours_seen == self.theirs_seen
    }
}

/// Waits until every pair agrees; panics naming the first that does not.
async fn all_agree(pairs: &mut [Pair]) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut disagreeing = None;
        for (i, pair) in pairs.iter_mut().enumerate() {
            if !pair.agree().await && disagreeing.is_none() {
                disagreeing = Some(i);
            }
        }
        let Some(i) = disagreeing else { return };
        if tokio::time::Instant::now() > deadline {
            let pair = &pairs[i];
            panic!(
                "{:?}: kubemux sent\n{:#?}\nthe API server sent\n{:#?}",
                pair.view, pair.ours_seen, pair.theirs_seen
            );
        }
    }
}

async fn subscribers(env: &Env) -> f64 {
    metric(&env.metrics_text().await, "kubemux_subscribers").unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upstream_watch_serves_every_namespace_and_selector_as_the_api_server_would() {
    let env = start(quiet_sim(), quick_hub(), ServerConfig::default()).await;
    create_namespaces(&env);
    let mut pairs = Vec::new();
    for view in VIEWS {
        pairs.push(Pair::open(&env, *view, None).await);
    }
    eventually_ok("every subscriber is placed", async || {
        let n = subscribers(&env).await;
        if n == VIEWS.len() as f64 && env.sim.active_watches("pods") == VIEWS.len() as i64 + 1 {
            Ok(())
        } else {
            Err(format!("{n} subscribers"))
        }
    })
    .await;
    let half = mutate(&env);
    all_agree(&mut pairs).await;

    // The cacher's transitions, as the simulator (and a real API server)
    // sends them: in by a relabel as ADDED, out by one as DELETED.
    let by_label: Vec<&str> = pairs[1]
        .ours_seen
        .iter()
        .map(|s| s.split('@').next().unwrap())
        .collect();
    assert_eq!(
        by_label,
        [
            "ADDED a/p1",
            "MODIFIED a/p1",
            "DELETED a/p1",
            "ADDED b/p2",
            "DELETED b/p2"
        ]
    );
    assert!(pairs.iter().all(|p| !p.ours_seen.is_empty()));

    assert_eq!(env.hub.watch_count(), 1, "one shared watch for the pods");
    assert_eq!(
        env.sim.watch_requests("pods"),
        VIEWS.len() as u64 + 1,
        "the direct watches and kubemux's one"
    );
    let text = env.metrics_text().await;
    assert_eq!(
        metric(
            &text,
            &format!("kubemux_upstream_watches{{cluster=\"{CLUSTER}\"}}")
        ),
        Some(1.0)
    );

    // Resumes from the middle are served from the history, filtered with
    // the same transitions.
    let mut resumed = Vec::new();
    for view in VIEWS {
        resumed.push(Pair::open(&env, *view, Some(&half)).await);
    }
    all_agree(&mut resumed).await;
    assert!(resumed.iter().any(|p| !p.ours_seen.is_empty()));
    assert_eq!(
        env.sim.watch_requests("pods"),
        2 * VIEWS.len() as u64 + 1,
        "kubemux asked the cluster nothing more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespaced_list_is_served_from_the_resource_watch_as_the_api_server_lists_it() {
    let env = start(quiet_sim(), quick_hub(), ServerConfig::default()).await;
    create_namespaces(&env);
    mutate(&env);
    let store = env.sim.store();
    store
        .create(
            "pods",
            Some("b"),
            pod("b", "p4", json!({"app": "web"}), "n1", "Running"),
        )
        .unwrap();
    let mut watcher = env.client().await;
    watcher.request("/api/v1/pods", "watch=1").await;
    watcher.events(2).await;
    for (path, query) in [
        ("/api/v1/namespaces/a/pods", ""),
        ("/api/v1/namespaces/b/pods", "labelSelector=app%3Dweb"),
        ("/api/v1/pods", "fieldSelector=status.phase%3DFailed"),
    ] {
        let target = format!("{path}?{query}");
        let lists = env.sim.list_requests("pods");
        let ours = Request::get(&format!("/clusters/{CLUSTER}{target}"))
            .send(env.server.addr())
            .await
            .json();
        assert_eq!(
            env.sim.list_requests("pods"),
            lists,
            "{target}: the list was the store's"
        );
        let theirs = Request::get(&target).send(env.sim.addr()).await.json();
        let names = |list: &Value| -> Vec<String> {
            let mut names: Vec<String> = list["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| format!("{}@{}", object_key(o), o["metadata"]["resourceVersion"]))
                .collect();
            names.sort();
            names
        };
        assert_eq!(names(&ours), names(&theirs), "{target}");
        assert!(!names(&ours).is_empty(), "{target}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_limited_to_a_namespace_shares_that_namespaces_watch() {
    let auth = SimAuth::new().with_admin_token("admin-token").with_token(
        "limited-token",
        UserInfo::new("limited", "uid-limited", ["team"]),
    );
    let auth = auth.with_rule(
        Rule::allow(["get", "list", "watch"], ["pods"])
            .users(["limited"])
            .api_groups([""])
            .namespaces(["a"]),
    );
    let sim = kubemux_sim::SimServer::start(SimConfig {
        auth: Some(auth),
        ..quiet_sim()
    })
    .await
    .unwrap();
    let admin = sim.kubeconfig(CLUSTER);
    let limited = admin.replace("\"token\":\"admin-token\"", "\"token\":\"limited-token\"");
    assert_ne!(admin, limited, "the kubeconfig names the limited user");
    let (server, hub) = start_proxy_with(&limited, quick_hub(), |_| ServerConfig::default()).await;
    let env = Env { sim, server, hub };
    create_namespaces(&env);

    let mut client = env.client().await;
    client
        .request(
            "/api/v1/namespaces/a/pods",
            "watch=1&labelSelector=app%3Dweb",
        )
        .await;
    env.sim
        .store()
        .create(
            "pods",
            Some("a"),
            pod("a", "p1", json!({"app": "web"}), "n1", "Running"),
        )
        .unwrap();
    let (_, event) = client.event().await;
    assert_eq!(summary(&event).split('@').next(), Some("ADDED a/p1"));
    let only_namespace_a = || {
        let watches = env.hub.watches();
        watches.len() == 1
            && watches[0].key.path() == "/api/v1/namespaces/a/pods"
            && watches[0].key.selectors().is_empty()
    };
    assert!(only_namespace_a(), "{:?}", env.hub.watches());

    // Other views of namespace a, after the refusal, share that
    // namespace's watch: the widest the service account may make.
    let mut others = Vec::new();
    for query in ["watch=1", "watch=1&labelSelector=app%3Ddb"] {
        let mut other = env.client().await;
        other.request("/api/v1/namespaces/a/pods", query).await;
        others.push(other);
    }
    let (_, event) = others[0].event().await;
    assert_eq!(summary(&event).split('@').next(), Some("ADDED a/p1"));
    env.sim
        .store()
        .create(
            "pods",
            Some("a"),
            pod("a", "p2", json!({"app": "db"}), "n1", "Running"),
        )
        .unwrap();
    let (_, event) = others[1].event().await;
    assert_eq!(summary(&event).split('@').next(), Some("ADDED a/p2"));
    assert!(only_namespace_a(), "{:?}", env.hub.watches());
    assert_eq!(env.sim.active_watches("pods"), 1);

    // Who asks for every namespace, or for one it may not see, gets the
    // cluster's own refusal.
    for (path, query) in [
        ("/api/v1/pods", "watch=1"),
        (
            "/api/v1/namespaces/b/pods",
            "watch=1&labelSelector=app%3Dweb",
        ),
    ] {
        let mut refused = env.client().await;
        refused.request(path, query).await;
        let message = error_of(&refused.frame().await);
        assert!(message.contains("403"), "{path}?{query}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_passthrough_each_token_shares_the_widest_scope_it_may_watch() {
    use kubemux::auth::policy::Policy;
    use kubemux::auth::review::Reviewer;
    let everywhere = Rule::allow(["get", "list", "watch"], ["pods"])
        .users(["alice", "bob"])
        .api_groups([""]);
    let in_a = Rule::allow(["get", "list", "watch"], ["pods"])
        .users(["carol"])
        .api_groups([""])
        .namespaces(["a"]);
    let auth = SimAuth::new()
        .with_admin_token("admin-token")
        .with_token("token-a", UserInfo::new("alice", "uid-a", ["team"]))
        .with_token("token-b", UserInfo::new("bob", "uid-b", ["team"]))
        .with_token("token-c", UserInfo::new("carol", "uid-c", ["team"]))
        .with_rule(everywhere)
        .with_rule(in_a);
    let policy = Policy::passthrough(
        std::sync::Arc::new(Reviewer::new(
            Duration::from_secs(30),
            std::sync::Arc::new(kubemux::metrics::Metrics::new()),
        )),
        Duration::from_secs(30),
    );
    let env = start(
        SimConfig {
            auth: Some(auth),
            ..quiet_sim()
        },
        quick_hub(),
        ServerConfig {
            policy,
            ..ServerConfig::default()
        },
    )
    .await;
    create_namespaces(&env);
    let connect = |token: &'static str| {
        let url = env.ws_url();
        async move { WsConnect::new(&url).bearer(token).client().await.unwrap() }
    };
    let mut alice = connect("token-a").await;
    for (path, query) in [
        ("/api/v1/namespaces/a/pods", "watch=1"),
        (
            "/api/v1/namespaces/b/pods",
            "watch=1&labelSelector=app%3Dweb",
        ),
        (
            "/api/v1/pods",
            "watch=1&fieldSelector=status.phase%3DRunning",
        ),
    ] {
        alice.request(path, query).await;
    }
    let mut bob = connect("token-b").await;
    bob.request("/api/v1/namespaces/a/pods", "watch=1").await;
    let mut carol = connect("token-c").await;
    carol.request("/api/v1/namespaces/a/pods", "watch=1").await;
    carol
        .request(
            "/api/v1/namespaces/a/pods",
            "watch=1&labelSelector=app%3Dweb",
        )
        .await;
    env.eventually(
        "one watch per token that may watch every namespace, one per namespace for the token that may watch one",
        || {
            env.sim.active_watches_by("alice", "pods") == 1
                && env.sim.active_watches_by("bob", "pods") == 1
                && env.sim.active_watches_by("carol", "pods") == 1
        },
    )
    .await;
    assert_eq!(env.hub.watch_count(), 3, "{:?}", env.hub.watches());

    let store = env.sim.store();
    store
        .create(
            "pods",
            Some("a"),
            pod("a", "p1", json!({"app": "web"}), "n1", "Running"),
        )
        .unwrap();
    store
        .create(
            "pods",
            Some("b"),
            pod("b", "p2", json!({"app": "web"}), "n1", "Pending"),
        )
        .unwrap();
    let names = |events: Vec<Value>| -> Vec<String> {
        let mut names: Vec<String> = events
            .iter()
            .map(|e| summary(e).split('@').next().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        names(alice.events(3).await),
        ["ADDED a/p1", "ADDED a/p1", "ADDED b/p2"],
        "namespace a, Running pods; app=web in b"
    );
    assert_eq!(names(bob.events(1).await), ["ADDED a/p1"]);
    assert_eq!(names(carol.events(2).await), ["ADDED a/p1", "ADDED a/p1"]);
}
