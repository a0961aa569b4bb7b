//! The authenticated subscription API (seed 003) at `/ws/v1` (or `/ws` on
//! `--subscriptions-listen`): a JWT `auth` message first, then `subscribe`
//! to workspace (cluster), project (namespace) and monitoring event
//! families, `get_workspace_status`, and `stream_logs`/`stop_stream`.
//!
//! Every family is derived from hub watches made with kubemux's own
//! identity, so any number of consoles cost one upstream watch per
//! resource; each subscription and command is first authorised for the
//! JWT's user and groups with SubjectAccessReviews (cached), and live
//! subscriptions are re-checked every recheck interval.

pub mod events;
mod registry;
mod sub;
mod work;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::{Services, WATCH_LIST, timestamp};
use crate::dialect::sink::{Sink, Tagged, Update, end_message};
use crate::ws::WebSocket;
use serde_json::{Value, json};
use tokio::task::{AbortHandle, JoinSet};
use tracing::debug;

use crate::auth::jwt::JwtVerifier;
use crate::auth::recheck::{Access, Principal, RecheckHandle, Rechecks};
use crate::auth::review::User;
use crate::hub::{Hub, Identity, SubscribeRequest};
use crate::upstream::event::WatchEvent;
use crate::ws::conn::{self, ConnContext, Dialect, Liveness};
use crate::ws::limits::TokenBucket;
use crate::ws::notice::{self, NoticeSender};
use crate::ws::outbound::{Frame, Outbound};
use registry::{Subscriptions, Unannounced};
use sub::{Family, Stream, Sub};
use work::{LogRequest, Refusal, envelope, error_frame};

/// Most live events waiting for the connection's task; a subscription's
/// initial state is one of them, whatever its size.
const EVENT_NOTICES: usize = 65_536;

/// Limits and timings of subscription-API connections; the defaults are
/// seed 003's, and those of the `--console-…` settings that land here.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Largest client message; larger gets `MESSAGE_TOO_LARGE` and the
    /// socket closes.
    pub max_message_size: usize,
    /// Subscriptions per connection.
    pub max_subscriptions: usize,
    /// Concurrent log streams per connection.
    pub max_log_streams: usize,
    /// Client messages per second, sustained…
    pub message_rate: f64,
    /// …and in a burst.
    pub message_burst: f64,
    /// Interval of the seed's `{"type":"ping"}` messages.
    pub ping_interval: Duration,
    /// A connection that has not authenticated after this long is closed.
    pub auth_deadline: Duration,
    /// WebSocket-level liveness (as the other dialects) and the seed's idle
    /// timeout: a connection without any client message for this long is
    /// closed.
    pub liveness: Liveness,
}

impl Settings {
    /// The socket's own limit: messages between
    /// [`Settings::max_message_size`] and this are read so the client can
    /// be told why it is closed; beyond it the socket closes with 1009
    /// without reading them.
    pub fn socket_limit(&self) -> usize {
        self.max_message_size.saturating_mul(4)
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_message_size: 1024 * 1024,
            max_subscriptions: 100,
            max_log_streams: 5,
            message_rate: 100.0,
            message_burst: 200.0,
            ping_interval: Duration::from_secs(30),
            auth_deadline: Duration::from_secs(30),
            liveness: Liveness {
                ping_interval: Duration::from_secs(30),
                pong_timeout: Duration::from_secs(30),
                write_timeout: Duration::from_secs(10),
                idle_timeout: Some(Duration::from_secs(300)),
            },
        }
    }
}

/// How consoles are authenticated and authorised.
#[derive(Debug)]
pub struct ConsoleAuth {
    /// Verifies the `auth` message's JWT.
    pub verifier: JwtVerifier,
    /// SubjectAccessReviews for the JWT's user (cached, through its
    /// reviewer) and re-checks of live subscriptions and log streams: the
    /// server's one re-check service when the other dialects have one.
    pub rechecks: Rechecks,
}

/// A subscribe request that passed validation, waiting for its review.
struct Pending {
    request_id: Value,
    family: Family,
    cluster: String,
    project: Option<String>,
    events: BTreeSet<&'static str>,
    explicit_metrics: bool,
}

/// Notices from hub subscriptions and background tasks.
enum Notice {
    /// What the hub said about one stream of a subscription.
    Hub((u64, Stream), Update),
    Authorised(Box<Pending>, Result<bool, Refusal>),
    Revoked(Target, String),
    LogEnded(String),
}

impl From<((u64, Stream), Update)> for Notice {
    fn from((tag, update): ((u64, Stream), Update)) -> Self {
        Notice::Hub(tag, update)
    }
}

/// What a periodic re-check found revoked.
#[derive(Clone)]
enum Target {
    Sub(u64),
    Log(String),
}

/// A running log stream, re-authorised like a subscription.
struct LogStream {
    handle: AbortHandle,
    id: Value,
    _recheck: Option<RecheckHandle>,
}

struct Console {
    hub: Hub,
    auth: Arc<ConsoleAuth>,
    outbound: Arc<Outbound>,
    notices: NoticeSender<Notice>,
    user: Option<User>,
    expires: Option<SystemTime>,
    opened: Instant,
    subs: Subscriptions,
    next_sub: u64,
    pending: usize,
    logs: HashMap<String, LogStream>,
    tasks: JoinSet<()>,
    /// The per-connection message rate.
    bucket: TokenBucket,
    last_ping: Instant,
    settings: Arc<Settings>,
}

fn text_of<'a>(data: &'a Value, field: &str) -> Option<&'a str> {
    data[field].as_str().filter(|s| !s.is_empty())
}

fn invalid(message: impl Into<String>) -> Refusal {
    Refusal::new("INVALID_MESSAGE_FORMAT", message)
}

impl Console {
    /// Applies events of one subscription's stream and sends what they change.
    fn on_events(&mut self, key: u64, stream: Stream, events: &[Arc<WatchEvent>]) {
        let Some(sub) = self.subs.get_mut(key) else {
            return;
        };
        let mut out = Vec::new();
        for event in events {
            sub.apply(stream, event, &mut out);
        }
        let synced = sub.synced();
        if let Some(waiting) = self.subs.unannounced_mut(key) {
            waiting.buffered.append(&mut out);
            if synced {
                self.announce(key);
            }
        } else if !out.is_empty()
            && let Some(sub) = self.subs.get(key)
        {
            self.emit(sub, out);
        }
    }

    /// Queues an error within the connection's bounds: a client flooding
    /// bad messages without reading the answers is disconnected (1008)
    /// rather than allowed to grow its queue.
    fn send_error(&self, id: &Value, refusal: &Refusal) {
        self.outbound.answer(error_frame(id, refusal));
    }

    /// Refuses a `subscribe`: the seed's generic `error` (as every other
    /// refusal), then a `subscribe_result` with `success: false`, because
    /// the seed's own client class settles its `subscribe()` promise only
    /// on a `subscribe_result` whose `data` carries the request `id`,
    /// `success` and `error` (its handlers receive `message.data`).
    fn refuse_subscribe(&self, id: &Value, refusal: &Refusal) {
        self.send_error(id, refusal);
        let frame = Frame::text(
            json!({
                "type": "subscribe_result",
                "id": id,
                "timestamp": timestamp(),
                "success": false,
                "error": refusal.message,
                "code": refusal.code,
                "data": {"id": id, "success": false, "error": refusal.message,
                         "code": refusal.code, "details": refusal.details},
            })
            .to_string(),
        );
        self.outbound.answer(frame);
    }

    fn take_token(&mut self) -> bool {
        self.bucket.try_take()
    }

    /// The cluster a message names (`workspace_id`), or the default one.
    fn cluster_of(&self, data: &Value) -> Result<Arc<crate::cluster::Cluster>, Refusal> {
        let registry = self.hub.clusters();
        let id = text_of(data, "workspace_id")
            .map(str::to_string)
            .or_else(|| registry.default_id())
            .ok_or_else(|| invalid("workspace_id is required"))?;
        registry.get(&id).ok_or_else(|| Refusal {
            code: "RESOURCE_NOT_FOUND",
            message: format!(
                "workspace {:?} does not exist: workspaces are the clusters kubemux serves",
                id.chars().take(100).collect::<String>()
            ),
            details: json!({"workspaces": registry.ids()}),
        })
    }

    fn on_auth(&mut self, id: &Value, message: &Value) {
        if self.user.is_some() {
            self.send_error(id, &invalid("already authenticated"));
            return;
        }
        let token = message["token"]
            .as_str()
            .or_else(|| message["data"]["token"].as_str())
            .unwrap_or_default();
        match self.auth.verifier.verify(token) {
            Ok(verified) => {
                let user = verified.user;
                self.expires = verified.expires;
                debug!(user = %user.name, "console authenticated");
                self.outbound.push_forced(Frame::text(
                    json!({
                        "type": "auth_result",
                        "id": id,
                        "timestamp": timestamp(),
                        "success": true,
                        "user_id": user.name,
                        "message": "Authenticated successfully",
                    })
                    .to_string(),
                ));
                self.user = Some(user);
            }
            Err(e) => {
                self.outbound.push_forced(Frame::text(
                    json!({"type": "auth_result", "id": id, "timestamp": timestamp(),
                           "success": false, "error": e.to_string()})
                    .to_string(),
                ));
                self.send_error(id, &Refusal::new("INVALID_TOKEN", e.to_string()));
                self.outbound
                    .close_with(conn::close::POLICY, "invalid token");
            }
        }
    }

    fn on_subscribe(&mut self, id: &Value, data: &Value) -> Result<(), Refusal> {
        let resource =
            text_of(data, "resource").ok_or_else(|| invalid("data.resource is required"))?;
        let family = match resource {
            "workspace" => Family::Workspace,
            "project" => Family::Project,
            "monitoring" => Family::Monitoring,
            "organization" | "provisioning" => {
                return Err(Refusal {
                    code: "RESOURCE_NOT_FOUND",
                    message: format!(
                        "{resource} events have no Kubernetes source: kubemux derives events from clusters (workspace), namespaces (project) and cluster health (monitoring)"
                    ),
                    details: json!({"resource": resource, "supported": ["workspace", "project", "monitoring"]}),
                });
            }
            other => {
                return Err(Refusal {
                    code: "INVALID_MESSAGE_FORMAT",
                    message: format!(
                        "unknown resource {:?}",
                        other.chars().take(40).collect::<String>()
                    ),
                    details: json!({"supported": ["workspace", "project", "monitoring"]}),
                });
            }
        };
        let cluster = self.cluster_of(data)?;
        let project = match family {
            Family::Project => {
                let ns = text_of(data, "project_id")
                    .ok_or_else(|| invalid("data.project_id is required"))?;
                crate::hub::key::parse_path(&format!("/api/v1/namespaces/{ns}/pods"))
                    .ok()
                    .filter(|_| !ns.contains(['/', '?', '&', '=', '%']))
                    .ok_or_else(|| invalid("project_id is not a namespace name"))?;
                Some(ns.to_string())
            }
            _ => None,
        };
        let all = family.events();
        let (events, explicit_metrics) = match &data["events"] {
            Value::Null => (all.iter().copied().collect::<BTreeSet<_>>(), false),
            Value::Array(items) => {
                let mut chosen = BTreeSet::new();
                for item in items {
                    let name = item.as_str().unwrap_or_default();
                    let full = all
                        .iter()
                        .find(|e| {
                            **e == name || e.split_once('.').is_some_and(|(_, short)| short == name)
                        })
                        .ok_or_else(|| Refusal {
                            code: "INVALID_MESSAGE_FORMAT",
                            message: format!(
                                "unknown {resource} event {:?}",
                                name.chars().take(60).collect::<String>()
                            ),
                            details: json!({"supported": all}),
                        })?;
                    chosen.insert(*full);
                }
                let metrics = chosen.contains("monitoring.metrics_update");
                (chosen, metrics)
            }
            _ => return Err(invalid("data.events must be a list of event names")),
        };
        let current = self.subs.len() + self.pending;
        let max = self.settings.max_subscriptions;
        if current >= max {
            return Err(Refusal {
                code: "SUBSCRIPTION_LIMIT_EXCEEDED",
                message: format!("Maximum number of subscriptions ({max}) exceeded"),
                details: json!({
                    "current_subscriptions": current,
                    "requested_subscription": format!("{resource}:{}", project.as_deref().unwrap_or(cluster.id())),
                }),
            });
        }
        let checks = subscription_checks(family, project.as_deref(), &events).map_err(invalid)?;
        self.pending += 1;
        let pending = Box::new(Pending {
            request_id: id.clone(),
            family,
            cluster: cluster.id().to_string(),
            project,
            events,
            explicit_metrics,
        });
        let (reviewer, user, notices) = (
            self.auth.rechecks.reviewer().clone(),
            self.user(),
            self.notices.clone(),
        );
        let wants_metrics = pending.events.contains("monitoring.metrics_update");
        self.tasks.spawn(async move {
            let result = match work::authorise(&reviewer, &cluster, &user, &checks, false).await {
                Err(refusal) => Err(refusal),
                Ok(()) if wants_metrics => Ok(work::metrics_available(&cluster).await),
                Ok(()) => Ok(false),
            };
            notices.control(Notice::Authorised(pending, result));
        });
        Ok(())
    }

    fn on_authorised(&mut self, pending: Pending, result: Result<bool, Refusal>) {
        self.pending -= 1;
        let metrics = match result {
            Err(refusal) => return self.refuse_subscribe(&pending.request_id, &refusal),
            Ok(metrics) => metrics,
        };
        let mut events = pending.events;
        if events.contains("monitoring.metrics_update") && !metrics {
            if pending.explicit_metrics {
                return self.refuse_subscribe(
                    &pending.request_id,
                    &Refusal {
                        code: "RESOURCE_NOT_FOUND",
                        message: format!(
                            "workspace {:?} does not serve metrics.k8s.io (install metrics-server), so monitoring.metrics_update is unavailable",
                            pending.cluster
                        ),
                        details: json!({"event": "monitoring.metrics_update"}),
                    },
                );
            }
            events.remove("monitoring.metrics_update");
        }
        let Some(cluster) = self.hub.clusters().get(&pending.cluster) else {
            return self.refuse_subscribe(
                &pending.request_id,
                &Refusal::new("RESOURCE_NOT_FOUND", "the workspace was removed"),
            );
        };
        let key = self.next_sub;
        self.next_sub += 1;
        let subscription_id = uuid::Uuid::new_v4().to_string();
        let mut sub = Sub::new(
            subscription_id.clone(),
            pending.family,
            pending.cluster.clone(),
            pending.project.clone(),
            events.clone(),
        );
        for stream in Stream::of(pending.family) {
            let (path, query) = stream.path(pending.project.as_deref());
            let query = if query.is_empty() {
                WATCH_LIST.to_string()
            } else {
                format!("{WATCH_LIST}&{query}")
            };
            let sink = Arc::new(Sink(Tagged {
                tag: (key, *stream),
                lane: self.notices.clone(),
            }));
            let request = SubscribeRequest {
                cluster: &pending.cluster,
                path: &path,
                query: &query,
                identity: &Identity::Proxy,
            };
            match self.hub.subscribe(request, sink) {
                Ok(s) => sub.hubs.push(s),
                Err(e) => {
                    return self.refuse_subscribe(
                        &pending.request_id,
                        &Refusal::new("RESOURCE_NOT_FOUND", e.to_string()),
                    );
                }
            }
        }
        let result = Frame::text(
            json!({
                "type": "subscribe_result",
                "id": pending.request_id,
                "timestamp": timestamp(),
                "success": true,
                "subscription_id": subscription_id,
                // `data` repeats `id` and `success` for the seed's client
                // class, whose handlers see only `message.data`.
                "data": {"id": pending.request_id, "success": true, "subscription_id": subscription_id,
                         "resource": pending.family.name(), "events": events},
            })
            .to_string(),
        );
        let unannounced = Unannounced {
            request_id: pending.request_id,
            result,
            buffered: Vec::new(),
            metrics: events
                .contains("monitoring.metrics_update")
                .then_some(cluster),
        };
        if let Ok(checks) = subscription_checks(pending.family, pending.project.as_deref(), &events)
        {
            sub.recheck = self.register_recheck(&pending.cluster, &checks, Target::Sub(key));
        }
        debug!(subscription = %subscription_id, family = pending.family.name(), cluster = %pending.cluster, "console subscribed");
        self.subs.insert(key, sub, unannounced);
    }

    /// Sends a subscription's `subscribe_result`, then what its initial
    /// state raised, and starts its metrics polling.
    fn announce(&mut self, key: u64) {
        let Some(waiting) = self.subs.take_unannounced(key) else {
            return;
        };
        self.outbound.push_forced(waiting.result);
        let Some(sub) = self.subs.get_mut(key) else {
            return;
        };
        if let Some(cluster) = waiting.metrics {
            sub.task = Some(tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
                work::poll_metrics(cluster, sub.id.clone(), self.outbound.clone()),
            )));
        }
        if let Some(sub) = self.subs.get(key) {
            self.emit(sub, waiting.buffered);
        }
    }

    /// Announces the subscription (an error belongs after its result) and
    /// sends `refusal` as its error.
    fn subscription_error(&mut self, key: u64, refusal: Refusal) {
        self.announce(key);
        let Some(sub) = self.subs.get(key) else {
            return;
        };
        let id = Value::String(sub.id.clone());
        self.send_error(
            &id,
            &Refusal {
                details: json!({"subscription_id": sub.id}),
                ..refusal
            },
        );
    }

    fn on_unsubscribe(&mut self, id: &Value, data: &Value) -> Result<(), Refusal> {
        let sid = text_of(data, "subscription_id")
            .ok_or_else(|| invalid("data.subscription_id is required"))?;
        let key = self.subs.key_of(sid).ok_or_else(|| Refusal {
            code: "RESOURCE_NOT_FOUND",
            message: "no such subscription on this connection".into(),
            details: json!({"subscription_id": sid}),
        })?;
        self.subs.remove(key);
        self.outbound.push_forced(Frame::text(
            json!({"type": "unsubscribe_result", "id": id, "timestamp": timestamp(),
                   "success": true, "subscription_id": sid, "data": {"subscription_id": sid}})
            .to_string(),
        ));
        Ok(())
    }

    fn user(&self) -> User {
        self.user.clone().unwrap_or_else(|| User {
            name: String::new(),
            uid: None,
            groups: Vec::new(),
        })
    }

    fn on_workspace_status(&mut self, id: &Value, data: &Value) -> Result<(), Refusal> {
        let cluster = self.cluster_of(data)?;
        let checks = vec![
            Access::on_path("list", "/api/v1/nodes").map_err(invalid)?,
            Access::on_path("list", "/api/v1/pods").map_err(invalid)?,
        ];
        let (hub, reviewer, user, outbound, id) = (
            self.hub.clone(),
            self.auth.rechecks.reviewer().clone(),
            self.user(),
            self.outbound.clone(),
            id.clone(),
        );
        self.tasks.spawn(async move {
            let answer = match work::authorise(&reviewer, &cluster, &user, &checks, false).await {
                Ok(()) => work::workspace_status(&hub, &cluster).await,
                Err(refusal) => Err(refusal),
            };
            outbound.push_forced(match answer {
                Ok(data) => envelope("workspace_status", &id, data),
                Err(refusal) => error_frame(&id, &refusal),
            });
        });
        Ok(())
    }

    fn on_stream_logs(&mut self, id: &Value, data: &Value) -> Result<(), Refusal> {
        let cluster = self.cluster_of(data)?;
        let namespace =
            text_of(data, "namespace").ok_or_else(|| invalid("data.namespace is required"))?;
        let pod = text_of(data, "pod").ok_or_else(|| invalid("data.pod is required"))?;
        let tail_lines = match &data["tail_lines"] {
            Value::Null => None,
            v => Some(
                v.as_i64()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| invalid("data.tail_lines must be a non-negative integer"))?,
            ),
        };
        let follow = match &data["follow"] {
            Value::Null => false,
            v => v
                .as_bool()
                .ok_or_else(|| invalid("data.follow must be a boolean"))?,
        };
        let stream_id = match id {
            Value::String(s) if !s.is_empty() => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return Err(invalid("stream_logs needs an id: it becomes the stream_id")),
        };
        if self.logs.contains_key(&stream_id) {
            return Err(invalid(format!(
                "a log stream with id {stream_id:?} is already running"
            )));
        }
        let max = self.settings.max_log_streams;
        if self.logs.len() >= max {
            return Err(Refusal {
                code: "SUBSCRIPTION_LIMIT_EXCEEDED",
                message: format!("Maximum number of concurrent log streams ({max}) exceeded"),
                details: json!({"current_streams": self.logs.len(), "requested_stream": stream_id}),
            });
        }
        let mut check = Access::on_path("get", &format!("/api/v1/namespaces/{namespace}/pods"))
            .map_err(|_| invalid("data.namespace is not a namespace name"))?;
        check.subresource = Some("log");
        let recheck = self.register_recheck(
            cluster.id(),
            std::slice::from_ref(&check),
            Target::Log(stream_id.clone()),
        );
        let request = LogRequest {
            stream_id: id.clone(),
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            container: text_of(data, "container").map(str::to_string),
            follow,
            tail_lines,
        };
        let (reviewer, user, outbound, notices, sid) = (
            self.auth.rechecks.reviewer().clone(),
            self.user(),
            self.outbound.clone(),
            self.notices.clone(),
            stream_id.clone(),
        );
        let handle = self.tasks.spawn(async move {
            let id = request.stream_id.clone();
            let result = match work::authorise(&reviewer, &cluster, &user, &[check], false).await {
                Ok(()) => work::stream_logs(cluster, request, outbound.clone()).await,
                Err(refusal) => Err(refusal),
            };
            match result {
                Ok(()) => outbound.push_forced(envelope(
                    "stream_ended",
                    &id,
                    json!({"stream_id": id, "reason": "completed"}),
                )),
                Err(refusal) => outbound.push_forced(error_frame(&id, &refusal)),
            }
            notices.control(Notice::LogEnded(sid));
        });
        self.logs.insert(
            stream_id,
            LogStream {
                handle,
                id: id.clone(),
                _recheck: recheck,
            },
        );
        Ok(())
    }

    fn on_stop_stream(&mut self, id: &Value, data: &Value) -> Result<(), Refusal> {
        let stream_id = match &data["stream_id"] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return Err(invalid("data.stream_id is required")),
        };
        let stream = self.logs.remove(&stream_id).ok_or_else(|| Refusal {
            code: "RESOURCE_NOT_FOUND",
            message: "no such log stream on this connection".into(),
            details: json!({"stream_id": stream_id}),
        })?;
        stream.handle.abort();
        self.outbound.push_forced(envelope(
            "stream_ended",
            id,
            json!({"stream_id": stream_id, "reason": "stopped"}),
        ));
        Ok(())
    }

    fn dispatch(&mut self, kind: &str, id: &Value, message: &Value) -> Result<(), Refusal> {
        let data = &message["data"];
        match kind {
            "subscribe" => self.on_subscribe(id, data),
            "unsubscribe" => self.on_unsubscribe(id, data),
            "get_workspace_status" => self.on_workspace_status(id, data),
            "stream_logs" => self.on_stream_logs(id, data),
            "stop_stream" => self.on_stop_stream(id, data),
            other => Err(invalid(format!(
                "unknown message type {:?}",
                other.chars().take(40).collect::<String>()
            ))),
        }
    }

    fn emit(&self, sub: &Sub, events: Vec<(&'static str, Value)>) {
        for (kind, mut data) in events {
            if !sub.events.contains(kind) {
                continue;
            }
            data["subscription_id"] = Value::String(sub.id.clone());
            let frame = envelope(kind, &Value::String(sub.id.clone()), data);
            if self.outbound.push(frame).is_err() {
                self.outbound
                    .close_with(conn::close::POLICY, "slow consumer");
                return;
            }
        }
    }

    /// Registers `checks` of the connection's user with the re-check
    /// service, so a revoked user loses `target` within one interval; the
    /// same question from any number of consoles is one review per tick.
    fn register_recheck(
        &self,
        cluster: &str,
        checks: &[Access],
        target: Target,
    ) -> Option<RecheckHandle> {
        let user = self.user.clone()?;
        let cluster = self.hub.clusters().get(cluster)?;
        let accesses = checks.to_vec();
        let notices = self.notices.clone();
        Some(
            self.auth
                .rechecks
                .register(cluster, Principal::User(user), accesses, move |e| {
                    notices.control(Notice::Revoked(target.clone(), e.to_string()))
                }),
        )
    }
}

impl Dialect for Console {
    type Notice = Notice;

    fn on_text(&mut self, text: &str) {
        let parsed = serde_json::from_str::<Value>(text);
        let id = parsed
            .as_ref()
            .map(|m| m["id"].clone())
            .unwrap_or(Value::Null);
        let limit = self.settings.max_message_size;
        if text.len() > limit {
            self.send_error(
                &id,
                &Refusal {
                    code: "MESSAGE_TOO_LARGE",
                    message: format!("Message exceeds the size limit ({limit} bytes)"),
                    details: json!({"size": text.len(), "limit": limit}),
                },
            );
            self.outbound
                .close_with(conn::close::TOO_BIG, "message too large");
            return;
        }
        let is_subscribe = parsed
            .as_ref()
            .is_ok_and(|m| m["type"].as_str() == Some("subscribe"));
        let refuse = |console: &Self, refusal: &Refusal| {
            if is_subscribe {
                console.refuse_subscribe(&id, refusal);
            } else {
                console.send_error(&id, refusal);
            }
        };
        if !self.take_token() {
            refuse(
                self,
                &Refusal {
                    code: "RATE_LIMIT_EXCEEDED",
                    message: "Too many messages sent".into(),
                    details: json!({"per_second": self.settings.message_rate, "burst": self.settings.message_burst}),
                },
            );
            return;
        }
        let message = match parsed {
            Ok(m @ Value::Object(_)) => m,
            Ok(_) => return self.send_error(&id, &invalid("a message must be a JSON object")),
            Err(e) => return self.send_error(&id, &invalid(format!("not JSON: {e}"))),
        };
        let Some(kind) = message["type"].as_str() else {
            return self.send_error(&id, &invalid("the message has no string \"type\""));
        };
        match kind {
            "pong" => {}
            "ping" => self.outbound.answer(Frame::text(
                json!({"type": "pong", "id": id, "timestamp": timestamp()}).to_string(),
            )),
            "auth" => self.on_auth(&id, &message),
            _ if self.user.is_none() => refuse(
                self,
                &Refusal::new(
                    "AUTH_REQUIRED",
                    "Authentication required: send {\"type\":\"auth\",\"token\":\"<JWT>\"} first",
                ),
            ),
            kind => {
                let kind = kind.to_string();
                if let Err(refusal) = self.dispatch(&kind, &id, &message) {
                    refuse(self, &refusal);
                }
            }
        }
    }

    fn on_binary(&mut self, _data: &[u8]) {
        self.send_error(
            &Value::Null,
            &invalid("binary messages are not accepted; send JSON text"),
        );
    }

    fn on_notice(&mut self, notice: Notice) {
        match notice {
            Notice::Hub((key, stream), update) => match update {
                Update::Event(event) => self.on_events(key, stream, &[event]),
                Update::Replay(events) => self.on_events(key, stream, &events),
                Update::Problem(message) => {
                    self.subscription_error(key, Refusal::new("WORKSPACE_UNAVAILABLE", message))
                }
                Update::Ended(reason) => {
                    let refusal = Refusal::new("SUBSCRIPTION_ENDED", end_message(reason));
                    if let Some((_, Some(waiting))) = self.subs.remove_unannounced(key) {
                        return self.refuse_subscribe(&waiting.request_id, &refusal);
                    }
                    self.subscription_error(key, refusal);
                    self.subs.remove(key);
                }
            },
            Notice::Authorised(pending, result) => self.on_authorised(*pending, result),
            Notice::Revoked(Target::Log(stream_id), message) => {
                if let Some(stream) = self.logs.remove(&stream_id) {
                    stream.handle.abort();
                    self.send_error(
                        &stream.id,
                        &Refusal {
                            code: "PERMISSION_DENIED",
                            message: format!("access revoked: {message}"),
                            details: json!({"stream_id": stream.id}),
                        },
                    );
                }
            }
            Notice::Revoked(Target::Sub(key), message) => {
                self.announce(key);
                if let Some((sub, _)) = self.subs.remove(key) {
                    self.send_error(
                        &Value::String(sub.id.clone()),
                        &Refusal {
                            code: "PERMISSION_DENIED",
                            message: format!("access revoked: {message}"),
                            details: json!({"subscription_id": sub.id}),
                        },
                    );
                }
            }
            Notice::LogEnded(stream_id) => {
                self.logs.remove(&stream_id);
            }
        }
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(250))
    }

    /// The seed's idle timeout counts every client message (its `pong`s
    /// included), whatever is subscribed.
    fn is_idle(&self) -> bool {
        true
    }

    fn on_tick(&mut self) {
        while self.tasks.try_join_next().is_some() {}
        if self.user.is_none() && self.opened.elapsed() >= self.settings.auth_deadline {
            self.send_error(
                &Value::Null,
                &Refusal::new("AUTH_REQUIRED", "no auth message within the deadline"),
            );
            self.outbound
                .close_with(conn::close::POLICY, "authentication timeout");
            return;
        }
        if self.expires.is_some_and(|at| SystemTime::now() >= at) {
            self.send_error(
                &Value::Null,
                &Refusal::new(
                    "INVALID_TOKEN",
                    "token expired: reconnect and authenticate with a fresh token",
                ),
            );
            self.outbound
                .close_with(conn::close::POLICY, "token expired");
            return;
        }
        if self.last_ping.elapsed() >= self.settings.ping_interval {
            self.last_ping = Instant::now();
            self.outbound.push_forced(Frame::text(
                json!({"type": "ping", "timestamp": timestamp()}).to_string(),
            ));
        }
        for key in self.subs.keys() {
            let Some(sub) = self.subs.get_mut(key) else {
                continue;
            };
            let Some(cluster) = self.hub.clusters().get(&sub.cluster) else {
                continue;
            };
            let mut out = Vec::new();
            sub.tick(&cluster.health(), &mut out);
            if !out.is_empty()
                && let Some(sub) = self.subs.get(key)
            {
                self.emit(sub, out);
            }
        }
    }
}

/// What a subscription needs, checked when it subscribes and at every
/// re-check: `list` and `watch` on each of its family's hub watches, the
/// project's own namespace object aside (its watch selects that one
/// namespace; the project is authorised by its quotas), and `list` on node
/// metrics when it receives `monitoring.metrics_update`.
fn subscription_checks(
    family: Family,
    project: Option<&str>,
    events: &BTreeSet<&'static str>,
) -> Result<Vec<Access>, String> {
    let mut checks = Vec::new();
    for stream in Stream::of(family) {
        let path = match stream {
            Stream::Namespace => continue,
            s => s.path(project).0,
        };
        for verb in ["list", "watch"] {
            checks.push(Access::on_path(verb, &path)?);
        }
    }
    if events.contains("monitoring.metrics_update") {
        checks.push(Access::on_path(
            "list",
            "/apis/metrics.k8s.io/v1beta1/nodes",
        )?);
    }
    Ok(checks)
}

/// Serves one upgraded connection.
pub async fn serve(
    socket: WebSocket,
    services: Services,
    settings: Arc<Settings>,
    auth: Arc<ConsoleAuth>,
) {
    let Services { hub, shutdown, .. } = services;
    let metrics = hub.metrics().clone();
    let outbound = Arc::new(socket.outbound(metrics.clone()));
    let (tx, rx) = notice::channel(EVENT_NOTICES);
    let now = Instant::now();
    let console = Console {
        hub,
        auth,
        outbound: outbound.clone(),
        notices: tx,
        user: None,
        expires: None,
        opened: now,
        subs: Subscriptions::default(),
        next_sub: 0,
        pending: 0,
        logs: HashMap::new(),
        tasks: JoinSet::new(),
        bucket: TokenBucket::new(settings.message_rate, settings.message_burst),
        last_ping: now,
        settings: settings.clone(),
    };
    let ctx = ConnContext {
        dialect: "console",
        outbound,
        liveness: settings.liveness,
        metrics,
        shutdown,
    };
    conn::run(socket, ctx, rx, console).await
}
