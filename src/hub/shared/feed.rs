//! What the shared watch's upstream task reports, applied to the store and
//! fanned out: the path of every event through the hub.
//!
//! Each call takes the shared watch's lock once, applies the change to the
//! store (which records it in the history at its version), offers it to
//! every live subscriber, places subscribers whose version the store just
//! reached, and releases the lock.

use std::ops::ControlFlow;
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::lifecycle::Phase;
use super::watcher::SubscriberId;
use super::{SharedWatch, outage_message};
use crate::hub::subscriber::EndReason;
use crate::upstream::event::WatchEvent;
use crate::upstream::{Listing, UpstreamError, WatchSink};

/// The upstream task reports here. Implemented on a newtype holding a weak
/// reference so the task does not keep a stopped watch alive.
pub(in crate::hub) struct Upstream(pub(in crate::hub) Weak<SharedWatch>);

impl WatchSink for Upstream {
    fn listed(&self, listing: Listing) -> ControlFlow<()> {
        let Some(watch) = self.0.upgrade() else {
            return ControlFlow::Break(());
        };
        watch.count(&watch.metrics.upstream_lists);
        let mut st = watch.state.lock();
        let before = st.holders();
        match st.phase.get() {
            Phase::Stopped => return ControlFlow::Break(()),
            Phase::Listing => {
                st.outage_reported = false;
                st.cache.reset(listing, true);
                st.phase.set(Phase::Synced);
                let pending: Vec<SubscriberId> = st.watchers.keys().copied().collect();
                for id in pending {
                    watch.place(&mut st, id);
                }
                if before > 0 && !st.is_held() {
                    // Every subscriber was answered from the listing alone
                    // (a version the cluster would refuse): nobody needs the
                    // watch, so its WATCH request is never sent.
                    watch.stop_locked(&mut st);
                    drop(st);
                    watch.leave_hub();
                    return ControlFlow::Break(());
                }
            }
            Phase::Synced => {
                st.outage_reported = false;
                let diff = st.cache.reset(listing, false);
                watch.fan_out(&mut st, &diff);
            }
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
        if st.phase.is_stopped() {
            return;
        }
        let before = st.holders();
        let change = st.cache.apply(event);
        watch.fan_out(&mut st, std::slice::from_ref(&change));
        watch.linger_if_emptied(st, before);
    }

    fn bookmark(&self, resource_version: &str) {
        let Some(watch) = self.0.upgrade() else {
            return;
        };
        let mut st = watch.state.lock();
        let before = st.holders();
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
        for sub in st.watchers.values() {
            sub.sink.warning(&message);
        }
    }

    fn failed(&self, error: UpstreamError) {
        let Some(watch) = self.0.upgrade() else {
            return;
        };
        watch.count(&watch.metrics.upstream_failures);
        if !watch.fall_back(&error) {
            watch.shutdown(EndReason::Failed(error.to_string()));
        }
    }
}
