//! Discovery, LIST (pagination, selectors) and writes through the real
//! `kube` client.

mod sim_common;

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sim_common::{client, raw_http, rv_of, start, test_config};

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
