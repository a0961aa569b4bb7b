//! The WebSocket handshake, done here rather than by axum's `ws` extractor
//! so that kubemux can negotiate permessage-deflate (which tungstenite
//! lacks), put [`Inflating`] under tungstenite's read side and give the
//! write side to kubemux's own writer.

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{ReadHalf, WriteHalf};
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::{Role, WebSocketConfig};

use super::deflate::{self, Compression, Inflating};
use super::limits::{Admitted, QueueShare};
use super::outbound::{Outbound, QueueLimits};
use super::writer::ReadSide;
use crate::metrics::Metrics;

/// The socket of an upgraded connection.
type Io = TokioIo<hyper::upgrade::Upgraded>;

/// The client's messages: tungstenite reading the socket's read half.
pub(super) type Stream = WebSocketStream<Inflating<ReadSide<ReadHalf<Io>>>>;

/// The socket's write half, owned by the connection's writer.
pub(super) type Sink = WriteHalf<Io>;

/// tungstenite's read buffer: allocated for every connection when it opens
/// and kept for its life (128 KiB by default), and also the most it reads
/// at once. Client messages are small (a Headlamp REQUEST is ~200 bytes), a
/// larger one grows it, and [`Inflating`] under it reads the socket in
/// larger chunks, so idle connections stay cheap without a system call per
/// few bytes.
const READ_BUFFER: usize = 256;

/// An upgraded client connection.
pub struct WebSocket {
    pub(super) stream: Stream,
    pub(super) sink: Sink,
    /// Whether permessage-deflate was negotiated, and in which form, so
    /// large frames may be sent compressed.
    pub(super) compression: Compression,
    /// The client address's share of the outbound budget.
    share: Option<QueueShare>,
    /// Bounds of the socket's outbound queue, set by the router.
    queue: QueueLimits,
}

impl WebSocket {
    /// Whether permessage-deflate was negotiated, so a dialect can attach
    /// cached deflate blocks to its frames (see `outbound::Blocks`).
    pub fn compresses(&self) -> bool {
        self.compression.is_on()
    }

    /// The socket's outbound queue, bounded as the router set at upgrade and
    /// counted against its client address's share of the budget.
    pub fn outbound(&self, metrics: std::sync::Arc<Metrics>) -> Outbound {
        Outbound::with_share(self.queue, metrics, self.share.clone())
    }
}

/// Why a request could not become a WebSocket.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeRejection {
    /// Only `GET` starts an HTTP/1.1 WebSocket handshake.
    #[error("a WebSocket handshake must use GET over HTTP/1.1")]
    MethodOrVersion,
    /// `Connection` does not name `upgrade`.
    #[error("the Connection header must include 'upgrade'")]
    Connection,
    /// `Upgrade` is not `websocket`.
    #[error("the Upgrade header must be 'websocket'")]
    Upgrade,
    /// `Sec-WebSocket-Version` is not 13.
    #[error("the Sec-WebSocket-Version header must be 13")]
    Version,
    /// `Sec-WebSocket-Key` is missing.
    #[error("the Sec-WebSocket-Key header is missing")]
    Key,
    /// The server connection cannot be upgraded (e.g. HTTP/2).
    #[error("this connection cannot be upgraded to a WebSocket")]
    NotUpgradable,
}

impl IntoResponse for UpgradeRejection {
    fn into_response(self) -> Response {
        let status = match self {
            UpgradeRejection::MethodOrVersion => StatusCode::METHOD_NOT_ALLOWED,
            UpgradeRejection::NotUpgradable => StatusCode::UPGRADE_REQUIRED,
            _ => StatusCode::BAD_REQUEST,
        };
        (status, format!("{self}\n")).into_response()
    }
}

/// A validated WebSocket handshake, answered by [`WebSocketUpgrade::on_upgrade`].
pub struct WebSocketUpgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
    protocols: Vec<HeaderValue>,
    protocol: Option<HeaderValue>,
    deflate_offered: Compression,
    deflate: Compression,
    config: WebSocketConfig,
    queue: QueueLimits,
    /// The client address's connection slot, held while the socket lives.
    admitted: Option<std::sync::Arc<Admitted>>,
}

impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade {
    type Rejection = UpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET || parts.version != Version::HTTP_11 {
            return Err(UpgradeRejection::MethodOrVersion);
        }
        if !header_has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(UpgradeRejection::Connection);
        }
        if !header_has_token(&parts.headers, header::UPGRADE, "websocket") {
            return Err(UpgradeRejection::Upgrade);
        }
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            != Some(b"13")
        {
            return Err(UpgradeRejection::Version);
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or(UpgradeRejection::Key)?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(UpgradeRejection::NotUpgradable)?;
        let protocols = parts
            .headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .filter_map(|p| HeaderValue::from_bytes(p.trim_ascii()).ok())
            .collect();
        Ok(WebSocketUpgrade {
            key,
            on_upgrade,
            protocols,
            protocol: None,
            deflate_offered: deflate::accepts(
                parts.headers.get_all(header::SEC_WEBSOCKET_EXTENSIONS),
            ),
            deflate: Compression::Off,
            config: WebSocketConfig::default(),
            queue: QueueLimits::default(),
            admitted: parts.extensions.remove(),
        })
    }
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

impl WebSocketUpgrade {
    /// Selects the first of `supported` the client offered.
    pub fn protocols<I: IntoIterator<Item = &'static str>>(mut self, supported: I) -> Self {
        self.protocol = supported.into_iter().find_map(|wanted| {
            self.protocols
                .iter()
                .find(|p| p.as_bytes().eq_ignore_ascii_case(wanted.as_bytes()))
                .cloned()
        });
        self
    }

    /// Accepts permessage-deflate if the client offered an acceptable form.
    pub fn compression(mut self) -> Self {
        self.deflate = self.deflate_offered;
        self
    }

    /// Limits a message (and a frame) to `max` bytes, with a small read
    /// buffer (see [`READ_BUFFER`]). (tungstenite writes nothing: see
    /// `ws::writer`.)
    pub fn lean(mut self, max: usize) -> Self {
        self.config = self
            .config
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(0);
        self
    }

    /// Bounds the socket's outbound queue (see [`WebSocket::outbound`]).
    pub fn queue(mut self, limits: QueueLimits) -> Self {
        self.queue = limits;
        self
    }

    /// Answers 101 and runs `serve` with the socket once the connection
    /// has switched protocols.
    pub fn on_upgrade<F, Fut>(self, serve: F) -> Response
    where
        F: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let WebSocketUpgrade {
            key,
            on_upgrade,
            protocol,
            deflate,
            config,
            queue,
            admitted,
            ..
        } = self;
        let max = config.max_message_size.unwrap_or(usize::MAX);
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(err) => {
                    tracing::debug!(error = %err, "WebSocket upgrade failed");
                    return;
                }
            };
            let (read, sink) = tokio::io::split(TokioIo::new(upgraded));
            let io = Inflating::new(ReadSide(read), deflate.is_on(), max);
            let stream = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
            serve(WebSocket {
                stream,
                sink,
                compression: deflate,
                share: admitted.as_deref().map(QueueShare::of),
                queue,
            })
            .await;
            drop(admitted);
        });
        let mut response = (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, HeaderValue::from_static("upgrade")),
                (header::UPGRADE, HeaderValue::from_static("websocket")),
            ],
        )
            .into_response();
        let headers = response.headers_mut();
        if let Ok(accept) =
            HeaderValue::from_str(&tungstenite::handshake::derive_accept_key(key.as_bytes()))
        {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if let Some(protocol) = protocol {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        if let Some(answer) = deflate.response() {
            headers.insert(
                header::SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_static(answer),
            );
        }
        response
    }
}
