//! Pod logs: `GET /api/v1/namespaces/{ns}/pods/{name}/log` with
//! `container`, `tailLines` and `follow`, as the kubelet serves them through
//! the API server (plain text, one line per entry).
//!
//! Every container starts with a few deterministic lines; tests append more
//! with [`Logs::append`], and followers receive them live. Open streams are
//! counted (`sim_log_streams` on the simulator's `/metrics`) so a test can
//! see a client's request end.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::access::Identity;
use crate::error::ApiError;
use crate::http::AppState;
use crate::rbac::Attributes;
use crate::resources;

/// Lines every container has before anything is appended.
const INITIAL_LINES: usize = 10;

/// (namespace, pod, container).
type LogKey = (String, String, String);

/// The log lines of every container, and live followers.
#[derive(Debug)]
pub struct Logs {
    lines: Mutex<HashMap<LogKey, Vec<String>>>,
    appended: broadcast::Sender<(LogKey, String)>,
    open: Gauge,
}

fn initial_lines(pod: &str, container: &str) -> Vec<String> {
    let levels = ["INFO", "INFO", "DEBUG", "WARN", "INFO"];
    (0..INITIAL_LINES)
        .map(|i| {
            format!(
                "2026-01-01T00:00:{i:02}Z {} {pod}/{container} handled request {i}",
                levels[i % levels.len()]
            )
        })
        .collect()
}

impl Logs {
    /// No logs yet; open streams are counted in `open` (`sim_log_streams`).
    pub fn new(open: Gauge) -> Self {
        Logs {
            lines: Mutex::default(),
            appended: broadcast::channel(4096).0,
            open,
        }
    }

    /// Appends a line to a container's log and hands it to its followers.
    pub fn append(&self, namespace: &str, pod: &str, container: &str, line: &str) {
        let key = (
            namespace.to_string(),
            pod.to_string(),
            container.to_string(),
        );
        let mut lines = self.lines.lock();
        lines
            .entry(key.clone())
            .or_insert_with(|| initial_lines(pod, container))
            .push(line.to_string());
        let _ = self.appended.send((key, line.to_string()));
    }

    /// Log streams (follow or not) currently being served.
    pub fn open_streams(&self) -> i64 {
        self.open.get()
    }

    /// The last `tail` lines (all if `None`), and a receiver of later ones
    /// subscribed before the snapshot so nothing falls in between.
    fn snapshot(
        &self,
        key: &LogKey,
        tail: Option<usize>,
    ) -> (Vec<String>, broadcast::Receiver<(LogKey, String)>) {
        let mut lines = self.lines.lock();
        let receiver = self.appended.subscribe();
        let all = lines
            .entry(key.clone())
            .or_insert_with(|| initial_lines(&key.1, &key.2));
        let skip = tail.map_or(0, |t| all.len().saturating_sub(t));
        (all[skip..].to_vec(), receiver)
    }
}

/// Decrements the open-stream count when the response body is dropped
/// (the client went away or the stream ended).
struct OpenStream(Gauge);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The query of a log request.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct LogQuery {
    /// Container name; may be omitted for a single-container pod.
    pub container: Option<String>,
    /// Keep streaming new lines.
    #[serde(default)]
    pub follow: Option<String>,
    /// Only the last N lines.
    pub tail_lines: Option<i64>,
}

/// `GET /api/v1/namespaces/{ns}/pods/{name}/log`.
pub async fn handler(
    State(app): State<AppState>,
    Path((namespace, pod)): Path<(String, String)>,
    Query(query): Query<LogQuery>,
    request: Request,
) -> Response {
    serve(&app, &namespace, &pod, query, &request).unwrap_or_else(IntoResponse::into_response)
}

fn serve(
    app: &AppState,
    namespace: &str,
    pod: &str,
    query: LogQuery,
    request: &Request,
) -> Result<Response, ApiError> {
    let Some(Identity(user)) = request.extensions().get::<Identity>().cloned() else {
        return Err(ApiError::unauthorized());
    };
    let def = resources::by_plural("pods").ok_or_else(ApiError::unknown_resource)?;
    let attrs = Attributes {
        user: user.username.clone(),
        groups: user.groups.clone(),
        verb: "get".into(),
        api_group: String::new(),
        resource: "pods".into(),
        subresource: Some("log".into()),
        namespace: Some(namespace.to_string()),
        name: Some(pod.to_string()),
    };
    app.metrics.user_request(&attrs.user, "get", "pods/log");
    if !app.auth.authorize(&attrs).allowed {
        return Err(ApiError::forbidden(def, &attrs));
    }
    let object = app.store.get("pods", Some(namespace), pod)?;
    let containers = container_names(&object);
    let container = match query.container.filter(|c| !c.is_empty()) {
        Some(c) if containers.contains(&c) => c,
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {pod}"
            )));
        }
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {pod}, choose one of: {containers:?}"
            )));
        }
    };
    let tail = match query.tail_lines {
        Some(n) if n < 0 => return Err(ApiError::bad_request("tailLines must be >= 0")),
        Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        None => None,
    };
    let follow = matches!(query.follow.as_deref(), Some("true" | "1"));
    let key = (namespace.to_string(), pod.to_string(), container);
    let (lines, receiver) = app.logs.snapshot(&key, tail);
    app.logs.open.inc();
    let guard = OpenStream(app.logs.open.clone());
    let head = futures::stream::iter(
        lines
            .into_iter()
            .map(|l| Ok::<Bytes, std::convert::Infallible>(Bytes::from(l + "\n"))),
    );
    let live = futures::stream::unfold(
        (follow.then_some(receiver), key, guard),
        |(receiver, key, guard)| async move {
            let mut receiver = receiver?;
            loop {
                match receiver.recv().await {
                    Ok((k, line)) if k == key => {
                        return Some((Ok(Bytes::from(line + "\n")), (Some(receiver), key, guard)));
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    );
    let body = Body::from_stream(futures::StreamExt::chain(head, live));
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(response)
}

fn container_names(pod: &Value) -> Vec<String> {
    pod["spec"]["containers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
