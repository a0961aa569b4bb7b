//! A wide watch the cluster refused (403) before it listed.
//!
//! kubemux serves a namespace or a selector of a resource type from a
//! wider watch (the type's cluster-wide one, or a namespace's whole
//! collection), but a service account or a token may be allowed to watch
//! only some namespaces. Then the subscribers that asked for less than the
//! refused scope move, unseen, to where the hub places them now: a
//! narrower wide watch, or a watch of their own request, as they would
//! have had without sharing (the cluster then answers each as it would
//! answer them directly); the hub keeps placing such requests there for a
//! while. Only those who asked for exactly the refused scope get the
//! cluster's refusal.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::SharedWatch;
use super::lifecycle::Phase;
use super::watcher::{SubscriberId, Watcher};
use crate::hub::filter::Filter;
use crate::hub::subscriber::EndReason;
use crate::hub::{Hub, Store};
use crate::upstream::UpstreamError;

impl SharedWatch {
    /// Moves the filtered subscribers of a watch the cluster refused before
    /// it listed to watches of their own and stops it, ending the others
    /// with the refusal; `false` (and nothing done) for any other failure.
    pub(super) fn fall_back(self: &Arc<Self>, error: &UpstreamError) -> bool {
        if !matches!(error, UpstreamError::Status { code: 403, .. }) {
            return false;
        }
        let Some(inner) = self.hub.upgrade() else {
            return false;
        };
        let Some(client) = self.client() else {
            return false;
        };
        let moving: Vec<(SubscriberId, Watcher)> = {
            let mut st = self.state.lock();
            if st.phase.get() != Phase::Listing {
                return false;
            }
            inner.refused_wide(&self.key);
            self.fell_back.store(true, Ordering::Release);
            let mut moving = Vec::new();
            for (id, sub) in std::mem::take(&mut st.watchers) {
                self.metrics.subscribers.dec();
                if sub.filter.is_some() {
                    st.moving.insert(id);
                    moving.push((id, sub));
                } else {
                    sub.sink.end(EndReason::Failed(error.to_string()));
                }
            }
            self.stop_locked(&mut st);
            moving
        };
        self.leave_hub();
        let hub = Hub { inner };
        for (id, sub) in moving {
            let Some(filter) = &sub.filter else { continue };
            let moved =
                hub.subscribe_narrow(filter, client.clone(), sub.sink.clone(), sub.params.clone());
            let mut st = self.state.lock();
            let still_wanted = st.moving.remove(&id);
            match moved {
                Ok(subscription) if still_wanted => {
                    st.moved.insert(id, subscription);
                }
                Ok(unwanted) => {
                    drop(st);
                    drop(unwanted);
                }
                Err(refused) => sub.sink.end(EndReason::Failed(refused.to_string())),
            }
        }
        true
    }

    /// The store of its own that a filtered reader of this watch moves to,
    /// once the watch fell back.
    pub(in crate::hub) fn narrow_store(&self, filter: &Filter) -> Option<Store> {
        if !self.fell_back.load(Ordering::Acquire) {
            return None;
        }
        let hub = Hub {
            inner: self.hub.upgrade()?,
        };
        hub.store_narrow(filter, self.client()?).ok()
    }

    /// The client the watch runs with (its identity), once launched.
    fn client(&self) -> Option<kube::Client> {
        self.target.get().map(|(target, _)| target.client.clone())
    }
}
