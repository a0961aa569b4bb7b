//! Pods as a real cluster stores them (the `realistic` object profile): a
//! Deployment's pod after kube-controller-manager created it, admission
//! added the service-account volume and tolerations, and kubelet reported
//! its status, with both writers' `managedFields`. 5.5–8 KiB of JSON when
//! created (about 40 % of it `managedFields`), what `kubectl get pod -o
//! json` shows for a pod with one to three containers; the per-frame cost
//! of a watch proxy grows with that size, so benchmarks need it.
//!
//! Churn changes these pods only as kubelet does: status updates (a
//! readiness probe failing or passing, a container restarting) that move
//! condition timestamps, container states and kubelet's `managedFields`
//! time.

use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Map, Value, json};

use crate::population::{SUFFIX_ALPHABET, random_suffix};
use crate::templates::{App, readiness_conditions};
use crate::time::now_rfc3339;

/// The manager that creates a Deployment's pods.
const CONTROLLER_MANAGER: &str = "kube-controller-manager";
/// The manager that writes a pod's status.
const KUBELET: &str = "kubelet";
/// Where the service-account token is mounted in every container.
const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// A container added next to an app's own.
struct Sidecar {
    name: &'static str,
    image: &'static str,
    cpu: &'static str,
    memory: &'static str,
    /// Name and number of its metrics port, if it has one.
    port: Option<(&'static str, u16)>,
}

/// Sidecars a pod may carry (the first n, n drawn per pod), so pods have
/// one to three containers.
const SIDECARS: &[Sidecar] = &[
    Sidecar {
        name: "envoy",
        image: "envoyproxy/envoy:v1.32.3",
        cpu: "100m",
        memory: "128Mi",
        port: Some(("http-envoy-prom", 15090)),
    },
    Sidecar {
        name: "log-shipper",
        image: "fluent/fluent-bit:3.2.4",
        cpu: "50m",
        memory: "64Mi",
        port: None,
    },
];

/// A new Running pod of `app` on `node` (Pending and unscheduled without
/// one). `name` ends in the generated suffix, so everything before it is
/// the `generateName`; `pod_index` makes the pod IP unique.
pub fn pod(
    rng: &mut StdRng,
    name: &str,
    namespace: &str,
    app: &App,
    node: Option<&str>,
    pod_index: usize,
) -> Value {
    let template_hash = stable_suffix(&format!("{namespace}/{}", app.name), 10);
    let replica_set = format!("{}-{template_hash}", app.name);
    let generate_name = name
        .rfind('-')
        .map_or_else(|| format!("{replica_set}-"), |i| name[..=i].to_string());
    let now = now_rfc3339();
    let shape = shape(app);
    let sidecars = &SIDECARS[..rng.random_range(0..=shape.max_sidecars.min(SIDECARS.len()))];
    let mut containers = vec![app_container(app, &shape)];
    containers.extend(sidecars.iter().map(sidecar_container));
    let metadata = json!({
        "generateName": generate_name,
        "labels": {
            "app": app.name,
            "app.kubernetes.io/name": app.name,
            "app.kubernetes.io/version": image_tag(app.image),
            "pod-template-hash": template_hash,
        },
        "annotations": {
            "prometheus.io/port": "8080",
            "prometheus.io/scrape": "true",
        },
        "ownerReferences": [{
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": replica_set,
            "uid": stable_uuid(&format!("{namespace}/{replica_set}")),
            "controller": true,
            "blockOwnerDeletion": true,
        }],
    });
    let mut spec = json!({
        "containers": containers,
        "dnsPolicy": "ClusterFirst",
        "enableServiceLinks": true,
        "restartPolicy": "Always",
        "schedulerName": "default-scheduler",
        "securityContext": {},
        "terminationGracePeriodSeconds": 30,
    });
    if shape.config {
        spec["volumes"] = json!([{"name": "config", "configMap": {"name": format!("{}-config", app.name), "defaultMode": 420}}]);
    }
    // What the controller wrote is its managed set; admission's additions
    // below are nobody's, as on a real server.
    let controller_fields = fields_v1(&json!({"metadata": metadata, "spec": spec}));
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": spec,
    });
    admit(rng, &mut pod);
    pod["metadata"]["name"] = json!(name);
    pod["metadata"]["namespace"] = json!(namespace);
    pod["metadata"]["managedFields"] = json!([managed_fields_entry(
        CONTROLLER_MANAGER,
        &now,
        None,
        controller_fields
    )]);
    match node {
        Some(node) => {
            pod["spec"]["nodeName"] = json!(node);
            pod["status"] = running_status(rng, &pod, node, pod_index, &now);
            record_kubelet_fields(&mut pod, &now);
        }
        None => {
            pod["status"] = json!({
                "phase": "Pending",
                "qosClass": "Burstable",
                "conditions": [{
                    "type": "PodScheduled", "status": "False", "lastProbeTime": null,
                    "lastTransitionTime": now, "reason": "Unschedulable",
                    "message": "0/0 nodes are available: no nodes available to schedule pods.",
                }],
            });
        }
    }
    pod
}

/// What an app's own container declares beyond image and resources, so
/// that pods differ as a real cluster's do.
struct Shape {
    /// A named `http` port (8080), which the probes use.
    port: bool,
    liveness: bool,
    readiness: bool,
    /// Downward-API and plain environment variables.
    env: bool,
    /// A ConfigMap volume mounted at `/etc/<app>`.
    config: bool,
    /// At most this many of [`SIDECARS`]: the apps whose own container is
    /// lean carry more, which keeps every pod within 8 KiB.
    max_sidecars: usize,
}

fn shape(app: &App) -> Shape {
    let (port, liveness, readiness, env, config, max_sidecars) = match app.name {
        "web" => (true, true, true, false, true, 1),
        "api" => (true, true, true, true, false, 1),
        "worker" => (false, false, false, true, false, 2),
        "cache" => (true, true, false, false, false, 2),
        _ => (true, true, true, false, true, 0),
    };
    Shape {
        port,
        liveness,
        readiness,
        env,
        config,
        max_sidecars,
    }
}

/// The app's own container in the pod template, as its [`Shape`] says.
fn app_container(app: &App, shape: &Shape) -> Value {
    let probe = |path: &str, period: u64| {
        json!({
            "httpGet": {"path": path, "port": "http", "scheme": "HTTP"},
            "initialDelaySeconds": 5, "periodSeconds": period, "timeoutSeconds": 1,
            "successThreshold": 1, "failureThreshold": 3,
        })
    };
    let field_ref = |var: &str, path: &str| json!({"name": var, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}});
    let mut container = json!({
        "name": app.name,
        "image": app.image,
        "imagePullPolicy": "IfNotPresent",
        "resources": {
            "requests": {"cpu": app.cpu, "memory": app.memory},
            "limits": {"memory": app.memory},
        },
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    });
    if shape.port {
        container["ports"] = json!([{"name": "http", "containerPort": 8080, "protocol": "TCP"}]);
    }
    if shape.liveness {
        container["livenessProbe"] = probe("/healthz", 10);
    }
    if shape.readiness {
        container["readinessProbe"] = probe("/readyz", 5);
    }
    if shape.env {
        container["env"] = json!([
            field_ref("POD_NAME", "metadata.name"),
            field_ref("POD_NAMESPACE", "metadata.namespace"),
            {"name": "LOG_LEVEL", "value": "info"},
        ]);
    }
    if shape.config {
        container["volumeMounts"] = json!([{"name": "config", "mountPath": format!("/etc/{}", app.name), "readOnly": true}]);
    }
    container
}

/// A sidecar container in the pod template: requests and maybe a metrics
/// port, nothing else (admission adds its token mount).
fn sidecar_container(sidecar: &Sidecar) -> Value {
    let mut container = json!({
        "name": sidecar.name,
        "image": sidecar.image,
        "imagePullPolicy": "IfNotPresent",
        "resources": {"requests": {"cpu": sidecar.cpu, "memory": sidecar.memory}},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    });
    if let Some((name, port)) = sidecar.port {
        container["ports"] = json!([{"name": name, "containerPort": port, "protocol": "TCP"}]);
    }
    container
}

/// What admission adds to a created pod: the projected service-account
/// token volume and its mount (ServiceAccount), the not-ready/unreachable
/// tolerations (DefaultTolerationSeconds), priority (Priority).
fn admit(rng: &mut StdRng, pod: &mut Value) {
    let volume = format!("kube-api-access-{}", random_suffix(rng, 5));
    let spec = &mut pod["spec"];
    if let Some(containers) = spec["containers"].as_array_mut() {
        for c in containers.iter_mut().filter_map(Value::as_object_mut) {
            let mounts = c.entry("volumeMounts").or_insert_with(|| json!([]));
            if let Some(mounts) = mounts.as_array_mut() {
                mounts.push(
                    json!({"name": volume, "mountPath": SERVICE_ACCOUNT_MOUNT, "readOnly": true}),
                );
            }
        }
    }
    let volumes = spec
        .as_object_mut()
        .map(|s| s.entry("volumes").or_insert_with(|| json!([])));
    if let Some(volumes) = volumes.and_then(Value::as_array_mut) {
        volumes.push(json!({
            "name": volume,
            "projected": {
                "defaultMode": 420,
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                ],
            },
        }));
    }
    spec["serviceAccount"] = json!("default");
    spec["serviceAccountName"] = json!("default");
    spec["preemptionPolicy"] = json!("PreemptLowerPriority");
    spec["priority"] = json!(0);
    spec["tolerations"] = json!([
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
    ]);
}

/// Status of a pod whose containers all started and passed readiness.
fn running_status(rng: &mut StdRng, pod: &Value, node: &str, pod_index: usize, now: &str) -> Value {
    let host_ip = format!("172.18.0.{}", trailing_number(node) % 250 + 2);
    let pod_ip = format!("10.244.{}.{}", pod_index / 250 % 256, pod_index % 250 + 2);
    let condition = |kind: &str| json!({"type": kind, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
    let statuses: Vec<Value> = pod["spec"]["containers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let image = c["image"].as_str().unwrap_or_default();
            json!({
                "name": c["name"],
                "image": qualified_image(image),
                "imageID": image_id(image),
                "containerID": container_id(rng),
                "ready": true,
                "started": true,
                "restartCount": 0,
                "lastState": {},
                "state": {"running": {"startedAt": now}},
            })
        })
        .collect();
    json!({
        "phase": "Running",
        "conditions": [
            condition("PodReadyToStartContainers"),
            condition("Initialized"),
            condition("Ready"),
            condition("ContainersReady"),
            condition("PodScheduled"),
        ],
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": now,
        "qosClass": "Burstable",
        "containerStatuses": statuses,
    })
}

/// One status update as kubelet makes it: a container picked at random
/// passes its readiness probe if it was unready, or else fails it or
/// restarts (the previous run kept as `lastState`); the Ready conditions
/// follow, and kubelet's `managedFields` entry gets the write's time.
/// Returns `false` (nothing changed) for a pod without container statuses
/// (Pending).
pub fn kubelet_update(rng: &mut StdRng, pod: &mut Value) -> bool {
    let now = now_rfc3339();
    let Some(statuses) = pod
        .pointer_mut("/status/containerStatuses")
        .and_then(Value::as_array_mut)
        .filter(|s| !s.is_empty())
    else {
        return false;
    };
    let i = rng.random_range(0..statuses.len());
    let status = &mut statuses[i];
    if !status["ready"].as_bool().unwrap_or(false) {
        status["ready"] = json!(true);
    } else if rng.random_bool(0.5) {
        status["ready"] = json!(false);
    } else {
        let restarts = status["restartCount"].as_u64().unwrap_or(0);
        status["lastState"] = json!({"terminated": {
            "containerID": status["containerID"],
            "exitCode": 137,
            "reason": "Error",
            "startedAt": status.pointer("/state/running/startedAt").cloned().unwrap_or(Value::Null),
            "finishedAt": now,
        }});
        status["containerID"] = json!(container_id(rng));
        status["restartCount"] = json!(restarts + 1);
        status["ready"] = json!(false);
        status["state"] = json!({"running": {"startedAt": now}});
    }
    let unready: Vec<String> = statuses
        .iter()
        .filter(|s| !s["ready"].as_bool().unwrap_or(false))
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect();
    for c in readiness_conditions(pod) {
        set_readiness(c, &unready, &now);
    }
    record_kubelet_fields(pod, &now);
    true
}

/// Sets a Ready/ContainersReady condition from the unready containers,
/// moving its transition time only when its status flips.
fn set_readiness(condition: &mut Value, unready: &[String], now: &str) {
    let status = if unready.is_empty() { "True" } else { "False" };
    if condition["status"] != status {
        condition["lastTransitionTime"] = json!(now);
    }
    condition["status"] = json!(status);
    let Some(map) = condition.as_object_mut() else {
        return;
    };
    if unready.is_empty() {
        map.remove("reason");
        map.remove("message");
    } else {
        map.insert("reason".into(), json!("ContainersNotReady"));
        map.insert(
            "message".into(),
            json!(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        );
    }
}

/// Writes (or rewrites) kubelet's `managedFields` entry: the status it
/// owns (everything but `qosClass`, which the API server sets) at `now`.
fn record_kubelet_fields(pod: &mut Value, now: &str) {
    let mut status = pod["status"].clone();
    if let Some(map) = status.as_object_mut() {
        map.remove("qosClass");
    }
    let entry = managed_fields_entry(
        KUBELET,
        now,
        Some("status"),
        fields_v1(&json!({ "status": status })),
    );
    let Some(entries) = pod
        .pointer_mut("/metadata/managedFields")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    match entries.iter_mut().find(|e| e["manager"] == KUBELET) {
        Some(existing) => *existing = entry,
        None => entries.push(entry),
    }
}

fn managed_fields_entry(
    manager: &str,
    time: &str,
    subresource: Option<&str>,
    fields: Value,
) -> Value {
    let mut entry = json!({
        "manager": manager,
        "operation": "Update",
        "apiVersion": "v1",
        "time": time,
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
    });
    if let Some(subresource) = subresource {
        entry["subresource"] = json!(subresource);
    }
    entry
}

/// The FieldsV1 set of `object` (its top level is `metadata`/`spec`/
/// `status`): `f:<field>` per member, `.` for a nested object itself, and
/// `k:{…}` per item of a list the API merges by key; other lists are
/// atomic (`{}`).
pub fn fields_v1(object: &Value) -> Value {
    let Value::Object(map) = object else {
        return json!({});
    };
    Value::Object(
        map.iter()
            .map(|(k, v)| (format!("f:{k}"), member_fields(k, v, false)))
            .collect(),
    )
}

fn member_fields(name: &str, value: &Value, with_dot: bool) -> Value {
    match value {
        Value::Object(map) if !map.is_empty() => {
            let mut out = Map::new();
            if with_dot {
                out.insert(".".into(), json!({}));
            }
            for (k, v) in map {
                out.insert(format!("f:{k}"), member_fields(k, v, true));
            }
            Value::Object(out)
        }
        Value::Array(items) => match merge_keys(name) {
            Some(keys) if !items.is_empty() => {
                let mut out = Map::new();
                out.insert(".".into(), json!({}));
                for item in items {
                    let key: Map<String, Value> = keys
                        .iter()
                        .filter_map(|k| item.get(*k).map(|v| (k.to_string(), v.clone())))
                        .collect();
                    out.insert(
                        format!("k:{}", Value::Object(key)),
                        member_fields("", item, true),
                    );
                }
                Value::Object(out)
            }
            _ => json!({}),
        },
        _ => json!({}),
    }
}

/// The merge keys of the pod's keyed lists (the API's
/// `x-kubernetes-list-map-keys` / patch merge keys).
fn merge_keys(field: &str) -> Option<&'static [&'static str]> {
    match field {
        "containers" | "env" | "volumes" => Some(&["name"]),
        "ports" => Some(&["containerPort", "protocol"]),
        "volumeMounts" => Some(&["mountPath"]),
        "conditions" => Some(&["type"]),
        "ownerReferences" => Some(&["uid"]),
        "podIPs" | "hostIPs" => Some(&["ip"]),
        _ => None,
    }
}

/// A container id as containerd reports it: 64 hex digits.
fn container_id(rng: &mut StdRng) -> String {
    let digits: String = (0..4)
        .map(|_| format!("{:016x}", rng.random::<u64>()))
        .collect();
    format!("containerd://{digits}")
}

/// The image as kubelet reports it (registry and `library/` spelled out).
fn qualified_image(image: &str) -> String {
    let first = image.split('/').next().unwrap_or_default();
    if first.contains('.') && image.contains('/') {
        image.to_string()
    } else if image.contains('/') {
        format!("docker.io/{image}")
    } else {
        format!("docker.io/library/{image}")
    }
}

/// The image's digest reference, the same for every pod running it.
fn image_id(image: &str) -> String {
    let repository = qualified_image(image)
        .rsplit_once(':')
        .map_or_else(|| image.to_string(), |(r, _)| r.to_string());
    let digest: String = (0..4u64)
        .map(|i| format!("{:016x}", fnv1a(image, i)))
        .collect();
    format!("{repository}@sha256:{digest}")
}

fn image_tag(image: &str) -> &str {
    image.rsplit_once(':').map_or("latest", |(_, tag)| tag)
}

/// The number a node name ends in (`sim-node-2` → 2), 0 if none.
fn trailing_number(name: &str) -> usize {
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    name[name.len() - digits..].parse().unwrap_or(0)
}

/// `len` generated-name characters derived from `key`, so every pod of a
/// ReplicaSet shares one template hash.
fn stable_suffix(key: &str, len: usize) -> String {
    (0..len as u64)
        .map(|i| {
            let at = fnv1a(key, 16 + i) % SUFFIX_ALPHABET.len() as u64;
            char::from(SUFFIX_ALPHABET[at as usize])
        })
        .collect()
}

/// A uid derived from `key` (the owning ReplicaSet's, stable per name).
fn stable_uuid(key: &str) -> String {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&fnv1a(key, 2).to_le_bytes());
    bytes[8..].copy_from_slice(&fnv1a(key, 3).to_le_bytes());
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// 64-bit FNV-1a of `key`, varied by `round`.
fn fnv1a(key: &str, round: u64) -> u64 {
    key.bytes()
        .chain(round.to_le_bytes())
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use serde_json::{Value, json};

    use super::{fields_v1, kubelet_update, pod};
    use crate::store::Store;
    use crate::templates::APPS;

    /// A realistic pod as the store holds it (uid, resourceVersion,
    /// creationTimestamp filled in), for seed `seed`.
    fn stored_pod(store: &Store, rng: &mut StdRng, i: usize) -> Value {
        let app = &APPS[i % APPS.len()];
        let name = format!("{}-5d8f7c9b6f-{i:05}", app.name);
        let node = format!("sim-node-{}", i % 3);
        let body = pod(rng, &name, "default", app, Some(&node), i);
        store.create("pods", Some("default"), body).expect("create")
    }

    fn store() -> Store {
        let store = Store::new(100);
        store
            .create("namespaces", None, crate::templates::namespace("default"))
            .expect("namespace");
        store
    }

    fn manager<'a>(pod: &'a Value, name: &str) -> &'a Value {
        pod["metadata"]["managedFields"]
            .as_array()
            .and_then(|entries| entries.iter().find(|e| e["manager"] == name))
            .unwrap_or_else(|| panic!("no managedFields entry of {name}"))
    }

    #[test]
    fn pods_are_kubernetes_pods_of_4_to_8_kib() {
        let store = store();
        let mut rng = StdRng::seed_from_u64(1);
        let mut containers_seen = std::collections::BTreeSet::new();
        for i in 0..60 {
            let object = stored_pod(&store, &mut rng, i);
            let len = serde_json::to_vec(&object).expect("serialise").len();
            assert!((4096..=8192).contains(&len), "pod {i}: {len} bytes");
            let typed: Pod = serde_json::from_value(object.clone()).expect("a k8s Pod");
            let spec = typed.spec.expect("spec");
            let status = typed.status.expect("status");
            containers_seen.insert(spec.containers.len());
            assert!((1..=3).contains(&spec.containers.len()));
            assert_eq!(status.phase.as_deref(), Some("Running"));
            let conditions: Vec<_> = status
                .conditions
                .unwrap_or_default()
                .into_iter()
                .map(|c| (c.type_, c.status))
                .collect();
            let expected: Vec<_> = [
                "PodReadyToStartContainers",
                "Initialized",
                "Ready",
                "ContainersReady",
                "PodScheduled",
            ]
            .iter()
            .map(|t| (t.to_string(), "True".to_string()))
            .collect();
            assert_eq!(conditions, expected);
            let statuses = status.container_statuses.unwrap_or_default();
            assert_eq!(statuses.len(), spec.containers.len());
            assert!(statuses.iter().all(|s| s.ready
                && s.container_id.as_deref().is_some_and(|id| id.len() == 77)
                && s.image_id.contains("@sha256:")));
            assert!(
                spec.volumes
                    .unwrap_or_default()
                    .iter()
                    .any(|v| v.projected.is_some())
            );
            assert_eq!(spec.tolerations.map(|t| t.len()), Some(2));
            let owners = typed.metadata.owner_references.unwrap_or_default();
            assert_eq!(owners[0].kind, "ReplicaSet");
            let managed = typed.metadata.managed_fields.unwrap_or_default();
            let managers: Vec<_> = managed
                .iter()
                .map(|m| (m.manager.clone(), m.subresource.clone()))
                .collect();
            assert_eq!(
                managers,
                [
                    (Some("kube-controller-manager".into()), None),
                    (Some("kubelet".into()), Some("status".into()))
                ]
            );
            let kubelet = manager(&object, "kubelet");
            assert!(
                kubelet["fieldsV1"]["f:status"]["f:conditions"]
                    .get(r#"k:{"type":"Ready"}"#)
                    .is_some()
            );
            assert!(
                kubelet["fieldsV1"]["f:status"]
                    .get("f:containerStatuses")
                    .is_some()
            );
        }
        assert_eq!(
            containers_seen.into_iter().collect::<Vec<_>>(),
            [1, 2, 3],
            "one to three containers"
        );
    }

    #[test]
    fn a_seed_repeats_the_pods() {
        let make = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut p = pod(
                &mut rng,
                "web-x-abcde",
                "default",
                &APPS[0],
                Some("sim-node-1"),
                3,
            );
            let ids: Vec<Value> = p["status"]["containerStatuses"]
                .as_array()
                .map(|s| s.iter().map(|c| c["containerID"].clone()).collect())
                .unwrap_or_default();
            p["metadata"]["managedFields"] = Value::Null;
            (ids, p["spec"].take())
        };
        assert_eq!(make(5), make(5));
        assert_ne!(make(5).0, make(6).0);
    }

    #[test]
    fn kubelet_updates_change_status_and_its_managed_fields_time() {
        let store = store();
        let mut rng = StdRng::seed_from_u64(2);
        let mut current = stored_pod(&store, &mut rng, 1);
        let mut restarts = 0;
        let mut unready_seen = false;
        for _ in 0..40 {
            let before = current.clone();
            let mut next = current.clone();
            for entry in next["metadata"]["managedFields"]
                .as_array_mut()
                .expect("managedFields")
            {
                entry["time"] = json!("2000-01-01T00:00:00Z");
            }
            assert!(kubelet_update(&mut rng, &mut next));
            assert_ne!(next["status"], before["status"], "status changed");
            assert_ne!(manager(&next, "kubelet")["time"], "2000-01-01T00:00:00Z");
            assert_eq!(
                manager(&next, "kube-controller-manager")["time"],
                "2000-01-01T00:00:00Z",
                "only kubelet wrote"
            );
            assert_eq!(next["spec"], before["spec"], "kubelet writes status only");
            next["metadata"]
                .as_object_mut()
                .expect("metadata")
                .remove("resourceVersion");
            current = store.update("pods", Some("default"), next).expect("update");
            let rv = |p: &Value| {
                p["metadata"]["resourceVersion"]
                    .as_str()
                    .map(str::to_string)
            };
            assert_ne!(rv(&current), rv(&before), "resourceVersion bumped");
            let typed: Pod = serde_json::from_value(current.clone()).expect("a k8s Pod");
            let status = typed.status.expect("status");
            let statuses = status.container_statuses.unwrap_or_default();
            restarts = statuses.iter().map(|s| s.restart_count).sum::<i32>();
            let ready = status
                .conditions
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == "Ready")
                .expect("Ready condition");
            let all_ready = statuses.iter().all(|s| s.ready);
            assert_eq!(ready.status == "True", all_ready);
            if !all_ready {
                unready_seen = true;
                assert_eq!(ready.reason.as_deref(), Some("ContainersNotReady"));
            }
            // kubelet's managed set follows the fields it wrote.
            let mut owned = current["status"].clone();
            owned.as_object_mut().expect("status").remove("qosClass");
            assert_eq!(
                manager(&current, "kubelet")["fieldsV1"],
                fields_v1(&json!({ "status": owned }))
            );
        }
        assert!(unready_seen, "a readiness probe failed");
        assert!(restarts > 0, "a container restarted");
        let restarted = current["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["restartCount"] != 0)
            .map(|s| s["lastState"]["terminated"]["exitCode"].clone());
        assert_eq!(restarted, Some(json!(137)));
    }

    #[test]
    fn fields_v1_keys_merged_lists_and_marks_nested_objects() {
        let object = json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "containers": [{"name": "web", "ports": [{"containerPort": 80, "protocol": "TCP"}]}],
                "tolerations": [{"key": "a"}],
                "securityContext": {},
            },
        });
        assert_eq!(
            fields_v1(&object),
            json!({
                "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                "f:spec": {
                    "f:containers": {".": {}, r#"k:{"name":"web"}"#: {
                        ".": {}, "f:name": {},
                        "f:ports": {".": {}, r#"k:{"containerPort":80,"protocol":"TCP"}"#: {
                            ".": {}, "f:containerPort": {}, "f:protocol": {}}}}},
                    "f:securityContext": {},
                    "f:tolerations": {},
                },
            })
        );
    }
}
