//! Readiness, the status API and the status page: what an operator opens first.

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::AppState;
use crate::cluster::{Cluster, Health};

#[derive(Deserialize)]
pub(super) struct ReadyQuery {
    verbose: Option<String>,
}

/// Ready once the server is listening (it is, if it answers) and the
/// cluster registry is loaded. A cluster being down does not make kubemux
/// unready: its other clusters still work. `?verbose` lists every cluster.
pub(super) async fn readyz(State(state): State<AppState>, Query(q): Query<ReadyQuery>) -> Response {
    let registry = state.hub.clusters();
    let ready = registry.is_loaded() && !*state.shutdown.borrow();
    let mut body = String::new();
    if q.verbose.is_some() {
        body.push_str(&format!(
            "[{}]listeners\n[{}]cluster-registry\n",
            if *state.shutdown.borrow() { "-" } else { "+" },
            if registry.is_loaded() { "+" } else { "-" }
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

/// One cluster as `/api/status` and `/api/clusters` show it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ClusterStatus {
    name: String,
    server: String,
    #[serde(flatten)]
    health: Health,
}

impl ClusterStatus {
    /// Every cluster of the hub's registry.
    pub(super) fn all(state: &AppState) -> Vec<ClusterStatus> {
        state
            .hub
            .clusters()
            .all()
            .iter()
            .map(|c| ClusterStatus::of(c))
            .collect()
    }

    pub(super) fn of(c: &Cluster) -> Self {
        ClusterStatus {
            name: c.id().to_string(),
            server: c.server().to_string(),
            health: c.health(),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WatchStatus {
    cluster: String,
    path: String,
    selectors: String,
    subscribers: usize,
    events: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    version: &'static str,
    clusters: Vec<ClusterStatus>,
    watches: Vec<WatchStatus>,
}

/// `GET /api/status`: clusters with health and shared watches with their
/// subscriber and event counts, for the status page and for scripts.
pub(super) async fn api_status(State(state): State<AppState>) -> Response {
    let clusters = ClusterStatus::all(&state);
    let watches = state
        .hub
        .watches()
        .into_iter()
        .map(|w| WatchStatus {
            cluster: w.key.cluster().to_string(),
            path: w.key.path().to_string(),
            selectors: w.key.selectors().to_string(),
            subscribers: w.subscribers,
            events: w.events,
        })
        .collect();
    axum::Json(Status {
        version: env!("CARGO_PKG_VERSION"),
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
