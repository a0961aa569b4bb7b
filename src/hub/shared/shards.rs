//! Spreads one batch's delivery over threads.
//!
//! Fan-out happens under the shared watch's lock, so that a joiner is
//! placed between two batches and never within one. A wide watch (a
//! resource type's one cluster-wide watch serving every namespace of a
//! large dashboard fleet) can have tens of thousands of live subscribers,
//! and offering one event to each of them in turn on one thread holds the
//! lock, and delays the last subscriber, for as long as all the offers
//! take together. Offers to different subscribers are independent (each
//! sink is `Sync` and does not block), so the subscribers are split into
//! shards, one per thread, and the batch's delivery takes as long as one
//! shard's. Subscribers of one connection share a shard (by their
//! [`Subscriber::affinity`](crate::hub::Subscriber::affinity)): two threads
//! pushing onto one connection's queue would spend the time saved on
//! handing its lock back and forth. The lock is still held until every shard is done, so the
//! order between batches and placements stays the same as on one thread.
//!
//! The calling thread delivers the first shard itself; the others run on
//! scoped threads for the duration of this one batch. A thread that
//! cannot be started leaves its shard to the calling thread: nothing is
//! skipped.

use std::collections::HashMap;
use std::sync::Arc;

use super::watcher::{SubscriberId, Views, Watcher};
use crate::hub::filter::Change;

/// Stack of a delivery thread: offers are shallow (a filter check, a
/// frame's parts pushed onto a queue).
const STACK: usize = 256 * 1024;

/// How one batch's delivery is spread over threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FanOut {
    /// Most threads one batch is spread over; 0 means one per worker
    /// thread of the runtime the fan-out runs on.
    pub threads: usize,
    /// Fewest live subscribers worth a thread of their own: below twice
    /// this a batch is delivered on the calling thread. A second thread
    /// starts cold (the subscribers' queues were last touched by the
    /// threads that drained them), so it pays only for large shards: in
    /// `benches/hub.rs` on two cores, 10,000 subscribers took 0.83 ms on
    /// one thread and 0.96 ms on two, 30,000 took 2.97 and 2.27 ms.
    pub per_thread: usize,
}

impl Default for FanOut {
    fn default() -> Self {
        FanOut {
            threads: 0,
            per_thread: 8_192,
        }
    }
}

impl FanOut {
    /// Shards for `subscribers` subscribers.
    fn shards(&self, subscribers: usize) -> usize {
        let threads = match self.threads {
            0 => tokio::runtime::Handle::try_current()
                .map(|runtime| runtime.metrics().num_workers())
                .unwrap_or(1),
            n => n,
        };
        threads.min(subscribers / self.per_thread.max(1)).max(1)
    }

    /// Offers `changes` to every live subscriber in `watchers`; returns
    /// those that could not take them.
    pub(super) fn deliver(
        &self,
        watchers: &HashMap<SubscriberId, Watcher>,
        changes: &[Arc<Change>],
    ) -> Vec<SubscriberId> {
        let shards = self.shards(watchers.len());
        if shards == 1 {
            return deliver_to(watchers.iter(), changes);
        }
        let mut parts: Vec<Vec<(&SubscriberId, &Watcher)>> = (0..shards)
            .map(|_| Vec::with_capacity(watchers.len() / shards * 9 / 8))
            .collect();
        for (id, sub) in watchers {
            parts[sub.shard(shards)].push((id, sub));
        }
        let own = parts.swap_remove(0);
        std::thread::scope(|scope| {
            let mut left = Vec::new();
            let started: Vec<_> = parts
                .iter()
                .filter(|part| !part.is_empty())
                .filter_map(|part| {
                    let thread = std::thread::Builder::new()
                        .name("kubemux-fan-out".into())
                        .stack_size(STACK)
                        .spawn_scoped(scope, move || {
                            let copies: Vec<Arc<Change>> = changes
                                .iter()
                                .map(|change| Arc::new(change.detached()))
                                .collect();
                            deliver_to(part.iter().copied(), &copies)
                        });
                    match thread {
                        Ok(thread) => Some(thread),
                        Err(_) => {
                            left.push(part);
                            None
                        }
                    }
                })
                .collect();
            let mut slow = deliver_to(own.iter().copied(), changes);
            for part in left {
                slow.extend(deliver_to(part.iter().copied(), changes));
            }
            for thread in started {
                match thread.join() {
                    Ok(cut) => slow.extend(cut),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            slow
        })
    }
}

/// Offers `changes` to each live subscriber of `watchers` on this thread.
fn deliver_to<'w>(
    watchers: impl Iterator<Item = (&'w SubscriberId, &'w Watcher)>,
    changes: &[Arc<Change>],
) -> Vec<SubscriberId> {
    let mut views = Views::new(changes);
    watchers
        .filter(|(_, sub)| sub.is_live() && sub.deliver(&mut views).is_err())
        .map(|(id, _)| *id)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::thread::ThreadId;

    use parking_lot::Mutex;

    use super::*;
    use crate::hub::{
        ClientParams, EndReason, HubConfig, LocalWatch, Overflow, Subscriber, Subscription, key,
    };
    use crate::metrics::Metrics;
    use crate::upstream::Listing;
    use crate::upstream::event::{EventType, WatchEvent};

    /// Records the versions it is given and the thread that gave each;
    /// refuses every event after its first `room`.
    struct Sink {
        room: usize,
        versions: Mutex<Vec<String>>,
        threads: Mutex<Vec<(String, ThreadId)>>,
        ended: Mutex<Vec<EndReason>>,
    }

    impl Sink {
        fn new(room: usize) -> Arc<Self> {
            Arc::new(Sink {
                room,
                versions: Mutex::default(),
                threads: Mutex::default(),
                ended: Mutex::default(),
            })
        }
    }

    impl Subscriber for Sink {
        fn event(&self, event: &Arc<WatchEvent>) -> Result<(), Overflow> {
            let version = event.resource_version().to_string();
            self.threads
                .lock()
                .push((version, std::thread::current().id()));
            let mut versions = self.versions.lock();
            if versions.len() == self.room {
                return Err(Overflow);
            }
            versions.push(event.resource_version().to_string());
            Ok(())
        }
        fn warning(&self, _: &str) {}
        fn end(&self, reason: EndReason) {
            self.ended.lock().push(reason);
        }
    }

    /// Feeds `events` events to `subscribers` subscribers, every seventh of
    /// which takes only three; returns the sinks.
    fn run(fan_out: FanOut, subscribers: usize, events: u64) -> Vec<Arc<Sink>> {
        let (key, _, _) = key::normalize("local", "/api/v1/pods", "").unwrap();
        let config = HubConfig {
            fan_out,
            ..HubConfig::default()
        };
        let local = LocalWatch::new(key, config, Arc::new(Metrics::new()));
        let _ = local.feed().listed(Listing {
            item_kind: "Pod".into(),
            api_version: "v1".into(),
            resource_version: "1".into(),
            objects: Vec::new(),
        });
        let sinks: Vec<Arc<Sink>> = (0..subscribers)
            .map(|i| Sink::new(if i % 7 == 0 { 3 } else { usize::MAX }))
            .collect();
        let _subs: Vec<Subscription> = sinks
            .iter()
            .map(|sink| {
                local
                    .subscribe(ClientParams::default(), sink.clone())
                    .unwrap()
            })
            .collect();
        for rv in 2..2 + events {
            let pod = format!(
                r#"{{"kind":"Pod","apiVersion":"v1","metadata":{{"name":"p{}","namespace":"d","resourceVersion":"{rv}"}}}}"#,
                rv % 5
            );
            local
                .feed()
                .event(WatchEvent::synthesize(EventType::Modified, pod.as_bytes()).unwrap());
        }
        sinks
    }

    /// The threads that offered each version, over all sinks.
    fn threads_by_version(sinks: &[Arc<Sink>]) -> HashMap<String, HashSet<ThreadId>> {
        let mut by_version: HashMap<String, HashSet<ThreadId>> = HashMap::new();
        for sink in sinks {
            for (version, thread) in sink.threads.lock().iter() {
                by_version
                    .entry(version.clone())
                    .or_default()
                    .insert(*thread);
            }
        }
        by_version
    }

    fn versions(from: u64, count: u64) -> Vec<String> {
        (from..from + count).map(|rv| rv.to_string()).collect()
    }

    #[test]
    fn a_batch_spread_over_threads_reaches_every_subscriber_in_order() {
        let fan_out = FanOut {
            threads: 4,
            per_thread: 8,
        };
        let sinks = run(fan_out, 64, 20);
        for (i, sink) in sinks.iter().enumerate() {
            if i % 7 == 0 {
                assert_eq!(*sink.versions.lock(), versions(2, 3), "subscriber {i}");
                assert_eq!(
                    *sink.ended.lock(),
                    vec![EndReason::SlowConsumer],
                    "subscriber {i}, cut once when it refused, and offered nothing after"
                );
            } else {
                assert_eq!(*sink.versions.lock(), versions(2, 20), "subscriber {i}");
                assert!(sink.ended.lock().is_empty(), "subscriber {i}");
            }
        }
        let by_version = threads_by_version(&sinks);
        assert_eq!(by_version.len(), 20);
        for (version, threads) in by_version {
            assert_eq!(
                threads.len(),
                4,
                "version {version}: 64 (later 54) subscribers, 8 a thread, at most 4 threads"
            );
            assert!(threads.contains(&std::thread::current().id()));
        }
    }

    #[test]
    fn a_watch_too_small_to_split_is_served_on_the_feeding_thread() {
        let fan_out = FanOut {
            threads: 4,
            per_thread: 100,
        };
        let sinks = run(fan_out, 150, 5);
        let by_version = threads_by_version(&sinks);
        assert_eq!(by_version.len(), 5);
        for threads in by_version.values() {
            assert_eq!(*threads, HashSet::from([std::thread::current().id()]));
        }
        assert!(
            sinks[1..7]
                .iter()
                .all(|s| *s.versions.lock() == versions(2, 5))
        );
    }

    #[test]
    fn shards_follow_the_runtime_unless_set() {
        let fan_out = FanOut {
            threads: 0,
            per_thread: 10,
        };
        assert_eq!(fan_out.shards(1_000), 1, "no runtime here: one thread");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(3)
            .build()
            .unwrap();
        let _entered = runtime.enter();
        assert_eq!(fan_out.shards(1_000), 3);
        assert_eq!(fan_out.shards(25), 2, "at least 10 subscribers a thread");
        assert_eq!(fan_out.shards(9), 1);
        let set = FanOut {
            threads: 2,
            ..fan_out
        };
        assert_eq!(set.shards(1_000), 2);
    }
}
