//! Label and field selectors, parsed with the real API server's grammar and
//! applied identically to LIST results and to watch events.

use serde_json::Value;

use crate::resources::ResourceDef;

/// Why a selector string was rejected (rendered as a 400 BadRequest).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A label selector term did not parse.
    #[error("unable to parse requirement: {0}")]
    Label(String),
    /// A field selector term did not parse.
    #[error("invalid field selector term: {0:?}")]
    Field(String),
    /// The field is not selectable for this resource type.
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelOp {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct LabelRequirement {
    key: String,
    op: LabelOp,
}

/// A parsed `labelSelector`: all requirements must hold (comma means AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<LabelRequirement>,
}

impl LabelSelector {
    /// Parses `a=b,c!=d,e in (f,g),h notin (i),j,!k`; empty selects everything.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let requirements = split_top_level(input)
            .into_iter()
            .map(str::trim)
            .filter(|term| !term.is_empty())
            .map(parse_label_term)
            .collect::<Result<_, _>>()?;
        Ok(LabelSelector { requirements })
    }

    /// Whether an object with these `metadata.labels` is selected.
    pub fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        self.requirements.iter().all(|req| {
            let value = labels.and_then(|l| l.get(&req.key)).and_then(Value::as_str);
            match (&req.op, value) {
                (LabelOp::Exists, v) => v.is_some(),
                (LabelOp::DoesNotExist, v) => v.is_none(),
                (LabelOp::Equals(want), Some(v)) => v == want,
                (LabelOp::Equals(_), None) => false,
                (LabelOp::NotEquals(want), v) => v != Some(want.as_str()),
                (LabelOp::In(set), Some(v)) => set.iter().any(|s| s == v),
                (LabelOp::In(_), None) => false,
                (LabelOp::NotIn(set), v) => v.is_none_or(|v| !set.iter().any(|s| s == v)),
            }
        })
    }
}

/// Splits on commas that are not inside `( ... )` value sets.
fn split_top_level(input: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&input[start..]);
    out
}

fn parse_label_term(term: &str) -> Result<LabelRequirement, SelectorError> {
    let err = || SelectorError::Label(term.to_string());
    if let Some(key) = term.strip_prefix('!') {
        let key = key.trim();
        return valid_key(key)
            .then(|| LabelRequirement {
                key: key.to_string(),
                op: LabelOp::DoesNotExist,
            })
            .ok_or_else(err);
    }
    let key_end = term
        .find(|c: char| c.is_whitespace() || matches!(c, '=' | '!' | '('))
        .unwrap_or(term.len());
    let key = &term[..key_end];
    if !valid_key(key) {
        return Err(err());
    }
    let rest = term[key_end..].trim_start();
    let op = if rest.is_empty() {
        LabelOp::Exists
    } else if let Some(v) = rest.strip_prefix("==").or_else(|| rest.strip_prefix('=')) {
        LabelOp::Equals(single_value(v).ok_or_else(err)?)
    } else if let Some(v) = rest.strip_prefix("!=") {
        LabelOp::NotEquals(single_value(v).ok_or_else(err)?)
    } else if let Some(v) = rest.strip_prefix("notin") {
        LabelOp::NotIn(value_set(v).ok_or_else(err)?)
    } else if let Some(v) = rest.strip_prefix("in") {
        LabelOp::In(value_set(v).ok_or_else(err)?)
    } else {
        return Err(err());
    };
    Ok(LabelRequirement {
        key: key.to_string(),
        op,
    })
}

fn single_value(raw: &str) -> Option<String> {
    let v = raw.trim();
    valid_value(v).then(|| v.to_string())
}

fn value_set(raw: &str) -> Option<Vec<String>> {
    let inner = raw.trim().strip_prefix('(')?.strip_suffix(')')?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    values.iter().all(|v| valid_value(v)).then_some(values)
}

/// Label keys: an optional DNS prefix and `/`, then a name of at most 63
/// alphanumerics, `-`, `_` and `.`, starting and ending alphanumeric.
fn valid_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
    });
    prefix_ok && !name.is_empty() && valid_value(name)
}

/// Label values: empty, or at most 63 alphanumerics, `-`, `_`, `.`, starting
/// and ending alphanumeric.
fn valid_value(v: &str) -> bool {
    if v.is_empty() {
        return true;
    }
    let ends_ok = v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.ends_with(|c: char| c.is_ascii_alphanumeric());
    v.len() <= 63
        && ends_ok
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldRequirement {
    path: String,
    value: String,
    negated: bool,
}

/// A parsed `fieldSelector`: `path=value`, `path==value` or `path!=value`
/// terms joined by commas, restricted to the fields the type supports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    /// Parses a field selector for `def`; unknown fields are rejected.
    pub fn parse(input: &str, def: &ResourceDef) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for term in input.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (path, value, negated) = if let Some((p, v)) = term.split_once("!=") {
                (p, v, true)
            } else if let Some((p, v)) = term.split_once("==") {
                (p, v, false)
            } else if let Some((p, v)) = term.split_once('=') {
                (p, v, false)
            } else {
                return Err(SelectorError::Field(term.to_string()));
            };
            let path = path.trim();
            if !def.supports_field(path) {
                return Err(SelectorError::UnsupportedField(path.to_string()));
            }
            requirements.push(FieldRequirement {
                path: path.to_string(),
                value: value.trim().to_string(),
                negated,
            });
        }
        Ok(FieldSelector { requirements })
    }

    /// Whether `object` is selected; a missing field reads as `""`.
    pub fn matches(&self, object: &Value) -> bool {
        self.requirements.iter().all(|req| {
            let actual = field_value(object, &req.path);
            (actual == req.value) != req.negated
        })
    }
}

fn field_value(object: &Value, path: &str) -> String {
    let found = path
        .split('.')
        .try_fold(object, |node, segment| node.get(segment));
    match found {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        // The API server formats these booleans from the typed object, so
        // an absent one is `false`, not empty.
        _ if BOOLEAN_FIELDS.contains(&path) => "false".into(),
        _ => String::new(),
    }
}

/// Field-selectable paths that are booleans in the API's types.
const BOOLEAN_FIELDS: &[&str] = &["spec.hostNetwork", "spec.unschedulable"];

/// Everything that decides whether one watcher or LIST sees an object:
/// namespace scope plus label and field selectors.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only objects in this namespace, if set.
    pub namespace: Option<String>,
    /// The label selector.
    pub labels: LabelSelector,
    /// The field selector.
    pub fields: FieldSelector,
}

impl Filter {
    /// Builds a filter from request parameters, validating both selectors.
    pub fn new(
        def: &ResourceDef,
        namespace: Option<&str>,
        label_selector: Option<&str>,
        field_selector: Option<&str>,
    ) -> Result<Self, SelectorError> {
        Ok(Filter {
            namespace: namespace.map(str::to_string),
            labels: LabelSelector::parse(label_selector.unwrap_or(""))?,
            fields: FieldSelector::parse(field_selector.unwrap_or(""), def)?,
        })
    }

    /// Adds `metadata.name=<name>` to the field selector: a legacy
    /// `/watch/.../{name}` path, which the real handler ANDs with any
    /// `fieldSelector` given.
    pub fn with_name(mut self, name: String) -> Self {
        self.fields.requirements.push(FieldRequirement {
            path: "metadata.name".into(),
            value: name,
            negated: false,
        });
        self
    }

    /// Whether there is any label or field selector (the namespace aside).
    pub fn has_selectors(&self) -> bool {
        !self.labels.requirements.is_empty() || !self.fields.requirements.is_empty()
    }

    /// Whether `object` passes the namespace scope and both selectors.
    pub fn matches(&self, object: &Value) -> bool {
        let metadata = object.get("metadata");
        if let Some(ns) = &self.namespace {
            let object_ns = metadata
                .and_then(|m| m.get("namespace"))
                .and_then(Value::as_str);
            if object_ns != Some(ns.as_str()) {
                return false;
            }
        }
        let labels = metadata
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object);
        self.labels.matches(labels) && self.fields.matches(object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::by_plural;
    use serde_json::json;

    fn pod(labels: Value, node: &str, phase: &str) -> Value {
        json!({"metadata": {"name": "p", "namespace": "default", "labels": labels},
               "spec": {"nodeName": node}, "status": {"phase": phase}})
    }

    #[test]
    fn label_operators() {
        let p = pod(json!({"app": "web", "tier": "front"}), "n1", "Running");
        let labels = p["metadata"]["labels"].as_object();
        let cases = [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app!=db", true),
            ("missing!=x", true),
            ("app in (web, db)", true),
            ("app notin (web)", false),
            ("missing notin (web)", true),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("app=web,tier=back", false),
            ("app in (web),tier in (front,back),!gone", true),
            ("", true),
        ];
        for (sel, want) in cases {
            let parsed = LabelSelector::parse(sel).expect(sel);
            assert_eq!(parsed.matches(labels), want, "{sel}");
        }
    }

    #[test]
    fn label_parse_errors() {
        for bad in [
            "app=we b",
            "app in web",
            "=x",
            "app ~ x",
            "app in (a",
            "-bad=x",
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn field_selectors() {
        let pods = by_plural("pods").expect("pods");
        let p = pod(json!({}), "n1", "Running");
        let sel = |s: &str| FieldSelector::parse(s, pods).expect(s);
        assert!(sel("spec.nodeName=n1,status.phase==Running").matches(&p));
        assert!(!sel("status.phase!=Running").matches(&p));
        assert!(sel("metadata.namespace=default,metadata.name=p").matches(&p));
        // An unset boolean is `false`, as the API server formats it.
        assert!(sel("spec.hostNetwork=false").matches(&p));
        assert!(!sel("spec.hostNetwork=true").matches(&p));
        let cms = by_plural("configmaps").expect("configmaps");
        assert!(FieldSelector::parse("spec.nodeName=x", cms).is_err());
        assert!(FieldSelector::parse("metadata.name", pods).is_err());
    }
}
