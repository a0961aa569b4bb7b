//! A connection's notice channel: events within a bound, replays and
//! control notices always (a [`super::lane::Lane`]).
//!
//! Subscribers of the dashboard and console dialects hand their events to
//! the connection's own task through this channel. Events are bounded so a
//! connection that cannot keep up is found out; an end or a problem is a
//! control notice and is never refused, so a subscriber whose events
//! overflowed still tells its connection why it ended. One channel keeps
//! both in the order they were sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

use crate::hub::Overflow;

/// A notice channel holding at most `max_events` events at once.
pub fn channel<N>(max_events: usize) -> (NoticeSender<N>, NoticeReceiver<N>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let pending = Arc::new(AtomicUsize::new(0));
    (
        NoticeSender {
            tx,
            pending: pending.clone(),
            max_events,
        },
        NoticeReceiver { rx, pending },
    )
}

enum Item<N> {
    Event(N),
    Control(N),
}

/// The sending half; cheap to clone.
pub struct NoticeSender<N> {
    tx: mpsc::UnboundedSender<Item<N>>,
    pending: Arc<AtomicUsize>,
    max_events: usize,
}

impl<N> Clone for NoticeSender<N> {
    fn clone(&self) -> Self {
        NoticeSender {
            tx: self.tx.clone(),
            pending: self.pending.clone(),
            max_events: self.max_events,
        }
    }
}

impl<N> NoticeSender<N> {
    /// Sends an event notice unless `max_events` are already waiting. A
    /// closed connection takes anything: nobody is left to read it.
    pub fn event(&self, notice: N) -> Result<(), Overflow> {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_events {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(Overflow);
        }
        if self.tx.send(Item::Event(notice)).is_err() {
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Sends a control notice (an end, a problem, a verdict), never refused.
    pub fn control(&self, notice: N) {
        let _ = self.tx.send(Item::Control(notice));
    }
}

impl<N: Send + 'static> super::lane::Lane for NoticeSender<N> {
    type Item = N;
    /// A notice carrying the whole catch-up; the connection's task works
    /// through it as it does through any notice.
    type Replay = N;

    fn event(&self, notice: N) -> Result<(), Overflow> {
        NoticeSender::event(self, notice)
    }

    fn replay(&self, notice: N) {
        self.control(notice);
    }

    fn control(&self, notice: N) {
        NoticeSender::control(self, notice);
    }

    fn connection(&self) -> usize {
        Arc::as_ptr(&self.pending) as usize
    }
}

/// The receiving half, read by the connection's task.
pub struct NoticeReceiver<N> {
    rx: mpsc::UnboundedReceiver<Item<N>>,
    pending: Arc<AtomicUsize>,
}

impl<N: Send> super::conn::Notices<N> for NoticeReceiver<N> {
    async fn next(&mut self) -> Option<N> {
        match self.rx.recv().await? {
            Item::Event(notice) => {
                self.pending.fetch_sub(1, Ordering::AcqRel);
                Some(notice)
            }
            Item::Control(notice) => Some(notice),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::conn::Notices;
    use super::*;

    #[tokio::test]
    async fn events_are_bounded_control_notices_are_not_and_order_holds() {
        let (tx, mut rx) = channel::<u32>(2);
        assert!(tx.event(1).is_ok());
        assert!(tx.event(2).is_ok());
        assert_eq!(tx.event(3), Err(Overflow), "a third event does not fit");
        tx.control(4);
        tx.control(5);
        assert_eq!(rx.next().await, Some(1));
        assert!(tx.event(6).is_ok(), "reading an event makes room");
        assert_eq!(rx.next().await, Some(2));
        assert_eq!(rx.next().await, Some(4));
        assert_eq!(rx.next().await, Some(5));
        assert_eq!(rx.next().await, Some(6));
        drop(tx);
        assert_eq!(rx.next().await, None);
    }
}
