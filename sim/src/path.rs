//! Maps `/api/...` and `/apis/...` URL paths onto resources, the way the real
//! server's REST mapping does.

use percent_encoding::percent_decode_str;

use crate::error::ApiError;
use crate::resources::{ResourceDef, by_path};

/// What an API path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiPath {
    /// `/apis/{group}`: an APIGroup document.
    Group(String),
    /// `/api/v1` or `/apis/{group}/{version}`: an APIResourceList.
    Resources {
        /// `""` for core.
        group: String,
        /// The version.
        version: String,
    },
    /// A collection, across namespaces when `namespace` is `None`.
    Collection {
        /// The resource type.
        def: &'static ResourceDef,
        /// Namespace scope.
        namespace: Option<String>,
    },
    /// One named object.
    Object {
        /// The resource type.
        def: &'static ResourceDef,
        /// Its namespace (namespaced types only).
        namespace: Option<String>,
        /// Its name.
        name: String,
    },
    /// A legacy watch path, `.../watch/[namespaces/{ns}/]{plural}[/{name}]`:
    /// always a watch (no `watch=1` needed), of one object when named.
    /// Deprecated on real servers but still served, so proxies that forward
    /// such paths must be tested against them.
    Watch {
        /// The resource type.
        def: &'static ResourceDef,
        /// Namespace scope.
        namespace: Option<String>,
        /// The one object watched, like `fieldSelector=metadata.name=...`.
        name: Option<String>,
    },
}

/// Parses the part after `/api/` (`core = true`) or `/apis/`.
pub fn parse(core: bool, rest: &str) -> Result<ApiPath, ApiError> {
    let segments: Vec<String> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let (group, version, tail) = match (core, segments.as_slice()) {
        (true, [version, tail @ ..]) => (String::new(), version.clone(), tail),
        (false, [group]) => return Ok(ApiPath::Group(group.clone())),
        (false, [group, version, tail @ ..]) => (group.clone(), version.clone(), tail),
        _ => return Err(ApiError::unknown_resource()),
    };
    let lookup =
        |plural: &str| by_path(&group, &version, plural).ok_or_else(ApiError::unknown_resource);
    if let [watch, rest @ ..] = tail
        && watch == "watch"
    {
        return match resource_path(rest, lookup)? {
            Some(ApiPath::Collection { def, namespace }) if !def.create_only => {
                Ok(ApiPath::Watch {
                    def,
                    namespace,
                    name: None,
                })
            }
            Some(ApiPath::Object {
                def,
                namespace,
                name,
            }) if !def.create_only => Ok(ApiPath::Watch {
                def,
                namespace,
                name: Some(name),
            }),
            _ => Err(ApiError::unknown_resource()),
        };
    }
    match tail {
        [] => Ok(ApiPath::Resources { group, version }),
        rest => resource_path(rest, lookup)?.ok_or_else(ApiError::unknown_resource),
    }
}

/// A collection or object path below `/api/v1` or `/apis/{group}/{version}`;
/// `None` if `tail` is empty.
fn resource_path(
    tail: &[String],
    lookup: impl Fn(&str) -> Result<&'static ResourceDef, ApiError>,
) -> Result<Option<ApiPath>, ApiError> {
    let scoped = |def: &'static ResourceDef| {
        if def.namespaced {
            Ok(def)
        } else {
            Err(ApiError::unknown_resource())
        }
    };
    let path = match tail {
        [] => return Ok(None),
        [plural] => Ok(ApiPath::Collection {
            def: lookup(plural)?,
            namespace: None,
        }),
        [ns_word, namespace, plural] if ns_word == "namespaces" => {
            let def = lookup(plural)?;
            Ok(ApiPath::Collection {
                def: scoped(def)?,
                namespace: Some(namespace.clone()),
            })
        }
        [ns_word, namespace, plural, name] if ns_word == "namespaces" => {
            let def = lookup(plural)?;
            Ok(ApiPath::Object {
                def: scoped(def)?,
                namespace: Some(namespace.clone()),
                name: name.clone(),
            })
        }
        [plural, name] => {
            let def = lookup(plural)?;
            if def.namespaced {
                return Err(ApiError::unknown_resource());
            }
            Ok(ApiPath::Object {
                def,
                namespace: None,
                name: name.clone(),
            })
        }
        _ => Err(ApiError::unknown_resource()),
    };
    path.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plural(path: &ApiPath) -> (&'static str, Option<&str>, Option<&str>) {
        match path {
            ApiPath::Collection { def, namespace } => (def.plural, namespace.as_deref(), None),
            ApiPath::Object {
                def,
                namespace,
                name,
            } => (def.plural, namespace.as_deref(), Some(name)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn maps_paths() {
        let p = |core, rest| parse(core, rest).expect(rest);
        assert_eq!(plural(&p(true, "v1/pods")), ("pods", None, None));
        assert_eq!(
            plural(&p(true, "v1/namespaces")),
            ("namespaces", None, None)
        );
        assert_eq!(
            plural(&p(true, "v1/namespaces/default")),
            ("namespaces", None, Some("default"))
        );
        assert_eq!(
            plural(&p(true, "v1/namespaces/a/pods")),
            ("pods", Some("a"), None)
        );
        assert_eq!(
            plural(&p(true, "v1/namespaces/a/pods/x")),
            ("pods", Some("a"), Some("x"))
        );
        assert_eq!(plural(&p(true, "v1/nodes/n1")), ("nodes", None, Some("n1")));
        assert_eq!(
            plural(&p(false, "apps/v1/namespaces/a/deployments")),
            ("deployments", Some("a"), None)
        );
        assert_eq!(p(false, "apps"), ApiPath::Group("apps".into()));
        assert!(parse(true, "v1/pods/x").is_err());
        assert!(parse(true, "v1/namespaces/a/nodes").is_err());
        assert!(parse(true, "v1/widgets").is_err());
        assert!(parse(false, "apps/v1/pods").is_err());
        assert!(parse(true, "v1/namespaces/a/pods/x/status").is_err());
    }

    #[test]
    fn maps_legacy_watch_paths() {
        let watch = |core, rest| match parse(core, rest).expect(rest) {
            ApiPath::Watch {
                def,
                namespace,
                name,
            } => (def.plural, namespace, name),
            other => panic!("{rest}: unexpected {other:?}"),
        };
        assert_eq!(watch(true, "v1/watch/pods"), ("pods", None, None));
        assert_eq!(
            watch(true, "v1/watch/namespaces/a/pods"),
            ("pods", Some("a".into()), None)
        );
        assert_eq!(
            watch(true, "v1/watch/namespaces/a/pods/x"),
            ("pods", Some("a".into()), Some("x".into()))
        );
        assert_eq!(
            watch(true, "v1/watch/namespaces/a"),
            ("namespaces", None, Some("a".into()))
        );
        assert_eq!(
            watch(false, "apps/v1/watch/namespaces/a/deployments"),
            ("deployments", Some("a".into()), None)
        );
        assert!(parse(true, "v1/watch").is_err());
        assert!(parse(true, "v1/watch/widgets").is_err());
        assert!(parse(true, "v1/watch/pods/x").is_err());
        assert!(parse(false, "authentication.k8s.io/v1/watch/tokenreviews").is_err());
    }
}
