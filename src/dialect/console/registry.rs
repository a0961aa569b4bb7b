//! A connection's subscriptions: by the key their hub sinks carry, and by
//! the `subscription_id` the client knows. Both indexes (and what waits to
//! be announced) change only here, so they cannot disagree.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::sub::{Event, Sub};
use crate::cluster::Cluster;
use crate::ws::outbound::Frame;

/// A subscription whose `subscribe_result` waits for its initial state,
/// so that every change after the result reaches the client as an event.
pub(super) struct Unannounced {
    /// The `subscribe` request's id.
    pub request_id: Value,
    /// The `subscribe_result` to send once the initial state is in.
    pub result: Frame,
    /// Events its initial state raised, sent after the result.
    pub buffered: Vec<Event>,
    /// The cluster whose metrics to poll once announced, if asked for.
    pub metrics: Option<Arc<Cluster>>,
}

/// The subscriptions of one connection.
#[derive(Default)]
pub(super) struct Subscriptions {
    by_key: HashMap<u64, Sub>,
    /// Invariant: every key here is in `by_key`.
    unannounced: HashMap<u64, Unannounced>,
    /// Invariant: `by_id[s.id] == k` exactly for each `(k, s)` of `by_key`.
    by_id: HashMap<String, u64>,
}

impl Subscriptions {
    /// Adds a subscription that waits to be announced.
    pub fn insert(&mut self, key: u64, sub: Sub, unannounced: Unannounced) {
        self.by_id.insert(sub.id.clone(), key);
        self.unannounced.insert(key, unannounced);
        self.by_key.insert(key, sub);
    }

    /// Removes a subscription (dropping it ends its hub subscriptions),
    /// with what still waited to be announced.
    pub fn remove(&mut self, key: u64) -> Option<(Sub, Option<Unannounced>)> {
        let sub = self.by_key.remove(&key)?;
        self.by_id.remove(&sub.id);
        Some((sub, self.unannounced.remove(&key)))
    }

    /// Removes a subscription only if it was never announced.
    pub fn remove_unannounced(&mut self, key: u64) -> Option<(Sub, Option<Unannounced>)> {
        if self.unannounced.contains_key(&key) {
            self.remove(key)
        } else {
            None
        }
    }

    /// The subscription, announced or not.
    pub fn get(&self, key: u64) -> Option<&Sub> {
        self.by_key.get(&key)
    }

    /// The subscription, announced or not.
    pub fn get_mut(&mut self, key: u64) -> Option<&mut Sub> {
        self.by_key.get_mut(&key)
    }

    /// What waits for the subscription's announcement, if it waits.
    pub fn unannounced_mut(&mut self, key: u64) -> Option<&mut Unannounced> {
        self.unannounced.get_mut(&key)
    }

    /// Ends the wait: the subscription counts as announced from now on.
    pub fn take_unannounced(&mut self, key: u64) -> Option<Unannounced> {
        self.unannounced.remove(&key)
    }

    /// The key of the subscription the client calls `id`.
    pub fn key_of(&self, id: &str) -> Option<u64> {
        self.by_id.get(id).copied()
    }

    /// How many subscriptions there are.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Every key, to visit each subscription while changing others.
    pub fn keys(&self) -> Vec<u64> {
        self.by_key.keys().copied().collect()
    }
}
