//! Discovery, LIST (pagination, selectors) and writes through the real
//! `kube` client.

mod sim_common;

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sim_common::{client, raw_http, rv_of, start, test_config};

/// `(status, parsed body)` of a GET.
async fn get(server: &kubemux_sim::SimServer, path: &str) -> (u16, Value) {
    let (code, _, body) = raw_http(server, "GET", path, "").await;
    let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (code, value)
}

/// `(name, data.v)` of every item of a LIST body.
fn items(list: &Value) -> Vec<(String, String)> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| {
            (
                item["metadata"]["name"].as_str().expect("name").to_string(),
                item["data"]["v"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn version_and_discovery() {
    let server = start(test_config()).await;
    let client = client(&server).await;
    let version = client.apiserver_version().await.expect("version");
    assert_eq!(version.major, "1");
    assert_eq!(version.minor, "33");
    assert_eq!(version.git_version, "v1.33.0-kubemux-sim");
    let discovery = kube::discovery::Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    let kinds: BTreeSet<String> = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .map(|(r, _)| r.kind)
        .collect();
    for kind in [
        "Pod",
        "Node",
        "Namespace",
        "Service",
        "ConfigMap",
        "Secret",
        "ResourceQuota",
        "Deployment",
    ] {
        assert!(kinds.contains(kind), "{kind} missing from {kinds:?}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn list_pagination_follows_a_snapshot() {
    let server = start(test_config()).await;
    let client = client(&server).await;
    let pods: Api<Pod> = Api::all(client.clone());
    let first = pods
        .list(&ListParams::default().limit(7))
        .await
        .expect("page 1");
    assert_eq!(first.items.len(), 7);
    assert_eq!(first.metadata.remaining_item_count, Some(13));
    let snapshot_rv = first.metadata.resource_version.clone();
    // A change after the first page must not show up in later pages.
    let default_pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let extra: Pod = serde_json::from_value(json!({"metadata": {"name": "zzz-late"}, "spec": {"containers": [{"name": "c", "image": "x"}]}})).expect("pod");
    default_pods
        .create(&PostParams::default(), &extra)
        .await
        .expect("create");
    let mut names: Vec<String> = first
        .items
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let mut token = first.metadata.continue_;
    let mut pages = 1;
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        let page = pods
            .list(&ListParams::default().limit(7).continue_token(&t))
            .await
            .expect("page");
        assert_eq!(page.metadata.resource_version, snapshot_rv);
        names.extend(page.items.iter().filter_map(|p| p.metadata.name.clone()));
        token = page.metadata.continue_;
        pages += 1;
    }
    assert_eq!(pages, 3);
    assert_eq!(names.len(), 20);
    assert!(!names.contains(&"zzz-late".to_string()));
    assert_eq!(names.iter().collect::<BTreeSet<_>>().len(), 20);
    assert_eq!(
        pods.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        21
    );

    // A continue token whose snapshot was compacted away is 410 Expired.
    let first = pods
        .list(&ListParams::default().limit(5))
        .await
        .expect("page 1");
    default_pods
        .delete("zzz-late", &DeleteParams::default())
        .await
        .expect("delete");
    server.faults().compact_history();
    let token = first.metadata.continue_.expect("token");
    match pods
        .list(&ListParams::default().limit(5).continue_token(&token))
        .await
    {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected 410, got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn list_items_omit_type_meta_and_selectors_match_store() {
    let server = start(test_config()).await;
    let client = client(&server).await;
    let request = http::Request::get("/api/v1/namespaces/default/pods?limit=2")
        .body(Vec::new())
        .expect("req");
    let raw: Value =
        serde_json::from_str(&client.request_text(request).await.expect("list")).expect("json");
    assert_eq!(raw["kind"], "PodList");
    assert_eq!(raw["apiVersion"], "v1");
    assert!(raw["metadata"]["continue"].is_string());
    for item in raw["items"].as_array().expect("items") {
        assert!(item.get("kind").is_none() && item.get("apiVersion").is_none());
    }

    let pods: Api<Pod> = Api::all(client.clone());
    let cases: &[(Option<&str>, Option<&str>)] = &[
        (Some("app=web"), None),
        (Some("app in (web,api),app!=api"), None),
        (Some("app notin (web)"), None),
        (Some("!app"), None),
        (Some("pod-template-hash"), None),
        (None, Some("spec.nodeName=sim-node-0")),
        (
            None,
            Some("status.phase==Running,metadata.namespace!=default"),
        ),
        (Some("app=coredns"), Some("metadata.namespace=kube-system")),
    ];
    for (labels, fields) in cases {
        let mut params = ListParams::default();
        if let Some(l) = labels {
            params = params.labels(l);
        }
        if let Some(f) = fields {
            params = params.fields(f);
        }
        let got: BTreeSet<String> = pods
            .list(&params)
            .await
            .expect("list")
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        let (want, _) = server
            .store()
            .list("pods", None, *labels, *fields)
            .expect("store list");
        let want: BTreeSet<String> = want
            .iter()
            .map(|p| p["metadata"]["name"].as_str().expect("name").to_string())
            .collect();
        assert_eq!(got, want, "{labels:?} {fields:?}");
    }
    let (web, _) = server
        .store()
        .list("pods", None, Some("app=web"), None)
        .expect("list");
    assert!(!web.is_empty());
    assert!(
        web.iter()
            .all(|p| p["kind"] == "Pod" && p["apiVersion"] == "v1")
    );

    for bad in [
        "labelSelector=app%3D%3D%3Dx",
        "fieldSelector=spec.bogus%3Dx",
        "labelSelector=app+in+web",
    ] {
        let (code, _, body) = raw_http(&server, "GET", &format!("/api/v1/pods?{bad}"), "").await;
        assert_eq!(code, 400, "{bad}: {body}");
        let status: Value = serde_json::from_str(&body).expect("status");
        assert_eq!(status["reason"], "BadRequest");
    }
    let nodes: Api<Node> = Api::all(client.clone());
    let control_plane = nodes
        .list(&ListParams::default().labels("node-role.kubernetes.io/control-plane"))
        .await
        .expect("nodes");
    assert_eq!(control_plane.items.len(), 1);
    server.shutdown().await;
}

fn config_map(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": value}}))
        .expect("configmap")
}

#[tokio::test]
async fn writes_bump_the_global_resource_version() {
    let server = start(test_config()).await;
    let client = client(&server).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "team-a");
    let rv0 = server.store().resource_version();

    let created = cms
        .create(&PostParams::default(), &config_map("settings", "1"))
        .await
        .expect("create");
    let meta = &created.metadata;
    assert_eq!(
        meta.resource_version.as_deref(),
        Some(&*(rv0 + 1).to_string())
    );
    assert_eq!(meta.namespace.as_deref(), Some("team-a"));
    assert!(
        meta.uid
            .as_deref()
            .is_some_and(|u| uuid::Uuid::parse_str(u).is_ok())
    );
    let created_at = serde_json::to_value(&meta.creation_timestamp).expect("ts");
    let text = created_at.as_str().expect("timestamp string");
    assert!(text.len() == 20 && text.ends_with('Z'), "{text}");

    match cms
        .create(&PostParams::default(), &config_map("settings", "2"))
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists")),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }

    let mut stale = created.clone();
    stale.metadata.resource_version = Some(rv0.to_string());
    match cms
        .replace("settings", &PostParams::default(), &stale)
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (409, "Conflict")),
        other => panic!("expected Conflict, got {other:?}"),
    }
    let mut fresh = created.clone();
    fresh.data = Some([("k".to_string(), "2".to_string())].into());
    let replaced = cms
        .replace("settings", &PostParams::default(), &fresh)
        .await
        .expect("replace");
    assert_eq!(
        replaced.metadata.resource_version.as_deref(),
        Some(&*(rv0 + 2).to_string())
    );
    assert_eq!(replaced.metadata.uid, created.metadata.uid);

    let patch = json!({"metadata": {"labels": {"tier": "gold"}}, "data": {"k": null, "n": "v"}});
    let patched = cms
        .patch("settings", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    assert_eq!(
        patched.metadata.resource_version.as_deref(),
        Some(&*(rv0 + 3).to_string())
    );
    assert_eq!(
        patched.data,
        Some([("n".to_string(), "v".to_string())].into())
    );
    // A patch that changes nothing does not bump the resourceVersion.
    let same = cms
        .patch("settings", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("noop patch");
    assert_eq!(
        same.metadata.resource_version,
        patched.metadata.resource_version
    );
    assert_eq!(server.store().resource_version(), rv0 + 3);

    cms.delete("settings", &DeleteParams::default())
        .await
        .expect("delete");
    assert_eq!(server.store().resource_version(), rv0 + 4);
    match cms.get("settings").await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (404, "NotFound")),
        other => panic!("expected NotFound, got {other:?}"),
    }

    let generated: ConfigMap =
        serde_json::from_value(json!({"metadata": {"generateName": "gen-"}})).expect("cm");
    let made = cms
        .create(&PostParams::default(), &generated)
        .await
        .expect("generateName");
    let name = made.metadata.name.expect("name");
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "team-a");
    let scaled = deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .expect("patch deployment");
    assert_eq!(scaled.spec.and_then(|s| s.replicas), Some(5));
    assert_eq!(
        rv_of(
            &server
                .store()
                .get("deployments", Some("team-a"), "web")
                .expect("get")
        ),
        rv0 + 6
    );
    server.shutdown().await;
}

#[tokio::test]
async fn errors_are_status_objects() {
    let server = start(test_config()).await;
    let (code, _, body) = raw_http(&server, "GET", "/api/v1/namespaces/default/pods/x", "").await;
    assert_eq!(code, 404);
    assert_eq!(
        body,
        r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods \"x\" not found","reason":"NotFound","details":{"name":"x","kind":"pods"},"code":404}"#
    );
    let (code, _, body) = raw_http(
        &server,
        "GET",
        "/apis/apps/v1/namespaces/default/deployments/x",
        "",
    )
    .await;
    assert_eq!(code, 404);
    assert!(
        body.contains(r#"deployments.apps \"x\" not found"#) && body.contains(r#""group":"apps""#),
        "{body}"
    );
    let (code, _, _) = raw_http(&server, "GET", "/api/v1/widgets", "").await;
    assert_eq!(code, 404);
    let (code, _, body) =
        raw_http(&server, "POST", "/api/v1/namespaces/default/pods/x", "{}").await;
    assert_eq!(code, 405, "{body}");
    let (code, _, _) = raw_http(
        &server,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "{not json",
    )
    .await;
    assert_eq!(code, 400);
    let (code, _, body) = raw_http(
        &server,
        "POST",
        "/api/v1/namespaces/nope/configmaps",
        r#"{"metadata":{"name":"a"}}"#,
    )
    .await;
    assert_eq!(code, 404);
    assert!(body.contains(r#"namespaces \"nope\" not found"#), "{body}");
    let (code, _, _) = raw_http(&server, "GET", "/nothing/here", "").await;
    assert_eq!(code, 404);
    // In-process store API reports the same errors.
    let err = server
        .store()
        .get("pods", Some("default"), "x")
        .expect_err("missing");
    assert_eq!((err.code, err.reason), (404, "NotFound"));
    server.shutdown().await;
}

#[tokio::test]
async fn unparsable_resource_versions_are_the_storage_layers_500() {
    let server = start(test_config()).await;
    for (raw, problem) in [
        ("abc", "invalid syntax"),
        ("-1", "invalid syntax"),
        ("undefined", "invalid syntax"),
        ("99999999999999999999", "value out of range"),
    ] {
        for query in [
            format!("resourceVersion={raw}"),
            format!("watch=1&resourceVersion={raw}"),
        ] {
            let (code, _, body) =
                raw_http(&server, "GET", &format!("/api/v1/pods?{query}"), "").await;
            assert_eq!(code, 500, "{query}: {body}");
            assert_eq!(
                body,
                format!(
                    r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"resourceVersion: Invalid value: \"{raw}\": strconv.ParseUint: parsing \"{raw}\": {problem}","code":500}}"#
                ),
                "{query}"
            );
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn list_resource_version_semantics() {
    let server = start(test_config()).await;
    let store = server.store();
    store
        .create("namespaces", None, json!({"metadata": {"name": "lists"}}))
        .expect("namespace");
    let cm = |name: &str, v: &str| json!({"metadata": {"name": name}, "data": {"v": v}});
    store
        .create("configmaps", Some("lists"), cm("a", "1"))
        .expect("a");
    store
        .create("configmaps", Some("lists"), cm("b", "1"))
        .expect("b");
    let at_both = store.resource_version();
    store
        .merge_patch(
            "configmaps",
            Some("lists"),
            "a",
            &json!({"data": {"v": "2"}}),
        )
        .expect("patch");
    store
        .delete("configmaps", Some("lists"), "b")
        .expect("delete");
    let current = store.resource_version();
    let now = vec![("a".to_string(), "2".to_string())];
    let then = vec![
        ("a".to_string(), "1".to_string()),
        ("b".to_string(), "1".to_string()),
    ];
    let path = "/api/v1/namespaces/lists/configmaps";

    // Unset, "0" (any) and R <= current (not older than): the current state.
    for query in [
        String::new(),
        "resourceVersion=0".into(),
        "resourceVersion=0&resourceVersionMatch=NotOlderThan".into(),
        format!("resourceVersion={at_both}"),
        format!("resourceVersion={at_both}&resourceVersionMatch=NotOlderThan"),
    ] {
        let (code, list) = get(&server, &format!("{path}?{query}")).await;
        assert_eq!(code, 200, "{query}: {list}");
        assert_eq!(items(&list), now, "{query}");
        assert_eq!(
            list["metadata"]["resourceVersion"],
            current.to_string(),
            "{query}"
        );
    }

    // Exact (or R with a limit and no match, the legacy rule): the state at R,
    // paginated at R.
    let (code, list) = get(
        &server,
        &format!("{path}?resourceVersion={at_both}&resourceVersionMatch=Exact"),
    )
    .await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(items(&list), then);
    assert_eq!(list["metadata"]["resourceVersion"], at_both.to_string());
    for query in [
        format!("resourceVersion={at_both}&resourceVersionMatch=Exact&limit=1"),
        format!("resourceVersion={at_both}&limit=1"),
    ] {
        let (code, first) = get(&server, &format!("{path}?{query}")).await;
        assert_eq!(code, 200, "{query}: {first}");
        assert_eq!(items(&first), then[..1], "{query}");
        assert_eq!(first["metadata"]["resourceVersion"], at_both.to_string());
        let token = first["metadata"]["continue"].as_str().expect("continue");
        let (code, second) = get(&server, &format!("{path}?limit=1&continue={token}")).await;
        assert_eq!(code, 200, "{second}");
        assert_eq!(items(&second), then[1..], "{query}");
        assert_eq!(second["metadata"]["resourceVersion"], at_both.to_string());
        assert!(second["metadata"].get("continue").is_none());
        let (code, status) = get(
            &server,
            &format!("{path}?limit=1&continue={token}&resourceVersion={at_both}"),
        )
        .await;
        assert_eq!(code, 400, "{status}");
        assert_eq!(
            status["message"],
            "specifying resource version is not allowed when using continue"
        );
    }

    // A version just ahead is waited for, then served.
    let ahead = current + 1;
    let waiting = {
        let server = server.clone();
        tokio::spawn(async move { get(&server, &format!("{path}?resourceVersion={ahead}")).await })
    };
    store
        .create("configmaps", Some("lists"), cm("c", "1"))
        .expect("c");
    let (code, list) = waiting.await.expect("join");
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["metadata"]["resourceVersion"], ahead.to_string());

    // A version that does not come within the wait: 504, for both matches.
    let current = store.resource_version();
    let far = current + 1_000;
    let too_large = format!(
        r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"Timeout: Too large resource version: {far}, current: {current}","reason":"Timeout","details":{{"causes":[{{"reason":"ResourceVersionTooLarge","message":"Too large resource version"}}],"retryAfterSeconds":1}},"code":504}}"#
    );
    let not_older = format!("{path}?resourceVersion={far}");
    let exact = format!("{path}?resourceVersion={far}&resourceVersionMatch=Exact");
    let (a, b) = tokio::join!(
        raw_http(&server, "GET", &not_older, ""),
        raw_http(&server, "GET", &exact, ""),
    );
    for (code, head, body) in [a, b] {
        assert_eq!(code, 504, "{body}");
        assert!(
            head.to_ascii_lowercase().contains("retry-after: 1"),
            "{head}"
        );
        assert_eq!(body, too_large);
    }

    // An exact version that has been compacted away: 410.
    server.faults().compact_history();
    let (code, _, body) = raw_http(
        &server,
        "GET",
        &format!("{path}?resourceVersion={at_both}&resourceVersionMatch=Exact"),
        "",
    )
    .await;
    assert_eq!(code, 410);
    assert_eq!(
        body,
        r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"The resourceVersion for the provided list is too old.","reason":"Expired","code":410}"#
    );
    // Not older than a compacted version is still the current state.
    let (code, list) = get(&server, &format!("{path}?resourceVersion={at_both}")).await;
    assert_eq!(code, 200, "{list}");
    server.shutdown().await;
}

#[tokio::test]
async fn list_options_are_validated_like_validate_list_options() {
    let server = start(test_config()).await;
    let (code, _, body) = raw_http(
        &server,
        "GET",
        "/api/v1/pods?watch=1&resourceVersionMatch=NotOlderThan",
        "",
    )
    .await;
    assert_eq!(code, 422);
    assert_eq!(
        body,
        r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided","reason":"Invalid","details":{"group":"meta.k8s.io","kind":"ListOptions","causes":[{"reason":"FieldValueForbidden","message":"Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided","field":"resourceVersionMatch"}]},"code":422}"#
    );
    let forbidden = |detail: &str| format!("resourceVersionMatch: Forbidden: {detail}");
    let cases: Vec<(&str, Vec<String>)> = vec![
        (
            "watch=1&sendInitialEvents=false",
            vec![forbidden("sendInitialEvents requires setting resourceVersionMatch to NotOlderThan")],
        ),
        (
            "watch=1&sendInitialEvents=true&resourceVersionMatch=Exact",
            vec![
                forbidden("sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"),
                r#"resourceVersionMatch: Unsupported value: "Exact": supported values: "NotOlderThan""#.into(),
            ],
        ),
        (
            "resourceVersionMatch=NotOlderThan",
            vec![forbidden("resourceVersionMatch is forbidden unless resourceVersion is provided")],
        ),
        (
            "resourceVersion=0&resourceVersionMatch=Exact",
            vec![forbidden(r#"resourceVersionMatch "exact" is forbidden for resourceVersion "0""#)],
        ),
        (
            "resourceVersion=5&resourceVersionMatch=Newest",
            vec![r#"resourceVersionMatch: Unsupported value: "Newest": supported values: "Exact", "NotOlderThan", """#.into()],
        ),
        (
            "resourceVersion=5&resourceVersionMatch=Exact&continue=abc",
            vec![forbidden("resourceVersionMatch is forbidden when continue is provided")],
        ),
        (
            "sendInitialEvents=false",
            vec!["sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list".into()],
        ),
    ];
    for (query, errors) in cases {
        let (code, status) = get(&server, &format!("/api/v1/pods?{query}")).await;
        assert_eq!(code, 422, "{query}: {status}");
        assert_eq!(status["reason"], "Invalid", "{query}");
        let aggregate = match errors.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        assert_eq!(
            status["message"],
            format!(r#"ListOptions.meta.k8s.io "" is invalid: {aggregate}"#),
            "{query}"
        );
        let causes = status["details"]["causes"].as_array().expect("causes");
        assert_eq!(causes.len(), errors.len(), "{query}");
    }
    // A legacy /watch/ path is validated by the query's own `watch`: without
    // it the list rules apply.
    let (code, status) = get(
        &server,
        "/api/v1/watch/pods?sendInitialEvents=true&resourceVersionMatch=NotOlderThan",
    )
    .await;
    assert_eq!(code, 422, "{status}");
    assert_eq!(
        status["message"],
        r#"ListOptions.meta.k8s.io "" is invalid: [resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided, sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list]"#
    );
    server.shutdown().await;
}
