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

use std::sync::Arc;

use tokio::sync::watch;

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
    pub(super) fn hold(watch: Arc<SharedWatch>) -> Option<Store> {
        let phase = watch.hold()?;
        Some(Store {
            hold: Arc::new(Hold { watch, phase }),
        })
    }

    /// The key of the shared watch.
    pub fn key(&self) -> &WatchKey {
        self.hold.watch.key()
    }

    /// Whether the store has listed and its watch is still running.
    pub fn is_synced(&self) -> bool {
        *self.hold.phase.borrow() == Phase::Synced
    }

    /// Waits until the store has listed; [`StoreEnded`] if its watch
    /// stopped first (or has stopped since).
    pub async fn wait_until_synced(&self) -> Result<(), StoreEnded> {
        let mut phase = self.hold.phase.clone();
        match phase.wait_for(|p| *p != Phase::Listing).await {
            Ok(p) if *p == Phase::Synced => Ok(()),
            _ => Err(StoreEnded),
        }
    }

    /// The current objects and the version they are at; `None` before the
    /// store synced and after its watch stopped.
    pub fn snapshot(&self) -> Option<Snapshot> {
        self.hold.watch.snapshot()
    }
}
