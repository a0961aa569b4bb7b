//! Seed 001's projections of Kubernetes objects: the few fields a cluster
//! dashboard shows, computed as `kubectl` would (a node's status from its
//! Ready condition, a pod's status from its containers' states).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Meta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    creation_timestamp: Option<String>,
    #[serde(default)]
    deletion_timestamp: Option<String>,
}

#[derive(Deserialize, Default)]
struct Object {
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    spec: Value,
    #[serde(default)]
    status: Value,
}

/// A node as the dashboard shows it.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    pub name: String,
    pub uid: String,
    /// `Ready`, `NotReady` or `Unknown`, from the Ready condition.
    pub status: String,
    /// From the `node-role.kubernetes.io/<role>` labels; `worker` without one.
    pub role: String,
    pub capacity: Capacity,
    pub conditions: Vec<ConditionView>,
    pub labels: BTreeMap<String, String>,
    pub creation_timestamp: Option<String>,
}

/// Node capacity.
#[derive(Serialize, Clone, Debug, PartialEq, Default)]
pub struct Capacity {
    pub cpu: String,
    pub memory: String,
    pub pods: String,
}

/// A node condition.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct ConditionView {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// A pod as the dashboard shows it.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodView {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub node_name: Option<String>,
    pub phase: String,
    /// What `kubectl get pods` prints in STATUS.
    pub status: String,
    pub containers: Vec<ContainerView>,
    pub labels: BTreeMap<String, String>,
    pub creation_timestamp: Option<String>,
}

/// A container of a pod.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub ready: bool,
}

/// A namespace as the dashboard shows it.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceView {
    pub name: String,
    pub uid: String,
    pub status: String,
    /// Pods of the namespace; `None` (`null`) when its pods are not
    /// watched (the caller may not), so no count is claimed.
    pub pod_count: Option<usize>,
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// Projects a Node object.
pub fn node(raw: &[u8]) -> Option<NodeView> {
    let o: Object = serde_json::from_slice(raw).ok()?;
    let conditions: Vec<ConditionView> = o.status["conditions"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| ConditionView {
                    kind: text(&c["type"]),
                    status: text(&c["status"]),
                    reason: text(&c["reason"]),
                    message: text(&c["message"]),
                })
                .collect()
        })
        .unwrap_or_default();
    let pairs = conditions
        .iter()
        .map(|c| (c.kind.as_str(), c.status.as_str()));
    let status = match kubemux_vocab::object::node_ready_status(pairs) {
        Some("True") => "Ready",
        Some("False") => "NotReady",
        _ => "Unknown",
    };
    let mut roles: Vec<&str> = o
        .metadata
        .labels
        .keys()
        .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
        .filter(|r| !r.is_empty())
        .collect();
    roles.sort_unstable();
    let cap = &o.status["capacity"];
    Some(NodeView {
        name: o.metadata.name,
        uid: o.metadata.uid,
        status: status.to_string(),
        role: if roles.is_empty() {
            "worker".to_string()
        } else {
            roles.join(",")
        },
        capacity: Capacity {
            cpu: text(&cap["cpu"]),
            memory: text(&cap["memory"]),
            pods: text(&cap["pods"]),
        },
        conditions,
        labels: o.metadata.labels,
        creation_timestamp: o.metadata.creation_timestamp,
    })
}

/// Projects a Pod object.
pub fn pod(raw: &[u8]) -> Option<PodView> {
    let o: Object = serde_json::from_slice(raw).ok()?;
    let phase = o.status["phase"].as_str().unwrap_or("Pending").to_string();
    let statuses = o.status["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ready_of = |name: &str| {
        statuses
            .iter()
            .find(|s| s["name"] == name)
            .and_then(|s| s["ready"].as_bool())
            .unwrap_or(false)
    };
    let containers = o.spec["containers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    let name = text(&c["name"]);
                    ContainerView {
                        ready: ready_of(&name),
                        image: text(&c["image"]),
                        name,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    Some(PodView {
        status: kubectl_status(&o, &phase, &statuses),
        name: o.metadata.name,
        uid: o.metadata.uid,
        namespace: o.metadata.namespace.unwrap_or_default(),
        node_name: o.spec["nodeName"].as_str().map(str::to_string),
        phase,
        containers,
        labels: o.metadata.labels,
        creation_timestamp: o.metadata.creation_timestamp,
    })
}

/// STATUS as `kubectl get pods` derives it: Terminating, then the pod's
/// reason, then the first waiting or failing container's reason, then phase.
fn kubectl_status(o: &Object, phase: &str, statuses: &[Value]) -> String {
    if o.metadata.deletion_timestamp.is_some() {
        return "Terminating".into();
    }
    if let Some(reason) = o.status["reason"].as_str().filter(|r| !r.is_empty()) {
        return reason.to_string();
    }
    for s in statuses {
        if let Some(reason) = s["state"]["waiting"]["reason"]
            .as_str()
            .filter(|r| !r.is_empty())
        {
            return reason.to_string();
        }
        if let Some(reason) = s["state"]["terminated"]["reason"]
            .as_str()
            .filter(|r| !r.is_empty())
            && phase != "Succeeded"
        {
            return reason.to_string();
        }
    }
    phase.to_string()
}

/// Projects a Namespace object (its pod count is filled in by the caller).
pub fn namespace(raw: &[u8]) -> Option<NamespaceView> {
    let o: Object = serde_json::from_slice(raw).ok()?;
    Some(NamespaceView {
        name: o.metadata.name,
        uid: o.metadata.uid,
        status: o.status["phase"].as_str().unwrap_or("Active").to_string(),
        pod_count: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_status_and_role() {
        let raw = br#"{"metadata":{"name":"n1","uid":"u","labels":{"node-role.kubernetes.io/control-plane":""}},
            "status":{"capacity":{"cpu":"4","memory":"8Gi","pods":"110"},"conditions":[{"type":"Ready","status":"False","reason":"KubeletDown","message":"m"}]}}"#;
        let n = node(raw).unwrap();
        assert_eq!(n.status, "NotReady");
        assert_eq!(n.role, "control-plane");
        assert_eq!(n.capacity.memory, "8Gi");
        let n = node(br#"{"metadata":{"name":"n2"},"status":{}}"#).unwrap();
        assert_eq!((n.status.as_str(), n.role.as_str()), ("Unknown", "worker"));
    }

    #[test]
    fn pod_status_like_kubectl() {
        let raw = br#"{"metadata":{"name":"p","namespace":"d","uid":"u"},
            "spec":{"nodeName":"n1","containers":[{"name":"c","image":"nginx"}]},
            "status":{"phase":"Running","containerStatuses":[{"name":"c","ready":false,"state":{"waiting":{"reason":"CrashLoopBackOff"}}}]}}"#;
        let p = pod(raw).unwrap();
        assert_eq!(p.status, "CrashLoopBackOff");
        assert_eq!(p.phase, "Running");
        assert_eq!(p.containers[0].image, "nginx");
        assert!(!p.containers[0].ready);
        let raw = br#"{"metadata":{"name":"p","deletionTimestamp":"2026-01-01T00:00:00Z"},"status":{"phase":"Running"}}"#;
        assert_eq!(pod(raw).unwrap().status, "Terminating");
        let raw = br#"{"metadata":{"name":"p"},"status":{"phase":"Succeeded","containerStatuses":[{"name":"c","state":{"terminated":{"reason":"Completed"}}}]}}"#;
        assert_eq!(pod(raw).unwrap().status, "Succeeded");
    }
}
