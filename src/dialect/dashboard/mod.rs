//! The cluster-dashboard stream (seed 001) at `/ws/dashboard` (or `/ws` on
//! `--dashboard-listen`): a `connection` ack, an `initial_state` of nodes,
//! pods and namespaces built from the shared watch caches, then
//! `node_event`/`pod_event` frames and periodic `metrics`.
//!
//! Rate limit: 1000 messages a minute with a burst of 50, per client. When no
//! token is left, events wait in a batch, sent as one frame
//! `{"type":"batch","events":[<event frames>],"count":N,"timestamp":…}` as
//! soon as a token is available; nothing is dropped. A batch that would
//! exceed the 10 MB message limit is replaced by a `RATE_LIMITED` error
//! followed by a fresh `initial_state`, so the client's state stays exact.
//!
//! Permissions are per stream: each of nodes, namespaces and pods (per
//! namespace asked for) is reviewed on its own, so a user who may watch
//! only some of them gets those. The ones refused are named, resource and
//! namespace, in one `PERMISSION_DENIED` error (sent before
//! `initial_state`, whose `data` then carries only the streams shown). A
//! re-check that finds one permission gone stops that stream alone with a
//! `PERMISSION_DENIED` naming it; the socket closes (1008) only when no
//! stream is left, so a refused client is never left on a silent socket.

pub mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Services, WATCH_LIST, timestamp};
use crate::dialect::sink::{Sink, Tagged, Update, end_message};
use crate::ws::WebSocket;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::debug;

use crate::auth::credentials::Credentials;
use crate::auth::policy::Policy;
use crate::auth::recheck::{Access, Principal, RecheckHandle, Rechecks};
use crate::auth::review::ReviewError;
use crate::cluster::Cluster;
use crate::hub::ResourcePath;
use crate::hub::{EndReason, Hub, Identity, SubscribeRequest, Subscription};
use crate::upstream::event::{EventType, WatchEvent};
use crate::ws::conn::{self, ConnContext, Dialect, Liveness};
use crate::ws::limits::TokenBucket;
use crate::ws::notice::{self, NoticeSender};
use crate::ws::outbound::{Frame, Outbound};
use view::{NamespaceView, NodeView, PodView};

/// Limits and timings of dashboard-stream connections; the defaults are
/// seed 001's, and those of the `--dashboard-…` settings that land here.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Largest message in either direction; a batch that would exceed it
    /// is replaced by `RATE_LIMITED` and a fresh `initial_state`.
    pub max_message_size: usize,
    /// Event messages per second, sustained…
    pub message_rate: f64,
    /// …and in a burst; beyond it events wait in a batch.
    pub message_burst: f64,
    /// Interval of the `metrics` messages.
    pub metrics_interval: Duration,
    /// Heartbeat: a ping every 30 s, 10 s to answer.
    pub liveness: Liveness,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_message_size: 10 * 1024 * 1024,
            message_rate: 1000.0 / 60.0,
            message_burst: 50.0,
            metrics_interval: Duration::from_secs(10),
            liveness: Liveness {
                idle_timeout: None,
                ping_interval: Duration::from_secs(30),
                pong_timeout: Duration::from_secs(10),
                write_timeout: Duration::from_secs(10),
            },
        }
    }
}

/// Most live events waiting for the connection's task; a stream's initial
/// state is one of them, whatever its size.
const EVENT_NOTICES: usize = 65_536;
/// Close code when every stream ended for a reason other than permissions
/// (RFC 6455's "unexpected condition"): reconnecting may help.
const CLOSE_WATCHES_ENDED: u16 = 1011;

/// Which stream an event came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stream {
    Nodes,
    Namespaces,
    Pods(usize),
}

/// One collection a dashboard shows. Built once from the URL by
/// [`targets`]; admission, subscription, re-checks and error messages all
/// read the same list.
#[derive(Clone, Debug)]
struct Target {
    stream: Stream,
    path: String,
    resource: ResourcePath,
}

impl Target {
    /// Where the permission is missing, in seed 001's words.
    fn scope(&self) -> String {
        match (&self.resource.namespace, self.stream) {
            (Some(ns), _) => format!("in namespace '{ns}'"),
            (None, Stream::Pods(_)) => "in all namespaces".to_string(),
            (None, _) => "cluster-wide".to_string(),
        }
    }
}

/// The streams for a dashboard showing `wanted` namespaces (all when
/// `None`): nodes, namespaces, and pods of each namespace (or of all).
fn targets(wanted: Option<&BTreeSet<String>>) -> Result<Vec<Target>, String> {
    let mut paths = vec![
        (Stream::Nodes, "/api/v1/nodes".to_string()),
        (Stream::Namespaces, "/api/v1/namespaces".to_string()),
    ];
    match wanted {
        None => paths.push((Stream::Pods(0), "/api/v1/pods".to_string())),
        Some(ns) => paths.extend(
            ns.iter()
                .enumerate()
                .map(|(i, n)| (Stream::Pods(i), format!("/api/v1/namespaces/{n}/pods"))),
        ),
    }
    paths
        .into_iter()
        .map(|(stream, path)| {
            let resource = crate::hub::key::parse_path(&path).map_err(|e| e.to_string())?;
            Ok(Target {
                stream,
                path,
                resource,
            })
        })
        .collect()
}

/// A stream the caller may not watch: the verb the authorizer refused and
/// its full answer.
#[derive(Clone, Debug)]
struct Denial {
    target: Target,
    verb: String,
    reason: String,
}

/// Seed 001's `PERMISSION_DENIED` error naming every refused stream, with
/// the same list machine-readable in `error.denied`.
fn permission_denied(lead: &str, denials: &[Denial]) -> Frame {
    let mut resources: Vec<&str> = denials
        .iter()
        .map(|d| d.target.resource.resource.as_str())
        .collect();
    resources.dedup();
    let details = denials
        .iter()
        .map(|d| {
            format!(
                "Missing '{}' permission on '{}' {}",
                d.verb,
                d.target.resource.resource,
                d.target.scope()
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let denied: Vec<Value> = denials
        .iter()
        .map(|d| {
            json!({
                "resource": d.target.resource.resource,
                "namespace": d.target.resource.namespace,
                "verb": d.verb,
                "reason": d.reason,
            })
        })
        .collect();
    Frame::text(
        json!({
            "type": "error",
            "error": {
                "code": "PERMISSION_DENIED",
                "message": format!("{lead} {}", resources.join(", ")),
                "details": details,
                "denied": denied,
            },
            "timestamp": timestamp(),
        })
        .to_string(),
    )
}

/// Notices from the dashboard's subscriptions.
enum Notice {
    /// What the hub said about a stream's subscription.
    Hub(Stream, Update),
    /// A periodic re-check found these streams' permissions gone.
    Revoked(Vec<Denial>),
    /// A periodic re-check found the caller no longer authenticated.
    Refused(String),
}

impl From<(Stream, Update)> for Notice {
    fn from((stream, update): (Stream, Update)) -> Self {
        Notice::Hub(stream, update)
    }
}

/// What the `shared` and `passthrough` auth modes re-check for a
/// dashboard, through the server's re-check service (one review per
/// distinct question per interval across all connections).
struct Recheck {
    rechecks: Rechecks,
    credentials: Credentials,
}

impl Recheck {
    /// Registers `list` and `watch` on one shown stream for the caller's
    /// token; a refusal becomes a notice naming that stream only, a
    /// rejected token one refusing the caller.
    fn register(
        &self,
        cluster: &Arc<Cluster>,
        target: &Target,
        notices: &NoticeSender<Notice>,
    ) -> Option<RecheckHandle> {
        let token = self.credentials.token_for(cluster.id())?;
        let (notices, revoked) = (notices.clone(), target.clone());
        Some(self.rechecks.register(
            cluster.clone(),
            Principal::Token(token.into()),
            Access::list_and_watch(&target.resource),
            move |e| match e {
                ReviewError::Forbidden { verb, .. } => {
                    notices.control(Notice::Revoked(vec![Denial {
                        verb: verb.to_string(),
                        reason: e.to_string(),
                        target: revoked.clone(),
                    }]))
                }
                _ => notices.control(Notice::Refused(e.to_string())),
            },
        ))
    }
}

/// Keeps `views` current: a deleted object is forgotten, any other is
/// (re)placed under its key.
fn track<V>(views: &mut BTreeMap<String, Arc<V>>, key: String, view: &Arc<V>, deleted: bool) {
    if deleted {
        views.remove(&key);
    } else {
        views.insert(key, view.clone());
    }
}

/// An event projected for dashboards: computed once per event (see
/// [`WatchEvent::derived`]) and shared by every dashboard connection.
struct Projected {
    view: View,
    /// The `data` of the event message, serialised: the whole view, or
    /// only the identity of a deleted object.
    data: String,
}

enum View {
    Node(Arc<NodeView>),
    Pod(Arc<PodView>),
    Namespace(Arc<NamespaceView>),
    /// Not an object of the expected shape; skipped.
    Unreadable,
}

impl Projected {
    fn of(stream: Stream, event: &WatchEvent) -> Projected {
        let deleted = event.kind() == EventType::Deleted;
        let raw = event.object();
        let (view, data) = match stream {
            Stream::Nodes => match view::node(raw) {
                Some(v) if deleted => {
                    let data = json!({"uid": v.uid, "name": v.name}).to_string();
                    (View::Node(Arc::new(v)), data)
                }
                Some(v) => {
                    let data = serde_json::to_string(&v).unwrap_or_default();
                    (View::Node(Arc::new(v)), data)
                }
                None => (View::Unreadable, String::new()),
            },
            Stream::Pods(_) => match view::pod(raw) {
                Some(v) if deleted => {
                    let data =
                        json!({"uid": v.uid, "name": v.name, "namespace": v.namespace}).to_string();
                    (View::Pod(Arc::new(v)), data)
                }
                Some(v) => {
                    let data = serde_json::to_string(&v).unwrap_or_default();
                    (View::Pod(Arc::new(v)), data)
                }
                None => (View::Unreadable, String::new()),
            },
            Stream::Namespaces => match view::namespace(raw) {
                Some(v) => (View::Namespace(Arc::new(v)), String::new()),
                None => (View::Unreadable, String::new()),
            },
        };
        Projected { view, data }
    }
}

/// The error frame of seed 001.
fn error_frame(code: &str, message: &str, details: &str) -> Frame {
    Frame::text(
        json!({"type": "error", "error": {"code": code, "message": message, "details": details}, "timestamp": timestamp()})
            .to_string(),
    )
}

/// Maps a hub problem to the seed's error codes.
fn classify(message: &str) -> &'static str {
    if message.contains("403") || message.contains("forbidden") {
        "PERMISSION_DENIED"
    } else if message.contains("cannot reach") {
        "CONNECTION_FAILED"
    } else {
        "WATCH_ERROR"
    }
}

/// A stream being shown: its target and the subscription feeding it.
struct Live {
    target: Target,
    _subscription: Subscription,
    /// Its registration with the re-check service, while access lasts.
    _recheck: Option<RecheckHandle>,
}

/// The connection's own view, mirrored from the shared caches.
struct Dashboard {
    cluster: String,
    outbound: Arc<Outbound>,
    /// The streams shown; one ended or revoked is removed (with its objects).
    streams: BTreeMap<Stream, Live>,
    waiting: BTreeSet<Stream>,
    nodes: BTreeMap<String, Arc<NodeView>>,
    pods: BTreeMap<String, Arc<PodView>>,
    namespaces: BTreeMap<String, Arc<NamespaceView>>,
    wanted_namespaces: Option<BTreeSet<String>>,
    /// The seed's rate limit for messages to the client.
    bucket: TokenBucket,
    /// Serialised messages waiting for a token.
    batch: Vec<String>,
    batch_bytes: usize,
    metrics_every: Duration,
    /// The largest message the client accepts (a batch stays below it).
    max_message_size: usize,
    last_metrics: Instant,
    recheck: Option<Recheck>,
    hub: Hub,
}

#[derive(Deserialize)]
struct ClientMessage {
    #[serde(rename = "type", default)]
    kind: String,
}

/// The `type` of one client message (only `ping` means anything), or the
/// parse error its ERROR frame reports. Public so the fuzz targets drive
/// the code the connection runs on untrusted bytes.
pub fn parse_client_message(text: &str) -> Result<String, String> {
    serde_json::from_str::<ClientMessage>(text)
        .map(|m| m.kind)
        .map_err(|e| e.to_string())
}

impl Dashboard {
    /// Queues a frame within the connection's bounds (a single frame larger
    /// than them still goes into an empty queue). A client too slow to take
    /// its frames is told and disconnected instead of growing its queue;
    /// reconnecting gives it a fresh `initial_state`.
    fn send(&self, frame: Frame) {
        if self.outbound.queued_bytes() == 0 {
            self.outbound.push_forced(frame);
        } else if self.outbound.push(frame).is_err() {
            self.hub.metrics().slow_consumers.inc();
            self.outbound.push_forced(error_frame(
                "WATCH_ERROR",
                "the client did not read fast enough",
                "its outbound queue is full; reconnect for a fresh initial_state",
            ));
            self.outbound
                .close_with(conn::close::POLICY, "client too slow");
        }
    }

    /// Sends a rate-limited message now, or queues it into the batch.
    fn emit(&mut self, message: String) {
        if self.batch.is_empty() && self.bucket.try_take() {
            self.send(Frame::text(message));
            return;
        }
        let size = message.len() + 1;
        if self.batch_bytes + size > self.max_message_size.saturating_sub(1024) {
            self.batch.clear();
            self.batch_bytes = 0;
            self.outbound.push_forced(error_frame(
                "RATE_LIMITED",
                "too many changes for the rate limit (1000 messages/min)",
                "pending events were replaced by the fresh initial_state that follows",
            ));
            self.send_initial_state();
            return;
        }
        self.batch_bytes += size;
        self.batch.push(message);
    }

    fn flush(&mut self) {
        if self.batch.is_empty() || !self.bucket.try_take() {
            return;
        }
        let events = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let count = events.len();
        self.send(Frame::text(format!(
            r#"{{"type":"batch","events":[{}],"count":{count},"timestamp":{}}}"#,
            events.join(","),
            Value::String(timestamp())
        )));
    }

    fn shows_nodes(&self) -> bool {
        self.streams.contains_key(&Stream::Nodes)
    }

    fn shows_namespaces(&self) -> bool {
        self.streams.contains_key(&Stream::Namespaces)
    }

    fn shows_pods(&self) -> bool {
        self.streams.keys().any(|s| matches!(s, Stream::Pods(_)))
    }

    /// Whether the pods of namespace `ns` are watched, so its pod count
    /// is known.
    fn shows_pods_of(&self, ns: &str) -> bool {
        self.streams.values().any(|l| {
            matches!(l.target.stream, Stream::Pods(_))
                && l.target
                    .resource
                    .namespace
                    .as_deref()
                    .is_none_or(|n| n == ns)
        })
    }

    fn pod_counts(&self) -> BTreeMap<&str, usize> {
        let mut counts = BTreeMap::new();
        for p in self.pods.values() {
            *counts.entry(p.namespace.as_str()).or_insert(0) += 1;
        }
        counts
    }

    /// `initial_state` of the streams shown: a stream the caller may not
    /// watch has no key at all (an empty list would claim there is nothing),
    /// and a namespace whose pods are not watched has `podCount: null`.
    fn send_initial_state(&mut self) {
        let mut data = serde_json::Map::new();
        if self.shows_nodes() {
            data.insert(
                "nodes".into(),
                json!(self.nodes.values().collect::<Vec<_>>()),
            );
        }
        if self.shows_pods() {
            data.insert("pods".into(), json!(self.pods.values().collect::<Vec<_>>()));
        }
        if self.shows_namespaces() {
            let counts = self.pod_counts();
            let namespaces: Vec<NamespaceView> = self
                .namespaces
                .values()
                .filter(|n| {
                    self.wanted_namespaces
                        .as_ref()
                        .is_none_or(|w| w.contains(&n.name))
                })
                .map(|n| NamespaceView {
                    pod_count: self
                        .shows_pods_of(&n.name)
                        .then(|| counts.get(n.name.as_str()).copied().unwrap_or(0)),
                    ..NamespaceView::clone(n)
                })
                .collect();
            data.insert("namespaces".into(), json!(namespaces));
        }
        let state = json!({"type": "initial_state", "data": data, "timestamp": timestamp()});
        // The whole state in one frame, whatever its size: it replaces
        // what the client knew, and a client that then does not read is cut
        // on the live messages queued behind it.
        self.outbound.push_forced(Frame::text(state.to_string()));
    }

    /// `metrics` of what is shown: node figures are `null` without a nodes
    /// stream, pod figures `null` without any pods stream.
    fn send_metrics(&mut self) {
        let nodes = self.shows_nodes();
        let pods = self.shows_pods();
        let ready = self.nodes.values().filter(|n| n.status == "Ready").count();
        let phase = |p: &str| pods.then(|| self.pods.values().filter(|x| x.phase == p).count());
        let message = json!({
            "type": "metrics",
            "data": {
                "totalNodes": nodes.then_some(self.nodes.len()),
                "readyNodes": nodes.then_some(ready),
                "totalPods": pods.then_some(self.pods.len()),
                "runningPods": phase("Running"),
                "pendingPods": phase("Pending"),
                "failedPods": phase("Failed"),
            },
            "timestamp": timestamp(),
        });
        self.emit(message.to_string());
    }

    fn apply(&mut self, stream: Stream, event: &WatchEvent) {
        if !self.streams.contains_key(&stream) {
            // Queued before the stream was stopped.
            return;
        }
        let live = self.waiting.is_empty();
        match event.kind() {
            EventType::Bookmark => {
                if !live && event.is_initial_events_end() {
                    self.stop_waiting(stream);
                }
                return;
            }
            EventType::Error => return,
            _ => {}
        }
        let key = event.key().to_string();
        let deleted = event.kind() == EventType::Deleted;
        if deleted && stream == Stream::Namespaces {
            self.namespaces.remove(&key);
            return;
        }
        let projected = event.derived(|event| Projected::of(stream, event));
        let kind = match &projected.view {
            View::Node(view) => {
                track(&mut self.nodes, key, view, deleted);
                "node_event"
            }
            View::Pod(view) => {
                track(&mut self.pods, key, view, deleted);
                "pod_event"
            }
            View::Namespace(view) => {
                self.namespaces.insert(key, view.clone());
                return;
            }
            View::Unreadable => return,
        };
        let data = &projected.data;
        if live {
            self.emit(format!(
                r#"{{"type":"{kind}","action":"{}","data":{data},"timestamp":{}}}"#,
                event.kind().as_str(),
                Value::String(timestamp())
            ));
        }
    }

    /// Applies what the hub said about one stream.
    fn on_update(&mut self, stream: Stream, update: Update) {
        match update {
            Update::Event(event) => self.apply(stream, &event),
            Update::Replay(events) => {
                for event in &events {
                    self.apply(stream, event);
                }
            }
            Update::Problem(message) => {
                if let Some(live) = self.streams.get(&stream) {
                    self.watch_error(&live.target.resource.resource, &message, "");
                }
            }
            Update::Ended(reason) => {
                // The 1012 close that follows says so; a WATCH_ERROR would
                // have a seed 001 client report a failure for a routine
                // restart.
                if reason == EndReason::Shutdown {
                    return;
                }
                let message = end_message(reason);
                let Some(live) = self.streams.get(&stream) else {
                    return;
                };
                if classify(&message) == "PERMISSION_DENIED" {
                    // The cluster itself refused the caller's own token
                    // (passthrough): this stream stops, the others go on.
                    let verb = if message.contains("cannot list") {
                        "list"
                    } else {
                        "watch"
                    };
                    let denial = Denial {
                        target: live.target.clone(),
                        verb: verb.to_string(),
                        reason: message,
                    };
                    self.outbound.push_forced(permission_denied(
                        "Insufficient RBAC permissions to watch",
                        &[denial],
                    ));
                    self.stop(stream);
                    self.close_if_empty(conn::close::POLICY, "access denied");
                } else {
                    self.watch_error(&live.target.resource.resource, &message, " stopped");
                    self.stop(stream);
                    self.close_if_empty(CLOSE_WATCHES_ENDED, "every watch ended");
                }
            }
        }
    }

    /// An ERROR about the watch of `resource`: `message` classified, and
    /// what happened to the watch (`then`: "" while it goes on).
    fn watch_error(&self, resource: &str, message: &str, then: &str) {
        self.outbound.push_forced(error_frame(
            classify(message),
            &format!("watching {resource} on cluster {:?}{then}", self.cluster),
            message,
        ));
    }

    /// A stream has its initial state (or will never send it); the first
    /// time no stream is left waiting, `initial_state` goes out.
    fn stop_waiting(&mut self, stream: Stream) {
        if self.waiting.remove(&stream) && self.waiting.is_empty() && !self.streams.is_empty() {
            self.send_initial_state();
        }
    }

    /// Stops showing a stream: its subscription is dropped and its objects
    /// forgotten, so later `initial_state` and `metrics` do not present
    /// them as current.
    fn stop(&mut self, stream: Stream) {
        let Some(live) = self.streams.remove(&stream) else {
            return;
        };
        match stream {
            Stream::Nodes => self.nodes.clear(),
            Stream::Namespaces => self.namespaces.clear(),
            Stream::Pods(_) => match &live.target.resource.namespace {
                None => self.pods.clear(),
                Some(ns) => self.pods.retain(|_, p| p.namespace != *ns),
            },
        }
        self.stop_waiting(stream);
    }

    /// Closes the socket once nothing is left to show.
    fn close_if_empty(&self, code: u16, reason: &str) {
        if self.streams.is_empty() {
            self.outbound.close_with(code, reason);
        }
    }

    /// Every shown stream refused at once (the token itself was rejected):
    /// the total refusal.
    fn refuse(&mut self, message: &str) {
        self.outbound
            .push_forced(error_frame("PERMISSION_DENIED", "access revoked", message));
        self.streams.clear();
        self.outbound
            .close_with(conn::close::POLICY, "access revoked");
    }
}

impl Dialect for Dashboard {
    type Notice = Notice;

    fn on_text(&mut self, text: &str) {
        match parse_client_message(text) {
            Ok(kind) if kind == "ping" => self.outbound.answer(Frame::text(
                json!({"type": "pong", "timestamp": timestamp()}).to_string(),
            )),
            Ok(kind) => self.outbound.answer(error_frame(
                "WATCH_ERROR",
                "unsupported message",
                &format!(
                    "only ping is accepted, got type {:?}",
                    kind.chars().take(40).collect::<String>()
                ),
            )),
            Err(e) => self
                .outbound
                .answer(error_frame("WATCH_ERROR", "invalid message", &e)),
        }
    }

    fn on_notice(&mut self, notice: Notice) {
        match notice {
            Notice::Hub(stream, update) => self.on_update(stream, update),
            Notice::Revoked(denials) => {
                let denials: Vec<Denial> = denials
                    .into_iter()
                    .filter(|d| self.streams.contains_key(&d.target.stream))
                    .collect();
                if denials.is_empty() {
                    return;
                }
                self.outbound.push_forced(permission_denied(
                    "RBAC permissions revoked to watch",
                    &denials,
                ));
                for d in &denials {
                    self.stop(d.target.stream);
                }
                self.close_if_empty(conn::close::POLICY, "access revoked");
            }
            Notice::Refused(message) => self.refuse(&message),
        }
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(50))
    }

    fn on_tick(&mut self) {
        self.flush();
        if self.waiting.is_empty()
            && !self.streams.is_empty()
            && self.last_metrics.elapsed() >= self.metrics_every
        {
            self.last_metrics = Instant::now();
            self.send_metrics();
        }
    }
}

/// What the client asked for in the URL.
#[derive(Deserialize, Default)]
pub struct DashboardQuery {
    /// Comma-separated namespaces; absent = all.
    pub namespaces: Option<String>,
    /// Cluster id; absent = the default cluster.
    pub cluster: Option<String>,
}

/// Why a caller gets no stream at all: the error's seed code and details.
struct Refusal {
    code: &'static str,
    message: &'static str,
    details: String,
}

/// The auth mode's decision for one stream: the identity its watch runs
/// as, or the permission the caller lacks. A refusal of the caller as a
/// whole (no credentials, a rejected token, a review that cannot run) is
/// the `Err`.
async fn admit(
    policy: &Policy,
    cluster: &Cluster,
    credentials: &Credentials,
    target: Target,
) -> Result<Result<(Target, Identity), Denial>, Refusal> {
    let refused = |code, message, details: String| Refusal {
        code,
        message,
        details,
    };
    let identity = policy
        .identity(credentials, cluster.id(), &target.resource)
        .map_err(|e| refused("PERMISSION_DENIED", "access denied", e.to_string()))?;
    let Some((reviewer, _)) = policy.review() else {
        return Ok(Ok((target, identity)));
    };
    let token = credentials.token_for(cluster.id());
    let Err(e) = reviewer
        .check(cluster, token, &target.resource, false)
        .await
    else {
        return Ok(Ok((target, identity)));
    };
    match &e {
        ReviewError::Forbidden { verb, .. } => Ok(Err(Denial {
            verb: verb.to_string(),
            reason: e.to_string(),
            target,
        })),
        ReviewError::Unavailable { .. } => Err(refused(
            "CONNECTION_FAILED",
            "cannot check access",
            e.to_string(),
        )),
        _ => Err(refused("PERMISSION_DENIED", "access denied", e.to_string())),
    }
}

/// Serves one upgraded connection: the connection ack, then each stream
/// the caller may watch, and one `PERMISSION_DENIED` for those it may not.
pub async fn serve(
    socket: WebSocket,
    services: Services,
    settings: Arc<Settings>,
    query: DashboardQuery,
    credentials: Credentials,
) {
    let Services {
        hub,
        policy,
        shutdown,
    } = services;
    let metrics = hub.metrics().clone();
    let outbound = Arc::new(socket.outbound(metrics.clone()));
    let (tx, rx) = notice::channel(EVENT_NOTICES);
    let registry = hub.clusters().clone();
    let cluster_id = query
        .cluster
        .filter(|c| !c.is_empty())
        .or_else(|| registry.default_id());
    let wanted: Option<BTreeSet<String>> = query
        .namespaces
        .map(|n| {
            n.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect::<BTreeSet<_>>()
        })
        .filter(|s| !s.is_empty());
    let recheck = policy.rechecks().map(|rechecks| Recheck {
        rechecks: rechecks.clone(),
        credentials: credentials.clone(),
    });
    let mut dashboard = Dashboard {
        cluster: cluster_id.clone().unwrap_or_default(),
        outbound: outbound.clone(),
        streams: BTreeMap::new(),
        waiting: BTreeSet::new(),
        nodes: BTreeMap::new(),
        pods: BTreeMap::new(),
        namespaces: BTreeMap::new(),
        wanted_namespaces: wanted.clone(),
        bucket: TokenBucket::new(settings.message_rate, settings.message_burst),
        batch: Vec::new(),
        batch_bytes: 0,
        metrics_every: settings.metrics_interval,
        max_message_size: settings.max_message_size,
        last_metrics: Instant::now(),
        recheck,
        hub: hub.clone(),
    };
    match cluster_id.as_deref().and_then(|id| registry.get(id)) {
        None => outbound.push_forced(error_frame(
            "INVALID_KUBECONFIG",
            "no such cluster in the kubeconfig",
            &format!(
                "cluster {:?} is not a configured context",
                cluster_id.unwrap_or_default()
            ),
        )),
        Some(cluster) => {
            if cluster.health().version.is_none() {
                cluster.probe(Duration::from_secs(5)).await;
            }
            let health = cluster.health();
            outbound.push_forced(Frame::text(
                json!({"type": "connection", "status": "connected", "timestamp": timestamp(),
                       "cluster": {"name": cluster.id(), "version": health.version}})
                .to_string(),
            ));
            if health.reachable == Some(false) {
                outbound.push_forced(error_frame(
                    "CLUSTER_UNREACHABLE",
                    "the cluster's API server is not responding",
                    health.last_error.as_deref().unwrap_or_default(),
                ));
            }
            subscribe_streams(
                &mut dashboard,
                &policy,
                &cluster,
                &credentials,
                wanted.as_ref(),
                &tx,
            )
            .await;
        }
    }
    let ctx = ConnContext {
        dialect: "dashboard",
        outbound,
        liveness: settings.liveness,
        metrics,
        shutdown,
    };
    conn::run(socket, ctx, rx, dashboard).await
}

/// Admits every stream (the reviews run concurrently), reports the refused
/// ones in one `PERMISSION_DENIED`, and subscribes the rest. With nothing
/// to show the socket is closed after the error, never left open and
/// silent.
async fn subscribe_streams(
    dashboard: &mut Dashboard,
    policy: &Policy,
    cluster: &Cluster,
    credentials: &Credentials,
    wanted: Option<&BTreeSet<String>>,
    tx: &NoticeSender<Notice>,
) {
    let outbound = dashboard.outbound.clone();
    let targets = match targets(wanted) {
        Ok(targets) => targets,
        Err(e) => {
            outbound.push_forced(error_frame("WATCH_ERROR", "invalid namespaces", &e));
            outbound.close_with(conn::close::POLICY, "invalid namespaces");
            return;
        }
    };
    let verdicts = futures::future::join_all(
        targets
            .into_iter()
            .map(|t| admit(policy, cluster, credentials, t)),
    )
    .await;
    let mut admitted = Vec::new();
    let mut denials = Vec::new();
    for verdict in verdicts {
        match verdict {
            Ok(Ok(allowed)) => admitted.push(allowed),
            Ok(Err(denial)) => denials.push(denial),
            Err(refusal) => {
                outbound.push_forced(error_frame(refusal.code, refusal.message, &refusal.details));
                outbound.close_with(conn::close::POLICY, refusal.message);
                return;
            }
        }
    }
    if !denials.is_empty() {
        debug!(
            cluster = cluster.id(),
            denied = denials.len(),
            "dashboard streams refused"
        );
        outbound.push_forced(permission_denied(
            "Insufficient RBAC permissions to watch",
            &denials,
        ));
    }
    for (target, identity) in admitted {
        let sink = Arc::new(Sink(Tagged {
            tag: target.stream,
            lane: tx.clone(),
        }));
        let request = SubscribeRequest {
            cluster: cluster.id(),
            path: &target.path,
            query: WATCH_LIST,
            identity: &identity,
        };
        match dashboard.hub.subscribe(request, sink) {
            Ok(subscription) => {
                dashboard.waiting.insert(target.stream);
                let recheck = dashboard.recheck.as_ref().and_then(|r| {
                    let cluster = dashboard.hub.clusters().get(cluster.id())?;
                    r.register(&cluster, &target, tx)
                });
                dashboard.streams.insert(
                    target.stream,
                    Live {
                        target,
                        _subscription: subscription,
                        _recheck: recheck,
                    },
                );
            }
            Err(e) => outbound.push_forced(error_frame(
                "WATCH_ERROR",
                &format!("cannot watch {}", target.path),
                &e.to_string(),
            )),
        }
    }
    if dashboard.streams.is_empty() {
        let code = if denials.is_empty() {
            CLOSE_WATCHES_ENDED
        } else {
            conn::close::POLICY
        };
        outbound.close_with(code, "nothing to show");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_target_per_stream_each_naming_its_scope() {
        let wanted: BTreeSet<String> = ["a".to_string(), "b".to_string()].into();
        let some = targets(Some(&wanted)).unwrap();
        let paths: Vec<&str> = some.iter().map(|t| t.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/api/v1/nodes",
                "/api/v1/namespaces",
                "/api/v1/namespaces/a/pods",
                "/api/v1/namespaces/b/pods"
            ]
        );
        assert_eq!(some[3].stream, Stream::Pods(1));
        assert_eq!(some[0].scope(), "cluster-wide");
        assert_eq!(some[2].scope(), "in namespace 'a'");
        let all = targets(None).unwrap();
        assert_eq!(all[2].path, "/api/v1/pods");
        assert_eq!(all[2].scope(), "in all namespaces");
    }
}
