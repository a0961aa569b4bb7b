//! Static-token identities and the runtime authorization tables.
//!
//! [`SimAuth`] is the configuration: which bearer tokens exist, whose they
//! are, and the [`Rule`]s that say what they may do. It comes from code or
//! from a small YAML/JSON file ([`SimAuth::from_file`]). [`Auth`] is the live
//! copy a running server consults on every request; tests change it while
//! the server runs (through [`crate::SimServer::auth`] or
//! `POST /_sim/auth/rules`) to revoke access mid-test.
//!
//! Example file:
//!
//! ```yaml
//! adminToken: kubemux-sim-token      # optional; the kubeconfig's token
//! tokens:
//!   alice-token: {username: alice, uid: "1001", groups: [dev]}
//! rules:
//!   - users: [alice]
//!     verbs: [get, list, watch]
//!     apiGroups: [""]
//!     resources: [pods]
//!     namespaces: [a]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::rbac::{self, AUTHENTICATED_GROUP, Attributes, Decision, Rule, SUPERUSER_GROUP};

/// The token the kubeconfig carries unless configured otherwise (the same
/// dummy token the simulator always wrote, so existing kubeconfigs work).
pub const DEFAULT_ADMIN_TOKEN: &str = "kubemux-sim-token";

/// The username of the admin identity, and of every request when
/// authentication is disabled.
pub const ADMIN_USER: &str = "kubemux-sim";

/// Failures loading or changing the authentication configuration.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid YAML/JSON of the expected shape.
    #[error("parsing {origin}: {source}")]
    Parse {
        /// Where the text came from (a path, or `"text"`).
        origin: String,
        /// The parser's error.
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    /// A rule that could never match or names an unknown verb.
    #[error("invalid rule: {0}")]
    InvalidRule(String),
    /// A token entry that cannot work (empty token or username, or a
    /// second definition of the admin token).
    #[error("invalid token entry: {0}")]
    InvalidToken(String),
}

/// Who a token belongs to, shaped like `authentication.k8s.io/v1` UserInfo.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserInfo {
    /// The username rules and 403 messages name.
    pub username: String,
    /// A stable id (optional).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// Groups the user belongs to.
    #[serde(default)]
    pub groups: Vec<String>,
}

impl UserInfo {
    /// A user with a uid and groups.
    pub fn new<I, S>(username: impl Into<String>, uid: impl Into<String>, groups: I) -> UserInfo
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        UserInfo {
            username: username.into(),
            uid: uid.into(),
            groups: groups.into_iter().map(Into::into).collect(),
        }
    }

    /// The admin identity: a superuser, like a real cluster's admin cert.
    pub fn admin() -> UserInfo {
        UserInfo::new(ADMIN_USER, "kubemux-sim-admin", [SUPERUSER_GROUP])
    }

    /// This identity as an authenticator returns it: with
    /// `system:authenticated` added, as the real server adds it.
    fn authenticated(mut self) -> UserInfo {
        if !self.groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
            self.groups.push(AUTHENTICATED_GROUP.to_string());
        }
        self
    }
}

/// Authentication and authorization settings of a simulated server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SimAuth {
    /// The token written into [`crate::SimServer::kubeconfig`]; it maps
    /// to [`UserInfo::admin`], which every rule set allows.
    #[serde(default = "default_admin_token")]
    pub admin_token: String,
    /// Static tokens: bearer token → identity.
    #[serde(default)]
    pub tokens: BTreeMap<String, UserInfo>,
    /// Allow rules; anything they do not allow is denied.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

fn default_admin_token() -> String {
    DEFAULT_ADMIN_TOKEN.to_string()
}

impl Default for SimAuth {
    fn default() -> Self {
        SimAuth {
            admin_token: default_admin_token(),
            tokens: BTreeMap::new(),
            rules: Vec::new(),
        }
    }
}

impl SimAuth {
    /// Only the admin token, no rules: everyone else is unknown (401).
    pub fn new() -> SimAuth {
        SimAuth::default()
    }

    /// Uses `token` as the admin (kubeconfig) token.
    pub fn with_admin_token(mut self, token: impl Into<String>) -> SimAuth {
        self.admin_token = token.into();
        self
    }

    /// Adds a static token.
    pub fn with_token(mut self, token: impl Into<String>, user: UserInfo) -> SimAuth {
        self.tokens.insert(token.into(), user);
        self
    }

    /// Adds an allow rule.
    pub fn with_rule(mut self, rule: Rule) -> SimAuth {
        self.rules.push(rule);
        self
    }

    /// Reads a YAML (or JSON, which is YAML) file and validates it.
    pub fn from_file(path: &Path) -> Result<SimAuth, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses YAML or JSON text and validates it.
    pub fn from_yaml(text: &str) -> Result<SimAuth, AuthError> {
        Self::parse(text, "text")
    }

    fn parse(text: &str, origin: &str) -> Result<SimAuth, AuthError> {
        let auth: SimAuth = serde_saphyr::from_str(text).map_err(|source| AuthError::Parse {
            origin: origin.to_string(),
            source: Box::new(source),
        })?;
        auth.validate()?;
        Ok(auth)
    }

    /// Checks tokens and rules, so mistakes fail at startup, not as
    /// puzzling 401/403s.
    pub fn validate(&self) -> Result<(), AuthError> {
        if self.admin_token.is_empty() {
            return Err(AuthError::InvalidToken("the admin token is empty".into()));
        }
        if self.tokens.contains_key(&self.admin_token) {
            return Err(AuthError::InvalidToken(
                "the admin token is also listed under tokens".into(),
            ));
        }
        for (token, user) in &self.tokens {
            if token.is_empty() || user.username.is_empty() {
                return Err(AuthError::InvalidToken(format!(
                    "empty token or username (user {:?})",
                    user.username
                )));
            }
        }
        self.rules.iter().try_for_each(Rule::validate)
    }
}

#[derive(Debug)]
struct Tables {
    tokens: BTreeMap<String, UserInfo>,
    rules: Vec<Rule>,
}

/// The live authentication and authorization state of a running server.
///
/// When authentication is disabled (`SimConfig::auth` is `None`) every
/// request is served as [`UserInfo::admin`] whatever its token, but the
/// tables still exist: TokenReview and SubjectAccessReview always answer
/// from them, so the review endpoints behave the same either way.
#[derive(Debug)]
pub struct Auth {
    enabled: bool,
    admin_token: String,
    tables: RwLock<Tables>,
}

impl Auth {
    /// The live state for `config` (`None` = authentication disabled).
    pub fn new(config: Option<SimAuth>) -> Auth {
        let enabled = config.is_some();
        let config = config.unwrap_or_default();
        let mut tokens = config.tokens;
        tokens.insert(config.admin_token.clone(), UserInfo::admin());
        Auth {
            enabled,
            admin_token: config.admin_token,
            tables: RwLock::new(Tables {
                tokens,
                rules: config.rules,
            }),
        }
    }

    /// Whether requests are authenticated and authorized.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The admin token the kubeconfig carries.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The identity of a request's bearer token; `None` means 401. With
    /// authentication disabled every request is the admin.
    pub fn authenticate(&self, token: Option<&str>) -> Option<UserInfo> {
        if !self.enabled {
            return Some(UserInfo::admin().authenticated());
        }
        self.review_token(token?)
    }

    /// The identity of `token` from the token table (TokenReview's answer).
    pub fn review_token(&self, token: &str) -> Option<UserInfo> {
        let tables = self.tables.read();
        tables
            .tokens
            .get(token)
            .cloned()
            .map(UserInfo::authenticated)
    }

    /// Whether a request may proceed: always when disabled, else by the rules.
    pub fn authorize(&self, attrs: &Attributes) -> Decision {
        if !self.enabled {
            return Decision {
                allowed: true,
                reason: "authorization disabled".into(),
            };
        }
        self.review_access(attrs)
    }

    /// Evaluates the rules for `attrs` (SubjectAccessReview's answer).
    pub fn review_access(&self, attrs: &Attributes) -> Decision {
        rbac::evaluate(&self.tables.read().rules, attrs)
    }

    /// The current rules.
    pub fn rules(&self) -> Vec<Rule> {
        self.tables.read().rules.clone()
    }

    /// Replaces every rule (validated first; nothing changes on error).
    pub fn set_rules(&self, rules: Vec<Rule>) -> Result<(), AuthError> {
        rules.iter().try_for_each(Rule::validate)?;
        self.tables.write().rules = rules;
        Ok(())
    }

    /// Appends one rule.
    pub fn add_rule(&self, rule: Rule) -> Result<(), AuthError> {
        rule.validate()?;
        self.tables.write().rules.push(rule);
        Ok(())
    }

    /// Removes `user` from every rule's user list and drops rules left
    /// without subjects; returns how many rules changed. Grants through
    /// groups remain (revoke those with [`Auth::set_rules`]).
    pub fn revoke_user(&self, user: &str) -> usize {
        let mut tables = self.tables.write();
        let mut changed = 0;
        for rule in &mut tables.rules {
            let before = rule.users.len();
            rule.users.retain(|u| u != user);
            changed += usize::from(rule.users.len() != before);
        }
        tables
            .rules
            .retain(|rule| !(rule.users.is_empty() && rule.groups.is_empty()));
        changed
    }

    /// Adds or replaces a static token.
    pub fn add_token(&self, token: impl Into<String>, user: UserInfo) -> Result<(), AuthError> {
        let token = token.into();
        if token.is_empty() || user.username.is_empty() || token == self.admin_token {
            return Err(AuthError::InvalidToken(format!(
                "cannot add a token for user {:?}",
                user.username
            )));
        }
        self.tables.write().tokens.insert(token, user);
        Ok(())
    }

    /// Removes a static token (the next request with it gets 401); returns
    /// whether it existed. The admin token cannot be removed.
    pub fn revoke_token(&self, token: &str) -> bool {
        token != self.admin_token && self.tables.write().tokens.remove(token).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_yaml_and_json() {
        let yaml = "tokens:\n  t1: {username: alice, uid: \"1\", groups: [dev]}\nrules:\n  - users: [alice]\n    verbs: [list]\n    resources: [pods]\n    namespaces: [a]\n";
        let auth = SimAuth::from_yaml(yaml).expect("yaml");
        assert_eq!(auth.admin_token, DEFAULT_ADMIN_TOKEN);
        assert_eq!(auth.tokens["t1"].groups, ["dev"]);
        assert_eq!(auth.rules[0].namespaces, ["a"]);
        let json = r#"{"adminToken":"root","tokens":{"t":{"username":"bob"}},"rules":[]}"#;
        let auth = SimAuth::from_yaml(json).expect("json");
        assert_eq!(auth.admin_token, "root");
        assert!(
            SimAuth::from_yaml("rules: [{users: [a], verbs: [fly], resources: [pods]}]").is_err()
        );
        assert!(SimAuth::from_yaml("tokenz: {}").is_err());
    }

    #[test]
    fn runtime_changes() {
        let auth = Auth::new(Some(
            SimAuth::new()
                .with_token("t", UserInfo::new("alice", "", ["dev"]))
                .with_rule(Rule::allow(["list"], ["pods"]).users(["alice", "bob"])),
        ));
        let alice = auth.authenticate(Some("t")).expect("alice");
        assert_eq!(alice.groups, ["dev", AUTHENTICATED_GROUP]);
        assert!(auth.authenticate(Some("nope")).is_none());
        assert!(auth.authenticate(None).is_none());
        assert_eq!(auth.revoke_user("alice"), 1);
        assert_eq!(auth.rules()[0].users, ["bob"]);
        assert!(auth.revoke_token("t"));
        assert!(auth.authenticate(Some("t")).is_none());
        assert!(!auth.revoke_token(DEFAULT_ADMIN_TOKEN));
        let disabled = Auth::new(None);
        assert_eq!(
            disabled.authenticate(None).map(|u| u.username),
            Some(ADMIN_USER.to_string())
        );
    }
}
