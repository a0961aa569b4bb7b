//! The accept loop. kubemux drives hyper itself (rather than `axum::serve`)
//! to give every connection a handshake deadline (hyper's header read
//! timeout, which needs a timer `axum::serve` does not set) and to count
//! connections per client address before any byte is parsed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tower_service::Service;
use tracing::{debug, warn};

use super::limits::{Admission, Admitted, limit};
use crate::metrics::Metrics;

/// What the accept loop needs besides the listener and the router.
#[derive(Clone)]
pub(super) struct Accept {
    /// Connections per client address.
    pub admission: Arc<Admission>,
    /// Deadline for a request head (and for an idle keep-alive connection).
    pub handshake_timeout: std::time::Duration,
    /// Where handshake timeouts are counted.
    pub metrics: Arc<Metrics>,
}

/// Serves `app` on `listener` until `stop` turns true, then lets the open
/// HTTP exchanges finish (upgraded WebSockets are the dialects' business).
pub(super) async fn serve(
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
        let admitted = accept.admission.admit(peer.ip());
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

/// One TCP connection: the app if admitted, otherwise a 429 for every
/// request on it.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    admitted: Option<Arc<Admitted>>,
    app: Router,
    http: http1::Builder,
    accept: Accept,
    mut stop: watch::Receiver<bool>,
) {
    let io = TokioIo::new(tcp);
    let result = match admitted {
        Some(admitted) => {
            let service = service_fn(move |mut request: Request<Incoming>| {
                // The upgrade handler takes a clone into the WebSocket, so
                // the address's slot is held for the socket's whole life.
                request.extensions_mut().insert(admitted.clone());
                let mut app = app.clone();
                async move { app.call(request.map(Body::new)).await }
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
                Ok::<_, Infallible>(too_many_connections(peer, max))
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

fn too_many_connections(peer: SocketAddr, max: usize) -> Response<Body> {
    let mut response = Response::new(Body::from(format!(
        "too many connections from {}: at most {max} per client address (--max-connections-per-address)\n",
        peer.ip()
    )));
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    response
        .headers_mut()
        .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, http::HeaderValue::from_static("5"));
    response
}
