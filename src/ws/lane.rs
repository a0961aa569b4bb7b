//! The one way a subscription's output reaches its connection.
//!
//! Whatever a dialect makes of the hub's events (ready frames for Headlamp
//! and REST watches, notices for the stateful dashboard and console
//! connections), it travels a [`Lane`] with three classes of item:
//!
//! - **events**, within the connection's bound: refusing one is what marks
//!   a client that does not read;
//! - **replays** (a joining subscriber's snapshot or history), outside the
//!   bound and made as the connection drains them, so a snapshot of any
//!   size reaches a client that reads;
//! - **controls** (a problem, an end), never refused, so a subscriber whose
//!   events overflowed still tells its client why it ended.
//!
//! [`super::outbound::Outbound`] (frames, drained by the socket writer) and
//! [`super::notice::NoticeSender`] (notices, drained by the connection's
//! task) are the two lanes.

use crate::hub::Overflow;

/// A connection's way in for what its subscriptions produce.
pub trait Lane: Send + Sync + 'static {
    /// One event or control item.
    type Item;
    /// A joining subscriber's catch-up, queued as one unit.
    type Replay;

    /// Queues an event unless the connection is too far behind.
    fn event(&self, item: Self::Item) -> Result<(), Overflow>;
    /// Queues a catch-up outside the bound; later events follow it.
    fn replay(&self, replay: Self::Replay);
    /// Queues a control item; never refused.
    fn control(&self, item: Self::Item);
    /// The same for every lane into one connection (see
    /// [`crate::hub::Subscriber::affinity`]).
    fn connection(&self) -> usize;
}
