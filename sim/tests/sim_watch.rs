//! WATCH semantics, observed line by line through the real `kube` client.

mod sim_common;

use std::time::Duration;

use kubemux_sim::SimConfig;
use serde_json::{Value, json};
use sim_common::{
    client, eventually, raw_http, rv_of, start, summary, test_config, try_watch, watch,
};

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

fn config_map(name: &str) -> Value {
    json!({"metadata": {"name": name}})
}

#[tokio::test]
async fn timed_compaction_expires_versions_recorded_a_tick_before() {
    let server = start(SimConfig {
        compaction_interval: Duration::from_millis(50),
        ..test_config()
    })
    .await;
    let client = client(&server).await;
    let store = server.store();
    store
        .create("configmaps", Some("default"), config_map("before"))
        .expect("create");
    let recorded = store.resource_version();
    // With no further writes the next tick records `recorded` and the one
    // after compacts up to it.
    eventually(|| server.compacted_resource_version() == recorded).await;

    let mut expired = watch(&client, "/api/v1/configmaps?watch=1&resourceVersion=1").await;
    assert_eq!(
        expired.next_line().await.expect("the in-band error"),
        format!(
            r#"{{"type":"ERROR","object":{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"too old resource version: 1 ({recorded})","reason":"Expired","code":410}}}}"#
        )
    );
    assert_eq!(expired.next_line().await, None, "the stream ends after it");
    let just_before = recorded - 1;
    let events = watch(
        &client,
        &format!("/api/v1/configmaps?watch=1&resourceVersion={just_before}"),
    )
    .await
    .drain()
    .await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["object"]["code"], 410);

    // The compacted version itself is still served, and so is everything
    // after it: the watch replays every later event.
    let mut served = watch(
        &client,
        &format!("/api/v1/configmaps?watch=1&resourceVersion={recorded}"),
    )
    .await;
    for name in ["after-1", "after-2"] {
        store
            .create("configmaps", Some("default"), config_map(name))
            .expect("create");
    }
    for name in ["after-1", "after-2"] {
        assert_eq!(
            summary(&served.next_event().await.expect("event")),
            ("ADDED".into(), name.into())
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn compaction_interval_zero_only_compacts_on_demand() {
    let server = start(SimConfig {
        compaction_interval: Duration::ZERO,
        history_limit: 3,
        ..test_config()
    })
    .await;
    let store = server.store();
    let start_rv = store.resource_version();
    assert_eq!(server.compacted_resource_version(), start_rv - 3);
    let compacted = server.faults().compact_history();
    assert_eq!(server.compacted_resource_version(), compacted);
    server.shutdown().await;
}

#[tokio::test]
async fn watch_from_a_future_version_delivers_only_what_comes_after_it() {
    let server = start(test_config()).await;
    let client = client(&server).await;
    let store = server.store();
    let current = store.resource_version();
    let requested = current + 5;
    // The stream is open (200, headers sent) before the version exists.
    let mut stream = watch(
        &client,
        &format!("/api/v1/configmaps?watch=1&resourceVersion={requested}"),
    )
    .await;
    for i in 1..=10 {
        store
            .create("configmaps", Some("default"), config_map(&format!("f{i}")))
            .expect("create");
    }
    store
        .create("configmaps", Some("default"), config_map("marker"))
        .expect("create");
    let mut seen = Vec::new();
    loop {
        let event = stream.next().await.expect("event");
        let (kind, name) = summary(&event);
        seen.push((kind, name.clone(), rv_of(&event["object"])));
        if name == "marker" {
            break;
        }
    }
    let want: Vec<(String, String, u64)> = (6..=10)
        .map(|i| ("ADDED".into(), format!("f{i}"), current + i))
        .chain([("ADDED".into(), "marker".into(), current + 11)])
        .collect();
    assert_eq!(seen, want);

    // A version that never comes: the stream stays open, empty, until the
    // client's timeoutSeconds ends it cleanly.
    let far = store.resource_version() + 1_000;
    let events = watch(
        &client,
        &format!("/api/v1/configmaps?watch=1&resourceVersion={far}&timeoutSeconds=1"),
    )
    .await
    .drain()
    .await;
    assert!(events.is_empty(), "{events:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn send_initial_events_false_starts_from_now() {
    let server = start(test_config()).await;
    let client = client(&server).await;
    let store = server.store();
    for rv in ["", "&resourceVersion=0"] {
        let mut stream = watch(
            &client,
            &format!(
                "/api/v1/configmaps?watch=1&sendInitialEvents=false&resourceVersionMatch=NotOlderThan{rv}"
            ),
        )
        .await;
        let name = format!("now{}", rv.len());
        store
            .create("configmaps", Some("default"), config_map(&name))
            .expect("create");
        assert_eq!(
            summary(&stream.next().await.expect("live event")),
            ("ADDED".into(), name),
            "no initial state first ({rv:?})"
        );
    }
    // From a version: the events after it, as without sendInitialEvents.
    let from = store.resource_version();
    store
        .create("configmaps", Some("default"), config_map("later"))
        .expect("create");
    let mut stream = watch(
        &client,
        &format!(
            "/api/v1/configmaps?watch=1&sendInitialEvents=false&resourceVersionMatch=NotOlderThan&resourceVersion={from}"
        ),
    )
    .await;
    assert_eq!(
        summary(&stream.next().await.expect("replayed")),
        ("ADDED".into(), "later".into())
    );
    server.shutdown().await;
}

#[tokio::test]
async fn send_initial_events_from_a_future_version_is_an_in_band_504_after_the_freshness_wait() {
    let server = start(test_config()).await;
    let client = client(&server).await;
    let current = server.store().resource_version();
    let far = current + 1_000;
    let mut stream = watch(
        &client,
        &format!(
            "/api/v1/pods?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion={far}"
        ),
    )
    .await;
    assert_eq!(
        stream.next_line().await.expect("the in-band error"),
        format!(
            r#"{{"type":"ERROR","object":{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"Timeout: Too large resource version: {far}, current: {current}","reason":"Timeout","details":{{"causes":[{{"reason":"ResourceVersionTooLarge","message":"Too large resource version"}}],"retryAfterSeconds":1}},"code":504}}}}"#
        )
    );
    assert_eq!(stream.next_line().await, None);
    server.shutdown().await;
}

#[tokio::test]
async fn legacy_watch_paths_are_watches() {
    let server = start(test_config()).await;
    let client = client(&server).await;
    let store = server.store();
    store
        .create("namespaces", None, config_map("legacy"))
        .expect("namespace");
    for name in ["one", "two"] {
        store
            .create("configmaps", Some("legacy"), config_map(name))
            .expect("create");
    }
    let before = server.watch_requests("configmaps");

    // A namespaced collection, without watch=1: current state, then live.
    let mut collection = watch(&client, "/api/v1/watch/namespaces/legacy/configmaps").await;
    let mut initial = Vec::new();
    for _ in 0..2 {
        initial.push(summary(&collection.next().await.expect("initial")));
    }
    assert_eq!(
        initial,
        [
            ("ADDED".into(), "one".into()),
            ("ADDED".into(), "two".into())
        ]
    );

    // One object by name: like fieldSelector=metadata.name=one, from a version.
    let from = store.resource_version();
    let mut single = watch(
        &client,
        &format!("/api/v1/watch/namespaces/legacy/configmaps/one?resourceVersion={from}"),
    )
    .await;
    store
        .merge_patch(
            "configmaps",
            Some("legacy"),
            "two",
            &json!({"data": {"k": "2"}}),
        )
        .expect("patch");
    store
        .merge_patch(
            "configmaps",
            Some("legacy"),
            "one",
            &json!({"data": {"k": "1"}}),
        )
        .expect("patch");
    assert_eq!(
        summary(&single.next().await.expect("event")),
        ("MODIFIED".into(), "one".into()),
        "the change to two is not sent"
    );
    assert_eq!(
        summary(&collection.next().await.expect("event")),
        ("MODIFIED".into(), "two".into())
    );
    // A field selector is ANDed with the path's name.
    let mut none = watch(
        &client,
        "/api/v1/watch/namespaces/legacy/configmaps/one?fieldSelector=metadata.name%3Dtwo&timeoutSeconds=1",
    )
    .await;
    assert!(none.drain().await.is_empty());

    // Cluster-wide, cluster-scoped by name, and a group path.
    let mut nodes = watch(&client, "/api/v1/watch/nodes").await;
    assert_eq!(nodes.next().await.expect("node")["object"]["kind"], "Node");
    let mut namespace = watch(&client, "/api/v1/watch/namespaces/legacy").await;
    assert_eq!(
        summary(&namespace.next().await.expect("namespace")),
        ("ADDED".into(), "legacy".into())
    );
    let mut deployments = watch(&client, "/apis/apps/v1/watch/namespaces/team-a/deployments").await;
    assert_eq!(
        deployments.next().await.expect("deployment")["object"]["kind"],
        "Deployment"
    );
    assert_eq!(server.watch_requests("configmaps"), before + 3);
    eventually(|| server.active_watches("configmaps") == 2).await;

    // The same rules as any watch, and only GET.
    let expired = try_watch(&client, "/api/v1/watch/pods?resourceVersion=abc").await;
    assert!(matches!(expired, Err(kube::Error::Api(s)) if s.code == 500));
    let (code, _, _) = raw_http(
        &server,
        "POST",
        "/api/v1/watch/namespaces/legacy/configmaps",
        "{}",
    )
    .await;
    assert_eq!(code, 405);
    for missing in [
        "/api/v1/watch",
        "/api/v1/watch/widgets",
        "/api/v1/watch/pods/x",
    ] {
        let (code, _, _) = raw_http(&server, "GET", missing, "").await;
        assert_eq!(code, 404, "{missing}");
    }
    server.shutdown().await;
}
