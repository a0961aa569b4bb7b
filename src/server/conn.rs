//! One client connection: a reader loop feeding the dialect, a writer task
//! draining the outbound queue, server pings and their deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info};
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{Data, OpCode};

use super::deflate;
use super::outbound::{Out, Outbound};
use super::upgrade::{Stream, WebSocket};
use crate::metrics::Metrics;

/// A protocol spoken over a connection.
pub trait Dialect: Send + 'static {
    /// Messages the dialect's subscribers send back to it (e.g. "this
    /// subscription has ended"), delivered on the connection's own task.
    type Notice: Send + 'static;
    /// A text message from the client.
    fn on_text(&mut self, text: &str);
    /// A binary message from the client.
    fn on_binary(&mut self, _data: &[u8]) {}
    /// A notice from one of the dialect's subscribers.
    fn on_notice(&mut self, notice: Self::Notice);
    /// How often [`Dialect::on_tick`] runs, if at all.
    fn tick_interval(&self) -> Option<Duration> {
        None
    }
    /// Periodic work (re-checks, batches, metrics).
    fn on_tick(&mut self) {}
    /// Whether the connection serves nothing (no subscription), so that
    /// silence from the client for [`Liveness::idle_timeout`] closes it.
    /// Listen-only dialects are never idle.
    fn is_idle(&self) -> bool {
        false
    }
}

/// Where a dialect's notices come from: a bounded or unbounded channel.
pub trait Notices<N>: Send {
    /// The next notice; `None` once every sender is gone.
    fn next(&mut self) -> impl std::future::Future<Output = Option<N>> + Send + '_;
}

impl<N: Send> Notices<N> for mpsc::UnboundedReceiver<N> {
    fn next(&mut self) -> impl std::future::Future<Output = Option<N>> + Send + '_ {
        self.recv()
    }
}

impl<N: Send> Notices<N> for mpsc::Receiver<N> {
    fn next(&mut self) -> impl std::future::Future<Output = Option<N>> + Send + '_ {
        self.recv()
    }
}

/// Liveness settings of a connection.
#[derive(Clone, Copy, Debug)]
pub struct Liveness {
    /// Interval of server pings.
    pub ping_interval: Duration,
    /// A connection that has not answered a ping for this long after it was
    /// sent is closed.
    pub pong_timeout: Duration,
    /// A single write blocked for longer than this means the client is gone
    /// or stuck; the connection is closed.
    pub write_timeout: Duration,
    /// A connection that [is idle](Dialect::is_idle) and has sent no
    /// message for this long is closed (checked at each ping), so
    /// abandoned sockets do not pile up. `None`: never.
    pub idle_timeout: Option<Duration>,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(600)),
        }
    }
}

/// WebSocket close codes used by kubemux.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is going away (shutdown).
    pub const GOING_AWAY: u16 = 1001;
    /// Policy violation (e.g. a client that never answers pings).
    pub const POLICY: u16 = 1008;
    /// A message was too big to process.
    pub const TOO_BIG: u16 = 1009;
}

static NEXT_CONNECTION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// What a connection needs besides its socket and dialect.
pub struct ConnContext {
    /// Name of the dialect, for metrics and logs.
    pub dialect: &'static str,
    /// The connection's outbound queue, shared with the dialect's subscribers.
    pub outbound: Arc<Outbound>,
    /// Liveness settings.
    pub liveness: Liveness,
    /// Metrics to update.
    pub metrics: Arc<Metrics>,
    /// Becomes `true` when the server shuts down.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// Serves one upgraded socket with `dialect` until either side closes.
pub async fn run<D: Dialect, R: Notices<D::Notice>>(
    socket: WebSocket,
    ctx: ConnContext,
    notices: R,
    dialect: D,
) {
    let conn_id = NEXT_CONNECTION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let span = tracing::info_span!("conn", id = conn_id, dialect = ctx.dialect);
    serve(socket, ctx, notices, dialect).instrument(span).await
}

async fn serve<D: Dialect, R: Notices<D::Notice>>(
    socket: WebSocket,
    ctx: ConnContext,
    mut notices: R,
    mut dialect: D,
) {
    let ConnContext {
        dialect: dialect_name,
        outbound,
        liveness,
        metrics,
        mut shutdown,
    } = ctx;
    let label = Metrics::dialect(dialect_name);
    metrics.connections.get_or_create(&label).inc();
    metrics.connections_opened.get_or_create(&label).inc();
    info!("connection opened");
    let compress = socket.compress;
    let (sink, mut stream) = socket.stream.split();
    let writer = tokio::spawn(write_loop(
        sink,
        outbound.clone(),
        liveness.write_timeout,
        compress,
    ));
    let mut ping = tokio::time::interval(liveness.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut last_pong = Instant::now();
    let mut last_message = Instant::now();
    let mut dialect_tick = dialect.tick_interval().map(|every| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let close_reason;
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    last_message = Instant::now();
                    dialect.on_text(text.as_str());
                }
                Some(Ok(Message::Binary(data))) => {
                    last_message = Instant::now();
                    dialect.on_binary(&data);
                }
                Some(Ok(Message::Pong(_))) => last_pong = Instant::now(),
                Some(Ok(Message::Ping(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => {
                    close_reason = "client closed";
                    break;
                }
                Some(Err(err)) => {
                    if is_too_big(&err) {
                        outbound.close_with(close::TOO_BIG, "message too big");
                        close_reason = "message too big";
                    } else {
                        debug!(error = %err, "read error");
                        close_reason = "read error";
                    }
                    break;
                }
            },
            Some(notice) = notices.next() => dialect.on_notice(notice),
            Some(_) = async {
                match dialect_tick.as_mut() {
                    Some(t) => Some(t.tick().await),
                    None => None,
                }
            }, if dialect_tick.is_some() => dialect.on_tick(),
            _ = ping.tick() => {
                if last_pong.elapsed() > liveness.ping_interval + liveness.pong_timeout {
                    outbound.close_with(close::POLICY, "no pong received");
                    close_reason = "pong timeout";
                    break;
                }
                if liveness
                    .idle_timeout
                    .is_some_and(|idle| dialect.is_idle() && last_message.elapsed() >= idle)
                {
                    metrics.refused(super::limits::limit::IDLE_TIMEOUT);
                    outbound.close_with(close::NORMAL, "idle: nothing subscribed and no message received");
                    close_reason = "idle timeout";
                    break;
                }
                outbound.ping();
            }
            _ = outbound.wait_closed() => {
                close_reason = "writer stopped";
                break;
            }
            _ = shutdown.changed() => {
                close_reason = "server shutting down";
                break;
            }
        }
    }
    drop(dialect);
    drop(notices);
    if *shutdown.borrow() {
        outbound.close_with(close::GOING_AWAY, "server shutting down");
    } else {
        outbound.close_with(close::NORMAL, "");
    }
    if tokio::time::timeout(Duration::from_secs(2), writer)
        .await
        .is_err()
    {
        debug!("writer did not finish in time");
    }
    outbound.shut();
    metrics.connections.get_or_create(&label).dec();
    info!(reason = close_reason, "connection closed");
}

fn is_too_big(err: &tungstenite::Error) -> bool {
    matches!(err, tungstenite::Error::Capacity(_))
}

/// Frames at least this long are sent compressed when the client
/// negotiated permessage-deflate; shorter ones gain too little to pay for
/// the deflate header and the CPU.
const COMPRESS_FROM: usize = 1024;

/// A text message, compressed (RSV1 set) when that was negotiated and
/// worth it.
fn text_message(text: String, compress: bool) -> Message {
    if compress && text.len() >= COMPRESS_FROM {
        let mut frame = Frame::message(
            deflate::compress(text.as_bytes()),
            OpCode::Data(Data::Text),
            true,
        );
        frame.header_mut().rsv1 = true;
        Message::Frame(frame)
    } else {
        Message::Text(text.into())
    }
}

async fn write_loop(
    mut sink: futures::stream::SplitSink<Stream, Message>,
    outbound: Arc<Outbound>,
    write_timeout: Duration,
    compress: bool,
) {
    let mut batch = Vec::new();
    'outer: loop {
        outbound.next_batch(&mut batch).await;
        for out in batch.drain(..) {
            let (msg, last) = match out {
                Out::Text(frame) => (text_message(frame.into_string(), compress), false),
                Out::Ping => (Message::Ping(Default::default()), false),
                Out::Close(code, reason) => (
                    Message::Close(Some(CloseFrame {
                        code: code.into(),
                        reason: reason.into(),
                    })),
                    true,
                ),
            };
            match tokio::time::timeout(write_timeout, sink.feed(msg)).await {
                Ok(Ok(())) if !last => {}
                Ok(Ok(())) => {
                    let _ = tokio::time::timeout(write_timeout, sink.flush()).await;
                    break 'outer;
                }
                Ok(Err(_)) | Err(_) => break 'outer,
            }
        }
        batch.shrink_to(super::outbound::KEEP_CAPACITY);
        match tokio::time::timeout(write_timeout, sink.flush()).await {
            Ok(Ok(())) => {}
            _ => break,
        }
    }
    outbound.shut();
}
