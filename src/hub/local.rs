//! A shared watch fed by the caller instead of an upstream task.
//!
//! Benchmarks use it to measure fan-out without a network in the way, and an
//! embedder with its own event source can use it to serve subscribers with the
//! same cache, resume and back-pressure semantics as a cluster watch.

use std::sync::{Arc, Weak};

use super::key::{ClientParams, WatchKey};
use super::shared::{SharedWatch, Upstream};
use super::subscriber::Subscriber;
use super::watch_cache::Cache;
use super::{HubConfig, Subscription};
use crate::metrics::Metrics;
use crate::upstream::WatchSink;

/// A shared watch whose events come from [`LocalWatch::feed`].
pub struct LocalWatch {
    watch: Arc<SharedWatch>,
    feed: Upstream,
    config: HubConfig,
}

impl LocalWatch {
    /// A watch for `key`, not attached to any hub or cluster.
    pub fn new(key: WatchKey, config: HubConfig, metrics: Arc<Metrics>) -> Self {
        let watch = Arc::new(SharedWatch::new(
            key,
            Weak::new(),
            metrics,
            Cache::new(config.history.clone()),
            config.fan_out,
        ));
        let feed = Upstream(Arc::downgrade(&watch));
        LocalWatch {
            watch,
            feed,
            config,
        }
    }

    /// Adds a subscriber, served from the cache by `params` like any other.
    pub fn subscribe(
        &self,
        params: ClientParams,
        sink: Arc<dyn Subscriber>,
    ) -> Option<Subscription> {
        let id = self.watch.add(sink, params, None)?;
        Some(Subscription {
            watch: self.watch.clone(),
            id,
            linger: self.config.linger,
        })
    }

    /// Where to push listings and events, as an upstream task would.
    pub fn feed(&self) -> &dyn WatchSink {
        &self.feed
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::hub::{EndReason, Overflow, key};
    use crate::upstream::Listing;
    use crate::upstream::event::{EventType, WatchEvent};

    #[derive(Default)]
    struct Counting {
        events: AtomicUsize,
    }

    impl Subscriber for Counting {
        fn event(&self, _: &Arc<WatchEvent>) -> Result<(), Overflow> {
            self.events.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        fn warning(&self, _: &str) {}
        fn end(&self, _: EndReason) {}
    }

    #[tokio::test]
    async fn fans_out_fed_events_to_every_subscriber() {
        let (key, _, _) = key::normalize("local", "/api/v1/pods", "").unwrap();
        let local = LocalWatch::new(key, HubConfig::default(), Arc::new(Metrics::new()));
        let sinks: Vec<Arc<Counting>> = (0..3).map(|_| Arc::new(Counting::default())).collect();
        let _subs: Vec<Subscription> = sinks
            .iter()
            .map(|s| local.subscribe(ClientParams::default(), s.clone()).unwrap())
            .collect();
        let _ = local.feed().listed(Listing {
            item_kind: "Pod".into(),
            api_version: "v1".into(),
            resource_version: "1".into(),
            objects: Vec::new(),
        });
        let obj = br#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","namespace":"d","resourceVersion":"2"}}"#;
        local
            .feed()
            .event(WatchEvent::synthesize(EventType::Added, obj).unwrap());
        for s in &sinks {
            assert_eq!(s.events.load(Ordering::Relaxed), 1);
        }
    }

    /// Takes `room` live events, then overflows; records replays whole.
    struct Bounded {
        room: usize,
        live: AtomicUsize,
        replays: parking_lot::Mutex<Vec<usize>>,
        ended: parking_lot::Mutex<Option<EndReason>>,
    }

    impl Subscriber for Bounded {
        fn event(&self, _: &Arc<WatchEvent>) -> Result<(), Overflow> {
            if self.live.fetch_add(1, Ordering::Relaxed) >= self.room {
                return Err(Overflow);
            }
            Ok(())
        }
        fn replay(&self, events: Vec<Arc<WatchEvent>>) -> Result<(), Overflow> {
            self.replays.lock().push(events.len());
            Ok(())
        }
        fn warning(&self, _: &str) {}
        fn end(&self, reason: EndReason) {
            *self.ended.lock() = Some(reason);
        }
    }

    fn pod(name: &str, rv: u64) -> Vec<u8> {
        format!(
            r#"{{"kind":"Pod","apiVersion":"v1","metadata":{{"name":"{name}","namespace":"d","resourceVersion":"{rv}"}}}}"#
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn a_joiner_is_owed_its_snapshot_as_one_replay_and_only_live_events_are_bounded() {
        let (key, _, _) = key::normalize("local", "/api/v1/pods", "").unwrap();
        let local = LocalWatch::new(key, HubConfig::default(), Arc::new(Metrics::new()));
        let _ = local.feed().listed(Listing {
            item_kind: "Pod".into(),
            api_version: "v1".into(),
            resource_version: "1000".into(),
            objects: (0..1000)
                .map(|i| {
                    WatchEvent::synthesize(EventType::Added, &pod(&format!("p{i}"), i + 1)).unwrap()
                })
                .collect(),
        });
        let sink = Arc::new(Bounded {
            room: 10,
            live: AtomicUsize::new(0),
            replays: Default::default(),
            ended: Default::default(),
        });
        let params = ClientParams {
            send_initial_events: true,
            ..ClientParams::default()
        };
        let _sub = local.subscribe(params, sink.clone()).unwrap();
        assert_eq!(
            *sink.replays.lock(),
            vec![1001],
            "1,000 objects and the initial-events-end bookmark, in one replay"
        );
        assert_eq!(sink.live.load(Ordering::Relaxed), 0);
        assert!(
            sink.ended.lock().is_none(),
            "a snapshot 100x its room does not end it"
        );
        for rv in 1001..1012 {
            local
                .feed()
                .event(WatchEvent::synthesize(EventType::Modified, &pod("p0", rv)).unwrap());
        }
        assert_eq!(
            *sink.ended.lock(),
            Some(EndReason::SlowConsumer),
            "live events past its room end it"
        );
    }
}
