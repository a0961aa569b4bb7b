//! [`SimServer`]: binds the listener, seeds the store, starts the churn
//! generator and serves HTTP until [`SimServer::shutdown`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, SimAuth};
use crate::churn::{self, ChurnControl, ChurnTargets};
use crate::error::SimError;
use crate::faults::Faults;
use crate::http::{AppState, WatchSettings, router};
use crate::listener::SimListener;
use crate::logs::Logs;
use crate::metrics::Metrics;
use crate::population;
use crate::profile::ObjectProfile;
use crate::resource_metrics::ResourceMetrics;
use crate::store::Store;

/// How long shutdown waits for connections to drain before resetting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Settings of one simulated API server.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Address to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Churn events per second; 0 = none.
    pub churn_rate: f64,
    /// Seed for the initial population and the churn generator.
    pub seed: u64,
    /// Server-side maximum watch duration.
    pub watch_timeout: Duration,
    /// Interval between BOOKMARK events on watches that allow them.
    pub bookmark_interval: Duration,
    /// Compaction window: how many events the history retains.
    pub history_limit: usize,
    /// Compaction on a timer, like kube-apiserver's etcd compactor
    /// (`--etcd-compaction-interval`, default 5 minutes): every tick
    /// compacts up to the resourceVersion recorded at the previous tick, so
    /// a version stays servable for at least one interval. `Duration::ZERO`
    /// turns it off (only `history_limit` and the `compact` fault compact).
    pub compaction_interval: Duration,
    /// Nodes in the initial population.
    pub initial_nodes: usize,
    /// Pods in the initial population.
    pub initial_pods: usize,
    /// Static tokens and rules; `None` serves every request as the admin.
    pub auth: Option<SimAuth>,
    /// Approximate serialised size of objects written by the churn
    /// generator: an annotation pads them up to it (0 = no padding).
    pub object_size: usize,
    /// The shape of the initial and churned pods; `Small` keeps the compact
    /// ones every test was written against.
    pub object_profile: ObjectProfile,
    /// Stamp every committed change with the annotation
    /// [`SENT_AT_ANNOTATION`](crate::store::SENT_AT_ANNOTATION) (Unix
    /// microseconds), so load generators can measure end-to-end latency.
    pub stamp_sent_at: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            churn_rate: 0.0,
            seed: 1,
            watch_timeout: Duration::from_secs(1800),
            bookmark_interval: Duration::from_secs(10),
            history_limit: 10_000,
            compaction_interval: Duration::from_secs(300),
            initial_nodes: 3,
            initial_pods: 20,
            auth: None,
            object_size: 0,
            object_profile: ObjectProfile::Small,
            stamp_sent_at: false,
        }
    }
}

/// A running simulated API server. Cheap to clone: every clone is a handle to
/// the same server; [`SimServer::shutdown`] on any of them stops it.
#[derive(Debug, Clone)]
pub struct SimServer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    addr: SocketAddr,
    store: Arc<Store>,
    faults: Arc<Faults>,
    metrics: Arc<Metrics>,
    churn: ChurnControl,
    auth: Arc<Auth>,
    logs: Arc<Logs>,
    resource_metrics: Arc<ResourceMetrics>,
    shutdown: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl SimServer {
    /// Binds `config.listen`, seeds the initial population and starts
    /// serving (and churning, if `churn_rate > 0`).
    pub async fn start(config: SimConfig) -> Result<SimServer, SimError> {
        config.auth.as_ref().map(SimAuth::validate).transpose()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| SimError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: config.listen,
            source,
        })?;
        let store = Arc::new(Store::new(config.history_limit));
        store.set_stamp_sent_at(config.stamp_sent_at);
        let mut rng = StdRng::seed_from_u64(config.seed);
        population::seed(
            &store,
            &mut rng,
            config.initial_nodes,
            config.initial_pods,
            config.object_profile,
        )?;
        let metrics = Arc::new(Metrics::new());
        let shutdown = CancellationToken::new();
        let faults = Arc::new(Faults::new(
            Arc::clone(&store),
            Arc::clone(&metrics),
            shutdown.clone(),
        ));
        let (churn, churn_task) = churn::spawn(
            Arc::clone(&store),
            config.seed,
            ChurnTargets {
                pods: config.initial_pods,
                nodes: config.initial_nodes,
                object_size: config.object_size,
                profile: config.object_profile,
            },
            config.churn_rate,
            shutdown.clone(),
        );
        let auth = Arc::new(Auth::new(config.auth.clone()));
        let logs = Arc::new(Logs::new(metrics.log_streams()));
        let resource_metrics = Arc::new(ResourceMetrics::default());
        let app = router(AppState {
            store: Arc::clone(&store),
            metrics: Arc::clone(&metrics),
            faults: Arc::clone(&faults),
            churn: churn.clone(),
            addr,
            settings: WatchSettings {
                watch_timeout: config.watch_timeout,
                bookmark_interval: config.bookmark_interval,
            },
            auth: Arc::clone(&auth),
            logs: Arc::clone(&logs),
            resource_metrics: Arc::clone(&resource_metrics),
        });
        let compactor = spawn_compactor(
            Arc::clone(&store),
            config.compaction_interval,
            shutdown.clone(),
        );
        let serve = axum::serve(SimListener::new(listener, addr, Arc::clone(&faults)), app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let serve_task = tokio::spawn(async move {
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "simulated API server failed");
            }
        });
        tracing::info!(%addr, "simulated API server listening");
        Ok(SimServer {
            inner: Arc::new(Inner {
                addr,
                store,
                faults,
                metrics,
                churn,
                auth,
                logs,
                resource_metrics,
                shutdown,
                tasks: Mutex::new(
                    [Some(serve_task), Some(churn_task), compactor]
                        .into_iter()
                        .flatten()
                        .collect(),
                ),
            }),
        })
    }

    /// The bound address (with the real port if 0 was requested).
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// A kubeconfig (JSON, which is valid YAML) with one cluster, user and
    /// context named `context`, pointing at this server with the admin token.
    pub fn kubeconfig(&self, context: &str) -> String {
        json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": {"server": self.url()}}],
            "users": [{"name": context, "user": {"token": self.inner.auth.admin_token()}}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context, "namespace": "default"}}],
            "current-context": context,
            "preferences": {}
        })
        .to_string()
    }

    /// The newest compacted resourceVersion (see
    /// [`Store::compacted_resource_version`]).
    pub fn compacted_resource_version(&self) -> u64 {
        self.inner.store.compacted_resource_version()
    }

    /// The object store, for direct reads and writes that bypass HTTP.
    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    /// Tokens and rules, changeable while the server runs.
    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    /// Pod logs: append lines, count open log streams.
    pub fn logs(&self) -> &Logs {
        &self.inner.logs
    }

    /// `metrics.k8s.io`: served by default, switchable off.
    pub fn resource_metrics(&self) -> &ResourceMetrics {
        &self.inner.resource_metrics
    }

    /// Request and watch metrics, for assertions beyond the helpers here and
    /// in [`crate::identity`].
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// In-process fault injection.
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    /// Sets the churn rate (events per second); 0 pauses churn.
    pub fn set_churn_rate(&self, events_per_sec: f64) {
        self.inner.churn.set_rate(events_per_sec);
    }

    /// Open watch streams for a resource plural.
    pub fn active_watches(&self, resource: &str) -> i64 {
        self.inner.metrics.active_watches(resource)
    }

    /// Watch requests received for a resource plural.
    pub fn watch_requests(&self, resource: &str) -> u64 {
        self.inner.metrics.watch_requests(resource)
    }

    /// LIST requests received for a resource plural.
    pub fn list_requests(&self, resource: &str) -> u64 {
        self.inner.metrics.list_requests(resource)
    }

    /// Stops accepting, ends every watch cleanly, stops churn and waits for
    /// connections to drain (resetting any still open after a grace period).
    pub async fn shutdown(self) {
        self.inner.shutdown.cancel();
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.inner.tasks.lock());
        for mut task in tasks {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
            {
                tracing::warn!("connections did not drain; resetting them");
                self.inner.faults.reset_connections();
                if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                    .await
                    .is_err()
                {
                    task.abort();
                }
            }
        }
        tracing::info!(addr = %self.inner.addr, "simulated API server stopped");
    }
}

/// The timed compactor, or `None` when `interval` is zero. As
/// kube-apiserver's compactor does, the first tick only records the current
/// resourceVersion and every later tick compacts up to the version recorded
/// at the tick before, then records the current one.
fn spawn_compactor(
    store: Arc<Store>,
    interval: Duration,
    shutdown: CancellationToken,
) -> Option<JoinHandle<()>> {
    if interval.is_zero() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut recorded: Option<u64> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {
                    if let Some(rv) = recorded {
                        store.compact_to(rv);
                    }
                    recorded = Some(store.resource_version());
                }
            }
        }
    }))
}
