//! The axum router: discovery, resources, `/metrics` and the `/_sim/` fault
//! and churn controls.
//!
//! Every route except `/metrics` and `/_sim/` passes the authentication
//! middleware ([`crate::access::authenticate`]), which stores the
//! caller's [`Identity`] as a request extension for [`crate::api`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};

use crate::access::{self, Identity};
use crate::api::{self, ApiRequest};
use crate::auth::Auth;
use crate::churn::ChurnControl;
use crate::discovery;
use crate::error::ApiError;
use crate::faults::Faults;
use crate::metrics::Metrics;
use crate::resource_metrics;
use crate::store::Store;

/// Largest request body accepted (objects are small).
const MAX_BODY: usize = 8 * 1024 * 1024;

/// Server-wide watch settings taken from [`crate::SimConfig`].
#[derive(Debug, Clone, Copy)]
pub struct WatchSettings {
    /// Maximum lifetime of any watch.
    pub watch_timeout: Duration,
    /// Interval between BOOKMARK events when the client allows them.
    pub bookmark_interval: Duration,
}

/// Shared state of every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The object store.
    pub store: Arc<Store>,
    /// Request and watch metrics.
    pub metrics: Arc<Metrics>,
    /// Fault switches.
    pub faults: Arc<Faults>,
    /// Churn rate control.
    pub churn: ChurnControl,
    /// The address clients reach the server at.
    pub addr: SocketAddr,
    /// Watch timeouts and bookmark cadence.
    pub settings: WatchSettings,
    /// Tokens and rules (authentication may be disabled).
    pub auth: Arc<Auth>,
    /// Pod logs.
    pub logs: Arc<crate::logs::Logs>,
    /// Whether `metrics.k8s.io` is served.
    pub resource_metrics: Arc<crate::resource_metrics::ResourceMetrics>,
}

/// Builds the complete router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/version",
            get(|| async { axum::Json(discovery::version()) }),
        )
        .route("/api", get(api_versions))
        .route("/apis", get(api_groups))
        .route(
            "/apis/metrics.k8s.io/v1beta1",
            get(resource_metrics::resources),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/nodes",
            get(resource_metrics::nodes),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/pods",
            get(resource_metrics::all_pods),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods",
            get(resource_metrics::namespace_pods),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/log",
            get(crate::logs::handler),
        )
        .route("/api/{*rest}", any(core_api))
        .route("/apis/{*rest}", any(group_api))
        .route("/metrics", get(metrics))
        .nest("/_sim", crate::admin::router())
        .fallback(|| async { ApiError::unknown_resource() })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::authenticate,
        ))
        .with_state(state)
}

/// `/apis`: the table's groups, and `metrics.k8s.io` while it is served.
async fn api_groups(State(app): State<AppState>) -> Response {
    let mut list = discovery::api_group_list();
    if app.resource_metrics.served()
        && let Some(groups) = list["groups"].as_array_mut()
    {
        groups.push(resource_metrics::group_entry());
    }
    axum::Json(list).into_response()
}

async fn api_versions(State(app): State<AppState>) -> Response {
    axum::Json(discovery::api_versions(app.addr)).into_response()
}

async fn metrics(State(app): State<AppState>) -> Response {
    let mut response = app.metrics.encode().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

async fn core_api(State(app): State<AppState>, request: Request) -> Response {
    resource_request(&app, true, request).await
}

async fn group_api(State(app): State<AppState>, request: Request) -> Response {
    resource_request(&app, false, request).await
}

async fn resource_request(app: &AppState, core: bool, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Some(Identity(user)) = parts.extensions.get::<Identity>().cloned() else {
        return ApiError::unauthorized().into_response();
    };
    let prefix = if core { "/api" } else { "/apis" };
    let rest = parts
        .uri
        .path()
        .strip_prefix(prefix)
        .unwrap_or("")
        .to_string();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(e) => {
            return ApiError::bad_request(format!("reading the request body: {e}")).into_response();
        }
    };
    api::handle(
        app,
        ApiRequest {
            core,
            rest,
            query: parts.uri.query().map(str::to_string),
            method: parts.method,
            headers: parts.headers,
            body,
            user,
        },
    )
    .await
}
