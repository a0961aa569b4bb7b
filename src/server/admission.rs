//! What every WebSocket endpoint checks before it upgrades, as one
//! extractor: a handler that takes [`Admitted`] cannot forget a check, and
//! the checks are written once for all dialects.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::auth::secret::BackendTokenRefused;
use crate::dialect::Services;
use crate::ws::forwarded::ClientInfo;
use crate::ws::{WebSocket, WebSocketUpgrade, limits};

/// A valid WebSocket handshake from a client that may connect now: kubemux
/// is not shutting down, the outbound queues are under their memory budget
/// (a new connection adds at least its queue's floor), and the origin is
/// allowed (the site being the one a trusted proxy forwarded, if any).
pub(super) struct Admitted {
    upgrade: WebSocketUpgrade,
    /// The request's headers, for the dialect's credentials.
    pub headers: HeaderMap,
}

impl FromRequestParts<AppState> for Admitted {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let upgrade = WebSocketUpgrade::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let client = parts.extensions.get::<ClientInfo>();
        if let Some(refusal) = refusal(state, &parts.headers, client) {
            return Err(refusal);
        }
        Ok(Admitted {
            upgrade,
            headers: parts.headers.clone(),
        })
    }
}

impl Admitted {
    /// Answers 101 with the socket shaped by `shape` (message limit,
    /// subprotocol, compression; the queue bounds are the server's), and
    /// runs `serve` on it, counted so a shutdown can wait for it.
    pub fn serve<S, F, Fut>(self, state: &AppState, shape: S, serve: F) -> Response
    where
        S: FnOnce(WebSocketUpgrade) -> WebSocketUpgrade,
        F: FnOnce(WebSocket, Services) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let token = state.connections.token();
        let services = state.services();
        let upgrade = shape(self.upgrade.queue(state.config.queue));
        upgrade.on_upgrade(move |socket| async move {
            serve(socket, services).await;
            drop(token);
        })
    }
}

fn refusal(state: &AppState, headers: &HeaderMap, client: Option<&ClientInfo>) -> Option<Response> {
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
    let (site, proto) = match client {
        Some(client) => (client.site(headers), client.forwarded_proto.as_deref()),
        None => (
            headers.get(header::HOST).and_then(|h| h.to_str().ok()),
            None,
        ),
    };
    state
        .config
        .origins
        .check_site(headers, site, proto)
        .err()
        .map(|refused| (StatusCode::FORBIDDEN, format!("{refused}\n")).into_response())
}

impl AppState {
    /// Checks Headlamp's backend token, when one is configured: the
    /// endpoints Headlamp's own backend guards with it (`/wsMultiplexer`,
    /// `/clusters/…`) require it here too.
    pub(super) fn check_backend_token(
        &self,
        headers: &HeaderMap,
    ) -> Result<(), BackendTokenRefused> {
        match &self.config.headlamp_backend_token {
            Some(token) => token.check_backend_token(headers),
            None => Ok(()),
        }
    }
}
