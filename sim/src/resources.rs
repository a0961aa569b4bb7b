//! The static table of resource types the simulated API server serves.
//!
//! Everything else (routing, discovery, the store, watch channels) is driven
//! from this table, so serving a new resource type is a one-line change.

/// One served resource type, as the Kubernetes discovery API describes it.
#[derive(Debug, PartialEq, Eq)]
pub struct ResourceDef {
    /// API group; `""` for the core (legacy `/api/v1`) group.
    pub group: &'static str,
    /// API version within the group.
    pub version: &'static str,
    /// Lower-case plural name used in URLs (`pods`).
    pub plural: &'static str,
    /// Object kind (`Pod`); the list kind is `{kind}List`.
    pub kind: &'static str,
    /// Whether objects live inside a namespace.
    pub namespaced: bool,
    /// Field-selector paths accepted beyond `metadata.name` and
    /// `metadata.namespace`, mirroring the real server's per-type field sets.
    pub extra_fields: &'static [&'static str],
    /// Whether DELETE answers with the deleted object (true) or with a
    /// `Status` of `Success` (false), as the real registry does per type.
    pub delete_returns_object: bool,
    /// A virtual, create-only review type (TokenReview, SubjectAccessReview):
    /// nothing is stored, POST answers with the evaluated review.
    pub create_only: bool,
}

impl ResourceDef {
    /// The `apiVersion` written into objects: `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The name used in error messages: `pods` or `deployments.apps`.
    pub fn qualified_name(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether `path` may be used in a field selector for this type.
    pub fn supports_field(&self, path: &str) -> bool {
        matches!(path, "metadata.name" | "metadata.namespace") || self.extra_fields.contains(&path)
    }
}

/// Every resource type the simulator serves.
pub static RESOURCES: &[ResourceDef] = &[
    core("namespaces", "Namespace", false, &["status.phase"], true),
    core("nodes", "Node", false, &["spec.unschedulable"], true),
    core(
        "pods",
        "Pod",
        true,
        &[
            "spec.nodeName",
            "spec.hostNetwork",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        true,
    ),
    core("services", "Service", true, &[], true),
    core("configmaps", "ConfigMap", true, &[], false),
    core("secrets", "Secret", true, &["type"], false),
    core("resourcequotas", "ResourceQuota", true, &[], true),
    grouped("apps", "v1", "deployments", "Deployment", true),
    review("authentication.k8s.io", "tokenreviews", "TokenReview"),
    review(
        "authorization.k8s.io",
        "subjectaccessreviews",
        "SubjectAccessReview",
    ),
];

const fn core(
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    extra_fields: &'static [&'static str],
    delete_returns_object: bool,
) -> ResourceDef {
    ResourceDef {
        group: "",
        version: "v1",
        plural,
        kind,
        namespaced,
        extra_fields,
        delete_returns_object,
        create_only: false,
    }
}

const fn grouped(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
) -> ResourceDef {
    ResourceDef {
        group,
        version,
        plural,
        kind,
        namespaced,
        extra_fields: &[],
        delete_returns_object: true,
        create_only: false,
    }
}

const fn review(group: &'static str, plural: &'static str, kind: &'static str) -> ResourceDef {
    ResourceDef {
        group,
        version: "v1",
        plural,
        kind,
        namespaced: false,
        extra_fields: &[],
        delete_returns_object: false,
        create_only: true,
    }
}

/// Looks a resource up by its plural name (unique across the table).
pub fn by_plural(plural: &str) -> Option<&'static ResourceDef> {
    RESOURCES.iter().find(|r| r.plural == plural)
}

/// Looks a resource up by group, version and plural, as a URL names it.
pub fn by_path(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resources served under one group/version, in table order.
pub fn in_group_version<'a>(
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'static ResourceDef> + 'a {
    RESOURCES
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}

/// Distinct non-core groups with their versions, in table order.
pub fn groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        match out.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, versions)) if !versions.contains(&r.version) => versions.push(r.version),
            Some(_) => {}
            None => out.push((r.group, vec![r.version])),
        }
    }
    out
}
