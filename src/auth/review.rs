//! The `shared` auth mode's checks: who a token belongs to (TokenReview) and
//! whether that user may list and watch a resource (SubjectAccessReview),
//! asked of the cluster with kubemux's own identity and cached briefly.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use parking_lot::Mutex;

use crate::cluster::Cluster;
use crate::metrics::Metrics;
use kubemux_vocab::identity::identity_hash;
use kubemux_vocab::path::ResourcePath;

/// A user as the cluster's authenticator names them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct User {
    /// Username.
    pub name: String,
    /// UID, if the authenticator gives one.
    pub uid: Option<String>,
    /// Groups.
    pub groups: Vec<String>,
}

/// Why a caller is not served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// No token was presented.
    #[error(
        "no credentials for cluster {0:?}: send a bearer token (Authorization header or Headlamp's headlamp-auth cookies)"
    )]
    NoCredentials(String),
    /// The cluster does not accept the token.
    #[error("the token was rejected by cluster {cluster:?}: {reason}")]
    Unauthenticated {
        /// Cluster id.
        cluster: String,
        /// The authenticator's reason, if any.
        reason: String,
    },
    /// The user may not list and watch the resource.
    #[error("user {user:?} may not {verb} {resource} in {scope} on cluster {cluster:?}{reason}")]
    Forbidden {
        /// Username.
        user: String,
        /// The denied verb.
        verb: &'static str,
        /// Resource (with group).
        resource: String,
        /// Namespace or cluster scope.
        scope: String,
        /// Cluster id.
        cluster: String,
        /// The authorizer's reason, prefixed with ": ", or empty.
        reason: String,
    },
    /// The user may not read a non-resource URL (discovery: `/api`, `/apis`,
    /// `/version`).
    #[error("user {user:?} may not get {path} on cluster {cluster:?}{reason}")]
    ForbiddenPath {
        /// Username.
        user: String,
        /// The URL path.
        path: String,
        /// Cluster id.
        cluster: String,
        /// The authorizer's reason, prefixed with ": ", or empty.
        reason: String,
    },
    /// The review itself failed (kubemux lacks permission, the cluster is down).
    #[error("could not check access on cluster {cluster:?}: {message}")]
    Unavailable {
        /// Cluster id.
        cluster: String,
        /// What went wrong.
        message: String,
    },
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct AccessKey {
    cluster: String,
    user: User,
    verb: &'static str,
    target: Target,
}

/// What a SubjectAccessReview is about besides who and which verb: the
/// cache key's half that `resourceAttributes` or `nonResourceAttributes`
/// carries (the version is left out: RBAC ignores it).
#[derive(Clone, PartialEq, Eq, Hash)]
enum Target {
    Resource {
        group: String,
        resource: String,
        subresource: Option<&'static str>,
        namespace: Option<String>,
    },
    NonResource {
        path: String,
    },
}

/// Most answers each of a reviewer's caches holds. Every distinct token
/// presented (junk included) and every (user, resource) asked about adds
/// one, so without a bound a client could grow kubemux's memory at will.
const CAPACITY: usize = 10_000;

/// A refusal is reused at most this long (`ttl` if shorter): long enough to
/// spare the cluster a review per request of a client retrying a bad token,
/// short enough that access just granted is seen almost at once.
const NEGATIVE_TTL: Duration = Duration::from_secs(2);

/// Review answers by key, each reused for the reviewer's `ttl` (a refusal
/// for at most [`NEGATIVE_TTL`]), at most `capacity` of them: when full,
/// expired answers go first, then the oldest.
struct Answers<K, V> {
    map: HashMap<K, (Result<V, String>, Instant)>,
    capacity: usize,
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> Answers<K, V> {
    fn new(capacity: usize) -> Self {
        Answers {
            map: HashMap::new(),
            capacity,
        }
    }

    fn fresh(answer: &Result<V, String>, at: Instant, ttl: Duration) -> bool {
        let ttl = if answer.is_ok() {
            ttl
        } else {
            ttl.min(NEGATIVE_TTL)
        };
        at.elapsed() < ttl
    }

    /// The answer for `key`, unless it is older than it may be reused.
    fn get(&self, key: &K, ttl: Duration) -> Option<Result<V, String>> {
        let (answer, at) = self.map.get(key)?;
        Self::fresh(answer, *at, ttl).then(|| answer.clone())
    }

    fn insert(&mut self, key: K, answer: Result<V, String>, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        if !self.map.contains_key(&key) && self.map.len() >= self.capacity {
            self.map
                .retain(|_, (answer, at)| Self::fresh(answer, *at, ttl));
            if self.map.len() >= self.capacity
                && let Some(oldest) = self
                    .map
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(k, _)| k.clone())
            {
                self.map.remove(&oldest);
            }
        }
        self.map.insert(key, (answer, Instant::now()));
    }
}

/// TokenReview and SubjectAccessReview with a short, bounded cache.
pub struct Reviewer {
    ttl: Duration,
    /// TokenReview answers, by (cluster, token hash).
    tokens: Mutex<Answers<(String, String), User>>,
    /// SubjectAccessReview answers.
    access: Mutex<Answers<AccessKey, ()>>,
    metrics: Arc<Metrics>,
}

impl Reviewer {
    /// A reviewer whose answers are reused for `ttl` (refusals for at most
    /// two seconds).
    pub fn new(ttl: Duration, metrics: Arc<Metrics>) -> Self {
        Reviewer {
            ttl,
            tokens: Mutex::new(Answers::new(CAPACITY)),
            access: Mutex::new(Answers::new(CAPACITY)),
            metrics,
        }
    }

    /// Authenticates `token` and authorises `list` and `watch` on
    /// `resource`. `fresh` skips the cache (periodic re-checks must see a
    /// revocation within their interval).
    pub async fn check(
        &self,
        cluster: &Cluster,
        token: Option<&str>,
        resource: &ResourcePath,
        fresh: bool,
    ) -> Result<User, ReviewError> {
        let user = self.bearer(cluster, token, fresh).await?;
        for verb in ["list", "watch"] {
            self.check_user(cluster, &user, verb, resource, None, fresh)
                .await?;
        }
        Ok(user)
    }

    /// The metrics its decisions are counted in.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn record(&self, kind: &'static str, outcome: &'static str) {
        self.metrics
            .auth_decisions
            .get_or_create(&crate::metrics::AuthLabel { kind, outcome })
            .inc();
    }

    /// Who `token` belongs to (TokenReview); `fresh` skips the cache.
    pub(crate) async fn authenticate(
        &self,
        cluster: &Cluster,
        token: &str,
        fresh: bool,
    ) -> Result<User, ReviewError> {
        let key = (cluster.id().to_string(), identity_hash(token));
        if !fresh && let Some(answer) = self.tokens.lock().get(&key, self.ttl) {
            self.record("token", "cache_hit");
            return answer.map_err(|reason| ReviewError::Unauthenticated {
                cluster: cluster.id().to_string(),
                reason,
            });
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        let status = create(cluster, &review, "TokenReview")
            .await?
            .status
            .unwrap_or_default();
        let answer = match (status.authenticated, status.user) {
            (Some(true), Some(u)) => Ok(User {
                name: u.username.unwrap_or_default(),
                uid: u.uid,
                groups: u.groups.unwrap_or_default(),
            }),
            _ => Err(status
                .error
                .unwrap_or_else(|| "token not recognised".into())),
        };
        self.record("token", if answer.is_ok() { "allowed" } else { "denied" });
        self.tokens.lock().insert(key, answer.clone(), self.ttl);
        answer.map_err(|reason| ReviewError::Unauthenticated {
            cluster: cluster.id().to_string(),
            reason,
        })
    }

    /// Authorises an already-authenticated `user` (e.g. from a verified
    /// JWT) for `verb` on `resource` (or its `subresource`, such as
    /// `pods/log`), with the same cache as [`Reviewer::check`].
    pub async fn check_user(
        &self,
        cluster: &Cluster,
        user: &User,
        verb: &'static str,
        resource: &ResourcePath,
        subresource: Option<&'static str>,
        fresh: bool,
    ) -> Result<(), ReviewError> {
        let key = AccessKey {
            cluster: cluster.id().to_string(),
            user: user.clone(),
            verb,
            target: Target::Resource {
                group: resource.group.clone(),
                resource: resource.resource.clone(),
                subresource,
                namespace: resource.namespace.clone(),
            },
        };
        let forbidden = |reason: String| ReviewError::Forbidden {
            user: user.name.clone(),
            verb,
            resource: {
                let name = match subresource {
                    Some(sub) => format!("{}/{sub}", resource.resource),
                    None => resource.resource.clone(),
                };
                if resource.group.is_empty() {
                    name
                } else {
                    format!("{name}.{}", resource.group)
                }
            },
            scope: resource
                .namespace
                .as_ref()
                .map_or("all namespaces".to_string(), |ns| {
                    format!("namespace {ns:?}")
                }),
            cluster: cluster.id().to_string(),
            reason: if reason.is_empty() {
                reason
            } else {
                format!(": {reason}")
            },
        };
        let spec = SubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.to_string()),
                group: Some(resource.group.clone()),
                version: Some(resource.version.clone()),
                resource: Some(resource.resource.clone()),
                subresource: subresource.map(str::to_string),
                namespace: resource.namespace.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.authorise(cluster, key, spec, fresh)
            .await?
            .map_err(forbidden)
    }

    /// Who the bearer of `token` is; no token is [`ReviewError::NoCredentials`].
    pub async fn bearer(
        &self,
        cluster: &Cluster,
        token: Option<&str>,
        fresh: bool,
    ) -> Result<User, ReviewError> {
        let token = token.ok_or_else(|| ReviewError::NoCredentials(cluster.id().to_string()))?;
        self.authenticate(cluster, token, fresh).await
    }

    /// Authorises `get` on the non-resource URL `path` for `user`
    /// (discovery: `/api`, `/apis/<group>`, `/version`), as the API server
    /// itself authorises them (`system:discovery` grants them to every
    /// authenticated user), not as a resource nobody has.
    pub async fn check_path(
        &self,
        cluster: &Cluster,
        user: &User,
        path: &str,
        fresh: bool,
    ) -> Result<(), ReviewError> {
        let key = AccessKey {
            cluster: cluster.id().to_string(),
            user: user.clone(),
            verb: "get",
            target: Target::NonResource {
                path: path.to_string(),
            },
        };
        let spec = SubjectAccessReviewSpec {
            non_resource_attributes: Some(NonResourceAttributes {
                path: Some(path.to_string()),
                verb: Some("get".to_string()),
            }),
            ..Default::default()
        };
        self.authorise(cluster, key, spec, fresh)
            .await?
            .map_err(|reason| ReviewError::ForbiddenPath {
                user: user.name.clone(),
                path: path.to_string(),
                cluster: cluster.id().to_string(),
                reason: if reason.is_empty() {
                    reason
                } else {
                    format!(": {reason}")
                },
            })
    }

    /// The cached or fresh answer to `key`, whose attributes `spec` carries
    /// (the user is filled in here): `Ok(Err(reason))` is a refusal, the
    /// outer error a review that could not be made.
    async fn authorise(
        &self,
        cluster: &Cluster,
        key: AccessKey,
        spec: SubjectAccessReviewSpec,
        fresh: bool,
    ) -> Result<Result<(), String>, ReviewError> {
        if !fresh && let Some(answer) = self.access.lock().get(&key, self.ttl) {
            self.record("access", "cache_hit");
            return Ok(answer);
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(key.user.name.clone()),
                uid: key.user.uid.clone(),
                groups: Some(key.user.groups.clone()),
                ..spec
            },
            ..Default::default()
        };
        let status = create(cluster, &review, "SubjectAccessReview")
            .await?
            .status
            .unwrap_or_default();
        let answer = if status.allowed {
            Ok(())
        } else {
            Err(status.reason.unwrap_or_default())
        };
        self.record("access", if answer.is_ok() { "allowed" } else { "denied" });
        self.access.lock().insert(key, answer.clone(), self.ttl);
        Ok(answer)
    }
}

/// Asks the cluster to create `review` (a TokenReview or
/// SubjectAccessReview: the API server answers in the created object's
/// status and stores nothing).
async fn create<K>(cluster: &Cluster, review: &K, kind: &str) -> Result<K, ReviewError>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    Api::all(cluster.client())
        .create(&PostParams::default(), review)
        .await
        .map_err(|e| ReviewError::Unavailable {
            cluster: cluster.id().to_string(),
            message: format!("{kind} failed: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_bounded_and_refusals_short_lived() {
        let ttl = Duration::from_secs(60);
        let mut answers: Answers<u32, ()> = Answers::new(3);
        for k in 0..3 {
            answers.insert(k, Ok(()), ttl);
        }
        answers.insert(3, Err("no".into()), ttl);
        assert_eq!(answers.map.len(), 3, "the oldest went");
        assert_eq!(answers.get(&0, ttl), None);
        assert_eq!(answers.get(&3, ttl), Some(Err("no".into())));
        // A refusal is reused for NEGATIVE_TTL at most, an allowance for ttl.
        let long_ago = Instant::now() - NEGATIVE_TTL - Duration::from_millis(1);
        answers.map.insert(4, (Err("no".into()), long_ago));
        answers.map.insert(5, (Ok(()), long_ago));
        assert_eq!(answers.get(&4, ttl), None);
        assert_eq!(answers.get(&5, ttl), Some(Ok(())));
        // When full, expired answers go before any live one.
        let mut answers: Answers<u32, ()> = Answers::new(2);
        answers.insert(0, Ok(()), ttl);
        answers.map.insert(1, (Err("no".into()), long_ago));
        answers.insert(2, Ok(()), ttl);
        assert!(answers.get(&0, ttl).is_some() && answers.map.len() == 2);
        // With no reuse at all nothing is kept.
        let mut answers: Answers<u32, ()> = Answers::new(2);
        answers.insert(0, Ok(()), Duration::ZERO);
        assert!(answers.map.is_empty());
    }
}
