//! Watch events, parsed once and kept as shared bytes.
//!
//! An upstream event is parsed exactly once, for the few fields the hub needs
//! (type, namespace/name, resourceVersion). Its raw JSON stays a
//! [`Bytes`] slice of the line the API server sent, so fan-out to thousands of
//! subscribers clones a reference count instead of re-serialising the object.
//! A [`Transform`] (client-go's informer transforms) is applied during that
//! same parse: what it drops is cut out of the bytes, the rest kept verbatim.

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

use bytes::{BufMut, Bytes, BytesMut};
use kubemux_vocab::object::{INITIAL_EVENTS_END, is_initial_events_end};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The `type` of a Kubernetes watch event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// An object was created (or is reported as part of an initial state).
    Added,
    /// An object changed.
    Modified,
    /// An object was deleted; the event carries its last state.
    Deleted,
    /// A progress marker carrying only a resourceVersion.
    Bookmark,
    /// An in-band error, carrying a `Status` object.
    Error,
}

impl EventType {
    /// The wire spelling of the type.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
            EventType::Bookmark => "BOOKMARK",
            EventType::Error => "ERROR",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADDED" => EventType::Added,
            "MODIFIED" => EventType::Modified,
            "DELETED" => EventType::Deleted,
            "BOOKMARK" => EventType::Bookmark,
            "ERROR" => EventType::Error,
            _ => return None,
        })
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why bytes could not be read as a watch event or list.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The bytes are not the JSON shape of a watch event or list.
    #[error("malformed JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The event's `type` is not one Kubernetes defines.
    #[error("unknown watch event type {0:?}")]
    UnknownType(String),
    /// An object lacks `metadata.name`.
    #[error("object without metadata.name")]
    MissingName,
}

/// What kubemux changes in an object as it enters from the cluster, like
/// the transform a client-go informer runs before its cache
/// (`SetTransform`): applied once, where the object is parsed, so the
/// store, the history and every frame made from them see the result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transform {
    /// Drop `metadata.managedFields` (client-go's
    /// `TransformStripManagedFields`): server-side apply's bookkeeping,
    /// 30–40 % of a kubelet-managed pod, which no dashboard shows.
    pub strip_managed_fields: bool,
}

/// One watch event: its type, identity, resourceVersion and raw bytes.
pub struct WatchEvent {
    kind: EventType,
    key: Box<str>,
    resource_version: Box<str>,
    rv: Option<u64>,
    line: Bytes,
    object: Bytes,
    json_string: OnceLock<Bytes>,
    derived: parking_lot::Mutex<Vec<Derived>>,
}

/// A value a dialect derived from an event, shared by its subscribers.
type Derived = std::sync::Arc<dyn std::any::Any + Send + Sync>;

/// Most derived values kept per event: one per dialect that derives one.
const DERIVED_SLOTS: usize = 4;

impl fmt::Debug for WatchEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchEvent")
            .field("kind", &self.kind)
            .field("key", &self.key)
            .field("resource_version", &self.resource_version)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    object: &'a RawValue,
}

#[derive(Deserialize, Default)]
struct Head<'a> {
    #[serde(borrow, default)]
    metadata: Meta<'a>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Meta<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    namespace: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    resource_version: Option<Cow<'a, str>>,
    /// Kept as its place in the object, so [`Transform`] can cut it out
    /// without parsing the object again.
    #[serde(borrow, default)]
    managed_fields: Option<&'a RawValue>,
}

/// How [`Transform`] changes an object's bytes.
enum Cut {
    /// These bytes go; the rest stays as sent.
    Range(std::ops::Range<usize>),
    /// The object re-serialised (only for a `managedFields` key written
    /// with escapes, which no API server does, so speed does not matter).
    Rewritten(Vec<u8>),
}

impl Cut {
    /// What `transform` does to `object`, whose parsed head is `head`;
    /// `None` when it leaves it as it is.
    fn of(object: &[u8], head: &Head<'_>, transform: Transform) -> Result<Option<Cut>, ParseError> {
        let Some(value) = head
            .metadata
            .managed_fields
            .filter(|_| transform.strip_managed_fields)
        else {
            return Ok(None);
        };
        let start = offset_in(object, value.get());
        if let Some(range) = member_range(object, start, start + value.get().len()) {
            return Ok(Some(Cut::Range(range)));
        }
        let mut parsed: serde_json::Value = serde_json::from_slice(object)?;
        if let Some(metadata) = parsed
            .get_mut("metadata")
            .and_then(serde_json::Value::as_object_mut)
        {
            metadata.remove("managedFields");
        }
        Ok(Some(Cut::Rewritten(serde_json::to_vec(&parsed)?)))
    }

    /// `outer` with the object at `object` (a range of it) cut, and the
    /// object's range in the result.
    fn apply(
        self,
        outer: &[u8],
        object: std::ops::Range<usize>,
    ) -> (Vec<u8>, std::ops::Range<usize>) {
        let (head, tail) = (&outer[..object.start], &outer[object.end..]);
        let inner = &outer[object.clone()];
        let mut out = Vec::with_capacity(outer.len());
        out.extend_from_slice(head);
        match self {
            Cut::Range(cut) => {
                out.extend_from_slice(&inner[..cut.start]);
                out.extend_from_slice(&inner[cut.end..]);
            }
            Cut::Rewritten(bytes) => out.extend_from_slice(&bytes),
        }
        let end = out.len();
        out.extend_from_slice(tail);
        (out, object.start..end)
    }
}

/// The range to cut so that the member `"managedFields": value` (the value
/// at `start..end`) is gone and the object is still valid JSON: the member
/// with the comma after it, or with the comma before it when it is the
/// last. serde matched the key to `managedFields`, so the bytes before the
/// colon are exactly `"managedFields"` unless the key was written with
/// escapes: then `None`.
fn member_range(object: &[u8], start: usize, end: usize) -> Option<std::ops::Range<usize>> {
    const KEY: &[u8] = b"\"managedFields\"";
    let colon = skip_back_whitespace(object, start).checked_sub(1)?;
    if object[colon] != b':' {
        return None;
    }
    let key_end = skip_back_whitespace(object, colon);
    let key_start = key_end.checked_sub(KEY.len())?;
    if &object[key_start..key_end] != KEY {
        return None;
    }
    let after = end
        + object[end..]
            .iter()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
    if object.get(after) == Some(&b',') {
        return Some(key_start..after + 1);
    }
    let previous = skip_back_whitespace(object, key_start);
    Some(match previous.checked_sub(1).map(|i| object[i]) {
        Some(b',') => previous - 1..end,
        _ => key_start..end,
    })
}

/// The position after the last non-whitespace byte before `at`.
fn skip_back_whitespace(bytes: &[u8], at: usize) -> usize {
    at - bytes[..at]
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_whitespace())
        .count()
}

/// The position of `inner` inside `outer`, which must contain it.
fn offset_in(outer: &[u8], inner: &str) -> usize {
    inner.as_ptr() as usize - outer.as_ptr() as usize
}

/// The store key of an object: `namespace/name`, or `name` when cluster-scoped.
pub fn object_key(namespace: Option<&str>, name: &str) -> Box<str> {
    match namespace {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}").into_boxed_str(),
        _ => name.into(),
    }
}

impl WatchEvent {
    /// Parses one line of a watch stream, keeping `line` as the event's bytes.
    pub fn parse_line(line: Bytes) -> Result<WatchEvent, ParseError> {
        Self::parse_line_with(line, Transform::default())
    }

    /// [`parse_line`](Self::parse_line), with `transform` applied to the
    /// object. The head parsed for the identity also locates what the
    /// transform drops, so a transformed event costs one copy of its line,
    /// not a second parse.
    pub fn parse_line_with(line: Bytes, transform: Transform) -> Result<WatchEvent, ParseError> {
        let parsed: Line<'_> = serde_json::from_slice(&line)?;
        let kind = EventType::parse(&parsed.kind)
            .ok_or_else(|| ParseError::UnknownType(parsed.kind.to_string()))?;
        let raw = parsed.object.get();
        let start = offset_in(&line, raw);
        let object_at = start..start + raw.len();
        let head: Head<'_> = if kind == EventType::Error {
            Head::default()
        } else {
            serde_json::from_str(raw)?
        };
        let (key, resource_version) = identity(&head, kind)?;
        let (line, object_at) = match Cut::of(raw.as_bytes(), &head, transform)? {
            None => (line.clone(), object_at),
            Some(cut) => {
                let (bytes, at) = cut.apply(&line, object_at);
                (Bytes::from(bytes), at)
            }
        };
        Ok(WatchEvent {
            kind,
            rv: resource_version.parse().ok(),
            key,
            resource_version,
            object: line.slice(object_at),
            line,
            json_string: OnceLock::new(),
            derived: parking_lot::Mutex::new(Vec::new()),
        })
    }

    /// Builds an event around an object's raw JSON, as kubemux itself sends it
    /// (initial `ADDED` events, relist differences).
    pub fn synthesize(kind: EventType, object: &[u8]) -> Result<WatchEvent, ParseError> {
        Self::synthesize_with(kind, object, Transform::default())
    }

    /// [`synthesize`](Self::synthesize) around an object as the cluster
    /// sent it, with `transform` applied.
    fn synthesize_with(
        kind: EventType,
        object: &[u8],
        transform: Transform,
    ) -> Result<WatchEvent, ParseError> {
        let head: Head<'_> = serde_json::from_slice(object)?;
        let (key, resource_version) = identity(&head, kind)?;
        Ok(match Cut::of(object, &head, transform)? {
            None => Self::assemble(kind, object, key, resource_version),
            Some(cut) => {
                let (transformed, _) = cut.apply(object, 0..object.len());
                Self::assemble(kind, &transformed, key, resource_version)
            }
        })
    }

    /// A `BOOKMARK` event for `resource_version`, optionally marking the end of
    /// the initial events of a watch-list request.
    pub fn bookmark(
        kind: &str,
        api_version: &str,
        resource_version: &str,
        initial_events_end: bool,
    ) -> WatchEvent {
        let mut metadata = serde_json::json!({ "resourceVersion": resource_version });
        if initial_events_end {
            metadata["annotations"] = serde_json::json!({ INITIAL_EVENTS_END: "true" });
        }
        let object =
            serde_json::json!({"kind": kind, "apiVersion": api_version, "metadata": metadata});
        Self::assemble(
            EventType::Bookmark,
            object.to_string().as_bytes(),
            "".into(),
            resource_version.into(),
        )
    }

    /// An in-band `ERROR` event carrying a `Status` with these fields, as the
    /// API server writes one into a watch stream (used to relay a status the
    /// server answered over HTTP to a subscriber that expects watch events).
    pub fn status(code: u16, reason: &str, message: &str) -> WatchEvent {
        let mut object = serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "code": code
        });
        if !reason.is_empty() {
            object["reason"] = reason.into();
        }
        Self::assemble(
            EventType::Error,
            object.to_string().as_bytes(),
            "".into(),
            "".into(),
        )
    }

    fn assemble(
        kind: EventType,
        object: &[u8],
        key: Box<str>,
        resource_version: Box<str>,
    ) -> WatchEvent {
        let mut buf = BytesMut::with_capacity(object.len() + 32);
        buf.put_slice(b"{\"type\":\"");
        buf.put_slice(kind.as_str().as_bytes());
        buf.put_slice(b"\",\"object\":");
        let start = buf.len();
        buf.put_slice(object);
        let end = buf.len();
        buf.put_slice(b"}");
        let line = buf.freeze();
        WatchEvent {
            kind,
            rv: resource_version.parse().ok(),
            key,
            resource_version,
            object: line.slice(start..end),
            line,
            json_string: OnceLock::new(),
            derived: parking_lot::Mutex::new(Vec::new()),
        }
    }

    /// The event type.
    pub fn kind(&self) -> EventType {
        self.kind
    }

    /// `namespace/name` (or `name`) of the object; empty for bookmarks and errors.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// `metadata.resourceVersion` as sent.
    pub fn resource_version(&self) -> &str {
        &self.resource_version
    }

    /// The resourceVersion as an integer, when it is one (etcd-backed clusters).
    pub fn rv(&self) -> Option<u64> {
        self.rv
    }

    /// Whether this is the bookmark that ends the initial events of a
    /// `sendInitialEvents=true` watch.
    pub fn is_initial_events_end(&self) -> bool {
        self.kind() == EventType::Bookmark
            && serde_json::from_slice::<serde_json::Value>(self.object())
                .is_ok_and(|object| is_initial_events_end(&object))
    }

    /// The raw JSON of the object.
    pub fn object(&self) -> &Bytes {
        &self.object
    }

    /// The whole event, `{"type":…,"object":…}`, as raw JSON.
    pub fn line(&self) -> &Bytes {
        &self.line
    }

    /// A copy that shares no memory with this one: its bytes copied,
    /// nothing derived yet. A thread offering an event to many subscribers
    /// while another offers the same event to others takes a copy, so the
    /// two do not contend for one reference count (see the hub's shards).
    pub fn detached(&self) -> WatchEvent {
        let line = Bytes::copy_from_slice(&self.line);
        let start = (self.object.as_ptr() as usize).wrapping_sub(self.line.as_ptr() as usize);
        let object = match start.checked_add(self.object.len()) {
            Some(end) if end <= line.len() => line.slice(start..end),
            _ => Bytes::copy_from_slice(&self.object),
        };
        let json_string = OnceLock::new();
        if let Some(done) = self.json_string.get() {
            let _ = json_string.set(Bytes::copy_from_slice(done));
        }
        WatchEvent {
            kind: self.kind,
            key: self.key.clone(),
            resource_version: self.resource_version.clone(),
            rv: self.rv,
            line,
            object,
            json_string,
            derived: parking_lot::Mutex::new(Vec::new()),
        }
    }

    /// The whole event encoded as a JSON string literal (quotes included),
    /// computed once and shared by every subscriber that embeds it.
    pub fn json_string(&self) -> &Bytes {
        self.json_string.get_or_init(|| {
            let text = String::from_utf8_lossy(&self.line);
            Bytes::from(serde_json::to_vec(text.as_ref()).unwrap_or_default())
        })
    }

    /// A value derived from this event (a dialect's projection of the
    /// object, the parsed object), computed by the first subscriber that
    /// asks and shared by the others, so fanning an event out to N
    /// connections parses and projects it once. One value per type is kept,
    /// up to a few types; past them a value is computed afresh each time.
    pub fn derived<T: std::any::Any + Send + Sync>(
        &self,
        derive: impl FnOnce(&WatchEvent) -> T,
    ) -> std::sync::Arc<T> {
        let found = self
            .derived
            .lock()
            .iter()
            .find_map(|slot| slot.clone().downcast::<T>().ok());
        if let Some(value) = found {
            return value;
        }
        // Computed outside the lock: two subscribers racing both compute,
        // and the first to store wins.
        let value = std::sync::Arc::new(derive(self));
        let mut slots = self.derived.lock();
        if let Some(existing) = slots
            .iter()
            .find_map(|slot| slot.clone().downcast::<T>().ok())
        {
            return existing;
        }
        if slots.len() < DERIVED_SLOTS {
            slots.push(value.clone());
        }
        value
    }

    /// The same object as an event of another type (a stored object replayed as `ADDED`).
    pub fn retyped(&self, kind: EventType) -> WatchEvent {
        Self::assemble(
            kind,
            &self.object,
            self.key.clone(),
            self.resource_version.clone(),
        )
    }
}

fn identity(head: &Head<'_>, kind: EventType) -> Result<(Box<str>, Box<str>), ParseError> {
    let rv: Box<str> = head
        .metadata
        .resource_version
        .as_deref()
        .unwrap_or_default()
        .into();
    match kind {
        EventType::Bookmark | EventType::Error => Ok(("".into(), rv)),
        _ => {
            let name = head
                .metadata
                .name
                .as_deref()
                .filter(|n| !n.is_empty())
                .ok_or(ParseError::MissingName)?;
            Ok((object_key(head.metadata.namespace.as_deref(), name), rv))
        }
    }
}

#[derive(Deserialize)]
struct ListBody<'a> {
    #[serde(borrow, default)]
    kind: Cow<'a, str>,
    #[serde(borrow, default, rename = "apiVersion")]
    api_version: Cow<'a, str>,
    #[serde(borrow, default)]
    metadata: ListMeta<'a>,
    #[serde(borrow, default)]
    items: Vec<&'a RawValue>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ListMeta<'a> {
    #[serde(borrow, default)]
    resource_version: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "continue")]
    continue_token: Option<Cow<'a, str>>,
}

/// One page of a LIST response.
#[derive(Debug)]
pub struct ListPage {
    /// Kind of the items (`Pod` for a `PodList`).
    pub item_kind: String,
    /// `apiVersion` of the list and its items.
    pub api_version: String,
    /// `metadata.resourceVersion` of the list.
    pub resource_version: String,
    /// Token for the next page, if any.
    pub continue_token: Option<String>,
    /// The items as `ADDED` events, each with `kind` and `apiVersion` filled in
    /// (the API server leaves them out of list items, but watch events carry them).
    pub items: Vec<WatchEvent>,
}

/// Parses a LIST response body.
pub fn parse_list(body: &[u8]) -> Result<ListPage, ParseError> {
    parse_list_with(body, Transform::default())
}

/// [`parse_list`], with `transform` applied to every item.
pub fn parse_list_with(body: &[u8], transform: Transform) -> Result<ListPage, ParseError> {
    let list: ListBody<'_> = serde_json::from_slice(body)?;
    let item_kind = list
        .kind
        .strip_suffix("List")
        .unwrap_or(&list.kind)
        .to_string();
    let prefix = format!(
        "{{\"kind\":{},\"apiVersion\":{}",
        serde_json::to_string(&item_kind)?,
        serde_json::to_string(list.api_version.as_ref())?
    );
    let mut items = Vec::with_capacity(list.items.len());
    let mut buf = Vec::new();
    for raw in list.items {
        let text = raw.get();
        buf.clear();
        if has_kind(raw) {
            buf.extend_from_slice(text.as_bytes());
        } else {
            let rest = text
                .trim_start()
                .strip_prefix('{')
                .unwrap_or(text)
                .trim_start();
            buf.extend_from_slice(prefix.as_bytes());
            if !rest.starts_with('}') {
                buf.push(b',');
            }
            buf.extend_from_slice(rest.as_bytes());
        }
        items.push(WatchEvent::synthesize_with(
            EventType::Added,
            &buf,
            transform,
        )?);
    }
    Ok(ListPage {
        item_kind,
        api_version: list.api_version.into_owned(),
        resource_version: list
            .metadata
            .resource_version
            .map(Cow::into_owned)
            .unwrap_or_default(),
        continue_token: list
            .metadata
            .continue_token
            .map(Cow::into_owned)
            .filter(|c| !c.is_empty()),
        items,
    })
}

/// Whether an item already carries `kind` (some aggregated APIs include it).
fn has_kind(raw: &RawValue) -> bool {
    #[derive(Deserialize)]
    struct Kind<'a> {
        #[serde(borrow, default)]
        kind: Option<Cow<'a, str>>,
    }
    serde_json::from_str::<Kind<'_>>(raw.get())
        .map(|k| k.kind.is_some())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_line_without_copying_the_object() {
        let line = Bytes::from_static(
            br#"{"type":"MODIFIED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","namespace":"ns","resourceVersion":"42"}}}"#,
        );
        let ev = WatchEvent::parse_line(line.clone()).unwrap();
        assert_eq!(ev.kind(), EventType::Modified);
        assert_eq!(ev.key(), "ns/a");
        assert_eq!(ev.rv(), Some(42));
        assert!(ev.object().starts_with(b"{\"kind\":\"Pod\""));
        assert_eq!(ev.object().as_ptr() as usize - line.as_ptr() as usize, 28);
        let s: String = serde_json::from_slice(ev.json_string()).unwrap();
        assert_eq!(s.as_bytes(), &line[..]);
    }

    #[test]
    fn a_derived_value_is_computed_once_per_type() {
        let ev = WatchEvent::parse_line(Bytes::from_static(
            br#"{"type":"ADDED","object":{"metadata":{"name":"a","resourceVersion":"1"}}}"#,
        ))
        .unwrap();
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let derive = |e: &WatchEvent| {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            e.key().len()
        };
        let first = ev.derived(derive);
        let second = ev.derived(derive);
        assert!(std::sync::Arc::ptr_eq(&first, &second));
        assert_eq!(
            (*first, calls.load(std::sync::atomic::Ordering::Relaxed)),
            (1, 1)
        );
        assert_eq!(*ev.derived(|_| "other type"), "other type");
        assert_eq!(
            *ev.derived(|_| "the same type again"),
            "other type",
            "a second type has its own slot"
        );
        assert_eq!(*ev.derived(derive), 1);
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn rejects_bad_lines() {
        assert!(WatchEvent::parse_line(Bytes::from_static(b"{")).is_err());
        assert!(matches!(
            WatchEvent::parse_line(Bytes::from_static(br#"{"type":"NOPE","object":{}}"#)),
            Err(ParseError::UnknownType(_))
        ));
        assert!(matches!(
            WatchEvent::parse_line(Bytes::from_static(
                br#"{"type":"ADDED","object":{"metadata":{}}}"#
            )),
            Err(ParseError::MissingName)
        ));
    }

    #[test]
    fn list_items_gain_kind_and_api_version() {
        let body = br#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"7","continue":"x"},"items":[{"metadata":{"name":"a","namespace":"d","resourceVersion":"5"}},{}]}"#;
        let page = parse_list(body);
        assert!(page.is_err(), "an item without a name is rejected");
        let body = br#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"7","continue":"x"},"items":[{"metadata":{"name":"a","namespace":"d","resourceVersion":"5"}}]}"#;
        let page = parse_list(body).unwrap();
        assert_eq!(page.item_kind, "Pod");
        assert_eq!(page.resource_version, "7");
        assert_eq!(page.continue_token.as_deref(), Some("x"));
        let obj: serde_json::Value = serde_json::from_slice(page.items[0].object()).unwrap();
        assert_eq!(obj["kind"], "Pod");
        assert_eq!(obj["apiVersion"], "v1");
        assert_eq!(obj["metadata"]["name"], "a");
    }

    const STRIP: Transform = Transform {
        strip_managed_fields: true,
    };

    /// `object` as JSON with `metadata.managedFields` removed.
    fn without_managed_fields(object: &str) -> serde_json::Value {
        let mut value: serde_json::Value = serde_json::from_str(object).unwrap();
        value["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("managedFields");
        value
    }

    #[test]
    fn stripping_cuts_managed_fields_wherever_it_stands_and_keeps_the_rest_verbatim() {
        let fields = r#"[{"manager":"kubelet","fieldsV1":{"f:status":{}}}]"#;
        let cases = [
            (
                format!(
                    r#"{{"metadata":{{"name":"a","managedFields":{fields},"uid":"u"}},"spec":{{}}}}"#
                ),
                r#"{"metadata":{"name":"a","uid":"u"},"spec":{}}"#,
            ),
            (
                format!(r#"{{"metadata":{{"name":"a","managedFields":{fields}}},"spec":{{}}}}"#),
                r#"{"metadata":{"name":"a"},"spec":{}}"#,
            ),
            (
                format!(r#"{{"metadata":{{"managedFields":{fields},"name":"a"}}}}"#),
                r#"{"metadata":{"name":"a"}}"#,
            ),
            (
                format!(
                    "{{\"metadata\":{{ \"name\" : \"a\" ,\n  \"managedFields\" :\t{fields} \n}}}}"
                ),
                "{\"metadata\":{ \"name\" : \"a\"  \n}}",
            ),
        ];
        for (object, expected) in cases {
            let line = format!(r#"{{"type":"MODIFIED","object":{object}}}"#);
            let ev = WatchEvent::parse_line_with(Bytes::from(line), STRIP).unwrap();
            assert_eq!(std::str::from_utf8(ev.object()).unwrap(), expected);
            assert_eq!(
                std::str::from_utf8(ev.line()).unwrap(),
                format!(r#"{{"type":"MODIFIED","object":{expected}}}"#)
            );
            assert_eq!(ev.key(), "a");
            let listed = parse_list_with(
                format!(
                    r#"{{"kind":"PodList","apiVersion":"v1","metadata":{{}},"items":[{object}]}}"#
                )
                .as_bytes(),
                STRIP,
            )
            .unwrap();
            let item: serde_json::Value = serde_json::from_slice(listed.items[0].object()).unwrap();
            let mut expected: serde_json::Value = serde_json::from_str(expected).unwrap();
            expected["kind"] = "Pod".into();
            expected["apiVersion"] = "v1".into();
            assert_eq!(item, expected);
        }
    }

    proptest::proptest! {
        /// Wherever `managedFields` sorts among the other members, and
        /// however the object is spaced, the stripped event is the object
        /// without that member, every other member as it was.
        #[test]
        fn stripping_is_removing_the_member(
            members in proptest::collection::btree_map("[a-z]{1,14}", "[a-z0-9 ]{0,8}", 0..5),
            pretty in proptest::bool::ANY,
            last in proptest::bool::ANY,
        ) {
            let mut metadata: serde_json::Map<String, serde_json::Value> =
                members.into_iter().map(|(k, v)| (k, v.into())).collect();
            metadata.insert("name".into(), "a".into());
            metadata.insert("managedFields".into(), serde_json::json!([{"manager": "kubelet"}]));
            let mut object = serde_json::json!({"metadata": metadata});
            if !last {
                object["spec"] = serde_json::json!({});
            }
            let text = if pretty {
                serde_json::to_string_pretty(&object).unwrap()
            } else {
                object.to_string()
            };
            let line = format!("{{\"type\":\"ADDED\",\"object\":{text}}}");
            let ev = WatchEvent::parse_line_with(Bytes::from(line), STRIP).unwrap();
            let stripped: serde_json::Value = serde_json::from_slice(ev.object()).unwrap();
            proptest::prop_assert_eq!(stripped, without_managed_fields(&text));
            // The rest is verbatim: the object is the text with one cut.
            let (ours, theirs) = (&ev.object()[..], text.as_bytes());
            let same_start = ours.iter().zip(theirs).take_while(|(a, b)| a == b).count();
            let same_end = ours.iter().rev().zip(theirs.iter().rev()).take_while(|(a, b)| a == b).count();
            proptest::prop_assert!(same_start + same_end >= ours.len());
            let whole: serde_json::Value = serde_json::from_slice(ev.line()).unwrap();
            proptest::prop_assert_eq!(&whole["object"], &without_managed_fields(&text));
        }
    }

    #[test]
    fn an_escaped_managed_fields_key_is_stripped_too() {
        let object = r#"{"metadata":{"name":"a","\u006danagedFields":[{}],"uid":"u"}}"#;
        let line = format!(r#"{{"type":"ADDED","object":{object}}}"#);
        let ev = WatchEvent::parse_line_with(Bytes::from(line), STRIP).unwrap();
        let stripped: serde_json::Value = serde_json::from_slice(ev.object()).unwrap();
        assert_eq!(stripped, without_managed_fields(object));
        let whole: serde_json::Value = serde_json::from_slice(ev.line()).unwrap();
        assert_eq!(whole["object"], stripped);
    }

    #[test]
    fn without_the_transform_objects_keep_every_byte() {
        let line = Bytes::from_static(
            br#"{"type":"ADDED","object":{"metadata":{"name":"a","managedFields":[{}]}}}"#,
        );
        let ev = WatchEvent::parse_line_with(line.clone(), Transform::default()).unwrap();
        assert_eq!(ev.line(), &line);
        let ev = WatchEvent::parse_line_with(
            Bytes::from_static(
                br#"{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"3"}}}"#,
            ),
            STRIP,
        )
        .unwrap();
        assert_eq!(ev.resource_version(), "3");
    }

    #[test]
    fn expired_event_matches_the_api_server() {
        let ev = WatchEvent::status(410, "Expired", "too old resource version: 1 (5)");
        let v: serde_json::Value = serde_json::from_slice(ev.line()).unwrap();
        assert_eq!(v["type"], "ERROR");
        assert_eq!(v["object"]["code"], 410);
        assert_eq!(v["object"]["reason"], "Expired");
    }
}
