//! The object store: current objects, one global resourceVersion counter
//! (like etcd), a bounded history ring of events, and per-resource broadcast
//! channels feeding live watchers.
//!
//! Every mutation takes one short lock, bumps the counter, appends to the
//! ring and broadcasts the shared [`Event`]; nothing under the lock waits on
//! a watcher. Serialisation happens lazily, outside the lock, in the watchers.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use serde_json::Value;
use tokio::sync::{broadcast, watch};

use crate::error::ApiError;
use crate::event::{Event, EventType};
use crate::object::{merge_patch, meta_str, metadata_mut, set_resource_version};
use crate::pagination::ContinueToken;
use crate::resources::{RESOURCES, ResourceDef, by_plural};
use crate::selector::Filter;
use crate::time::now_rfc3339;

/// How many events a live watcher may fall behind before it is ended, as the
/// real server ends watchers whose buffer overflows.
const WATCH_BUFFER: usize = 16_384;

/// Annotation carrying the time a change was committed, in Unix microseconds
/// (only when [`Store::set_stamp_sent_at`] is on).
pub const SENT_AT_ANNOTATION: &str = "kubemux.io/sent-at";

/// `(namespace or "", name)`, ordered like etcd keys.
type Key = (String, String);
type Objects = BTreeMap<Key, Arc<Value>>;

/// How long a request for a resourceVersion the store has not reached yet
/// waits for it, like the watch cache's `waitUntilFreshAndBlock`.
pub const FRESHNESS_WAIT: Duration = Duration::from_secs(3);

/// Where a new watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchFrom {
    /// Synthetic ADDED for every current object, then live events.
    CurrentState,
    /// Only events after the current resourceVersion (no initial state):
    /// `sendInitialEvents=false` from "any" or unset.
    Latest,
    /// Replay retained events newer than this resourceVersion, then live.
    After(u64),
}

/// Which state a LIST page is served from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ListAt<'a> {
    /// The current state.
    Current,
    /// The state exactly at this resourceVersion (`resourceVersionMatch=Exact`).
    Exact(u64),
    /// The next page of a chunked LIST, at the token's resourceVersion.
    Continue(&'a ContinueToken),
}

/// What a watcher must send before live events.
#[derive(Debug)]
pub enum Initial {
    /// A current object, sent as a synthetic ADDED.
    Object(Arc<Value>),
    /// A retained event being replayed.
    Event(Arc<Event>),
}

/// A watch registration taken atomically with the initial state, so no event
/// is lost or duplicated between the two.
#[derive(Debug)]
pub struct Subscription {
    /// Objects or events to send first, in order.
    pub initial: Vec<Initial>,
    /// Live events committed after the registration.
    pub live: broadcast::Receiver<Arc<Event>>,
    /// The resourceVersion at registration time.
    pub rv: u64,
}

/// One page of a LIST.
#[derive(Debug)]
pub struct ListPage {
    /// Matching objects (with kind/apiVersion; the HTTP layer strips them).
    pub items: Vec<Arc<Value>>,
    /// The resourceVersion of the snapshot served.
    pub rv: u64,
    /// Token for the next page, if more items match.
    pub continue_token: Option<String>,
    /// How many matching items remain after this page.
    pub remaining: usize,
}

#[derive(Debug)]
struct State {
    rv: u64,
    objects: HashMap<&'static str, Objects>,
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    /// Every event with an rv at or below this has been compacted away.
    compacted_rv: u64,
}

/// The simulated etcd + watch cache. Shared as `Arc<Store>` between the HTTP
/// handlers, the churn generator and in-process callers.
#[derive(Debug)]
pub struct Store {
    state: Mutex<State>,
    channels: HashMap<&'static str, broadcast::Sender<Arc<Event>>>,
    rv_tx: watch::Sender<u64>,
    stamp_sent_at: AtomicBool,
}

fn resource(plural: &str) -> Result<&'static ResourceDef, ApiError> {
    by_plural(plural).ok_or_else(ApiError::unknown_resource)
}

fn key_of(namespace: &Option<String>, name: &str) -> Key {
    (namespace.clone().unwrap_or_default(), name.to_string())
}

impl Store {
    /// An empty store retaining at most `history_limit` events.
    pub fn new(history_limit: usize) -> Self {
        let channels = RESOURCES
            .iter()
            .map(|def| (def.plural, broadcast::channel(WATCH_BUFFER).0))
            .collect();
        let objects = RESOURCES
            .iter()
            .map(|def| (def.plural, Objects::new()))
            .collect();
        Store {
            state: Mutex::new(State {
                rv: 0,
                objects,
                history: VecDeque::new(),
                history_limit,
                compacted_rv: 0,
            }),
            channels,
            rv_tx: watch::channel(0).0,
            stamp_sent_at: AtomicBool::new(false),
        }
    }

    /// Stamps every later change with [`SENT_AT_ANNOTATION`] (the commit time
    /// in Unix microseconds), for latency measurements.
    pub fn set_stamp_sent_at(&self, on: bool) {
        self.stamp_sent_at.store(on, Ordering::Relaxed);
    }

    fn stamp(&self, object: &mut Value) {
        if !self.stamp_sent_at.load(Ordering::Relaxed) {
            return;
        }
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        if let Some(meta) = metadata_mut(object) {
            let annotations = meta
                .entry("annotations")
                .or_insert_with(|| Value::Object(serde_json::Map::new()));
            if let Some(map) = annotations.as_object_mut() {
                map.insert(SENT_AT_ANNOTATION.into(), Value::String(micros.to_string()));
            }
        }
    }

    /// The current (latest committed) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        *self.rv_tx.borrow()
    }

    /// A receiver that observes every resourceVersion bump, for waiting
    /// until a requested version exists.
    pub(crate) fn subscribe_rv(&self) -> watch::Receiver<u64> {
        self.rv_tx.subscribe()
    }

    /// Creates an object; the server fills uid, resourceVersion,
    /// creationTimestamp, namespace, kind and apiVersion, and resolves
    /// `metadata.generateName`.
    pub fn create(
        &self,
        resource_name: &str,
        namespace: Option<&str>,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        let def = resource(resource_name)?;
        let ns = resolve_namespace(def, namespace, &object)?;
        check_type_meta(def, &object)?;
        let mut state = self.state.lock();
        if let Some(ns) = &ns
            && !state.contains("namespaces", &(String::new(), ns.clone()))
        {
            let namespaces = resource("namespaces")?;
            return Err(ApiError::not_found(namespaces, ns));
        }
        let name = match meta_str(&object, "name").filter(|n| !n.is_empty()) {
            Some(name) => name.to_string(),
            None => {
                let prefix = meta_str(&object, "generateName")
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "metadata.name: Required value: name or generateName is required",
                        )
                    })?
                    .to_string();
                state.unique_name(def, &ns, &prefix)
            }
        };
        let key = key_of(&ns, &name);
        if state.contains(def.plural, &key) {
            return Err(ApiError::already_exists(def, &name));
        }
        let rv = state.rv + 1;
        stamp_type_meta(def, &mut object);
        let meta = metadata_mut(&mut object)
            .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
        meta.insert("name".into(), name.into());
        if let Some(ns) = &ns {
            meta.insert("namespace".into(), ns.clone().into());
        }
        meta.insert("uid".into(), uuid::Uuid::new_v4().to_string().into());
        meta.insert("creationTimestamp".into(), now_rfc3339().into());
        set_resource_version(&mut object, rv);
        self.stamp(&mut object);
        let object = Arc::new(object);
        state.objects_mut(def).insert(key, Arc::clone(&object));
        self.commit(&mut state, def, EventType::Added, Arc::clone(&object), None);
        Ok((*object).clone())
    }

    /// Replaces an object. A `metadata.resourceVersion` in the body is a
    /// precondition (409 Conflict on mismatch); an update that changes
    /// nothing does not bump the resourceVersion, as on a real server.
    pub fn update(
        &self,
        resource_name: &str,
        namespace: Option<&str>,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        let def = resource(resource_name)?;
        let ns = resolve_namespace(def, namespace, &object)?;
        check_type_meta(def, &object)?;
        let name = meta_str(&object, "name")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError::invalid("metadata.name: Required value: name is required"))?
            .to_string();
        let key = key_of(&ns, &name);
        let mut state = self.state.lock();
        let existing = state
            .get(def, &key)
            .ok_or_else(|| ApiError::not_found(def, &name))?;
        if let Some(rv) = meta_str(&object, "resourceVersion")
            && Some(rv) != meta_str(&existing, "resourceVersion")
        {
            return Err(ApiError::conflict(def, &name));
        }
        keep_server_fields(def, &existing, &mut object)?;
        Ok(self.replace(&mut state, def, key, existing, object))
    }

    /// Applies an RFC 7386 merge patch to the named object. A
    /// `metadata.resourceVersion` in the patch is a precondition.
    pub fn merge_patch(
        &self,
        resource_name: &str,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Result<Value, ApiError> {
        let def = resource(resource_name)?;
        let ns = scoped_namespace(def, namespace)?;
        if !patch.is_object() {
            return Err(ApiError::bad_request("a merge patch must be a JSON object"));
        }
        let key = key_of(&ns, name);
        let mut state = self.state.lock();
        let existing = state
            .get(def, &key)
            .ok_or_else(|| ApiError::not_found(def, name))?;
        if let Some(rv) = patch
            .get("metadata")
            .and_then(|m| m.get("resourceVersion"))
            .and_then(Value::as_str)
            && Some(rv) != meta_str(&existing, "resourceVersion")
        {
            return Err(ApiError::conflict(def, name));
        }
        let mut object = (*existing).clone();
        merge_patch(&mut object, patch);
        keep_server_fields(def, &existing, &mut object)?;
        Ok(self.replace(&mut state, def, key, existing, object))
    }

    /// Deletes an object immediately (no graceful period) and returns its
    /// final state. Deleting a namespace first deletes everything in it.
    pub fn delete(
        &self,
        resource_name: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let def = resource(resource_name)?;
        let ns = scoped_namespace(def, namespace)?;
        let key = key_of(&ns, name);
        let mut state = self.state.lock();
        if !state.contains(def.plural, &key) {
            return Err(ApiError::not_found(def, name));
        }
        if def.plural == "namespaces" {
            for inner in RESOURCES.iter().filter(|d| d.namespaced) {
                let keys: Vec<Key> = state
                    .objects_mut(inner)
                    .keys()
                    .filter(|k| k.0 == name)
                    .cloned()
                    .collect();
                for inner_key in keys {
                    self.remove(&mut state, inner, &inner_key);
                }
            }
        }
        self.remove(&mut state, def, &key)
            .map(|object| (*object).clone())
            .ok_or_else(|| ApiError::not_found(def, name))
    }

    /// Reads one object.
    pub fn get(
        &self,
        resource_name: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let def = resource(resource_name)?;
        let ns = scoped_namespace(def, namespace)?;
        self.state
            .lock()
            .get(def, &key_of(&ns, name))
            .map(|o| (*o).clone())
            .ok_or_else(|| ApiError::not_found(def, name))
    }

    /// Current objects matching, each WITH kind/apiVersion, plus the current
    /// resourceVersion. `namespace: None` lists across all namespaces.
    pub fn list(
        &self,
        resource_name: &str,
        namespace: Option<&str>,
        label_selector: Option<&str>,
        field_selector: Option<&str>,
    ) -> Result<(Vec<Value>, u64), ApiError> {
        let def = resource(resource_name)?;
        let filter = Filter::new(def, namespace, label_selector, field_selector)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let page = self.list_page(def, &filter, None, ListAt::Current)?;
        Ok((page.items.iter().map(|o| (**o).clone()).collect(), page.rv))
    }

    /// One page of a LIST: up to `limit` matching objects (after the
    /// continue token's key), from the current state or from a snapshot
    /// reconstructed from the history ring (an exact version, or a continue
    /// token's). 410 if the snapshot has been compacted away; an exact
    /// version not reached yet is the caller's to wait for (see
    /// [`Store::wait_for_resource_version`]).
    pub(crate) fn list_page(
        &self,
        def: &'static ResourceDef,
        filter: &Filter,
        limit: Option<usize>,
        at: ListAt<'_>,
    ) -> Result<ListPage, ApiError> {
        let state = self.state.lock();
        let (snapshot_rv, snapshot, start) = match at {
            ListAt::Continue(token) if token.rv < state.compacted_rv || token.rv > state.rv => {
                return Err(ApiError::continue_expired());
            }
            ListAt::Continue(token) => (
                token.rv,
                state.snapshot_at(def, token.rv),
                Some((token.namespace.clone(), token.name.clone())),
            ),
            ListAt::Exact(rv) if rv < state.compacted_rv => return Err(ApiError::list_expired()),
            ListAt::Exact(rv) if rv > state.rv => {
                return Err(ApiError::too_large_resource_version(rv, state.rv));
            }
            ListAt::Exact(rv) => (rv, state.snapshot_at(def, rv), None),
            ListAt::Current => (
                state.rv,
                state.objects.get(def.plural).cloned().unwrap_or_default(),
                None,
            ),
        };
        drop(state);
        let mut matching = snapshot
            .iter()
            .filter(|(k, _)| start.as_ref().is_none_or(|s| *k > s))
            .filter(|(_, o)| filter.matches(o));
        let limit = limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut last_key = None;
        for (k, o) in matching.by_ref().take(limit) {
            items.push(Arc::clone(o));
            last_key = Some(k);
        }
        let remaining = matching.count();
        let continue_token = match last_key {
            Some((namespace, name)) if remaining > 0 => Some(
                ContinueToken {
                    rv: snapshot_rv,
                    namespace: namespace.clone(),
                    name: name.clone(),
                }
                .encode(),
            ),
            _ => None,
        };
        Ok(ListPage {
            items,
            rv: snapshot_rv,
            continue_token,
            remaining,
        })
    }

    /// Registers a watcher on `def` and captures what it must send first.
    /// 410 Expired if `from` is older than the retained history.
    pub(crate) fn subscribe(
        &self,
        def: &'static ResourceDef,
        from: WatchFrom,
    ) -> Result<Subscription, ApiError> {
        let state = self.state.lock();
        let initial = match from {
            WatchFrom::CurrentState => state
                .objects
                .get(def.plural)
                .map(|objects| {
                    objects
                        .values()
                        .map(|o| Initial::Object(Arc::clone(o)))
                        .collect()
                })
                .unwrap_or_default(),
            WatchFrom::Latest => Vec::new(),
            WatchFrom::After(rv) if rv < state.compacted_rv => {
                return Err(ApiError::too_old(rv, state.compacted_rv));
            }
            WatchFrom::After(rv) => state
                .history
                .iter()
                .filter(|e| e.rv > rv && e.def == def)
                .map(|e| Initial::Event(Arc::clone(e)))
                .collect(),
        };
        let live = self
            .channels
            .get(def.plural)
            .map(broadcast::Sender::subscribe)
            .ok_or_else(ApiError::unknown_resource)?;
        Ok(Subscription {
            initial,
            live,
            rv: state.rv,
        })
    }

    /// Waits until the store has reached `rv`, at most `limit`, as the watch
    /// cache does before serving a LIST (or `sendInitialEvents`) at a
    /// version it has not seen yet; 504 "Too large resource version" if it
    /// does not get there in time.
    pub(crate) async fn wait_for_resource_version(
        &self,
        rv: u64,
        limit: Duration,
    ) -> Result<(), ApiError> {
        let mut versions = self.subscribe_rv();
        match tokio::time::timeout(limit, versions.wait_for(|current| *current >= rv)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(ApiError::too_large_resource_version(
                rv,
                self.resource_version(),
            )),
        }
    }

    /// Drops the whole history: every resourceVersion up to the current one
    /// becomes too old to watch from or continue a LIST at.
    pub(crate) fn compact(&self) {
        let rv = self.state.lock().rv;
        self.compact_to(rv);
    }

    /// Compacts the history up to `rv`, like an etcd compaction: the events
    /// at or below it are dropped, so watches from before `rv` and LISTs at
    /// versions before it answer 410; `rv` itself and everything later stay
    /// servable. Never moves the compaction point backwards.
    pub(crate) fn compact_to(&self, rv: u64) {
        let mut state = self.state.lock();
        let rv = rv.min(state.rv);
        if rv <= state.compacted_rv {
            return;
        }
        while state.history.front().is_some_and(|e| e.rv <= rv) {
            state.history.pop_front();
        }
        state.compacted_rv = rv;
        tracing::info!(rv, "history compacted");
    }

    /// The newest compacted resourceVersion: watches from it and LISTs at it
    /// are still served, anything older is 410 Expired.
    pub fn compacted_resource_version(&self) -> u64 {
        self.state.lock().compacted_rv
    }

    /// How many objects of a type exist (all namespaces).
    pub(crate) fn count(&self, resource_name: &str) -> usize {
        self.state
            .lock()
            .objects
            .get(resource_name)
            .map_or(0, BTreeMap::len)
    }

    /// The `n`-th object of a type in key order, for picking churn victims.
    pub(crate) fn nth(&self, resource_name: &str, n: usize) -> Option<Arc<Value>> {
        self.state
            .lock()
            .objects
            .get(resource_name)
            .and_then(|objects| objects.values().nth(n).cloned())
    }

    /// Stores `object` in place of `existing` unless nothing changed.
    fn replace(
        &self,
        state: &mut State,
        def: &'static ResourceDef,
        key: Key,
        existing: Arc<Value>,
        mut object: Value,
    ) -> Value {
        let current_rv = meta_str(&existing, "resourceVersion")
            .unwrap_or("")
            .to_string();
        if let Some(meta) = metadata_mut(&mut object) {
            meta.insert("resourceVersion".into(), current_rv.into());
        }
        if object == *existing {
            return object;
        }
        set_resource_version(&mut object, state.rv + 1);
        self.stamp(&mut object);
        let object = Arc::new(object);
        state.objects_mut(def).insert(key, Arc::clone(&object));
        self.commit(
            state,
            def,
            EventType::Modified,
            Arc::clone(&object),
            Some(existing),
        );
        (*object).clone()
    }

    fn remove(
        &self,
        state: &mut State,
        def: &'static ResourceDef,
        key: &Key,
    ) -> Option<Arc<Value>> {
        let existing = state.objects_mut(def).remove(key)?;
        let mut last = (*existing).clone();
        set_resource_version(&mut last, state.rv + 1);
        self.stamp(&mut last);
        let last = Arc::new(last);
        self.commit(
            state,
            def,
            EventType::Deleted,
            Arc::clone(&last),
            Some(existing),
        );
        Some(last)
    }

    /// Bumps the counter and publishes the event; `object` already carries
    /// the new resourceVersion (`state.rv + 1`).
    fn commit(
        &self,
        state: &mut State,
        def: &'static ResourceDef,
        event_type: EventType,
        object: Arc<Value>,
        prev: Option<Arc<Value>>,
    ) {
        state.rv += 1;
        let event = Arc::new(Event::new(state.rv, def, event_type, object, prev));
        state.history.push_back(Arc::clone(&event));
        while state.history.len() > state.history_limit {
            if let Some(old) = state.history.pop_front() {
                state.compacted_rv = old.rv;
            }
        }
        if let Some(channel) = self.channels.get(def.plural) {
            // An error only means nobody is watching this resource.
            let _ = channel.send(event);
        }
        self.rv_tx.send_replace(state.rv);
    }
}

impl State {
    fn objects_mut(&mut self, def: &'static ResourceDef) -> &mut Objects {
        self.objects.entry(def.plural).or_default()
    }

    fn contains(&self, plural: &str, key: &Key) -> bool {
        self.objects
            .get(plural)
            .is_some_and(|o| o.contains_key(key))
    }

    fn get(&self, def: &ResourceDef, key: &Key) -> Option<Arc<Value>> {
        self.objects.get(def.plural)?.get(key).cloned()
    }

    /// `prefix` plus five random characters from the real server's alphabet.
    fn unique_name(&self, def: &ResourceDef, ns: &Option<String>, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut rng = rand::rng();
        loop {
            let suffix: String = (0..5)
                .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
                .collect();
            let name = format!("{prefix}{suffix}");
            if !self.contains(def.plural, &key_of(ns, &name)) {
                return name;
            }
        }
    }

    /// The objects of `def` as they were at `rv`, undoing newer events.
    fn snapshot_at(&self, def: &ResourceDef, rv: u64) -> Objects {
        let mut objects = self.objects.get(def.plural).cloned().unwrap_or_default();
        for event in self.history.iter().rev().take_while(|e| e.rv > rv) {
            if event.def != def {
                continue;
            }
            let ns = meta_str(&event.object, "namespace").map(str::to_string);
            let name = meta_str(&event.object, "name").unwrap_or_default();
            let key = key_of(&ns, name);
            match (&event.event_type, &event.prev) {
                (EventType::Added, _) | (_, None) => {
                    objects.remove(&key);
                }
                (_, Some(prev)) => {
                    objects.insert(key, Arc::clone(prev));
                }
            }
        }
        objects
    }
}

/// The namespace an object goes into: the request's, else the body's.
fn resolve_namespace(
    def: &ResourceDef,
    namespace: Option<&str>,
    object: &Value,
) -> Result<Option<String>, ApiError> {
    if !object.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    let body_ns = meta_str(object, "namespace").filter(|n| !n.is_empty());
    if !def.namespaced {
        return match namespace.or(body_ns) {
            None => Ok(None),
            Some(_) => Err(ApiError::bad_request(format!(
                "{} is not namespaced",
                def.plural
            ))),
        };
    }
    match (namespace, body_ns) {
        (Some(req), Some(body)) if req != body => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        (Some(ns), _) | (None, Some(ns)) => Ok(Some(ns.to_string())),
        (None, None) => Err(ApiError::bad_request(
            "a namespace is required for namespaced resources",
        )),
    }
}

/// The namespace part of a key for name-addressed operations.
fn scoped_namespace(
    def: &ResourceDef,
    namespace: Option<&str>,
) -> Result<Option<String>, ApiError> {
    match (def.namespaced, namespace) {
        (true, Some(ns)) => Ok(Some(ns.to_string())),
        (true, None) => Err(ApiError::bad_request(
            "a namespace is required for namespaced resources",
        )),
        (false, None) => Ok(None),
        (false, Some(_)) => Err(ApiError::bad_request(format!(
            "{} is not namespaced",
            def.plural
        ))),
    }
}

/// Rejects a body whose kind/apiVersion name a different type.
fn check_type_meta(def: &ResourceDef, object: &Value) -> Result<(), ApiError> {
    let kind = object.get("kind").and_then(Value::as_str);
    let api_version = object.get("apiVersion").and_then(Value::as_str);
    if kind.is_some_and(|k| k != def.kind) || api_version.is_some_and(|v| v != def.api_version()) {
        return Err(ApiError::bad_request(format!(
            "the body kind/apiVersion does not match {} {}",
            def.api_version(),
            def.kind
        )));
    }
    Ok(())
}

fn stamp_type_meta(def: &ResourceDef, object: &mut Value) {
    if let Some(map) = object.as_object_mut() {
        map.insert("kind".into(), def.kind.into());
        map.insert("apiVersion".into(), def.api_version().into());
    }
}

/// Restores what clients may not change: identity, uid, creation time and
/// type meta.
fn keep_server_fields(
    def: &ResourceDef,
    existing: &Value,
    object: &mut Value,
) -> Result<(), ApiError> {
    stamp_type_meta(def, object);
    let meta =
        metadata_mut(object).ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
    for field in ["name", "namespace", "uid", "creationTimestamp"] {
        match existing.get("metadata").and_then(|m| m.get(field)) {
            Some(value) => {
                meta.insert(field.into(), value.clone());
            }
            None => {
                meta.remove(field);
            }
        }
    }
    Ok(())
}
