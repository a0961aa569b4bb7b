//! Realistic object bodies (nodes, pods, services, ...) for the initial
//! population and the churn generator, shaped like what a kind/kubeadm
//! cluster's API server returns.

use serde_json::{Value, json};

use crate::time::now_rfc3339;

/// Namespaces every simulated cluster starts with; churn spreads pods here.
pub const NAMESPACES: &[&str] = &["default", "kube-system", "team-a", "team-b"];

/// A Namespace in phase Active.
pub fn namespace(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"}
    })
}

/// A Node; `index` makes addresses unique, `control_plane` adds the role
/// label and taint.
pub fn node(name: &str, index: usize, control_plane: bool) -> Value {
    let mut labels = json!({
        "beta.kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
    });
    let mut taints = json!([]);
    if control_plane {
        labels["node-role.kubernetes.io/control-plane"] = json!("");
        taints = json!([{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]);
    }
    let now = now_rfc3339();
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({"type": kind, "status": status, "lastHeartbeatTime": now, "lastTransitionTime": now,
               "reason": reason, "message": message})
    };
    let resources = json!({"cpu": "4", "memory": "16318540Ki", "pods": "110", "ephemeral-storage": "102687672Ki"});
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"podCIDR": format!("10.244.{index}.0/24"), "providerID": format!("kubemux-sim://{name}"), "taints": taints},
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": format!("172.18.{}.{}", index / 250, index % 250 + 2)},
                {"type": "Hostname", "address": name}
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": format!("boot-{name}"),
                "containerRuntimeVersion": "containerd://2.0.3",
                "kernelVersion": "6.1.0-31-amd64",
                "kubeProxyVersion": "v1.33.0",
                "kubeletVersion": "v1.33.0",
                "machineID": format!("machine-{name}"),
                "operatingSystem": "linux",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "systemUUID": format!("uuid-{name}")
            }
        }
    })
}

/// Flips a node's Ready condition between True and False.
pub fn toggle_node_ready(node: &mut Value) {
    let Some(conditions) = node
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for condition in conditions.iter_mut().filter(|c| c["type"] == "Ready") {
        let ready = condition["status"] == "True";
        let (status, reason, message) = if ready {
            (
                "False",
                "KubeletNotReady",
                "container runtime status check may not have completed yet",
            )
        } else {
            ("True", "KubeletReady", "kubelet is posting ready status")
        };
        condition["status"] = json!(status);
        condition["reason"] = json!(reason);
        condition["message"] = json!(message);
        condition["lastTransitionTime"] = json!(now_rfc3339());
    }
}

/// What a pod runs: app name, container image, CPU and memory requests.
#[derive(Debug, Clone, Copy)]
pub struct App {
    /// The `app` label and container name.
    pub name: &'static str,
    /// Container image.
    pub image: &'static str,
    /// CPU request.
    pub cpu: &'static str,
    /// Memory request.
    pub memory: &'static str,
}

/// The workloads pods are drawn from.
pub const APPS: &[App] = &[
    App {
        name: "web",
        image: "nginx:1.27",
        cpu: "100m",
        memory: "128Mi",
    },
    App {
        name: "api",
        image: "ghcr.io/example/api:2.4.1",
        cpu: "250m",
        memory: "256Mi",
    },
    App {
        name: "worker",
        image: "ghcr.io/example/worker:2.4.1",
        cpu: "500m",
        memory: "512Mi",
    },
    App {
        name: "cache",
        image: "redis:7.4",
        cpu: "200m",
        memory: "1Gi",
    },
    App {
        name: "coredns",
        image: "registry.k8s.io/coredns/coredns:v1.12.0",
        cpu: "100m",
        memory: "70Mi",
    },
];

/// A pod of `app` in `namespace`, scheduled to `node` if given (Running and
/// Ready) or unscheduled (Pending).
pub fn pod(name: &str, namespace: &str, app: &App, node: Option<&str>, pod_index: usize) -> Value {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app": app.name, "pod-template-hash": "5d8f7c9b6f"}
        },
        "spec": {
            "containers": [{
                "name": app.name,
                "image": app.image,
                "imagePullPolicy": "IfNotPresent",
                "resources": {"requests": {"cpu": app.cpu, "memory": app.memory}},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File"
            }],
            "dnsPolicy": "ClusterFirst",
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0,
            "restartPolicy": "Always",
            "schedulerName": "default-scheduler",
            "serviceAccountName": "default",
            "terminationGracePeriodSeconds": 30
        },
        "status": {"phase": "Pending", "qosClass": "Burstable"}
    });
    if let Some(node) = node {
        pod["spec"]["nodeName"] = json!(node);
        pod["status"]["hostIP"] = json!("172.18.0.2");
        pod["status"]["podIP"] = json!(format!(
            "10.244.{}.{}",
            pod_index / 250,
            pod_index % 250 + 2
        ));
        pod["status"]["startTime"] = json!(now_rfc3339());
        set_pod_phase(&mut pod, "Running");
    }
    pod
}

fn pod_condition(kind: &str, status: bool) -> Value {
    json!({"type": kind, "status": if status { "True" } else { "False" },
           "lastProbeTime": null, "lastTransitionTime": now_rfc3339()})
}

/// Sets `status.phase` with matching conditions and container states.
pub fn set_pod_phase(pod: &mut Value, phase: &str) {
    let running = phase == "Running";
    let container = pod
        .pointer("/spec/containers/0/name")
        .cloned()
        .unwrap_or(Value::Null);
    let image = pod
        .pointer("/spec/containers/0/image")
        .cloned()
        .unwrap_or(Value::Null);
    let restarts = pod
        .pointer("/status/containerStatuses/0/restartCount")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let state = match phase {
        "Running" => json!({"running": {"startedAt": now_rfc3339()}}),
        "Succeeded" => {
            json!({"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": now_rfc3339()}})
        }
        "Failed" => {
            json!({"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": now_rfc3339()}})
        }
        _ => json!({"waiting": {"reason": "ContainerCreating"}}),
    };
    let status = &mut pod["status"];
    status["phase"] = json!(phase);
    status["conditions"] = json!([
        pod_condition("PodReadyToStartContainers", running),
        pod_condition("Initialized", true),
        pod_condition("Ready", running),
        pod_condition("ContainersReady", running),
        pod_condition("PodScheduled", true),
    ]);
    status["containerStatuses"] = json!([{
        "name": container,
        "image": image,
        "imageID": "",
        "containerID": "containerd://0f1e2d3c4b5a",
        "ready": running,
        "started": running,
        "restartCount": restarts,
        "state": state
    }]);
}

/// Flips the first container's ready flag (and the Ready conditions),
/// counting a restart when it becomes ready again.
pub fn toggle_container_ready(pod: &mut Value) {
    let Some(status) = pod.pointer_mut("/status/containerStatuses/0") else {
        return;
    };
    let ready = !status["ready"].as_bool().unwrap_or(false);
    status["ready"] = json!(ready);
    if ready {
        let restarts = status["restartCount"].as_u64().unwrap_or(0);
        status["restartCount"] = json!(restarts + 1);
    }
    for c in readiness_conditions(pod) {
        c["status"] = json!(if ready { "True" } else { "False" });
    }
}

/// A pod's Ready and ContainersReady conditions: the two that follow its
/// containers' readiness.
pub(crate) fn readiness_conditions(pod: &mut Value) -> impl Iterator<Item = &mut Value> {
    pod.pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter(|c| c["type"] == "Ready" || c["type"] == "ContainersReady")
}

/// A ClusterIP service selecting `app`.
pub fn service(name: &str, namespace: &str, app: &str, index: usize) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": format!("10.96.{}.{}", index / 250, index % 250 + 10),
            "clusterIPs": [format!("10.96.{}.{}", index / 250, index % 250 + 10)],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
            "selector": {"app": app},
            "sessionAffinity": "None"
        },
        "status": {"loadBalancer": {}}
    })
}

/// A ConfigMap with a little data.
pub fn config_map(name: &str, namespace: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"ca.crt": "-----BEGIN CERTIFICATE-----\nsimulated\n-----END CERTIFICATE-----\n"}
    })
}

/// A Deployment of `app` with `replicas` ready replicas.
pub fn deployment(namespace: &str, app: &App, replicas: u64) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": app.name, "namespace": namespace, "labels": {"app": app.name}, "generation": 1},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app.name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {
                "metadata": {"labels": {"app": app.name}},
                "spec": {"containers": [{"name": app.name, "image": app.image,
                          "resources": {"requests": {"cpu": app.cpu, "memory": app.memory}}}]}
            }
        },
        "status": {"observedGeneration": 1, "replicas": replicas, "readyReplicas": replicas,
                   "availableReplicas": replicas, "updatedReplicas": replicas}
    })
}
