//! A read handle on a shared watch's store, like kube-runtime's
//! `reflector::Store`: the current objects and the version they are at,
//! without subscribing to events.
//!
//! Code that needs the state of a collection now (a status answer, a LIST)
//! reads it here instead of subscribing and collecting a snapshot. A handle
//! holds its shared watch like a subscription does (the watch lingers
//! after its last holder, subscriber or reader, leaves), so the store stays
//! current while someone reads it. It is made by [`crate::hub::Hub::store`],
//! with the same admission and identity rules as a subscription.

use std::sync::{Arc, OnceLock};

use tokio::sync::watch;

use super::filter::Filter;
use super::key::WatchKey;
use super::shared::{Phase, SharedWatch};
use crate::upstream::event::WatchEvent;

/// A cheap-to-clone, read-only handle on one shared watch's store. The
/// watch is held until the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    hold: Arc<Hold>,
}

/// One hold on a shared watch, released on drop.
struct Hold {
    watch: Arc<SharedWatch>,
    phase: watch::Receiver<Phase>,
    /// What the reader sees of a watch wider than its request.
    filter: Option<Arc<Filter>>,
    /// The watch of its own the reader moved to when the cluster refused
    /// the wide one before it listed; set once, on first need.
    moved: OnceLock<Store>,
}

impl Hold {
    /// The store that serves this reader now: its own watch's, or the one
    /// it moved to.
    fn moved(&self) -> Option<&Store> {
        if let Some(store) = self.moved.get() {
            return Some(store);
        }
        let filter = self.filter.as_ref()?;
        let store = self.watch.narrow_store(filter)?;
        Some(self.moved.get_or_init(|| store))
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.watch.release();
    }
}

/// The shared watch stopped (a permanent upstream failure, its cluster
/// removed or reconfigured, kubemux shutting down) before its store synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the shared watch ended before its store synced")]
pub struct StoreEnded;

/// The objects of a store at one version.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Kind of the items (`Pod`).
    pub item_kind: String,
    /// Their apiVersion.
    pub api_version: String,
    /// The version the store is at.
    pub resource_version: String,
    /// Each current object as the last event that set it, in key order;
    /// [`WatchEvent::object`] is its raw JSON.
    pub objects: Vec<Arc<WatchEvent>>,
}

impl Store {
    /// A hold on `watch`; `None` if it has stopped.
    pub(super) fn hold(watch: Arc<SharedWatch>, filter: Option<Arc<Filter>>) -> Option<Store> {
        let phase = watch.hold()?;
        Some(Store {
            hold: Arc::new(Hold {
                watch,
                phase,
                filter,
                moved: OnceLock::new(),
            }),
        })
    }

    /// The key of the shared watch.
    pub fn key(&self) -> &WatchKey {
        self.hold.watch.key()
    }

    /// Whether the store has listed and its watch is still running.
    pub fn is_synced(&self) -> bool {
        match *self.hold.phase.borrow() {
            Phase::Synced => true,
            Phase::Listing => false,
            Phase::Stopped => self.hold.moved().is_some_and(Store::is_synced),
        }
    }

    /// Waits until the store has listed; [`StoreEnded`] if its watch
    /// stopped first (or has stopped since).
    pub async fn wait_until_synced(&self) -> Result<(), StoreEnded> {
        let mut phase = self.hold.phase.clone();
        let synced =
            matches!(phase.wait_for(|p| *p != Phase::Listing).await, Ok(p) if *p == Phase::Synced);
        if synced {
            return Ok(());
        }
        match self.hold.moved() {
            Some(moved) => Box::pin(moved.wait_until_synced()).await,
            None => Err(StoreEnded),
        }
    }

    /// The current objects and the version they are at; `None` before the
    /// store synced and after its watch stopped.
    pub fn snapshot(&self) -> Option<Snapshot> {
        let Some(mut snapshot) = self.hold.watch.snapshot() else {
            return self.hold.moved()?.snapshot();
        };
        if let Some(filter) = &self.hold.filter {
            snapshot.objects.retain(|object| filter.passes(object));
        }
        Some(snapshot)
    }
}
