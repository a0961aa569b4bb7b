//! The life of a shared watch: who holds it, the linger after the last
//! holder leaves, and the stop.
//!
//! A watch is *held* by its subscribers and by its store's read handles
//! ([`crate::hub::Store`]). The first holder creates it (the hub starts the
//! upstream task once that holder is in); when the last one leaves, a
//! linger countdown starts, and if nobody came back when it falls due the
//! watch stops: its tasks are aborted (dropping the upstream request), it
//! no longer counts against the hub's limits, and it leaves the hub's map.
//! A permanent upstream failure or a shutdown stops it at once, ending every
//! subscriber. A stopped watch is never revived: the next request creates a
//! fresh one.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::AbortHandle;
use tracing::info;

use super::watcher::{SubscriberId, Watcher};
use super::{SharedWatch, State};
use crate::hub::subscriber::EndReason;

/// Where a shared watch is in its life. It only moves forward:
/// `Listing → Synced → Stopped`, or `Listing → Stopped`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for its first listing; subscribers that join wait with it.
    Listing,
    /// Listed: the store holds the collection as of its latest version and
    /// joiners are served from it at once. Stays so through re-watches,
    /// relists and outages (an outage is reported apart).
    Synced,
    /// Stopped for good: no task runs, no subscriber is left, and it has
    /// left (or is leaving) the hub's map.
    Stopped,
}

/// The phase, kept in a `watch` channel so that read handles can wait for
/// it to change without taking the shared watch's lock. It lives in
/// [`State`], so it is only ever written with that lock held.
pub(super) struct Lifecycle(watch::Sender<Phase>);

impl Lifecycle {
    pub(super) fn new() -> Self {
        Lifecycle(watch::channel(Phase::Listing).0)
    }

    pub(super) fn get(&self) -> Phase {
        *self.0.borrow()
    }

    pub(super) fn is_stopped(&self) -> bool {
        self.get() == Phase::Stopped
    }

    pub(super) fn set(&self, phase: Phase) {
        self.0.send_replace(phase);
    }

    /// A receiver that sees every later change.
    pub(super) fn observe(&self) -> watch::Receiver<Phase> {
        self.0.subscribe()
    }
}

impl SharedWatch {
    /// Keeps a task of this watch, to be aborted when it stops; a watch
    /// that already stopped aborts it at once.
    pub(in crate::hub) fn add_task(&self, task: AbortHandle) {
        let mut st = self.state.lock();
        if st.phase.is_stopped() {
            task.abort();
        } else {
            st.tasks.push(task);
        }
    }

    /// Takes a read handle's hold on the watch; `None` if it has stopped.
    ///
    /// Unlike a subscriber, a reader does not cancel a linger countdown
    /// that is running: it only keeps the watch from stopping while it is
    /// held. So a client that polls LISTs served from the store keeps no
    /// watch alive that nobody watches.
    pub(in crate::hub) fn hold(&self) -> Option<watch::Receiver<Phase>> {
        let mut st = self.state.lock();
        if st.phase.is_stopped() {
            return None;
        }
        st.readers += 1;
        Some(st.phase.observe())
    }

    /// Releases a read handle's hold.
    pub(in crate::hub) fn release(self: &Arc<Self>) {
        let mut st = self.state.lock();
        st.readers = st.readers.saturating_sub(1);
        self.linger_if_unheld(st, self.linger());
    }

    /// Removes a subscriber at the client's request. No end notice is sent.
    pub(in crate::hub) fn remove(self: &Arc<Self>, id: SubscriberId, linger: Duration) {
        let mut st = self.state.lock();
        if Self::take(&mut st, id).is_some() {
            self.metrics.subscribers.dec();
            self.linger_if_unheld(st, linger);
            return;
        }
        st.moving.remove(&id);
        let moved = st.moved.remove(&id);
        drop(st);
        drop(moved);
    }

    /// Ends one subscriber with a reason (its own `timeoutSeconds`).
    pub(super) fn end_subscriber(self: &Arc<Self>, id: SubscriberId, reason: EndReason) {
        let mut st = self.state.lock();
        let Some(sub) = Self::take(&mut st, id) else {
            return;
        };
        self.metrics.subscribers.dec();
        if reason == EndReason::SlowConsumer {
            self.metrics.slow_consumers.inc();
        }
        sub.sink.end(reason);
        self.linger_if_unheld(st, self.linger());
    }

    /// Takes a subscriber out, off its side stream too.
    fn take(st: &mut State, id: SubscriberId) -> Option<Watcher> {
        let sub = st.watchers.remove(&id)?;
        Self::leave_side(st, id, &sub);
        Some(sub)
    }

    /// Releases the state lock and starts the linger countdown if nobody
    /// holds the watch any more.
    fn linger_if_unheld(
        self: &Arc<Self>,
        st: parking_lot::MutexGuard<'_, State>,
        linger: Duration,
    ) {
        let unheld = !st.is_held() && !st.phase.is_stopped();
        let generation = st.linger_generation;
        drop(st);
        if unheld {
            self.schedule_linger(generation, linger);
        }
    }

    /// Releases the state lock and, if subscribers were cut while it was
    /// held (slow consumers, a failed start) and nobody is left, starts the
    /// linger countdown: nobody else will, because the cut subscribers'
    /// handles find nothing to remove when their connections close.
    pub(super) fn linger_if_emptied(
        self: &Arc<Self>,
        st: parking_lot::MutexGuard<'_, State>,
        holders_before: usize,
    ) {
        if holders_before > 0 {
            self.linger_if_unheld(st, self.linger());
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

    /// The end of a linger countdown: stops the watch unless it is held or
    /// a subscriber joined since the countdown started.
    fn expire_if_idle(self: &Arc<Self>, generation: u64) {
        {
            let mut st = self.state.lock();
            if st.phase.is_stopped() || st.is_held() || st.linger_generation != generation {
                return;
            }
            self.stop_locked(&mut st);
        }
        info!(cluster = self.key.cluster(), key = %self.key.short_hash(), "shared watch idle, stopped");
        self.leave_hub();
    }

    fn linger(&self) -> Duration {
        self.hub
            .upgrade()
            .map_or(Duration::ZERO, |h| h.config.linger)
    }

    /// Stops the watch and ends every subscriber with `reason`. When kubemux
    /// itself shuts down, subscribers that asked for bookmarks first get one
    /// at the newest version, so they resume from there on another replica.
    pub(in crate::hub) fn shutdown(&self, reason: EndReason) {
        {
            let mut st = self.state.lock();
            if st.phase.is_stopped() {
                return;
            }
            if reason == EndReason::Shutdown {
                self.bookmark_live(&st);
            }
            for (_, sub) in st.watchers.drain() {
                self.metrics.subscribers.dec();
                sub.sink.end(reason.clone());
            }
            self.stop_locked(&mut st);
        }
        self.leave_hub();
    }

    pub(super) fn stop_locked(&self, st: &mut State) {
        st.phase.set(Phase::Stopped);
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

    pub(super) fn leave_hub(&self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.watches
                .remove_if(&self.key, |_, w| std::ptr::eq(Arc::as_ptr(w), self));
        }
    }
}
