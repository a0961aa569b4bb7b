//! Read-only REST: the cluster registry (`/api/clusters`) and Kubernetes
//! GETs (`/clusters/{cluster}/{path}`), answered from a live shared watch's
//! store when one exists, otherwise forwarded to the cluster.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde_json::json;
use tracing::debug;

use super::AppState;
use super::status::{ClusterStatus, is_operator};
use crate::api_path::{self, ApiPath};
use crate::auth::credentials::Credentials;
use crate::auth::policy::{AuthMode, Denied};
use crate::auth::review::ReviewError;
use crate::cluster::Cluster;
use crate::hub::Identity;

fn json_error(code: StatusCode, message: String) -> Response {
    (code, axum::Json(json!({ "error": message }))).into_response()
}

/// A refusal on the Kubernetes path, as the API server words one: a
/// `Status` object. Headlamp shows its `message` (anything else it shows as
/// "Unreachable").
fn status_error(code: StatusCode, message: String) -> Response {
    let reason = match code {
        StatusCode::BAD_REQUEST => "BadRequest",
        StatusCode::UNAUTHORIZED => "Unauthorized",
        StatusCode::FORBIDDEN => "Forbidden",
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::METHOD_NOT_ALLOWED => "MethodNotAllowed",
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
        _ => "InternalError",
    };
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

/// `GET /api/clusters`: every cluster with its health (and, for an
/// operator, its API server).
pub(super) async fn clusters(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let operator = is_operator(&state, &headers);
    axum::Json(ClusterStatus::all(&state, operator)).into_response()
}

/// `GET /api/clusters/{name}`: one cluster, or 404 with a JSON error.
pub(super) async fn cluster(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let operator = is_operator(&state, &headers);
    match state.hub.clusters().get(&name) {
        Some(c) => axum::Json(ClusterStatus::of(&state.hub, &c, operator)).into_response(),
        None => json_error(StatusCode::NOT_FOUND, format!("unknown cluster {name:?}")),
    }
}

/// `GET /clusters/{cluster}/{path}`: a LIST from the cache when a shared
/// watch for that key is live (the cluster sees no request), otherwise the
/// cluster's own answer. Anything but GET is 405: kubemux is read-only.
pub(super) async fn kubernetes(
    State(state): State<AppState>,
    headers: HeaderMap,
    method: Method,
    Path((cluster, path)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    if method != Method::GET {
        let mut resp = status_error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed: kubemux is read-only"),
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return resp;
    }
    if let Some(Err(refused)) = state
        .config
        .headlamp_backend_token
        .as_ref()
        .map(|token| token.check_backend_token(&headers))
    {
        return status_error(StatusCode::FORBIDDEN, refused.to_string());
    }
    let Some(target) = state.hub.clusters().get(&cluster) else {
        return status_error(
            StatusCode::NOT_FOUND,
            format!("unknown cluster {cluster:?}"),
        );
    };
    let full = format!("/{path}");
    // The rules below apply to what this parser read, and what it read is
    // what is forwarded: no second reading of the path exists.
    let parsed = match api_path::parse(&full) {
        Ok(parsed) => parsed,
        Err(e) => {
            return status_error(
                StatusCode::BAD_REQUEST,
                format!("not a Kubernetes API path kubemux serves: {e}"),
            );
        }
    };
    let query = query.unwrap_or_default();
    let credentials = Credentials::from_headers(&headers);
    let identity = match state
        .config
        .policy
        .identity_for_path(&credentials, &cluster, &parsed)
    {
        Ok(identity) => identity,
        Err(denied @ Denied::NoCredentials(_)) => {
            return status_error(StatusCode::UNAUTHORIZED, denied.to_string());
        }
        Err(denied) => return status_error(StatusCode::FORBIDDEN, denied.to_string()),
    };
    // `shared` forwards with kubemux's identity, so every GET is reviewed.
    // `passthrough` forwards with the caller's token and the cluster
    // decides, but a LIST from a shared watch's store reaches the cluster
    // not at all: that answer is reviewed like `shared` mode's.
    let reviewed = state.config.policy.mode() == AuthMode::Shared;
    if reviewed && let Err(refusal) = review(&state, &target, &credentials, &full, &parsed).await {
        return refusal;
    }
    if let Some(list) = state.hub.cached_list(&cluster, &full, &query, &identity) {
        if !reviewed
            && let Err(refusal) = review(&state, &target, &credentials, &full, &parsed).await
        {
            return refusal;
        }
        debug!(cluster = %cluster, path = %full, "LIST served from a shared watch");
        return ([(header::CONTENT_TYPE, "application/json")], list.to_json()).into_response();
    }
    let uri = if query.is_empty() {
        full
    } else {
        format!("{full}?{query}")
    };
    let request = match http::Request::get(&uri)
        .header(header::ACCEPT, "application/json")
        .body(kube::client::Body::empty())
    {
        Ok(r) => r,
        Err(e) => return status_error(StatusCode::BAD_REQUEST, format!("invalid request: {e}")),
    };
    let client = match &identity {
        Identity::Proxy => target.client(),
        Identity::Bearer(token) => match target.client_for_token(token) {
            Ok(client) => client,
            Err(e) => {
                return status_error(
                    StatusCode::BAD_GATEWAY,
                    format!("cannot act as the caller: {e}"),
                );
            }
        },
    };
    match client.send(request).await {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            let mut out = Response::new(Body::from_stream(body.into_data_stream()));
            *out.status_mut() = parts.status;
            if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
                out.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
            }
            out
        }
        Err(e) => status_error(
            StatusCode::BAD_GATEWAY,
            format!("cluster {cluster:?} did not answer: {e}"),
        ),
    }
}

/// The mode's review of a GET of `full` (parsed as `path`), as an error
/// response when refused: `list` and `watch` of a resource's collection,
/// or for discovery `get` of the URL, a non-resource URL to Kubernetes.
async fn review(
    state: &AppState,
    target: &Cluster,
    credentials: &Credentials,
    full: &str,
    path: &ApiPath,
) -> Result<(), Response> {
    let Some((reviewer, _)) = state.config.policy.review() else {
        return Ok(());
    };
    let token = credentials.token_for(target.id());
    match path.collection() {
        Some(collection) => reviewer.check(target, token, collection, false).await,
        None => reviewer.check_path(target, token, full, false).await,
    }
    .map(|_| ())
    .map_err(|e| {
        let code = match e {
            ReviewError::NoCredentials(_) | ReviewError::Unauthenticated { .. } => {
                StatusCode::UNAUTHORIZED
            }
            ReviewError::Forbidden { .. } | ReviewError::ForbiddenPath { .. } => {
                StatusCode::FORBIDDEN
            }
            ReviewError::Unavailable { .. } => StatusCode::BAD_GATEWAY,
        };
        status_error(code, e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::status_error;
    use axum::http::StatusCode;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn refusals_are_kubernetes_status_objects() {
        let resp = status_error(StatusCode::FORBIDDEN, "secrets are not served".into());
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["kind"], "Status");
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["metadata"], serde_json::json!({}));
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["message"], "secrets are not served");
        assert_eq!(v["reason"], "Forbidden");
        assert_eq!(v["code"], 403);
    }
}
