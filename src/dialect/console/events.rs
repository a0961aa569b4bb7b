//! What the console dialect (seed 003) derives from Kubernetes objects:
//! alerts from pod and node status, requested-vs-allocatable sums, quotas at
//! their limit, and the level of a log line. Pure functions over the raw
//! JSON, so every rule is testable without a cluster.

use kubemux_vocab::object::node_is_ready;
use kubemux_vocab::quantity;
use serde::Serialize;
use serde_json::{Value, json};

/// The object an alert or event is about.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct ObjectRef {
    /// `Pod`, `Node`, `ResourceQuota`.
    pub kind: &'static str,
    /// Namespace, for namespaced objects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

impl ObjectRef {
    fn of(kind: &'static str, object: &Value) -> ObjectRef {
        let md = &object["metadata"];
        ObjectRef {
            kind,
            namespace: md["namespace"].as_str().map(str::to_string),
            name: md["name"].as_str().unwrap_or_default().to_string(),
            uid: md["uid"].as_str().unwrap_or_default().to_string(),
        }
    }

    /// `pod/ns/name` or `node/name`, as the seed's `resource` field.
    pub fn resource(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{ns}/{}", self.kind.to_lowercase(), self.name),
            None => format!("{}/{}", self.kind.to_lowercase(), self.name),
        }
    }
}

/// A bad state of one object, identified so that it is reported once per
/// transition into it.
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    /// Stable while the state lasts: object uid, container and reason (and,
    /// for OOM kills, which termination).
    pub id: String,
    /// `crash_loop_back_off`, `oom_killed`, `image_pull_failure`, `node_not_ready`.
    pub kind: &'static str,
    /// `critical` or `warning`.
    pub severity: &'static str,
    /// Short title.
    pub title: String,
    /// What happened, with the Kubernetes reason and message.
    pub description: String,
    /// The object that caused it.
    pub object: ObjectRef,
    /// The container, for pod alerts.
    pub container: Option<String>,
}

impl Alert {
    /// The seed's `alert` object, plus the object reference.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "type": self.kind,
            "severity": self.severity,
            "title": self.title,
            "description": self.description,
            "resource": self.object.resource(),
            "object": self.object,
            "container": self.container,
        })
    }
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// Alerts raised by a pod's container statuses: waiting in CrashLoopBackOff
/// or on an image pull, or last terminated by the OOM killer.
pub fn pod_alerts(pod: &Value) -> Vec<Alert> {
    let object = ObjectRef::of("Pod", pod);
    let mut out = Vec::new();
    for list in ["initContainerStatuses", "containerStatuses"] {
        let Some(statuses) = pod["status"][list].as_array() else {
            continue;
        };
        for s in statuses {
            let container = text(&s["name"]).to_string();
            let waiting = &s["state"]["waiting"];
            let reason = text(&waiting["reason"]);
            let message = text(&waiting["message"]);
            let found = match reason {
                "CrashLoopBackOff" => {
                    Some(("crash_loop_back_off", "critical", "Container crash looping"))
                }
                "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" => {
                    Some(("image_pull_failure", "warning", "Image pull failing"))
                }
                _ => None,
            };
            if let Some((kind, severity, title)) = found {
                out.push(Alert {
                    id: format!("{}/{container}/{kind}", object.uid),
                    kind,
                    severity,
                    title: title.to_string(),
                    description: format!(
                        "container {container:?} of pod {}: {reason}{}",
                        object.name,
                        if message.is_empty() {
                            String::new()
                        } else {
                            format!(": {message}")
                        }
                    ),
                    object: object.clone(),
                    container: Some(container.clone()),
                });
            }
            for state in [&s["state"]["terminated"], &s["lastState"]["terminated"]] {
                if text(&state["reason"]) == "OOMKilled" {
                    let when = state["finishedAt"]
                        .as_str()
                        .or(state["containerID"].as_str())
                        .unwrap_or_default();
                    out.push(Alert {
                        id: format!("{}/{container}/oom_killed/{when}", object.uid),
                        kind: "oom_killed",
                        severity: "critical",
                        title: "Container killed: out of memory".into(),
                        description: format!(
                            "container {container:?} of pod {} was OOMKilled",
                            object.name
                        ),
                        object: object.clone(),
                        container: Some(container.clone()),
                    });
                    break;
                }
            }
        }
    }
    out
}

/// The alert of a node whose Ready condition is not True.
pub fn node_alerts(node: &Value) -> Vec<Alert> {
    if node_is_ready(node) {
        return Vec::new();
    }
    let object = ObjectRef::of("Node", node);
    let condition = node["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"));
    let reason = condition.map_or("no Ready condition", |c| text(&c["reason"]));
    vec![Alert {
        id: format!("{}/node_not_ready", object.uid),
        kind: "node_not_ready",
        severity: "critical",
        title: "Node not ready".into(),
        description: format!("node {} is NotReady: {reason}", object.name),
        object,
        container: None,
    }]
}

/// CPU (cores) and memory (bytes) a pod requests, summed over its
/// containers; zero for pods that have finished.
pub fn pod_requests(pod: &Value) -> (f64, f64) {
    if matches!(text(&pod["status"]["phase"]), "Succeeded" | "Failed") {
        return (0.0, 0.0);
    }
    let mut sum = (0.0, 0.0);
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        let requests = &c["resources"]["requests"];
        sum.0 += requests["cpu"].as_str().and_then(quantity).unwrap_or(0.0);
        sum.1 += requests["memory"]
            .as_str()
            .and_then(quantity)
            .unwrap_or(0.0);
    }
    sum
}

/// CPU (cores) and memory (bytes) a node can allocate.
pub fn node_allocatable(node: &Value) -> (f64, f64) {
    let a = &node["status"]["allocatable"];
    (
        a["cpu"].as_str().and_then(quantity).unwrap_or(0.0),
        a["memory"].as_str().and_then(quantity).unwrap_or(0.0),
    )
}

fn percent(used: f64, limit: f64) -> f64 {
    if limit > 0.0 {
        (used / limit * 1000.0).round() / 10.0
    } else {
        0.0
    }
}

/// The seed's `resources` object: requested vs allocatable CPU (cores) and
/// memory (MiB), with percentages.
pub fn resources_json(requested: (f64, f64), allocatable: (f64, f64)) -> Value {
    let mib = 1048576.0;
    let round = |v: f64, digits: i32| {
        let f = 10f64.powi(digits);
        (v * f).round() / f
    };
    json!({
        "cpu": {
            "used": format!("{}", round(requested.0, 3)),
            "limit": format!("{}", round(allocatable.0, 3)),
            "unit": "cores",
            "percentage": percent(requested.0, allocatable.0),
        },
        "memory": {
            "used": format!("{}", round(requested.1 / mib, 0)),
            "limit": format!("{}", round(allocatable.1 / mib, 0)),
            "unit": "Mi",
            "percentage": percent(requested.1, allocatable.1),
        },
        "basis": "requests",
    })
}

/// One resource of a ResourceQuota whose use has reached its hard limit.
#[derive(Clone, Debug, PartialEq)]
pub struct QuotaExceeded {
    /// Stable while the quota stays full: quota uid and resource.
    pub id: String,
    /// The quota.
    pub quota: ObjectRef,
    /// The resource (`pods`, `requests.memory`).
    pub resource: String,
    /// `status.hard` for it.
    pub limit: String,
    /// `status.used` for it.
    pub used: String,
}

/// Every resource of a quota with `used >= hard`.
pub fn quota_exceeded(quota: &Value) -> Vec<QuotaExceeded> {
    let object = ObjectRef::of("ResourceQuota", quota);
    let hard = quota["status"]["hard"].as_object();
    let used = &quota["status"]["used"];
    let mut out = Vec::new();
    for (resource, limit) in hard.into_iter().flatten() {
        let (Some(limit), Some(current)) = (limit.as_str(), used[resource].as_str()) else {
            continue;
        };
        if let (Some(l), Some(u)) = (quantity(limit), quantity(current))
            && u >= l
        {
            out.push(QuotaExceeded {
                id: format!("{}/{resource}", object.uid),
                quota: object.clone(),
                resource: resource.clone(),
                limit: limit.to_string(),
                used: current.to_string(),
            });
        }
    }
    out
}

/// The level of a log line: a `level`/`severity`/`lvl` field of a JSON
/// line, else a common prefix among the first words (`ERROR`, `[warn]`,
/// `level=debug`, klog's `E0102`), else `info`.
pub fn log_level(line: &str) -> &'static str {
    let trimmed = line.trim_start();
    if trimmed.starts_with('{')
        && let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(trimmed)
    {
        for key in ["level", "severity", "lvl", "loglevel"] {
            if let Some(level) = fields.get(key).and_then(Value::as_str).and_then(level_word) {
                return level;
            }
        }
        return "info";
    }
    for word in trimmed.split_whitespace().take(4) {
        let word = word.strip_prefix("level=").unwrap_or(word);
        let word = word.trim_matches(|c: char| "[]():|\"'".contains(c));
        if let Some(level) = level_word(word) {
            return level;
        }
        if let Some(level) = klog_level(word) {
            return level;
        }
    }
    "info"
}

fn level_word(word: &str) -> Option<&'static str> {
    Some(match word.to_ascii_lowercase().as_str() {
        "error" | "err" | "fatal" | "panic" | "critical" | "crit" | "emerg" | "alert" => "error",
        "warn" | "warning" => "warn",
        "info" | "notice" => "info",
        "debug" | "dbg" => "debug",
        "trace" => "trace",
        _ => return None,
    })
}

/// klog's header: a severity letter and `MMDD`, e.g. `E0102`.
fn klog_level(word: &str) -> Option<&'static str> {
    let mut chars = word.chars();
    let first = chars.next()?;
    let rest: String = chars.collect();
    if rest.len() != 4 || !rest.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(match first {
        'E' | 'F' => "error",
        'W' => "warn",
        'I' => "info",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_alerts_name_the_pod_and_container() {
        let pod = json!({"metadata": {"name": "p", "namespace": "d", "uid": "u1"},
        "status": {"containerStatuses": [
            {"name": "a", "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}}},
            {"name": "b", "state": {"waiting": {"reason": "ImagePullBackOff"}}},
            {"name": "c", "state": {"running": {}}, "lastState": {"terminated": {"reason": "OOMKilled", "finishedAt": "t1"}}}
        ]}});
        let alerts = pod_alerts(&pod);
        let kinds: Vec<_> = alerts.iter().map(|a| a.kind).collect();
        assert_eq!(
            kinds,
            ["crash_loop_back_off", "image_pull_failure", "oom_killed"]
        );
        assert_eq!(alerts[0].object.resource(), "pod/d/p");
        assert_eq!(alerts[0].id, "u1/a/crash_loop_back_off");
        assert_eq!(alerts[2].id, "u1/c/oom_killed/t1");
        let healthy = json!({"metadata": {"name": "p"}, "status": {"containerStatuses": [{"name": "a", "state": {"running": {}}}]}});
        assert!(pod_alerts(&healthy).is_empty());
    }

    #[test]
    fn nodes_requests_and_quotas() {
        let node = json!({"metadata": {"name": "n", "uid": "n1"}, "status": {
            "allocatable": {"cpu": "4", "memory": "8Gi"},
            "conditions": [{"type": "Ready", "status": "False", "reason": "KubeletDown"}]}});
        assert_eq!(node_alerts(&node)[0].kind, "node_not_ready");
        assert_eq!(node_allocatable(&node), (4.0, 8.0 * 1073741824.0));
        let pod = json!({"spec": {"containers": [
            {"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
            {"resources": {"requests": {"cpu": "1500m"}}}]}, "status": {"phase": "Running"}});
        assert_eq!(pod_requests(&pod), (2.0, 1073741824.0));
        let r = resources_json(pod_requests(&pod), node_allocatable(&node));
        assert_eq!(r["cpu"]["percentage"], 50.0);
        assert_eq!(r["memory"]["used"], "1024");
        let quota = json!({"metadata": {"name": "q", "namespace": "d", "uid": "q1"}, "status": {
            "hard": {"pods": "2", "requests.memory": "1Gi"}, "used": {"pods": "2", "requests.memory": "512Mi"}}});
        let full = quota_exceeded(&quota);
        assert_eq!(full.len(), 1);
        assert_eq!(
            (full[0].resource.as_str(), full[0].id.as_str()),
            ("pods", "q1/pods")
        );
    }

    #[test]
    fn log_levels() {
        assert_eq!(log_level(r#"{"level":"ERROR","msg":"x"}"#), "error");
        assert_eq!(log_level(r#"{"severity":"warning"}"#), "warn");
        assert_eq!(log_level("2026-01-01T00:00:00Z WARN something"), "warn");
        assert_eq!(log_level("[debug] x"), "debug");
        assert_eq!(log_level("level=error msg=x"), "error");
        assert_eq!(log_level("E0102 12:00:00.000 1 main.go:1] failed"), "error");
        assert_eq!(log_level("just a line"), "info");
    }
}
