//! One console subscription's view of its hub watches, and the events it
//! derives from them. Workspace = cluster (nodes and pods watches), project =
//! namespace (a single-namespace watch and its ResourceQuotas), monitoring =
//! node health (nodes watch) and the cluster's reachability.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::events::{self as derive, Alert};
use crate::cluster::Health;
use crate::hub::Subscription;
use crate::upstream::event::{EventType, WatchEvent};

/// The event families with a Kubernetes source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// A cluster.
    Workspace,
    /// A namespace.
    Project,
    /// A cluster's health and metrics.
    Monitoring,
}

impl Family {
    /// The seed's resource name.
    pub fn name(self) -> &'static str {
        match self {
            Family::Workspace => "workspace",
            Family::Project => "project",
            Family::Monitoring => "monitoring",
        }
    }

    /// Every event of the family, fully qualified.
    pub fn events(self) -> &'static [&'static str] {
        match self {
            Family::Workspace => &[
                "workspace.status_changed",
                "workspace.resource_updated",
                "workspace.alert_triggered",
            ],
            Family::Project => &[
                "project.created",
                "project.updated",
                "project.deleted",
                "project.resource_quota_exceeded",
            ],
            Family::Monitoring => &["monitoring.health_changed", "monitoring.metrics_update"],
        }
    }
}

/// Which hub watch an event came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stream {
    /// `/api/v1/nodes`.
    Nodes,
    /// `/api/v1/pods`.
    Pods,
    /// `/api/v1/namespaces?fieldSelector=metadata.name=<project>`.
    Namespace,
    /// `/api/v1/namespaces/<project>/resourcequotas`.
    Quotas,
}

impl Stream {
    /// The collection path and selector of the hub watch.
    pub fn path(self, project: Option<&str>) -> (String, String) {
        let ns = project.unwrap_or_default();
        match self {
            Stream::Nodes => ("/api/v1/nodes".into(), String::new()),
            Stream::Pods => ("/api/v1/pods".into(), String::new()),
            Stream::Namespace => (
                "/api/v1/namespaces".into(),
                format!("fieldSelector=metadata.name%3D{ns}"),
            ),
            Stream::Quotas => (
                format!("/api/v1/namespaces/{ns}/resourcequotas"),
                String::new(),
            ),
        }
    }

    /// The watches a family needs.
    pub fn of(family: Family) -> &'static [Stream] {
        match family {
            Family::Workspace => &[Stream::Nodes, Stream::Pods],
            Family::Project => &[Stream::Namespace, Stream::Quotas],
            Family::Monitoring => &[Stream::Nodes],
        }
    }
}

/// Least gap between two `workspace.resource_updated` events of one
/// subscription: pod churn should not become a stream of sums.
const RESOURCE_UPDATE_GAP: Duration = Duration::from_secs(1);

/// One subscription and what it has seen so far.
pub struct Sub {
    /// The `subscription_id` given to the client.
    pub id: String,
    /// Its family.
    pub family: Family,
    /// The cluster (workspace).
    pub cluster: String,
    /// The namespace, for a project.
    pub project: Option<String>,
    /// The events the client wants, fully qualified.
    pub events: BTreeSet<&'static str>,
    /// The hub subscriptions; dropped with this.
    pub hubs: Vec<Subscription>,
    /// A background task (metrics polling) ended with this subscription.
    pub task: Option<tokio_util::task::AbortOnDropHandle<()>>,
    /// Its registration with the re-check service; dropped with this.
    pub recheck: Option<crate::auth::recheck::RecheckHandle>,
    waiting: BTreeSet<Stream>,
    pods: HashMap<String, (f64, f64)>,
    nodes: HashMap<String, (String, bool, (f64, f64))>,
    conditions: HashMap<String, Vec<String>>,
    active: HashSet<String>,
    resources_dirty: bool,
    last_resources: Option<Value>,
    last_resources_at: Option<Instant>,
    status: Option<&'static str>,
    api_health: Option<&'static str>,
}

/// An event to send: its type and data.
pub type Event = (&'static str, Value);

impl Sub {
    /// A subscription waiting for the initial state of `streams`.
    pub fn new(
        id: String,
        family: Family,
        cluster: String,
        project: Option<String>,
        events: BTreeSet<&'static str>,
    ) -> Sub {
        Sub {
            id,
            family,
            cluster,
            project,
            events,
            hubs: Vec::new(),
            task: None,
            recheck: None,
            waiting: Stream::of(family).iter().copied().collect(),
            pods: HashMap::new(),
            nodes: HashMap::new(),
            conditions: HashMap::new(),
            active: HashSet::new(),
            resources_dirty: false,
            last_resources: None,
            last_resources_at: None,
            status: None,
            api_health: None,
        }
    }

    /// Whether every watch has delivered its initial state.
    pub fn synced(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Applies one hub event; returns the events it causes.
    pub fn apply(&mut self, stream: Stream, event: &WatchEvent, out: &mut Vec<Event>) {
        match event.kind() {
            EventType::Bookmark => {
                if !self.synced() && event.is_initial_events_end() {
                    self.waiting.remove(&stream);
                    if self.synced() {
                        self.resources_dirty = true;
                        self.status = Some(self.workspace_status(None));
                    }
                }
                return;
            }
            EventType::Error => return,
            _ => {}
        }
        let deleted = event.kind() == EventType::Deleted;
        let key = format!("{stream:?}/{}", event.key());
        // Parsed once per event for every console subscription it reaches.
        let parsed =
            event.derived(|e| ParsedObject(serde_json::from_slice::<Value>(e.object()).ok()));
        let Some(object) = parsed.0.as_ref() else {
            return;
        };
        match stream {
            Stream::Pods => {
                if deleted {
                    self.pods.remove(&key);
                } else {
                    self.pods.insert(key.clone(), derive::pod_requests(object));
                }
                self.resources_dirty = true;
                let alerts = if deleted {
                    Vec::new()
                } else {
                    derive::pod_alerts(object)
                };
                self.conditions_changed(&key, alerts, out);
            }
            Stream::Nodes => self.node_event(&key, object, deleted, out),
            Stream::Namespace => {
                if self.synced() {
                    let kind = match event.kind() {
                        EventType::Added => "project.created",
                        EventType::Deleted => "project.deleted",
                        _ => "project.updated",
                    };
                    out.push((kind, json!({"project": self.project_json(object)})));
                }
            }
            Stream::Quotas => {
                let full = if deleted {
                    Vec::new()
                } else {
                    derive::quota_exceeded(object)
                };
                let ids: Vec<String> = full.iter().map(|q| q.id.clone()).collect();
                let before = self.conditions.remove(&key).unwrap_or_default();
                for id in &before {
                    if !ids.contains(id) {
                        self.active.remove(id);
                    }
                }
                for q in full {
                    if self.active.insert(q.id.clone()) {
                        out.push((
                            "project.resource_quota_exceeded",
                            json!({
                                "project_id": self.project,
                                "workspace_id": self.cluster,
                                "namespace": self.project,
                                "quota": q.quota.name,
                                "resource": q.resource,
                                "limit": q.limit,
                                "current_usage": q.used,
                                "object": q.quota,
                            }),
                        ));
                    }
                }
                self.conditions.insert(key, ids);
            }
        }
    }

    fn node_event(&mut self, key: &str, node: &Value, deleted: bool, out: &mut Vec<Event>) {
        let name = node["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let ready = kubemux_vocab::object::node_is_ready(node);
        let before = if deleted {
            self.nodes.remove(key).map(|n| n.1)
        } else {
            self.nodes
                .insert(
                    key.to_string(),
                    (name.clone(), ready, derive::node_allocatable(node)),
                )
                .map(|n| n.1)
        };
        self.resources_dirty = true;
        match self.family {
            Family::Workspace => {
                let alerts = if deleted {
                    Vec::new()
                } else {
                    derive::node_alerts(node)
                };
                self.conditions_changed(key, alerts, out);
            }
            Family::Monitoring if self.synced() && !deleted && before != Some(ready) => {
                let health = |r: bool| if r { "healthy" } else { "unhealthy" };
                out.push((
                    "monitoring.health_changed",
                    json!({
                        "workspace_id": self.cluster,
                        "component": format!("node/{name}"),
                        "previous_status": before.map(health),
                        "new_status": health(ready),
                        "reason": if ready { "node is Ready" } else { "node is NotReady" },
                    }),
                ));
            }
            _ => {}
        }
    }

    /// Records an object's current alerts; raises the ones that are new.
    fn conditions_changed(&mut self, key: &str, alerts: Vec<Alert>, out: &mut Vec<Event>) {
        let ids: Vec<String> = alerts.iter().map(|a| a.id.clone()).collect();
        for id in self.conditions.remove(key).unwrap_or_default() {
            if !ids.contains(&id) {
                self.active.remove(&id);
            }
        }
        for alert in alerts {
            if self.active.insert(alert.id.clone()) {
                out.push((
                    "workspace.alert_triggered",
                    json!({"workspace_id": self.cluster, "alert": alert.to_json()}),
                ));
            }
        }
        if !ids.is_empty() {
            self.conditions.insert(key.to_string(), ids);
        }
    }

    fn project_json(&self, namespace: &Value) -> Value {
        let md = &namespace["metadata"];
        json!({
            "id": md["name"],
            "name": md["name"],
            "namespace": md["name"],
            "workspace_id": self.cluster,
            "uid": md["uid"],
            "status": namespace["status"]["phase"].as_str().unwrap_or("Active"),
            "labels": md["labels"],
            "created_at": md["creationTimestamp"],
            "resource_version": md["resourceVersion"],
        })
    }

    /// `active`, `degraded` (some node not Ready) or `unreachable`.
    fn workspace_status(&self, health: Option<&Health>) -> &'static str {
        if health.is_some_and(|h| h.reachable == Some(false)) {
            "unreachable"
        } else if self.nodes.values().any(|n| !n.1) {
            "degraded"
        } else {
            "active"
        }
    }

    /// Periodic work: status transitions and throttled resource sums.
    pub fn tick(&mut self, health: &Health, out: &mut Vec<Event>) {
        if !self.synced() {
            return;
        }
        match self.family {
            Family::Workspace => {
                let status = self.workspace_status(Some(health));
                if let Some(previous) = self.status.replace(status)
                    && previous != status
                {
                    out.push((
                        "workspace.status_changed",
                        json!({
                            "workspace_id": self.cluster,
                            "previous_status": previous,
                            "new_status": status,
                            "message": match status {
                                "unreachable" => health.last_error.clone().unwrap_or_else(|| "the API server is not answering".into()),
                                "degraded" => "some nodes are not Ready".into(),
                                _ => "the API server answers and every node is Ready".into(),
                            },
                        }),
                    ));
                }
                let due = self
                    .last_resources_at
                    .is_none_or(|at| at.elapsed() >= RESOURCE_UPDATE_GAP);
                if self.resources_dirty && due {
                    self.resources_dirty = false;
                    let requested = self
                        .pods
                        .values()
                        .fold((0.0, 0.0), |a, p| (a.0 + p.0, a.1 + p.1));
                    let allocatable = self
                        .nodes
                        .values()
                        .fold((0.0, 0.0), |a, n| (a.0 + n.2.0, a.1 + n.2.1));
                    let resources = derive::resources_json(requested, allocatable);
                    if self.last_resources.as_ref() != Some(&resources) {
                        self.last_resources_at = Some(Instant::now());
                        self.last_resources = Some(resources.clone());
                        out.push((
                            "workspace.resource_updated",
                            json!({"workspace_id": self.cluster, "resources": resources}),
                        ));
                    }
                }
            }
            Family::Monitoring => {
                let now = match health.reachable {
                    Some(false) => "unhealthy",
                    _ => "healthy",
                };
                if let Some(previous) = self.api_health.replace(now)
                    && previous != now
                {
                    out.push((
                        "monitoring.health_changed",
                        json!({
                            "workspace_id": self.cluster,
                            "component": "api_server",
                            "previous_status": previous,
                            "new_status": now,
                            "reason": health.last_error.clone().unwrap_or_else(|| "the API server answers".into()),
                        }),
                    ));
                }
            }
            Family::Project => {}
        }
    }
}

/// An event's object as JSON, shared by the console subscriptions it reaches.
struct ParsedObject(Option<Value>);

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventType, object: Value) -> WatchEvent {
        WatchEvent::synthesize(kind, object.to_string().as_bytes()).unwrap()
    }

    /// Applies one nodes event.
    fn nodes(sub: &mut Sub, kind: EventType, node: Value, out: &mut Vec<Event>) {
        sub.apply(Stream::Nodes, &event(kind, node), out);
    }

    fn synced(sub: &mut Sub) {
        for stream in Stream::of(sub.family) {
            let end = WatchEvent::bookmark("List", "v1", "1", true);
            sub.apply(*stream, &end, &mut Vec::new());
        }
        assert!(sub.synced());
    }

    fn sub(family: Family, project: Option<&str>) -> Sub {
        Sub::new(
            "s-1".into(),
            family,
            "c".into(),
            project.map(str::to_string),
            BTreeSet::new(),
        )
    }

    fn pod(name: &str, waiting: Option<&str>) -> Value {
        let state = match waiting {
            Some(reason) => json!({"waiting": {"reason": reason}}),
            None => json!({"running": {}}),
        };
        json!({"metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}"), "resourceVersion": "2"},
               "status": {"containerStatuses": [{"name": "app", "state": state}]}})
    }

    fn node(name: &str, ready: bool) -> Value {
        let status = if ready { "True" } else { "False" };
        json!({"metadata": {"name": name, "resourceVersion": "3"},
               "status": {"conditions": [{"type": "Ready", "status": status}],
                          "allocatable": {"cpu": "4", "memory": "8Gi"}}})
    }

    fn kinds(out: &[Event]) -> Vec<&'static str> {
        out.iter().map(|(kind, _)| *kind).collect()
    }

    #[test]
    fn a_workspace_alert_is_raised_once_per_transition() {
        let mut s = sub(Family::Workspace, None);
        synced(&mut s);
        let mut out = Vec::new();
        let crash = event(EventType::Modified, pod("p", Some("CrashLoopBackOff")));
        s.apply(Stream::Pods, &crash, &mut out);
        s.apply(Stream::Pods, &crash, &mut out);
        assert_eq!(kinds(&out), ["workspace.alert_triggered"]);
        let healed = event(EventType::Modified, pod("p", None));
        s.apply(Stream::Pods, &healed, &mut out);
        s.apply(Stream::Pods, &crash, &mut out);
        assert_eq!(
            kinds(&out),
            ["workspace.alert_triggered", "workspace.alert_triggered"],
            "raised again after it cleared"
        );
    }

    #[test]
    fn workspace_status_and_resources_follow_nodes_after_the_initial_state() {
        let mut s = sub(Family::Workspace, None);
        let mut out = Vec::new();
        nodes(&mut s, EventType::Added, node("n1", true), &mut out);
        s.tick(&Health::default(), &mut out);
        assert!(out.is_empty(), "nothing before the initial state: {out:?}");
        synced(&mut s);
        s.tick(&Health::default(), &mut out);
        assert_eq!(kinds(&out), ["workspace.resource_updated"]);
        out.clear();
        nodes(&mut s, EventType::Modified, node("n1", false), &mut out);
        assert_eq!(kinds(&out), ["workspace.alert_triggered"]);
        out.clear();
        s.tick(&Health::default(), &mut out);
        assert_eq!(out[0].0, "workspace.status_changed");
        assert_eq!(out[0].1["previous_status"], "active");
        assert_eq!(out[0].1["new_status"], "degraded");
    }

    #[test]
    fn monitoring_reports_node_and_api_server_health_changes_only() {
        let mut s = sub(Family::Monitoring, None);
        let mut out = Vec::new();
        nodes(&mut s, EventType::Added, node("n1", true), &mut out);
        synced(&mut s);
        nodes(&mut s, EventType::Modified, node("n1", true), &mut out);
        assert!(out.is_empty(), "no change, no event: {out:?}");
        nodes(&mut s, EventType::Modified, node("n1", false), &mut out);
        assert_eq!(out[0].1["component"], "node/n1");
        assert_eq!(out[0].1["new_status"], "unhealthy");
        out.clear();
        s.tick(&Health::default(), &mut out);
        let down = Health {
            reachable: Some(false),
            last_error: Some("connection refused".into()),
            ..Health::default()
        };
        s.tick(&down, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].1["component"], "api_server");
        assert_eq!(out[0].1["reason"], "connection refused");
    }

    #[test]
    fn project_events_start_after_the_initial_state() {
        let mut s = sub(Family::Project, Some("team"));
        let namespace = json!({"metadata": {"name": "team", "uid": "u", "resourceVersion": "4"},
                               "status": {"phase": "Active"}});
        let mut out = Vec::new();
        s.apply(
            Stream::Namespace,
            &event(EventType::Added, namespace.clone()),
            &mut out,
        );
        assert!(out.is_empty(), "the initial state is not news: {out:?}");
        synced(&mut s);
        s.apply(
            Stream::Namespace,
            &event(EventType::Modified, namespace.clone()),
            &mut out,
        );
        s.apply(
            Stream::Namespace,
            &event(EventType::Deleted, namespace),
            &mut out,
        );
        assert_eq!(kinds(&out), ["project.updated", "project.deleted"]);
        assert_eq!(out[0].1["project"]["id"], "team");
    }
}
