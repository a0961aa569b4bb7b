//! One shared watch: the store and history of a collection (the
//! [`Cache`], the API server's `watchCache`), the subscribers that share it
//! (each a [`watcher::Watcher`], its `cacheWatcher`), and the upstream task
//! that feeds it ([`feed::Upstream`], its reflector).
//!
//! - `watcher`: one subscriber, its filters and its cursor;
//! - `feed`: what the upstream task reports, applied and fanned out;
//! - `side`: side streams, for subscribers the store cannot serve alone;
//! - `lifecycle`: holders, linger and stop.
//!
//! This module places joiners (decides from the store what each is owed and
//! hands it over as one replay) and fans out live events. All of it happens
//! under one lock, so a joiner gets its replay and then the live events
//! with nothing lost or duplicated in between.

mod fallback;
mod feed;
mod lifecycle;
mod shards;
mod side;
#[cfg(test)]
mod tests;
mod watcher;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::task::AbortHandle;
use tracing::info;

use super::filter::{Change, Filter};
use super::key::{ClientParams, WatchKey};
use super::store::Snapshot;
use super::subscriber::{EndReason, Subscriber};
use super::watch_cache::{Cache, Start};
use super::{HubInner, Subscription};
use crate::metrics::{ClusterLabel, Metrics};
use crate::upstream::event::WatchEvent;
use crate::upstream::{UpstreamConfig, UpstreamError, WatchTarget};
pub(super) use feed::Upstream;
use lifecycle::Lifecycle;
pub(super) use lifecycle::Phase;
pub use shards::FanOut;
use side::{Side, SideId, SideKind};
pub(super) use watcher::SubscriberId;
use watcher::{Cursor, Watcher};

/// Everything behind the shared watch's lock.
struct State {
    /// The store and history. Changed only by the upstream feed and by
    /// completed backfills, always together with the fan-out of the change.
    cache: Cache,
    /// See [`Phase`]; written only here, under the lock.
    phase: Lifecycle,
    /// The subscribers. Every one is `Pending` while the phase is
    /// `Listing`, and none is left once it is `Stopped`.
    watchers: HashMap<SubscriberId, Watcher>,
    /// Never reused within a watch.
    next_id: SubscriberId,
    /// Running side streams; each lists at least one subscriber whose
    /// cursor names it.
    sides: HashMap<SideId, Side>,
    next_side: SideId,
    /// Read handles holding the watch ([`super::Store`]); they take no events.
    readers: usize,
    /// Whether the current upstream outage was reported to subscribers
    /// (once per outage; a listing or an answered watch request ends it).
    outage_reported: bool,
    /// Bumped by every joining subscriber: a linger countdown started at an
    /// older generation finds it changed and does nothing.
    linger_generation: u64,
    /// The upstream task and the bookmark ticker; aborted on stop.
    tasks: Vec<AbortHandle>,
    /// Subscribers being moved to narrower watches (see `fallback`); one
    /// that unsubscribes meanwhile is taken out, and not kept.
    moving: HashSet<SubscriberId>,
    /// Subscribers moved to narrower watches, by the id their handles
    /// hold; unsubscribing drops the moved subscription.
    moved: HashMap<SubscriberId, Subscription>,
    /// The filters of the subscribers, one per request (narrow key), so
    /// subscribers that asked the same share one [`Filter`] (its memory,
    /// and its evaluation per event: see `Views`). Entries whose filter
    /// nobody holds any more are pruned when the table has doubled.
    filters: Filters,
}

/// [`State::filters`].
struct Filters {
    by_request: HashMap<WatchKey, Weak<Filter>>,
    /// Size at which dead entries are pruned next.
    prune_at: usize,
}

impl Filters {
    const MIN_PRUNE_AT: usize = 64;

    fn new() -> Self {
        Filters {
            by_request: HashMap::new(),
            prune_at: Self::MIN_PRUNE_AT,
        }
    }

    /// The filter already in use for the same request, or `filter`.
    fn intern(&mut self, filter: Arc<Filter>) -> Arc<Filter> {
        if let Some(same) = self.by_request.get(filter.narrow()).and_then(Weak::upgrade) {
            return same;
        }
        if self.by_request.len() >= self.prune_at {
            self.by_request.retain(|_, weak| weak.strong_count() > 0);
            self.prune_at = (2 * self.by_request.len()).max(Self::MIN_PRUNE_AT);
        }
        self.by_request
            .insert(filter.narrow().clone(), Arc::downgrade(&filter));
        filter
    }
}

impl State {
    /// Subscribers and read handles.
    fn holders(&self) -> usize {
        self.watchers.len() + self.readers
    }

    /// Whether anyone holds the watch; when nobody does it lingers.
    fn is_held(&self) -> bool {
        self.holders() > 0
    }
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
    /// Set once the cluster refused this watch and its filtered holders
    /// moved to narrower watches.
    fell_back: AtomicBool,
    /// How a batch's delivery is spread over threads.
    fan_out: FanOut,
    state: Mutex<State>,
}

impl SharedWatch {
    pub(super) fn new(
        key: WatchKey,
        hub: Weak<HubInner>,
        metrics: Arc<Metrics>,
        cache: Cache,
        fan_out: FanOut,
    ) -> Self {
        SharedWatch {
            label: Metrics::cluster(key.cluster()),
            key,
            target: OnceLock::new(),
            hub,
            metrics,
            events: AtomicU64::new(0),
            fell_back: AtomicBool::new(false),
            fan_out,
            state: Mutex::new(State {
                cache,
                phase: Lifecycle::new(),
                watchers: HashMap::new(),
                next_id: 1,
                sides: HashMap::new(),
                next_side: 1,
                readers: 0,
                outage_reported: false,
                linger_generation: 0,
                tasks: Vec::new(),
                moving: HashSet::new(),
                moved: HashMap::new(),
                filters: Filters::new(),
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
        self.state.lock().watchers.len()
    }

    /// Whether the watch has listed and not stopped: a subscriber joining
    /// it is served from its store at once.
    pub(super) fn is_live(&self) -> bool {
        self.state.lock().phase.get() == Phase::Synced
    }

    /// The current objects and the version they are at, once listed and
    /// until stopped.
    pub(super) fn snapshot(&self) -> Option<Snapshot> {
        let st = self.state.lock();
        if st.phase.get() != Phase::Synced {
            return None;
        }
        let (kind, api_version) = st.cache.kind();
        Some(Snapshot {
            item_kind: kind.to_string(),
            api_version: api_version.to_string(),
            resource_version: st.cache.latest().to_string(),
            objects: st.cache.objects().cloned().collect(),
        })
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

    /// Adds a subscriber; `None` if this watch has already stopped (the
    /// caller then creates a fresh one).
    pub(super) fn add(
        self: &Arc<Self>,
        sink: Arc<dyn Subscriber>,
        params: ClientParams,
        filter: Option<Arc<Filter>>,
    ) -> Option<SubscriberId> {
        let mut st = self.state.lock();
        if st.phase.is_stopped() {
            return None;
        }
        let id = st.next_id;
        st.next_id += 1;
        st.linger_generation += 1;
        let filter = filter.map(|filter| st.filters.intern(filter));
        let mut sub = Watcher::new(sink, params, filter);
        if let Some(after) = sub.deadline() {
            sub.arm(self.timer(after, id, EndReason::Timeout));
        }
        self.metrics.subscribers.inc();
        self.metrics.subscriptions_started.inc();
        st.watchers.insert(id, sub);
        if st.phase.get() == Phase::Synced && !self.place(&mut st, id) {
            // Cut while being served: if it was the only holder, the watch
            // must still linger out and stop.
            self.linger_if_emptied(st, 1);
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

    /// Gives a subscriber being placed `events` as one replay; if it
    /// cannot take them it is ended as a slow consumer and `false` returned.
    fn owed(&self, sub: &Watcher, events: Vec<Arc<WatchEvent>>) -> bool {
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

    /// Places subscriber `id` (pending, or waiting for a version the store
    /// just reached); `false` if it ended instead.
    fn place(self: &Arc<Self>, st: &mut State, id: SubscriberId) -> bool {
        let Some(sub) = st.watchers.remove(&id) else {
            return false;
        };
        match self.start(st, id, sub) {
            Some(sub) => {
                st.watchers.insert(id, sub);
                true
            }
            None => false,
        }
    }

    /// Serves a subscriber what it is owed from the store and sets its
    /// cursor; returns it if it stays.
    fn start(
        self: &Arc<Self>,
        st: &mut State,
        id: SubscriberId,
        mut sub: Watcher,
    ) -> Option<Watcher> {
        let plan = st.cache.start(
            sub.params.resource_version.as_deref(),
            sub.params.send_initial_events,
            sub.needs_prev(),
        );
        let mut events = match plan {
            Start::Snapshot(events) => {
                self.resumed("snapshot");
                sub.select(events)
            }
            Start::Replay(changes) => {
                self.resumed("history");
                sub.view(&changes)
            }
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
                    let horizon = st.cache.horizon();
                    return self.expire(sub, &format!("{from} ({horizon})"));
                };
                self.resumed("backfilled");
                let wanted = SideKind::Backfill { from, cursor: from };
                return self.join_side(st, id, sub, wanted, upstream);
            }
            Start::Forward(version) => {
                let Some(upstream) = self.target.get().cloned() else {
                    return self.expire(sub, &version);
                };
                self.resumed("forwarded");
                return self.join_side(st, id, sub, SideKind::Forward { version }, upstream);
            }
            Start::Future(rv) => {
                self.resumed("waited");
                sub.cursor = Cursor::Waiting(rv);
                return Some(sub);
            }
        };
        if sub.params.send_initial_events {
            let (kind, api_version) = st.cache.kind();
            let bookmark = WatchEvent::bookmark(kind, api_version, st.cache.latest(), true);
            events.push(Arc::new(bookmark));
        }
        if !self.owed(&sub, events) {
            return None;
        }
        sub.cursor = Cursor::Live;
        Some(sub)
    }

    /// Ends a subscriber whose version only the cluster could serve, on a
    /// watch that has no cluster: the API server's 410, then the end.
    fn expire(&self, sub: Watcher, version: &str) -> Option<Watcher> {
        let message = format!("too old resource version: {version}");
        let _ = sub
            .sink
            .event(&Arc::new(WatchEvent::status(410, "Expired", &message)));
        self.resumed("expired");
        self.metrics.subscribers.dec();
        sub.sink.end(EndReason::Expired);
        None
    }

    /// Ends subscribers that could not take an event.
    fn cut_slow(&self, st: &mut State, slow: Vec<SubscriberId>) {
        for id in slow {
            if let Some(sub) = st.watchers.remove(&id) {
                Self::leave_side(st, id, &sub);
                self.metrics.subscribers.dec();
                self.metrics.slow_consumers.inc();
                info!(key = %self.key.short_hash(), subscriber = id, "slow consumer cut off");
                sub.sink.end(EndReason::SlowConsumer);
            }
        }
    }

    /// Sends a bookmark at the latest version to subscribers that asked for them.
    pub(super) fn send_bookmarks(&self) {
        self.bookmark_live(&self.state.lock());
    }

    fn bookmark_live(&self, st: &State) {
        if st.phase.get() == Phase::Listing || st.cache.latest().is_empty() {
            return;
        }
        let (kind, api_version) = st.cache.kind();
        let bookmark = Arc::new(WatchEvent::bookmark(
            kind,
            api_version,
            st.cache.latest(),
            false,
        ));
        for sub in st.watchers.values().filter(|sub| sub.wants_bookmarks()) {
            let _ = sub.sink.event(&bookmark);
        }
    }

    /// Offers changes just applied to the store to every live subscriber,
    /// cuts those that cannot take them, and places those whose version
    /// the store has now reached.
    fn fan_out(self: &Arc<Self>, st: &mut State, changes: &[Arc<Change>]) {
        let slow = self.fan_out.deliver(&st.watchers, changes);
        self.cut_slow(st, slow);
        self.release_waiters(st);
    }

    fn release_waiters(self: &Arc<Self>, st: &mut State) {
        let latest = st.cache.latest_num();
        let ready: Vec<SubscriberId> = st
            .watchers
            .iter()
            .filter(|(_, s)| matches!(s.cursor, Cursor::Waiting(rv) if rv <= latest))
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            self.place(st, id);
        }
    }
}

fn outage_message(error: &UpstreamError, retry_in: Duration) -> String {
    format!(
        "upstream watch interrupted ({error}); retrying in {retry_in:.1?}, the stream will resume where it left off"
    )
}

fn outcome(name: &'static str) -> crate::metrics::OutcomeLabel {
    crate::metrics::OutcomeLabel { outcome: name }
}
