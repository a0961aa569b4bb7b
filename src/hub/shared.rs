//! One shared watch: the upstream task, the cache, and the subscribers that
//! share them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use tokio::task::AbortHandle;
use tracing::info;

use super::HubInner;
use super::cache::{Cache, Start};
use super::key::{ClientParams, WatchKey};
use super::subscriber::{EndReason, Subscriber};
use crate::metrics::{ClusterLabel, Metrics};
use crate::upstream::event::WatchEvent;
use crate::upstream::{self, Listing, UpstreamConfig, UpstreamError, WatchSink, WatchTarget};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Identifies a subscriber within its shared watch.
pub type SubscriberId = u64;

enum Phase {
    /// Waiting for the first listing.
    Pending,
    /// Waiting for the cache to reach this version.
    Waiting(u64),
    /// Receiving live events.
    Live,
    /// Served by its own upstream watch (a version the cache cannot place).
    Forwarded,
}

struct Sub {
    sink: Arc<dyn Subscriber>,
    params: ClientParams,
    phase: Phase,
    timers: Vec<AbortHandle>,
}

impl Drop for Sub {
    fn drop(&mut self) {
        for t in &self.timers {
            t.abort();
        }
    }
}

struct State {
    cache: Cache,
    listed: bool,
    subs: HashMap<SubscriberId, Sub>,
    next_id: SubscriberId,
    outage_reported: bool,
    stopped: bool,
    linger_generation: u64,
    tasks: Vec<AbortHandle>,
}

/// One upstream watch shared by every subscriber of its key.
pub struct SharedWatch {
    key: WatchKey,
    target: Option<(WatchTarget, UpstreamConfig)>,
    hub: Weak<HubInner>,
    metrics: Arc<Metrics>,
    label: ClusterLabel,
    events: AtomicU64,
    state: Mutex<State>,
}

impl SharedWatch {
    pub(super) fn new(
        key: WatchKey,
        target: Option<(WatchTarget, UpstreamConfig)>,
        hub: Weak<HubInner>,
        metrics: Arc<Metrics>,
        cache: Cache,
    ) -> Self {
        SharedWatch {
            label: Metrics::cluster(key.cluster()),
            key,
            target,
            hub,
            metrics,
            events: AtomicU64::new(0),
            state: Mutex::new(State {
                cache,
                listed: false,
                subs: HashMap::new(),
                next_id: 1,
                outage_reported: false,
                stopped: false,
                linger_generation: 0,
                tasks: Vec::new(),
            }),
        }
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
        wait_limit: Duration,
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
            timers: Vec::new(),
        };
        if let Some(secs) = sub.params.timeout_seconds.filter(|s| *s > 0) {
            sub.timers
                .push(self.timer(Duration::from_secs(secs), id, EndReason::Timeout));
        }
        self.metrics.subscribers.inc();
        self.metrics.subscriptions_started.inc();
        if st.listed {
            match self.start(&mut st, id, sub, wait_limit) {
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

    /// Serves a subscriber what it is owed from the cache; returns it if it stays.
    fn start(
        self: &Arc<Self>,
        st: &mut State,
        id: SubscriberId,
        mut sub: Sub,
        wait_limit: Duration,
    ) -> Option<Sub> {
        let plan = st.cache.start(
            sub.params.resource_version.as_deref(),
            sub.params.send_initial_events,
        );
        let (served, events) = match plan {
            Start::Snapshot(events) => ("snapshot", events),
            Start::Replay(events) => ("history", events),
            Start::Expired(message) => {
                self.metrics
                    .resumes
                    .get_or_create(&outcome("expired"))
                    .inc();
                let _ = sub.sink.event(&Arc::new(WatchEvent::expired(&message)));
                self.metrics.subscribers.dec();
                sub.sink.end(EndReason::Expired);
                return None;
            }
            Start::Forward(version) => {
                let Some((target, config)) = self.target.clone() else {
                    let _ = sub.sink.event(&Arc::new(WatchEvent::expired(&format!(
                        "too old resource version: {version}"
                    ))));
                    self.metrics.subscribers.dec();
                    sub.sink.end(EndReason::Expired);
                    return None;
                };
                self.metrics
                    .resumes
                    .get_or_create(&outcome("forwarded"))
                    .inc();
                let relay = Arc::new(Relay {
                    watch: Arc::downgrade(self),
                    id,
                    sink: sub.sink.clone(),
                    warned: AtomicBool::new(false),
                });
                let weak = Arc::downgrade(self);
                let task = tokio::spawn(async move {
                    let err = upstream::follow(target, config, version, relay).await;
                    if let Some(watch) = weak.upgrade() {
                        let last = err
                            .is_expired()
                            .then(|| WatchEvent::expired("too old resource version"));
                        let reason = if last.is_some() {
                            EndReason::Expired
                        } else {
                            EndReason::Failed(err.to_string())
                        };
                        watch.end_subscriber_with(id, last, reason);
                    }
                });
                sub.phase = Phase::Forwarded;
                sub.timers.push(task.abort_handle());
                return Some(sub);
            }
            Start::Future(rv) => {
                self.metrics.resumes.get_or_create(&outcome("waited")).inc();
                sub.phase = Phase::Waiting(rv);
                sub.timers
                    .push(self.timer(wait_limit, id, EndReason::Expired));
                return Some(sub);
            }
        };
        self.metrics.resumes.get_or_create(&outcome(served)).inc();
        for ev in &events {
            if sub.sink.event(ev).is_err() {
                self.metrics.subscribers.dec();
                self.metrics.slow_consumers.inc();
                sub.sink.end(EndReason::SlowConsumer);
                return None;
            }
        }
        if sub.params.send_initial_events {
            let (kind, api_version) = st.cache.kind();
            let bookmark = WatchEvent::bookmark(kind, api_version, st.cache.latest(), true);
            if sub.sink.event(&Arc::new(bookmark)).is_err() {
                self.metrics.subscribers.dec();
                self.metrics.slow_consumers.inc();
                sub.sink.end(EndReason::SlowConsumer);
                return None;
            }
        }
        sub.phase = Phase::Live;
        Some(sub)
    }

    /// Removes a subscriber at the client's request. No end notice is sent.
    pub(super) fn remove(self: &Arc<Self>, id: SubscriberId, linger: Duration) {
        let mut st = self.state.lock();
        if st.subs.remove(&id).is_none() {
            return;
        }
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

    /// Ends one subscriber with a reason (its timeout, a wait that ran out).
    pub(super) fn end_subscriber(self: &Arc<Self>, id: SubscriberId, reason: EndReason) {
        let last = (reason == EndReason::Expired).then(|| {
            let latest = self.state.lock().cache.latest().to_string();
            WatchEvent::expired(&format!(
                "too large resource version: waited for it, the cache is at {latest}"
            ))
        });
        self.end_subscriber_with(id, last, reason);
    }

    /// Ends one subscriber, sending `last` (an in-band error event) first.
    fn end_subscriber_with(
        self: &Arc<Self>,
        id: SubscriberId,
        last: Option<WatchEvent>,
        reason: EndReason,
    ) {
        let mut st = self.state.lock();
        let Some(sub) = st.subs.remove(&id) else {
            return;
        };
        self.metrics.subscribers.dec();
        if reason == EndReason::SlowConsumer {
            self.metrics.slow_consumers.inc();
        }
        if let Some(last) = last {
            let _ = sub.sink.event(&Arc::new(last));
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

    /// Stops the watch and ends every subscriber with `reason`.
    pub(super) fn shutdown(&self, reason: EndReason) {
        {
            let mut st = self.state.lock();
            if st.stopped {
                return;
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
        let st = self.state.lock();
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
        for id in slow {
            if let Some(sub) = st.subs.remove(&id) {
                self.metrics.subscribers.dec();
                self.metrics.slow_consumers.inc();
                info!(key = %self.key.short_hash(), subscriber = id, "slow consumer cut off");
                sub.sink.end(EndReason::SlowConsumer);
            }
        }
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
        let wait_limit = self.wait_limit();
        for id in ready {
            if let Some(mut sub) = st.subs.remove(&id) {
                if let Some(wait_timer) = sub.timers.pop() {
                    wait_timer.abort();
                }
                if let Some(sub) = self.start(st, id, sub, wait_limit) {
                    st.subs.insert(id, sub);
                }
            }
        }
    }

    fn wait_limit(&self) -> Duration {
        self.hub
            .upgrade()
            .map_or(Duration::from_secs(3), |h| h.config.wait_limit)
    }
}

/// Relays a forwarded watch to its one subscriber.
struct Relay {
    watch: Weak<SharedWatch>,
    id: SubscriberId,
    sink: Arc<dyn Subscriber>,
    warned: AtomicBool,
}

impl WatchSink for Relay {
    fn listed(&self, _listing: Listing) {}

    fn event(&self, event: WatchEvent) {
        if self.sink.event(&Arc::new(event)).is_err()
            && let Some(watch) = self.watch.upgrade()
        {
            watch.end_subscriber(self.id, EndReason::SlowConsumer);
        }
    }

    fn bookmark(&self, _resource_version: &str) {}

    fn watch_started(&self) {
        self.warned.store(false, Ordering::Relaxed);
    }

    fn degraded(&self, error: &UpstreamError, retry_in: Duration) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            self.sink.warning(&outage_message(error, retry_in));
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
    fn listed(&self, listing: Listing) {
        let Some(watch) = self.0.upgrade() else {
            return;
        };
        watch.count(&watch.metrics.upstream_lists);
        let mut st = watch.state.lock();
        if st.stopped {
            return;
        }
        st.outage_reported = false;
        let before = st.subs.len();
        if !st.listed {
            st.cache.reset(listing, true);
            st.listed = true;
            let wait_limit = watch.wait_limit();
            let pending: Vec<SubscriberId> = st.subs.keys().copied().collect();
            for id in pending {
                if let Some(sub) = st.subs.remove(&id)
                    && let Some(sub) = watch.start(&mut st, id, sub, wait_limit)
                {
                    st.subs.insert(id, sub);
                }
            }
        } else {
            let diff = st.cache.reset(listing, false);
            watch.fan_out(&mut st, &diff);
        }
        watch.linger_if_emptied(st, before);
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
        let message = format!(
            "upstream watch interrupted ({error}); retrying in {retry_in:.1?}, the stream will resume where it left off"
        );
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
