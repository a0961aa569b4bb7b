//! `/version` and the legacy (non-aggregated) discovery documents, enough for
//! `kube`'s `Discovery` and for `kubectl`.

use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::resources::{ResourceDef, groups, in_group_version};

/// The verbs every served resource supports.
const VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// `GET /version`, shaped like a real v1.33 server's answer.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "emulationMajor": "1",
        "emulationMinor": "33",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "32",
        "gitVersion": "v1.33.0-kubemux-sim",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

/// `GET /api`: the core group's versions.
pub fn api_versions(addr: SocketAddr) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr.to_string()}]
    })
}

fn group_json(name: &str, versions: &[&str]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    let preferred = versions.first().cloned().unwrap_or(Value::Null);
    json!({"name": name, "versions": versions, "preferredVersion": preferred})
}

/// `GET /apis`: every non-core group.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = groups()
        .iter()
        .map(|(name, versions)| group_json(name, versions))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/{group}`.
pub fn api_group(group: &str) -> Result<Value, ApiError> {
    let all = groups();
    let (name, versions) = all
        .iter()
        .find(|(name, _)| *name == group)
        .ok_or_else(ApiError::unknown_resource)?;
    let mut doc = group_json(name, versions);
    if let Some(map) = doc.as_object_mut() {
        map.insert("kind".into(), "APIGroup".into());
        map.insert("apiVersion".into(), "v1".into());
    }
    Ok(doc)
}

fn resource_json(def: &ResourceDef) -> Value {
    json!({
        "name": def.plural,
        "singularName": def.kind.to_lowercase(),
        "namespaced": def.namespaced,
        "kind": def.kind,
        "verbs": if def.create_only { &["create"][..] } else { VERBS },
    })
}

/// `GET /api/v1` or `GET /apis/{group}/{version}`.
pub fn api_resource_list(group: &str, version: &str) -> Result<Value, ApiError> {
    let resources: Vec<Value> = in_group_version(group, version)
        .map(resource_json)
        .collect();
    if resources.is_empty() {
        return Err(ApiError::unknown_resource());
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Ok(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}
