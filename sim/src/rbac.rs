//! RBAC-like allow rules and their evaluation.
//!
//! A [`Rule`] folds a (Cluster)Role and its binding into one record, which is
//! all a test needs to say "alice may list pods in `a`". Rules only allow;
//! anything no rule allows is denied, as with RBAC. Members of
//! [`SUPERUSER_GROUP`] are allowed everything, like `system:masters` on a real
//! server, so the admin token keeps working whatever the rules say.

use serde::{Deserialize, Serialize};

use crate::auth::AuthError;

/// Members of this group bypass the rules (the real server's superuser group).
pub const SUPERUSER_GROUP: &str = "system:masters";

/// The group every authenticated identity carries, as on a real server.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";

/// The verbs a rule may name (besides `"*"`).
pub const VERBS: &[&str] = &[
    "get", "list", "watch", "create", "update", "patch", "delete",
];

/// One allow rule: who (`users`, `groups`) may do what (`verbs`) to which
/// resources (`apiGroups`, `resources`, `resourceNames`) where (`namespaces`).
///
/// Matching, field by field (`"*"` matches anything in every list):
/// - `users` / `groups`: the rule applies if the user is listed or is in a
///   listed group.
/// - `verbs`, `resources`: must match; `resources` may name a subresource
///   (`pods/log`), `pods/*` or `*/log`.
/// - `apiGroups`: `""` is the core group; absent or empty matches any group
///   (a convenience for tests; RBAC would match none).
/// - `namespaces`: absent or empty makes the rule cluster-wide (it also
///   covers cluster-scoped resources and all-namespace requests, like a
///   ClusterRoleBinding); otherwise only requests inside a listed namespace
///   match (`"*"` = inside any namespace), like RoleBindings.
/// - `resourceNames`: absent or empty matches any name; otherwise only
///   requests naming one of them (GET/PUT/PATCH/DELETE on an object, or a
///   LIST/WATCH with `fieldSelector=metadata.name=...`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Usernames the rule applies to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// Groups the rule applies to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Allowed verbs.
    pub verbs: Vec<String>,
    /// API groups (`""` = core); empty = any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    /// Resources, optionally with a subresource.
    pub resources: Vec<String>,
    /// Namespaces; empty = cluster-wide.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Object names; empty = any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
}

fn strings<I, S>(items: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    items.into_iter().map(Into::into).collect()
}

impl Rule {
    /// A cluster-wide rule allowing `verbs` on `resources` in any API group,
    /// for nobody yet: add [`Rule::users`] or [`Rule::groups`].
    pub fn allow<V, R>(verbs: V, resources: R) -> Rule
    where
        V: IntoIterator,
        V::Item: Into<String>,
        R: IntoIterator,
        R::Item: Into<String>,
    {
        Rule {
            verbs: strings(verbs),
            resources: strings(resources),
            ..Rule::default()
        }
    }

    /// Applies the rule to these users.
    pub fn users<I: IntoIterator<Item = S>, S: Into<String>>(mut self, users: I) -> Rule {
        self.users = strings(users);
        self
    }

    /// Applies the rule to members of these groups.
    pub fn groups<I: IntoIterator<Item = S>, S: Into<String>>(mut self, groups: I) -> Rule {
        self.groups = strings(groups);
        self
    }

    /// Restricts the rule to these API groups.
    pub fn api_groups<I: IntoIterator<Item = S>, S: Into<String>>(mut self, groups: I) -> Rule {
        self.api_groups = strings(groups);
        self
    }

    /// Restricts the rule to requests inside these namespaces.
    pub fn namespaces<I: IntoIterator<Item = S>, S: Into<String>>(mut self, namespaces: I) -> Rule {
        self.namespaces = strings(namespaces);
        self
    }

    /// Restricts the rule to these object names.
    pub fn resource_names<I: IntoIterator<Item = S>, S: Into<String>>(mut self, names: I) -> Rule {
        self.resource_names = strings(names);
        self
    }

    /// Rejects rules that could never match or name unknown verbs, so a typo
    /// in a rules file fails loudly instead of silently denying.
    pub fn validate(&self) -> Result<(), AuthError> {
        let invalid = |why: String| Err(AuthError::InvalidRule(why));
        if self.users.is_empty() && self.groups.is_empty() {
            return invalid("a rule needs at least one user or group".into());
        }
        if self.verbs.is_empty() {
            return invalid("a rule needs at least one verb".into());
        }
        if let Some(verb) = self
            .verbs
            .iter()
            .find(|v| *v != "*" && !VERBS.contains(&v.as_str()))
        {
            return invalid(format!(
                "unknown verb {verb:?}; use one of {VERBS:?} or \"*\""
            ));
        }
        if self.resources.is_empty() {
            return invalid("a rule needs at least one resource".into());
        }
        Ok(())
    }

    /// Whether this rule allows the request described by `attrs`.
    pub fn matches(&self, attrs: &Attributes) -> bool {
        let applies = self.users.iter().any(|u| u == "*" || *u == attrs.user)
            || self
                .groups
                .iter()
                .any(|g| g == "*" || attrs.groups.contains(g));
        applies
            && any_or_star(&self.verbs, &attrs.verb)
            && (self.api_groups.is_empty() || any_or_star(&self.api_groups, &attrs.api_group))
            && self.resources.iter().any(|r| resource_matches(r, attrs))
            && self.namespace_matches(attrs.namespace.as_deref())
            && (self.resource_names.is_empty()
                || attrs
                    .name
                    .as_ref()
                    .is_some_and(|n| self.resource_names.contains(n)))
    }

    fn namespace_matches(&self, namespace: Option<&str>) -> bool {
        if self.namespaces.is_empty() {
            return true;
        }
        namespace.is_some_and(|ns| any_or_star(&self.namespaces, ns))
    }
}

fn any_or_star(list: &[String], value: &str) -> bool {
    list.iter().any(|item| item == "*" || item == value)
}

fn resource_matches(pattern: &str, attrs: &Attributes) -> bool {
    if pattern == "*" {
        return true;
    }
    let (resource, sub) = match pattern.split_once('/') {
        Some((resource, sub)) => (resource, Some(sub)),
        None => (pattern, None),
    };
    let resource_ok = resource == "*" || resource == attrs.resource;
    match (sub, attrs.subresource.as_deref()) {
        (None, None) => resource_ok,
        (Some(pat), Some(actual)) => resource_ok && (pat == "*" || pat == actual),
        _ => false,
    }
}

/// What a request wants to do, as the real server's request-info resolver
/// describes it; also the shape of a SubjectAccessReview's
/// `resourceAttributes` plus the subject.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    /// Username.
    pub user: String,
    /// The user's groups.
    pub groups: Vec<String>,
    /// `get`, `list`, `watch`, `create`, `update`, `patch` or `delete`.
    pub verb: String,
    /// API group, `""` for core.
    pub api_group: String,
    /// Resource plural.
    pub resource: String,
    /// Subresource, if any.
    pub subresource: Option<String>,
    /// Namespace; `None` for cluster-scoped and all-namespace requests.
    pub namespace: Option<String>,
    /// Object name, if the request names one.
    pub name: Option<String>,
}

/// The outcome of evaluating rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request is allowed.
    pub allowed: bool,
    /// Why it was allowed (empty when denied, as RBAC leaves it).
    pub reason: String,
}

/// Evaluates `rules` for `attrs`: superusers and any matching rule allow,
/// everything else is denied.
pub fn evaluate(rules: &[Rule], attrs: &Attributes) -> Decision {
    if attrs.groups.iter().any(|g| g == SUPERUSER_GROUP) {
        return Decision {
            allowed: true,
            reason: format!("allowed: member of {SUPERUSER_GROUP}"),
        };
    }
    match rules.iter().position(|rule| rule.matches(attrs)) {
        Some(index) => Decision {
            allowed: true,
            reason: format!("allowed by kubemux-sim rule #{index}"),
        },
        None => Decision {
            allowed: false,
            reason: String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(user: &str, verb: &str, resource: &str, ns: Option<&str>) -> Attributes {
        Attributes {
            user: user.into(),
            groups: vec![AUTHENTICATED_GROUP.into()],
            verb: verb.into(),
            resource: resource.into(),
            namespace: ns.map(str::to_string),
            ..Attributes::default()
        }
    }

    #[test]
    fn namespaced_rule() {
        let rules = [Rule::allow(["list", "watch"], ["pods"])
            .users(["alice"])
            .namespaces(["a"])];
        assert!(evaluate(&rules, &attrs("alice", "list", "pods", Some("a"))).allowed);
        assert!(evaluate(&rules, &attrs("alice", "watch", "pods", Some("a"))).allowed);
        assert!(!evaluate(&rules, &attrs("alice", "get", "pods", Some("a"))).allowed);
        assert!(!evaluate(&rules, &attrs("alice", "list", "pods", Some("b"))).allowed);
        assert!(!evaluate(&rules, &attrs("alice", "list", "pods", None)).allowed);
        assert!(!evaluate(&rules, &attrs("bob", "list", "pods", Some("a"))).allowed);
    }

    #[test]
    fn cluster_wide_groups_and_names() {
        let rules = [
            Rule::allow(["*"], ["*"]).groups(["ops"]),
            Rule::allow(["get"], ["configmaps"])
                .users(["bob"])
                .api_groups([""])
                .namespaces(["*"])
                .resource_names(["cm1"]),
        ];
        let mut ops = attrs("carol", "delete", "nodes", None);
        ops.groups.push("ops".into());
        assert!(evaluate(&rules, &ops).allowed);
        let mut bob = attrs("bob", "get", "configmaps", Some("x"));
        assert!(!evaluate(&rules, &bob).allowed);
        bob.name = Some("cm1".into());
        assert!(evaluate(&rules, &bob).allowed);
        bob.api_group = "apps".into();
        assert!(!evaluate(&rules, &bob).allowed);
    }

    #[test]
    fn subresources_and_superusers() {
        let rules = [Rule::allow(["get"], ["pods/log"]).users(["alice"])];
        let mut a = attrs("alice", "get", "pods", Some("a"));
        assert!(!evaluate(&rules, &a).allowed);
        a.subresource = Some("log".into());
        assert!(evaluate(&rules, &a).allowed);
        let mut root = attrs("root", "delete", "nodes", None);
        root.groups.push(SUPERUSER_GROUP.into());
        assert!(evaluate(&[], &root).allowed);
    }

    #[test]
    fn validation() {
        assert!(Rule::allow(["get"], ["pods"]).validate().is_err());
        assert!(
            Rule::allow(["fly"], ["pods"])
                .users(["a"])
                .validate()
                .is_err()
        );
        assert!(
            Rule::allow(["get"], ["pods"])
                .users(["a"])
                .validate()
                .is_ok()
        );
    }
}
