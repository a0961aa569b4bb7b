//! One subscriber of a shared watch, as the API server's `cacheWatcher`
//! (`cache_watcher.go`): the sink it is fed through, what it asked for, and
//! its cursor, which says what it is owed next.
//!
//! A joiner is placed once, under the shared watch's lock: it is handed what
//! it is owed from the store (a snapshot, or the history after its version)
//! as one [`Subscriber::replay`] that its sink sends as its client reads,
//! and from then on takes live events. Because placing and fan-out happen
//! under the same lock, nothing is lost or sent twice in between.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::AbortHandle;

use super::side::SideId;
use crate::hub::filter::{Change, Filter};
use crate::hub::key::ClientParams;
use crate::hub::subscriber::{Overflow, Subscriber};
use crate::upstream::event::{EventType, WatchEvent};

/// Identifies a subscriber within its shared watch.
pub type SubscriberId = u64;

/// What a subscriber is owed next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cursor {
    /// Joined before the first listing; the listing places it.
    Pending,
    /// Its version is newer than the store's: placed once the store reaches
    /// it, as the API server waits for a version it has not reached.
    Waiting(u64),
    /// Has everything up to the store's latest version: takes every live
    /// event and bookmark from now on.
    Live,
    /// Fed by side stream `side` (which lists this subscriber) until that
    /// stream reaches the history; `at` is the version of the last event it
    /// was given (its own version before the first) and only grows.
    Side {
        /// The side stream.
        side: SideId,
        /// The last version given.
        at: u64,
    },
}

/// One subscriber and where it stands.
pub(super) struct Watcher {
    pub(super) sink: Arc<dyn Subscriber>,
    /// What the client asked for: its version, bookmarks, initial events.
    pub(super) params: ClientParams,
    /// What it sees of a watch wider than its request; `None` when it sees
    /// every event.
    pub(super) filter: Option<Arc<Filter>>,
    pub(super) cursor: Cursor,
    /// Its sink's [`Subscriber::affinity`], mixed so that neighbouring
    /// addresses fall into different shards.
    affinity: u64,
    /// Ends the subscription at the client's own `timeoutSeconds`; aborted
    /// when the watcher is dropped, so a timer never outlives its watcher.
    timeout: Option<AbortHandle>,
}

impl Watcher {
    /// A watcher not yet placed.
    pub(super) fn new(
        sink: Arc<dyn Subscriber>,
        params: ClientParams,
        filter: Option<Arc<Filter>>,
    ) -> Self {
        // Fibonacci hashing: the top bits of the product depend on every
        // bit of the (aligned) address.
        let affinity = (sink.affinity() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Watcher {
            sink,
            params,
            filter,
            cursor: Cursor::Pending,
            affinity,
            timeout: None,
        }
    }

    /// Which of `shards` shards it is offered batches in; the same for
    /// every subscriber of one connection.
    pub(super) fn shard(&self, shards: usize) -> usize {
        ((self.affinity >> 32) % shards as u64) as usize
    }

    /// The client's own deadline, if it gave one.
    pub(super) fn deadline(&self) -> Option<Duration> {
        self.params
            .timeout_seconds
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
    }

    /// Arms the timer that ends this watcher at its deadline.
    pub(super) fn arm(&mut self, timer: AbortHandle) {
        self.timeout = Some(timer);
    }

    /// Whether it takes live events.
    pub(super) fn is_live(&self) -> bool {
        self.cursor == Cursor::Live
    }

    /// Whether it takes kubemux's own bookmarks: it asked for them and is
    /// live (a bookmark ahead of a replay or a side stream would skip it).
    pub(super) fn wants_bookmarks(&self) -> bool {
        self.params.allow_bookmarks && self.is_live()
    }

    /// Whether it must be served from changes that know the object they
    /// replaced (see [`Filter::needs_prev`]).
    pub(super) fn needs_prev(&self) -> bool {
        self.filter
            .as_ref()
            .is_some_and(|filter| filter.needs_prev())
    }

    /// Offers what it sees of the changes of `views` in order, stopping at
    /// the first event it cannot take.
    pub(super) fn deliver(&self, views: &mut Views<'_>) -> Result<(), Overflow> {
        match &self.filter {
            None => views
                .changes
                .iter()
                .try_for_each(|change| self.sink.event(&change.event)),
            Some(filter) => views
                .of(filter)
                .iter()
                .try_for_each(|event| self.sink.event(event)),
        }
    }

    /// Offers one event of a side stream: one made as it asked, or, for a
    /// filter that needs no previous objects, the shared watch's own.
    pub(super) fn offer(&self, event: &Arc<WatchEvent>) -> Result<(), Overflow> {
        if self.sees_on_side(event) {
            self.sink.event(event)
        } else {
            Ok(())
        }
    }

    /// Whether it sees an event of its side stream.
    pub(super) fn sees_on_side(&self, event: &WatchEvent) -> bool {
        match (&self.filter, event.kind()) {
            (Some(filter), EventType::Added | EventType::Modified | EventType::Deleted)
                if !filter.needs_prev() =>
            {
                filter.passes(event)
            }
            _ => true,
        }
    }

    /// What it sees of `changes` (a replay from the history).
    pub(super) fn view(&self, changes: &[Arc<Change>]) -> Vec<Arc<WatchEvent>> {
        changes
            .iter()
            .filter_map(|change| match &self.filter {
                None => Some(change.event.clone()),
                Some(filter) => filter.view(change).cloned(),
            })
            .collect()
    }

    /// The objects of a snapshot it sees.
    pub(super) fn select(&self, mut objects: Vec<Arc<WatchEvent>>) -> Vec<Arc<WatchEvent>> {
        if let Some(filter) = &self.filter {
            objects.retain(|object| filter.passes(object));
        }
        objects
    }
}

/// What each filter sees of one batch of changes, worked out for the
/// first subscriber with that filter and reused for the others (interned
/// filters make subscribers with the same request share one): one event
/// costs one evaluation per distinct request, not one per subscriber.
pub(super) struct Views<'c> {
    changes: &'c [Arc<Change>],
    /// By the filter's address; the filters outlive the batch (every
    /// watcher holding one is borrowed for it).
    seen: HashMap<*const Filter, Vec<&'c Arc<WatchEvent>>>,
}

impl<'c> Views<'c> {
    pub(super) fn new(changes: &'c [Arc<Change>]) -> Self {
        Views {
            changes,
            seen: HashMap::new(),
        }
    }

    fn of(&mut self, filter: &Arc<Filter>) -> &[&'c Arc<WatchEvent>] {
        let changes = self.changes;
        self.seen.entry(Arc::as_ptr(filter)).or_insert_with(|| {
            changes
                .iter()
                .filter_map(|change| filter.view(change))
                .collect()
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(timer) = &self.timeout {
            timer.abort();
        }
    }
}
