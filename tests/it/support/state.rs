//! Applying watch events: a client's view of a cluster's objects, to
//! compare with the simulator's store.

use std::collections::BTreeMap;

use serde_json::Value;

/// Objects by `namespace/name`, built by applying watch events.
#[derive(Default, Debug, Clone)]
pub struct Applied {
    pub objects: BTreeMap<String, Value>,
}

pub fn object_key(obj: &Value) -> String {
    let md = &obj["metadata"];
    match md["namespace"].as_str() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{}", md["name"].as_str().unwrap()),
        _ => md["name"].as_str().unwrap().to_string(),
    }
}

impl Applied {
    pub fn apply(&mut self, ev: &Value) {
        let obj = &ev["object"];
        match ev["type"].as_str().unwrap() {
            "ADDED" | "MODIFIED" => {
                self.objects.insert(object_key(obj), obj.clone());
            }
            "DELETED" => {
                self.objects.remove(&object_key(obj));
            }
            _ => {}
        }
    }

    /// `key -> resourceVersion`, for comparing with the server's state.
    pub fn versions(&self) -> BTreeMap<String, String> {
        self.objects
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                )
            })
            .collect()
    }
}

pub fn versions_of(objects: &[Value]) -> BTreeMap<String, String> {
    objects
        .iter()
        .map(|o| {
            (
                object_key(o),
                o["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect()
}

/// Whether `node` has the condition `Ready` = `True`.
pub fn node_ready(node: &Value) -> bool {
    node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// How many of `nodes` are [`node_ready`].
pub fn ready_nodes(nodes: &[Value]) -> usize {
    nodes.iter().filter(|n| node_ready(n)).count()
}
