//! Readiness, the status API and the status page: what an operator opens first.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::AppState;
use crate::auth::policy::AuthMode;
use crate::cluster::{Cluster, Health};
use crate::hub::Hub;

/// Whether the caller may see every user's watches and the API servers'
/// addresses. In `--auth none` everyone may: the listener is local and
/// every caller acts as kubemux anyway. Otherwise only the bearer of
/// `--admin-token-file`'s token: the watched namespaces and selectors of
/// one user are not another's to read, and an API server's address is a
/// target. Without an admin token nobody gets the detail (`/metrics` has
/// the aggregate numbers).
pub(super) fn is_operator(state: &AppState, headers: &HeaderMap) -> bool {
    state.config.policy.mode() == AuthMode::None
        || state
            .config
            .admin_token
            .as_ref()
            .is_some_and(|token| token.is_bearer_of(headers))
}

#[derive(Deserialize)]
pub(super) struct ReadyQuery {
    verbose: Option<String>,
}

/// When a replica counts as full: above either budget `/readyz` fails, so
/// the load balancer sends new clients to another replica. 0 = no budget.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadyBudget {
    /// Open WebSocket connections.
    pub max_connections: usize,
    /// Bytes waiting in all outbound queues together.
    pub max_queue_bytes: u64,
}

/// Ready once the server is listening (it is, if it answers), the cluster
/// registry is loaded, it is not draining for a shutdown, and it is within
/// its [`ReadyBudget`]. A cluster being down does not make kubemux unready:
/// its other clusters still work. `?verbose` lists every check.
pub(super) async fn readyz(State(state): State<AppState>, Query(q): Query<ReadyQuery>) -> Response {
    let registry = state.hub.clusters();
    let listening =
        !*state.shutdown.borrow() && !state.draining.load(std::sync::atomic::Ordering::Acquire);
    let budget = state.config.ready_budget;
    let connections = state.connections.len();
    let queued = u64::try_from(state.hub.metrics().queue_bytes.get()).unwrap_or(0);
    let room = (budget.max_connections == 0 || connections < budget.max_connections)
        && (budget.max_queue_bytes == 0 || queued < budget.max_queue_bytes);
    let ready = registry.is_loaded() && listening && room;
    let mut body = String::new();
    if q.verbose.is_some() {
        let mark = |ok: bool| if ok { "+" } else { "-" };
        body.push_str(&format!(
            "[{}]listeners\n[{}]cluster-registry\n[{}]budget: {connections} connections, {queued} queued bytes\n",
            mark(listening),
            mark(registry.is_loaded()),
            mark(room),
        ));
        for c in registry.all() {
            let h = c.health();
            let line = match h.reachable {
                Some(true) => format!(
                    "[+]cluster {} reachable, version {}\n",
                    c.id(),
                    h.version.as_deref().unwrap_or("?")
                ),
                Some(false) => format!(
                    "[-]cluster {} unreachable: {}\n",
                    c.id(),
                    h.last_error.as_deref().unwrap_or("unknown error")
                ),
                None => format!("[?]cluster {} not probed yet\n", c.id()),
            };
            body.push_str(&line);
        }
    }
    body.push_str(if ready {
        "readyz check passed\n"
    } else {
        "readyz check failed\n"
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body).into_response()
}

/// One cluster as `/api/status` and `/api/clusters` show it. For a caller
/// who is not an operator, the API server's address is left out, and so is
/// the last probe error (it names the address); the rest, seed 002's
/// record, stays.
///
/// `nodesReady`/`nodesTotal` are read when asked from a live nodes watch's
/// store ([`Hub::node_counts`]), so they are exact at that moment; without
/// one they are `null` and `nodesUnknown` says why, rather than showing a
/// number from a watch that has stopped.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ClusterStatus {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<String>,
    #[serde(flatten)]
    health: Health,
    /// Nodes whose Ready condition is True.
    nodes_ready: Option<u32>,
    /// All nodes.
    nodes_total: Option<u32>,
    /// Why the node counts are `null`.
    #[serde(skip_serializing_if = "Option::is_none")]
    nodes_unknown: Option<String>,
}

impl ClusterStatus {
    /// Every cluster of the hub's registry.
    pub(super) fn all(state: &AppState, operator: bool) -> Vec<ClusterStatus> {
        state
            .hub
            .clusters()
            .all()
            .iter()
            .map(|c| ClusterStatus::of(&state.hub, c, operator))
            .collect()
    }

    pub(super) fn of(hub: &Hub, c: &Cluster, operator: bool) -> Self {
        let mut health = c.health();
        if !operator {
            health.last_error = None;
        }
        let counts = hub.node_counts(c.id());
        ClusterStatus {
            name: c.id().to_string(),
            server: operator.then(|| c.server().to_string()),
            health,
            nodes_ready: counts.as_ref().ok().map(|n| n.ready),
            nodes_total: counts.as_ref().ok().map(|n| n.total),
            nodes_unknown: counts.err().map(|why| why.to_string()),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WatchStatus {
    cluster: String,
    path: String,
    /// The canonical selector query, as the shared watch's key has it.
    selectors: String,
    /// The same decoded for people (`labelSelector: app=web; fieldSelector:
    /// …`): the page shows it, since `%3D` and `%2C` are hard to read.
    selector_text: String,
    subscribers: usize,
    events: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    version: &'static str,
    /// The caller is not an operator: no addresses, no watches.
    redacted: bool,
    clusters: Vec<ClusterStatus>,
    watches: Vec<WatchStatus>,
}

/// A selector query decoded (`+` and percent-escapes) into `name: value`
/// pairs joined by `; `.
fn decoded_selectors(query: &str) -> String {
    form_urlencoded::parse(query.as_bytes())
        .map(|(name, value)| format!("{name}: {value}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `GET /api/status`: clusters with health and shared watches with their
/// subscriber and event counts, for the status page and for scripts. Only
/// an operator ([`is_operator`]) is shown the watches and addresses.
pub(super) async fn api_status(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let operator = is_operator(&state, &headers);
    let clusters = ClusterStatus::all(&state, operator);
    let all = if operator {
        state.hub.watches()
    } else {
        Vec::new()
    };
    let watches = all
        .into_iter()
        .map(|w| WatchStatus {
            cluster: w.key.cluster().to_string(),
            path: w.key.path().to_string(),
            selectors: w.key.selectors().to_string(),
            selector_text: decoded_selectors(w.key.selectors()),
            subscribers: w.subscribers,
            events: w.events,
        })
        .collect();
    axum::Json(Status {
        version: env!("CARGO_PKG_VERSION"),
        redacted: !operator,
        clusters,
        watches,
    })
    .into_response()
}

/// `GET /`: the status page (static HTML and JavaScript polling `/api/status`).
pub(super) async fn page() -> Response {
    (
        [(header::CACHE_CONTROL, "no-cache")],
        Html(include_str!("status.html")),
    )
        .into_response()
}
