//! The hub's subscriber for every dialect.
//!
//! A dialect says what the hub's calls become ([`Deliver`]); [`Sink`] puts
//! them on the connection's [`Lane`] in the class each belongs to. So for
//! every dialect a live event is bounded (its refusal is the slow-consumer
//! cut), a joining subscriber's catch-up is a replay outside the bound,
//! and a problem or an end is a control that cannot be refused: no dialect
//! can lose the notice that a subscription ended behind a full queue.

use std::sync::Arc;

use crate::hub::{EndReason, Overflow, Subscriber};
use crate::upstream::event::WatchEvent;
use crate::ws::lane::Lane;
use crate::ws::notice::NoticeSender;

/// An item of `D`'s lane.
pub type Item<D> = <<D as Deliver>::Lane as Lane>::Item;

/// What one dialect's subscription makes of the hub's calls.
pub trait Deliver: Send + Sync + 'static {
    /// Where the subscription's output goes.
    type Lane: Lane;

    /// The lane of the subscription's connection.
    fn lane(&self) -> &Self::Lane;
    /// What a live event becomes.
    fn event(&self, event: &Arc<WatchEvent>) -> Item<Self>;
    /// What a joining subscriber's initial state or history replay becomes.
    fn replay(&self, events: Vec<Arc<WatchEvent>>) -> <Self::Lane as Lane>::Replay;
    /// What tells the client of a transient upstream problem, if anything.
    fn problem(&self, message: &str) -> Option<Item<Self>>;
    /// What tells the client the subscription ended, in order.
    fn end(&self, reason: EndReason) -> Vec<Item<Self>>;
    /// Runs once the end is queued (to free the subscription's name, close
    /// a response, …).
    fn ended(&self) {}
}

/// A dialect's subscriber, as the hub sees it.
pub struct Sink<D>(pub D);

impl<D: Deliver> Subscriber for Sink<D> {
    fn event(&self, event: &Arc<WatchEvent>) -> Result<(), Overflow> {
        self.0.lane().event(self.0.event(event))
    }

    fn replay(&self, events: Vec<Arc<WatchEvent>>) -> Result<(), Overflow> {
        self.0.lane().replay(self.0.replay(events));
        Ok(())
    }

    fn warning(&self, message: &str) {
        if let Some(item) = self.0.problem(message) {
            self.0.lane().control(item);
        }
    }

    fn end(&self, reason: EndReason) {
        for item in self.0.end(reason) {
            self.0.lane().control(item);
        }
        self.0.ended();
    }

    fn affinity(&self) -> usize {
        self.0.lane().connection()
    }
}

/// What the hub said about one subscription, for a dialect whose
/// connection task does the work (the dashboard and the console keep
/// per-connection state that every event updates).
#[derive(Debug)]
pub enum Update {
    /// A live event.
    Event(Arc<WatchEvent>),
    /// What the subscription was owed when it joined, in order.
    Replay(Vec<Arc<WatchEvent>>),
    /// A transient upstream problem; the subscription goes on.
    Problem(String),
    /// The subscription ended.
    Ended(EndReason),
}

/// Why a subscription ended, in words, for a dialect that names the
/// reason in an error of its own.
pub fn end_message(reason: EndReason) -> String {
    match reason {
        EndReason::Failed(message) => message,
        EndReason::SlowConsumer => "the client did not read fast enough".into(),
        other => format!("watch ended: {other:?}"),
    }
}

/// Hands the hub's calls, as [`Update`]s tagged with the subscription's
/// name, to a connection's notice channel.
pub struct Tagged<T, N> {
    /// Which of the connection's subscriptions this is.
    pub tag: T,
    /// The connection's notices.
    pub lane: NoticeSender<N>,
}

impl<T, N> Deliver for Tagged<T, N>
where
    T: Copy + Send + Sync + 'static,
    N: From<(T, Update)> + Send + 'static,
{
    type Lane = NoticeSender<N>;

    fn lane(&self) -> &NoticeSender<N> {
        &self.lane
    }

    fn event(&self, event: &Arc<WatchEvent>) -> N {
        (self.tag, Update::Event(event.clone())).into()
    }

    fn replay(&self, events: Vec<Arc<WatchEvent>>) -> N {
        (self.tag, Update::Replay(events)).into()
    }

    fn problem(&self, message: &str) -> Option<N> {
        Some((self.tag, Update::Problem(message.to_string())).into())
    }

    fn end(&self, reason: EndReason) -> Vec<N> {
        vec![(self.tag, Update::Ended(reason)).into()]
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::upstream::event::EventType;
    use crate::ws::conn::Notices;
    use crate::ws::notice::{self, NoticeReceiver, NoticeSender};

    /// Names what each hub call became, on a notice lane of two events.
    struct Naming {
        lane: NoticeSender<String>,
        ended: AtomicBool,
    }

    impl Deliver for Naming {
        type Lane = NoticeSender<String>;

        fn lane(&self) -> &NoticeSender<String> {
            &self.lane
        }

        fn event(&self, event: &Arc<WatchEvent>) -> String {
            format!("event {}", event.key())
        }

        fn replay(&self, events: Vec<Arc<WatchEvent>>) -> String {
            format!("replay of {}", events.len())
        }

        fn problem(&self, message: &str) -> Option<String> {
            (!message.is_empty()).then(|| format!("problem {message}"))
        }

        fn end(&self, reason: EndReason) -> Vec<String> {
            vec![format!("end {reason:?}"), "complete".into()]
        }

        fn ended(&self) {
            self.ended.store(true, Ordering::SeqCst);
        }
    }

    fn pod(name: &str) -> Arc<WatchEvent> {
        let object = format!(
            r#"{{"kind":"Pod","metadata":{{"name":"{name}","namespace":"a","resourceVersion":"1"}}}}"#
        );
        Arc::new(WatchEvent::synthesize(EventType::Added, object.as_bytes()).expect("a pod"))
    }

    async fn drain(rx: &mut NoticeReceiver<String>, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(rx.next().await.expect("a notice"));
        }
        out
    }

    #[tokio::test]
    async fn events_are_bounded_while_replays_problems_and_ends_always_arrive_in_order() {
        let (lane, mut rx) = notice::channel(2);
        let sink = Sink(Naming {
            lane,
            ended: AtomicBool::new(false),
        });
        let snapshot = (0..100).map(|i| pod(&format!("p{i}"))).collect();
        assert_eq!(
            sink.replay(snapshot),
            Ok(()),
            "a replay is outside the bound"
        );
        assert_eq!(sink.event(&pod("x")), Ok(()));
        assert_eq!(sink.event(&pod("y")), Ok(()));
        assert_eq!(
            sink.event(&pod("z")),
            Err(Overflow),
            "the bound is two events"
        );
        sink.warning("");
        sink.warning("upstream down");
        assert!(!sink.0.ended.load(Ordering::SeqCst));
        sink.end(EndReason::SlowConsumer);
        assert!(
            sink.0.ended.load(Ordering::SeqCst),
            "the hook runs after the end"
        );
        assert_eq!(
            drain(&mut rx, 6).await,
            [
                "replay of 100",
                "event a/x",
                "event a/y",
                "problem upstream down",
                "end SlowConsumer",
                "complete"
            ]
        );
    }
}
