//! Read-only REST: the cluster registry (`/api/clusters`) and Kubernetes
//! GETs (`/clusters/{cluster}/{path}`), answered from a live shared watch's
//! store when one exists, otherwise forwarded to the cluster.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use serde_json::json;
use tracing::debug;

use super::AppState;
use super::status::{ClusterStatus, is_operator};
use crate::auth::credentials::Credentials;
use crate::auth::policy::{AuthMode, Denied};
use crate::auth::review::ReviewError;
use crate::cluster::Cluster;
use crate::dialect::sink::{Deliver, Sink};
use crate::hub::{EndReason, Identity, SubscribeRequest, Subscription};
use crate::upstream::event::WatchEvent;
use crate::ws::outbound::{Frame, Out, Outbound, Replay};
use kubemux_vocab::path::{self, ApiPath};

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
    if let Err(refused) = state.check_backend_token(&headers) {
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
    let parsed = match path::parse(&full) {
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
    let metrics = state.hub.metrics().clone();
    let request = match &parsed {
        _ if asks_watch(&query) => "watch",
        ApiPath::Resource {
            name: None,
            subresource: None,
            ..
        } => "list",
        _ => "get",
    };
    if request == "watch"
        && numeric_version(&query)
        && state.hub.has_live_watch(&cluster, &full, &query, &identity)
    {
        if !reviewed
            && let Err(refusal) = review(&state, &target, &credentials, &full, &parsed).await
        {
            return refusal;
        }
        if let Some(stream) = watch_stream(&state, &cluster, &full, &query, &identity) {
            debug!(cluster = %cluster, path = %full, "watch served from a shared watch");
            metrics.rest(request, "shared_watch");
            return stream;
        }
    }
    if request == "list"
        && let Some(list) = state.hub.cached_list(&cluster, &full, &query, &identity)
    {
        if !reviewed
            && let Err(refusal) = review(&state, &target, &credentials, &full, &parsed).await
        {
            return refusal;
        }
        debug!(cluster = %cluster, path = %full, "LIST served from a shared watch");
        metrics.rest(request, "shared_watch");
        return ([(header::CONTENT_TYPE, "application/json")], list.to_json()).into_response();
    }
    metrics.rest(request, "cluster");
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

/// Whether a GET asks for a watch stream: its `watch` parameter is true as
/// the API server reads it (Go's `strconv.ParseBool`, first value).
fn asks_watch(query: &str) -> bool {
    first(query, "watch")
        .is_some_and(|value| matches!(value.as_ref(), "1" | "t" | "T" | "true" | "TRUE" | "True"))
}

/// Whether a watch's `resourceVersion` is unset or a number: any other the
/// API server refuses before it streams (an HTTP 500, not an in-band
/// event), and a cluster with opaque versions is the one to place it, so
/// either way it is the cluster's to answer.
fn numeric_version(query: &str) -> bool {
    first(query, "resourceVersion").is_none_or(|rv| rv.is_empty() || rv.parse::<u64>().is_ok())
}

/// The first value of a query parameter.
fn first<'q>(query: &'q str, name: &str) -> Option<std::borrow::Cow<'q, str>> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(n, _)| n == name)
        .map(|(_, value)| value)
}

/// A watch stream served by a hub subscription, in the API server's wire
/// format: a chunked `application/json` body of one
/// `{"type":…,"object":…}` line per event. The subscription has every
/// semantic of a dialect's (resume from the history or a backfill, the
/// cluster's 410 as an in-band `ERROR`, bookmarks, `timeoutSeconds`,
/// `sendInitialEvents`); the events wait in an [`Outbound`] queue with the
/// WebSocket connections' bounds, so a reader too slow for them is ended as
/// a slow consumer, as the API server ends a watcher that cannot keep up: the
/// response ends cleanly after what was queued, and the client watches
/// again from the last version it read. `None` when the hub refuses the
/// subscription (the cluster then answers).
fn watch_stream(
    state: &AppState,
    cluster: &str,
    path: &str,
    query: &str,
    identity: &Identity,
) -> Option<Response> {
    let outbound = Arc::new(Outbound::new(
        state.config.queue,
        state.hub.metrics().clone(),
    ));
    let sink = Arc::new(Sink(WatchSink {
        outbound: outbound.clone(),
    }));
    let request = SubscribeRequest {
        cluster,
        path,
        query,
        identity,
    };
    let subscription = match state.hub.subscribe(request, sink) {
        Ok(subscription) => subscription,
        Err(e) => {
            debug!(cluster = %cluster, path = %path, error = %e, "watch not served from a shared watch");
            outbound.shut();
            return None;
        }
    };
    let body = WatchBody {
        outbound,
        pending: std::collections::VecDeque::new(),
        _subscription: subscription,
        done: false,
    };
    let stream = futures::stream::unfold(body, |mut body| async move {
        let chunk = body.next_chunk().await?;
        Some((Ok::<Bytes, std::convert::Infallible>(chunk), body))
    });
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Some(response)
}

/// Bytes of a replay sent per chunk of a REST watch's body.
const REPLAY_CHUNK: usize = 64 * 1024;

/// The hub's side of a REST watch: each event's line, newline-terminated,
/// into the response's queue.
struct WatchSink {
    outbound: Arc<Outbound>,
}

impl WatchSink {
    fn line(event: &WatchEvent) -> Frame {
        Frame::from_parts([
            event.line().clone(),
            Bytes::from_static(b"\n"),
            Bytes::new(),
            Bytes::new(),
        ])
    }
}

impl Deliver for WatchSink {
    type Lane = Arc<Outbound>;

    fn lane(&self) -> &Arc<Outbound> {
        &self.outbound
    }

    fn event(&self, event: &Arc<WatchEvent>) -> Frame {
        Self::line(event)
    }

    fn replay(&self, events: Vec<Arc<WatchEvent>>) -> Replay {
        Replay::new(events.into_iter().map(|event| Self::line(&event)))
    }

    /// The API server says nothing in a watch stream about its own
    /// trouble reaching etcd; neither does kubemux (the stream continues).
    fn problem(&self, message: &str) -> Option<Frame> {
        debug!(%message, "upstream trouble during a REST watch");
        None
    }

    /// Ends the response: cleanly (its timeout, the cluster's 410 already
    /// sent, a slow reader, shutdown), or after an in-band `ERROR` Status
    /// naming why the watch cannot go on.
    fn end(&self, reason: EndReason) -> Vec<Frame> {
        match reason {
            EndReason::Failed(message) => {
                vec![Self::line(&WatchEvent::status(
                    500,
                    "InternalError",
                    &message,
                ))]
            }
            _ => Vec::new(),
        }
    }

    fn ended(&self) {
        self.outbound.close_with(1000, "");
    }
}

/// The response body of a REST watch; dropping it (the client went away,
/// or the stream ended) unsubscribes and releases what is still queued.
struct WatchBody {
    outbound: Arc<Outbound>,
    /// Taken from the queue, not yet sent (the rest of a replay).
    pending: std::collections::VecDeque<Out>,
    _subscription: Subscription,
    done: bool,
}

impl WatchBody {
    /// What is queued, as one chunk (a replay in pieces of about
    /// [`REPLAY_CHUNK`] bytes); `None` once the subscription ended.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if self.pending.is_empty() {
            let mut batch = Vec::new();
            self.outbound.next_batch(&mut batch).await;
            self.pending.extend(batch);
        }
        let mut chunk = BytesMut::new();
        while let Some(out) = self.pending.pop_front() {
            match out {
                Out::Text(frame) => {
                    for part in frame.parts() {
                        chunk.extend_from_slice(part);
                    }
                }
                Out::Replay(mut replay) => {
                    for frame in replay.by_ref() {
                        for part in frame.parts() {
                            chunk.extend_from_slice(part);
                        }
                        if chunk.len() >= REPLAY_CHUNK {
                            break;
                        }
                    }
                    if chunk.len() >= REPLAY_CHUNK {
                        self.pending.push_front(Out::Replay(replay));
                        break;
                    }
                }
                Out::Close(..) => {
                    self.done = true;
                    break;
                }
                Out::Ping => {}
            }
        }
        if chunk.is_empty() && self.done {
            return None;
        }
        Some(chunk.freeze())
    }
}

impl Drop for WatchBody {
    fn drop(&mut self) {
        self.outbound.shut();
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
        Some(collection) => reviewer
            .check(target, token, collection, false)
            .await
            .map(|_| ()),
        None => match reviewer.bearer(target, token, false).await {
            Ok(user) => reviewer.check_path(target, &user, full, false).await,
            Err(e) => Err(e),
        },
    }
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
