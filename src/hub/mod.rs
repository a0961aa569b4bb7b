//! The hub: one shared upstream watch per [`WatchKey`], reference-counted
//! across every subscriber, with a cache that serves joins and resumes
//! without touching the cluster.
//!
//! Dialects call [`Hub::subscribe`] with a [`Subscriber`] and keep the
//! returned [`Subscription`]; dropping it unsubscribes. Code that needs a
//! collection's current state rather than its events takes a [`Store`]
//! ([`Hub::store`]). The hub never knows how a dialect frames events.

mod filter;
pub mod key;
mod list;
pub mod local;
pub mod nodes;
mod shared;
mod store;
pub mod subscriber;
#[cfg(test)]
pub(crate) mod tests;
mod watch_cache;

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tracing::{Instrument, info};

use crate::cluster::{ClusterChange, Registry};
use crate::metrics::Metrics;
use crate::upstream::{self, UpstreamConfig, WatchTarget};
use filter::Filter;
pub use key::{ClientParams, KeyError, ListParams, WatchKey};
pub use kubemux_vocab::identity::Identity;
pub use kubemux_vocab::path::ResourcePath;
pub use list::CachedList;
pub use local::LocalWatch;
pub use nodes::{NodeCounts, NodesUnknown};
pub use shared::FanOut;
use shared::{SharedWatch, SubscriberId, Upstream};
pub use store::{Snapshot, Store, StoreEnded};
pub use subscriber::{EndReason, Overflow, Subscriber};
pub use watch_cache::HistoryLimits;

/// Settings of the hub.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// How long a shared watch outlives its last subscriber.
    pub linger: Duration,
    /// Interval of kubemux's own bookmarks to subscribers that asked for them.
    pub bookmark_interval: Duration,
    /// History bounds of each shared watch.
    pub history: HistoryLimits,
    /// Upstream request settings.
    pub upstream: UpstreamConfig,
    /// Most shared (= upstream) watches on one cluster; a REQUEST for a new
    /// key beyond it is refused naming the limit. Joining a watch that
    /// exists is always allowed.
    pub max_watches_per_cluster: usize,
    /// Most shared watches one caller's identity may hold on a cluster in
    /// `passthrough` (where each token has watches of its own).
    pub max_watches_per_identity: usize,
    /// Whether every namespace and selector gets an upstream watch of its
    /// own. Off (the default), a request for a namespace or a selector
    /// kubemux can evaluate is served from its resource type's one
    /// cluster-wide watch, filtered per subscriber (see `filter`), as the
    /// API server's cacher serves its watchers.
    pub watch_per_query: bool,
    /// How one event's delivery to a shared watch's subscribers is spread
    /// over threads.
    pub fan_out: FanOut,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            linger: Duration::from_secs(30),
            bookmark_interval: Duration::from_secs(60),
            history: HistoryLimits::default(),
            upstream: UpstreamConfig::default(),
            max_watches_per_cluster: 2_000,
            max_watches_per_identity: 200,
            watch_per_query: false,
            fan_out: FanOut::default(),
        }
    }
}

/// A shared watch as the status page shows it.
#[derive(Clone, Debug)]
pub struct WatchInfo {
    /// The key.
    pub key: WatchKey,
    /// Current subscribers.
    pub subscribers: usize,
    /// Upstream events received since the watch started.
    pub events: u64,
}

/// Restricts a key to `identity`: watches made with a caller's token are
/// shared only with callers holding the same token.
fn scope(identity: &Identity, key: WatchKey) -> WatchKey {
    match identity.hash() {
        None => key,
        Some(hash) => key.with_identity(Some(hash.into())),
    }
}

/// What a dialect asks for, exactly as its client sent it.
#[derive(Clone, Debug)]
pub struct SubscribeRequest<'a> {
    /// Cluster id.
    pub cluster: &'a str,
    /// Collection path.
    pub path: &'a str,
    /// Query string, without `?`.
    pub query: &'a str,
    /// Identity of the upstream watch.
    pub identity: &'a Identity,
}

/// Why a subscription could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The request does not name a watchable collection.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// No cluster with that id is configured.
    #[error("unknown cluster {0:?}")]
    UnknownCluster(String),
    /// A client for the caller's identity could not be made.
    #[error("cannot act as the caller on cluster {0:?}: {1}")]
    Identity(String, String),
    /// The hub is shutting down.
    #[error("kubemux is shutting down")]
    ShuttingDown,
    /// A new shared watch would exceed a limit on upstream watches.
    #[error(
        "too many distinct watches: kubemux already holds {limit} upstream watches {scope} on cluster {cluster:?} (the limit {setting}); close other watches or ask the operator to raise it"
    )]
    TooManyWatches {
        /// The cluster.
        cluster: String,
        /// `for this identity`, or `in all`.
        scope: &'static str,
        /// The limit's value.
        limit: usize,
        /// The setting that sets it.
        setting: &'static str,
    },
}

/// How long kubemux serves requests from narrower watches after the
/// cluster refused a wide one, before trying it again (its RBAC may have
/// changed).
const NARROW_FOR: Duration = Duration::from_secs(600);

pub(crate) struct HubInner {
    pub(crate) config: HubConfig,
    pub(crate) watches: DashMap<WatchKey, Arc<SharedWatch>>,
    /// Wide watches (cluster-wide, or a namespace's whole collection) the
    /// cluster refused (403) before they listed, and when: requests they
    /// would serve filtered get narrower watches until [`NARROW_FOR`] has
    /// passed. In `passthrough` there is an entry per refused token, so
    /// expired entries are dropped whenever one is added.
    narrow_only: DashMap<WatchKey, Instant>,
    /// Shared watches held per cluster and per (cluster, identity), for the
    /// limits; a watch is counted from its creation until it stops.
    counts: DashMap<(Arc<str>, Option<Arc<str>>), usize>,
    clusters: Arc<Registry>,
    metrics: Arc<Metrics>,
    closing: std::sync::atomic::AtomicBool,
    /// See [`Hub::node_counts`].
    node_counts: nodes::CountMemo,
}

/// The shared-watch hub. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

/// A live subscription. Dropping it unsubscribes (without an end notice).
pub struct Subscription {
    watch: Arc<SharedWatch>,
    id: SubscriberId,
    linger: Duration,
}

impl Subscription {
    /// The key of the shared watch this subscription is on.
    pub fn key(&self) -> &WatchKey {
        self.watch.key()
    }

    /// The subscriber's id within its shared watch.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.watch.remove(self.id, self.linger);
    }
}

impl Hub {
    /// A hub over the clusters of `clusters`.
    pub fn new(config: HubConfig, clusters: Arc<Registry>, metrics: Arc<Metrics>) -> Self {
        let changes = clusters.changes();
        let hub = Hub {
            inner: Arc::new(HubInner {
                config,
                watches: DashMap::new(),
                narrow_only: DashMap::new(),
                counts: DashMap::new(),
                clusters,
                metrics,
                closing: std::sync::atomic::AtomicBool::new(false),
                node_counts: nodes::CountMemo::default(),
            }),
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(follow_cluster_changes(Arc::downgrade(&hub.inner), changes));
        }
        hub
    }

    /// The metrics the hub updates.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The cluster registry.
    pub fn clusters(&self) -> &Arc<Registry> {
        &self.inner.clusters
    }

    /// Number of shared (= upstream) watches.
    pub fn watch_count(&self) -> usize {
        self.inner.watches.len()
    }

    /// Subscribes `sink` to a collection. The sink first receives what it is
    /// owed from the cache (by the request's `resourceVersion`), then live events.
    pub fn subscribe(
        &self,
        request: SubscribeRequest<'_>,
        sink: Arc<dyn Subscriber>,
    ) -> Result<Subscription, SubscribeError> {
        let (placed, params) = self.resolve(&request)?;
        // The first subscriber's version is where a new watch lists, so
        // that subscriber resumes exactly (see `upstream::run`).
        let list_at = params
            .resource_version
            .as_deref()
            .and_then(|rv| rv.parse::<u64>().ok())
            .filter(|rv| *rv > 0 && !params.send_initial_events);
        self.subscribe_placed(placed, sink, params, list_at)
    }

    fn subscribe_placed(
        &self,
        placed: Placement,
        sink: Arc<dyn Subscriber>,
        params: ClientParams,
        list_at: Option<u64>,
    ) -> Result<Subscription, SubscribeError> {
        let Placement {
            key,
            filter,
            client,
        } = placed;
        let (watch, id) = self.join(key, client, list_at, |watch| {
            watch.add(sink.clone(), params.clone(), filter.clone())
        })?;
        Ok(Subscription {
            watch,
            id,
            linger: self.inner.config.linger,
        })
    }

    /// Subscribes `sink`, a filtered subscriber of a wide watch the cluster
    /// refused, where it is placed now: a narrower wide watch, or a watch
    /// of its own request; made with `client`, the refused watch's (so with
    /// the same identity).
    fn subscribe_narrow(
        &self,
        filter: &Filter,
        client: kube::Client,
        sink: Arc<dyn Subscriber>,
        params: ClientParams,
    ) -> Result<Subscription, SubscribeError> {
        let placed = self.narrow_placement(filter, client)?;
        self.subscribe_placed(placed, sink, params, None)
    }

    /// A read handle for a filtered reader of a refused wide watch, placed
    /// as [`Hub::subscribe_narrow`] places a subscriber.
    fn store_narrow(&self, filter: &Filter, client: kube::Client) -> Result<Store, SubscribeError> {
        self.store_placed(self.narrow_placement(filter, client)?)
    }

    fn narrow_placement(
        &self,
        filter: &Filter,
        client: kube::Client,
    ) -> Result<Placement, SubscribeError> {
        let narrow = filter.narrow();
        if self.inner.clusters.get(narrow.cluster()).is_none() {
            return Err(SubscribeError::UnknownCluster(narrow.cluster().into()));
        }
        let (key, filter) = self.inner.place_scoped(narrow.clone(), filter.resource());
        Ok(Placement {
            key,
            filter,
            client,
        })
    }

    /// A read handle on the store of the collection's shared watch, which
    /// it starts if none runs: admitted, keyed by identity and kept alive
    /// exactly as for [`Hub::subscribe`] (the request's position
    /// parameters are ignored: a store is always at its latest version).
    pub fn store(&self, request: SubscribeRequest<'_>) -> Result<Store, SubscribeError> {
        let (placed, _) = self.resolve(&request)?;
        self.store_placed(placed)
    }

    /// A read handle on the shared watch `placed` names, joined (and
    /// started) as a subscriber joins it.
    fn store_placed(&self, placed: Placement) -> Result<Store, SubscribeError> {
        let Placement {
            key,
            filter,
            client,
        } = placed;
        let (_, store) = self.join(key, client, None, |watch| {
            Store::hold(watch.clone(), filter.clone())
        })?;
        Ok(store)
    }

    /// Where the request is served (see [`Placement`]) and the caller's
    /// own parameters.
    fn resolve(
        &self,
        request: &SubscribeRequest<'_>,
    ) -> Result<(Placement, ClientParams), SubscribeError> {
        if self
            .inner
            .closing
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(SubscribeError::ShuttingDown);
        }
        let (key, resource, params) = key::normalize(request.cluster, request.path, request.query)?;
        let cluster = self.inner.clusters.get(request.cluster).ok_or_else(|| {
            SubscribeError::UnknownCluster(request.cluster.chars().take(100).collect())
        })?;
        let client = match request.identity {
            Identity::Proxy => cluster.client(),
            Identity::Bearer(token) => cluster.client_for_token(token).map_err(|e| {
                SubscribeError::Identity(request.cluster.to_string(), e.to_string())
            })?,
        };
        let (key, filter) = self.inner.place(request.identity, key, &resource);
        Ok((
            Placement {
                key,
                filter,
                client,
            },
            params,
        ))
    }

    /// Joins the shared watch for `key` with `enter` (which takes a hold on
    /// it, or `None` if it stopped meanwhile), creating the watch if there
    /// is none: admitted against the limits, and started only once its
    /// first holder is in, so the first listing serves that holder (and can
    /// tell whether anyone still needs the watch).
    fn join<T>(
        &self,
        key: WatchKey,
        client: kube::Client,
        list_at: Option<u64>,
        enter: impl Fn(&Arc<SharedWatch>) -> Option<T>,
    ) -> Result<(Arc<SharedWatch>, T), SubscribeError> {
        loop {
            let (watch, created) = match self.inner.watches.entry(key.clone()) {
                dashmap::Entry::Occupied(entry) => (entry.get().clone(), false),
                dashmap::Entry::Vacant(entry) => {
                    self.inner.admit(&key)?;
                    (entry.insert(self.new_watch(&key)).clone(), true)
                }
            };
            if let Some(held) = enter(&watch) {
                if created {
                    self.launch(&watch, client, list_at);
                }
                return Ok((watch, held));
            }
            self.inner
                .watches
                .remove_if(&key, |_, w| Arc::ptr_eq(w, &watch));
        }
    }

    fn new_watch(&self, key: &WatchKey) -> Arc<SharedWatch> {
        self.inner
            .metrics
            .upstream_watches
            .get_or_create(&Metrics::cluster(key.cluster()))
            .inc();
        Arc::new(SharedWatch::new(
            key.clone(),
            Arc::downgrade(&self.inner),
            self.inner.metrics.clone(),
            watch_cache::Cache::new(self.inner.config.history.clone()),
            self.inner.config.fan_out,
        ))
    }

    /// Starts a new watch's upstream task (listing at `list_at`, the first
    /// subscriber's version) and its bookmark ticker.
    fn launch(&self, watch: &Arc<SharedWatch>, client: kube::Client, list_at: Option<u64>) {
        let config = &self.inner.config;
        let key = watch.key();
        let target = WatchTarget {
            client,
            path: key.path().to_string(),
            selectors: key.selectors().to_string(),
        };
        watch.set_target(target.clone(), config.upstream.clone());
        info!(cluster = key.cluster(), key = %key.short_hash(), path = key.path(), "starting shared watch");
        let sink = Arc::new(Upstream(Arc::downgrade(watch)));
        let span = tracing::info_span!("watch", cluster = key.cluster(), key = %key.short_hash());
        let upstream = tokio::spawn(
            upstream::run(target, config.upstream.clone(), sink, list_at).instrument(span),
        );
        watch.add_task(upstream.abort_handle());
        watch.add_task(spawn_bookmarks(
            Arc::downgrade(watch),
            config.bookmark_interval,
        ));
    }

    /// A LIST answer for a collection, served from a live shared watch's
    /// store without asking the cluster, when it is the answer the API
    /// server would give; `None` when no watch for that key has listed yet,
    /// or when only the cluster can answer:
    ///
    /// - paging (`limit` above 0, `continue`): the continue token is the
    ///   cluster's own, so the first page must be the cluster's too;
    /// - `resourceVersion=R` (match unset or `NotOlderThan`) with a store
    ///   older than `R`, and `resourceVersionMatch=Exact` with a store not
    ///   exactly at `R` (the store keeps only its current state);
    /// - a version that is not a number, and any combination the API
    ///   server refuses (its 422 is the cluster's to write).
    ///
    /// Without `resourceVersion` the API server answers its most recent
    /// state; the store's is that of a watch that is live, so it may trail
    /// the cluster by the events in flight.
    pub fn cached_list(
        &self,
        cluster: &str,
        path: &str,
        query: &str,
        identity: &Identity,
    ) -> Option<CachedList> {
        let (key, resource, params) = key::normalize_list(cluster, path, query).ok()?;
        let (key, filter) = self.inner.place(identity, key, &resource);
        let watch = self.inner.watches.get(&key)?.clone();
        let store = Store::hold(watch, filter)?;
        list::answer(&params, store.snapshot()?)
    }

    /// Whether a shared watch for this watch request's key is live (has
    /// listed and not stopped), so that [`Hub::subscribe`] joins it rather
    /// than starting an upstream watch. `false` for a request that does not
    /// name a watch key.
    pub fn has_live_watch(
        &self,
        cluster: &str,
        path: &str,
        query: &str,
        identity: &Identity,
    ) -> bool {
        let Ok((key, resource, _)) = key::normalize(cluster, path, query) else {
            return false;
        };
        let (key, _) = self.inner.place(identity, key, &resource);
        let watch = self.inner.watches.get(&key).map(|w| w.clone());
        watch.is_some_and(|watch| watch.is_live())
    }

    /// Ends every subscription with [`EndReason::Shutdown`] and stops every
    /// upstream watch; later subscribe calls fail.
    pub fn shutdown(&self) {
        self.inner
            .closing
            .store(true, std::sync::atomic::Ordering::Release);
        let watches: Vec<Arc<SharedWatch>> = self.inner.watches.iter().map(|w| w.clone()).collect();
        for w in watches {
            w.shutdown(EndReason::Shutdown);
        }
    }

    /// Ends every subscription on one cluster (the cluster was removed).
    pub fn end_cluster(&self, cluster: &str, reason: EndReason) {
        let watches: Vec<Arc<SharedWatch>> = self
            .inner
            .watches
            .iter()
            .filter(|w| w.key().cluster() == cluster)
            .map(|w| w.clone())
            .collect();
        for w in watches {
            w.shutdown(reason.clone());
        }
    }

    /// A summary of every shared watch.
    pub fn watches(&self) -> Vec<WatchInfo> {
        let mut out: Vec<WatchInfo> = self
            .inner
            .watches
            .iter()
            .map(|w| WatchInfo {
                key: w.key().clone(),
                subscribers: w.subscriber_count(),
                events: w.events_received(),
            })
            .collect();
        out.sort_by(|a, b| {
            (a.key.cluster(), a.key.path(), a.key.selectors()).cmp(&(
                b.key.cluster(),
                b.key.path(),
                b.key.selectors(),
            ))
        });
        out
    }
}

/// Where a request is served: the shared watch's key, the subscriber's
/// filter when that watch is wider than the request, and the client a new
/// watch would use.
struct Placement {
    key: WatchKey,
    filter: Option<Arc<Filter>>,
    client: kube::Client,
}

impl HubInner {
    /// The shared watch a request for `key` is served from: the widest of
    /// its resource type's cluster-wide watch and its namespace's whole
    /// collection (see [`filter::widen`]) that the cluster has not refused
    /// lately, filtered; else the request's own. In `passthrough` every
    /// key is scoped to the caller's identity, so the widest scope a token
    /// may watch is shared among that token's subscriptions, and never
    /// with another's.
    fn place(
        &self,
        identity: &Identity,
        key: WatchKey,
        resource: &ResourcePath,
    ) -> (WatchKey, Option<Arc<Filter>>) {
        self.place_scoped(scope(identity, key), resource)
    }

    /// [`HubInner::place`] for a key already scoped to its identity.
    fn place_scoped(
        &self,
        key: WatchKey,
        resource: &ResourcePath,
    ) -> (WatchKey, Option<Arc<Filter>>) {
        if self.config.watch_per_query {
            return (key, None);
        }
        filter::widen(&key, resource)
            .into_iter()
            .find(|(wide, _)| {
                self.narrow_only
                    .get(wide)
                    .is_none_or(|since| since.elapsed() >= NARROW_FOR)
            })
            .map_or((key, None), |(wide, filter)| (wide, Some(filter)))
    }

    /// The cluster refused the wide watch `wide`: requests it would serve
    /// filtered get narrower watches for a while.
    pub(crate) fn refused_wide(&self, wide: &WatchKey) {
        self.narrow_only
            .retain(|_, since| since.elapsed() < NARROW_FOR);
        self.narrow_only.insert(wide.clone(), Instant::now());
    }

    /// Counts a new shared watch for `key` against the limits, or says which
    /// one it would exceed.
    fn admit(&self, key: &WatchKey) -> Result<(), SubscribeError> {
        let cluster: Arc<str> = key.cluster().into();
        let identity: Option<Arc<str>> = key.identity().map(Into::into);
        let refuse = |scope, limit, setting| SubscribeError::TooManyWatches {
            cluster: key.cluster().chars().take(100).collect(),
            scope,
            limit,
            setting,
        };
        let held = |k: &(Arc<str>, Option<Arc<str>>)| self.counts.get(k).map_or(0, |n| *n);
        let all = (cluster.clone(), None);
        if held(&all) >= self.config.max_watches_per_cluster {
            return Err(refuse(
                "in all",
                self.config.max_watches_per_cluster,
                "--max-upstream-watches",
            ));
        }
        let mine = (cluster, identity);
        if mine.1.is_some() && held(&mine) >= self.config.max_watches_per_identity {
            return Err(refuse(
                "for this identity",
                self.config.max_watches_per_identity,
                "--max-watches-per-identity",
            ));
        }
        *self.counts.entry(all).or_insert(0) += 1;
        if mine.1.is_some() {
            *self.counts.entry(mine).or_insert(0) += 1;
        }
        Ok(())
    }

    /// A shared watch for `key` stopped: it no longer counts.
    pub(crate) fn release(&self, key: &WatchKey) {
        let cluster: Arc<str> = key.cluster().into();
        let mut keys = vec![(cluster.clone(), None)];
        if let Some(identity) = key.identity() {
            keys.push((cluster, Some(identity.into())));
        }
        for k in keys {
            if let dashmap::Entry::Occupied(mut entry) = self.counts.entry(k) {
                *entry.get_mut() = entry.get().saturating_sub(1);
                if *entry.get() == 0 {
                    entry.remove();
                }
            }
        }
    }
}

/// Ends the subscriptions of clusters that were removed or reconfigured:
/// their watches were made with a configuration that no longer exists.
async fn follow_cluster_changes(
    hub: Weak<HubInner>,
    mut changes: tokio::sync::broadcast::Receiver<ClusterChange>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let change = match changes.recv().await {
            Ok(change) => change,
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        };
        let Some(inner) = hub.upgrade() else { return };
        let hub = Hub { inner };
        match change {
            ClusterChange::Removed(id) => {
                hub.forget_node_counts(&id);
                hub.end_cluster(
                    &id,
                    EndReason::Failed(format!("cluster {id:?} was removed from the configuration")),
                );
            }
            ClusterChange::Updated(id) => hub.end_cluster(
                &id,
                EndReason::Failed(format!(
                    "cluster {id:?} was reconfigured; subscribe again to watch with the new configuration"
                )),
            ),
            ClusterChange::Added(_) => {}
        }
    }
}

fn spawn_bookmarks(watch: Weak<SharedWatch>, every: Duration) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match watch.upgrade() {
                Some(w) => w.send_bookmarks(),
                None => return,
            }
        }
    })
    .abort_handle()
}
