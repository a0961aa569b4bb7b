//! One shared watch: the upstream task, the cache, and the subscribers that
//! share them.
//!
//! A subscriber whose version the cache cannot serve by itself is served by
//! a *side stream*: an extra upstream watch from that version under the
//! shared watch's identity. A backfill (the version is older than the
//! history) relays the events the history no longer holds and, once they
//! reach the history, hands its subscribers over to the live stream and
//! leaves those events in the history for the next client. A forward (the
//! cluster's versions are not integers, so the cache cannot order them)
//! relays the server's stream for as long as its subscribers stay. Either is
//! shared by every subscriber asking for the same thing, and only the API
//! server's own answer ends one: a 410 reaches clients only when the
//! cluster itself no longer serves their version.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use tokio::task::AbortHandle;
use tracing::{Instrument, info};

use super::HubInner;
use super::watch_cache::{Cache, Start};
use super::key::{ClientParams, WatchKey};
use super::subscriber::{EndReason, Subscriber};
use crate::metrics::{ClusterLabel, Metrics};
use crate::upstream::event::WatchEvent;
use crate::upstream::{
    self, FirstAnswer, FollowEnd, Listing, UpstreamConfig, UpstreamError, WatchSink, WatchTarget,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Identifies a subscriber within its shared watch.
pub type SubscriberId = u64;

/// Identifies a side stream within its shared watch.
type SideId = u64;

/// A forward keeps what it relayed so that a subscriber asking for the same
/// version later is served from its start; past this many events it takes
/// no new subscribers (they get a side stream of their own).
const FORWARD_REPLAY_LIMIT: usize = 1_000;

enum Phase {
    /// Waiting for the first listing.
    Pending,
    /// Waiting for the cache to reach this version, as the API server waits
    /// for a version it has not reached yet.
    Waiting(u64),
    /// Receiving live events.
    Live,
    /// Served by a side stream; `cursor` is the version of the last event it
    /// was given (its own version before the first).
    Side { side: SideId, cursor: u64 },
}

enum SideKind {
    /// Fetches the events after `from` that the history no longer holds;
    /// `cursor` is the newest version they cover so far.
    Backfill { from: u64, cursor: u64 },
    /// Relays the server's stream from `version`, which the cache cannot place.
    Forward { version: String },
}

/// An extra upstream watch serving subscribers the cache cannot serve alone.
struct Side {
    kind: SideKind,
    /// What the side stream delivered so far, for subscribers joining late.
    /// A backfill holds only events the history lacks.
    fetched: Vec<Arc<WatchEvent>>,
    subs: Vec<SubscriberId>,
    task: AbortHandle,
    warned: bool,
}

impl Side {
    /// The newest version a backfill covers; `None` for a forward.
    fn backfilled_to(&self) -> Option<u64> {
        match self.kind {
            SideKind::Backfill { cursor, .. } => Some(cursor),
            SideKind::Forward { .. } => None,
        }
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Sub {
    sink: Arc<dyn Subscriber>,
    params: ClientParams,
    phase: Phase,
    /// Ends the subscription at the client's own `timeoutSeconds`.
    timeout: Option<AbortHandle>,
}

impl Drop for Sub {
    fn drop(&mut self) {
        if let Some(timer) = &self.timeout {
            timer.abort();
        }
    }
}

struct State {
    cache: Cache,
    listed: bool,
    subs: HashMap<SubscriberId, Sub>,
    next_id: SubscriberId,
    sides: HashMap<SideId, Side>,
    next_side: SideId,
    outage_reported: bool,
    stopped: bool,
    linger_generation: u64,
    tasks: Vec<AbortHandle>,
}

/// One upstream watch shared by every subscriber of its key.
pub struct SharedWatch {
    key: WatchKey,
    /// Where side streams are sent; unset for a watch fed by its owner.
    target: OnceLock<(WatchTarget, UpstreamConfig)>,
    hub: Weak<HubInner>,
    metrics: Arc<Metrics>,
    label: ClusterLabel,
    events: AtomicU64,
    state: Mutex<State>,
}

impl SharedWatch {
    pub(super) fn new(
        key: WatchKey,
        hub: Weak<HubInner>,
        metrics: Arc<Metrics>,
        cache: Cache,
    ) -> Self {
        SharedWatch {
            label: Metrics::cluster(key.cluster()),
            key,
            target: OnceLock::new(),
            hub,
            metrics,
            events: AtomicU64::new(0),
            state: Mutex::new(State {
                cache,
                listed: false,
                subs: HashMap::new(),
                next_id: 1,
                sides: HashMap::new(),
                next_side: 1,
                outage_reported: false,
                stopped: false,
                linger_generation: 0,
                tasks: Vec::new(),
            }),
        }
    }

    /// Sets the cluster request side streams are made from (once, at launch).
    pub(super) fn set_target(&self, target: WatchTarget, config: UpstreamConfig) {
        let _ = self.target.set((target, config));
    }

    /// The key this watch serves.
    pub fn key(&self) -> &WatchKey {
        &self.key
    }

    /// Counts one occurrence in a per-cluster counter.
    fn count(&self, family: &Family<ClusterLabel, Counter>) {
        family.get_or_create(&self.label).inc();
    }

    /// Number of current subscribers.
    pub fn subscriber_count(&self) -> usize {
        self.state.lock().subs.len()
    }

    /// Whether the watch has listed and not stopped: a subscriber joining
    /// it is served from its cache at once.
    pub(super) fn is_live(&self) -> bool {
        let st = self.state.lock();
        st.listed && !st.stopped
    }

    /// The current objects as a LIST answer would hold them, if the watch
    /// has listed: `(item kind, apiVersion, resourceVersion, raw objects)`.
    pub(super) fn snapshot_list(&self) -> Option<(String, String, String, Vec<bytes::Bytes>)> {
        let st = self.state.lock();
        if !st.listed || st.stopped {
            return None;
        }
        let (kind, api_version) = st.cache.kind();
        Some((
            kind.to_string(),
            api_version.to_string(),
            st.cache.latest().to_string(),
            st.cache.objects().map(|e| e.object().clone()).collect(),
        ))
    }

    /// Whether the upstream is in an outage (retrying after a failure), so
    /// the store may be behind the cluster.
    pub(super) fn in_outage(&self) -> bool {
        self.state.lock().outage_reported
    }

    /// Upstream events received so far.
    pub fn events_received(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    pub(super) fn add_task(&self, task: AbortHandle) {
        let mut st = self.state.lock();
        if st.stopped {
            task.abort();
        } else {
            st.tasks.push(task);
        }
    }

    /// Adds a subscriber; `None` if this watch has already stopped (the
    /// caller then creates a fresh one).
    pub(super) fn add(
        self: &Arc<Self>,
        sink: Arc<dyn Subscriber>,
        params: ClientParams,
    ) -> Option<SubscriberId> {
        let mut st = self.state.lock();
        if st.stopped {
            return None;
        }
        let id = st.next_id;
        st.next_id += 1;
        st.linger_generation += 1;
        let mut sub = Sub {
            sink,
            params,
            phase: Phase::Pending,
            timeout: None,
        };
        if let Some(secs) = sub.params.timeout_seconds.filter(|s| *s > 0) {
            sub.timeout = Some(self.timer(Duration::from_secs(secs), id, EndReason::Timeout));
        }
        self.metrics.subscribers.inc();
        self.metrics.subscriptions_started.inc();
        if st.listed {
            match self.start(&mut st, id, sub) {
                Some(sub) => {
                    st.subs.insert(id, sub);
                }
                // Cut while being served: if it was the only subscriber,
                // the watch must still linger out and stop.
                None => self.linger_if_emptied(st, 1),
            }
        } else {
            st.subs.insert(id, sub);
        }
        Some(id)
    }

    fn timer(
        self: &Arc<Self>,
        after: Duration,
        id: SubscriberId,
        reason: EndReason,
    ) -> AbortHandle {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            if let Some(watch) = weak.upgrade() {
                watch.end_subscriber(id, reason);
            }
        })
        .abort_handle()
    }

    /// Gives a subscriber being started `events` as one replay; if it
    /// cannot take them it is ended as a slow consumer and `false` returned.
    fn owed(&self, sub: &Sub, events: Vec<Arc<WatchEvent>>) -> bool {
        if events.is_empty() || sub.sink.replay(events).is_ok() {
            return true;
        }
        self.metrics.subscribers.dec();
        self.metrics.slow_consumers.inc();
        sub.sink.end(EndReason::SlowConsumer);
        false
    }

    fn resumed(&self, outcome_name: &'static str) {
        self.metrics
            .resumes
            .get_or_create(&outcome(outcome_name))
            .inc();
    }

    /// Serves a subscriber what it is owed from the cache; returns it if it stays.
    fn start(self: &Arc<Self>, st: &mut State, id: SubscriberId, mut sub: Sub) -> Option<Sub> {
        let plan = st.cache.start(
            sub.params.resource_version.as_deref(),
            sub.params.send_initial_events,
        );
        let (served, events) = match plan {
            Start::Snapshot(events) => ("snapshot", events),
            Start::Replay(events) => ("history", events),
            Start::Invalid(message) => {
                self.resumed("invalid");
                self.metrics.subscribers.dec();
                sub.sink.end(EndReason::Failed(message));
                return None;
            }
            Start::Backfill(from) => {
                let Some(upstream) = self.target.get().cloned() else {
                    // A watch fed by its owner has no cluster to ask: the
                    // history is all there is.
                    let message =
                        format!("too old resource version: {from} ({})", st.cache.horizon());
                    let _ = sub
                        .sink
                        .event(&Arc::new(WatchEvent::status(410, "Expired", &message)));
                    self.resumed("expired");
                    self.metrics.subscribers.dec();
                    sub.sink.end(EndReason::Expired);
                    return None;
                };
                self.resumed("backfilled");
                return self.join_backfill(st, id, sub, from, upstream);
            }
            Start::Forward(version) => {
                let Some(upstream) = self.target.get().cloned() else {
                    let _ = sub.sink.event(&Arc::new(WatchEvent::status(
                        410,
                        "Expired",
                        &format!("too old resource version: {version}"),
                    )));
                    self.resumed("expired");
                    self.metrics.subscribers.dec();
                    sub.sink.end(EndReason::Expired);
                    return None;
                };
                self.resumed("forwarded");
                return self.join_forward(st, id, sub, version, upstream);
            }
            Start::Future(rv) => {
                self.resumed("waited");
                sub.phase = Phase::Waiting(rv);
                return Some(sub);
            }
        };
        self.resumed(served);
        let mut events = events;
        if sub.params.send_initial_events {
            let (kind, api_version) = st.cache.kind();
            let bookmark = WatchEvent::bookmark(kind, api_version, st.cache.latest(), true);
            events.push(Arc::new(bookmark));
        }
        if !self.owed(&sub, events) {
            return None;
        }
        sub.phase = Phase::Live;
        Some(sub)
    }

    /// Puts a subscriber whose version is older than the history on a
    /// backfill: a running one that started at or before its version (it
    /// gets what that one fetched after its version at once), else a new one.
    fn join_backfill(
        self: &Arc<Self>,
        st: &mut State,
        id: SubscriberId,
        mut sub: Sub,
        from: u64,
        upstream: (WatchTarget, UpstreamConfig),
    ) -> Option<Sub> {
        let joinable = st
            .sides
            .iter()
            .filter(
                |(_, side)| matches!(side.kind, SideKind::Backfill { from: f, .. } if f <= from),
            )
            .max_by_key(|(_, side)| side.backfilled_to())
            .map(|(side_id, _)| *side_id);
        let side_id = match joinable {
            Some(side_id) => side_id,
            None => self.spawn_side(
                st,
                upstream,
                SideKind::Backfill { from, cursor: from },
                from.to_string(),
            ),
        };
        let side = self.side_for(st, side_id, &sub)?;
        let owed: Vec<Arc<WatchEvent>> = side
            .fetched
            .iter()
            .filter(|ev| ev.rv() > Some(from))
            .cloned()
            .collect();
        let cursor = owed.last().and_then(|ev| ev.rv()).unwrap_or(from);
        if !self.owed(&sub, owed) {
            return None;
        }
        side.subs.push(id);
        sub.phase = Phase::Side {
            side: side_id,
            cursor,
        };
        Some(sub)
    }

    /// Puts a subscriber whose version the cache cannot place on the forward
    /// from that version, starting one if none may take it.
    fn join_forward(
        self: &Arc<Self>,
        st: &mut State,
        id: SubscriberId,
        mut sub: Sub,
        version: String,
        upstream: (WatchTarget, UpstreamConfig),
    ) -> Option<Sub> {
        let joinable = st
            .sides
            .iter()
            .find(|(_, side)| {
                matches!(&side.kind, SideKind::Forward { version: v } if *v == version)
                    && side.fetched.len() < FORWARD_REPLAY_LIMIT
            })
            .map(|(side_id, _)| *side_id);
        let side_id = match joinable {
            Some(side_id) => side_id,
            None => self.spawn_side(
                st,
                upstream,
                SideKind::Forward {
                    version: version.clone(),
                },
                version,
            ),
        };
        let side = self.side_for(st, side_id, &sub)?;
        if !self.owed(&sub, side.fetched.clone()) {
            return None;
        }
        side.subs.push(id);
        sub.phase = Phase::Side {
            side: side_id,
            cursor: 0,
        };
        Some(sub)
    }

    /// Starts a side stream from `version` under this watch's identity.
    fn spawn_side(
        self: &Arc<Self>,
        st: &mut State,
        (target, config): (WatchTarget, UpstreamConfig),
        kind: SideKind,
        version: String,
    ) -> SideId {
        let side_id = st.next_side;
        st.next_side += 1;
        let first_answer = match kind {
            SideKind::Backfill { .. } => FirstAnswer::Retry,
            SideKind::Forward { .. } => FirstAnswer::Final,
        };
        self.count(&self.metrics.backfill_requests);
        let sink = Arc::new(SideSink {
            watch: Arc::downgrade(self),
            side: side_id,
        });
        let weak = Arc::downgrade(self);
        let span = tracing::info_span!("side", cluster = self.key.cluster(), key = %self.key.short_hash(), side = side_id, from = %version);
        let task = tokio::spawn(
            async move {
                let end = upstream::follow(target, config, version, sink, first_answer).await;
                if let Some(watch) = weak.upgrade() {
                    watch.side_ended(side_id, end);
                }
            }
            .instrument(span),
        );
        st.sides.insert(
            side_id,
            Side {
                kind,
                fetched: Vec::new(),
                subs: Vec::new(),
                task: task.abort_handle(),
                warned: false,
            },
        );
        side_id
    }

    /// The side stream a subscriber joins, or its end if there is none
    /// (which cannot happen: it was just found or started under the lock).
    fn side_for<'s>(&self, st: &'s mut State, side_id: SideId, sub: &Sub) -> Option<&'s mut Side> {
        let side = st.sides.get_mut(&side_id);
        if side.is_none() {
            self.metrics.subscribers.dec();
            sub.sink.end(EndReason::Failed(
                "the side stream for this version vanished".into(),
            ));
        }
        side
    }

    /// An event of a side stream.
    fn side_event(self: &Arc<Self>, side_id: SideId, event: WatchEvent) {
        let mut st = self.state.lock();
        if st.stopped {
            return;
        }
        let before = st.subs.len();
        let horizon = st.cache.horizon();
        let event = Arc::new(event);
        let mut slow = Vec::new();
        let mut complete = false;
        {
            let State { sides, subs, .. } = &mut *st;
            let Some(side) = sides.get_mut(&side_id) else {
                return;
            };
            match &mut side.kind {
                SideKind::Forward { .. } => {
                    if side.fetched.len() < FORWARD_REPLAY_LIMIT {
                        side.fetched.push(event.clone());
                    }
                    for id in &side.subs {
                        if let Some(sub) = subs.get(id)
                            && sub.sink.event(&event).is_err()
                        {
                            slow.push(*id);
                        }
                    }
                }
                SideKind::Backfill { cursor, .. } => {
                    let Some(rv) = event.rv() else {
                        return;
                    };
                    if rv <= *cursor {
                        return;
                    }
                    if rv > horizon {
                        // Nothing lies between what was fetched and the
                        // history: the history (or the live stream) has
                        // this event and everything after it.
                        complete = true;
                    } else {
                        self.count(&self.metrics.backfill_events);
                        side.fetched.push(event.clone());
                        *cursor = rv;
                        complete = rv == horizon;
                        for id in &side.subs {
                            let Some(sub) = subs.get_mut(id) else {
                                continue;
                            };
                            if let Phase::Side { cursor, .. } = &mut sub.phase
                                && *cursor < rv
                            {
                                if sub.sink.event(&event).is_err() {
                                    slow.push(*id);
                                } else {
                                    *cursor = rv;
                                }
                            }
                        }
                    }
                }
            }
        }
        self.cut_slow(&mut st, slow);
        if complete {
            self.complete_backfill(&mut st, side_id);
        }
        self.linger_if_emptied(st, before);
    }

    /// A bookmark of a side stream: nothing changed up to `resource_version`.
    fn side_bookmark(self: &Arc<Self>, side_id: SideId, resource_version: &str) {
        let mut st = self.state.lock();
        let before = st.subs.len();
        let Ok(rv) = resource_version.parse::<u64>() else {
            return;
        };
        let covered = st.sides.get(&side_id).is_some_and(|side| {
            matches!(side.kind, SideKind::Backfill { .. }) && rv >= st.cache.horizon()
        });
        if covered {
            self.complete_backfill(&mut st, side_id);
            self.linger_if_emptied(st, before);
        }
    }

    /// A backfill reached the history: its events extend the history and
    /// its subscribers continue from there on the live stream. Other
    /// backfills the extended history now covers complete too.
    fn complete_backfill(self: &Arc<Self>, st: &mut State, side_id: SideId) {
        let mut done = vec![side_id];
        while let Some(side_id) = done.pop() {
            let Some(side) = st.sides.remove(&side_id) else {
                continue;
            };
            if let SideKind::Backfill { from, .. } = side.kind {
                st.cache.prepend(from, &side.fetched);
            }
            for id in &side.subs {
                let Some(mut sub) = st.subs.remove(id) else {
                    continue;
                };
                let Phase::Side { cursor, .. } = sub.phase else {
                    st.subs.insert(*id, sub);
                    continue;
                };
                if !self.owed(&sub, st.cache.replay_after(cursor)) {
                    continue;
                }
                sub.phase = Phase::Live;
                st.subs.insert(*id, sub);
            }
            let horizon = st.cache.horizon();
            done.extend(
                st.sides
                    .iter()
                    .filter(|(_, s)| s.backfilled_to().is_some_and(|c| c >= horizon))
                    .map(|(id, _)| *id),
            );
        }
    }

    /// A side stream ended for good: the API server's 410 (relayed as it
    /// sent it) or a failure retrying cannot fix.
    fn side_ended(self: &Arc<Self>, side_id: SideId, end: FollowEnd) {
        let mut st = self.state.lock();
        let before = st.subs.len();
        let Some(side) = st.sides.remove(&side_id) else {
            return;
        };
        let (last, reason) = match end {
            FollowEnd::Expired(status) => (Some(Arc::new(status)), EndReason::Expired),
            FollowEnd::Failed(err) => (None, EndReason::Failed(err.to_string())),
        };
        for id in &side.subs {
            let Some(sub) = st.subs.remove(id) else {
                continue;
            };
            self.metrics.subscribers.dec();
            if let Some(last) = &last {
                self.resumed("expired");
                let _ = sub.sink.event(last);
            }
            sub.sink.end(reason.clone());
        }
        self.linger_if_emptied(st, before);
    }

    /// A side stream's outage, reported once to its subscribers.
    fn side_degraded(&self, side_id: SideId, message: &str) {
        let mut st = self.state.lock();
        let State { sides, subs, .. } = &mut *st;
        let Some(side) = sides.get_mut(&side_id) else {
            return;
        };
        if std::mem::replace(&mut side.warned, true) {
            return;
        }
        for id in &side.subs {
            if let Some(sub) = subs.get(id) {
                sub.sink.warning(message);
            }
        }
    }

    fn side_started(&self, side_id: SideId) {
        if let Some(side) = self.state.lock().sides.get_mut(&side_id) {
            side.warned = false;
        }
    }

    /// Takes a subscriber that left off its side stream; the last one to
    /// leave stops it.
    fn leave_side(st: &mut State, id: SubscriberId, sub: &Sub) {
        let Phase::Side { side: side_id, .. } = sub.phase else {
            return;
        };
        if let Some(side) = st.sides.get_mut(&side_id) {
            side.subs.retain(|s| *s != id);
            if side.subs.is_empty() {
                st.sides.remove(&side_id);
            }
        }
    }

    /// Ends subscribers that could not take an event.
    fn cut_slow(&self, st: &mut State, slow: Vec<SubscriberId>) {
        for id in slow {
            if let Some(sub) = st.subs.remove(&id) {
                Self::leave_side(st, id, &sub);
                self.metrics.subscribers.dec();
                self.metrics.slow_consumers.inc();
                info!(key = %self.key.short_hash(), subscriber = id, "slow consumer cut off");
                sub.sink.end(EndReason::SlowConsumer);
            }
        }
    }

    /// Removes a subscriber at the client's request. No end notice is sent.
    pub(super) fn remove(self: &Arc<Self>, id: SubscriberId, linger: Duration) {
        let mut st = self.state.lock();
        let Some(sub) = st.subs.remove(&id) else {
            return;
        };
        Self::leave_side(&mut st, id, &sub);
        self.metrics.subscribers.dec();
        if st.subs.is_empty() && !st.stopped {
            let generation = st.linger_generation;
            drop(st);
            self.schedule_linger(generation, linger);
        }
    }

    /// Releases the state lock and, if subscribers were cut while it was
    /// held (slow consumers, a failed start) and none is left, starts the
    /// linger countdown: nobody else will, because the cut subscribers'
    /// handles find nothing to remove when their connections close.
    fn linger_if_emptied(self: &Arc<Self>, st: MutexGuard<'_, State>, before: usize) {
        let emptied = before > 0 && st.subs.is_empty() && !st.stopped;
        let generation = st.linger_generation;
        drop(st);
        if emptied {
            self.schedule_linger(generation, self.linger());
        }
    }

    fn schedule_linger(self: &Arc<Self>, generation: u64, linger: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return self.expire_if_idle(generation);
        };
        let weak = Arc::downgrade(self);
        runtime.spawn(async move {
            tokio::time::sleep(linger).await;
            if let Some(watch) = weak.upgrade() {
                watch.expire_if_idle(generation);
            }
        });
    }

    fn expire_if_idle(self: &Arc<Self>, generation: u64) {
        {
            let mut st = self.state.lock();
            if st.stopped || !st.subs.is_empty() || st.linger_generation != generation {
                return;
            }
            self.stop_locked(&mut st);
        }
        info!(cluster = self.key.cluster(), key = %self.key.short_hash(), "shared watch idle, stopped");
        self.leave_hub();
    }

    /// Ends one subscriber with a reason (its own `timeoutSeconds`).
    pub(super) fn end_subscriber(self: &Arc<Self>, id: SubscriberId, reason: EndReason) {
        let mut st = self.state.lock();
        let Some(sub) = st.subs.remove(&id) else {
            return;
        };
        Self::leave_side(&mut st, id, &sub);
        self.metrics.subscribers.dec();
        if reason == EndReason::SlowConsumer {
            self.metrics.slow_consumers.inc();
        }
        sub.sink.end(reason);
        if st.subs.is_empty() && !st.stopped {
            let generation = st.linger_generation;
            drop(st);
            self.schedule_linger(generation, self.linger());
        }
    }

    fn linger(&self) -> Duration {
        self.hub
            .upgrade()
            .map_or(Duration::ZERO, |h| h.config.linger)
    }

    /// Stops the watch and ends every subscriber with `reason`. When kubemux
    /// itself shuts down, subscribers that asked for bookmarks first get one
    /// at the newest version, so they resume from there on another replica.
    pub(super) fn shutdown(&self, reason: EndReason) {
        {
            let mut st = self.state.lock();
            if st.stopped {
                return;
            }
            if reason == EndReason::Shutdown {
                self.bookmark_live(&st);
            }
            for (_, sub) in st.subs.drain() {
                self.metrics.subscribers.dec();
                sub.sink.end(reason.clone());
            }
            self.stop_locked(&mut st);
        }
        self.leave_hub();
    }

    fn stop_locked(&self, st: &mut State) {
        st.stopped = true;
        st.sides.clear();
        if let Some(hub) = self.hub.upgrade() {
            hub.release(&self.key);
        }
        for t in st.tasks.drain(..) {
            t.abort();
        }
        self.metrics
            .upstream_watches
            .get_or_create(&self.label)
            .dec();
    }

    fn leave_hub(&self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.watches
                .remove_if(&self.key, |_, w| std::ptr::eq(Arc::as_ptr(w), self));
        }
    }

    /// Sends a bookmark at the latest version to subscribers that asked for them.
    pub(super) fn send_bookmarks(&self) {
        self.bookmark_live(&self.state.lock());
    }

    fn bookmark_live(&self, st: &State) {
        if !st.listed || st.cache.latest().is_empty() {
            return;
        }
        let (kind, api_version) = st.cache.kind();
        let bookmark = Arc::new(WatchEvent::bookmark(
            kind,
            api_version,
            st.cache.latest(),
            false,
        ));
        for sub in st.subs.values() {
            if sub.params.allow_bookmarks && matches!(sub.phase, Phase::Live) {
                let _ = sub.sink.event(&bookmark);
            }
        }
    }

    fn fan_out(self: &Arc<Self>, st: &mut State, events: &[Arc<WatchEvent>]) {
        let mut slow = Vec::new();
        for (id, sub) in st.subs.iter() {
            if !matches!(sub.phase, Phase::Live) {
                continue;
            }
            for ev in events {
                if sub.sink.event(ev).is_err() {
                    slow.push(*id);
                    break;
                }
            }
        }
        self.cut_slow(st, slow);
        self.release_waiters(st);
    }

    fn release_waiters(self: &Arc<Self>, st: &mut State) {
        let latest = st.cache.latest_num();
        let ready: Vec<SubscriberId> = st
            .subs
            .iter()
            .filter(|(_, s)| matches!(s.phase, Phase::Waiting(rv) if rv <= latest))
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            if let Some(sub) = st.subs.remove(&id)
                && let Some(sub) = self.start(st, id, sub)
            {
                st.subs.insert(id, sub);
            }
        }
    }
}

/// Where a side stream's upstream task reports. Holds the watch weakly so
/// the task does not keep a stopped watch alive.
struct SideSink {
    watch: Weak<SharedWatch>,
    side: SideId,
}

impl WatchSink for SideSink {
    fn listed(&self, _listing: Listing) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }

    fn event(&self, event: WatchEvent) {
        if let Some(watch) = self.watch.upgrade() {
            watch.side_event(self.side, event);
        }
    }

    fn bookmark(&self, resource_version: &str) {
        if let Some(watch) = self.watch.upgrade() {
            watch.side_bookmark(self.side, resource_version);
        }
    }

    fn watch_started(&self) {
        if let Some(watch) = self.watch.upgrade() {
            watch.side_started(self.side);
        }
    }

    fn degraded(&self, error: &UpstreamError, retry_in: Duration) {
        if let Some(watch) = self.watch.upgrade() {
            watch.side_degraded(self.side, &outage_message(error, retry_in));
        }
    }

    fn failed(&self, _error: UpstreamError) {}
}

fn outage_message(error: &UpstreamError, retry_in: Duration) -> String {
    format!(
        "upstream watch interrupted ({error}); retrying in {retry_in:.1?}, the stream will resume where it left off"
    )
}

fn outcome(name: &'static str) -> crate::metrics::OutcomeLabel {
    crate::metrics::OutcomeLabel { outcome: name }
}

/// The upstream task reports here. Implemented on a newtype holding a weak
/// reference so the task does not keep a stopped watch alive.
pub(super) struct Upstream(pub(super) Weak<SharedWatch>);

impl WatchSink for Upstream {
    fn listed(&self, listing: Listing) -> ControlFlow<()> {
        let Some(watch) = self.0.upgrade() else {
            return ControlFlow::Break(());
        };
        watch.count(&watch.metrics.upstream_lists);
        let mut st = watch.state.lock();
        if st.stopped {
            return ControlFlow::Break(());
        }
        st.outage_reported = false;
        let before = st.subs.len();
        if !st.listed {
            st.cache.reset(listing, true);
            st.listed = true;
            let pending: Vec<SubscriberId> = st.subs.keys().copied().collect();
            for id in pending {
                if let Some(sub) = st.subs.remove(&id)
                    && let Some(sub) = watch.start(&mut st, id, sub)
                {
                    st.subs.insert(id, sub);
                }
            }
            if before > 0 && st.subs.is_empty() {
                // Every subscriber was answered from the listing alone (a
                // version the cluster would refuse): nobody needs the watch,
                // so its WATCH request is never sent.
                watch.stop_locked(&mut st);
                drop(st);
                watch.leave_hub();
                return ControlFlow::Break(());
            }
        } else {
            let diff = st.cache.reset(listing, false);
            watch.fan_out(&mut st, &diff);
        }
        watch.linger_if_emptied(st, before);
        ControlFlow::Continue(())
    }

    fn event(&self, event: WatchEvent) {
        let Some(watch) = self.0.upgrade() else {
            return;
        };
        watch.count(&watch.metrics.events_in);
        watch.events.fetch_add(1, Ordering::Relaxed);
        let mut st = watch.state.lock();
        if st.stopped {
            return;
        }
        let before = st.subs.len();
        let event = st.cache.apply(event);
        watch.fan_out(&mut st, std::slice::from_ref(&event));
        watch.linger_if_emptied(st, before);
    }

    fn bookmark(&self, resource_version: &str) {
        let Some(watch) = self.0.upgrade() else {
            return;
        };
        let mut st = watch.state.lock();
        let before = st.subs.len();
        st.cache.bookmark(resource_version);
        watch.release_waiters(&mut st);
        watch.linger_if_emptied(st, before);
    }

    fn watch_started(&self) {
        let Some(watch) = self.0.upgrade() else {
            return;
        };
        watch.count(&watch.metrics.upstream_watch_starts);
        watch.state.lock().outage_reported = false;
    }

    fn degraded(&self, error: &UpstreamError, retry_in: Duration) {
        let Some(watch) = self.0.upgrade() else {
            return;
        };
        watch.count(&watch.metrics.upstream_failures);
        let mut st = watch.state.lock();
        if st.outage_reported {
            return;
        }
        st.outage_reported = true;
        let message = outage_message(error, retry_in);
        for sub in st.subs.values() {
            sub.sink.warning(&message);
        }
    }

    fn failed(&self, error: UpstreamError) {
        let Some(watch) = self.0.upgrade() else {
            return;
        };
        watch.count(&watch.metrics.upstream_failures);
        watch.shutdown(EndReason::Failed(error.to_string()));
    }
}
