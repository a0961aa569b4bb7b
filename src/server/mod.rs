//! The HTTP server: WebSocket endpoints for each dialect, health and metrics.

pub mod conn;
mod deflate;
pub mod limits;
mod listener;
pub mod outbound;
mod rest;
mod status;
mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::auth::credentials::Credentials;
use crate::auth::origin::OriginPolicy;
use crate::auth::policy::Policy;
use crate::auth::secret::Secret;
use crate::dialect::notifications::{self, Feed};
use crate::dialect::{console, dashboard, headlamp};
use crate::hub::Hub;
use conn::Liveness;
use outbound::QueueLimits;
pub use status::ReadyBudget;
pub use upgrade::{WebSocket, WebSocketUpgrade};

/// Limits and timings of client connections.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Largest accepted client message, in bytes; larger closes with 1009.
    pub max_message_size: usize,
    /// Most subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Bounds of each connection's outbound queue.
    pub queue: QueueLimits,
    /// Ping, pong and write deadlines.
    pub liveness: Liveness,
    /// Interval of the clusters' health probes.
    pub health_interval: std::time::Duration,
    /// Which browser origins may connect.
    pub origins: OriginPolicy,
    /// Whose identity upstream requests run as.
    pub policy: Policy,
    /// Cluster notifications: updates closer together than this are merged.
    pub notifications_debounce: std::time::Duration,
    /// Also serve cluster notifications at `/ws` (and `/api/clusters`) on
    /// this address, for frontends that expect the seed's own path.
    pub notifications_listen: Option<SocketAddr>,
    /// Also serve the dashboard stream at `/ws` on this address.
    pub dashboard_listen: Option<SocketAddr>,
    /// Interval of the dashboard stream's `metrics` messages.
    pub dashboard_metrics_interval: std::time::Duration,
    /// The dashboard stream's heartbeat (seed 001's by default).
    pub dashboard_liveness: Liveness,
    /// Cluster notifications' heartbeat (seed 002's by default).
    pub notifications_liveness: Liveness,
    /// The subscription API's heartbeat and idle timeout (seed 003's by
    /// default).
    pub console_liveness: Liveness,
    /// Abuse limits.
    pub limits: limits::Limits,
    /// The console dialect's JWT verifier and reviewer; without it `/ws/v1`
    /// is refused.
    pub console: Option<Arc<console::ConsoleAuth>>,
    /// Also serve the console dialect at `/ws` on this address.
    pub subscriptions_listen: Option<SocketAddr>,
    /// Headlamp's backend token: when set, `/wsMultiplexer` and
    /// `/clusters/…` require it, as Headlamp's own backend does. Never a
    /// Kubernetes credential, never forwarded.
    pub headlamp_backend_token: Option<Arc<Secret>>,
    /// The operator's bearer token: who sees the watches and API server
    /// addresses on `/api/status` and `/api/clusters` (see
    /// [`status::is_operator`]).
    pub admin_token: Option<Arc<Secret>>,
    /// Above these, `/readyz` fails so a load balancer sends new clients to
    /// another replica (the connections already here stay).
    pub ready_budget: ReadyBudget,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_message_size: 64 * 1024,
            max_subscriptions: 1000,
            queue: QueueLimits::default(),
            liveness: Liveness::default(),
            health_interval: std::time::Duration::from_secs(30),
            origins: OriginPolicy::default(),
            policy: Policy::default(),
            notifications_debounce: std::time::Duration::from_secs(1),
            notifications_listen: None,
            dashboard_listen: None,
            dashboard_metrics_interval: std::time::Duration::from_secs(10),
            dashboard_liveness: dashboard::LIVENESS,
            notifications_liveness: notifications::LIVENESS,
            console_liveness: console::LIVENESS,
            limits: limits::Limits::default(),
            console: None,
            subscriptions_listen: None,
            headlamp_backend_token: None,
            admin_token: None,
            ready_budget: ReadyBudget::default(),
        }
    }
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// The hub.
    pub hub: Hub,
    /// Connection settings.
    pub config: Arc<ServerConfig>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// Set on SIGTERM before the sockets close: readiness fails so the load
    /// balancer sends new clients elsewhere while these are still served.
    draining: Arc<std::sync::atomic::AtomicBool>,
    connections: tokio_util::task::TaskTracker,
    feed: Arc<Feed>,
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    extra_addrs: Vec<SocketAddr>,
    shutdown: tokio::sync::watch::Sender<bool>,
    draining: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    hub: Hub,
    connections: tokio_util::task::TaskTracker,
    probes: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Binds `listen` and serves in the background.
    pub async fn start(
        listen: SocketAddr,
        hub: Hub,
        config: ServerConfig,
    ) -> std::io::Result<Server> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let extra = match config.notifications_listen {
            Some(at) => Some(TcpListener::bind(at).await?),
            None => None,
        };
        let dashboard = match config.dashboard_listen {
            Some(at) => Some(TcpListener::bind(at).await?),
            None => None,
        };
        let subscriptions = match config.subscriptions_listen {
            Some(at) => Some(TcpListener::bind(at).await?),
            None => None,
        };
        let (shutdown, rx) = tokio::sync::watch::channel(false);
        let connections = tokio_util::task::TaskTracker::new();
        let probes = hub.clusters().spawn_health_probes(config.health_interval);
        let feed = Feed::new(hub.clone(), config.notifications_debounce);
        let accept = listener::Accept {
            admission: limits::Admission::new(
                config.limits.connections_per_address,
                hub.metrics().clone(),
            ),
            handshake_timeout: config.limits.handshake_timeout,
            metrics: hub.metrics().clone(),
        };
        let spawn_serve = |listener: TcpListener, app: Router| {
            tokio::spawn(listener::serve(listener, app, accept.clone(), rx.clone()))
        };
        let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let state = AppState {
            hub: hub.clone(),
            config: Arc::new(config),
            shutdown: rx.clone(),
            draining: draining.clone(),
            connections: connections.clone(),
            feed,
        };
        let mut tasks = vec![spawn_serve(listener, router(state.clone()))];
        let mut extra_addrs = Vec::new();
        if let Some(listener) = extra {
            extra_addrs.push(listener.local_addr()?);
            tasks.push(spawn_serve(listener, notifications_router(state.clone())));
        }
        if let Some(listener) = dashboard {
            extra_addrs.push(listener.local_addr()?);
            let app = Router::new()
                .route("/ws", get(dashboard_ws))
                .with_state(state.clone());
            tasks.push(spawn_serve(listener, app));
        }
        if let Some(listener) = subscriptions {
            extra_addrs.push(listener.local_addr()?);
            let app = Router::new()
                .route("/ws", get(console_ws))
                .with_state(state);
            tasks.push(spawn_serve(listener, app));
        }
        Ok(Server {
            addr,
            extra_addrs,
            shutdown,
            draining,
            tasks,
            hub,
            connections,
            probes,
        })
    }

    /// Addresses of the dialects' own listeners (notifications, then
    /// dashboard, then subscriptions, those configured), in order.
    pub fn extra_addrs(&self) -> &[SocketAddr] {
        &self.extra_addrs
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts a graceful shutdown: `/readyz` fails from now on, so a load
    /// balancer stops sending new clients, while every connection is still
    /// served. [`Server::shutdown`] follows after the drain delay.
    pub fn drain(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Stops accepting, completes every subscription, closes every socket
    /// with 1012 (service restart) and waits (up to `grace`) for the connections to finish.
    pub async fn shutdown(self, grace: std::time::Duration) {
        self.hub.shutdown();
        self.probes.abort();
        let _ = self.shutdown.send(true);
        self.connections.close();
        let _ = tokio::time::timeout(grace, async {
            for task in self.tasks {
                let _ = task.await;
            }
            self.connections.wait().await;
        })
        .await;
    }
}

/// Upgrades with `serve`, counting the connection so shutdown can wait for it.
fn tracked<F, Fut>(
    connections: &tokio_util::task::TaskTracker,
    ws: WebSocketUpgrade,
    serve: F,
) -> Response
where
    F: FnOnce(WebSocket) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let token = connections.token();
    ws.on_upgrade(move |socket| async move {
        serve(socket).await;
        drop(token);
    })
}

/// Refuses an upgrade while shutting down, while the outbound queues are
/// over their memory budget, or from a foreign origin.
fn refuse_upgrade(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    if *state.shutdown.borrow() {
        return Some(
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "kubemux is shutting down\n",
            )
                .into_response(),
        );
    }
    let queued = state.hub.metrics().queue_bytes.get().max(0) as usize;
    let budget = state.config.limits.queue_budget;
    if queued + state.config.queue.behind() > budget {
        state.hub.metrics().refused(limits::limit::QUEUE_BUDGET);
        return Some(
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "5")],
                format!(
                    "kubemux is over its outbound memory budget ({queued} of {budget} bytes queued for slow clients, --queue-memory-budget); try again shortly\n"
                ),
            )
                .into_response(),
        );
    }
    state
        .config
        .origins
        .check(headers)
        .err()
        .map(|refused| (StatusCode::FORBIDDEN, format!("{refused}\n")).into_response())
}

/// Seed 002's own paths: `/ws` and the cluster REST API.
fn notifications_router(state: AppState) -> Router {
    Router::new()
        .route("/ws", get(notifications_ws))
        .route("/api/clusters", get(rest::clusters))
        .route("/api/clusters/{name}", get(rest::cluster))
        .with_state(state)
}

async fn notifications_ws(
    State(state): State<AppState>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if let Some(refusal) = refuse_upgrade(&state, &headers) {
        return refusal;
    }
    let ws = ws.lean(notifications::MAX_MESSAGE);
    let connections = state.connections.clone();
    tracked(&connections, ws, move |socket| async move {
        notifications::serve(
            socket,
            state.feed.clone(),
            state.config.clone(),
            state.shutdown.clone(),
        )
        .await;
    })
}

async fn dashboard_ws(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<dashboard::DashboardQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    if let Some(refusal) = refuse_upgrade(&state, &headers) {
        return refusal;
    }
    let credentials = Credentials::from_headers(&headers);
    let registry = state.hub.clusters().clone();
    let cluster = query
        .cluster
        .clone()
        .filter(|c| !c.is_empty())
        .or_else(|| registry.default_id())
        .unwrap_or_default();
    let resources = dashboard_resources(query.namespaces.as_deref());
    let identity = dashboard_identity(&state, &credentials, &cluster, &resources).await;
    let recheck = state
        .config
        .policy
        .rechecks()
        .map(|rechecks| dashboard::Recheck {
            rechecks: rechecks.clone(),
            credentials: credentials.clone(),
            resources: resources.clone().unwrap_or_default(),
        });
    let ws = ws.lean(dashboard::MAX_MESSAGE).compression();
    let connections = state.connections.clone();
    tracked(&connections, ws, move |socket| async move {
        dashboard::serve(
            socket,
            state.hub.clone(),
            state.config.clone(),
            state.shutdown.clone(),
            query,
            identity,
            recheck,
        )
        .await;
    })
}

async fn console_ws(
    State(state): State<AppState>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if let Some(refusal) = refuse_upgrade(&state, &headers) {
        return refusal;
    }
    let Some(auth) = state.config.console.clone() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the subscription API needs a JWT key: set --jwt-hs256-secret-file or --jwt-public-key-file\n",
        )
            .into_response();
    };
    let ws = ws.lean(console::SOCKET_LIMIT);
    let connections = state.connections.clone();
    tracked(&connections, ws, move |socket| async move {
        console::serve(
            socket,
            state.hub.clone(),
            state.config.clone(),
            auth,
            state.shutdown.clone(),
        )
        .await;
    })
}

/// Every resource a dashboard shows: nodes, namespaces and pods (of the
/// chosen namespaces).
fn dashboard_resources(namespaces: Option<&str>) -> Result<Vec<crate::hub::ResourcePath>, String> {
    let mut paths = vec![
        "/api/v1/nodes".to_string(),
        "/api/v1/namespaces".to_string(),
    ];
    match namespaces.filter(|n| !n.trim().is_empty()) {
        None => paths.push("/api/v1/pods".into()),
        Some(ns) => paths.extend(
            ns.split(',')
                .map(|n| format!("/api/v1/namespaces/{}/pods", n.trim())),
        ),
    }
    paths
        .iter()
        .map(|p| crate::hub::key::parse_path(p).map_err(|e| e.to_string()))
        .collect()
}

/// The identity the dashboard's watches run as, after the auth mode's
/// checks on every resource it shows.
async fn dashboard_identity(
    state: &AppState,
    credentials: &Credentials,
    cluster: &str,
    resources: &Result<Vec<crate::hub::ResourcePath>, String>,
) -> Result<crate::hub::Identity, String> {
    let resources = resources.as_ref().map_err(Clone::clone)?;
    let mut identity = crate::hub::Identity::Proxy;
    for resource in resources {
        identity = state
            .config
            .policy
            .identity(credentials, cluster, resource)
            .map_err(|e| e.to_string())?;
        if let (Some((reviewer, _)), Some(target)) = (
            state.config.policy.review(),
            state.hub.clusters().get(cluster),
        ) {
            reviewer
                .check(&target, credentials.token_for(cluster), resource, false)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(identity)
}

/// The router with every endpoint.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/wsMultiplexer", get(headlamp_ws))
        .route("/ws/clusters", get(notifications_ws))
        .route("/ws/dashboard", get(dashboard_ws))
        .route("/ws/v1", get(console_ws))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(status::readyz))
        .route("/metrics", get(metrics))
        .route("/api/status", get(status::api_status))
        .route("/api/clusters", get(rest::clusters))
        .route("/api/clusters/{name}", get(rest::cluster))
        .route(
            "/clusters/{cluster}/{*path}",
            axum::routing::any(rest::kubernetes),
        )
        .route("/", get(status::page))
        .with_state(state)
}

/// OpenMetrics for a scraper that asks for it (Prometheus does, first in
/// its `Accept`); the classic text format otherwise, which a browser
/// (`text/html`), `curl` (`*/*`) or an old scraper (`text/plain`) shows
/// or reads as text instead of offering an unknown type for download.
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let openmetrics = state.hub.metrics().encode();
    let wants_openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut params = range.split(';').map(str::trim);
            let kind = params.next().unwrap_or_default();
            let refused = params.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            kind.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        });
    if wants_openmetrics {
        (
            [(header::CONTENT_TYPE, crate::metrics::OPENMETRICS)],
            openmetrics,
        )
            .into_response()
    } else {
        (
            [(header::CONTENT_TYPE, crate::metrics::TEXT_004)],
            crate::metrics::to_text_004(&openmetrics),
        )
            .into_response()
    }
}

async fn headlamp_ws(
    State(state): State<AppState>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if let Some(refusal) = refuse_upgrade(&state, &headers) {
        return refusal;
    }
    if let Some(Err(refused)) = state
        .config
        .headlamp_backend_token
        .as_ref()
        .map(|token| token.check_backend_token(&headers))
    {
        return (StatusCode::FORBIDDEN, format!("{refused}\n")).into_response();
    }
    let credentials = Credentials::from_headers(&headers);
    // Headlamp's subprotocol is echoed only when the client offered it.
    let ws = ws
        .lean(state.config.max_message_size)
        .protocols([headlamp::PROTOCOL]);
    let connections = state.connections.clone();
    tracked(&connections, ws, move |socket| async move {
        headlamp::serve(
            socket,
            state.hub.clone(),
            state.config.clone(),
            state.shutdown.clone(),
            credentials,
        )
        .await;
    })
}
