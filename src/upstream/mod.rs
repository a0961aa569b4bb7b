//! One upstream watch against one cluster: LIST (paginated), WATCH from the
//! listed version, silent re-watch when the server ends the stream, relist on
//! `410 Gone`, exponential backoff on failures.
//!
//! Like kube-runtime's `watcher`, this module knows nothing of subscribers: it
//! reports what happens to a [`WatchSink`], and the hub decides what clients see.

mod backoff;
pub mod event;

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tracing::{debug, info, warn};

pub use backoff::Backoff;
use event::{EventType, ListPage, ParseError, WatchEvent};

/// What to watch: a collection path and its selectors on one cluster.
#[derive(Clone)]
pub struct WatchTarget {
    /// Client for the cluster, carrying the identity the watch runs as.
    pub client: kube::Client,
    /// Collection path, e.g. `/api/v1/namespaces/default/pods`.
    pub path: String,
    /// Canonical selector query (`fieldSelector=…&labelSelector=…`), may be empty.
    pub selectors: String,
}

/// Timing and paging of upstream requests.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// Items per LIST page.
    pub page_size: u32,
    /// `timeoutSeconds` asked of the API server for each watch request.
    pub watch_timeout: Duration,
    /// A watch that delivers nothing (not even a bookmark) for this long is
    /// considered stalled and re-established.
    pub idle_timeout: Duration,
    /// First retry delay after a failure.
    pub backoff_initial: Duration,
    /// Largest retry delay.
    pub backoff_max: Duration,
    /// Delay before re-watching after the server ended a watch normally.
    pub rewatch_delay: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            page_size: 500,
            watch_timeout: Duration::from_secs(290),
            idle_timeout: Duration::from_secs(320),
            backoff_initial: Duration::from_millis(800),
            backoff_max: Duration::from_secs(30),
            rewatch_delay: Duration::from_millis(100),
        }
    }
}

/// A complete listing of the collection (first list, or relist after `410`).
#[derive(Debug)]
pub struct Listing {
    /// Kind of the items, e.g. `Pod`.
    pub item_kind: String,
    /// `apiVersion` of the items.
    pub api_version: String,
    /// resourceVersion the listing is consistent at.
    pub resource_version: String,
    /// Every object, as `ADDED` events.
    pub objects: Vec<WatchEvent>,
}

/// Receives what happens to an upstream watch. Calls come from the watch's own
/// task, in order, and must not block.
pub trait WatchSink: Send + Sync + 'static {
    /// A full listing replaces what was known. `Break` ends the watch before
    /// its WATCH request is sent: nobody needs it any more (the only
    /// subscribers were answered from the listing alone).
    fn listed(&self, listing: Listing) -> ControlFlow<()>;
    /// A live event.
    fn event(&self, event: WatchEvent);
    /// The server reported progress to `resource_version` without a change.
    fn bookmark(&self, resource_version: &str);
    /// A watch request was answered; events follow. Also the end of any outage.
    fn watch_started(&self);
    /// A failure that will be retried after `retry_in`.
    fn degraded(&self, error: &UpstreamError, retry_in: Duration);
    /// A failure that will not be retried; the watch has ended.
    fn failed(&self, error: UpstreamError);
}

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The API server answered with an error status.
    #[error("the API server answered {code} {reason}: {message}")]
    Status {
        /// HTTP status code.
        code: u16,
        /// Machine-readable reason from the `Status` object.
        reason: String,
        /// Human-readable message from the `Status` object.
        message: String,
        /// The server's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
    /// No answer: connection refused, reset, TLS failure and the like.
    #[error("cannot reach the API server: {0}")]
    Transport(String),
    /// The server's bytes were not a watch stream or list.
    #[error("unreadable answer from the API server: {0}")]
    Parse(#[from] ParseError),
    /// Nothing arrived for longer than the idle timeout.
    #[error("the watch stalled: nothing received for {0:?}")]
    Stalled(Duration),
}

impl UpstreamError {
    /// Whether retrying cannot help: the path does not exist, access is
    /// denied, or the request itself is invalid.
    pub fn is_permanent(&self) -> bool {
        matches!(self, UpstreamError::Status { code, .. } if matches!(code, 400 | 401 | 403 | 404 | 405 | 406 | 422))
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            UpstreamError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the server said the requested version is too old (410).
    pub fn is_expired(&self) -> bool {
        matches!(self, UpstreamError::Status { code: 410, .. })
    }
}

/// How one watch request ended without an error.
enum WatchEnd {
    /// The server closed the stream (timeout): re-watch from the last version.
    Closed,
    /// The server said the version is too old (its in-band `ERROR` event,
    /// kept verbatim): relist.
    Expired(WatchEvent),
}

/// How a [`follow`] ended.
#[derive(Debug)]
pub enum FollowEnd {
    /// The API server no longer serves the version (410): its own `Status`
    /// as an in-band `ERROR` event, to be relayed as it is.
    Expired(WatchEvent),
    /// Any other failure that retrying cannot fix.
    Failed(UpstreamError),
}

/// Runs the watch until it fails permanently. Cancel by dropping the future
/// (the hub aborts the task); the open request is dropped with it.
///
/// `list_at` is the version the first subscriber holds: the first LIST asks
/// for the collection exactly as it was then (`resourceVersionMatch=Exact`)
/// and the watch continues from it, so that subscriber resumes exactly and
/// without a 410. If the API server cannot list at that version (compacted,
/// or an old server), the first LIST is an ordinary one.
pub async fn run(
    target: WatchTarget,
    config: UpstreamConfig,
    sink: Arc<dyn WatchSink>,
    list_at: Option<u64>,
) {
    let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
    let mut version: Option<String> = None;
    let mut list_at = list_at;
    loop {
        let step = match &version {
            None => {
                let listed = match list_at.take() {
                    Some(at) => match list_all(&target, &config, Some(at)).await {
                        Ok(listing) => Ok(listing),
                        Err(err) => {
                            debug!(path = %target.path, at, error = %err, "cannot list at the subscriber's version; listing the current state");
                            list_all(&target, &config, None).await
                        }
                    },
                    None => list_all(&target, &config, None).await,
                };
                match listed {
                    Ok(listing) => {
                        version = Some(listing.resource_version.clone());
                        if sink.listed(listing).is_break() {
                            return;
                        }
                        Ok(None)
                    }
                    Err(err) => Err(err),
                }
            }
            Some(_) => watch_once(&target, &config, &mut version, &*sink)
                .await
                .map(Some),
        };
        match step {
            Ok(None) => backoff.reset(),
            Ok(Some(WatchEnd::Closed)) => {
                backoff.reset();
                let jitter = config.rewatch_delay.mul_f64(rand::random_range(0.5..1.5));
                tokio::time::sleep(jitter).await;
            }
            Ok(Some(WatchEnd::Expired(_))) => {
                debug!(path = %target.path, "upstream version expired, relisting");
                version = None;
            }
            Err(err) if err.is_expired() => {
                debug!(path = %target.path, "upstream answered 410, relisting");
                version = None;
            }
            Err(err) if err.is_permanent() => {
                warn!(path = %target.path, error = %err, "upstream watch failed permanently");
                sink.failed(err);
                return;
            }
            Err(err) => {
                let delay = backoff.next_delay(err.retry_after());
                info!(path = %target.path, error = %err, retry_in = ?delay, "upstream watch failed, retrying");
                sink.degraded(&err, delay);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Whether an error status answering the first request of a [`follow`] is
/// retried like any other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstAnswer {
    /// Retry transient statuses (429, 5xx): the version is known to be one
    /// the server understands (an integer on an etcd-backed cluster).
    Retry,
    /// Any error status is final: it is about the version asked for, which
    /// the server may not understand (it answers 500 to an unparsable one),
    /// and asking again would loop forever.
    Final,
}

/// Follows the watch from `version` without listing: a backfill of events
/// older than a shared cache holds, or a client's version the cache cannot
/// place. Re-watches silently when the server ends the stream and backs off
/// on transient failures (see [`FirstAnswer`] for the first request).
/// Cancel by dropping the future.
pub async fn follow(
    target: WatchTarget,
    config: UpstreamConfig,
    version: String,
    sink: Arc<dyn WatchSink>,
    first_answer: FirstAnswer,
) -> FollowEnd {
    let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
    let mut version = Some(version);
    let mut answered = false;
    loop {
        let first = !answered;
        answered = true;
        match watch_once(&target, &config, &mut version, &*sink).await {
            Ok(WatchEnd::Closed) => {
                backoff.reset();
                tokio::time::sleep(config.rewatch_delay).await;
            }
            Ok(WatchEnd::Expired(status)) => return FollowEnd::Expired(status),
            Err(UpstreamError::Status {
                code: 410,
                reason,
                message,
                ..
            }) => return FollowEnd::Expired(WatchEvent::status(410, &reason, &message)),
            Err(err @ UpstreamError::Status { .. })
                if first && first_answer == FirstAnswer::Final =>
            {
                return FollowEnd::Failed(err);
            }
            Err(err) if err.is_permanent() => return FollowEnd::Failed(err),
            Err(err) => {
                let delay = backoff.next_delay(err.retry_after());
                sink.degraded(&err, delay);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn uri(target: &WatchTarget, extra: &str) -> String {
    let mut uri = target.path.clone();
    uri.push('?');
    if !target.selectors.is_empty() {
        uri.push_str(&target.selectors);
        uri.push('&');
    }
    uri.push_str(extra);
    uri
}

async fn send(
    target: &WatchTarget,
    uri: String,
) -> Result<http::Response<kube::client::Body>, UpstreamError> {
    let request = http::Request::get(uri)
        .header(http::header::ACCEPT, "application/json")
        .body(kube::client::Body::empty())
        .map_err(|e| UpstreamError::Transport(e.to_string()))?;
    let response = target
        .client
        .send(request)
        .await
        .map_err(|e| UpstreamError::Transport(e.to_string()))?;
    if response.status().is_success() {
        return Ok(response);
    }
    let code = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let status: Option<kube::core::Status> = serde_json::from_slice(&body).ok();
    let (reason, message) = match status {
        Some(s) => (s.reason, s.message),
        None => (
            http::StatusCode::from_u16(code)
                .ok()
                .and_then(|c| c.canonical_reason())
                .unwrap_or("Unknown")
                .to_string(),
            String::from_utf8_lossy(&body)
                .trim()
                .chars()
                .take(200)
                .collect(),
        ),
    };
    Err(UpstreamError::Status {
        code,
        reason,
        message,
        retry_after,
    })
}

/// Lists every page; `at` asks for the collection exactly as it was at that
/// version (later pages carry it in their continue token).
async fn list_all(
    target: &WatchTarget,
    config: &UpstreamConfig,
    at: Option<u64>,
) -> Result<Listing, UpstreamError> {
    let mut continue_token: Option<String> = None;
    let mut objects = Vec::new();
    loop {
        let mut query = format!("limit={}", config.page_size);
        match (&continue_token, at) {
            (Some(token), _) => {
                query.push_str("&continue=");
                query.extend(form_urlencoded::byte_serialize(token.as_bytes()));
            }
            (None, Some(at)) => {
                query.push_str(&format!("&resourceVersion={at}&resourceVersionMatch=Exact"));
            }
            (None, None) => {}
        }
        let response = send(target, uri(target, &query)).await?;
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| UpstreamError::Transport(e.to_string()))?
            .to_bytes();
        let page: ListPage = event::parse_list(&body)?;
        objects.extend(page.items);
        match page.continue_token {
            Some(token) => continue_token = Some(token),
            None => {
                return Ok(Listing {
                    item_kind: page.item_kind,
                    api_version: page.api_version,
                    resource_version: page.resource_version,
                    objects,
                });
            }
        }
    }
}

async fn watch_once(
    target: &WatchTarget,
    config: &UpstreamConfig,
    version: &mut Option<String>,
    sink: &dyn WatchSink,
) -> Result<WatchEnd, UpstreamError> {
    let mut query = format!(
        "watch=1&allowWatchBookmarks=true&timeoutSeconds={}",
        config.watch_timeout.as_secs().max(1)
    );
    if let Some(v) = version.as_deref() {
        query.push_str("&resourceVersion=");
        query.extend(form_urlencoded::byte_serialize(v.as_bytes()));
    }
    let response = send(target, uri(target, &query)).await?;
    sink.watch_started();
    let mut body = response.into_body();
    let mut buf = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(config.idle_timeout, body.frame()).await {
            Err(_) => return Err(UpstreamError::Stalled(config.idle_timeout)),
            Ok(None) => return Ok(WatchEnd::Closed),
            Ok(Some(Err(e))) => return Err(UpstreamError::Transport(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line = buf.split_to(pos + 1).freeze();
            if let Some(end) = handle_line(line, version, sink)? {
                return Ok(end);
            }
        }
    }
}

fn handle_line(
    line: Bytes,
    version: &mut Option<String>,
    sink: &dyn WatchSink,
) -> Result<Option<WatchEnd>, UpstreamError> {
    let trimmed = trim_ascii(line);
    if trimmed.is_empty() {
        return Ok(None);
    }
    let event = WatchEvent::parse_line(trimmed)?;
    match event.kind() {
        EventType::Error => {
            let status: kube::core::Status =
                serde_json::from_slice(event.object()).map_err(ParseError::Json)?;
            if status.code == 410 {
                return Ok(Some(WatchEnd::Expired(event)));
            }
            Err(UpstreamError::Status {
                code: status.code,
                reason: status.reason,
                message: status.message,
                retry_after: None,
            })
        }
        EventType::Bookmark => {
            if !event.resource_version().is_empty() {
                *version = Some(event.resource_version().to_string());
                sink.bookmark(event.resource_version());
            }
            Ok(None)
        }
        _ => {
            if !event.resource_version().is_empty() {
                *version = Some(event.resource_version().to_string());
            }
            sink.event(event);
            Ok(None)
        }
    }
}

fn trim_ascii(line: Bytes) -> Bytes {
    let start = line
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(line.len());
    let end = line
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |p| p + 1);
    line.slice(start..end.max(start))
}
