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
use event::{EventType, ListPage, ParseError, Transform, WatchEvent};

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
    /// What is changed in every listed or watched object before it is
    /// reported (and so before it is stored or fanned out).
    pub transform: Transform,
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
            transform: Transform::default(),
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

/// Where a [`run`] stands between two requests, like kube-runtime's
/// `watcher::State`: it says what the next request is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Nothing listed yet, or the listed version expired: the next request
    /// is a LIST, at `exact` (`resourceVersionMatch=Exact`) when set. Only
    /// the very first listing is exact: it is the first subscriber's version.
    Empty {
        /// The version to list at exactly.
        exact: Option<u64>,
    },
    /// Listed: the next request is a WATCH from `version`, the newest
    /// version seen; every event and bookmark moves it on, so a re-watch
    /// continues where the last one stopped.
    Watching {
        /// The newest version seen.
        version: String,
    },
}

/// How one request of a [`run`] came out.
#[derive(Debug)]
enum Outcome {
    /// A LIST answered at this version, and the sink still wants the watch.
    Listed(String),
    /// The server ended the watch normally (its timeout).
    Closed,
    /// The server no longer serves the version (410, in-band or HTTP).
    Expired,
    /// Any other failure.
    Failed(UpstreamError),
}

/// What a [`run`] waits for before its next request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pause {
    /// Nothing: the next request goes at once.
    None,
    /// The short jittered re-watch delay, so watches the server ended
    /// together do not return together.
    Rewatch,
    /// The backoff delay; the outage is reported to the sink.
    Backoff,
}

impl State {
    /// The state after `outcome`, and the pause before the request it
    /// makes; `None` when the watch ends for good.
    fn after(self, outcome: &Outcome) -> Option<(State, Pause)> {
        match outcome {
            Outcome::Listed(version) => Some((
                State::Watching {
                    version: version.clone(),
                },
                Pause::None,
            )),
            Outcome::Closed => Some((self, Pause::Rewatch)),
            Outcome::Expired => Some((State::Empty { exact: None }, Pause::None)),
            Outcome::Failed(err) if err.is_expired() => {
                Some((State::Empty { exact: None }, Pause::None))
            }
            Outcome::Failed(err) if err.is_permanent() => None,
            Outcome::Failed(_) => match self {
                // The exact listing was tried (with its fallback): retries
                // list the current state.
                State::Empty { .. } => Some((State::Empty { exact: None }, Pause::Backoff)),
                watching => Some((watching, Pause::Backoff)),
            },
        }
    }
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
    let mut state = State::Empty { exact: list_at };
    loop {
        let outcome = match &mut state {
            State::Empty { exact } => match list(&target, &config, *exact).await {
                Ok(listing) => {
                    let version = listing.resource_version.clone();
                    if sink.listed(listing).is_break() {
                        return;
                    }
                    Outcome::Listed(version)
                }
                Err(err) => Outcome::Failed(err),
            },
            State::Watching { version } => {
                match watch_once(&target, &config, version, &*sink).await {
                    Ok(WatchEnd::Closed) => Outcome::Closed,
                    Ok(WatchEnd::Expired(_)) => Outcome::Expired,
                    Err(err) => Outcome::Failed(err),
                }
            }
        };
        let Some((next, pause)) = state.clone().after(&outcome) else {
            if let Outcome::Failed(err) = outcome {
                warn!(path = %target.path, error = %err, "upstream watch failed permanently");
                sink.failed(err);
            }
            return;
        };
        match (&outcome, pause) {
            (Outcome::Listed(_), _) => backoff.reset(),
            (_, Pause::Rewatch) => {
                backoff.reset();
                let jitter = config.rewatch_delay.mul_f64(rand::random_range(0.5..1.5));
                tokio::time::sleep(jitter).await;
            }
            (Outcome::Failed(err), Pause::Backoff) => {
                let delay = backoff.next_delay(err.retry_after());
                info!(path = %target.path, error = %err, retry_in = ?delay, "upstream watch failed, retrying");
                sink.degraded(err, delay);
                tokio::time::sleep(delay).await;
            }
            _ => debug!(path = %target.path, "upstream version expired, relisting"),
        }
        state = next;
    }
}

/// The listing of [`State::Empty`]: at `exact` if given, falling back to
/// the current state when the server cannot list there (compacted, or an
/// old server).
async fn list(
    target: &WatchTarget,
    config: &UpstreamConfig,
    exact: Option<u64>,
) -> Result<Listing, UpstreamError> {
    if let Some(at) = exact {
        match list_all(target, config, Some(at)).await {
            Ok(listing) => return Ok(listing),
            Err(err) => {
                debug!(path = %target.path, at, error = %err, "cannot list at the subscriber's version; listing the current state");
            }
        }
    }
    list_all(target, config, None).await
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
    let mut version = version;
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
        let page: ListPage = event::parse_list_with(&body, config.transform)?;
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
    version: &mut String,
    sink: &dyn WatchSink,
) -> Result<WatchEnd, UpstreamError> {
    let mut query = format!(
        "watch=1&allowWatchBookmarks=true&timeoutSeconds={}",
        config.watch_timeout.as_secs().max(1)
    );
    query.push_str("&resourceVersion=");
    query.extend(form_urlencoded::byte_serialize(version.as_bytes()));
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
            if let Some(end) = handle_line(line, config.transform, version, sink)? {
                return Ok(end);
            }
        }
    }
}

fn handle_line(
    line: Bytes,
    transform: Transform,
    version: &mut String,
    sink: &dyn WatchSink,
) -> Result<Option<WatchEnd>, UpstreamError> {
    let trimmed = trim_ascii(line);
    if trimmed.is_empty() {
        return Ok(None);
    }
    let event = WatchEvent::parse_line_with(trimmed, transform)?;
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
                *version = event.resource_version().to_string();
                sink.bookmark(event.resource_version());
            }
            Ok(None)
        }
        _ => {
            if !event.resource_version().is_empty() {
                *version = event.resource_version().to_string();
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kubemux_sim::faults::WatchFailure;
    use kubemux_sim::{SimConfig, SimServer};
    use parking_lot::Mutex;
    use serde_json::json;

    use super::*;
    use crate::hub::tests::registry;

    fn status(code: u16) -> UpstreamError {
        UpstreamError::Status {
            code,
            reason: String::new(),
            message: String::new(),
            retry_after: None,
        }
    }

    fn watching(version: &str) -> State {
        State::Watching {
            version: version.into(),
        }
    }

    #[test]
    fn transitions() {
        let empty = |exact| State::Empty { exact };
        let after = |state: State, outcome| state.after(&outcome);
        assert_eq!(
            after(empty(Some(5)), Outcome::Listed("7".into())),
            Some((watching("7"), Pause::None)),
            "the initial listing, then a watch from its version"
        );
        assert_eq!(
            after(watching("9"), Outcome::Closed),
            Some((watching("9"), Pause::Rewatch)),
            "the server's timeout: re-watch from the last version, no relist"
        );
        for expired in [Outcome::Expired, Outcome::Failed(status(410))] {
            assert_eq!(
                after(watching("9"), expired),
                Some((empty(None), Pause::None)),
                "410: relist the current state at once"
            );
        }
        assert_eq!(
            after(watching("9"), Outcome::Failed(status(503))),
            Some((watching("9"), Pause::Backoff))
        );
        assert_eq!(
            after(
                empty(Some(5)),
                Outcome::Failed(UpstreamError::Transport("refused".into()))
            ),
            Some((empty(None), Pause::Backoff)),
            "only the first listing is exact"
        );
        for code in [400, 401, 403, 404, 405, 406, 422] {
            assert_eq!(after(watching("9"), Outcome::Failed(status(code))), None);
            assert_eq!(after(empty(None), Outcome::Failed(status(code))), None);
        }
    }

    /// What a run reported, bookmarks left out.
    #[derive(Default)]
    struct Record(Mutex<Vec<String>>);

    impl Record {
        fn count(&self, prefix: &str) -> usize {
            self.0
                .lock()
                .iter()
                .filter(|s| s.starts_with(prefix))
                .count()
        }
    }

    impl WatchSink for Record {
        fn listed(&self, listing: Listing) -> ControlFlow<()> {
            self.0
                .lock()
                .push(format!("listed@{}", listing.resource_version));
            ControlFlow::Continue(())
        }
        fn event(&self, event: WatchEvent) {
            self.0.lock().push(format!("event:{}", event.key()));
        }
        fn bookmark(&self, _: &str) {}
        fn watch_started(&self) {
            self.0.lock().push("started".into());
        }
        fn degraded(&self, _: &UpstreamError, _: Duration) {
            self.0.lock().push("degraded".into());
        }
        fn failed(&self, error: UpstreamError) {
            self.0.lock().push(format!("failed:{error}"));
        }
    }

    async fn eventually(what: &str, f: impl Fn() -> bool) {
        tokio::time::timeout(Duration::from_secs(20), async {
            while !f() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
    }

    async fn target(sim: &SimServer, path: &str) -> WatchTarget {
        WatchTarget {
            client: registry(sim).await.get("sim").unwrap().client(),
            path: path.into(),
            selectors: String::new(),
        }
    }

    fn quick() -> UpstreamConfig {
        UpstreamConfig {
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            rewatch_delay: Duration::from_millis(10),
            ..UpstreamConfig::default()
        }
    }

    fn create(sim: &SimServer, name: &str) {
        let pod =
            json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"containers": []}});
        sim.store().create("pods", Some("default"), pod).unwrap();
    }

    #[tokio::test]
    async fn a_run_re_watches_silently_relists_on_410_and_backs_off_on_failures() {
        let sim = SimServer::start(SimConfig {
            initial_pods: 2,
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let record = Arc::new(Record::default());
        let task = tokio::spawn(run(
            target(&sim, "/api/v1/namespaces/default/pods").await,
            quick(),
            record.clone(),
            None,
        ));
        eventually("listed and watching", || record.count("started") == 1).await;
        assert_eq!(record.count("listed@"), 1);
        create(&sim, "p-1");
        eventually("p-1 arrived", || record.count("event:default/p-1") == 1).await;

        sim.faults().drop_watches();
        eventually("re-watched", || record.count("started") == 2).await;
        create(&sim, "p-2");
        eventually("p-2 arrived", || record.count("event:default/p-2") == 1).await;
        assert_eq!(
            record.count("event:default/p-1"),
            1,
            "the re-watch continued from the last version"
        );
        assert_eq!(record.count("listed@"), 1, "a timeout is no relist");
        assert_eq!(record.count("degraded"), 0);

        sim.faults().fail_next_watches(1, WatchFailure::Expired);
        sim.faults().drop_watches();
        // Watching again before the next fault, or the fault would hit
        // this watch request instead of the one after the drop.
        eventually("relisted after the 410 and watching", || {
            record.count("listed@") == 2 && record.count("started") == 3
        })
        .await;
        assert_eq!(record.count("degraded"), 0, "a 410 is no outage");

        sim.faults()
            .fail_next_watches(1, WatchFailure::InternalError);
        sim.faults().drop_watches();
        eventually("backed off and watched again", || {
            record.count("degraded") == 1 && record.count("started") == 4
        })
        .await;
        assert_eq!(record.count("listed@"), 2, "a 500 keeps the version");
        assert!(!task.is_finished());
        task.abort();
    }

    #[tokio::test]
    async fn a_run_ends_for_good_on_an_answer_retrying_cannot_change() {
        let sim = SimServer::start(SimConfig::default()).await.unwrap();
        let record = Arc::new(Record::default());
        tokio::time::timeout(
            Duration::from_secs(20),
            run(
                target(&sim, "/api/v1/namespaces/default/nosuchthings").await,
                quick(),
                record.clone(),
                None,
            ),
        )
        .await
        .expect("the run returns");
        let seen = record.0.lock().clone();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(
            seen[0].starts_with("failed:the API server answered 404"),
            "{seen:?}"
        );
    }
}
