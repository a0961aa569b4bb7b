//! Re-checks of live subscriptions, shared by every dialect.
//!
//! A subscription served from a shared watch (or a store) makes no request
//! of its own that the cluster could refuse, so kubemux asks again, every
//! `--auth-recheck-interval`, whether its caller may still see it. Asking
//! per subscription or per connection would cost the API server one review
//! per subscription per tick (one client with 1,000 subscriptions on one
//! collection made 3,000). Here a connection registers what its
//! subscription needs — who ([`Principal`]) and which [`Access`]es — and
//! gets a [`RecheckHandle`]; one ticker per server asks each distinct
//! question once per interval, whoever registered it and however often:
//! one TokenReview per distinct (cluster, token), one SubjectAccessReview
//! per distinct (cluster, user, verb, resource). A registration whose
//! verdict turned to denied is notified once, and the dialect ends the
//! subscription its own way. Dropping the handle (the subscription ended,
//! the connection closed) unregisters it, so nothing is reviewed for a
//! connection that is gone.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{StreamExt, stream};
use parking_lot::Mutex;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::task::AbortOnDropHandle;
use tracing::{Instrument, debug, info_span};

use super::review::{ReviewError, Reviewer, User};
use crate::cluster::Cluster;
use crate::metrics::Metrics;
use kubemux_vocab::path::ResourcePath;

/// Reviews in flight at once during a tick: enough that thousands of
/// distinct questions finish well within an interval, few enough not to
/// burst the API server.
const CONCURRENCY: usize = 16;

/// Shortest interval the ticker runs at (a zero interval would spin).
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Who a re-check is about.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A bearer token, authenticated afresh (TokenReview) at every tick,
    /// because the token itself may have been revoked.
    Token(Arc<str>),
    /// A user kubemux already authenticated (a verified JWT's subject and
    /// groups).
    User(User),
}

impl std::fmt::Debug for Principal {
    /// Never prints the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::Token(_) => f.write_str("Token(<redacted>)"),
            Principal::User(user) => f.debug_tuple("User").field(&user.name).finish(),
        }
    }
}

/// One thing a subscription needs: a verb on a resource (or subresource).
#[derive(Clone, Debug)]
pub struct Access {
    /// The verb.
    pub verb: &'static str,
    /// The resource; its version is sent but not part of what is
    /// deduplicated (RBAC ignores it).
    pub resource: ResourcePath,
    /// A subresource such as `log`.
    pub subresource: Option<&'static str>,
}

impl Access {
    /// `verb` on the collection at `path` (a path kubemux builds itself).
    pub fn on_path(verb: &'static str, path: &str) -> Result<Access, String> {
        kubemux_vocab::path::parse_collection(path)
            .map(|resource| Access {
                verb,
                resource,
                subresource: None,
            })
            .map_err(|e| e.to_string())
    }

    /// What a watch needs: `list` and `watch` on `resource`.
    pub fn list_and_watch(resource: &ResourcePath) -> Vec<Access> {
        ["list", "watch"]
            .into_iter()
            .map(|verb| Access {
                verb,
                resource: resource.clone(),
                subresource: None,
            })
            .collect()
    }

    fn key(&self) -> AccessKey {
        AccessKey {
            verb: self.verb,
            group: self.resource.group.clone(),
            resource: self.resource.resource.clone(),
            subresource: self.subresource,
            namespace: self.resource.namespace.clone(),
        }
    }
}

/// What makes two accesses the same question to RBAC.
#[derive(Clone, PartialEq, Eq, Hash)]
struct AccessKey {
    verb: &'static str,
    group: String,
    resource: String,
    subresource: Option<&'static str>,
    namespace: Option<String>,
}

/// A review's answer, to be awaited.
pub type Answer<'a, T> = BoxFuture<'a, Result<T, ReviewError>>;

/// One access review of a tick: may `user` have `access` on `cluster`.
pub struct Question {
    /// Where.
    pub cluster: Arc<Cluster>,
    /// Who.
    pub user: User,
    /// What.
    pub access: Access,
}

/// Who answers the re-checks: the [`Reviewer`], bypassing its cache (a
/// re-check must see a revocation within its interval) and refreshing it.
/// A trait so the ticker can be tested without a cluster.
pub trait Authority: Send + Sync + 'static {
    /// Who `token` belongs to.
    fn authenticate<'a>(&'a self, cluster: &'a Cluster, token: &'a str) -> Answer<'a, User>;
    /// Whether the question's user may have its access.
    fn authorise<'a>(&'a self, question: &'a Question) -> Answer<'a, ()>;
}

impl Authority for Reviewer {
    fn authenticate<'a>(&'a self, cluster: &'a Cluster, token: &'a str) -> Answer<'a, User> {
        Box::pin(Reviewer::authenticate(self, cluster, token, true))
    }

    fn authorise<'a>(&'a self, question: &'a Question) -> Answer<'a, ()> {
        let access = &question.access;
        Box::pin(self.check_user(
            &question.cluster,
            &question.user,
            access.verb,
            &access.resource,
            access.subresource,
            true,
        ))
    }
}

/// Whether a review's error takes access away. A review that could not be
/// made (`Unavailable`: the API server is down) keeps the subscription: an
/// outage must not cut everyone off.
fn revokes(error: &ReviewError) -> bool {
    !matches!(error, ReviewError::Unavailable { .. })
}

type Notify = Arc<dyn Fn(&ReviewError) + Send + Sync>;

struct Entry {
    cluster: Arc<Cluster>,
    principal: Principal,
    accesses: Vec<Access>,
    on_revoked: Notify,
    /// Notified already; no longer reviewed.
    revoked: bool,
}

#[derive(Default)]
struct Entries {
    next: u64,
    map: HashMap<u64, Entry>,
}

struct Inner {
    reviewer: Arc<Reviewer>,
    authority: Arc<dyn Authority>,
    every: Duration,
    metrics: Arc<Metrics>,
    entries: Mutex<Entries>,
    /// The ticker, started by the first registration (a runtime exists
    /// then) and aborted when the service is dropped.
    ticker: Mutex<Option<AbortOnDropHandle<()>>>,
}

/// The re-check service: one per server, shared by every dialect.
#[derive(Clone)]
pub struct Rechecks {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Rechecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rechecks")
            .field("every", &self.inner.every)
            .field("registered", &self.registered())
            .finish_non_exhaustive()
    }
}

/// What one tick asked, for its metrics and log line.
#[derive(Clone, Copy, Debug)]
struct TickReport {
    /// TokenReviews made.
    token_reviews: usize,
    /// SubjectAccessReviews made.
    access_reviews: usize,
    /// Registrations found revoked and notified.
    revoked: usize,
}

impl Rechecks {
    /// Re-checks every `every` with `reviewer` (which also answers the
    /// dialects' first checks, from its cache).
    pub fn new(reviewer: Arc<Reviewer>, every: Duration) -> Self {
        let authority: Arc<dyn Authority> = reviewer.clone();
        Self::with_authority(reviewer, authority, every)
    }

    fn with_authority(
        reviewer: Arc<Reviewer>,
        authority: Arc<dyn Authority>,
        every: Duration,
    ) -> Self {
        Rechecks {
            inner: Arc::new(Inner {
                metrics: reviewer.metrics().clone(),
                reviewer,
                authority,
                every: every.max(MIN_INTERVAL),
                entries: Mutex::new(Entries::default()),
                ticker: Mutex::new(None),
            }),
        }
    }

    /// The reviewer, for first checks (cached).
    pub fn reviewer(&self) -> &Arc<Reviewer> {
        &self.inner.reviewer
    }

    /// The interval of re-checks.
    pub fn every(&self) -> Duration {
        self.inner.every
    }

    /// Live registrations.
    pub fn registered(&self) -> usize {
        self.inner.entries.lock().map.len()
    }

    /// Registers a live subscription of `principal` on `cluster` that
    /// needs every one of `accesses`. `on_revoked` is called once, from the
    /// ticker, with the first refusal, when a re-check finds access gone;
    /// it must not block (send a notice to the connection's task). The
    /// registration lasts as long as the handle.
    pub fn register(
        &self,
        cluster: Arc<Cluster>,
        principal: Principal,
        accesses: Vec<Access>,
        on_revoked: impl Fn(&ReviewError) + Send + Sync + 'static,
    ) -> RecheckHandle {
        let id = {
            let mut entries = self.inner.entries.lock();
            let id = entries.next;
            entries.next += 1;
            entries.map.insert(
                id,
                Entry {
                    cluster,
                    principal,
                    accesses,
                    on_revoked: Arc::new(on_revoked),
                    revoked: false,
                },
            );
            id
        };
        self.inner.metrics.auth_rechecks.inc();
        let mut ticker = self.inner.ticker.lock();
        if ticker.is_none() {
            let every = self.inner.every;
            let first = Instant::now() + every;
            let task = tokio::spawn(
                run(Arc::downgrade(&self.inner), first, every).instrument(info_span!("rechecks")),
            );
            *ticker = Some(AbortOnDropHandle::new(task));
        }
        RecheckHandle {
            inner: self.inner.clone(),
            id,
        }
    }
}

/// A registration; dropping it unregisters.
pub struct RecheckHandle {
    inner: Arc<Inner>,
    id: u64,
}

impl Drop for RecheckHandle {
    fn drop(&mut self) {
        if self.inner.entries.lock().map.remove(&self.id).is_some() {
            self.inner.metrics.auth_rechecks.dec();
        }
    }
}

/// The ticker: one tick per interval from `first` (one interval after the
/// first registration) while the service lives. A tick that takes longer
/// than the interval delays the next rather than overlapping.
async fn run(inner: Weak<Inner>, first: Instant, every: Duration) {
    let mut ticks = tokio::time::interval_at(first, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.tick().await;
    }
}

/// A question's answer, keyed by what makes it distinct.
type TokenKey = (String, Arc<str>);
type AccessQuestion = (String, User, AccessKey);

impl Inner {
    async fn tick(&self) -> TickReport {
        let live: Vec<(u64, Arc<Cluster>, Principal, Vec<Access>)> = self
            .entries
            .lock()
            .map
            .iter()
            .filter(|(_, e)| !e.revoked)
            .map(|(id, e)| {
                (
                    *id,
                    e.cluster.clone(),
                    e.principal.clone(),
                    e.accesses.clone(),
                )
            })
            .collect();
        self.metrics.auth_recheck_ticks.inc();
        let report = self.review(live).await;
        self.metrics
            .auth_recheck_last_reviews
            .set((report.token_reviews + report.access_reviews) as i64);
        for (kind, n) in [
            ("token", report.token_reviews),
            ("access", report.access_reviews),
        ] {
            self.metrics
                .auth_recheck_reviews
                .get_or_create(&crate::metrics::KindLabel { kind })
                .inc_by(n as u64);
        }
        if report.revoked > 0 {
            debug!(?report, "re-check revoked subscriptions");
        }
        report
    }

    async fn review(&self, live: Vec<(u64, Arc<Cluster>, Principal, Vec<Access>)>) -> TickReport {
        let authority = &self.authority;
        // Who: each distinct (cluster, token) once.
        let mut tokens: HashMap<TokenKey, Arc<Cluster>> = HashMap::new();
        for (_, cluster, principal, _) in &live {
            if let Principal::Token(token) = principal {
                tokens
                    .entry((cluster.id().to_string(), token.clone()))
                    .or_insert_with(|| cluster.clone());
            }
        }
        let token_reviews = tokens.len();
        let users: HashMap<TokenKey, Result<User, ReviewError>> = stream::iter(tokens)
            .map(|(key, cluster)| async move {
                let answer = authority.authenticate(&cluster, &key.1).await;
                (key, answer)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        // What: each distinct (cluster, user, access) once.
        let mut resolved = Vec::with_capacity(live.len());
        let mut questions: HashMap<AccessQuestion, Question> = HashMap::new();
        for (id, cluster, principal, accesses) in live {
            let user = match principal {
                Principal::User(user) => Ok(user),
                // Every registration's token was reviewed above.
                Principal::Token(token) => match users.get(&(cluster.id().to_string(), token)) {
                    Some(answer) => answer.clone(),
                    None => continue,
                },
            };
            if let Ok(user) = &user {
                for access in &accesses {
                    questions
                        .entry((cluster.id().to_string(), user.clone(), access.key()))
                        .or_insert_with(|| Question {
                            cluster: cluster.clone(),
                            user: user.clone(),
                            access: access.clone(),
                        });
                }
            }
            resolved.push((id, cluster, user, accesses));
        }
        let access_reviews = questions.len();
        let answers: HashMap<AccessQuestion, Result<(), ReviewError>> = stream::iter(questions)
            .map(|(key, question)| async move {
                let answer = authority.authorise(&question).await;
                (key, answer)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        // Verdicts: the first refusal of each registration.
        let mut denied = Vec::new();
        for (id, cluster, user, accesses) in resolved {
            let refusal = match user {
                Err(e) => Some(e),
                Ok(user) => accesses.iter().find_map(|access| {
                    let key = (cluster.id().to_string(), user.clone(), access.key());
                    answers.get(&key).and_then(|a| a.clone().err())
                }),
            };
            match refusal {
                Some(e) if revokes(&e) => denied.push((id, e)),
                Some(e) => {
                    debug!(error = %e, "re-check could not be made; keeping the subscription")
                }
                None => {}
            }
        }
        let notify: Vec<(Notify, ReviewError)> = {
            let mut entries = self.entries.lock();
            denied
                .into_iter()
                .filter_map(|(id, e)| {
                    let entry = entries.map.get_mut(&id).filter(|entry| !entry.revoked)?;
                    entry.revoked = true;
                    Some((entry.on_revoked.clone(), e))
                })
                .collect()
        };
        let revoked = notify.len();
        for (on_revoked, e) in notify {
            on_revoked(&e);
        }
        TickReport {
            token_reviews,
            access_reviews,
            revoked,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts reviews; denies the users in `denied`, rejects the tokens in
    /// `rejected`; a token `t-<name>` belongs to user `<name>`.
    #[derive(Default)]
    struct Fake {
        tokens: AtomicUsize,
        access: AtomicUsize,
        denied: Mutex<HashSet<String>>,
        rejected: Mutex<HashSet<String>>,
        down: std::sync::atomic::AtomicBool,
    }

    impl Authority for Fake {
        fn authenticate<'a>(&'a self, cluster: &'a Cluster, token: &'a str) -> Answer<'a, User> {
            Box::pin(async move {
                self.tokens.fetch_add(1, Ordering::SeqCst);
                if self.rejected.lock().contains(token) {
                    return Err(ReviewError::Unauthenticated {
                        cluster: cluster.id().to_string(),
                        reason: "revoked".into(),
                    });
                }
                Ok(user(token.trim_start_matches("t-")))
            })
        }

        fn authorise<'a>(&'a self, question: &'a Question) -> Answer<'a, ()> {
            let Question {
                cluster,
                user,
                access,
            } = question;
            Box::pin(async move {
                self.access.fetch_add(1, Ordering::SeqCst);
                if self.down.load(Ordering::SeqCst) {
                    return Err(ReviewError::Unavailable {
                        cluster: cluster.id().to_string(),
                        message: "down".into(),
                    });
                }
                if self.denied.lock().contains(&user.name) {
                    return Err(ReviewError::Forbidden {
                        user: user.name.clone(),
                        verb: access.verb,
                        resource: access.resource.resource.clone(),
                        scope: "all namespaces".into(),
                        cluster: cluster.id().to_string(),
                        reason: String::new(),
                    });
                }
                Ok(())
            })
        }
    }

    fn user(name: &str) -> User {
        User {
            name: name.to_string(),
            uid: None,
            groups: vec!["team".into()],
        }
    }

    fn cluster() -> Arc<Cluster> {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        Arc::new(Cluster::new("c", "http://127.0.0.1:9", client))
    }

    fn pods(namespace: &str, version: &str) -> ResourcePath {
        ResourcePath {
            group: String::new(),
            version: version.into(),
            resource: "pods".into(),
            namespace: Some(namespace.into()),
        }
    }

    /// A service ticking `every` against a fake authority.
    /// The re-check service on a fake authority, and a cluster to register on.
    fn service(every: Duration) -> (Arc<Fake>, Rechecks, Arc<Cluster>) {
        let fake = Arc::new(Fake::default());
        let metrics = Arc::new(Metrics::new());
        let reviewer = Arc::new(Reviewer::new(Duration::from_secs(1), metrics));
        let rechecks = Rechecks::with_authority(reviewer, fake.clone(), every);
        (fake, rechecks, cluster())
    }

    /// Registers `principal` as a watcher of the pods of `namespace`.
    fn watch(
        rechecks: &Rechecks,
        cluster: &Arc<Cluster>,
        principal: Principal,
        namespace: &str,
        notify: impl Fn(&ReviewError) + Send + Sync + 'static,
    ) -> RecheckHandle {
        let access = Access::list_and_watch(&pods(namespace, "v1"));
        rechecks.register(cluster.clone(), principal, access, notify)
    }

    fn token(token: &str) -> Principal {
        Principal::Token(token.into())
    }

    /// Counts the notifications it was given.
    fn counter() -> (
        Arc<AtomicUsize>,
        impl Fn(&ReviewError) + Send + Sync + 'static,
    ) {
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        (count, move |_: &ReviewError| {
            c.fetch_add(1, Ordering::SeqCst);
        })
    }

    /// Lets the ticker task run what is due.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_review_per_distinct_question_per_tick_across_registrations() {
        let every = Duration::from_secs(30);
        let (fake, rechecks, cluster) = service(every);
        let (revoked, notify) = counter();
        let notify = Arc::new(notify);
        let mut handles = Vec::new();
        // 1,000 registrations of one token on one collection (versions
        // differ: RBAC ignores them), plus a JWT user of the same name.
        for i in 0..1000 {
            let n = notify.clone();
            handles.push(rechecks.register(
                cluster.clone(),
                token("t-alice"),
                Access::list_and_watch(&pods("default", if i % 2 == 0 { "v1" } else { "v2" })),
                move |e| n(e),
            ));
        }
        let n = notify.clone();
        handles.push(watch(
            &rechecks,
            &cluster,
            Principal::User(user("alice")),
            "default",
            move |e| n(e),
        ));
        assert_eq!(rechecks.registered(), 1001);
        // Nothing before the first interval has passed.
        tokio::time::advance(every - Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(fake.access.load(Ordering::SeqCst), 0);
        tokio::time::advance(Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(fake.tokens.load(Ordering::SeqCst), 1, "one TokenReview");
        assert_eq!(
            fake.access.load(Ordering::SeqCst),
            2,
            "list and watch, once each"
        );
        // Every interval, the same few reviews again.
        tokio::time::advance(every).await;
        settle().await;
        assert_eq!(fake.access.load(Ordering::SeqCst), 4);
        assert_eq!(revoked.load(Ordering::SeqCst), 0);
        // A revocation reaches every registration once, then they are no
        // longer reviewed.
        fake.denied.lock().insert("alice".into());
        tokio::time::advance(every).await;
        settle().await;
        assert_eq!(revoked.load(Ordering::SeqCst), 1001);
        assert_eq!(fake.access.load(Ordering::SeqCst), 6);
        tokio::time::advance(every).await;
        settle().await;
        assert_eq!(revoked.load(Ordering::SeqCst), 1001, "notified once");
        assert_eq!(
            fake.access.load(Ordering::SeqCst),
            6,
            "revoked: not asked again"
        );
        drop(handles);
        assert_eq!(rechecks.registered(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_handle_is_never_reviewed_and_an_outage_revokes_nobody() {
        let every = Duration::from_secs(10);
        let (fake, rechecks, cluster) = service(every);
        let (bob_revoked, bob_notify) = counter();
        let bob = watch(&rechecks, &cluster, token("t-bob"), "team-b", bob_notify);
        let (carol_revoked, carol_notify) = counter();
        let _carol = watch(
            &rechecks,
            &cluster,
            token("t-carol"),
            "team-c",
            carol_notify,
        );
        drop(bob);
        fake.denied.lock().insert("bob".into());
        fake.down.store(true, Ordering::SeqCst);
        tokio::time::advance(every).await;
        settle().await;
        assert_eq!(fake.tokens.load(Ordering::SeqCst), 1, "only carol's token");
        assert_eq!(fake.access.load(Ordering::SeqCst), 2);
        assert_eq!(
            carol_revoked.load(Ordering::SeqCst),
            0,
            "an outage keeps her"
        );
        assert_eq!(bob_revoked.load(Ordering::SeqCst), 0, "bob is gone");
        // A rejected token revokes without any access review.
        fake.down.store(false, Ordering::SeqCst);
        fake.rejected.lock().insert("t-carol".into());
        tokio::time::advance(every).await;
        settle().await;
        assert_eq!(carol_revoked.load(Ordering::SeqCst), 1);
        assert_eq!(fake.access.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_ticker_lives_as_long_as_the_service_or_a_handle() {
        let every = Duration::from_secs(5);
        let (fake, rechecks, cluster) = service(every);
        let metrics = rechecks.inner.metrics.clone();
        let (_, notify) = counter();
        let handle = watch(
            &rechecks,
            &cluster,
            Principal::User(user("dave")),
            "default",
            notify,
        );
        drop(rechecks);
        tokio::time::advance(every).await;
        settle().await;
        assert_eq!(fake.access.load(Ordering::SeqCst), 2, "the handle keeps it");
        assert_eq!(metrics.auth_rechecks.get(), 1);
        drop(handle);
        assert_eq!(metrics.auth_rechecks.get(), 0);
        let ticks = metrics.auth_recheck_ticks.get();
        tokio::time::advance(every * 3).await;
        settle().await;
        assert_eq!(
            metrics.auth_recheck_ticks.get(),
            ticks,
            "the ticker stopped"
        );
    }
}
