//! A shared watch fed by the caller instead of an upstream task.
//!
//! Benchmarks use it to measure fan-out without a network in the way, and an
//! embedder with its own event source can use it to serve subscribers with the
//! same cache, resume and back-pressure semantics as a cluster watch.

use std::sync::{Arc, Weak};

use super::cache::Cache;
use super::key::{ClientParams, WatchKey};
use super::shared::{SharedWatch, Upstream};
use super::subscriber::Subscriber;
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
        let id = self.watch.add(sink, params)?;
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
}
