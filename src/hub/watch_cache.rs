//! The store and history of one shared watch, like the API server's
//! `watchCache` (`watch_cache.go`): the current objects, a ring of recent
//! events with the version a client holds after each, and the versions it
//! has seen. It decides how a joiner starts ([`Start`]) but delivers
//! nothing itself: the shared watch hands what it decides to subscribers.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::upstream::Listing;
use crate::upstream::event::{EventType, WatchEvent};

/// Bounds of the event history.
#[derive(Clone, Debug)]
pub struct HistoryLimits {
    /// At most this many events are kept.
    pub max_events: usize,
    /// Events older than this are dropped. Keep it at 75 s or more so clients
    /// resuming after a reconnect are served from history.
    pub max_age: Duration,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            max_events: 10_000,
            max_age: Duration::from_secs(150),
        }
    }
}

struct Stored {
    last: Arc<WatchEvent>,
    as_added: OnceLock<Arc<WatchEvent>>,
}

impl Stored {
    fn new(last: Arc<WatchEvent>) -> Self {
        Stored {
            last,
            as_added: OnceLock::new(),
        }
    }

    /// The object as an `ADDED` event, built once and shared by every
    /// subscriber that starts from a snapshot.
    fn added(&self) -> Arc<WatchEvent> {
        if self.last.kind() == EventType::Added {
            return self.last.clone();
        }
        self.as_added
            .get_or_init(|| Arc::new(self.last.retyped(EventType::Added)))
            .clone()
    }
}

/// One change to the collection, with the object it replaced (`None` for
/// a creation, and for changes fetched by a backfill, which come without
/// it): what a filtered subscriber needs to see an object move into or out
/// of its selection, as the cacher's `watchCacheEvent.PrevObject`.
pub struct Change {
    /// The event as the cluster sent it.
    pub event: Arc<WatchEvent>,
    /// The object's state before it, as the event that set it.
    pub prev: Option<Arc<WatchEvent>>,
    as_added: OnceLock<Arc<WatchEvent>>,
    as_deleted: OnceLock<Option<Arc<WatchEvent>>>,
}

impl Change {
    /// A change and the object it replaced.
    pub fn new(event: Arc<WatchEvent>, prev: Option<Arc<WatchEvent>>) -> Self {
        Change {
            event,
            prev,
            as_added: OnceLock::new(),
            as_deleted: OnceLock::new(),
        }
    }

    /// The same change around [`WatchEvent::detached`] copies, for a
    /// thread of a fan-out spread over threads.
    pub fn detached(&self) -> Change {
        let detach = |event: &Arc<WatchEvent>| Arc::new(event.detached());
        Change::new(detach(&self.event), self.prev.as_ref().map(detach))
    }

    /// The event as an `ADDED` (an object that came into a selection),
    /// built once for every subscriber that needs it.
    pub fn as_added(&self) -> &Arc<WatchEvent> {
        self.as_added
            .get_or_init(|| Arc::new(self.event.retyped(EventType::Added)))
    }

    /// The previous object as a `DELETED` at the event's version (an
    /// object that left a selection), built once.
    pub fn as_deleted(&self) -> Option<&Arc<WatchEvent>> {
        self.as_deleted
            .get_or_init(|| {
                let prev = self.prev.as_deref()?;
                Some(Arc::new(deleted_at(prev, self.event.resource_version())))
            })
            .as_ref()
    }
}

struct Entry {
    /// Version a client holds after this event. Never decreases along the
    /// history, so a replay is the entries after a partition point.
    position: u64,
    at: Instant,
    change: Arc<Change>,
    /// Fetched by a backfill rather than received live; only ever at the
    /// front of the history.
    backfilled: bool,
}

/// How a new subscriber is to be started, decided from its `resourceVersion`.
pub enum Start {
    /// Every current object as `ADDED`.
    Snapshot(Vec<Arc<WatchEvent>>),
    /// The changes after the client's version.
    Replay(Vec<Arc<Change>>),
    /// The version is older than the history: the events between it and
    /// the history must be fetched from the API server (which alone decides
    /// whether it is too old).
    Backfill(u64),
    /// The version is newer than anything seen: wait for it.
    Future(u64),
    /// The cache cannot place this version (the cluster's versions are not
    /// integers): the API server must be asked directly.
    Forward(String),
    /// The version is not an integer but the cluster's are: the API server
    /// would refuse it; the message is the one it answers.
    Invalid(String),
}

/// Current objects and recent history of one collection.
pub struct Cache {
    /// The current objects by `namespace/name`, each as the last event that
    /// set it: what a snapshot or a LIST from the store holds.
    objects: BTreeMap<Box<str>, Stored>,
    /// Recent changes (never bookmarks or errors), oldest first, within
    /// `limits` (backfilled entries at the front up to twice the count).
    /// Every change with a version above `horizon` is in it.
    history: VecDeque<Entry>,
    limits: HistoryLimits,
    /// Versions at or below this are no longer covered by the history; it
    /// only grows, except when a backfill extends the history backwards.
    horizon: u64,
    /// `horizon` as it would be without backfills, which lower `horizon`
    /// but bring changes that do not know the object they replaced: a
    /// filtered subscriber is replayed only from here. Only grows.
    exact_horizon: u64,
    /// The newest version seen (events, listings, bookmarks), as sent.
    latest: String,
    /// `latest` as an integer; only grows (0 when versions are not numeric).
    latest_num: u64,
    /// Whether every version seen was an integer, so versions can be
    /// ordered; once false it stays false.
    numeric: bool,
    item_kind: String,
    api_version: String,
}

impl Cache {
    /// An empty cache, not yet listed.
    pub fn new(limits: HistoryLimits) -> Self {
        Cache {
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            limits,
            horizon: 0,
            exact_horizon: 0,
            latest: String::new(),
            latest_num: 0,
            numeric: true,
            item_kind: String::new(),
            api_version: String::new(),
        }
    }

    /// The latest resourceVersion seen (events and bookmarks).
    pub fn latest(&self) -> &str {
        &self.latest
    }

    /// The latest version as an integer (0 if not numeric).
    pub fn latest_num(&self) -> u64 {
        self.latest_num
    }

    /// The oldest version the history can resume from: events after it are
    /// all held.
    pub fn horizon(&self) -> u64 {
        self.horizon
    }

    /// The horizon for a subscriber that is filtered (see `exact_horizon`)
    /// or not.
    pub fn horizon_for(&self, filtered: bool) -> u64 {
        if filtered {
            self.exact_horizon.max(self.horizon)
        } else {
            self.horizon
        }
    }

    /// Kind and apiVersion of the objects, learned from the list.
    pub fn kind(&self) -> (&str, &str) {
        (&self.item_kind, &self.api_version)
    }

    /// Every current object as `ADDED`, in key order.
    pub fn snapshot(&self) -> Vec<Arc<WatchEvent>> {
        self.objects.values().map(Stored::added).collect()
    }

    /// Raw JSON of every current object, in key order.
    pub fn objects(&self) -> impl Iterator<Item = &Arc<WatchEvent>> {
        self.objects.values().map(|s| &s.last)
    }

    fn note_version(&mut self, rv: &str) {
        if rv.is_empty() {
            return;
        }
        match rv.parse::<u64>() {
            Ok(n) if n >= self.latest_num => {
                self.latest_num = n;
                self.latest = rv.to_string();
            }
            Ok(_) => {}
            Err(_) => {
                self.numeric = false;
                self.latest = rv.to_string();
            }
        }
    }

    /// Replaces the contents with a listing. Returns the differences against
    /// what was held before (empty for the first listing), already applied
    /// and recorded in the history.
    pub fn reset(&mut self, listing: Listing, first: bool) -> Vec<Arc<Change>> {
        self.item_kind = listing.item_kind;
        self.api_version = listing.api_version;
        let list_rv = listing.resource_version;
        if first {
            for ev in listing.objects {
                self.objects
                    .insert(ev.key().into(), Stored::new(Arc::new(ev)));
            }
            self.note_version(&list_rv);
            self.horizon = self.latest_num;
            self.exact_horizon = self.latest_num;
            return Vec::new();
        }
        let mut fresh: BTreeMap<Box<str>, WatchEvent> = listing
            .objects
            .into_iter()
            .map(|ev| (Box::<str>::from(ev.key()), ev))
            .collect();
        let mut changed = Vec::new();
        let mut gone = Vec::new();
        for (key, old) in &self.objects {
            if !fresh.contains_key(key) {
                gone.push(deleted_at(&old.last, &list_rv));
            }
        }
        for (key, ev) in std::mem::take(&mut fresh) {
            match self.objects.get(&key) {
                Some(old) if old.last.resource_version() == ev.resource_version() => {}
                Some(_) => changed.push(ev.retyped(EventType::Modified)),
                None => changed.push(ev),
            }
        }
        // In version order, deletions (stamped with the listing's version)
        // last, so a client tracking the latest version never goes back.
        changed.sort_by_key(|ev| ev.rv());
        let list_position = list_rv.parse::<u64>().unwrap_or(self.latest_num);
        let out: Vec<Arc<Change>> = changed
            .into_iter()
            .chain(gone)
            .map(|ev| {
                let position = ev.rv().unwrap_or(list_position);
                self.apply_at(ev, position)
            })
            .collect();
        self.note_version(&list_rv);
        out
    }

    /// Applies a live event; returns it shared, with the object it replaced.
    pub fn apply(&mut self, event: WatchEvent) -> Arc<Change> {
        let position = event.rv().unwrap_or(self.latest_num);
        if event.rv().is_none() {
            self.numeric = false;
        }
        self.apply_at(event, position)
    }

    fn apply_at(&mut self, event: WatchEvent, position: u64) -> Arc<Change> {
        let event = Arc::new(event);
        let prev = match event.kind() {
            EventType::Added | EventType::Modified => self
                .objects
                .insert(event.key().into(), Stored::new(event.clone())),
            EventType::Deleted => self.objects.remove(event.key()),
            EventType::Bookmark | EventType::Error => return Arc::new(Change::new(event, None)),
        };
        let change = Arc::new(Change::new(event, prev.map(|stored| stored.last)));
        let position = position.max(self.history.back().map_or(0, |e| e.position));
        self.note_version(change.event.resource_version());
        self.history.push_back(Entry {
            position,
            at: Instant::now(),
            change: change.clone(),
            backfilled: false,
        });
        self.trim(Instant::now());
        change
    }

    /// Records progress without a change.
    pub fn bookmark(&mut self, rv: &str) {
        self.note_version(rv);
    }

    /// Drops history beyond the limits. Backfilled entries at the front
    /// are kept for the age limit even when the history is over its count,
    /// up to twice the count: otherwise the next live event of a full
    /// history would trim what the backfill fetched, and the next client
    /// from that version would need another backfill.
    pub fn trim(&mut self, now: Instant) {
        let max = self.limits.max_events;
        while let Some(front) = self.history.front() {
            let len = self.history.len();
            let too_many = len > max && (!front.backfilled || len > 2 * max);
            let too_old = now.duration_since(front.at) > self.limits.max_age;
            if !(too_many || too_old) {
                break;
            }
            self.horizon = self.horizon.max(front.position);
            self.exact_horizon = self.exact_horizon.max(front.position);
            self.history.pop_front();
        }
    }

    /// Decides how a subscriber asking for `resource_version` starts;
    /// a `filtered` one is replayed only from changes that know the
    /// object they replaced.
    pub fn start(
        &self,
        resource_version: Option<&str>,
        initial_events: bool,
        filtered: bool,
    ) -> Start {
        let rv = match resource_version {
            None | Some("0") | Some("") => return Start::Snapshot(self.snapshot()),
            Some(rv) => rv,
        };
        let Ok(n) = rv.parse::<u64>() else {
            if self.numeric {
                return Start::Invalid(invalid_version(rv));
            }
            if rv == self.latest && !initial_events {
                return Start::Replay(Vec::new());
            }
            return if initial_events {
                Start::Snapshot(self.snapshot())
            } else {
                Start::Forward(rv.to_string())
            };
        };
        if n > self.latest_num && self.numeric {
            return Start::Future(n);
        }
        if initial_events {
            return Start::Snapshot(self.snapshot());
        }
        if !self.numeric {
            return Start::Forward(rv.to_string());
        }
        if n < self.horizon_for(filtered) {
            return Start::Backfill(n);
        }
        Start::Replay(self.replay_after(n))
    }

    /// The history's changes after version `n` (which must not be older
    /// than the horizon).
    pub fn replay_after(&self, n: u64) -> Vec<Arc<Change>> {
        let from = self.history.partition_point(|e| e.position <= n);
        self.history
            .range(from..)
            .map(|e| e.change.clone())
            .collect()
    }

    /// Extends the history backwards with the events a backfill fetched:
    /// every event after `from` up to the horizon, in order. Afterwards the
    /// history resumes from `from` for the history's age limit, so the next
    /// client with that version is served locally. Events outside that range
    /// are ignored; a backfill that would take the history past twice its
    /// count is not kept.
    pub fn prepend(&mut self, from: u64, events: &[Arc<WatchEvent>]) {
        if from >= self.horizon {
            return;
        }
        let horizon = self.horizon;
        let now = Instant::now();
        let older: Vec<Entry> = events
            .iter()
            .filter_map(|event| {
                let rv = event.rv()?;
                (rv > from && rv <= horizon).then(|| Entry {
                    position: rv,
                    at: now,
                    change: Arc::new(Change::new(event.clone(), None)),
                    backfilled: true,
                })
            })
            .collect();
        if self.history.len() + older.len() > 2 * self.limits.max_events {
            return;
        }
        for entry in older.into_iter().rev() {
            self.history.push_front(entry);
        }
        self.horizon = from;
    }
}

/// The API server's answer to a version that is not an unsigned integer
/// (its etcd storage parses versions with Go's `strconv.ParseUint`).
fn invalid_version(rv: &str) -> String {
    let why = if !rv.is_empty() && rv.bytes().all(|b| b.is_ascii_digit()) {
        "value out of range"
    } else {
        "invalid syntax"
    };
    format!("resourceVersion: Invalid value: {rv:?}: strconv.ParseUint: parsing {rv:?}: {why}")
}

/// A `DELETED` event for an object that vanished while the watch was broken,
/// stamped with the version of the listing that showed it gone.
fn deleted_at(last: &WatchEvent, list_rv: &str) -> WatchEvent {
    let stamped = serde_json::from_slice::<serde_json::Value>(last.object())
        .ok()
        .and_then(|mut obj| {
            obj.get_mut("metadata")?
                .as_object_mut()?
                .insert("resourceVersion".into(), list_rv.into());
            serde_json::to_vec(&obj).ok()
        });
    stamped
        .and_then(|bytes| WatchEvent::synthesize(EventType::Deleted, &bytes).ok())
        .unwrap_or_else(|| last.retyped(EventType::Deleted))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A pod event at version `rv`, in namespace `d`.
    pub(in crate::hub) fn pod(kind: EventType, name: &str, rv: u64) -> WatchEvent {
        let obj = format!(
            r#"{{"kind":"Pod","apiVersion":"v1","metadata":{{"name":"{name}","namespace":"d","resourceVersion":"{rv}"}}}}"#
        );
        WatchEvent::synthesize(kind, obj.as_bytes()).unwrap()
    }

    /// A listing of pods at version `rv`.
    pub(in crate::hub) fn listing(rv: u64, objects: Vec<WatchEvent>) -> Listing {
        Listing {
            item_kind: "Pod".into(),
            api_version: "v1".into(),
            resource_version: rv.to_string(),
            objects,
        }
    }

    fn names(changes: &[Arc<Change>]) -> Vec<String> {
        changes
            .iter()
            .map(|c| &c.event)
            .map(|e| format!("{}:{}@{}", e.kind(), e.key(), e.resource_version()))
            .collect()
    }

    #[test]
    fn resume_table() {
        let mut c = Cache::new(HistoryLimits {
            max_events: 3,
            max_age: Duration::from_secs(600),
        });
        c.reset(listing(10, vec![pod(EventType::Added, "a", 5)]), true);
        for (i, name) in ["b", "c", "d", "e"].iter().enumerate() {
            c.apply(pod(EventType::Added, name, 11 + i as u64));
        }
        assert!(matches!(c.start(None, false, false), Start::Snapshot(s) if s.len() == 5));
        assert!(matches!(
            c.start(Some("0"), false, false),
            Start::Snapshot(_)
        ));
        match c.start(Some("12"), false, false) {
            Start::Replay(r) => assert_eq!(names(&r), ["ADDED:d/d@13", "ADDED:d/e@14"]),
            _ => panic!("expected replay"),
        }
        assert!(matches!(c.start(Some("14"), false, false), Start::Replay(r) if r.is_empty()));
        assert!(matches!(
            c.start(Some("10"), false, false),
            Start::Backfill(10)
        ));
        assert!(matches!(c.start(Some("11"), false, false), Start::Replay(r) if r.len() == 3));
        assert!(matches!(
            c.start(Some("99"), false, false),
            Start::Future(99)
        ));
        assert!(matches!(
            c.start(Some("12"), true, false),
            Start::Snapshot(_)
        ));
        assert!(
            matches!(c.start(Some("opaque"), false, false), Start::Invalid(m) if m.contains("invalid syntax"))
        );
        assert!(
            matches!(c.start(Some("99999999999999999999"), false, false), Start::Invalid(m) if m.contains("out of range"))
        );
    }

    #[test]
    fn opaque_versions_are_forwarded_on_clusters_without_integer_versions() {
        let mut c = Cache::new(HistoryLimits::default());
        c.reset(
            Listing {
                item_kind: "Pod".into(),
                api_version: "v1".into(),
                resource_version: "opaque-7".into(),
                objects: Vec::new(),
            },
            true,
        );
        assert!(
            matches!(c.start(Some("opaque-3"), false, false), Start::Forward(v) if v == "opaque-3")
        );
        assert!(
            matches!(c.start(Some("opaque-7"), false, false), Start::Replay(r) if r.is_empty())
        );
    }

    #[test]
    fn a_backfill_extends_the_history_backwards() {
        let mut c = Cache::new(HistoryLimits {
            max_events: 2,
            max_age: Duration::from_secs(600),
        });
        c.reset(listing(10, vec![]), true);
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            c.apply(pod(EventType::Added, name, 11 + i as u64));
        }
        assert_eq!(c.horizon(), 12);
        assert!(matches!(
            c.start(Some("10"), false, false),
            Start::Backfill(10)
        ));
        let fetched: Vec<Arc<WatchEvent>> = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, name)| Arc::new(pod(EventType::Added, name, 11 + i as u64)))
            .collect();
        c.prepend(10, &fetched);
        assert_eq!(c.horizon(), 10);
        match c.start(Some("10"), false, false) {
            Start::Replay(r) => assert_eq!(
                names(&r),
                [
                    "ADDED:d/a@11",
                    "ADDED:d/b@12",
                    "ADDED:d/c@13",
                    "ADDED:d/d@14"
                ]
            ),
            _ => panic!("expected a replay after the backfill"),
        }
    }

    #[test]
    fn relist_emits_differences() {
        let mut c = Cache::new(HistoryLimits::default());
        let pods = |rv, pods: &[(&str, u64)]| {
            let objects = pods
                .iter()
                .map(|(name, at)| pod(EventType::Added, name, *at))
                .collect();
            listing(rv, objects)
        };
        c.reset(pods(10, &[("keep", 3), ("change", 4), ("gone", 5)]), true);
        let diff = c.reset(pods(20, &[("keep", 3), ("change", 15), ("new", 16)]), false);
        assert_eq!(
            names(&diff),
            [
                "MODIFIED:d/change@15",
                "ADDED:d/new@16",
                "DELETED:d/gone@20"
            ]
        );
        assert_eq!(c.objects().count(), 3);
        assert_eq!(c.latest(), "20");
        assert!(matches!(c.start(Some("15"), false, false), Start::Replay(r) if r.len() == 2));
        assert!(matches!(c.start(Some("10"), false, false), Start::Replay(r) if r.len() == 3));
        assert!(matches!(c.start(Some("20"), false, false), Start::Replay(r) if r.is_empty()));
    }

    #[test]
    fn snapshot_reuses_added_events() {
        let mut c = Cache::new(HistoryLimits::default());
        c.reset(listing(1, vec![]), true);
        c.apply(pod(EventType::Added, "a", 2));
        c.apply(pod(EventType::Modified, "a", 3));
        let Start::Snapshot(first) = c.start(None, false, false) else {
            panic!()
        };
        let Start::Snapshot(second) = c.start(None, false, false) else {
            panic!()
        };
        assert!(Arc::ptr_eq(&first[0], &second[0]));
        assert_eq!(first[0].kind(), EventType::Added);
        assert_eq!(first[0].resource_version(), "3");
    }
}
