//! Per-subscriber filtering, as the API server's cacher does it: one shared
//! watch per resource type, and each subscriber's namespace, label selector
//! and field selector evaluated by kubemux on every event
//! (`cache_watcher.go`'s `convertToWatchEvent`).
//!
//! [`widen`] decides whether a request can be served that way: it can when
//! every term of its selectors is one kubemux evaluates exactly as the API
//! server does (every label selector; `metadata.name` and
//! `metadata.namespace` for every resource, and the string fields the API
//! server selects pods and namespaces by). Anything else keeps a watch of
//! its own, answered by the cluster.
//!
//! An object that starts matching arrives as `ADDED`, one that stops
//! matching as `DELETED` carrying its previous state at the event's
//! version, exactly as the cacher sends them; for that, every change in the
//! history carries the object it replaced ([`Change`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use kubemux_vocab::path::ResourcePath;
use serde::Deserialize;

use super::key::{WatchKey, selector};
pub(super) use super::watch_cache::Change;
use crate::upstream::event::{EventType, WatchEvent};

/// A field a selector may name, for one resource type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Name,
    Namespace,
    /// An index into [`Selectable::fields`], of the resource's table.
    Extra(usize),
}

/// The string fields the API server's field-label conversion accepts for
/// pods (`pkg/registry/core/pod`'s `ToSelectableFields`) beyond the
/// metadata ones, with their place in a pod.
const POD_FIELDS: &[(&str, Place)] = &[
    ("spec.nodeName", Place::Spec("nodeName")),
    ("spec.restartPolicy", Place::Spec("restartPolicy")),
    ("spec.schedulerName", Place::Spec("schedulerName")),
    ("spec.serviceAccountName", Place::Spec("serviceAccountName")),
    ("status.phase", Place::Status("phase")),
    ("status.podIP", Place::Status("podIP")),
    (
        "status.nominatedNodeName",
        Place::Status("nominatedNodeName"),
    ),
];

/// Namespaces select on their phase.
const NAMESPACE_FIELDS: &[(&str, Place)] = &[("status.phase", Place::Status("phase"))];

/// Where a selectable string field lives in an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Spec(&'static str),
    Status(&'static str),
}

/// The extra selectable fields of a resource type.
fn extra_fields(resource: &ResourcePath) -> &'static [(&'static str, Place)] {
    match (resource.group.as_str(), resource.resource.as_str()) {
        ("", "pods") => POD_FIELDS,
        ("", "namespaces") => NAMESPACE_FIELDS,
        _ => &[],
    }
}

/// One term of a label selector (apimachinery's `labels.Requirement`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelTerm {
    Exists(Box<str>),
    Absent(Box<str>),
    Equals(Box<str>, Box<str>),
    Differs(Box<str>, Box<str>),
    In(Box<str>, Vec<Box<str>>),
    NotIn(Box<str>, Vec<Box<str>>),
}

impl LabelTerm {
    /// Reads a term in the canonical form `hub::key` writes.
    fn read(term: &str) -> Option<LabelTerm> {
        if let Some(key) = term.strip_prefix('!') {
            return Some(LabelTerm::Absent(key.into()));
        }
        if let Some((key, value)) = term.split_once("!=") {
            return Some(LabelTerm::Differs(key.into(), value.into()));
        }
        if let Some((key, value)) = term.split_once('=') {
            return Some(LabelTerm::Equals(key.into(), value.into()));
        }
        if let Some((key, rest)) = term.split_once(' ') {
            let (negated, set) = match rest.split_once(' ') {
                Some(("in", set)) => (false, set),
                Some(("notin", set)) => (true, set),
                _ => return None,
            };
            let values = set
                .strip_prefix('(')?
                .strip_suffix(')')?
                .split(',')
                .map(Into::into)
                .collect();
            return Some(if negated {
                LabelTerm::NotIn(key.into(), values)
            } else {
                LabelTerm::In(key.into(), values)
            });
        }
        Some(LabelTerm::Exists(term.into()))
    }

    fn matches(&self, labels: &Labels) -> bool {
        match self {
            LabelTerm::Exists(key) => labels.get(key).is_some(),
            LabelTerm::Absent(key) => labels.get(key).is_none(),
            LabelTerm::Equals(key, value) => labels.get(key) == Some(&**value),
            LabelTerm::Differs(key, value) => labels.get(key) != Some(&**value),
            LabelTerm::In(key, values) => labels
                .get(key)
                .is_some_and(|v| values.iter().any(|w| **w == *v)),
            LabelTerm::NotIn(key, values) => !labels
                .get(key)
                .is_some_and(|v| values.iter().any(|w| **w == *v)),
        }
    }
}

/// One term of a field selector.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FieldTerm {
    field: Field,
    value: Box<str>,
    negated: bool,
}

/// What one subscriber of a shared watch for a whole resource type sees.
#[derive(Debug)]
pub struct Filter {
    /// The watch the subscriber would have had of its own: what it asked
    /// for, and where it goes when the cluster refuses the wide watch.
    narrow: WatchKey,
    resource: ResourcePath,
    namespace: Option<Box<str>>,
    labels: Vec<LabelTerm>,
    fields: Vec<FieldTerm>,
}

/// The wider shared watches a request can be served from, widest first,
/// each with the subscriber's filter over it: the resource type's
/// cluster-wide watch, then (for a request with selectors in one
/// namespace) that namespace's whole collection. Empty when kubemux cannot
/// evaluate a term of the request's selectors, or nothing is wider.
pub(super) fn widen(key: &WatchKey, resource: &ResourcePath) -> Vec<(WatchKey, Arc<Filter>)> {
    let Some((labels, fields)) = terms(key, resource) else {
        return Vec::new();
    };
    let selects = !labels.is_empty() || !fields.is_empty();
    let namespace: Option<Box<str>> = resource.namespace.as_deref().map(Into::into);
    let filter = |namespace| {
        Arc::new(Filter {
            narrow: key.clone(),
            resource: resource.clone(),
            namespace,
            labels: labels.clone(),
            fields: fields.clone(),
        })
    };
    let wide = |path: &str| {
        WatchKey::collection(key.cluster(), path).with_identity(key.identity().map(Into::into))
    };
    let mut scopes = Vec::new();
    if namespace.is_some() || selects {
        scopes.push((
            wide(&cluster_wide_path(resource)),
            filter(namespace.clone()),
        ));
    }
    if namespace.is_some() && selects {
        scopes.push((wide(key.path()), filter(None)));
    }
    scopes
}

/// The terms of a request's selectors, if kubemux evaluates every one.
fn terms(key: &WatchKey, resource: &ResourcePath) -> Option<(Vec<LabelTerm>, Vec<FieldTerm>)> {
    let mut labels = Vec::new();
    let mut fields = Vec::new();
    let extra = extra_fields(resource);
    for (name, value) in form_urlencoded::parse(key.selectors().as_bytes()) {
        match name.as_ref() {
            "labelSelector" => {
                for term in selector::terms(&value)?
                    .into_iter()
                    .filter(|t| !t.is_empty())
                {
                    labels.push(LabelTerm::read(term)?);
                }
            }
            "fieldSelector" => {
                for term in value.split(',').filter(|t| !t.is_empty()) {
                    let (path, value, negated) = match term.split_once("!=") {
                        Some((path, value)) => (path, value, true),
                        None => {
                            let (path, value) = term.split_once('=')?;
                            (path, value, false)
                        }
                    };
                    let field = match path {
                        "metadata.name" => Field::Name,
                        "metadata.namespace" => Field::Namespace,
                        other => Field::Extra(extra.iter().position(|(name, _)| *name == other)?),
                    };
                    fields.push(FieldTerm {
                        field,
                        value: value.into(),
                        negated,
                    });
                }
            }
            _ => return None,
        }
    }
    Some((labels, fields))
}

/// The collection of every object of `resource`'s type, in all namespaces.
fn cluster_wide_path(resource: &ResourcePath) -> String {
    if resource.group.is_empty() {
        format!("/api/{}/{}", resource.version, resource.resource)
    } else {
        format!(
            "/apis/{}/{}/{}",
            resource.group, resource.version, resource.resource
        )
    }
}

impl Filter {
    /// The key of the watch the subscriber asked for.
    pub(super) fn narrow(&self) -> &WatchKey {
        &self.narrow
    }

    /// The resource it asked for.
    pub(super) fn resource(&self) -> &ResourcePath {
        &self.resource
    }

    /// Whether what it selects on can change over an object's life
    /// (labels, a pod's phase), so that seeing an object move into or out
    /// of the selection needs the object's previous state. A namespace or
    /// a name never changes: for such a filter every change, even one
    /// fetched without its previous object, is exact.
    pub(super) fn needs_prev(&self) -> bool {
        !self.labels.is_empty()
            || self
                .fields
                .iter()
                .any(|term| matches!(term.field, Field::Extra(_)))
    }

    /// Whether `event`'s object is one the subscriber sees.
    pub(super) fn passes(&self, event: &WatchEvent) -> bool {
        let (namespace, name) = match event.key().split_once('/') {
            Some((namespace, name)) => (namespace, name),
            None => ("", event.key()),
        };
        if self.namespace.as_deref().is_some_and(|ns| ns != namespace) {
            return false;
        }
        if self.labels.is_empty() && self.fields.is_empty() {
            return true;
        }
        let selectable = event.derived(|event| Selectable::read(event, &self.resource));
        self.labels
            .iter()
            .all(|term| term.matches(&selectable.labels))
            && self.fields.iter().all(|term| {
                let actual = match term.field {
                    Field::Name => name,
                    Field::Namespace => namespace,
                    Field::Extra(i) => selectable.fields.get(i).map_or("", |v| &**v),
                };
                (actual == &*term.value) != term.negated
            })
    }

    /// The event this subscriber gets for a change, if any: the cacher's
    /// selector transitions.
    pub(super) fn view<'c>(&self, change: &'c Change) -> Option<&'c Arc<WatchEvent>> {
        let event = &change.event;
        match event.kind() {
            EventType::Bookmark | EventType::Error => Some(event),
            EventType::Added | EventType::Deleted => self.passes(event).then_some(event),
            EventType::Modified => {
                let now = self.passes(event);
                let before = match change.prev.as_deref() {
                    Some(prev) => self.passes(prev),
                    None => now && !self.needs_prev(),
                };
                match (before, now) {
                    (true, true) => Some(event),
                    (false, true) => Some(change.as_added()),
                    (true, false) => change.as_deleted(),
                    (false, false) => None,
                }
            }
        }
    }
}

/// The labels of an object, sorted by key.
#[derive(Debug, Default)]
struct Labels(Vec<(Box<str>, Box<str>)>);

impl Labels {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }
}

/// What filters read of an object, parsed once per event and shared by
/// every subscriber (a [`WatchEvent::derived`] value).
#[derive(Debug, Default)]
struct Selectable {
    labels: Labels,
    /// The resource's extra fields, in its table's order; `""` when absent,
    /// as the API server reads an unset string field.
    fields: Vec<Box<str>>,
}

#[derive(Deserialize, Default)]
struct Probe<'a> {
    #[serde(borrow, default)]
    metadata: ProbeMeta<'a>,
    #[serde(borrow, default)]
    spec: Option<BTreeMap<Cow<'a, str>, serde_json::Value>>,
    #[serde(borrow, default)]
    status: Option<BTreeMap<Cow<'a, str>, serde_json::Value>>,
}

#[derive(Deserialize, Default)]
struct ProbeMeta<'a> {
    #[serde(borrow, default)]
    labels: Option<BTreeMap<Cow<'a, str>, Cow<'a, str>>>,
}

#[derive(Deserialize, Default)]
struct LabelsOnly<'a> {
    #[serde(borrow, default)]
    metadata: ProbeMeta<'a>,
}

impl Selectable {
    fn read(event: &WatchEvent, resource: &ResourcePath) -> Selectable {
        let extra = extra_fields(resource);
        let object = event.object();
        let (meta, spec, status) = if extra.is_empty() {
            let probe: LabelsOnly<'_> = serde_json::from_slice(object).unwrap_or_default();
            (probe.metadata, None, None)
        } else {
            let probe: Probe<'_> = serde_json::from_slice(object).unwrap_or_default();
            (probe.metadata, probe.spec, probe.status)
        };
        let text = |map: &Option<BTreeMap<Cow<'_, str>, serde_json::Value>>, key: &str| {
            map.as_ref()
                .and_then(|m| m.get(key))
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .into()
        };
        Selectable {
            labels: Labels(
                meta.labels
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
            fields: extra
                .iter()
                .map(|(_, place)| match place {
                    Place::Spec(key) => text(&spec, key),
                    Place::Status(key) => text(&status, key),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::key::normalize;

    /// The widest scope a request is served from, if any is wider.
    fn filter(path: &str, query: &str) -> Option<(WatchKey, Arc<Filter>)> {
        let (key, resource, _) = normalize("c", path, query).unwrap();
        widen(&key, &resource).into_iter().next()
    }

    fn pod(namespace: &str, labels: &str, phase: &str) -> WatchEvent {
        let obj = format!(
            r#"{{"kind":"Pod","apiVersion":"v1","metadata":{{"name":"p","namespace":"{namespace}","resourceVersion":"1","labels":{{{labels}}}}},"spec":{{"nodeName":"n1"}},"status":{{"phase":"{phase}"}}}}"#
        );
        WatchEvent::synthesize(EventType::Added, obj.as_bytes()).unwrap()
    }

    #[test]
    fn namespaces_and_evaluable_selectors_share_the_resource_watch() {
        let (wide, _) = filter("/api/v1/namespaces/a/pods", "").unwrap();
        assert_eq!(wide.path(), "/api/v1/pods");
        assert_eq!(wide.selectors(), "");
        let (wide, _) = filter(
            "/apis/apps/v1/deployments",
            "labelSelector=app%20in%20(x,y),!canary",
        )
        .unwrap();
        assert_eq!(wide.path(), "/apis/apps/v1/deployments");
        assert!(filter("/api/v1/pods", "").is_none(), "already the widest");
        assert!(
            filter("/api/v1/events", "fieldSelector=involvedObject.name%3Dx").is_none(),
            "a field kubemux does not evaluate keeps its own watch"
        );
        assert!(filter("/api/v1/pods", "fieldSelector=status.phase%3DRunning").is_some());
        let (key, resource, _) = normalize("c", "/api/v1/namespaces/a/pods", "").unwrap();
        let (wide, _) = widen(&key.with_identity(Some("h".into())), &resource)
            .into_iter()
            .next()
            .unwrap();
        assert_eq!(
            wide.identity(),
            Some("h"),
            "a caller's wide watch stays its own"
        );
    }

    #[test]
    fn selectors_in_a_namespace_are_served_from_the_cluster_then_from_the_namespace() {
        let (key, resource, _) =
            normalize("c", "/api/v1/namespaces/a/pods", "labelSelector=app%3Dweb").unwrap();
        let scopes: Vec<(String, String)> = widen(&key, &resource)
            .iter()
            .map(|(wide, _)| (wide.path().to_string(), wide.selectors().to_string()))
            .collect();
        assert_eq!(
            scopes,
            [
                ("/api/v1/pods".to_string(), String::new()),
                ("/api/v1/namespaces/a/pods".to_string(), String::new()),
            ]
        );
        let (_, in_namespace) = &widen(&key, &resource)[1];
        assert!(in_namespace.passes(&pod("a", r#""app":"web""#, "Running")));
        assert!(!in_namespace.passes(&pod("a", r#""app":"db""#, "Running")));
        let (key, resource, _) = normalize("c", "/api/v1/namespaces/a/pods", "").unwrap();
        assert_eq!(
            widen(&key, &resource).len(),
            1,
            "a whole namespace is its own narrower scope"
        );
    }

    #[test]
    fn filters_read_namespaces_labels_and_fields_as_the_api_server_does() {
        let running = pod("a", r#""app":"x","tier":"web""#, "Running");
        let pending = pod("b", r#""app":"y""#, "Pending");
        let sees = |path: &str, query: &str| {
            let (_, f) = filter(path, query).unwrap();
            (f.passes(&running), f.passes(&pending))
        };
        assert_eq!(sees("/api/v1/namespaces/a/pods", ""), (true, false));
        assert_eq!(sees("/api/v1/pods", "labelSelector=app%3Dx"), (true, false));
        assert_eq!(
            sees("/api/v1/pods", "labelSelector=app!%3Dx"),
            (false, true)
        );
        assert_eq!(sees("/api/v1/pods", "labelSelector=tier"), (true, false));
        assert_eq!(sees("/api/v1/pods", "labelSelector=!tier"), (false, true));
        assert_eq!(
            sees("/api/v1/pods", "labelSelector=app%20in%20(x,y)"),
            (true, true)
        );
        assert_eq!(
            sees("/api/v1/pods", "labelSelector=tier%20notin%20(web)"),
            (false, true)
        );
        assert_eq!(
            sees("/api/v1/pods", "fieldSelector=status.phase%3DRunning"),
            (true, false)
        );
        assert_eq!(
            sees("/api/v1/pods", "fieldSelector=metadata.namespace!%3Da"),
            (false, true)
        );
        assert_eq!(
            sees("/api/v1/pods", "fieldSelector=spec.schedulerName%3D"),
            (true, true),
            "an unset field reads as empty"
        );
    }

    #[test]
    fn a_relabelled_object_moves_in_as_added_and_out_as_deleted_at_its_version() {
        let (_, f) = filter("/api/v1/pods", "labelSelector=app%3Dx").unwrap();
        let change = |from: &str, to: &str| {
            let prev = Arc::new(pod("a", from, "Running"));
            let now = pod("a", to, "Running");
            let obj = String::from_utf8(now.object().to_vec())
                .unwrap()
                .replace(r#""resourceVersion":"1""#, r#""resourceVersion":"7""#);
            let event = WatchEvent::synthesize(EventType::Modified, obj.as_bytes()).unwrap();
            Change::new(Arc::new(event), Some(prev))
        };
        let into = change(r#""app":"y""#, r#""app":"x""#);
        let seen = f.view(&into).unwrap();
        assert_eq!(seen.kind(), EventType::Added);
        assert_eq!(seen.resource_version(), "7");
        let out = change(r#""app":"x""#, r#""app":"y""#);
        let seen = f.view(&out).unwrap();
        assert_eq!(seen.kind(), EventType::Deleted);
        assert_eq!(seen.resource_version(), "7");
        assert!(
            String::from_utf8_lossy(seen.object()).contains(r#""app":"x""#),
            "the previous object, as the cacher sends it"
        );
        assert_eq!(
            f.view(&change(r#""app":"x""#, r#""app":"x""#))
                .unwrap()
                .kind(),
            EventType::Modified
        );
        assert!(f.view(&change(r#""app":"y""#, r#""app":"z""#)).is_none());
    }
}
