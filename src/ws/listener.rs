//! The accept loop. kubemux drives hyper itself (rather than `axum::serve`)
//! to give every connection a handshake deadline (hyper's header read
//! timeout, which needs a timer `axum::serve` does not set) and to count
//! connections per client address before any byte is parsed.
//!
//! A connection from a trusted reverse proxy (`--trusted-proxies`) carries
//! many clients' requests, so it is not counted as one client: each of its
//! requests is counted against the client address the proxy forwarded, for
//! as long as the request (or the WebSocket it became) lives. Every request
//! carries its [`ClientInfo`] in its extensions.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use http::{Request, Response, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tower_service::Service;
use tracing::{debug, warn};

use super::forwarded::{ClientInfo, TrustedProxies};
use super::limits::{Admission, Admitted, limit};
use crate::metrics::Metrics;

/// What the accept loop needs besides the listener and the router.
#[derive(Clone)]
pub struct Accept {
    /// Connections per client address.
    pub admission: Arc<Admission>,
    /// Deadline for a request head (and for an idle keep-alive connection).
    pub handshake_timeout: std::time::Duration,
    /// Where handshake timeouts are counted.
    pub metrics: Arc<Metrics>,
    /// Peers whose forwarded headers say who the client is.
    pub trusted: Arc<TrustedProxies>,
}

/// Serves `app` on `listener` until `stop` turns true, then lets the open
/// HTTP exchanges finish (upgraded WebSockets are the dialects' business).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    accept: Accept,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let connections = TaskTracker::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(accept.handshake_timeout);
    loop {
        let stopping = async {
            let _ = stop.wait_for(|v| *v).await;
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopping => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: back off instead
                // of spinning, and keep serving.
                warn!(error = %err, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let admitted = if accept.trusted.trusts(peer.ip()) {
            Slot::PerRequest
        } else {
            Slot::Connection(accept.admission.admit(peer.ip()))
        };
        connections.spawn(connection(
            tcp,
            peer,
            admitted,
            app.clone(),
            http.clone(),
            accept.clone(),
            stop.clone(),
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// How a connection counts against its client address.
enum Slot {
    /// The peer is the client: admitted (or refused) once for the
    /// connection.
    Connection(Option<Arc<Admitted>>),
    /// The peer is a trusted proxy: each request is admitted for the
    /// client it forwards.
    PerRequest,
}

/// One TCP connection: the app if admitted, otherwise a 429 for every
/// request on it.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    app: Router,
    http: http1::Builder,
    accept: Accept,
    mut stop: watch::Receiver<bool>,
) {
    let io = TokioIo::new(tcp);
    let connection_slot = match slot {
        Slot::Connection(None) => None,
        Slot::Connection(Some(admitted)) => Some(Some(admitted)),
        Slot::PerRequest => Some(None),
    };
    let result = match connection_slot {
        Some(connection_slot) => {
            let admission = accept.admission.clone();
            let trusted = accept.trusted.clone();
            let service = service_fn(move |mut request: Request<Incoming>| {
                let client = ClientInfo::of(peer, request.headers(), &trusted);
                let admitted = connection_slot
                    .clone()
                    .ok_or(())
                    .or_else(|()| admission.admit(client.addr).ok_or(client.addr));
                let max = admission.max();
                let mut app = app.clone();
                async move {
                    let admitted = match admitted {
                        Ok(admitted) => admitted,
                        // A proxy's connection carries other clients: keep it.
                        Err(addr) => return Ok(too_many_connections(addr, max, false)),
                    };
                    // The upgrade handler takes a clone into the WebSocket,
                    // so the address's slot is held for the socket's whole
                    // life.
                    request.extensions_mut().insert(admitted);
                    request.extensions_mut().insert(client);
                    app.call(request.map(Body::new)).await
                }
            });
            let conn = http.serve_connection(io, service).with_upgrades();
            tokio::pin!(conn);
            let stopping = async move {
                let _ = stop.wait_for(|v| *v).await;
            };
            tokio::select! {
                result = conn.as_mut() => result,
                () = stopping => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
        None => {
            let max = accept.admission.max();
            let service = service_fn(move |_: Request<Incoming>| async move {
                Ok::<_, Infallible>(too_many_connections(peer.ip(), max, true))
            });
            http.serve_connection(io, service).await
        }
    };
    if let Err(err) = result {
        if err.is_timeout() {
            accept.metrics.refused(limit::HANDSHAKE_TIMEOUT);
            debug!(%peer, "request head not received in time, connection closed");
        } else {
            debug!(%peer, error = %err, "HTTP connection error");
        }
    }
}

/// The refusal of a connection (or, through a trusted proxy, a request)
/// beyond the per-address cap: a Kubernetes `Status`, closing the
/// connection when it is the client's own.
fn too_many_connections(client: std::net::IpAddr, max: usize, close: bool) -> Response<Body> {
    let message = format!(
        "too many connections from {client}: at most {max} per client address (--max-connections-per-address)"
    );
    let mut response = super::limits::too_many_requests(&message, 5);
    if close {
        response
            .headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    response
}
