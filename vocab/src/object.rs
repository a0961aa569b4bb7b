//! Facts read off Kubernetes objects, read the same way everywhere.

use serde_json::Value;

/// The annotation on the bookmark that ends a watch's initial events
/// (`sendInitialEvents=true`, Kubernetes' "watch list").
pub const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// Whether `object` (a bookmark's) carries [`INITIAL_EVENTS_END`].
pub fn is_initial_events_end(object: &Value) -> bool {
    object["metadata"]["annotations"][INITIAL_EVENTS_END] == "true"
}

/// The status (`True`, `False`, `Unknown`) of a Node's `Ready` condition,
/// given its conditions as `(type, status)`, if it reports one.
pub fn node_ready_status<'a>(
    conditions: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Option<&'a str> {
    conditions
        .into_iter()
        .find(|(kind, _)| *kind == "Ready")
        .map(|(_, status)| status)
}

/// Whether a Node object's `Ready` condition is `True` (a node that reports
/// none, or an object that is not a node, counts as not ready).
pub fn node_is_ready(node: &Value) -> bool {
    let conditions = node["status"]["conditions"].as_array();
    let pairs = conditions
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c["type"].as_str()?, c["status"].as_str()?)));
    node_ready_status(pairs) == Some("True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn readiness_is_the_ready_condition() {
        let node = |conditions| json!({"status": {"conditions": conditions}});
        assert!(node_is_ready(&node(json!([
            {"type": "MemoryPressure", "status": "False"},
            {"type": "Ready", "status": "True"}
        ]))));
        assert!(!node_is_ready(&node(
            json!([{"type": "Ready", "status": "Unknown"}])
        )));
        assert!(!node_is_ready(&json!({"metadata": {}})));
        assert_eq!(node_ready_status([("Ready", "False")]), Some("False"));
        assert_eq!(node_ready_status([("DiskPressure", "False")]), None);
    }

    #[test]
    fn the_initial_events_end_bookmark() {
        assert!(is_initial_events_end(
            &json!({"metadata": {"annotations": {INITIAL_EVENTS_END: "true"}}})
        ));
        assert!(!is_initial_events_end(
            &json!({"metadata": {"resourceVersion": "5"}})
        ));
    }
}
