//! `metrics.k8s.io/v1beta1`, as metrics-server serves it: NodeMetrics and
//! PodMetrics (get and list only, no watch), with usage derived
//! deterministically from the population (a share of each pod's requests,
//! plus a base load per node). It can be switched off to look like a
//! cluster without metrics-server.

use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::access::Identity;
use crate::error::ApiError;
use crate::http::AppState;
use crate::rbac::Attributes;
use crate::resources::ResourceDef;
use crate::time::now_rfc3339;

/// The API group.
pub const GROUP: &str = "metrics.k8s.io";
/// Its only version.
pub const VERSION: &str = "v1beta1";
/// Share of a pod's requests it uses.
const USE_OF_REQUESTS: f64 = 0.5;
/// What a node uses without any pod: cores and bytes.
const NODE_BASE: (f64, f64) = (0.1, 256.0 * 1048576.0);

static NODE_METRICS: ResourceDef = def("nodes", "NodeMetrics", false);
static POD_METRICS: ResourceDef = def("pods", "PodMetrics", true);

const fn def(plural: &'static str, kind: &'static str, namespaced: bool) -> ResourceDef {
    ResourceDef {
        group: GROUP,
        version: VERSION,
        plural,
        kind,
        namespaced,
        extra_fields: &[],
        delete_returns_object: false,
        create_only: false,
    }
}

/// Whether the group is served.
#[derive(Debug)]
pub struct ResourceMetrics {
    served: AtomicBool,
}

impl Default for ResourceMetrics {
    fn default() -> Self {
        ResourceMetrics {
            served: AtomicBool::new(true),
        }
    }
}

impl ResourceMetrics {
    /// Serves the group (the default) or answers 404 like a cluster
    /// without metrics-server.
    pub fn set_served(&self, served: bool) {
        self.served.store(served, Ordering::SeqCst);
    }

    /// Whether the group is served.
    pub fn served(&self) -> bool {
        self.served.load(Ordering::SeqCst)
    }
}

/// The group's entry in `/apis`.
pub fn group_entry() -> Value {
    let version = json!({"groupVersion": format!("{GROUP}/{VERSION}"), "version": VERSION});
    json!({"name": GROUP, "versions": [version.clone()], "preferredVersion": version})
}

fn quantity(v: &Value) -> f64 {
    v.as_str().and_then(kubemux_vocab::quantity).unwrap_or(0.0)
}

/// A container's usage: cores and bytes.
fn container_usage(container: &Value) -> (f64, f64) {
    let requests = &container["resources"]["requests"];
    (
        quantity(&requests["cpu"]) * USE_OF_REQUESTS,
        quantity(&requests["memory"]) * USE_OF_REQUESTS,
    )
}

fn usage_json(cores: f64, bytes: f64) -> Value {
    json!({"cpu": format!("{}n", (cores * 1e9).round() as u64),
           "memory": format!("{}Ki", (bytes / 1024.0).round() as u64)})
}

fn running(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running"
}

fn check(
    app: &AppState,
    request: &Request,
    resource: &str,
    namespace: Option<&str>,
) -> Result<(), ApiError> {
    if !app.resource_metrics.served() {
        return Err(ApiError::unknown_resource());
    }
    let Some(Identity(user)) = request.extensions().get::<Identity>().cloned() else {
        return Err(ApiError::unauthorized());
    };
    let attrs = Attributes {
        user: user.username.clone(),
        groups: user.groups.clone(),
        verb: "list".into(),
        api_group: GROUP.into(),
        resource: resource.into(),
        subresource: None,
        namespace: namespace.map(str::to_string),
        name: None,
    };
    app.metrics.user_request(&attrs.user, "list", resource);
    if app.auth.authorize(&attrs).allowed {
        Ok(())
    } else {
        let def = if resource == "nodes" {
            &NODE_METRICS
        } else {
            &POD_METRICS
        };
        Err(ApiError::forbidden(def, &attrs))
    }
}

fn list(kind: &str, items: Vec<Value>) -> Response {
    Json(json!({
        "kind": format!("{kind}List"),
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {},
        "items": items,
    }))
    .into_response()
}

/// `GET /apis/metrics.k8s.io/v1beta1`.
pub async fn resources(State(app): State<AppState>) -> Response {
    if !app.resource_metrics.served() {
        return ApiError::unknown_resource().into_response();
    }
    let resource = |name: &str, kind: &str, namespaced: bool| json!({"name": name, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": ["get", "list"]});
    Json(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": [resource("nodes", "NodeMetrics", false), resource("pods", "PodMetrics", true)],
    }))
    .into_response()
}

/// `GET /apis/metrics.k8s.io/v1beta1/nodes`.
pub async fn nodes(State(app): State<AppState>, request: Request) -> Response {
    node_metrics(&app, &request).unwrap_or_else(IntoResponse::into_response)
}

fn node_metrics(app: &AppState, request: &Request) -> Result<Response, ApiError> {
    check(app, request, "nodes", None)?;
    let (nodes, _) = app.store.list("nodes", None, None, None)?;
    let (pods, _) = app.store.list("pods", None, None, None)?;
    let items = nodes
        .iter()
        .map(|node| {
            let name = node["metadata"]["name"].as_str().unwrap_or_default();
            let (cores, bytes) = pods
                .iter()
                .filter(|p| running(p) && p["spec"]["nodeName"] == name)
                .flat_map(|p| {
                    p["spec"]["containers"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .map(|c| container_usage(&c))
                .fold(NODE_BASE, |a, u| (a.0 + u.0, a.1 + u.1));
            json!({
                "metadata": {"name": name, "creationTimestamp": now_rfc3339()},
                "timestamp": now_rfc3339(),
                "window": "20s",
                "usage": usage_json(cores, bytes),
            })
        })
        .collect();
    Ok(list("NodeMetrics", items))
}

/// `GET /apis/metrics.k8s.io/v1beta1/pods`.
pub async fn all_pods(State(app): State<AppState>, request: Request) -> Response {
    pod_metrics(&app, &request, None).unwrap_or_else(IntoResponse::into_response)
}

/// `GET /apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods`.
pub async fn namespace_pods(
    State(app): State<AppState>,
    Path(namespace): Path<String>,
    request: Request,
) -> Response {
    pod_metrics(&app, &request, Some(&namespace)).unwrap_or_else(IntoResponse::into_response)
}

fn pod_metrics(
    app: &AppState,
    request: &Request,
    namespace: Option<&str>,
) -> Result<Response, ApiError> {
    check(app, request, "pods", namespace)?;
    let (pods, _) = app.store.list("pods", namespace, None, None)?;
    let items = pods
        .iter()
        .filter(|p| running(p))
        .map(|pod| {
            let containers: Vec<Value> = pod["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    let (cores, bytes) = container_usage(c);
                    json!({"name": c["name"], "usage": usage_json(cores, bytes)})
                })
                .collect();
            json!({
                "metadata": {"name": pod["metadata"]["name"], "namespace": pod["metadata"]["namespace"],
                             "labels": pod["metadata"]["labels"], "creationTimestamp": now_rfc3339()},
                "timestamp": now_rfc3339(),
                "window": "20s",
                "containers": containers,
            })
        })
        .collect();
    Ok(list("PodMetrics", items))
}
