//! The HTTP server: WebSocket endpoints for each dialect, health and metrics.

mod admission;
mod rest;
mod status;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::auth::credentials::Credentials;
use crate::auth::origin::OriginPolicy;
use crate::auth::policy::Policy;
use crate::auth::secret::Secret;
use crate::dialect::notifications::{self, Feed};
use crate::dialect::{Services, console, dashboard, headlamp};
use crate::hub::Hub;
use crate::ws::forwarded::{ClientInfo, TrustedProxies};
use crate::ws::outbound::QueueLimits;
use crate::ws::{limits, listener};
use admission::Admitted;
pub use status::ReadyBudget;

/// Limits and timings of client connections.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Bounds of each connection's outbound queue.
    pub queue: QueueLimits,
    /// Interval of the clusters' health probes.
    pub health_interval: std::time::Duration,
    /// Which browser origins may connect.
    pub origins: OriginPolicy,
    /// Reverse proxies whose `Forwarded` / `X-Forwarded-*` headers say
    /// who the client is and what it addressed (none by default).
    pub trusted_proxies: TrustedProxies,
    /// Whose identity upstream requests run as.
    pub policy: Policy,
    /// Also serve cluster notifications at `/ws` (and `/api/clusters`) on
    /// this address, for frontends that expect the seed's own path.
    pub notifications_listen: Option<SocketAddr>,
    /// Also serve the dashboard stream at `/ws` on this address.
    pub dashboard_listen: Option<SocketAddr>,
    /// Abuse limits of connections and REST requests.
    pub limits: limits::Limits,
    /// Headlamp's `/wsMultiplexer`.
    pub headlamp: headlamp::Settings,
    /// The dashboard stream (seed 001).
    pub dashboard: dashboard::Settings,
    /// Cluster notifications (seed 002).
    pub notifications: notifications::Settings,
    /// The subscription API (seed 003).
    pub console: console::Settings,
    /// The subscription API's JWT verifier and reviewer; without it `/ws/v1`
    /// is refused.
    pub console_auth: Option<Arc<console::ConsoleAuth>>,
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
            queue: QueueLimits::default(),
            health_interval: std::time::Duration::from_secs(30),
            origins: OriginPolicy::default(),
            trusted_proxies: TrustedProxies::default(),
            policy: Policy::default(),
            notifications_listen: None,
            dashboard_listen: None,
            limits: limits::Limits::default(),
            headlamp: headlamp::Settings::default(),
            dashboard: dashboard::Settings::default(),
            notifications: notifications::Settings::default(),
            console: console::Settings::default(),
            console_auth: None,
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
    rest_rate: Arc<limits::RestRate>,
    headlamp: Arc<headlamp::Settings>,
    dashboard: Arc<dashboard::Settings>,
    console: Arc<console::Settings>,
}

impl AppState {
    /// What a dialect's connection is served with.
    fn services(&self) -> Services {
        Services {
            hub: self.hub.clone(),
            policy: self.config.policy.clone(),
            shutdown: self.shutdown.clone(),
        }
    }
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
        let feed = Feed::new(hub.clone(), config.notifications.debounce);
        let accept = listener::Accept {
            admission: limits::Admission::new(
                config.limits.connections_per_address,
                hub.metrics().clone(),
            ),
            handshake_timeout: config.limits.handshake_timeout,
            metrics: hub.metrics().clone(),
            trusted: Arc::new(config.trusted_proxies.clone()),
        };
        let rest_rate = Arc::new(limits::RestRate::new(
            config.limits.rest_rate,
            config.limits.rest_burst,
            hub.metrics().clone(),
        ));
        let spawn_serve = |listener: TcpListener, app: Router| {
            tokio::spawn(listener::serve(listener, app, accept.clone(), rx.clone()))
        };
        let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let state = AppState {
            hub: hub.clone(),
            shutdown: rx.clone(),
            draining: draining.clone(),
            connections: connections.clone(),
            feed,
            rest_rate,
            headlamp: Arc::new(config.headlamp.clone()),
            dashboard: Arc::new(config.dashboard.clone()),
            console: Arc::new(config.console.clone()),
            config: Arc::new(config),
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

/// The REST rate limit, per client address and per credential, in front of
/// `/clusters/…` (where each request may cost the cluster a review or a
/// forwarded request).
async fn rest_rate_limit(
    State(state): State<AppState>,
    Extension(client): Extension<ClientInfo>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let credentials = Credentials::from_headers(request.headers());
    let cluster = request
        .uri()
        .path()
        .strip_prefix("/clusters/")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default();
    match state
        .rest_rate
        .check(client.addr, credentials.token_for(cluster))
    {
        Ok(()) => next.run(request).await,
        Err(limited) => limits::too_many_requests(&limited.to_string(), limited.retry_after),
    }
}

/// Seed 002's own paths: `/ws` and the cluster REST API.
fn notifications_router(state: AppState) -> Router {
    Router::new()
        .route("/ws", get(notifications_ws))
        .route("/api/clusters", get(rest::clusters))
        .route("/api/clusters/{name}", get(rest::cluster))
        .with_state(state)
}

async fn notifications_ws(State(state): State<AppState>, admitted: Admitted) -> Response {
    let settings = state.config.notifications.clone();
    let feed = state.feed.clone();
    let max = settings.max_message_size;
    admitted.serve(
        &state,
        |ws| ws.lean(max),
        move |socket, services| async move {
            notifications::serve(socket, feed, &settings, services.shutdown).await;
        },
    )
}

async fn dashboard_ws(
    State(state): State<AppState>,
    axum::extract::Query(query): axum::extract::Query<dashboard::DashboardQuery>,
    admitted: Admitted,
) -> Response {
    let credentials = Credentials::from_headers(&admitted.headers);
    let settings = state.dashboard.clone();
    let max = settings.max_message_size;
    admitted.serve(
        &state,
        |ws| ws.lean(max).compression(),
        move |socket, services| dashboard::serve(socket, services, settings, query, credentials),
    )
}

async fn console_ws(State(state): State<AppState>, admitted: Admitted) -> Response {
    let Some(auth) = state.config.console_auth.clone() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the subscription API needs a JWT key: set --jwt-hs256-secret-file or --jwt-public-key-file\n",
        )
            .into_response();
    };
    let settings = state.console.clone();
    let max = settings.socket_limit();
    admitted.serve(
        &state,
        |ws| ws.lean(max),
        move |socket, services| console::serve(socket, services, settings, auth),
    )
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
            axum::routing::any(rest::kubernetes).layer(axum::middleware::from_fn_with_state(
                state.clone(),
                rest_rate_limit,
            )),
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

async fn headlamp_ws(State(state): State<AppState>, admitted: Admitted) -> Response {
    if let Err(refused) = state.check_backend_token(&admitted.headers) {
        return (StatusCode::FORBIDDEN, format!("{refused}\n")).into_response();
    }
    let credentials = Credentials::from_headers(&admitted.headers);
    let settings = state.headlamp.clone();
    let max = settings.max_message_size;
    // Headlamp's subprotocol is echoed only when the client offered it.
    admitted.serve(
        &state,
        |ws| ws.lean(max).protocols([headlamp::PROTOCOL]).compression(),
        move |socket, services| headlamp::serve(socket, services, settings, credentials),
    )
}
