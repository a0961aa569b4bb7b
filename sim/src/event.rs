//! Watch events as stored in the history ring and fanned out to watchers.
//!
//! Each event is serialised at most once per wire form (ADDED, MODIFIED,
//! DELETED) and the resulting [`Bytes`] are shared by every watcher, so the
//! per-watcher cost is a selector check and a reference-count bump.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use kubemux_vocab::object::INITIAL_EVENTS_END;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::object::set_resource_version;
use crate::resources::ResourceDef;
use crate::selector::Filter;

/// What happened to the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// The object was created.
    Added,
    /// The object was changed.
    Modified,
    /// The object was deleted.
    Deleted,
}

/// One committed change, identified by the global resourceVersion it created.
#[derive(Debug)]
pub struct Event {
    /// The resourceVersion this change produced.
    pub rv: u64,
    /// The resource type of the object.
    pub def: &'static ResourceDef,
    /// The kind of change.
    pub event_type: EventType,
    /// The object after the change; for a deletion, its final state stamped
    /// with the deletion's resourceVersion.
    pub object: Arc<Value>,
    /// The object before the change (`None` for a creation).
    pub prev: Option<Arc<Value>>,
    added: OnceLock<Bytes>,
    modified: OnceLock<Bytes>,
    deleted: OnceLock<Bytes>,
}

impl Event {
    /// A new, not yet serialised event.
    pub fn new(
        rv: u64,
        def: &'static ResourceDef,
        event_type: EventType,
        object: Arc<Value>,
        prev: Option<Arc<Value>>,
    ) -> Self {
        Event {
            rv,
            def,
            event_type,
            object,
            prev,
            added: OnceLock::new(),
            modified: OnceLock::new(),
            deleted: OnceLock::new(),
        }
    }

    /// The line this watcher should receive, if any. Like the real watch
    /// cache, a modification that moves an object into the watcher's filter is
    /// sent as ADDED and one that moves it out as DELETED (with the previous
    /// state stamped with this event's resourceVersion).
    pub fn render(&self, filter: &Filter) -> Option<Bytes> {
        match self.event_type {
            EventType::Added => filter.matches(&self.object).then(|| {
                self.added
                    .get_or_init(|| line("ADDED", &self.object))
                    .clone()
            }),
            EventType::Deleted => filter.matches(&self.object).then(|| {
                self.deleted
                    .get_or_init(|| line("DELETED", &self.object))
                    .clone()
            }),
            EventType::Modified => {
                let now = filter.matches(&self.object);
                let before = self.prev.as_deref().is_some_and(|p| filter.matches(p));
                match (before, now) {
                    (true, true) => Some(
                        self.modified
                            .get_or_init(|| line("MODIFIED", &self.object))
                            .clone(),
                    ),
                    (false, true) => Some(
                        self.added
                            .get_or_init(|| line("ADDED", &self.object))
                            .clone(),
                    ),
                    (true, false) => {
                        Some(self.deleted.get_or_init(|| self.prev_as_deleted()).clone())
                    }
                    (false, false) => None,
                }
            }
        }
    }

    fn prev_as_deleted(&self) -> Bytes {
        let mut prev = self.prev.as_deref().cloned().unwrap_or(Value::Null);
        set_resource_version(&mut prev, self.rv);
        line("DELETED", &prev)
    }
}

#[derive(Serialize)]
struct WatchLine<'a, T: Serialize> {
    #[serde(rename = "type")]
    event_type: &'static str,
    object: &'a T,
}

fn encode<T: Serialize>(event_type: &'static str, object: &T) -> Bytes {
    let mut buf = serde_json::to_vec(&WatchLine { event_type, object }).unwrap_or_else(|e| {
        tracing::error!(error = %e, "serialising a watch event failed");
        Vec::new()
    });
    buf.push(b'\n');
    Bytes::from(buf)
}

/// `{"type":..,"object":..}` followed by a newline, as the real server's JSON
/// stream encoder writes it.
pub fn line(event_type: &'static str, object: &Value) -> Bytes {
    encode(event_type, object)
}

/// A BOOKMARK line carrying only the resourceVersion (and, for the end of
/// `sendInitialEvents`, the `k8s.io/initial-events-end` annotation).
pub fn bookmark_line(def: &ResourceDef, rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = Map::new();
    metadata.insert("resourceVersion".into(), Value::String(rv.to_string()));
    if initial_events_end {
        let mut annotations = Map::new();
        annotations.insert(INITIAL_EVENTS_END.into(), "true".into());
        metadata.insert("annotations".into(), Value::Object(annotations));
    }
    let object = TypedMeta {
        kind: def.kind,
        api_version: def.api_version(),
        metadata,
    };
    encode("BOOKMARK", &object)
}

/// An in-band ERROR line carrying a `Status`, e.g. 410 Expired.
pub fn error_line(error: &ApiError) -> Bytes {
    encode("ERROR", &error.status())
}

#[derive(Serialize)]
struct TypedMeta {
    kind: &'static str,
    #[serde(rename = "apiVersion")]
    api_version: String,
    metadata: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::by_plural;
    use serde_json::json;

    #[test]
    fn selector_transitions() {
        let pods = by_plural("pods").expect("pods");
        let old = Arc::new(
            json!({"metadata": {"name": "a", "labels": {"x": "1"}, "resourceVersion": "4"}}),
        );
        let new = Arc::new(
            json!({"metadata": {"name": "a", "labels": {"x": "2"}, "resourceVersion": "5"}}),
        );
        let ev = Event::new(5, pods, EventType::Modified, new, Some(old));
        let f1 = Filter::new(pods, None, Some("x=1"), None).expect("filter");
        let f2 = Filter::new(pods, None, Some("x=2"), None).expect("filter");
        let f3 = Filter::new(pods, None, Some("x=3"), None).expect("filter");
        let out = ev.render(&f1).expect("deleted");
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["type"], "DELETED");
        assert_eq!(v["object"]["metadata"]["labels"]["x"], "1");
        assert_eq!(v["object"]["metadata"]["resourceVersion"], "5");
        let out = ev.render(&f2).expect("added");
        assert!(out.starts_with(br#"{"type":"ADDED""#));
        assert!(ev.render(&f3).is_none());
    }
}
