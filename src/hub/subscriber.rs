//! The hub's view of a subscriber: something that takes events without blocking.

use std::sync::Arc;

use crate::upstream::event::WatchEvent;

/// The subscriber's queue is full: it cannot keep up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("subscriber queue is full")]
pub struct Overflow;

/// Why a subscription ended. After [`Subscriber::end`] no further calls follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The client's own `timeoutSeconds` elapsed.
    Timeout,
    /// The client's version is too old; the in-band 410 was already sent.
    Expired,
    /// The watch cannot continue (path gone, access denied, …).
    Failed(String),
    /// The client did not read fast enough.
    SlowConsumer,
    /// kubemux is shutting down.
    Shutdown,
}

/// Receives the events of one subscription.
///
/// The hub calls these methods while holding the shared watch's lock, so an
/// implementation must never block and never call back into the hub (for
/// example by dropping a [`super::Subscription`]) from inside them.
pub trait Subscriber: Send + Sync {
    /// Offers one event. `Err(Overflow)` ends the subscription as a slow consumer.
    fn event(&self, event: &Arc<WatchEvent>) -> Result<(), Overflow>;
    /// Offers what a joining subscriber is owed at once (its initial state
    /// or a replay of the history), in order. These events are already
    /// held by the cache, so an implementation keeps the list and sends it
    /// as its client reads, outside the bounds of its live queue: a
    /// snapshot larger than the queue then reaches a client that reads,
    /// and only live events behind it can overflow, which is what marks a
    /// client that does not read. The default offers them one by one.
    fn replay(&self, events: Vec<Arc<WatchEvent>>) -> Result<(), Overflow> {
        events.iter().try_for_each(|event| self.event(event))
    }
    /// A transient upstream problem; the subscription continues. Sent once per outage.
    fn warning(&self, message: &str);
    /// The subscription has ended.
    fn end(&self, reason: EndReason);
    /// Subscribers with the same affinity are offered a batch by the same
    /// thread when its delivery is spread over threads: those feeding one
    /// connection's queue give the same, so two threads never contend for
    /// one queue. The default keeps each subscriber on its own.
    fn affinity(&self) -> usize {
        std::ptr::from_ref(self).cast::<()>() as usize
    }
}
