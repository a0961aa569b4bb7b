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
    /// A transient upstream problem; the subscription continues. Sent once per outage.
    fn warning(&self, message: &str);
    /// The subscription has ended.
    fn end(&self, reason: EndReason);
}
