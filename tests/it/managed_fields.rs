//! `--strip-managed-fields`: what kubemux serves from its shared watches
//! (Headlamp frames, REST LISTs from the store, REST watches through the
//! hub) lacks `metadata.managedFields` and is otherwise the cluster's
//! object; what it forwards to the cluster is the cluster's answer,
//! untouched. Without the flag every byte is the cluster's. Each case is
//! asked of kubemux and of the simulator over sockets, with realistic
//! (kubelet-managed) pods.

use crate::support::*;
use kubemux::hub::HubConfig;
use kubemux::server::ServerConfig;
use kubemux_sim::{ObjectProfile, SimConfig};
use serde_json::{Value, json};

const PODS: &str = "/api/v1/pods";
const INITIAL_PODS: usize = 6;

fn realistic() -> SimConfig {
    SimConfig {
        object_profile: ObjectProfile::Realistic,
        initial_pods: INITIAL_PODS,
        ..SimConfig::default()
    }
}

fn hub(strip_managed_fields: bool) -> HubConfig {
    let mut hub = quick_hub();
    hub.upstream.transform.strip_managed_fields = strip_managed_fields;
    hub
}

/// `object` without `metadata.managedFields`, which it must have had (so
/// a comparison with it cannot pass by the cluster not sending any).
fn stripped(mut object: Value) -> Value {
    let removed = object["metadata"]
        .as_object_mut()
        .and_then(|m| m.remove("managedFields"));
    assert!(
        removed.is_some(),
        "the cluster's object has managedFields: {object}"
    );
    object
}

/// A watch event with its object [`stripped`].
fn stripped_event(mut event: Value) -> Value {
    event["object"] = stripped(event["object"].take());
    event
}

fn has_managed_fields(object: &Value) -> bool {
    object["metadata"].get("managedFields").is_some()
}

fn sorted_items(list: &Value) -> Vec<Value> {
    let mut items = list["items"].as_array().expect("a list").clone();
    items.sort_by_key(object_key);
    items
}

/// A Headlamp client holding the shared watch of every pod, its initial
/// state read, and the simulator's version then.
async fn subscribed(env: &Env) -> (Client, Vec<Value>, u64) {
    let mut client = env.client().await;
    client.request(PODS, "watch=1").await;
    let initial = client.events(INITIAL_PODS).await;
    let from = env.sim.store().resource_version();
    env.eventually("the shared watch holds the cluster's version", || {
        env.hub
            .cached_list(CLUSTER, PODS, "", &kubemux::hub::Identity::Proxy)
            .is_some_and(|l| l.resource_version == from.to_string())
    })
    .await;
    (client, initial, from)
}

/// Kubelet-like changes to the pods: a label on one (MODIFIED), another
/// deleted (DELETED, carrying its last state); returns how many events.
fn change_pods(env: &Env) -> usize {
    let store = env.sim.store();
    let (pods, _) = store.list("pods", None, None, None).unwrap();
    let mut first = pods[0].clone();
    first["metadata"]["labels"]["kubemux-test"] = json!("changed");
    let ns = first["metadata"]["namespace"].as_str().unwrap().to_string();
    store.update("pods", Some(&ns), first).unwrap();
    let second = &pods[1]["metadata"];
    store
        .delete(
            "pods",
            second["namespace"].as_str(),
            second["name"].as_str().unwrap(),
        )
        .unwrap();
    2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_flag_the_cache_and_every_frame_from_it_lack_managed_fields() {
    let env = start(realistic(), hub(true), ServerConfig::default()).await;
    let (mut client, initial, from) = subscribed(&env).await;
    let (_, theirs) = both(&env, PODS).await;
    let mut initial: Vec<Value> = initial.into_iter().map(|e| e["object"].clone()).collect();
    initial.sort_by_key(object_key);
    let listed: Vec<Value> = sorted_items(&theirs.json())
        .into_iter()
        .map(stripped)
        .collect();
    for (ours, theirs) in initial.iter().zip(&listed) {
        let mut ours = ours.clone();
        let ours_map = ours.as_object_mut().unwrap();
        // Watch events carry kind and apiVersion; list items do not.
        assert_eq!(ours_map.remove("kind"), Some(json!("Pod")));
        assert_eq!(ours_map.remove("apiVersion"), Some(json!("v1")));
        assert_eq!(
            &ours, theirs,
            "an initial ADDED is the listed pod without managedFields"
        );
    }
    assert_eq!(initial.len(), listed.len());

    let changes = change_pods(&env);
    let ours_live = client.events(changes).await;
    let to = env.sim.store().resource_version();
    let query = format!("{PODS}?watch=1&resourceVersion={from}&timeoutSeconds=1");
    let (ours_rest, theirs_rest) = both(&env, &query).await;
    let theirs_events: Vec<Value> = theirs_rest
        .events()
        .into_iter()
        .map(stripped_event)
        .collect();
    assert_eq!(theirs_events.len(), changes, "{}", theirs_rest.body);
    assert_eq!(ours_live, theirs_events, "Headlamp's live events");
    assert_eq!(
        ours_rest.events(),
        theirs_events,
        "a REST watch through the hub"
    );

    env.eventually("the shared watch holds the changes", || {
        env.hub
            .cached_list(CLUSTER, PODS, "", &kubemux::hub::Identity::Proxy)
            .is_some_and(|l| l.resource_version == to.to_string())
    })
    .await;
    let (ours_list, theirs_list) = both(&env, PODS).await;
    let theirs_items: Vec<Value> = sorted_items(&theirs_list.json())
        .into_iter()
        .map(stripped)
        .collect();
    assert_eq!(
        sorted_items(&ours_list.json()),
        theirs_items,
        "a LIST from the store"
    );
    assert_eq!(ours_list.json()["metadata"], theirs_list.json()["metadata"]);

    // A GET of one object is the cluster's answer, managedFields and all.
    let one = &theirs_items[0]["metadata"];
    let path = format!(
        "/api/v1/namespaces/{}/pods/{}",
        one["namespace"].as_str().unwrap(),
        one["name"].as_str().unwrap()
    );
    let (ours_get, theirs_get) = both(&env, &path).await;
    assert_eq!(ours_get.code, 200, "{}", ours_get.body);
    assert!(has_managed_fields(&ours_get.json()), "{}", ours_get.body);
    assert_eq!(ours_get.body, theirs_get.body);

    let text = env.metrics_text().await;
    let served = |request: &str| {
        metric(
            &text,
            &format!(
                "kubemux_rest_requests_total{{request=\"{request}\",served=\"shared_watch\"}}"
            ),
        )
        .unwrap_or(0.0)
    };
    assert_eq!((served("list"), served("watch")), (2.0, 1.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_flag_every_byte_is_the_clusters() {
    let env = start(realistic(), hub(false), ServerConfig::default()).await;
    let (mut client, initial, from) = subscribed(&env).await;
    assert!(initial.iter().all(|e| has_managed_fields(&e["object"])));
    let changes = change_pods(&env);
    let mut frames = Vec::new();
    for _ in 0..changes {
        let (frame, _) = client.event().await;
        frames.push(frame["data"].as_str().unwrap().to_string());
    }
    let query = format!("{PODS}?watch=1&resourceVersion={from}&timeoutSeconds=1");
    let (ours, theirs) = both(&env, &query).await;
    let lines: Vec<&str> = theirs.body.lines().collect();
    assert_eq!(lines.len(), changes, "{}", theirs.body);
    assert_eq!(
        frames, lines,
        "Headlamp frames embed the cluster's lines verbatim"
    );
    assert_eq!(ours.body, theirs.body, "a REST watch through the hub");
    assert!(
        ours.events()
            .iter()
            .all(|e| has_managed_fields(&e["object"]))
    );
}
