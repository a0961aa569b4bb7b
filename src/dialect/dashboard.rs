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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::server::WebSocket;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::dashboard_view::{self, NamespaceView, NodeView, PodView};
use crate::auth::credentials::Credentials;
use crate::auth::recheck::{Access, Principal, RecheckHandle, Rechecks, send_notice};
use crate::cluster::Cluster;
use crate::hub::ResourcePath;
use crate::hub::{EndReason, Hub, Identity, Overflow, SubscribeRequest, Subscriber, Subscription};
use crate::server::ServerConfig;
use crate::server::conn::{self, ConnContext, Dialect, Liveness};
use crate::server::limits::TokenBucket;
use crate::server::outbound::{Frame, Outbound};
use crate::upstream::event::{EventType, WatchEvent};

/// Seed 001's heartbeat: a ping every 30 s, 10 s to answer (the default
/// of [`crate::server::ServerConfig::dashboard_liveness`]).
pub const LIVENESS: Liveness = Liveness {
    idle_timeout: None,
    ping_interval: Duration::from_secs(30),
    pong_timeout: Duration::from_secs(10),
    write_timeout: Duration::from_secs(10),
};
/// Largest message in either direction.
pub const MAX_MESSAGE: usize = 10 * 1024 * 1024;
const BURST: f64 = 50.0;
const PER_SECOND: f64 = 1000.0 / 60.0;
const QUERY: &str = "watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan";

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Which stream an event came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stream {
    Nodes,
    Namespaces,
    Pods(usize),
}

/// Notices from the dashboard's subscriptions.
enum Notice {
    Event(Stream, Arc<WatchEvent>),
    Problem(Stream, String),
    /// A periodic re-check (shared auth mode) found access revoked.
    Revoked(String),
}

/// What the `shared` and `passthrough` auth modes re-check for a
/// dashboard, every interval, through the server's re-check service.
pub struct Recheck {
    /// The server's re-check service.
    pub rechecks: Rechecks,
    /// The caller's credentials.
    pub credentials: Credentials,
    /// Every resource the dashboard shows.
    pub resources: Vec<ResourcePath>,
}

impl Recheck {
    /// Registers the dashboard: `list` and `watch` on everything it shows,
    /// for its caller's token; a revocation becomes a [`Notice::Revoked`].
    fn register(
        &self,
        cluster: Arc<Cluster>,
        notices: mpsc::Sender<Notice>,
    ) -> Option<RecheckHandle> {
        let token = self.credentials.token_for(cluster.id())?;
        let accesses = self
            .resources
            .iter()
            .flat_map(Access::list_and_watch)
            .collect();
        Some(self.rechecks.register(
            cluster,
            Principal::Token(token.into()),
            accesses,
            move |e| send_notice(&notices, Notice::Revoked(e.to_string())),
        ))
    }
}

struct Sink {
    stream: Stream,
    tx: mpsc::Sender<Notice>,
}

impl Subscriber for Sink {
    fn event(&self, event: &Arc<WatchEvent>) -> Result<(), Overflow> {
        self.tx
            .try_send(Notice::Event(self.stream, event.clone()))
            .map_err(|_| Overflow)
    }

    fn warning(&self, message: &str) {
        let _ = self
            .tx
            .try_send(Notice::Problem(self.stream, message.to_string()));
    }

    fn end(&self, reason: EndReason) {
        let message = match reason {
            // The 1012 close that follows says so; a WATCH_ERROR would have
            // a seed 001 client report a failure for a routine restart.
            EndReason::Shutdown => return,
            EndReason::Failed(m) => m,
            EndReason::SlowConsumer => "the client did not read fast enough".into(),
            other => format!("watch ended: {other:?}"),
        };
        let _ = self.tx.try_send(Notice::Problem(self.stream, message));
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
            Stream::Nodes => match dashboard_view::node(raw) {
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
            Stream::Pods(_) => match dashboard_view::pod(raw) {
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
            Stream::Namespaces => match dashboard_view::namespace(raw) {
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
        json!({"type": "error", "error": {"code": code, "message": message, "details": details}, "timestamp": now()})
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

/// The connection's own view, mirrored from the shared caches.
struct Dashboard {
    cluster: String,
    outbound: Arc<Outbound>,
    _subscriptions: Vec<Subscription>,
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
    last_metrics: Instant,
    /// The registration with the re-check service, while access lasts.
    recheck: Option<RecheckHandle>,
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
        if self.batch_bytes + size > MAX_MESSAGE - 1024 {
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
            Value::String(now())
        )));
    }

    fn pod_counts(&self) -> BTreeMap<&str, usize> {
        let mut counts = BTreeMap::new();
        for p in self.pods.values() {
            *counts.entry(p.namespace.as_str()).or_insert(0) += 1;
        }
        counts
    }

    fn send_initial_state(&mut self) {
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
                pod_count: counts.get(n.name.as_str()).copied().unwrap_or(0),
                ..NamespaceView::clone(n)
            })
            .collect();
        let state = json!({
            "type": "initial_state",
            "data": {
                "nodes": self.nodes.values().collect::<Vec<_>>(),
                "pods": self.pods.values().collect::<Vec<_>>(),
                "namespaces": namespaces,
            },
            "timestamp": now(),
        });
        self.send(Frame::text(state.to_string()));
    }

    fn send_metrics(&mut self) {
        let ready = self.nodes.values().filter(|n| n.status == "Ready").count();
        let phase = |p: &str| self.pods.values().filter(|x| x.phase == p).count();
        let message = json!({
            "type": "metrics",
            "data": {
                "totalNodes": self.nodes.len(),
                "readyNodes": ready,
                "totalPods": self.pods.len(),
                "runningPods": phase("Running"),
                "pendingPods": phase("Pending"),
                "failedPods": phase("Failed"),
            },
            "timestamp": now(),
        });
        self.emit(message.to_string());
    }

    fn apply(&mut self, stream: Stream, event: &WatchEvent) {
        let live = self.waiting.is_empty();
        match event.kind() {
            EventType::Bookmark => {
                if !live && is_initial_end(event) {
                    self.waiting.remove(&stream);
                    if self.waiting.is_empty() {
                        self.send_initial_state();
                    }
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
        let (kind, data) = match (&projected.view, deleted) {
            (View::Node(_), true) => {
                self.nodes.remove(&key);
                ("node_event", &projected.data)
            }
            (View::Node(view), false) => {
                self.nodes.insert(key, view.clone());
                ("node_event", &projected.data)
            }
            (View::Pod(_), true) => {
                self.pods.remove(&key);
                ("pod_event", &projected.data)
            }
            (View::Pod(view), false) => {
                self.pods.insert(key, view.clone());
                ("pod_event", &projected.data)
            }
            (View::Namespace(view), _) => {
                self.namespaces.insert(key, view.clone());
                return;
            }
            (View::Unreadable, _) => return,
        };
        if live {
            self.emit(format!(
                r#"{{"type":"{kind}","action":"{}","data":{data},"timestamp":{}}}"#,
                event.kind().as_str(),
                Value::String(now())
            ));
        }
    }
}

fn is_initial_end(event: &WatchEvent) -> bool {
    serde_json::from_slice::<Value>(event.object())
        .map(|v| v["metadata"]["annotations"]["k8s.io/initial-events-end"] == "true")
        .unwrap_or(false)
}

impl Dialect for Dashboard {
    type Notice = Notice;

    fn on_text(&mut self, text: &str) {
        match parse_client_message(text) {
            Ok(kind) if kind == "ping" => self.outbound.answer(Frame::text(
                json!({"type": "pong", "timestamp": now()}).to_string(),
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
            Notice::Event(stream, event) => self.apply(stream, &event),
            Notice::Revoked(message) => {
                self.outbound.push_forced(error_frame(
                    "PERMISSION_DENIED",
                    "access revoked",
                    &message,
                ));
                self._subscriptions.clear();
                self.recheck = None;
                self.outbound
                    .close_with(conn::close::POLICY, "access revoked");
            }
            Notice::Problem(stream, message) => {
                let what = match stream {
                    Stream::Nodes => "nodes",
                    Stream::Namespaces => "namespaces",
                    Stream::Pods(_) => "pods",
                };
                self.outbound.push_forced(error_frame(
                    classify(&message),
                    &format!("watching {what} on cluster {:?}", self.cluster),
                    &message,
                ));
            }
        }
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(50))
    }

    fn on_tick(&mut self) {
        self.flush();
        if self.waiting.is_empty() && self.last_metrics.elapsed() >= self.metrics_every {
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

/// Serves one upgraded connection.
pub async fn serve(
    socket: WebSocket,
    hub: Hub,
    config: Arc<ServerConfig>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    query: DashboardQuery,
    identity: Result<Identity, String>,
    recheck: Option<Recheck>,
) {
    let metrics = hub.metrics().clone();
    let outbound = Arc::new(Outbound::new(config.queue, metrics.clone()));
    let (tx, rx) = mpsc::channel(65_536);
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
    let mut dashboard = Dashboard {
        cluster: cluster_id.clone().unwrap_or_default(),
        outbound: outbound.clone(),
        _subscriptions: Vec::new(),
        waiting: BTreeSet::new(),
        nodes: BTreeMap::new(),
        pods: BTreeMap::new(),
        namespaces: BTreeMap::new(),
        wanted_namespaces: wanted.clone(),
        bucket: TokenBucket::new(PER_SECOND, BURST),
        batch: Vec::new(),
        batch_bytes: 0,
        metrics_every: config.dashboard_metrics_interval,
        last_metrics: Instant::now(),
        recheck: None,
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
                json!({"type": "connection", "status": "connected", "timestamp": now(),
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
            match identity {
                Err(message) => outbound.push_forced(error_frame(
                    "PERMISSION_DENIED",
                    "access denied",
                    &message,
                )),
                Ok(identity) => {
                    dashboard.recheck = recheck
                        .as_ref()
                        .and_then(|r| r.register(cluster.clone(), tx.clone()));
                    let mut paths = vec![
                        (Stream::Nodes, "/api/v1/nodes".to_string()),
                        (Stream::Namespaces, "/api/v1/namespaces".to_string()),
                    ];
                    match &wanted {
                        None => paths.push((Stream::Pods(0), "/api/v1/pods".to_string())),
                        Some(ns) => paths.extend(ns.iter().enumerate().map(|(i, n)| {
                            (Stream::Pods(i), format!("/api/v1/namespaces/{n}/pods"))
                        })),
                    }
                    for (stream, path) in paths {
                        let sink = Arc::new(Sink {
                            stream,
                            tx: tx.clone(),
                        });
                        let request = SubscribeRequest {
                            cluster: cluster.id(),
                            path: &path,
                            query: QUERY,
                            identity: &identity,
                        };
                        match hub.subscribe(request, sink) {
                            Ok(sub) => {
                                dashboard.waiting.insert(stream);
                                dashboard._subscriptions.push(sub);
                            }
                            Err(e) => outbound.push_forced(error_frame(
                                "WATCH_ERROR",
                                &format!("cannot watch {path}"),
                                &e.to_string(),
                            )),
                        }
                    }
                }
            }
        }
    }
    let ctx = ConnContext {
        dialect: "dashboard",
        outbound,
        liveness: config.dashboard_liveness,
        metrics,
        shutdown,
    };
    conn::run(socket, ctx, rx, dashboard).await
}
