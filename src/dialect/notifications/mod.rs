//! Cluster-change notifications (seed 002): `cluster.added`,
//! `cluster.updated` and `cluster.deleted` with `data.name`, for frontends
//! that then fetch `/api/clusters/{name}`.
//!
//! One [`Feed`] per server turns the registry's changes, the health probes
//! and each cluster's node readiness (from a shared nodes watch on the hub)
//! into notifications, debouncing bursts of updates per cluster. It runs only
//! while at least one notification client is connected, so it costs the
//! clusters nothing otherwise.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::ws::WebSocket;
use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use crate::cluster::ClusterChange;
use crate::hub::{EndReason, Hub, Identity, Overflow, SubscribeRequest, Subscriber, Subscription};
use crate::upstream::event::WatchEvent;
use crate::ws::conn::{self, ConnContext, Dialect, Liveness};
use crate::ws::outbound::Frame;

/// Limits and timings of cluster-notification connections; the defaults
/// are seed 002's, and those of the `--notifications-…` settings that land
/// here.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Largest incoming message; larger closes with 1009.
    pub max_message_size: usize,
    /// Updates to one cluster closer together than this are merged.
    pub debounce: Duration,
    /// Ping, pong and write deadlines.
    pub liveness: Liveness,
}

impl Default for Settings {
    /// Seed 002's: ping every 54 s, pong wait 60 s, 10 s write deadline,
    /// incoming messages over 512 bytes close with 1009. The seed's pong
    /// wait runs from the last pong (gorilla's read deadline); with pings
    /// every 54 s that is 6 s after each ping, which is how the connection
    /// loop counts it: a client silent from the start is closed at 60 s
    /// exactly.
    fn default() -> Self {
        Settings {
            max_message_size: 512,
            debounce: Duration::from_secs(1),
            liveness: Liveness {
                idle_timeout: None,
                ping_interval: Duration::from_secs(54),
                pong_timeout: Duration::from_secs(6),
                write_timeout: Duration::from_secs(10),
            },
        }
    }
}

/// Produces cluster notifications while clients listen.
pub struct Feed {
    hub: Hub,
    debounce: Duration,
    poll: Duration,
    tx: broadcast::Sender<Arc<str>>,
    running: Mutex<(usize, Option<tokio::task::AbortHandle>)>,
}

/// Keeps the feed running; dropping the last one stops it.
pub struct Listening {
    feed: Arc<Feed>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        let mut running = self.feed.running.lock();
        running.0 -= 1;
        if running.0 == 0
            && let Some(task) = running.1.take()
        {
            task.abort();
        }
    }
}

impl Feed {
    /// A feed over the hub's clusters; updates for one cluster closer
    /// together than `debounce` are merged.
    pub fn new(hub: Hub, debounce: Duration) -> Arc<Feed> {
        Arc::new(Feed {
            hub,
            debounce,
            poll: Duration::from_millis(200),
            tx: broadcast::channel(1024).0,
            running: Mutex::new((0, None)),
        })
    }

    /// Starts listening (and the feed, if it is the first listener).
    pub fn listen(self: &Arc<Self>) -> (Listening, broadcast::Receiver<Arc<str>>) {
        let rx = self.tx.subscribe();
        let mut running = self.running.lock();
        running.0 += 1;
        if running.1.is_none() {
            running.1 = Some(tokio::spawn(run(Arc::downgrade(self))).abort_handle());
        }
        (Listening { feed: self.clone() }, rx)
    }

    fn send(&self, kind: &str, name: &str) {
        let msg = serde_json::json!({"type": kind, "data": {"name": name}}).to_string();
        let _ = self.tx.send(msg.into());
    }
}

/// Holds a shared nodes watch open while the feed runs, so the hub knows
/// each cluster's node counts ([`Hub::node_counts`]) and the feed sees them
/// change; the events themselves are read from the watch's store.
struct NodesWatched;

impl Subscriber for NodesWatched {
    fn event(&self, _event: &Arc<WatchEvent>) -> Result<(), Overflow> {
        Ok(())
    }

    fn warning(&self, _message: &str) {}

    fn end(&self, _reason: EndReason) {}
}

/// What the feed last announced about a cluster.
type Seen = (Option<bool>, Option<String>, Option<u32>, Option<u32>);

async fn run(feed: Weak<Feed>) {
    let Some(hub) = feed.upgrade().map(|f| f.hub.clone()) else {
        return;
    };
    let registry = hub.clusters().clone();
    let mut changes = registry.changes();
    let mut seen: BTreeMap<String, (Seen, Option<Subscription>)> = BTreeMap::new();
    let mut due: BTreeMap<String, Instant> = BTreeMap::new();
    let poll = feed
        .upgrade()
        .map_or(Duration::from_millis(200), |f| f.poll);
    let mut tick = tokio::time::interval(poll);
    loop {
        tokio::select! {
            change = changes.recv() => {
                let Some(feed) = feed.upgrade() else { return };
                match change {
                    Ok(ClusterChange::Added(id)) => feed.send("cluster.added", &id),
                    Ok(ClusterChange::Removed(id)) => {
                        seen.remove(&id);
                        due.remove(&id);
                        feed.send("cluster.deleted", &id);
                    }
                    Ok(ClusterChange::Updated(id)) => {
                        seen.remove(&id);
                        due.entry(id).or_insert_with(|| Instant::now() + feed.debounce);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
            _ = tick.tick() => {
                let Some(feed) = feed.upgrade() else { return };
                for cluster in registry.all() {
                    let h = cluster.health();
                    let counts = hub.node_counts(cluster.id()).ok();
                    let now: Seen = (
                        h.reachable,
                        h.version.clone(),
                        counts.map(|c| c.ready),
                        counts.map(|c| c.total),
                    );
                    match seen.get_mut(cluster.id()) {
                        None => {
                            let sub = hub
                                .subscribe(
                                    SubscribeRequest {
                                        cluster: cluster.id(),
                                        path: "/api/v1/nodes",
                                        query: "",
                                        identity: &Identity::Proxy,
                                    },
                                    Arc::new(NodesWatched),
                                )
                                .ok();
                            seen.insert(cluster.id().to_string(), (now, sub));
                        }
                        Some((before, _)) => {
                            let counts_known = before.2.is_some() || now.2.is_none();
                            if *before != now && (counts_known || before.0 != now.0 || before.1 != now.1) {
                                due.entry(cluster.id().to_string())
                                    .or_insert_with(|| Instant::now() + feed.debounce);
                            }
                            *before = now;
                        }
                    }
                }
                let ready: Vec<String> = due
                    .iter()
                    .filter(|(_, at)| **at <= Instant::now())
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in ready {
                    due.remove(&id);
                    if registry.get(&id).is_some() {
                        feed.send("cluster.updated", &id);
                    }
                }
            }
        }
    }
}

/// The dialect itself: notification-only, incoming data is ignored.
struct Notifications {
    _listening: Listening,
}

impl Dialect for Notifications {
    type Notice = ();

    fn on_text(&mut self, _text: &str) {}

    fn on_notice(&mut self, _notice: ()) {}
}

/// Serves one upgraded connection.
pub async fn serve(
    socket: WebSocket,
    feed: Arc<Feed>,
    settings: &Settings,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let metrics = feed.hub.metrics().clone();
    let outbound = Arc::new(socket.outbound(metrics.clone()));
    let (listening, mut rx) = feed.listen();
    let forward_to = outbound.clone();
    let forward = tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(msg) => {
                    if forward_to.push(Frame::text(msg.as_ref())).is_err() {
                        forward_to.close_with(conn::close::POLICY, "slow consumer");
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    forward_to.close_with(
                        conn::close::POLICY,
                        "slow consumer: notifications were missed, reconnect",
                    );
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let (_tx, notices) = mpsc::unbounded_channel();
    let ctx = ConnContext {
        dialect: "notifications",
        outbound,
        liveness: settings.liveness,
        metrics,
        shutdown,
    };
    conn::run(
        socket,
        ctx,
        notices,
        Notifications {
            _listening: listening,
        },
    )
    .await;
    forward.abort();
}
