//! WATCH semantics, observed line by line through the real `kube` client.

mod sim_common;

use std::time::Duration;

use kubemux::sim::SimConfig;
use serde_json::{Value, json};
use sim_common::{client, rv_of, start, summary, test_config, watch};

fn pod(name: &str, labels: Value) -> Value {
    json!({"metadata": {"name": name, "labels": labels},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
}

#[tokio::test]
async fn watch_without_rv_sends_current_state_then_live_events() {
    let server = start(test_config()).await;
    let client = client(&server).await;
    for rv_param in ["", "&resourceVersion=0"] {
        let mut stream = watch(
            &client,
            &format!("/api/v1/namespaces/default/pods?watch=true{rv_param}"),
        )
        .await;
        let (current, _) = server
            .store()
            .list("pods", Some("default"), None, None)
            .expect("list");
        for _ in 0..current.len() {
            let event = stream.next_event().await.expect("initial event");
            assert_eq!(event["type"], "ADDED");
            assert_eq!(event["object"]["kind"], "Pod");
            assert_eq!(event["object"]["apiVersion"], "v1");
        }
        let name = format!("live{}", rv_param.len());
        server
            .store()
            .create("pods", Some("default"), pod(&name, json!({})))
            .expect("create");
        // Objects in other namespaces are filtered out.
        server
            .store()
            .create("pods", Some("team-a"), pod(&name, json!({})))
            .expect("create");
        server
            .store()
            .delete("pods", Some("default"), &name)
            .expect("delete");
        let added = stream.next_event().await.expect("added");
        assert_eq!(summary(&added), ("ADDED".into(), name.clone()));
        let deleted = stream.next_event().await.expect("deleted");
        assert_eq!(summary(&deleted), ("DELETED".into(), name.clone()));
        assert_eq!(rv_of(&deleted["object"]), server.store().resource_version());
    }
    server.shutdown().await;
}

#[tokio::test]
async fn watch_from_rv_replays_history_and_waits_for_future_rv() {
    let server = start(test_config()).await;
    let client = client(&server).await;
    let store = server.store();
    let start_rv = store.resource_version();
    store
        .create("pods", Some("default"), pod("a", json!({})))
        .expect("create");
    store
        .create(
            "configmaps",
            Some("default"),
            json!({"metadata": {"name": "noise"}}),
        )
        .expect("cm");
    store
        .merge_patch(
            "pods",
            Some("default"),
            "a",
            &json!({"metadata": {"labels": {"x": "1"}}}),
        )
        .expect("patch");
    store.delete("pods", Some("default"), "a").expect("delete");

    let mut stream = watch(
        &client,
        &format!("/api/v1/pods?watch=1&resourceVersion={start_rv}"),
    )
    .await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let event = stream.next_event().await.expect("replayed");
        seen.push((summary(&event), rv_of(&event["object"])));
    }
    assert_eq!(
        seen,
        vec![
            (("ADDED".into(), "a".into()), start_rv + 1),
            (("MODIFIED".into(), "a".into()), start_rv + 3),
            (("DELETED".into(), "a".into()), start_rv + 4),
        ]
    );
    store
        .create("pods", Some("team-b"), pod("b", json!({})))
        .expect("create");
    assert_eq!(
        summary(&stream.next_event().await.expect("live")),
        ("ADDED".into(), "b".into())
    );

    // A resourceVersion from the future: nothing until it exists.
    let future = store.resource_version() + 2;
    let mut waiting = watch(
        &client,
        &format!("/api/v1/pods?watch=1&resourceVersion={future}"),
    )
    .await;
    store
        .create("pods", Some("default"), pod("c1", json!({})))
        .expect("create");
    store
        .create("pods", Some("default"), pod("c2", json!({})))
        .expect("create");
    store
        .create("pods", Some("default"), pod("c3", json!({})))
        .expect("create");
    assert_eq!(
        summary(&waiting.next_event().await.expect("after wait")),
        ("ADDED".into(), "c3".into())
    );
    server.shutdown().await;
}

#[tokio::test]
async fn too_old_resource_version_is_an_in_band_410() {
    let server = start(SimConfig {
        history_limit: 5,
        ..test_config()
    })
    .await;
    let client = client(&server).await;
    let store = server.store();
    let old = store.resource_version();
    for i in 0..6 {
        store
            .create(
                "configmaps",
                Some("default"),
                json!({"metadata": {"name": format!("cm{i}")}}),
            )
            .expect("create");
    }
    let mut stream = watch(
        &client,
        &format!("/api/v1/configmaps?watch=1&resourceVersion={old}"),
    )
    .await;
    let events = stream.drain().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        events[0],
        json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
               "status": "Failure", "message": format!("too old resource version: {old} ({})", old + 1),
               "reason": "Expired", "code": 410}})
    );
    // Within the window it still works; after compaction it does not.
    let recent = store.resource_version() - 1;
    let mut ok = watch(
        &client,
        &format!("/api/v1/configmaps?watch=1&resourceVersion={recent}"),
    )
    .await;
    assert_eq!(
        summary(&ok.next_event().await.expect("replay")),
        ("ADDED".into(), "cm5".into())
    );
    let compacted_at = server.faults().compact_history();
    let mut stream = watch(
        &client,
        &format!("/api/v1/configmaps?watch=1&resourceVersion={recent}"),
    )
    .await;
    let events = stream.drain().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["object"]["code"], 410);
    assert_eq!(
        events[0]["object"]["message"],
        format!("too old resource version: {recent} ({compacted_at})")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn bookmarks_carry_the_current_resource_version() {
    let server = start(test_config()).await;
    let client = client(&server).await;
    let mut stream = watch(&client, "/api/v1/nodes?watch=1&allowWatchBookmarks=true").await;
    // Churn-free: changes to other resources still advance the bookmark rv.
    server
        .store()
        .create(
            "configmaps",
            Some("default"),
            json!({"metadata": {"name": "tick"}}),
        )
        .expect("create");
    let current = server.store().resource_version();
    loop {
        let event = stream.next().await.expect("event");
        if event["type"] == "BOOKMARK" {
            assert_eq!(event["object"]["kind"], "Node");
            assert_eq!(event["object"]["apiVersion"], "v1");
            if rv_of(&event["object"]) == current {
                break;
            }
        } else {
            assert_eq!(event["type"], "ADDED");
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn send_initial_events_ends_with_annotated_bookmark() {
    let server = start(test_config()).await;
    let client = client(&server).await;
    let rv = server.store().resource_version();
    let mut stream = watch(
        &client,
        "/api/v1/pods?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true",
    )
    .await;
    for _ in 0..20 {
        assert_eq!(stream.next().await.expect("initial")["type"], "ADDED");
    }
    let end = stream.next().await.expect("bookmark");
    assert_eq!(
        end,
        json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {
            "resourceVersion": rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}}})
    );
    // Without resourceVersionMatch=NotOlderThan the request is invalid.
    let rejected =
        sim_common::try_watch(&client, "/api/v1/pods?watch=1&sendInitialEvents=true").await;
    assert!(matches!(rejected, Err(kube::Error::Api(s)) if s.code == 422));
    server.shutdown().await;
}

#[tokio::test]
async fn watches_end_on_timeouts() {
    let server = start(SimConfig {
        watch_timeout: Duration::from_millis(200),
        ..test_config()
    })
    .await;
    let client = client(&server).await;
    // The server's own maximum applies when the client asks for longer.
    let mut stream = watch(&client, "/api/v1/namespaces?watch=1&timeoutSeconds=60").await;
    assert_eq!(stream.drain().await.len(), 4);
    server.shutdown().await;

    let server = start(test_config()).await;
    let client = sim_common::client(&server).await;
    let mut stream = watch(&client, "/api/v1/namespaces?watch=1&timeoutSeconds=1").await;
    assert_eq!(stream.drain().await.len(), 4);
    assert_eq!(server.active_watches("namespaces"), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn selectors_turn_modifications_into_added_and_deleted() {
    let server = start(test_config()).await;
    let client = client(&server).await;
    let store = server.store();
    let mut gold = watch(
        &client,
        "/api/v1/namespaces/default/pods?watch=1&labelSelector=tier%3Dgold",
    )
    .await;
    let mut not_gold = watch(
        &client,
        "/api/v1/namespaces/default/pods?watch=1&labelSelector=tier,tier!%3Dgold",
    )
    .await;
    let mut on_node = watch(
        &client,
        "/api/v1/pods?watch=1&fieldSelector=spec.nodeName%3Dsim-node-1",
    )
    .await;
    for _ in 0..store
        .list("pods", None, None, Some("spec.nodeName=sim-node-1"))
        .expect("list")
        .0
        .len()
    {
        assert_eq!(
            on_node.next_event().await.expect("initial")["type"],
            "ADDED"
        );
    }

    store
        .create("pods", Some("default"), pod("p", json!({"tier": "silver"})))
        .expect("create");
    store
        .merge_patch(
            "pods",
            Some("default"),
            "p",
            &json!({"metadata": {"labels": {"tier": "gold"}}}),
        )
        .expect("to gold");
    store
        .merge_patch(
            "pods",
            Some("default"),
            "p",
            &json!({"metadata": {"labels": {"tier": "bronze"}}}),
        )
        .expect("to bronze");
    store
        .merge_patch(
            "pods",
            Some("default"),
            "p",
            &json!({"spec": {"nodeName": "sim-node-1"}}),
        )
        .expect("schedule");
    store.delete("pods", Some("default"), "p").expect("delete");

    let gold_events: Vec<Value> = vec![
        gold.next_event().await.expect("1"),
        gold.next_event().await.expect("2"),
    ];
    assert_eq!(summary(&gold_events[0]).0, "ADDED");
    assert_eq!(
        gold_events[0]["object"]["metadata"]["labels"]["tier"],
        "gold"
    );
    assert_eq!(summary(&gold_events[1]).0, "DELETED");
    // The DELETED carries the last matching state at the new resourceVersion.
    assert_eq!(
        gold_events[1]["object"]["metadata"]["labels"]["tier"],
        "gold"
    );
    assert_eq!(
        rv_of(&gold_events[1]["object"]),
        rv_of(&gold_events[0]["object"]) + 1
    );

    let mut others = Vec::new();
    for _ in 0..4 {
        others.push(summary(&not_gold.next_event().await.expect("event")).0);
    }
    assert_eq!(others, ["ADDED", "DELETED", "ADDED", "MODIFIED"]);
    assert_eq!(
        summary(&not_gold.next_event().await.expect("delete")).0,
        "DELETED"
    );

    let node_events = [
        on_node.next_event().await.expect("a"),
        on_node.next_event().await.expect("b"),
    ];
    assert_eq!(
        node_events.iter().map(summary).collect::<Vec<_>>(),
        [("ADDED".into(), "p".into()), ("DELETED".into(), "p".into())]
    );
    server.shutdown().await;
}
