//! Headlamp's WebSocket multiplexer protocol (`/wsMultiplexer`).
//!
//! Client messages: `{clusterId, path, query, userId, type}` with `type`
//! `REQUEST` or `CLOSE`. Server frames echo the subscriber's own
//! clusterId/path/query, because Headlamp's frontend routes them by
//! `clusterId:path:query`:
//! - `DATA`: `data` is the watch event as a JSON string;
//! - `ERROR`: `data` is `{"error":"…"}` as a JSON string;
//! - `COMPLETE`: the subscription has ended; nothing more follows. Also
//!   after the ERROR that refuses a REQUEST (bad input, no credentials,
//!   unknown cluster, refused resource, limits), so the client knows that
//!   subscription will never start.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, OnceLock};

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::debug;

use super::Services;
use super::sink::{Deliver, Sink};
use crate::auth::credentials::Credentials;
use crate::auth::policy::Policy;
use crate::auth::recheck::{Access, Principal, RecheckHandle};
use crate::hub::{EndReason, Hub, Identity, ResourcePath, SubscribeRequest, Subscription, key};
use crate::upstream::event::WatchEvent;
use crate::ws::WebSocket;
use crate::ws::conn::{self, ConnContext, Dialect, Liveness};
use crate::ws::deflate;
use crate::ws::limits::{TokenBucket, limit};
use crate::ws::outbound::{Block, Blocks, Frame, Outbound, Replay};

/// The subprotocol Headlamp's frontend offers.
pub const PROTOCOL: &str = "headlamp.multiplexer.k8s.io";

/// Limits and timings of `/wsMultiplexer` connections. Its `Default` is
/// the default of the settings that land here (`--max-message-size`,
/// `--message-rate`, `--backlog-messages`…, see `config`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Largest client message, in bytes; larger closes with 1009.
    pub max_message_size: usize,
    /// Most subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Client messages per second per connection, refilled continuously…
    /// Headlamp sends a REQUEST (and a CLOSE) for every change of a list it
    /// shows, so the default is far above what a person causes; messages
    /// beyond it are delayed, not refused, and only a flood past the
    /// backlog closes the connection.
    pub message_rate: f64,
    /// …with bursts of up to this many.
    pub message_burst: f64,
    /// Most messages a connection may have waiting for the rate limit; one
    /// that floods beyond it is closed (1008), so a flood costs bounded
    /// memory. A few thousand is far more than a person's tabs cause in a
    /// burst.
    pub backlog_messages: usize,
    /// Most bytes of text waiting for the rate limit, for the same reason:
    /// the message count alone would allow thousands of maximum-size
    /// messages.
    pub backlog_bytes: usize,
    /// Ping, pong, write and idle deadlines.
    pub liveness: Liveness,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_message_size: 64 * 1024,
            max_subscriptions: 1000,
            message_rate: 1000.0,
            message_burst: 2000.0,
            backlog_messages: 4096,
            backlog_bytes: 4 << 20,
            liveness: Liveness::default(),
        }
    }
}

/// Serves one upgraded connection (a plain `fn`: see [`conn::run`]).
pub fn serve(
    socket: WebSocket,
    services: Services,
    settings: Arc<Settings>,
    credentials: Credentials,
) -> impl Future<Output = ()> {
    let (hub, policy, shutdown) = (services.hub, services.policy, services.shutdown);
    let outbound = Arc::new(socket.outbound(hub.metrics().clone()));
    let liveness = settings.liveness;
    let (notices_tx, notices_rx) = mpsc::unbounded_channel();
    debug!(
        ?credentials,
        mode = policy.mode().as_str(),
        "headlamp connection"
    );
    let dialect = Headlamp {
        credentials,
        policy,
        hub: hub.clone(),
        outbound: outbound.clone(),
        notices: notices_tx,
        subs: HashMap::new(),
        next_token: 1,
        messages: TokenBucket::new(settings.message_rate, settings.message_burst),
        delayed: VecDeque::new(),
        delayed_bytes: 0,
        wake: None,
        flooded: false,
        compress: socket.compresses(),
        settings,
    };
    let ctx = ConnContext {
        dialect: "headlamp",
        outbound,
        liveness,
        metrics: hub.metrics().clone(),
        shutdown,
    };
    conn::run(socket, ctx, notices_rx, dialect)
}

/// A subscription as the client names it.
type SubKey = (String, String, String);

/// What comes back to the connection's task from elsewhere, boxed on its
/// way: the channel allocates room for 32 of what it carries when it is
/// made, which for this enum (three strings and more) was ~3 KiB of every
/// idle connection.
enum Notice {
    /// The hub ended this subscription (its frames were already queued).
    Ended(SubKey, u64),
    /// The review (`shared` and `passthrough` modes) of a requested
    /// subscription finished.
    Reviewed(SubKey, u64, Result<(), String>),
    /// A periodic re-check found the caller no longer authorised.
    Revoked(SubKey, u64, String),
}

enum Slot {
    /// Waiting for its review; no event is sent before it succeeds.
    Pending {
        token: u64,
        resource: ResourcePath,
        identity: Identity,
    },
    /// Subscribed; re-checked (`shared` and `passthrough` modes) for as
    /// long as it lives.
    Active {
        token: u64,
        _subscription: Subscription,
        _recheck: Option<RecheckHandle>,
    },
}

impl Slot {
    fn token(&self) -> u64 {
        match self {
            Slot::Pending { token, .. } | Slot::Active { token, .. } => *token,
        }
    }
}

struct Headlamp {
    credentials: Credentials,
    policy: Policy,
    hub: Hub,
    outbound: Arc<Outbound>,
    notices: mpsc::UnboundedSender<Box<Notice>>,
    subs: HashMap<SubKey, Slot>,
    next_token: u64,
    /// Client messages other than CLOSE spend a token; CLOSE only ever
    /// lowers the load, so it is always honoured at once.
    messages: TokenBucket,
    /// Messages that found the bucket empty, processed in order as it
    /// refills. Delayed rather than refused, because Headlamp never
    /// resends a REQUEST: a refused one would freeze that list.
    delayed: VecDeque<(Delayed, usize)>,
    /// Bytes of the delayed messages' text, bounded by [`Settings::backlog_bytes`].
    delayed_bytes: usize,
    /// When the next delayed message can be processed.
    wake: Option<tokio::time::Instant>,
    /// The backlog overflowed and the connection is closing: whatever the
    /// client still sends is ignored.
    flooded: bool,
    /// Whether the client negotiated permessage-deflate, so DATA frames
    /// carry their deflate blocks.
    compress: bool,
    settings: Arc<Settings>,
}

/// A client message waiting for a token.
enum Delayed {
    /// A text message, parsed (or the reason it could not be).
    Text(Result<ClientMessage, String>),
    /// A binary message (always answered with an ERROR).
    Binary,
}

/// A client message's fields, before any meaning is given to them.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientMessage {
    /// The cluster asked for.
    #[serde(default)]
    pub cluster_id: Option<String>,
    /// The watch path.
    #[serde(default)]
    pub path: Option<String>,
    /// The watch query.
    #[serde(default)]
    pub query: Option<String>,
    /// `REQUEST` or `CLOSE` when well-formed.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

/// Parses one client text message; the error is the text of the ERROR
/// frame that answers it. Public so the fuzz targets drive the very code
/// the connection runs on untrusted bytes.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, String> {
    let parsed = if text.trim_start().starts_with('{') {
        serde_json::from_str::<ClientMessage>(text).map_err(|e| e.to_string())
    } else {
        Err("not an object".to_string())
    };
    parsed.map_err(|e| {
        if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
            format!(
                "invalid message: expected an object with clusterId, path, query and type ({e})"
            )
        } else {
            format!("invalid message: not JSON ({e})")
        }
    })
}

impl Dialect for Headlamp {
    type Notice = Box<Notice>;

    fn on_text(&mut self, text: &str) {
        let parsed = parse_client_message(text);
        if let Ok(m) = &parsed
            && m.kind.as_deref() == Some("CLOSE")
        {
            return self.close(m);
        }
        self.admit(Delayed::Text(parsed), text.len());
    }

    fn on_binary(&mut self, _data: &[u8]) {
        // Not kept (only its ERROR is owed), so it costs no bytes.
        self.admit(Delayed::Binary, 0);
    }

    fn wake_at(&self) -> Option<tokio::time::Instant> {
        self.wake
    }

    fn on_wake(&mut self) {
        self.drain();
    }

    fn on_notice(&mut self, notice: Box<Notice>) {
        match *notice {
            Notice::Ended(key, token) => {
                if self.subs.get(&key).is_some_and(|s| s.token() == token) {
                    self.subs.remove(&key);
                }
            }
            Notice::Reviewed(key, token, result) => {
                let Some(Slot::Pending { token: t, .. }) = self.subs.get(&key) else {
                    return;
                };
                if *t != token {
                    return;
                }
                let Some(Slot::Pending {
                    resource, identity, ..
                }) = self.subs.remove(&key)
                else {
                    return;
                };
                match result {
                    Ok(()) => self.subscribe(key, token, resource, identity),
                    Err(message) => self.end_frames(&key, &message),
                }
            }
            Notice::Revoked(key, token, message) => {
                if matches!(self.subs.get(&key), Some(Slot::Active { token: t, .. }) if *t == token)
                {
                    self.subs.remove(&key);
                    self.end_frames(&key, &message);
                }
            }
        }
    }

    /// Messages still waiting for the rate limit are work owed, not idleness.
    fn is_idle(&self) -> bool {
        self.subs.is_empty() && self.delayed.is_empty()
    }
}

impl Headlamp {
    /// A message other than CLOSE: processed now if a token is there and
    /// nothing is waiting before it, otherwise delayed in order.
    fn admit(&mut self, message: Delayed, bytes: usize) {
        if self.flooded {
            return;
        }
        if self.delayed.is_empty() && self.messages.try_take() {
            return self.process(message);
        }
        if self.delayed.len() >= self.settings.backlog_messages
            || self.delayed_bytes + bytes > self.settings.backlog_bytes
        {
            self.hub.metrics().refused(limit::MESSAGE_RATE);
            let (rate, burst) = (self.settings.message_rate, self.settings.message_burst);
            self.delayed.clear();
            self.delayed_bytes = 0;
            self.wake = None;
            self.flooded = true;
            return self.outbound.close_with(
                conn::close::POLICY,
                &format!("message_rate: over {rate}/s (bursts of {burst}) with a full backlog"),
            );
        }
        self.delayed_bytes += bytes;
        self.delayed.push_back((message, bytes));
        self.drain();
    }

    /// Processes the delayed messages the bucket has tokens for, and
    /// notes when the next one can go.
    fn drain(&mut self) {
        while !self.delayed.is_empty() && self.messages.try_take() {
            if let Some((message, bytes)) = self.delayed.pop_front() {
                self.delayed_bytes -= bytes;
                self.process(message);
            }
        }
        if self.delayed.is_empty() {
            self.wake = None;
        } else {
            self.wake = Some(tokio::time::Instant::from_std(self.messages.ready_at()));
        }
    }

    /// CLOSE, at once: ends the subscription and drops any REQUEST for it
    /// still waiting, so the outcome is the one processing in order gives.
    fn close(&mut self, m: &ClientMessage) {
        let key = (
            m.cluster_id.clone().unwrap_or_default(),
            m.path.clone().unwrap_or_default(),
            m.query.clone().unwrap_or_default(),
        );
        self.delayed.retain(|(d, _)| {
            !matches!(d, Delayed::Text(Ok(r)) if r.kind.as_deref() == Some("REQUEST")
                && r.cluster_id.as_deref().unwrap_or_default() == key.0
                && r.path.as_deref().unwrap_or_default() == key.1
                && r.query.as_deref().unwrap_or_default() == key.2)
        });
        self.delayed_bytes = self.delayed.iter().map(|(_, bytes)| bytes).sum();
        self.subs.remove(&key);
    }

    fn process(&mut self, message: Delayed) {
        let msg = match message {
            Delayed::Text(Ok(m)) => m,
            Delayed::Text(Err(why)) => return self.error_frame("", "", "", &why),
            Delayed::Binary => {
                return self.error_frame(
                    "",
                    "",
                    "",
                    "invalid message: binary frames are not accepted, send JSON text",
                );
            }
        };
        let cluster = msg.cluster_id.unwrap_or_default();
        let path = msg.path.unwrap_or_default();
        let query = msg.query.unwrap_or_default();
        match msg.kind.as_deref() {
            Some("REQUEST") => self.request(cluster, path, query),
            Some("") | None => self.error_frame(
                &cluster,
                &path,
                &query,
                "invalid message: missing field type (REQUEST or CLOSE)",
            ),
            Some(other) => {
                let other: String = other.chars().take(40).collect();
                self.error_frame(
                    &cluster,
                    &path,
                    &query,
                    &format!("invalid message: unknown type {other:?}, expected REQUEST or CLOSE"),
                )
            }
        }
    }

    fn request(&mut self, cluster: String, path: String, query: String) {
        let key = (cluster, path, query);
        if self.subs.contains_key(&key) {
            return;
        }
        let (cluster, path, query) = &key;
        if cluster.is_empty() {
            return self.refuse(
                cluster,
                path,
                query,
                "invalid message: missing or empty field clusterId",
            );
        }
        if self.subs.len() >= self.settings.max_subscriptions {
            return self.refuse(
                cluster,
                path,
                query,
                &format!(
                    "too many subscriptions on this connection (limit {})",
                    self.settings.max_subscriptions
                ),
            );
        }
        // The whole request is validated before any review, so a malformed
        // one costs the cluster nothing and always gets its specific error.
        let resource = match key::normalize(cluster, path, query) {
            Ok((_, resource, _)) => resource,
            Err(e) => return self.refuse(cluster, path, query, &e.to_string()),
        };
        let identity = match self.policy.identity(&self.credentials, cluster, &resource) {
            Ok(identity) => identity,
            Err(denied) => return self.refuse(cluster, path, query, &denied.to_string()),
        };
        let token = self.next_token;
        self.next_token += 1;
        let Some((reviewer, _)) = self.policy.review() else {
            return self.subscribe(key, token, resource, identity);
        };
        let Some(target) = self.hub.clusters().get(cluster) else {
            return self.refuse(
                cluster,
                path,
                query,
                &format!("unknown cluster {cluster:?}"),
            );
        };
        let (reviewer, credentials, notices) = (
            reviewer.clone(),
            self.credentials.clone(),
            self.notices.clone(),
        );
        let (checked_key, checked_resource) = (key.clone(), resource.clone());
        tokio::spawn(async move {
            let verdict = reviewer
                .check(
                    &target,
                    credentials.token_for(target.id()),
                    &checked_resource,
                    false,
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            let _ = notices.send(Box::new(Notice::Reviewed(checked_key, token, verdict)));
        });
        self.subs.insert(
            key,
            Slot::Pending {
                token,
                resource,
                identity,
            },
        );
    }

    fn subscribe(&mut self, key: SubKey, token: u64, resource: ResourcePath, identity: Identity) {
        let (cluster, path, query) = &key;
        let sink = Arc::new(Sink(HeadlampSink {
            outbound: self.outbound.clone(),
            head: Head::new(cluster, path, query).compressing(self.compress),
            key: key.clone(),
            token,
            notices: self.notices.clone(),
        }));
        let request = SubscribeRequest {
            cluster,
            path,
            query,
            identity: &identity,
        };
        match self.hub.subscribe(request, sink) {
            Ok(subscription) => {
                let recheck = self.register_recheck(&key, token, &resource);
                self.subs.insert(
                    key,
                    Slot::Active {
                        token,
                        _subscription: subscription,
                        _recheck: recheck,
                    },
                );
            }
            Err(e) => self.refuse(cluster, path, query, &e.to_string()),
        }
    }

    /// Registers a live subscription with the server's re-check service
    /// (`shared` and `passthrough` modes), so that a revocation seen at a
    /// tick ends it with ERROR + COMPLETE even while its upstream watch
    /// (shared, or another connection's in `passthrough`) goes on. Every
    /// subscription of every connection with the same token on the same
    /// collection is one question per tick.
    fn register_recheck(
        &self,
        key: &SubKey,
        token: u64,
        resource: &ResourcePath,
    ) -> Option<RecheckHandle> {
        let rechecks = self.policy.rechecks()?;
        let cluster = self.hub.clusters().get(&key.0)?;
        let principal = Principal::Token(self.credentials.token_for(&key.0)?.into());
        let (notices, key) = (self.notices.clone(), key.clone());
        Some(rechecks.register(
            cluster,
            principal,
            Access::list_and_watch(resource),
            move |e| {
                let _ = notices.send(Box::new(Notice::Revoked(key.clone(), token, e.to_string())));
            },
        ))
    }

    /// ERROR then COMPLETE: the subscription ended for `message`.
    fn end_frames(&self, (cluster, path, query): &SubKey, message: &str) {
        let head = Head::new(cluster, path, query);
        self.outbound.push_forced(error_frame(&head, message));
        self.outbound.push_forced(complete_frame(&head));
    }

    /// Answers a bad client message. The answer is queued like an event,
    /// within the connection's bounds: a client that floods bad messages
    /// without reading the answers is disconnected (1008) rather than
    /// allowed to grow its queue.
    fn error_frame(&self, cluster: &str, path: &str, query: &str, message: &str) {
        let frame = error_frame(&Head::new(cluster, path, query), message);
        self.outbound.answer(frame);
    }

    /// Refuses a REQUEST: ERROR, then COMPLETE (nothing more will come for
    /// it), unless the same subscription is already live (a repeated
    /// REQUEST), which carries on. Within the connection's bounds, like
    /// [`Self::error_frame`].
    fn refuse(&self, cluster: &str, path: &str, query: &str, message: &str) {
        let key = (cluster.to_string(), path.to_string(), query.to_string());
        let head = Head::new(cluster, path, query);
        let live = self.subs.contains_key(&key);
        self.outbound.answer(error_frame(&head, message));
        if !live {
            self.outbound.answer(complete_frame(&head));
        }
    }
}

/// `{"clusterId":…,"path":…,"query":…` — the part every frame of one
/// subscriber starts with, encoded once per subscription, with the deflate
/// block of a DATA frame's start (head and `,"data":`) cached once a
/// compressing connection needs it.
#[derive(Clone)]
struct Head(Arc<HeadParts>);

struct HeadParts {
    text: Bytes,
    /// Whether DATA frames carry their deflate blocks: only for a
    /// connection that sends them compressed, so the others pay no
    /// reference counts for them.
    compress: bool,
    data_block: OnceLock<Bytes>,
}

impl Head {
    fn new(cluster: &str, path: &str, query: &str) -> Head {
        let text = serde_json::json!({"clusterId": cluster, "path": path, "query": query})
            .to_string()
            .trim_end_matches('}')
            .to_string();
        Head(Arc::new(HeadParts {
            text: Bytes::from(text),
            compress: false,
            data_block: OnceLock::new(),
        }))
    }

    /// The same head, for a connection that sends DATA frames compressed
    /// when `compress`.
    fn compressing(self, compress: bool) -> Head {
        Head(Arc::new(HeadParts {
            text: self.text(),
            compress,
            data_block: OnceLock::new(),
        }))
    }

    fn text(&self) -> Bytes {
        self.0.text.clone()
    }
}

impl Block for HeadParts {
    fn block(&self) -> Bytes {
        self.data_block
            .get_or_init(|| Bytes::from(deflate::block(&[&self.text[..], DATA_GLUE].concat())))
            .clone()
    }
}

/// The event as a DATA frame embeds it (a JSON string), deflated: one of
/// the event's derived values, so it is computed once per event.
struct DeflatedBody(Bytes);

impl Block for WatchEvent {
    fn block(&self) -> Bytes {
        self.derived(|event| DeflatedBody(Bytes::from(deflate::shared_block(event.json_string()))))
            .0
            .clone()
    }
}

const DATA_GLUE: &[u8] = b",\"data\":";
const DATA_TAIL: &[u8] = b",\"type\":\"DATA\"}";

/// [`DATA_TAIL`] as a DATA frame's last deflate block, the same for every
/// frame.
static DATA_TAIL_BLOCK: LazyLock<Bytes> =
    LazyLock::new(|| Bytes::from(deflate::compress(DATA_TAIL)));

fn error_frame(head: &Head, message: &str) -> Frame {
    let data = serde_json::json!({ "error": message }).to_string();
    let data = serde_json::Value::String(data).to_string();
    Frame::from_parts([
        head.text(),
        Bytes::from_static(DATA_GLUE),
        Bytes::from(data),
        Bytes::from_static(b",\"type\":\"ERROR\"}"),
    ])
}

fn complete_frame(head: &Head) -> Frame {
    Frame::from_parts([
        head.text(),
        Bytes::from_static(b",\"type\":\"COMPLETE\"}"),
        Bytes::new(),
        Bytes::new(),
    ])
}

struct HeadlampSink {
    outbound: Arc<Outbound>,
    head: Head,
    key: SubKey,
    token: u64,
    notices: mpsc::UnboundedSender<Box<Notice>>,
}

/// A DATA frame, with the blocks that send it compressed: the
/// subscription's prefix, the event's body and the shared tail, each
/// deflated once.
fn data_frame(head: &Head, event: &Arc<WatchEvent>) -> Frame {
    let frame = Frame::from_parts([
        head.text(),
        Bytes::from_static(DATA_GLUE),
        event.json_string().clone(),
        Bytes::from_static(DATA_TAIL),
    ]);
    if !head.0.compress {
        return frame;
    }
    frame.with_blocks(Blocks {
        prefix: head.0.clone(),
        body: event.clone(),
        last: DATA_TAIL_BLOCK.clone(),
        private: 2,
    })
}

impl Deliver for HeadlampSink {
    type Lane = Arc<Outbound>;

    fn lane(&self) -> &Arc<Outbound> {
        &self.outbound
    }

    fn event(&self, event: &Arc<WatchEvent>) -> Frame {
        data_frame(&self.head, event)
    }

    fn replay(&self, events: Vec<Arc<WatchEvent>>) -> Replay {
        let head = self.head.clone();
        Replay::new(
            events
                .into_iter()
                .map(move |event| data_frame(&head, &event)),
        )
    }

    fn problem(&self, message: &str) -> Option<Frame> {
        Some(error_frame(&self.head, message))
    }

    fn end(&self, reason: EndReason) -> Vec<Frame> {
        let error = match reason {
            EndReason::Failed(message) => Some(error_frame(&self.head, &message)),
            EndReason::SlowConsumer => Some(error_frame(
                &self.head,
                "slow consumer: the client did not read events fast enough; subscription ended",
            )),
            EndReason::Timeout | EndReason::Expired | EndReason::Shutdown => None,
        };
        error
            .into_iter()
            .chain([complete_frame(&self.head)])
            .collect()
    }

    /// The connection forgets the subscription, so the same REQUEST may
    /// start it again.
    fn ended(&self) {
        let _ = self
            .notices
            .send(Box::new(Notice::Ended(self.key.clone(), self.token)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_headlamps_shape() {
        let head = Head::new("c", "/api/v1/pods", "watch=1");
        let v: serde_json::Value =
            serde_json::from_str(&error_frame(&head, "boom \"x\"").into_string()).unwrap();
        assert_eq!(v["clusterId"], "c");
        assert_eq!(v["query"], "watch=1");
        assert_eq!(v["type"], "ERROR");
        let data: serde_json::Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["error"], "boom \"x\"");
        let v: serde_json::Value =
            serde_json::from_str(&complete_frame(&head).into_string()).unwrap();
        assert_eq!(v["type"], "COMPLETE");
        assert_eq!(v["path"], "/api/v1/pods");
    }

    /// Text of `len` characters from `seed`: runs of repeated JSON-ish
    /// words (so deflate finds back-references), random ASCII, quotes,
    /// backslashes and non-ASCII characters.
    fn text(seed: u64, len: usize) -> String {
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let pieces = [
            "\"name\":",
            "é",
            "ü",
            "日本",
            "🦀",
            "\\",
            "\"",
            "\n",
            "status",
        ];
        let mut out = String::new();
        while out.chars().count() < len {
            let r = next();
            match r % 4 {
                0 => out.push_str(pieces[(r >> 8) as usize % pieces.len()]),
                1 => out.push(char::from(b' ' + (r >> 8) as u8 % 95)),
                2 => out.push(char::from_u32(0xa0 + (r >> 8) as u32 % 0x2000).unwrap_or('?')),
                _ => out.push_str("metadata"),
            }
        }
        out.chars().take(len).collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("KUBEMUX_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(300)
        ))]

        /// A DATA frame's cached blocks, concatenated and given back the
        /// sync flush's trailer, inflate to exactly the frame a client
        /// without compression gets, whatever the subscription and the
        /// event.
        #[test]
        fn a_compressed_data_frame_inflates_to_the_plain_one(
            seeds in proptest::prelude::any::<[u64; 4]>(),
            lens in (0usize..200, 0usize..200, 0usize..200),
            body in proptest::prop_oneof![0usize..64, 0usize..4096, 60_000usize..70_000],
        ) {
            let head = Head::new(
                &text(seeds[0], lens.0),
                &text(seeds[1], lens.1),
                &text(seeds[2], lens.2),
            ).compressing(true);
            let object = serde_json::json!({"metadata": {"name": "p"}, "data": text(seeds[3], body)});
            let event = Arc::new(
                WatchEvent::synthesize(crate::upstream::event::EventType::Modified, object.to_string().as_bytes())
                    .expect("an object"),
            );
            let frame = data_frame(&head, &event);
            let blocks = frame.blocks().expect("a DATA frame has blocks").parts();
            let mut payload: Vec<u8> = blocks.iter().flat_map(|b| b.iter().copied()).collect();
            payload.extend_from_slice(&[0x00, 0x00, 0xff, 0xff]);
            let plain = frame.to_vec();
            let mut inflated = Vec::with_capacity(plain.len() + 1024);
            let status = flate2::Decompress::new(false)
                .decompress_vec(&payload, &mut inflated, flate2::FlushDecompress::Sync)
                .expect("a valid raw deflate stream");
            proptest::prop_assert_ne!(status, flate2::Status::StreamEnd, "no block may be final");
            proptest::prop_assert_eq!(inflated, plain);
            // A connection without compression gets no blocks to count.
            proptest::prop_assert!(data_frame(&Head::new("c", "p", "q"), &event).blocks().is_none());
            // The second subscriber's frame reuses both caches.
            let again = data_frame(&head, &event);
            proptest::prop_assert!(std::ptr::eq(
                again.blocks().expect("blocks").parts()[1].as_ptr(),
                blocks[1].as_ptr()
            ));
        }
    }
}
