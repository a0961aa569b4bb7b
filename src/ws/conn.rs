//! One client connection: a reader loop feeding the dialect, a writer task
//! draining the outbound queue, server pings and their deadline.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{Instrument, debug, info};
use tungstenite::Message;

pub use super::close;
use super::outbound::Outbound;
use super::upgrade::WebSocket;
use super::writer::write_loop;
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
    /// When the dialect has deferred work due (messages held back by a
    /// rate limit), so the loop wakes for it without polling.
    fn wake_at(&self) -> Option<Instant> {
        None
    }
    /// The moment [`Dialect::wake_at`] named has come.
    fn on_wake(&mut self) {}
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
    /// A connection that has not answered a ping this long after it was
    /// sent is closed, at that moment (not at the next ping).
    pub pong_timeout: Duration,
    /// A single write blocked for longer than this means the client is gone
    /// or stuck; the connection is closed.
    pub write_timeout: Duration,
    /// A connection that [is idle](Dialect::is_idle) and has sent no
    /// message for this long is closed, at that moment, so abandoned
    /// sockets do not pile up. `None`: never.
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

/// What [`Heartbeat::due`] found has to happen now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Beat {
    /// Nothing yet.
    Wait,
    /// Send a ping.
    Ping,
    /// A ping went unanswered for [`Liveness::pong_timeout`].
    PongTimeout,
    /// Idle for [`Liveness::idle_timeout`].
    IdleTimeout,
}

/// The connection's deadlines, kept as instants so the connection sleeps
/// until the earliest one: a contract such as "pong within 10 s" is met
/// when it falls due, not at the next ping tick.
#[derive(Debug)]
struct Heartbeat {
    liveness: Liveness,
    next_ping: Instant,
    /// When the oldest unanswered ping must have been answered.
    pong_due: Option<Instant>,
    last_message: Instant,
}

impl Heartbeat {
    fn new(liveness: Liveness, now: Instant) -> Heartbeat {
        Heartbeat {
            liveness,
            next_ping: now + liveness.ping_interval,
            pong_due: None,
            last_message: now,
        }
    }

    /// Any pong answers every ping sent so far (WebSocket pongs carry no
    /// reliable correlation, and an answer to a later ping proves the
    /// client alive as well).
    fn pong(&mut self) {
        self.pong_due = None;
    }

    fn message(&mut self, now: Instant) {
        self.last_message = now;
    }

    /// The earliest instant at which [`Heartbeat::due`] can change.
    fn deadline(&self, idle: bool) -> Instant {
        let mut at = self.next_ping;
        if let Some(due) = self.pong_due {
            at = at.min(due);
        }
        if let Some(limit) = self.liveness.idle_timeout.filter(|_| idle) {
            at = at.min(self.last_message + limit);
        }
        at
    }

    /// What is due at `now`; a ping due now is recorded as sent.
    fn due(&mut self, now: Instant, idle: bool) -> Beat {
        if self.pong_due.is_some_and(|due| now >= due) {
            return Beat::PongTimeout;
        }
        if self
            .liveness
            .idle_timeout
            .is_some_and(|limit| idle && now >= self.last_message + limit)
        {
            return Beat::IdleTimeout;
        }
        if now >= self.next_ping {
            self.next_ping = now + self.liveness.ping_interval;
            self.pong_due
                .get_or_insert(now + self.liveness.pong_timeout);
            return Beat::Ping;
        }
        Beat::Wait
    }
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
///
/// Not an `async fn`, and so are the dialects' `serve`s that call it: a
/// future keeps its arguments for its whole life, so each async layer
/// around the connection loop would hold a dead copy of the socket and
/// the dialect for as long as the connection lives (a few KiB per idle
/// connection).
pub fn run<D: Dialect, R: Notices<D::Notice>>(
    socket: WebSocket,
    ctx: ConnContext,
    notices: R,
    dialect: D,
) -> impl Future<Output = ()> {
    let conn_id = NEXT_CONNECTION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let span = tracing::info_span!("conn", id = conn_id, dialect = ctx.dialect);
    serve(socket, ctx, notices, dialect).instrument(span)
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
    let compression = socket.compression;
    let mut stream = socket.stream;
    let writer = tokio::spawn(write_loop(
        socket.sink,
        outbound.clone(),
        liveness.write_timeout,
        compression,
    ));
    let mut heartbeat = Heartbeat::new(liveness, Instant::now());
    let beat = tokio::time::sleep_until(heartbeat.deadline(dialect.is_idle()));
    tokio::pin!(beat);
    let mut dialect_tick = dialect.tick_interval().map(|every| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let close_reason;
    loop {
        // Re-armed only when a deadline moved, so a busy connection does
        // not touch the timer wheel per event.
        let deadline = heartbeat.deadline(dialect.is_idle());
        if beat.deadline() != deadline {
            beat.as_mut().reset(deadline);
        }
        let wake = dialect.wake_at();
        // Once a close frame is queued (a policy close by the dialect, a
        // flood of unread answers) nothing the client sends can be
        // answered: it is not read any more, and the kernel pushes back on
        // it, while the writer delivers the close.
        let reading = !outbound.is_closed();
        tokio::select! {
            msg = stream.next(), if reading => match msg {
                Some(Ok(Message::Text(text))) => {
                    heartbeat.message(Instant::now());
                    dialect.on_text(text.as_str());
                }
                Some(Ok(Message::Binary(data))) => {
                    heartbeat.message(Instant::now());
                    dialect.on_binary(&data);
                }
                Some(Ok(Message::Pong(_))) => heartbeat.pong(),
                // tungstenite's own answers go nowhere (see `ws::writer`):
                // the writer sends them.
                Some(Ok(Message::Ping(payload))) => outbound.pong(payload),
                Some(Ok(Message::Frame(_))) => {}
                Some(Ok(Message::Close(frame))) => {
                    match frame {
                        Some(frame) => outbound.close_with(frame.code.into(), &frame.reason),
                        None => outbound.close_with(close::NO_STATUS, ""),
                    }
                    close_reason = "client closed";
                    break;
                }
                None => {
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
            () = async {
                if let Some(at) = wake {
                    tokio::time::sleep_until(at).await;
                }
            }, if wake.is_some() => dialect.on_wake(),
            () = &mut beat => match heartbeat.due(Instant::now(), dialect.is_idle()) {
                Beat::Wait => {}
                Beat::Ping => outbound.ping(),
                Beat::PongTimeout => {
                    outbound.close_with(close::POLICY, "no pong received");
                    close_reason = "pong timeout";
                    break;
                }
                Beat::IdleTimeout => {
                    metrics.refused(super::limits::limit::IDLE_TIMEOUT);
                    outbound.close_with(close::NORMAL, "idle: nothing subscribed and no message received");
                    close_reason = "idle timeout";
                    break;
                }
            },
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
        outbound.close_with(
            close::SERVICE_RESTART,
            "kubemux is restarting: reconnect and resume from your last version",
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn liveness(ping: u64, pong: u64, idle: Option<u64>) -> Liveness {
        Liveness {
            ping_interval: Duration::from_secs(ping),
            pong_timeout: Duration::from_secs(pong),
            write_timeout: Duration::from_secs(10),
            idle_timeout: idle.map(Duration::from_secs),
        }
    }

    /// Runs a heartbeat on tokio's clock as the connection loop does
    /// (sleep until [`Heartbeat::deadline`], then [`Heartbeat::due`]). The
    /// client answers each ping after `answer` (`None`: never), sends a
    /// message at each of `messages` (seconds), and stops answering after
    /// `answers_until`. Returns what ended the connection and when, or
    /// `None` if it was still open at `until`.
    async fn drive(
        l: Liveness,
        answer: Option<Duration>,
        answers_until: Duration,
        messages: &[u64],
        idle: bool,
        until: Duration,
    ) -> Option<(Beat, Duration)> {
        let start = Instant::now();
        let mut heartbeat = Heartbeat::new(l, start);
        let mut pong_at: Option<Instant> = None;
        let mut messages: Vec<Instant> = messages
            .iter()
            .map(|s| start + Duration::from_secs(*s))
            .collect();
        loop {
            let mut at = heartbeat.deadline(idle);
            at = pong_at.map_or(at, |p| at.min(p));
            at = messages.first().map_or(at, |m| at.min(*m));
            if at > start + until {
                return None;
            }
            tokio::time::sleep_until(at).await;
            let now = Instant::now();
            if pong_at.is_some_and(|p| now >= p) {
                pong_at = None;
                heartbeat.pong();
                continue;
            }
            if messages.first().is_some_and(|m| now >= *m) {
                messages.remove(0);
                heartbeat.message(now);
                continue;
            }
            match heartbeat.due(now, idle) {
                Beat::Wait => {}
                Beat::Ping => {
                    pong_at = answer
                        .filter(|_| now - start < answers_until)
                        .map(|a| now + a);
                }
                beat => return Some((beat, now - start)),
            }
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test(start_paused = true)]
    async fn seed_001_an_unanswered_ping_closes_10s_after_it_was_sent() {
        let closed = drive(liveness(30, 10, None), None, HOUR, &[], false, HOUR).await;
        assert_eq!(closed, Some((Beat::PongTimeout, Duration::from_secs(40))));
    }

    #[tokio::test(start_paused = true)]
    async fn seed_002_an_unanswered_ping_closes_60s_after_the_last_answer() {
        // Ping period 54 s, pong wait 60 s: 6 s after the ping.
        let closed = drive(liveness(54, 6, None), None, HOUR, &[], false, HOUR).await;
        assert_eq!(closed, Some((Beat::PongTimeout, Duration::from_secs(60))));
        let answered_then_silent = drive(
            liveness(54, 6, None),
            Some(Duration::from_secs(1)),
            Duration::from_secs(100),
            &[],
            false,
            HOUR,
        )
        .await;
        // Answered the pings at 54 s (pong at 55 s); the one at 108 s is not.
        assert_eq!(
            answered_then_silent,
            Some((Beat::PongTimeout, Duration::from_secs(114)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn answered_pings_keep_a_connection_open() {
        let l = liveness(30, 10, None);
        let open = drive(l, Some(Duration::from_secs(9)), HOUR, &[], false, HOUR).await;
        assert_eq!(open, None);
    }

    #[tokio::test(start_paused = true)]
    async fn seed_003_idle_closes_300s_after_the_last_message() {
        // Pings answered (WebSocket pongs are not messages), last message at 7 s.
        let l = liveness(30, 30, Some(300));
        let closed = drive(l, Some(Duration::from_secs(1)), HOUR, &[3, 7], true, HOUR).await;
        assert_eq!(closed, Some((Beat::IdleTimeout, Duration::from_secs(307))));
        // A connection the dialect does not call idle is never closed for it.
        let busy = drive(l, Some(Duration::from_secs(1)), HOUR, &[7], false, HOUR).await;
        assert_eq!(busy, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pong_deadline_longer_than_the_interval_keeps_the_first_ping_s() {
        // Pings at 10 s, 20 s, 30 s…; the first one is due at 35 s.
        let closed = drive(liveness(10, 25, None), None, HOUR, &[], false, HOUR).await;
        assert_eq!(closed, Some((Beat::PongTimeout, Duration::from_secs(35))));
    }
}
