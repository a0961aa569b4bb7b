//! The bounded outbound queue of one connection.
//!
//! The hub pushes frames here without ever waiting; the connection's writer
//! task drains it into the socket. A push that would exceed the byte or frame
//! bound fails, and the hub then ends that subscriber as a slow consumer.
//! Every queue of one client address also counts against that address's
//! share of the global budget ([`QueueLimits::per_client`]); the connection
//! that is behind when its address goes over the share is closed, so one
//! client cannot fill the budget that every other client's new sockets need.
//!
//! What a subscriber is owed when it joins (an initial state, a replay of
//! the history) is queued as one [`Replay`]: a cursor over events the cache
//! already holds, turned into frames only as the writer reaches them. It is
//! outside the byte and frame bounds, so a snapshot of any size reaches a
//! client that reads; live frames queue behind it within the bounds, so a
//! client that stops reading still overflows and is cut.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::limits::{QueueShare, limit};
use crate::hub::Overflow;
use crate::metrics::Metrics;

/// A text frame made of shared parts, written as they are (see
/// `ws::writer`). This keeps per-subscriber work at a few reference-count
/// increments: the event's encoded body is shared by every subscriber.
#[derive(Clone, Debug, Default)]
pub struct Frame {
    parts: [Bytes; 4],
    blocks: Option<Blocks>,
}

/// A piece of a message that caches its own deflate block: the piece
/// deflated on its own with no context and sync-flushed, so the block is
/// byte-aligned and not final, and blocks of several pieces concatenate
/// into one valid permessage-deflate message. Computed by the first
/// connection that compresses and shared by the others.
pub trait Block: Send + Sync {
    /// The piece's deflate block (from [`deflate::block`](super::deflate::block)).
    fn block(&self) -> Bytes;
}

/// A frame's compressed payload as cached blocks: the subscriber's prefix,
/// the shared body, and the closing block with the sync flush's trailer
/// already removed (RFC 7692 §7.2.1), written in that order with RSV1 set.
#[derive(Clone)]
pub struct Blocks {
    /// The block of the frame's start, cached per subscription.
    pub prefix: Arc<dyn Block>,
    /// The block of the shared body, cached per event.
    pub body: Arc<dyn Block>,
    /// The last block (from [`deflate::compress`](super::deflate::compress)).
    pub last: Bytes,
    /// How many of the frame's leading parts the prefix block covers: the
    /// parts that differ between subscribers. The others (the body and
    /// what follows it) are the same in every frame of the event.
    pub private: usize,
}

impl Blocks {
    /// The blocks in the order they are written.
    pub fn parts(&self) -> [Bytes; 3] {
        [self.prefix.block(), self.body.block(), self.last.clone()]
    }
}

impl std::fmt::Debug for Blocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Blocks")
    }
}

impl Frame {
    /// A frame from up to four parts, written in order.
    pub fn from_parts(parts: [Bytes; 4]) -> Self {
        Frame {
            parts,
            blocks: None,
        }
    }

    /// The same frame, sent compressed as `blocks` (which must inflate to
    /// the parts) to a client that negotiated permessage-deflate.
    pub fn with_blocks(self, blocks: Blocks) -> Self {
        Frame {
            blocks: Some(blocks),
            ..self
        }
    }

    /// A frame from one string.
    pub fn text(text: impl Into<String>) -> Self {
        Frame::from_parts([
            Bytes::from(text.into()),
            Bytes::new(),
            Bytes::new(),
            Bytes::new(),
        ])
    }

    /// The parts, in the order they are written.
    pub fn parts(&self) -> &[Bytes; 4] {
        &self.parts
    }

    /// The cached deflate blocks, if the frame has them.
    pub fn blocks(&self) -> Option<&Blocks> {
        self.blocks.as_ref()
    }

    /// For a frame with blocks: the length of its subscriber's own start
    /// (the parts the prefix block covers), and the parts after it, which
    /// every frame of the event shares.
    pub fn shared_end(&self) -> Option<(usize, &[Bytes])> {
        let private = self.blocks.as_ref()?.private.min(self.parts.len());
        let start = self.parts[..private].iter().map(Bytes::len).sum();
        Some((start, &self.parts[private..]))
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    /// Whether the frame is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The parts concatenated.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.len());
        for p in &self.parts {
            buf.extend_from_slice(p);
        }
        buf
    }

    /// The frame as one contiguous string. Parts are UTF-8 by construction;
    /// anything else is replaced rather than sent as invalid text.
    pub fn into_string(self) -> String {
        String::from_utf8(self.to_vec())
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

impl super::lane::Lane for std::sync::Arc<Outbound> {
    type Item = Frame;
    type Replay = Replay;

    fn event(&self, frame: Frame) -> Result<(), Overflow> {
        self.push(frame)
    }

    fn replay(&self, replay: Replay) {
        self.push_replay(replay);
    }

    fn control(&self, frame: Frame) {
        self.push_forced(frame);
    }

    fn connection(&self) -> usize {
        std::sync::Arc::as_ptr(self) as usize
    }
}

/// Frames produced one by one as the writer takes them: the cost of a
/// queued replay is a pointer per event, whatever the events' size.
pub struct Replay {
    frames: Box<dyn Iterator<Item = Frame> + Send>,
    /// `frames_out`, counted as frames are made rather than when queued.
    sent: Option<prometheus_client::metrics::counter::Counter>,
}

impl Replay {
    /// A replay of `frames`, made lazily.
    pub fn new(frames: impl Iterator<Item = Frame> + Send + 'static) -> Self {
        Replay {
            frames: Box::new(frames),
            sent: None,
        }
    }
}

impl Iterator for Replay {
    type Item = Frame;

    fn next(&mut self) -> Option<Frame> {
        let frame = self.frames.next()?;
        if let Some(sent) = &self.sent {
            sent.inc();
        }
        Some(frame)
    }
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Replay")
    }
}

/// Something for the writer to send.
#[derive(Debug)]
pub enum Out {
    /// A text frame.
    Text(Frame),
    /// Text frames, made as they are written.
    Replay(Replay),
    /// A WebSocket ping.
    Ping,
    /// A close frame with code and reason; the writer stops after it.
    Close(u16, String),
}

/// Bounds of one connection's queue.
#[derive(Clone, Copy, Debug)]
pub struct QueueLimits {
    /// Most bytes waiting at once.
    pub max_bytes: usize,
    /// Most frames waiting at once.
    pub max_frames: usize,
    /// Most bytes waiting in all connections' queues together.
    pub budget: usize,
    /// Most bytes waiting in the queues of one client address's
    /// connections together (`--queue-budget-per-client`, a quarter of the
    /// budget by default): over it, the connection that is behind is closed
    /// with 1008.
    pub per_client: usize,
}

impl QueueLimits {
    /// Bytes queued from which a connection counts as behind: more than a
    /// few frames in flight.
    pub fn behind(&self) -> usize {
        (self.max_bytes / 8).min(64 * 1024)
    }
}

impl Default for QueueLimits {
    fn default() -> Self {
        let budget = super::limits::Limits::default().queue_budget;
        QueueLimits {
            max_bytes: 8 << 20,
            max_frames: 65_536,
            budget,
            per_client: budget / 4,
        }
    }
}

/// Queue capacity kept after a drain; more is released. An item is ~200
/// bytes, and an idle connection keeps this much twice (the queue and the
/// writer's batch): 64 kept 0.7 KiB more per idle subscription in loadgen's
/// scenario (a) than 8, which costs a busy connection a reallocation or
/// two per batch (no difference in CPU per frame beyond the runs' spread).
pub const KEEP_CAPACITY: usize = 8;

struct Queue {
    items: VecDeque<Out>,
    bytes: usize,
    /// Of `bytes`, those counted in the global gauge and the address's
    /// share: all of them once the connection is behind, none before (see
    /// [`Outbound::enqueue`]).
    accounted: usize,
    closed: bool,
    /// The payload of the latest ping the client sent, not yet answered:
    /// only the latest is answered (RFC 6455 §5.5.3), so a flood of pings
    /// holds one.
    pong: Option<Bytes>,
}

/// One connection's outbound queue.
pub struct Outbound {
    queue: Mutex<Queue>,
    ready: Notify,
    closed: Notify,
    limits: QueueLimits,
    metrics: Arc<Metrics>,
    share: Option<QueueShare>,
}

impl Outbound {
    /// An empty queue, counted against the global budget only.
    pub fn new(limits: QueueLimits, metrics: Arc<Metrics>) -> Self {
        Outbound {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                bytes: 0,
                accounted: 0,
                closed: false,
                pong: None,
            }),
            ready: Notify::new(),
            closed: Notify::new(),
            limits,
            metrics,
            share: None,
        }
    }

    /// An empty queue counted against `share` too (its client address's).
    pub fn with_share(
        limits: QueueLimits,
        metrics: Arc<Metrics>,
        share: Option<QueueShare>,
    ) -> Self {
        Outbound {
            share,
            ..Outbound::new(limits, metrics)
        }
    }

    /// Counts `len` more bytes queued (negative: fewer) in the global gauge
    /// and the address's share.
    fn account(&self, len: isize) {
        self.metrics.queue_bytes.inc_by(len as i64);
        if let Some(share) = &self.share {
            if len >= 0 {
                share
                    .queued
                    .fetch_add(len.unsigned_abs(), Ordering::Relaxed);
            } else {
                share
                    .queued
                    .fetch_sub(len.unsigned_abs(), Ordering::Relaxed);
            }
        }
    }

    /// Empties the queue's byte count, and the counters it was counted in.
    fn release(&self, q: &mut Queue) {
        self.account(-(q.accounted as isize));
        q.accounted = 0;
        q.bytes = 0;
    }

    /// Queues a frame if it fits within the bounds.
    pub fn push(&self, frame: Frame) -> Result<(), Overflow> {
        let len = frame.len();
        let mut q = self.queue.lock();
        if q.closed {
            return Ok(());
        }
        if q.bytes + len > self.limits.max_bytes || q.items.len() >= self.limits.max_frames {
            self.metrics.frames_dropped.inc();
            return Err(Overflow);
        }
        // A client address over its share loses the connection that is
        // behind (not those keeping up), before the global budget is reached.
        if let Some(share) = &self.share
            && q.bytes >= self.limits.behind()
            && share.bytes() + len > self.limits.per_client
        {
            let reason = format!(
                "too many bytes queued for {}: more than {} for one client address (--queue-budget-per-client); read faster",
                share.address, self.limits.per_client
            );
            self.metrics.frames_dropped.inc();
            self.metrics.refused(limit::QUEUE_SHARE);
            self.cut(&mut q, reason);
            drop(q);
            self.ready.notify_one();
            return Err(Overflow);
        }
        // Over the global budget, connections that are behind are cut and
        // those keeping up (a few frames in flight) are not, so the budget
        // may be exceeded by at most `behind` bytes per connection.
        if q.bytes >= self.limits.behind()
            && self.metrics.queue_bytes.get().max(0) as usize + len > self.limits.budget
        {
            self.metrics.frames_dropped.inc();
            self.metrics.refused(limit::QUEUE_BUDGET);
            return Err(Overflow);
        }
        self.enqueue(&mut q, Out::Text(frame), len);
        Ok(())
    }

    /// Queues the answer to one of the client's own messages (an ERROR for
    /// a bad one, a pong) within the bounds. When it does not fit, the
    /// client sends faster than it reads: see [`Outbound::close_unread`].
    pub fn answer(&self, frame: Frame) {
        if self.push(frame).is_err() {
            self.close_unread();
        }
    }

    /// Closes the connection with 1008 because answers to the client's own
    /// messages no longer fit its queue. What is still queued is dropped
    /// (answers nobody reads), so the close frame is the next thing written
    /// after what the socket already holds, and the connection stops reading
    /// the client ([`Outbound::is_closed`]), so a flood costs nothing more
    /// than the bytes the kernel buffers; the write timeout still bounds how
    /// long the close frame waits for a client that never reads at all.
    pub fn close_unread(&self) {
        let mut q = self.queue.lock();
        if q.closed {
            return;
        }
        self.metrics.refused(limit::UNREAD_ANSWERS);
        self.cut(
            &mut q,
            "too many unread answers: read the answers to your messages".into(),
        );
        drop(q);
        self.ready.notify_one();
    }

    /// Drops what is queued and queues a 1008 close with `reason` instead:
    /// the bytes are released at once, and the close frame is the next
    /// thing written after what the socket already holds.
    fn cut(&self, q: &mut Queue, reason: String) {
        self.metrics.frames_dropped.inc_by(dropped(&q.items));
        self.release(q);
        q.items.clear();
        q.items.push_back(Out::Close(super::close::POLICY, reason));
        q.closed = true;
    }

    /// Whether a close frame was queued (or the connection is gone): nothing
    /// more will be sent, so nothing more the client sends is read.
    pub fn is_closed(&self) -> bool {
        self.queue.lock().closed
    }

    /// Queues what a joining subscriber is owed, outside the bounds (see
    /// the module's documentation); frames pushed later follow it.
    pub fn push_replay(&self, mut replay: Replay) {
        replay.sent = Some(self.metrics.frames_out.clone());
        let mut q = self.queue.lock();
        if !q.closed {
            q.items.push_back(Out::Replay(replay));
            if q.items.len() == 1 {
                self.ready.notify_one();
            }
        }
    }

    /// Queues a small control frame (an error, a completion) even when the
    /// queue is full, so a client that is cut off learns why.
    pub fn push_forced(&self, frame: Frame) {
        let len = frame.len();
        let mut q = self.queue.lock();
        if !q.closed {
            self.enqueue(&mut q, Out::Text(frame), len);
        }
    }

    /// Queues a ping.
    pub fn ping(&self) {
        let mut q = self.queue.lock();
        if !q.closed {
            q.items.push_back(Out::Ping);
            drop(q);
            self.ready.notify_one();
        }
    }

    /// Answers a ping from the client with `payload`, ahead of what is
    /// queued; replaces an answer not yet written.
    pub fn pong(&self, payload: Bytes) {
        let mut q = self.queue.lock();
        if !q.closed {
            q.pong = Some(payload);
            drop(q);
            self.ready.notify_one();
        }
    }

    /// The pong to write, if a ping is unanswered.
    pub fn take_pong(&self) -> Option<Bytes> {
        self.queue.lock().pong.take()
    }

    /// Queues a close frame; nothing queued after it is sent.
    pub fn close_with(&self, code: u16, reason: &str) {
        let mut q = self.queue.lock();
        if !q.closed {
            q.items.push_back(Out::Close(code, reason.to_string()));
            q.closed = true;
            drop(q);
            self.ready.notify_one();
        }
    }

    /// Adds `out` to the queue. Its bytes reach the global gauge and the
    /// address's share only once the connection is behind: those are the
    /// bytes the budgets are about (only a connection that is behind is
    /// ever cut for them), and a connection keeping up, a few frames in
    /// flight, then queues without touching a counter shared with every
    /// other connection, which threads fanning one event out to thousands
    /// of connections at once would otherwise all contend for.
    fn enqueue(&self, q: &mut Queue, out: Out, len: usize) {
        q.items.push_back(out);
        q.bytes += len;
        if q.bytes >= self.limits.behind() {
            self.account((q.bytes - q.accounted) as isize);
            q.accounted = q.bytes;
        }
        if q.items.len() == 1 {
            self.ready.notify_one();
        }
    }

    /// Takes everything queued, waiting until there is something (or a
    /// pong is owed, see [`Outbound::take_pong`]).
    pub async fn next_batch(&self, batch: &mut Vec<Out>) {
        loop {
            let notified = self.ready.notified();
            {
                let mut q = self.queue.lock();
                if q.pong.is_some() && q.items.is_empty() {
                    return;
                }
                if !q.items.is_empty() {
                    let texts = q.items.iter().filter(|o| matches!(o, Out::Text(_))).count();
                    self.metrics.frames_out.inc_by(texts as u64);
                    batch.extend(q.items.drain(..));
                    // Do not keep the capacity of a burst (an initial state)
                    // for the life of an idle connection.
                    q.items.shrink_to(KEEP_CAPACITY);
                    self.release(&mut q);
                    return;
                }
            }
            notified.await;
        }
    }

    /// Marks the connection gone: later pushes are dropped silently because
    /// nobody can read them, and waiters on [`Outbound::wait_closed`] wake.
    pub fn shut(&self) {
        let mut q = self.queue.lock();
        q.closed = true;
        self.release(&mut q);
        self.metrics.frames_dropped.inc_by(dropped(&q.items));
        q.items.clear();
        drop(q);
        self.closed.notify_waiters();
        self.closed.notify_one();
    }

    /// Resolves once [`Outbound::shut`] was called.
    pub async fn wait_closed(&self) {
        self.closed.notified().await;
    }

    /// Bytes waiting now.
    pub fn queued_bytes(&self) -> usize {
        self.queue.lock().bytes
    }
}

/// Text frames among `items` (a replay counts as one).
fn dropped(items: &VecDeque<Out>) -> u64 {
    items
        .iter()
        .filter(|o| matches!(o, Out::Text(_) | Out::Replay(_)))
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_bytes_but_lets_control_frames_through() {
        let q = Outbound::new(
            QueueLimits {
                max_bytes: 10,
                max_frames: 100,
                budget: 1 << 20,
                per_client: 1 << 20,
            },
            Arc::new(Metrics::new()),
        );
        assert!(q.push(Frame::text("123456")).is_ok());
        assert_eq!(q.push(Frame::text("123456")), Err(Overflow));
        q.push_forced(Frame::text("error"));
        assert_eq!(q.queued_bytes(), 11);
    }

    #[test]
    fn the_global_budget_cuts_connections_that_are_behind() {
        let metrics = Arc::new(Metrics::new());
        let limits = QueueLimits {
            max_bytes: 100,
            max_frames: 100,
            budget: 10,
            per_client: 10,
        };
        assert_eq!(limits.behind(), 12);
        let behind = Outbound::new(limits, metrics.clone());
        let keeping_up = Outbound::new(limits, metrics.clone());
        assert!(behind.push(Frame::text("12345678901234")).is_ok());
        assert_eq!(
            behind.push(Frame::text("1234")),
            Err(Overflow),
            "over budget while behind"
        );
        assert!(
            keeping_up.push(Frame::text("1234")).is_ok(),
            "a short queue may still send"
        );
        assert_eq!(
            metrics.queue_bytes.get(),
            14,
            "the connection that is behind is counted, the one keeping up is not"
        );
        let mut batch = Vec::new();
        futures::executor::block_on(behind.next_batch(&mut batch));
        assert_eq!(
            metrics.queue_bytes.get(),
            0,
            "a drained queue counts nothing"
        );
        let refused = metrics.encode();
        assert!(
            refused.contains("kubemux_limit_refusals_total{limit=\"queue_budget\"} 1"),
            "{refused}"
        );
    }
}
