//! The churn generator: events flow, state applied from a watch equals the
//! store, and the sequence is deterministic for a seed.

mod sim_common;

use std::collections::BTreeMap;

use kubemux_sim::{ObjectProfile, SimConfig};
use serde_json::Value;
use sim_common::{client, eventually, raw_http, rv_of, start, test_config, watch};

/// Applies a watch to a map until a bookmark proves it has seen `until`.
async fn apply_until(
    stream: &mut sim_common::WatchLines,
    state: &mut BTreeMap<(String, String), Value>,
    until: u64,
) -> usize {
    let mut applied = 0;
    loop {
        let event = stream.next().await.expect("watch event");
        let object = &event["object"];
        let key = (
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        match event["type"].as_str() {
            Some("ADDED" | "MODIFIED") => {
                state.insert(key, object.clone());
            }
            Some("DELETED") => {
                state.remove(&key);
            }
            Some("BOOKMARK") if rv_of(object) >= until => return applied,
            Some("BOOKMARK") => continue,
            other => panic!("unexpected event {other:?}"),
        }
        applied += 1;
    }
}

fn as_map(items: Vec<Value>) -> BTreeMap<(String, String), Value> {
    items
        .into_iter()
        .map(|o| {
            let key = (
                o["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
            (key, o)
        })
        .collect()
}

#[tokio::test]
async fn churn_state_seen_through_watches_matches_the_store() {
    let server = start(test_config()).await;
    let client = client(&server).await;
    let mut pods = watch(&client, "/api/v1/pods?watch=1&allowWatchBookmarks=true").await;
    let mut nodes = watch(&client, "/api/v1/nodes?watch=1&allowWatchBookmarks=true").await;
    let mut pod_state = BTreeMap::new();
    let mut node_state = BTreeMap::new();
    let start_rv = server.store().resource_version();
    apply_until(&mut pods, &mut pod_state, start_rv).await;
    apply_until(&mut nodes, &mut node_state, start_rv).await;

    let (code, _, _) = raw_http(&server, "POST", "/_sim/churn?rate=2000", "").await;
    assert_eq!(code, 200);
    eventually(|| server.store().resource_version() >= start_rv + 600).await;
    server.set_churn_rate(0.0);
    // Let an in-flight tick finish, then take the final state.
    let settled = server.store().resource_version();
    eventually(|| server.store().resource_version() == settled).await;
    let final_rv = server.store().resource_version();

    let pod_events = apply_until(&mut pods, &mut pod_state, final_rv).await;
    let node_events = apply_until(&mut nodes, &mut node_state, final_rv).await;
    assert!(pod_events > 300, "only {pod_events} pod events");
    assert!(node_events > 0, "no node events");
    let (store_pods, _) = server.store().list("pods", None, None, None).expect("pods");
    let (store_nodes, _) = server
        .store()
        .list("nodes", None, None, None)
        .expect("nodes");
    assert_eq!(pod_state, as_map(store_pods));
    assert_eq!(node_state, as_map(store_nodes));
    // The population stays around its initial size.
    assert!(
        (8..=45).contains(&pod_state.len()),
        "{} pods",
        pod_state.len()
    );
    assert!(
        (2..=6).contains(&node_state.len()),
        "{} nodes",
        node_state.len()
    );
    server.shutdown().await;
}

/// `(rv, type, name)` of the first `n` churn events after seeding.
async fn churn_sequence(
    seed: u64,
    n: u64,
    object_profile: ObjectProfile,
) -> Vec<(u64, String, String)> {
    let server = start(SimConfig {
        seed,
        churn_rate: 3000.0,
        object_profile,
        ..test_config()
    })
    .await;
    let seeded = server.store().resource_version();
    eventually(|| server.store().resource_version() >= seeded + n).await;
    server.set_churn_rate(0.0);
    let settled = server.store().resource_version();
    eventually(|| server.store().resource_version() == settled).await;
    let final_rv = server.store().resource_version();
    let client = client(&server).await;
    let mut out = Vec::new();
    for resource in ["pods", "nodes"] {
        let path =
            format!("/api/v1/{resource}?watch=1&allowWatchBookmarks=true&resourceVersion={seeded}");
        let mut stream = watch(&client, &path).await;
        loop {
            let event = stream.next().await.expect("event");
            let rv = rv_of(&event["object"]);
            if event["type"] == "BOOKMARK" {
                if rv >= final_rv {
                    break;
                }
                continue;
            }
            if rv <= seeded + n {
                let name = event["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default();
                out.push((
                    rv,
                    event["type"].as_str().unwrap_or_default().to_string(),
                    name.to_string(),
                ));
            }
        }
    }
    server.shutdown().await;
    out.sort();
    out
}

#[tokio::test]
async fn churn_is_deterministic_for_a_seed() {
    for profile in [ObjectProfile::Small, ObjectProfile::Realistic] {
        let a = churn_sequence(7, 200, profile).await;
        let b = churn_sequence(7, 200, profile).await;
        assert_eq!(a.len(), 200);
        assert_eq!(a, b, "{profile}");
        let c = churn_sequence(8, 200, profile).await;
        assert_ne!(a, c, "{profile}");
    }
}

#[tokio::test]
async fn churn_pads_objects_and_stamps_the_commit_time() {
    let server = start(SimConfig {
        churn_rate: 500.0,
        object_size: 4096,
        stamp_sent_at: true,
        ..test_config()
    })
    .await;
    let client = client(&server).await;
    let from = server.store().resource_version();
    let mut stream = watch(
        &client,
        &format!("/api/v1/pods?watch=1&resourceVersion={from}"),
    )
    .await;
    let mut checked = 0;
    while checked < 50 {
        let event = stream.next_event().await.expect("event");
        let object = &event["object"];
        let annotations = &object["metadata"]["annotations"];
        let sent: u64 = annotations["kubemux.io/sent-at"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("sent-at stamp");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        assert!(
            sent <= now && now - sent < 10_000_000,
            "stamp {sent} vs now {now}"
        );
        if event["type"] != "DELETED" || annotations.get("kubemux.io/padding").is_some() {
            let len = serde_json::to_vec(object).unwrap().len();
            assert!(
                (3900..4400).contains(&len),
                "{} object of {len} bytes",
                event["type"]
            );
        }
        checked += 1;
    }
    server.shutdown().await;
}

/// The realistic profile over HTTP: the initial pods and every pod churn
/// writes are kubelet-managed pods of 4–9 KiB (fresh ones stay under 8 KiB;
/// a restart keeps the previous run as `lastState`), and a MODIFIED event
/// is a kubelet status write: spec untouched, status and kubelet's
/// `managedFields` entry rewritten, resourceVersion bumped.
#[tokio::test]
async fn realistic_churn_writes_kubelet_managed_pods() {
    use k8s_openapi::api::core::v1::Pod;
    let server = start(SimConfig {
        churn_rate: 500.0,
        object_profile: ObjectProfile::Realistic,
        stamp_sent_at: true,
        ..test_config()
    })
    .await;
    let client = client(&server).await;
    let (initial, _) = server.store().list("pods", None, None, None).expect("pods");
    assert_eq!(initial.len(), 20);
    for pod in &initial {
        let len = serde_json::to_vec(pod).unwrap().len();
        assert!((4096..8192).contains(&len), "initial pod of {len} bytes");
    }
    let mut last: BTreeMap<String, Value> = initial
        .into_iter()
        .map(|p| (p["metadata"]["name"].as_str().unwrap().to_string(), p))
        .collect();
    let mut stream = watch(&client, "/api/v1/pods?watch=1").await;
    let mut modified = 0;
    while modified < 40 {
        let event = stream.next_event().await.expect("event");
        let object = event["object"].clone();
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        let len = serde_json::to_vec(&object).unwrap().len();
        assert!(
            (4096..9216).contains(&len),
            "{} pod of {len} bytes",
            event["type"]
        );
        let typed: Pod = serde_json::from_value(object.clone()).expect("a k8s Pod");
        let managers: Vec<_> = typed
            .metadata
            .managed_fields
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| m.manager)
            .collect();
        assert_eq!(managers, ["kube-controller-manager", "kubelet"]);
        match event["type"].as_str() {
            Some("MODIFIED") => {
                // Events of pods created before the watch started may have
                // been missed; compare with the version last seen.
                if let Some(before) = last.get(&name) {
                    assert_ne!(object["status"], before["status"]);
                    assert_eq!(object["spec"], before["spec"]);
                    assert!(rv_of(&object) > rv_of(before));
                    // kubelet's entry follows its write (its time has
                    // the API's second precision, so it may not move).
                    let kubelet = &object["metadata"]["managedFields"][1];
                    let mut owned = object["status"].clone();
                    owned.as_object_mut().unwrap().remove("qosClass");
                    assert_eq!(
                        kubelet["fieldsV1"],
                        kubemux_sim::realistic::fields_v1(&serde_json::json!({ "status": owned }))
                    );
                    let time = |entry: &Value| entry["time"].as_str().unwrap().to_string();
                    assert!(time(kubelet) >= time(&before["metadata"]["managedFields"][1]));
                    assert_eq!(
                        object["metadata"]["managedFields"][0],
                        before["metadata"]["managedFields"][0]
                    );
                    modified += 1;
                }
                last.insert(name, object);
            }
            Some("ADDED") => {
                last.insert(name, object);
            }
            _ => {
                last.remove(&name);
            }
        }
    }
    server.shutdown().await;
}
