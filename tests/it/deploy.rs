//! `deploy/`: every manifest parses into its typed k8s-openapi object (by
//! `kind`, with no field the type does not know), `kustomization.yaml` lists
//! exactly the manifests, and the invariants the manifests promise hold:
//! least-privilege RBAC bound to the Deployment's ServiceAccount, the pod's
//! security context, probes, config mount and TOML, shutdown timing, and
//! selectors and ports that line up across Service, PDB and NetworkPolicy.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::{Metadata, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const NAME_LABEL: &str = "app.kubernetes.io/name";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Every manifest in `deploy/`, one of each kind.
#[derive(Default)]
struct Manifests {
    namespace: Option<Namespace>,
    service_account: Option<ServiceAccount>,
    cluster_role: Option<ClusterRole>,
    binding: Option<ClusterRoleBinding>,
    config_map: Option<ConfigMap>,
    deployment: Option<Deployment>,
    service: Option<Service>,
    network_policy: Option<NetworkPolicy>,
    pdb: Option<PodDisruptionBudget>,
    hpa: Option<HorizontalPodAutoscaler>,
    /// (file, kind, metadata) of every object, for checks common to all.
    all: Vec<(String, String, ObjectMeta)>,
}

/// Parses one document into `T` and requires that serialising it back gives
/// the same document: a misspelt or misplaced field, which serde would
/// silently skip, fails here.
fn typed<T>(file: &str, doc: &Value, all: &mut Vec<(String, String, ObjectMeta)>) -> T
where
    T: Resource + Metadata<Ty = ObjectMeta> + DeserializeOwned + Serialize,
{
    let obj: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{file}: not a valid {}: {e}", T::KIND));
    let back = serde_json::to_value(&obj).unwrap();
    if let Some(path) = first_difference(doc, &back, String::new()) {
        panic!(
            "{file}: {} at {path}: a field the type does not know, or a value of the wrong type \
             (quote quantities such as cpu: \"2\")",
            T::KIND
        );
    }
    all.push((
        file.to_string(),
        T::KIND.to_string(),
        obj.metadata().clone(),
    ));
    obj
}

/// The JSON path of the first place `a` and `b` differ.
fn first_difference(a: &Value, b: &Value, path: String) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.keys()
                .chain(y.keys())
                .find_map(|k| match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => first_difference(u, v, format!("{path}.{k}")),
                    _ => Some(format!("{path}.{k}")),
                })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (u, v))| first_difference(u, v, format!("{path}[{i}]"))),
        _ => (a != b).then_some(path),
    }
}

fn put<T>(slot: &mut Option<T>, obj: T, file: &str) {
    assert!(
        slot.is_none(),
        "{file}: a second {}",
        std::any::type_name::<T>()
    );
    *slot = Some(obj);
}

/// The `*.yaml` files of `deploy/` other than `kustomization.yaml`, sorted.
fn manifest_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(deploy_dir())
        .expect("deploy/ exists")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/");
    files
}

fn read(file: &str) -> String {
    std::fs::read_to_string(deploy_dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// The non-empty YAML documents of one file, as JSON values.
fn documents(file: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(&read(file))
        .unwrap_or_else(|e| panic!("{file}: not valid YAML: {e}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn load() -> Manifests {
    let mut m = Manifests::default();
    for file in manifest_files() {
        let docs = documents(&file);
        assert!(!docs.is_empty(), "{file}: no documents");
        for doc in &docs {
            let kind = doc["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: no kind"));
            let f = file.as_str();
            let all = &mut m.all;
            match kind {
                "Namespace" => put(&mut m.namespace, typed(f, doc, all), f),
                "ServiceAccount" => put(&mut m.service_account, typed(f, doc, all), f),
                "ClusterRole" => put(&mut m.cluster_role, typed(f, doc, all), f),
                "ClusterRoleBinding" => put(&mut m.binding, typed(f, doc, all), f),
                "ConfigMap" => put(&mut m.config_map, typed(f, doc, all), f),
                "Deployment" => put(&mut m.deployment, typed(f, doc, all), f),
                "Service" => put(&mut m.service, typed(f, doc, all), f),
                "NetworkPolicy" => put(&mut m.network_policy, typed(f, doc, all), f),
                "PodDisruptionBudget" => put(&mut m.pdb, typed(f, doc, all), f),
                "HorizontalPodAutoscaler" => put(&mut m.hpa, typed(f, doc, all), f),
                other => panic!("{file}: unknown kind {other}"),
            }
        }
    }
    m
}

impl Manifests {
    fn namespace(&self) -> &Namespace {
        self.namespace.as_ref().expect("a Namespace")
    }
    fn service_account(&self) -> &ServiceAccount {
        self.service_account.as_ref().expect("a ServiceAccount")
    }
    fn cluster_role(&self) -> &ClusterRole {
        self.cluster_role.as_ref().expect("a ClusterRole")
    }
    fn binding(&self) -> &ClusterRoleBinding {
        self.binding.as_ref().expect("a ClusterRoleBinding")
    }
    fn config_map(&self) -> &ConfigMap {
        self.config_map.as_ref().expect("a ConfigMap")
    }
    fn deployment(&self) -> &Deployment {
        self.deployment.as_ref().expect("a Deployment")
    }
    fn service(&self) -> &Service {
        self.service.as_ref().expect("a Service")
    }
    fn network_policy(&self) -> &NetworkPolicy {
        self.network_policy.as_ref().expect("a NetworkPolicy")
    }
    fn hpa(&self) -> &HorizontalPodAutoscaler {
        self.hpa.as_ref().expect("a HorizontalPodAutoscaler")
    }
    fn pdb(&self) -> &PodDisruptionBudget {
        self.pdb.as_ref().expect("a PodDisruptionBudget")
    }
    fn pod_spec(&self) -> &PodSpec {
        self.deployment()
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("Deployment has a pod spec")
    }
    fn pod_labels(&self) -> &BTreeMap<String, String> {
        self.deployment()
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.as_ref())
            .expect("pod template has labels")
    }
    /// The kubemux container (the only one).
    fn container(&self) -> &Container {
        let containers = &self.pod_spec().containers;
        assert_eq!(containers.len(), 1, "one container in the pod");
        &containers[0]
    }
    fn namespace_name(&self) -> &str {
        self.namespace()
            .metadata
            .name
            .as_deref()
            .expect("Namespace name")
    }
}

/// The container port a probe or Service refers to, by name or number.
fn resolve_port(c: &Container, port: &IntOrString) -> i32 {
    let ports = c.ports.as_deref().unwrap_or_default();
    let found = match port {
        IntOrString::Int(n) => ports.iter().find(|p| p.container_port == *n),
        IntOrString::String(name) => ports.iter().find(|p| p.name.as_deref() == Some(name)),
    };
    found
        .unwrap_or_else(|| panic!("{port:?} is not a port of container {}", c.name))
        .container_port
}

/// The container's `http` port.
fn http_port(c: &Container) -> i32 {
    resolve_port(c, &IntOrString::String("http".into()))
}

/// Whether `sel` selects a pod with `labels`. An empty selector is refused:
/// every selector here must name kubemux's pods.
fn selects(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let exprs = sel.match_expressions.as_deref().unwrap_or_default();
    let match_labels = sel.match_labels.clone().unwrap_or_default();
    assert!(
        !match_labels.is_empty() || !exprs.is_empty(),
        "an empty selector selects every pod"
    );
    match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
        && exprs.iter().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                op => panic!("unknown selector operator {op}"),
            }
        })
}

/// The config file the container's args point at: `--config PATH`.
fn config_path(c: &Container) -> String {
    let args = c.args.as_deref().unwrap_or_default();
    let i = args
        .iter()
        .position(|a| a == "--config")
        .expect("args contain --config");
    args.get(i + 1).expect("--config has a value").clone()
}

/// The ConfigMap's config.toml, parsed.
fn config_toml(m: &Manifests) -> toml::Table {
    let key = config_key(m);
    let text = &m.config_map().data.as_ref().unwrap()[&key];
    toml::from_str(text).unwrap_or_else(|e| panic!("ConfigMap key {key}: not TOML: {e}"))
}

/// The ConfigMap key the `--config` path resolves to through the volume
/// mount, checking the path lies inside a read-only mount of that ConfigMap.
fn config_key(m: &Manifests) -> String {
    let c = m.container();
    let path = config_path(c);
    let mount = c
        .volume_mounts
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|vm| {
            Path::new(&path).starts_with(&vm.mount_path)
                && Path::new(&path) != Path::new(&vm.mount_path)
        })
        .unwrap_or_else(|| panic!("--config {path} is not inside any volume mount"));
    assert_eq!(
        mount.read_only,
        Some(true),
        "config mount must be read-only"
    );
    assert!(mount.sub_path.is_none() && mount.sub_path_expr.is_none());
    let volume = m
        .pod_spec()
        .volumes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|v| v.name == mount.name)
        .unwrap_or_else(|| panic!("no volume {}", mount.name));
    let source = volume
        .config_map
        .as_ref()
        .unwrap_or_else(|| panic!("volume {} is not a ConfigMap", volume.name));
    assert_eq!(source.name, m.config_map().metadata.name.clone().unwrap());
    let relative = Path::new(&path)
        .strip_prefix(&mount.mount_path)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    // With `items`, the key is the item projected at that path; without, the
    // file name is the key itself.
    let key = match &source.items {
        Some(items) => items
            .iter()
            .find(|i| i.path == relative)
            .unwrap_or_else(|| panic!("no ConfigMap item projected at {relative}"))
            .key
            .clone(),
        None => relative,
    };
    let data = m.config_map().data.as_ref().expect("ConfigMap has data");
    assert!(
        data.contains_key(&key),
        "--config {path}: {key} is not a key of the ConfigMap (keys: {:?})",
        data.keys().collect::<Vec<_>>()
    );
    key
}

fn duration(table: &toml::Table, key: &str) -> std::time::Duration {
    let s = table
        .get(key)
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("config.toml: {key} is not a string"));
    humantime::parse_duration(s).unwrap_or_else(|e| panic!("config.toml: {key} = {s:?}: {e}"))
}

#[test]
fn kustomization_lists_exactly_the_manifests() {
    let files = manifest_files();
    let docs = documents("kustomization.yaml");
    assert_eq!(docs.len(), 1);
    let k = &docs[0];
    assert_eq!(k["kind"], "Kustomization");
    let resources: Vec<&str> = k["resources"]
        .as_array()
        .expect("resources is a list")
        .iter()
        .map(|r| r.as_str().expect("resource is a string"))
        .collect();
    let listed: BTreeSet<&str> = resources.iter().copied().collect();
    assert_eq!(listed.len(), resources.len(), "a resource is listed twice");
    let present: BTreeSet<&str> = files.iter().map(String::as_str).collect();
    assert_eq!(listed, present, "kustomization resources vs deploy/*.yaml");

    let m = load();
    assert_eq!(k["namespace"], m.namespace_name());
    // The images entry overrides the Deployment's image by name.
    let image = m.container().image.clone().expect("container image");
    let image_name = image.split(':').next().unwrap();
    let names: Vec<&str> = k["images"]
        .as_array()
        .expect("images is a list")
        .iter()
        .map(|i| i["name"].as_str().expect("image name"))
        .collect();
    assert!(
        names.contains(&image_name),
        "no images entry for {image_name}: {names:?}"
    );
}

#[test]
fn every_object_is_labelled_and_namespaced() {
    let m = load();
    let ns = m.namespace_name();
    assert_eq!(ns, "kubemux");
    for (file, kind, meta) in &m.all {
        let labels = meta.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get(NAME_LABEL).map(String::as_str),
            Some("kubemux"),
            "{file}: {kind} lacks {NAME_LABEL}: kubemux"
        );
        let cluster_scoped = matches!(
            kind.as_str(),
            "Namespace" | "ClusterRole" | "ClusterRoleBinding"
        );
        if cluster_scoped {
            assert!(meta.namespace.is_none(), "{file}: {kind} is cluster-scoped");
        } else {
            assert_eq!(
                meta.namespace.as_deref(),
                Some(ns),
                "{file}: {kind} namespace"
            );
        }
    }
}

#[test]
fn cluster_role_is_least_privilege() {
    let m = load();
    let read_verbs: BTreeSet<&str> = ["get", "list", "watch"].into();
    let expected_read: BTreeSet<(&str, &str)> = [
        ("", "pods"),
        ("", "pods/log"),
        ("", "nodes"),
        ("", "namespaces"),
        ("", "services"),
        ("", "endpoints"),
        ("", "events"),
        ("", "configmaps"),
        ("", "persistentvolumeclaims"),
        ("", "persistentvolumes"),
        ("", "resourcequotas"),
        ("", "limitranges"),
        ("", "serviceaccounts"),
        ("apps", "deployments"),
        ("apps", "replicasets"),
        ("apps", "statefulsets"),
        ("apps", "daemonsets"),
        ("batch", "jobs"),
        ("batch", "cronjobs"),
        ("networking.k8s.io", "ingresses"),
        ("networking.k8s.io", "networkpolicies"),
        ("metrics.k8s.io", "pods"),
        ("metrics.k8s.io", "nodes"),
    ]
    .into();
    let expected_create: BTreeSet<(&str, &str)> = [
        ("authentication.k8s.io", "tokenreviews"),
        ("authorization.k8s.io", "subjectaccessreviews"),
    ]
    .into();

    let role = m.cluster_role();
    assert!(
        role.aggregation_rule.is_none(),
        "no aggregation (it could grant anything)"
    );
    let rules = role.rules.as_deref().expect("ClusterRole has rules");
    let mut read = BTreeSet::new();
    let mut create = BTreeSet::new();
    for rule in rules {
        assert!(
            rule.non_resource_urls.is_none(),
            "no non-resource URLs: {rule:?}"
        );
        assert!(
            rule.resource_names.is_none(),
            "no resourceNames expected: {rule:?}"
        );
        let groups = rule.api_groups.as_deref().expect("apiGroups");
        let resources = rule.resources.as_deref().expect("resources");
        for s in groups.iter().chain(resources).chain(&rule.verbs) {
            assert!(!s.contains('*'), "wildcard {s:?} in {rule:?}");
        }
        for r in resources {
            assert!(
                r != "secrets" && !r.starts_with("secrets/"),
                "the ClusterRole must never grant secrets: {rule:?}"
            );
        }
        let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
        let target = if verbs == read_verbs {
            &mut read
        } else if verbs == BTreeSet::from(["create"]) {
            &mut create
        } else {
            panic!("verbs must be exactly get/list/watch or exactly create: {rule:?}");
        };
        for g in groups {
            for r in resources {
                assert!(
                    target.insert((g.as_str(), r.as_str())),
                    "{g}/{r} granted twice"
                );
            }
        }
    }
    assert_eq!(read, expected_read, "read-only grants");
    assert_eq!(create, expected_create, "create grants");
}

#[test]
fn binding_grants_the_role_to_the_deployments_service_account() {
    let m = load();
    let b = m.binding();
    assert_eq!(b.role_ref.api_group, "rbac.authorization.k8s.io");
    assert_eq!(b.role_ref.kind, "ClusterRole");
    assert_eq!(
        Some(&b.role_ref.name),
        m.cluster_role().metadata.name.as_ref()
    );

    let sa = m
        .pod_spec()
        .service_account_name
        .as_deref()
        .expect("serviceAccountName");
    assert_ne!(sa, "default", "a dedicated ServiceAccount");
    assert_eq!(m.service_account().metadata.name.as_deref(), Some(sa));
    let subjects = b.subjects.as_deref().expect("subjects");
    assert_eq!(subjects.len(), 1, "bound to kubemux's ServiceAccount only");
    let s = &subjects[0];
    assert_eq!(s.kind, "ServiceAccount");
    assert_eq!(s.name, sa);
    assert_eq!(s.namespace.as_deref(), Some(m.namespace_name()));
    assert!(s.api_group.as_deref().unwrap_or_default().is_empty());

    // The in-cluster client needs the token mounted.
    assert_eq!(m.pod_spec().automount_service_account_token, Some(true));
    assert_ne!(
        m.service_account().automount_service_account_token,
        Some(false)
    );
}

#[test]
fn pod_is_locked_down_and_has_resources() {
    let m = load();
    let pod = m
        .pod_spec()
        .security_context
        .as_ref()
        .expect("pod securityContext");
    assert_eq!(pod.run_as_non_root, Some(true));
    assert_eq!(pod.run_as_user, Some(65532));
    assert_eq!(
        pod.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    assert!(m.pod_spec().host_network.is_none() && m.pod_spec().host_pid.is_none());

    let c = m.container();
    let sc = c
        .security_context
        .as_ref()
        .expect("container securityContext");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_ne!(sc.privileged, Some(true));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert!(
        caps.add.as_deref().unwrap_or_default().is_empty(),
        "no added capabilities"
    );
    if let Some(uid) = sc.run_as_user {
        assert_eq!(uid, 65532);
    }

    let res = c.resources.as_ref().expect("resources");
    for (what, map) in [("requests", &res.requests), ("limits", &res.limits)] {
        let map = map.as_ref().unwrap_or_else(|| panic!("no {what}"));
        for r in ["cpu", "memory"] {
            assert!(map.contains_key(r), "no {r} in {what}");
        }
    }

    let env = c.env.as_deref().unwrap_or_default();
    assert!(env.iter().any(|e| e.name == "RUST_LOG"), "RUST_LOG set");
}

#[test]
fn deployment_runs_serve_in_cluster_with_probes() {
    let m = load();
    let d = m.deployment().spec.as_ref().unwrap();
    assert_eq!(d.replicas, Some(2));
    assert!(
        selects(&d.selector, m.pod_labels()),
        "Deployment selector vs pod labels"
    );

    let c = m.container();
    let args = c.args.as_deref().expect("args");
    assert_eq!(args[0], "serve");
    assert!(args.iter().any(|a| a == "--in-cluster"));
    assert!(c.command.is_none(), "the image's ENTRYPOINT runs kubemux");

    let port = http_port(c);
    let probe = |p: &Option<k8s_openapi::api::core::v1::Probe>, what: &str| {
        let get = p
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{what} is an HTTP GET"));
        assert_eq!(resolve_port(c, &get.port), port, "{what} port");
        get.path.clone().unwrap_or_default()
    };
    assert_eq!(probe(&c.liveness_probe, "livenessProbe"), "/healthz");
    assert_eq!(probe(&c.readiness_probe, "readinessProbe"), "/readyz");
}

#[test]
fn config_file_is_mounted_and_parses() {
    let m = load();
    let cfg = config_toml(&m);
    let listen: SocketAddr = cfg
        .get("listen")
        .and_then(|v| v.as_str())
        .expect("config.toml has listen")
        .parse()
        .expect("listen is an address");
    assert!(
        listen.ip().is_unspecified(),
        "listen on all interfaces inside the pod"
    );
    assert_eq!(
        i32::from(listen.port()),
        http_port(m.container()),
        "listen port vs container port"
    );
    // Every duration parses.
    for key in [
        "linger",
        "history_max_age",
        "bookmark_interval",
        "ping_interval",
        "pong_timeout",
        "shutdown_grace",
    ] {
        duration(&cfg, key);
    }
    // And kubemux itself accepts the file as it would at start-up.
    let key = config_key(&m);
    let text = &m.config_map().data.as_ref().unwrap()[&key];
    let settings = kubemux::config::Settings::from_toml(
        &kubemux::config::ProxyArgs::default(),
        text,
        "deploy/configmap.yaml",
    )
    .unwrap_or_else(|e| panic!("kubemux rejects the ConfigMap's config: {e}"));
    assert_eq!(settings.listen, listen);
    assert_eq!(
        Some(settings.shutdown_grace),
        Some(duration(&cfg, "shutdown_grace"))
    );
}

#[test]
fn termination_grace_covers_prestop_and_shutdown_grace() {
    let m = load();
    let shutdown_grace = duration(&config_toml(&m), "shutdown_grace").as_secs_f64();
    let pre_stop = m
        .container()
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .expect("preStop hook");
    // The image is distroless: no shell, no `sleep` binary for an exec hook.
    assert!(
        pre_stop.exec.is_none(),
        "preStop exec cannot run in a distroless image"
    );
    let sleep = pre_stop
        .sleep
        .as_ref()
        .expect("preStop sleep action")
        .seconds as f64;
    let grace = m
        .pod_spec()
        .termination_grace_period_seconds
        .expect("terminationGracePeriodSeconds") as f64;
    assert!(
        grace > shutdown_grace + sleep,
        "terminationGracePeriodSeconds {grace} must exceed shutdown_grace {shutdown_grace} + preStop {sleep}"
    );
}

#[test]
fn service_and_pdb_select_the_pods() {
    let m = load();
    let labels = m.pod_labels();
    let c = m.container();

    let svc = m.service().spec.as_ref().expect("Service spec");
    assert_eq!(svc.type_.as_deref(), Some("ClusterIP"));
    let selector = svc.selector.as_ref().expect("Service selector");
    assert!(!selector.is_empty());
    assert!(
        selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "Service selector vs pod labels"
    );
    let ports = svc.ports.as_deref().expect("Service ports");
    assert!(ports.iter().any(|p| p.port == 4466));
    for p in ports {
        let target = p.target_port.clone().unwrap_or(IntOrString::Int(p.port));
        assert_eq!(
            resolve_port(c, &target),
            http_port(c),
            "Service targets the http port"
        );
    }

    let pdb = m.pdb().spec.as_ref().expect("PDB spec");
    assert!(
        selects(pdb.selector.as_ref().expect("PDB selector"), labels),
        "PDB selector vs pod labels"
    );
    assert_eq!(pdb.min_available, Some(IntOrString::Int(1)));
    let replicas = m.deployment().spec.as_ref().unwrap().replicas.unwrap_or(1);
    assert!(
        replicas > 1,
        "with minAvailable 1, one replica could never be evicted"
    );
}

#[test]
fn network_policy_admits_headlamp_and_monitoring_only() {
    let m = load();
    let c = m.container();
    let np = m
        .network_policy()
        .spec
        .as_ref()
        .expect("NetworkPolicy spec");
    assert!(
        selects(
            np.pod_selector.as_ref().expect("podSelector"),
            m.pod_labels()
        ),
        "NetworkPolicy applies to kubemux's pods"
    );
    let types: BTreeSet<&str> = np
        .policy_types
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(types, BTreeSet::from(["Ingress", "Egress"]));

    let ingress = np.ingress.as_deref().expect("ingress rules");
    let mut headlamp = false;
    let mut monitoring = false;
    for rule in ingress {
        let ports = rule
            .ports
            .as_deref()
            .expect("ingress rules name their ports");
        for p in ports {
            assert_eq!(
                resolve_port(c, p.port.as_ref().expect("port")),
                http_port(c),
                "ingress only to http"
            );
            assert_eq!(p.protocol.as_deref().unwrap_or("TCP"), "TCP");
        }
        let from = rule
            .from
            .as_deref()
            .expect("ingress rules name their peers");
        assert!(!from.is_empty());
        for peer in from {
            assert!(peer.ip_block.is_none(), "no ipBlock ingress: {peer:?}");
            let pod_label = peer
                .pod_selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
                .and_then(|l| l.get(NAME_LABEL));
            let ns_label = peer
                .namespace_selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
                .and_then(|l| l.get("kubernetes.io/metadata.name"));
            match (pod_label.map(String::as_str), ns_label.map(String::as_str)) {
                (Some("headlamp"), _) => headlamp = true,
                (None, Some("monitoring")) => monitoring = true,
                other => panic!("unexpected ingress peer {other:?}: {peer:?}"),
            }
        }
    }
    assert!(
        headlamp && monitoring,
        "ingress from Headlamp and monitoring"
    );

    let mut egress = BTreeSet::new();
    for rule in np.egress.as_deref().expect("egress rules") {
        let ports = rule
            .ports
            .as_deref()
            .expect("egress rules name their ports");
        assert!(
            !ports.is_empty(),
            "an egress rule without ports allows everything"
        );
        for p in ports {
            let Some(IntOrString::Int(n)) = p.port else {
                panic!("egress ports are numbers: {p:?}")
            };
            egress.insert((p.protocol.clone().unwrap_or("TCP".into()), n));
        }
    }
    let expected: BTreeSet<(String, i32)> = [("TCP", 443), ("TCP", 6443), ("UDP", 53), ("TCP", 53)]
        .into_iter()
        .map(|(p, n)| (p.to_string(), n))
        .collect();
    assert_eq!(egress, expected, "egress: API server and DNS only");
}

#[test]
fn containerfile_matches_the_deployment() {
    let m = load();
    let text = read("Containerfile");
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let has = |l: &str| lines.contains(&l);
    assert!(has("FROM gcr.io/distroless/static-debian12:nonroot"));
    assert!(has("USER 65532:65532"));
    assert!(has(&format!("EXPOSE {}", http_port(m.container()))));
    assert!(has(r#"ENTRYPOINT ["/kubemux"]"#));
    assert!(text.contains("--locked") && text.contains("x86_64-unknown-linux-musl"));
    let pod_uid = m.pod_spec().security_context.as_ref().unwrap().run_as_user;
    assert_eq!(pod_uid, Some(65532), "pod runAsUser is the image's USER");
}

#[test]
fn hpa_scales_the_deployment_on_cpu_and_connections() {
    let m = load();
    let hpa = m.hpa().spec.as_ref().expect("HPA spec");
    let deployment = m.deployment();
    assert_eq!(hpa.scale_target_ref.api_version.as_deref(), Some("apps/v1"));
    assert_eq!(hpa.scale_target_ref.kind, "Deployment");
    assert_eq!(
        Some(&hpa.scale_target_ref.name),
        deployment.metadata.name.as_ref(),
        "the HPA scales this Deployment"
    );
    let min = hpa.min_replicas.unwrap_or(1);
    assert!(
        min >= 2,
        "with the PDB's minAvailable 1, fewer than two replicas block a drain"
    );
    assert!(hpa.max_replicas > min);
    let replicas = deployment.spec.as_ref().unwrap().replicas.unwrap_or(1);
    assert!(
        (min..=hpa.max_replicas).contains(&replicas),
        "the Deployment's own replicas lie within the HPA's range"
    );
    let metrics = hpa.metrics.as_deref().expect("HPA metrics");
    let cpu = metrics
        .iter()
        .find_map(|m| m.resource.as_ref().filter(|r| r.name == "cpu"))
        .expect("a CPU metric");
    assert_eq!(cpu.target.type_, "Utilization");
    let requests = m
        .container()
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .expect("resource requests");
    assert!(
        requests.contains_key("cpu"),
        "CPU utilisation is relative to the container's CPU request"
    );
    // The Pods metric must be one kubemux exports (checked against the code's
    // own registry, not a copy of its name).
    let registry = kubemux::metrics::Metrics::new();
    registry
        .connections
        .get_or_create(&kubemux::metrics::Metrics::dialect("headlamp"))
        .inc();
    let exported = registry.encode();
    let pods_metric = metrics
        .iter()
        .find_map(|m| m.pods.as_ref())
        .expect("a per-pod connections metric");
    assert!(
        exported.contains(&format!("# TYPE {} gauge", pods_metric.metric.name)),
        "{} is a gauge kubemux exports",
        pods_metric.metric.name
    );
}
