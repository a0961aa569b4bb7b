//! The one grammar of Kubernetes API paths that kubemux accepts, for REST
//! GETs (`/clusters/{cluster}/{path}`) and watch subscriptions alike.
//!
//! Every rule kubemux applies to a path (secrets in `--auth none`, the
//! reviews of `shared` and `passthrough`, watchable collections only) is
//! applied to what this parser read, and the path forwarded is the one it
//! read: a spelling it does not understand is refused, never guessed at,
//! because a guess that differs from the API server's is a bypass.
//!
//! Refused outright:
//! - the legacy watch paths (`/api/v1/watch/…`, `/apis/<g>/<v>/watch/…`)
//!   and legacy proxy paths (`…/proxy/…`): the API server still serves
//!   them, as a watch of the collection after the `watch` segment. kubemux
//!   refuses them rather than rewriting them to `?watch=1`: no client of
//!   kubemux needs them (deprecated since Kubernetes 1.11; Headlamp never
//!   sends them) and a second spelling of every watch is a second place
//!   for a rule to be missed. The error names the spelling to use.
//! - the connect subresources (`proxy`, `exec`, `attach`, `portforward`):
//!   they reach into nodes, pods and services rather than reading the API,
//!   and kubemux is a read-only view of the API.
//! - anything outside the characters Kubernetes names and paths use, empty
//!   or relative segments, and upper-case resource names (resources are
//!   lower-case; the API server matches them exactly, so a differently
//!   cased spelling could only mean something to a server kubemux cannot
//!   reason about).

/// A parsed collection path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourcePath {
    /// API group, empty for the core group.
    pub group: String,
    /// API version.
    pub version: String,
    /// Namespace, for a namespaced collection.
    pub namespace: Option<String>,
    /// Plural resource name.
    pub resource: String,
}

/// Why a path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is empty.
    #[error("missing or empty field: path")]
    Missing,
    /// The path is not one kubemux serves.
    #[error("path {path:?} is not a watchable collection: {why}")]
    BadPath {
        /// The offending path (truncated).
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// Longest accepted path.
const MAX_PATH: usize = 512;

const OBJECT_NAMES_ONLY: &str = "':' is only allowed in object names";

/// Subresources that connect to a node, pod or service instead of reading
/// the API.
const CONNECT_SUBRESOURCES: [&str; 4] = ["proxy", "exec", "attach", "portforward"];

/// What an API path addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiPath {
    /// Discovery: `/version`, `/api`, `/apis`, `/api/<v>`, `/apis/<g>`,
    /// `/apis/<g>/<v>`.
    Discovery,
    /// A collection, one object in it, or one of its subresources.
    Resource {
        /// The collection (the namespace is the object's, if any).
        collection: ResourcePath,
        /// The object's name, unless the path names the collection.
        name: Option<String>,
        /// The subresource (`status`, `log`, …), if any.
        subresource: Option<String>,
    },
}

impl ApiPath {
    /// The collection the path is about, unless it is discovery.
    pub fn collection(&self) -> Option<&ResourcePath> {
        match self {
            ApiPath::Discovery => None,
            ApiPath::Resource { collection, .. } => Some(collection),
        }
    }
}

/// Parses a collection path: [`parse`], narrowed to collections (what a
/// watch subscription may name).
pub fn parse_collection(path: &str) -> Result<ResourcePath, PathError> {
    let bad = |why| PathError::BadPath {
        path: path.chars().take(100).collect(),
        why,
    };
    match parse(path)? {
        ApiPath::Resource {
            collection,
            name: None,
            subresource: None,
        } => Ok(collection),
        ApiPath::Discovery => Err(bad("names an API version or group, not a collection")),
        ApiPath::Resource {
            subresource: Some(_),
            ..
        } => Err(bad("names a subresource, not a collection")),
        ApiPath::Resource { .. } => Err(bad("names a single object, not a collection")),
    }
}

/// Parses `path` (starting with `/`) as kubemux understands it.
pub fn parse(path: &str) -> Result<ApiPath, PathError> {
    let bad = |why| PathError::BadPath {
        path: path.chars().take(100).collect(),
        why,
    };
    if path.is_empty() {
        return Err(PathError::Missing);
    }
    if path.len() > MAX_PATH {
        return Err(bad("too long"));
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| bad("must start with /"))?;
    if rest.contains('?') || rest.contains('#') {
        return Err(bad("query belongs in the query field"));
    }
    let segments: Vec<&str> = rest.split('/').collect();
    for s in &segments {
        if s.is_empty() {
            return Err(bad("empty path segment"));
        }
        if *s == "." || *s == ".." {
            return Err(bad("relative segments are not allowed"));
        }
        // `:` appears in object names (`system:basic-user`), nowhere else;
        // it is checked per position below.
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'))
        {
            return Err(bad(
                "segments may only hold letters, digits, '-', '.' and '_' (and ':' in object names)",
            ));
        }
    }
    let (group, version, tail) = match segments.as_slice() {
        ["version"] | ["api"] | ["apis"] | ["apis", _] => ("", "", &[][..]),
        ["api", version, tail @ ..] => ("", *version, tail),
        ["apis", group, version, tail @ ..] => (*group, *version, tail),
        _ => {
            return Err(bad(
                "must start with /api/<version>/ or /apis/<group>/<version>/",
            ));
        }
    };
    if let Some(first) = tail.first()
        && matches!(*first, "watch" | "proxy")
    {
        return Err(bad(
            "the legacy /watch/ and /proxy/ paths are not served: watch the collection itself with watch=1 (and fieldSelector=metadata.name=<name> for one object)",
        ));
    }
    let (namespace, resource, object) = match tail {
        [] => {
            if segments.iter().any(|s| s.contains(':')) {
                return Err(bad(OBJECT_NAMES_ONLY));
            }
            return Ok(ApiPath::Discovery);
        }
        ["namespaces", ns, resource, object @ ..] => (Some(*ns), *resource, object),
        [resource, object @ ..] => (None, *resource, object),
    };
    let (name, subresource) = match object {
        [] => (None, None),
        [name] => (Some(*name), None),
        [name, sub] => (Some(*name), Some(*sub)),
        _ => return Err(bad("names a path below a subresource")),
    };
    if [
        Some(group),
        Some(version),
        namespace,
        Some(resource),
        subresource,
    ]
    .into_iter()
    .flatten()
    .any(|s| s.contains(':'))
    {
        return Err(bad(OBJECT_NAMES_ONLY));
    }
    let lower = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
    };
    if !lower(resource) || !subresource.is_none_or(lower) {
        return Err(bad("resource names are lower-case"));
    }
    if let Some(sub) = subresource
        && CONNECT_SUBRESOURCES.contains(&sub)
    {
        return Err(bad(
            "kubemux is read-only: the connect subresources (proxy, exec, attach, portforward) are not served",
        ));
    }
    Ok(ApiPath::Resource {
        collection: ResourcePath {
            group: group.to_string(),
            version: version.to_string(),
            namespace: namespace.map(str::to_string),
            resource: resource.to_string(),
        },
        name: name.map(str::to_string),
        subresource: subresource.map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(
        path: &str,
    ) -> (
        String,
        Option<String>,
        String,
        Option<String>,
        Option<String>,
    ) {
        match parse(path).expect(path) {
            ApiPath::Resource {
                collection,
                name,
                subresource,
            } => (
                collection.group,
                collection.namespace,
                collection.resource,
                name,
                subresource,
            ),
            ApiPath::Discovery => panic!("{path} parsed as discovery"),
        }
    }

    #[test]
    fn reads_collections_objects_and_subresources() {
        let s = |v: &str| v.to_string();
        assert_eq!(
            resource("/api/v1/namespaces/a/secrets/s"),
            (s(""), Some(s("a")), s("secrets"), Some(s("s")), None)
        );
        assert_eq!(
            resource("/api/v1/namespaces/a/pods/p/log"),
            (s(""), Some(s("a")), s("pods"), Some(s("p")), Some(s("log")))
        );
        assert_eq!(
            resource("/api/v1/namespaces/a"),
            (s(""), None, s("namespaces"), Some(s("a")), None)
        );
        assert_eq!(
            resource("/apis/rbac.authorization.k8s.io/v1/clusterroles/system:basic-user"),
            (
                s("rbac.authorization.k8s.io"),
                None,
                s("clusterroles"),
                Some(s("system:basic-user")),
                None
            )
        );
        for discovery in [
            "/version",
            "/api",
            "/apis",
            "/api/v1",
            "/apis/apps",
            "/apis/apps/v1",
        ] {
            assert_eq!(parse(discovery), Ok(ApiPath::Discovery), "{discovery}");
        }
    }

    #[test]
    fn refuses_what_it_cannot_read_exactly() {
        for path in [
            // The legacy watch and proxy paths: the API server reads
            // `watch` as a verb, not as a resource.
            "/api/v1/watch/secrets",
            "/api/v1/watch/namespaces/a/secrets",
            "/api/v1/watch/namespaces/a/secrets/s",
            "/apis/apps/v1/watch/deployments",
            "/api/v1/proxy/namespaces/a/services/s",
            // Connect subresources.
            "/api/v1/namespaces/a/services/s/proxy",
            "/api/v1/nodes/n/proxy",
            "/api/v1/namespaces/a/pods/p/exec",
            "/api/v1/namespaces/a/pods/p/proxy/metrics",
            // Shapes and spellings.
            "/api/v1/Secrets",
            "/api/v1/namespaces/a:b/pods",
            "/api/v1:x",
            "/api/v1/../../etc",
            "/metrics",
            "/api//v1",
            "/api/v1/pods?x=1",
            "/api/v1/pods/",
            "api/v1/pods",
        ] {
            assert!(
                matches!(parse(path), Err(PathError::BadPath { .. })),
                "{path}: {:?}",
                parse(path)
            );
        }
        let legacy = parse("/api/v1/watch/secrets").unwrap_err().to_string();
        assert!(
            legacy.contains("legacy") && legacy.contains("watch=1"),
            "{legacy}"
        );
    }
}
