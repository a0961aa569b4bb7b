//! Watch keys: what a subscription watches, independent of where the client is.
//!
//! Two requests share an upstream watch when cluster, path and the parameters
//! that select objects (`labelSelector`, `fieldSelector`) are the same after
//! normalisation. Parameters that describe the client's position in the
//! stream (`resourceVersion`, `timeoutSeconds`, …) are split off into
//! [`ClientParams`].

use std::fmt;
use std::sync::Arc;

use kubemux_vocab::path::ResourcePath;
use kubemux_vocab::path::{self, PathError};

/// What a shared upstream watch is for.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct WatchKey {
    cluster: Arc<str>,
    path: Arc<str>,
    selectors: Arc<str>,
    identity: Option<Arc<str>>,
}

impl fmt::Debug for WatchKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}?{}", self.cluster, self.path, self.selectors)
    }
}

impl WatchKey {
    /// The cluster id.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The collection path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The canonical selector query, possibly empty.
    pub fn selectors(&self) -> &str {
        &self.selectors
    }

    /// The key of a whole collection, without selectors or identity.
    pub(super) fn collection(cluster: &str, path: &str) -> Self {
        WatchKey {
            cluster: cluster.into(),
            path: path.into(),
            selectors: "".into(),
            identity: None,
        }
    }

    /// The upstream identity the watch is restricted to, if any (a hash).
    pub fn identity(&self) -> Option<&str> {
        self.identity.as_deref()
    }

    /// Restricts sharing to one upstream identity (a hash, never a token).
    pub fn with_identity(mut self, identity: Option<Arc<str>>) -> Self {
        self.identity = identity;
        self
    }

    /// A short stable hash for logs, so keys can be correlated without
    /// printing selectors.
    pub fn short_hash(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut h);
        format!("{:08x}", h.finish() as u32)
    }
}

/// Where in the stream a subscriber wants to start, and how it wants to be served.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientParams {
    /// `resourceVersion` as sent, if any.
    pub resource_version: Option<String>,
    /// `resourceVersionMatch` as sent, if any.
    pub resource_version_match: Option<String>,
    /// Whether the client asked for bookmarks.
    pub allow_bookmarks: bool,
    /// The client's own deadline for this watch.
    pub timeout_seconds: Option<u64>,
    /// Watch-list semantics: initial state, then an end-of-initial-events bookmark.
    pub send_initial_events: bool,
    /// `watch` was true: a REST GET with it is a watch stream, not a LIST.
    pub watch: bool,
}

/// Why a request cannot be turned into a watch key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A required field is missing or empty.
    #[error("missing or empty field: {0}")]
    Missing(&'static str),
    /// The path is not a watchable collection.
    #[error("path {path:?} is not a watchable collection: {why}")]
    BadPath {
        /// The offending path (truncated).
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A query parameter kubemux does not know.
    #[error("unknown query parameter {0:?}")]
    UnknownParam(String),
    /// A query parameter given twice.
    #[error("query parameter {0:?} given more than once")]
    DuplicateParam(String),
    /// A parameter with an unacceptable value.
    #[error("invalid value for {name}: {why}")]
    BadValue {
        /// The parameter.
        name: &'static str,
        /// What is wrong with its value.
        why: String,
    },
}

impl From<PathError> for KeyError {
    fn from(err: PathError) -> Self {
        match err {
            PathError::Missing => KeyError::Missing("path"),
            PathError::BadPath { path, why } => KeyError::BadPath { path, why },
        }
    }
}

const MAX_QUERY: usize = 4096;

/// Parses and validates a collection path ([`path::parse_collection`],
/// the grammar REST GETs go through too, narrowed to collections).
pub fn parse_path(path: &str) -> Result<ResourcePath, KeyError> {
    Ok(path::parse_collection(path)?)
}

fn parse_bool(name: &'static str, value: &str) -> Result<bool, KeyError> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" | "" => Ok(false),
        other => Err(KeyError::BadValue {
            name,
            why: format!("expected true or false, got {:?}", truncate(other)),
        }),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A LIST's own parameters, read by [`normalize_list`]: what decides
/// whether a shared watch's store may answer it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListParams {
    /// `resourceVersion` as sent, if any.
    pub resource_version: Option<String>,
    /// `resourceVersionMatch` as sent, if any.
    pub resource_version_match: Option<String>,
    /// `limit`, if given (0 means no limit, as the API server reads it).
    pub limit: Option<u64>,
    /// `continue`, if given: a token of the cluster's own.
    pub continue_token: Option<String>,
}

/// Whether a query is read as a watch or as a LIST.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verb {
    Watch,
    List,
}

/// What [`read`] found besides the key and the watch parameters.
#[derive(Default)]
struct Extra {
    /// `sendInitialEvents` present at all, `false` included: the API
    /// server's `*bool`.
    initial_events_given: bool,
    list: ListParams,
}

/// Splits a request into its watch key and the subscriber's own parameters,
/// with the API server's rules for a watch's options.
pub fn normalize(
    cluster: &str,
    path: &str,
    query: &str,
) -> Result<(WatchKey, ResourcePath, ClientParams), KeyError> {
    let (key, resource, params, extra) = read(cluster, path, query, Verb::Watch)?;
    // The API server's own rules for a watch's options (it answers 422).
    match (
        extra.initial_events_given,
        params.resource_version_match.as_deref(),
    ) {
        (false, Some(_)) => {
            return Err(KeyError::BadValue {
                name: "resourceVersionMatch",
                why: "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"
                    .into(),
            });
        }
        (_, Some(other)) if other != "NotOlderThan" => {
            return Err(KeyError::BadValue {
                name: "resourceVersionMatch",
                why: format!(
                    "{other:?} is not supported for watch: supported values: \"NotOlderThan\""
                ),
            });
        }
        (true, None) => {
            return Err(KeyError::BadValue {
                name: "sendInitialEvents",
                why: "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"
                    .into(),
            });
        }
        _ => {}
    }
    Ok((key, resource, params))
}

/// Splits a LIST request (no `watch`, or `watch=false`) into its watch key
/// and its own parameters, with the API server's rules for a list's options
/// (apimachinery's `ValidateListOptions`): a combination it answers with
/// 422 is an error here, so that the cluster gives that answer itself.
pub fn normalize_list(
    cluster: &str,
    path: &str,
    query: &str,
) -> Result<(WatchKey, ResourcePath, ListParams), KeyError> {
    let (key, resource, params, extra) = read(cluster, path, query, Verb::List)?;
    let invalid = |why: &str| {
        Err(KeyError::BadValue {
            name: "resourceVersionMatch",
            why: why.into(),
        })
    };
    if params.watch {
        return Err(KeyError::BadValue {
            name: "watch",
            why: "a watch is not a LIST".into(),
        });
    }
    if extra.initial_events_given {
        return Err(KeyError::BadValue {
            name: "sendInitialEvents",
            why: "sendInitialEvents is forbidden for list".into(),
        });
    }
    let list = extra.list;
    if let Some(rv_match) = list.resource_version_match.as_deref() {
        if list.resource_version.is_none() {
            return invalid("resourceVersionMatch is forbidden unless resourceVersion is provided");
        }
        if list.continue_token.is_some() {
            return invalid("resourceVersionMatch is forbidden when continue is provided");
        }
        if rv_match == "Exact" && list.resource_version.as_deref() == Some("0") {
            return invalid(
                "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            );
        }
    }
    Ok((key, resource, list))
}

/// Reads a query for `verb`: the key's selectors, the subscriber's
/// parameters and the rest, refusing what neither the watch nor the list
/// grammar knows.
fn read(
    cluster: &str,
    path: &str,
    query: &str,
    verb: Verb,
) -> Result<(WatchKey, ResourcePath, ClientParams, Extra), KeyError> {
    if cluster.is_empty() {
        return Err(KeyError::Missing("clusterId"));
    }
    let resource = parse_path(path)?;
    let query = query.strip_prefix('?').unwrap_or(query);
    if query.len() > MAX_QUERY {
        return Err(KeyError::BadValue {
            name: "query",
            why: format!("longer than {MAX_QUERY} bytes"),
        });
    }
    let mut params = ClientParams::default();
    let mut extra = Extra::default();
    let mut label: Option<String> = None;
    let mut field: Option<String> = None;
    let mut seen: Vec<String> = Vec::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if seen.iter().any(|s| *s == name) {
            return Err(KeyError::DuplicateParam(truncate(&name)));
        }
        seen.push(name.to_string());
        match name.as_ref() {
            "labelSelector" => label = Some(selector::canonical_labels(&value)?),
            "fieldSelector" => field = Some(selector::canonical_fields(&value)?),
            "watch" => {
                params.watch = parse_bool("watch", &value)?;
                if verb == Verb::Watch && !params.watch && !value.is_empty() {
                    return Err(KeyError::BadValue {
                        name: "watch",
                        why: "only watches are served here".into(),
                    });
                }
            }
            "resourceVersion" => {
                if value.len() > 64 {
                    return Err(KeyError::BadValue {
                        name: "resourceVersion",
                        why: "longer than 64 characters".into(),
                    });
                }
                if !value.is_empty() {
                    params.resource_version = Some(value.into_owned());
                }
            }
            "resourceVersionMatch" => match value.as_ref() {
                "" => {}
                "NotOlderThan" | "Exact" => {
                    params.resource_version_match = Some(value.into_owned())
                }
                other => {
                    return Err(KeyError::BadValue {
                        name: "resourceVersionMatch",
                        why: format!("expected NotOlderThan or Exact, got {:?}", truncate(other)),
                    });
                }
            },
            "allowWatchBookmarks" => {
                params.allow_bookmarks = parse_bool("allowWatchBookmarks", &value)?
            }
            "sendInitialEvents" => {
                params.send_initial_events = parse_bool("sendInitialEvents", &value)?;
                extra.initial_events_given = true;
            }
            "timeoutSeconds" => {
                let secs = value.parse::<u64>().map_err(|_| KeyError::BadValue {
                    name: "timeoutSeconds",
                    why: format!(
                        "expected a whole number of seconds, got {:?}",
                        truncate(&value)
                    ),
                })?;
                params.timeout_seconds = Some(secs);
            }
            "limit" if verb == Verb::List => {
                let limit = value.parse::<u64>().map_err(|_| KeyError::BadValue {
                    name: "limit",
                    why: format!("expected a whole number, got {:?}", truncate(&value)),
                })?;
                extra.list.limit = Some(limit);
            }
            "continue" if verb == Verb::List => {
                if !value.is_empty() {
                    extra.list.continue_token = Some(value.into_owned());
                }
            }
            // List-only parameters that a watch ignores, as the API server does.
            "limit" | "pretty" => {}
            other => return Err(KeyError::UnknownParam(truncate(other))),
        }
    }
    extra.list.resource_version = params.resource_version.clone();
    extra.list.resource_version_match = params.resource_version_match.clone();
    let mut selectors = form_urlencoded::Serializer::new(String::new());
    if let Some(f) = field.filter(|f| !f.is_empty()) {
        selectors.append_pair("fieldSelector", &f);
    }
    if let Some(l) = label.filter(|l| !l.is_empty()) {
        selectors.append_pair("labelSelector", &l);
    }
    let key = WatchKey {
        cluster: cluster.into(),
        path: path.into(),
        selectors: selectors.finish().into(),
        identity: None,
    };
    Ok((key, resource, params, extra))
}

/// Canonical forms of label and field selectors, so that equivalent selectors
/// written differently share one upstream watch.
pub(super) mod selector {
    use super::KeyError;

    /// Splits at commas outside parentheses (each term trimmed); `None`
    /// when the parentheses do not balance.
    pub(in crate::hub) fn terms(s: &str) -> Option<Vec<&str>> {
        let mut out = Vec::new();
        let mut depth = 0i32;
        let mut start = 0;
        for (i, c) in s.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth < 0 {
                        return None;
                    }
                }
                ',' if depth == 0 => {
                    out.push(s[start..i].trim());
                    start = i + 1;
                }
                _ => {}
            }
        }
        if depth != 0 {
            return None;
        }
        out.push(s[start..].trim());
        Some(out)
    }

    fn bad(name: &'static str, why: &str) -> KeyError {
        KeyError::BadValue {
            name,
            why: why.to_string(),
        }
    }

    fn valid_token(t: &str) -> bool {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
    }

    fn valid_value(t: &str) -> bool {
        t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    }

    /// `a==1, b in (y,x)` → `a=1,b in (x,y)`, terms sorted.
    pub fn canonical_labels(s: &str) -> Result<String, KeyError> {
        const NAME: &str = "labelSelector";
        if s.trim().is_empty() {
            return Ok(String::new());
        }
        let mut out = Vec::new();
        for term in terms(s).ok_or_else(|| bad(NAME, "unbalanced parentheses"))? {
            if term.is_empty() {
                return Err(bad(NAME, "empty term"));
            }
            out.push(canonical_label_term(term)?);
        }
        out.sort();
        out.dedup();
        Ok(out.join(","))
    }

    fn canonical_label_term(term: &str) -> Result<String, KeyError> {
        const NAME: &str = "labelSelector";
        if let Some(key) = term.strip_prefix('!') {
            let key = key.trim();
            if !valid_token(key) {
                return Err(bad(NAME, &format!("invalid key in {term:?}")));
            }
            return Ok(format!("!{key}"));
        }
        for (op, canon) in [("!=", "!="), ("==", "="), ("=", "=")] {
            if let Some((k, v)) = term.split_once(op) {
                let (k, v) = (k.trim(), v.trim());
                if !valid_token(k) || !valid_value(v) {
                    return Err(bad(NAME, &format!("invalid term {term:?}")));
                }
                return Ok(format!("{k}{canon}{v}"));
            }
        }
        let words: Vec<&str> = term.splitn(2, char::is_whitespace).collect();
        if let [key, rest] = words.as_slice() {
            let rest = rest.trim();
            for op in ["notin", "in"] {
                if let Some(set) = rest.strip_prefix(op) {
                    let set = set.trim();
                    let inner = set
                        .strip_prefix('(')
                        .and_then(|s| s.strip_suffix(')'))
                        .ok_or_else(|| bad(NAME, &format!("expected a (set) in {term:?}")))?;
                    let mut values: Vec<&str> = inner.split(',').map(str::trim).collect();
                    if !valid_token(key) || values.iter().any(|v| !valid_value(v)) {
                        return Err(bad(NAME, &format!("invalid term {term:?}")));
                    }
                    values.sort_unstable();
                    values.dedup();
                    return Ok(format!("{key} {op} ({})", values.join(",")));
                }
            }
            return Err(bad(NAME, &format!("unknown operator in {term:?}")));
        }
        if valid_token(term) {
            return Ok(term.to_string());
        }
        Err(bad(NAME, &format!("invalid term {term:?}")))
    }

    /// `metadata.name==x,status.phase!=y` → terms with `=`/`!=`, sorted.
    pub fn canonical_fields(s: &str) -> Result<String, KeyError> {
        const NAME: &str = "fieldSelector";
        if s.trim().is_empty() {
            return Ok(String::new());
        }
        let mut out = Vec::new();
        for term in s.split(',').map(str::trim) {
            let parsed = ["!=", "==", "="].iter().find_map(|op| {
                term.split_once(op)
                    .map(|(k, v)| (k.trim(), if *op == "!=" { "!=" } else { "=" }, v.trim()))
            });
            let (k, op, v) =
                parsed.ok_or_else(|| bad(NAME, &format!("expected field=value in {term:?}")))?;
            // A value holding `=` would be re-read differently once written
            // as `k=v` (`a===b` means a == "=b", but `a==b` means a == "b"),
            // so two different selectors could share one key. Field values
            // kubemux can select on (names, namespaces, phases) never hold one.
            if !valid_token(k) || v.contains(['(', ')', ' ', '=']) {
                return Err(bad(NAME, &format!("invalid term {term:?}")));
            }
            out.push(format!("{k}{op}{v}"));
        }
        out.sort();
        out.dedup();
        Ok(out.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(q: &str) -> WatchKey {
        normalize("c", "/api/v1/pods", q).unwrap().0
    }

    /// An assertion, per input, that `read` refuses it with an error `want` accepts.
    fn refuses<T: fmt::Debug>(
        read: impl Fn(&str) -> Result<T, KeyError>,
        want: fn(&KeyError) -> bool,
    ) -> impl Fn(&str) {
        move |input| match read(input) {
            Err(err) if want(&err) => {}
            other => panic!("{input}: {other:?}"),
        }
    }

    #[test]
    fn position_parameters_do_not_split_keys() {
        assert_eq!(
            key("watch=1&resourceVersion=5"),
            key("resourceVersion=9&watch=true&allowWatchBookmarks=true&timeoutSeconds=30")
        );
        assert_eq!(key(""), key("watch=1"));
    }

    #[test]
    fn selectors_are_canonical() {
        assert_eq!(
            key("labelSelector=a%3D1%2Cb%3D2"),
            key("labelSelector=b==2,a=1")
        );
        assert_eq!(
            key("labelSelector=app+in+(y,x)"),
            key("labelSelector=app%20in%20(x,%20y)")
        );
        assert_ne!(key("labelSelector=a=1"), key("labelSelector=a=2"));
        assert_eq!(
            key("fieldSelector=status.phase%3DRunning&labelSelector=a=1"),
            key("labelSelector=a=1&fieldSelector=status.phase==Running")
        );
        assert_eq!(key("labelSelector="), key(""));
    }

    #[test]
    fn rejects_bad_requests_specifically() {
        assert!(matches!(
            normalize("", "/api/v1/pods", ""),
            Err(KeyError::Missing("clusterId"))
        ));
        [
            "/api/v1/namespaces/x/pods/y/exec",
            "/metrics",
            "/api/v1/../secrets",
            "/api/v1/namespaces/x",
            "api/v1/pods",
            "/api/v1//pods",
            "/api/v1",
            "/api/v1/pods?watch=1",
            "/api/v1/watch/secrets",
            "/api/v1/watch/namespaces/x/secrets",
            "/api/v1/namespaces/x/pods/y/log",
        ]
        .into_iter()
        .for_each(refuses(parse_path, |e| {
            matches!(e, KeyError::BadPath { .. })
        }));
        // Found by examples/fuzz (target `key`): a value starting with `=`
        // changed meaning in the canonical key.
        for selector in ["a%3D%3D%3Db", "metadata.name%3D%3Dx%3D%3Dy", "a%21%3D%3Db"] {
            assert!(
                matches!(
                    normalize("c", "/api/v1/pods", &format!("fieldSelector={selector}")),
                    Err(KeyError::BadValue { .. })
                ),
                "{selector}"
            );
        }
        assert_eq!(
            normalize("c", "/api/v1/pods", "foo=1").unwrap_err(),
            KeyError::UnknownParam("foo".into())
        );
        assert!(matches!(
            normalize("c", "/api/v1/pods", "watch=1&watch=1"),
            Err(KeyError::DuplicateParam(_))
        ));
        assert!(matches!(
            normalize("c", "/api/v1/pods", "timeoutSeconds=x"),
            Err(KeyError::BadValue { .. })
        ));
        assert!(matches!(
            normalize("c", "/api/v1/pods", "labelSelector=a%20in%20(b"),
            Err(KeyError::BadValue { .. })
        ));
        assert!(matches!(
            normalize("c", "/api/v1/pods", "watch=0"),
            Err(KeyError::BadValue { .. })
        ));
    }

    #[test]
    fn rejects_watch_options_the_api_server_rejects() {
        let refused = |query: &str| match normalize("c", "/api/v1/pods", query) {
            Err(KeyError::BadValue { name, why }) => format!("{name}: {why}"),
            other => panic!("{query}: {other:?}"),
        };
        assert!(
            refused("watch=1&resourceVersion=5&resourceVersionMatch=NotOlderThan")
                .contains("forbidden for watch unless sendInitialEvents is provided")
        );
        assert!(
            refused("watch=1&sendInitialEvents=true&resourceVersionMatch=Exact")
                .starts_with("resourceVersionMatch: \"Exact\" is not supported")
        );
        assert!(
            refused("watch=1&sendInitialEvents=false")
                .starts_with("sendInitialEvents: sendInitialEvents requires")
        );
        assert!(
            normalize(
                "c",
                "/api/v1/pods",
                "watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"
            )
            .is_ok()
        );
    }

    #[test]
    fn list_options_follow_validate_list_options() {
        let list = |query: &str| normalize_list("c", "/api/v1/pods", query);
        [
            "resourceVersionMatch=Exact",
            "resourceVersionMatch=NotOlderThan",
            "resourceVersion=0&resourceVersionMatch=Exact",
            "resourceVersion=5&resourceVersionMatch=NotOlderThan&continue=t",
            "resourceVersion=5&resourceVersionMatch=Bogus",
            "sendInitialEvents=true",
            "sendInitialEvents=false",
            "watch=1",
            "limit=-1",
        ]
        .into_iter()
        .for_each(refuses(list, |e| matches!(e, KeyError::BadValue { .. })));
        let (_, _, p) =
            list("resourceVersion=5&resourceVersionMatch=Exact&limit=2&watch=false").unwrap();
        assert_eq!(p.resource_version.as_deref(), Some("5"));
        assert_eq!(p.resource_version_match.as_deref(), Some("Exact"));
        assert_eq!(p.limit, Some(2));
        assert!(list("resourceVersion=0&resourceVersionMatch=NotOlderThan").is_ok());
        let (_, _, p) = list("continue=abc&limit=3").unwrap();
        assert_eq!(p.continue_token.as_deref(), Some("abc"));
        assert_eq!(
            list("labelSelector=a=1").unwrap().0,
            key("watch=1&labelSelector=a=1")
        );
        assert!(
            matches!(
                normalize("c", "/api/v1/pods", "watch=1&continue=abc"),
                Err(KeyError::UnknownParam(_))
            ),
            "a watch's grammar is unchanged"
        );
    }

    #[test]
    fn parses_paths() {
        let p = parse_path("/apis/apps/v1/namespaces/team-a/deployments").unwrap();
        assert_eq!(p.group, "apps");
        assert_eq!(p.namespace.as_deref(), Some("team-a"));
        assert_eq!(p.resource, "deployments");
        assert_eq!(
            parse_path("/api/v1/namespaces").unwrap().resource,
            "namespaces"
        );
    }

    #[test]
    fn client_params_are_parsed() {
        let (_, _, p) = normalize(
            "c",
            "/api/v1/pods",
            "resourceVersion=12&allowWatchBookmarks=true&timeoutSeconds=2&sendInitialEvents=true&resourceVersionMatch=NotOlderThan",
        )
        .unwrap();
        assert_eq!(p.resource_version.as_deref(), Some("12"));
        assert!(p.allow_bookmarks && p.send_initial_events);
        assert_eq!(p.timeout_seconds, Some(2));
    }
}
