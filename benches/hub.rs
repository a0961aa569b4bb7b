//! Hub benchmarks: fan-out of one event to many subscribers, and replay of
//! the history to a resuming subscriber.
//!
//! Subscribers are Headlamp-style sinks that render their frame from shared
//! parts into a per-connection [`Outbound`] queue (ten subscriptions per
//! connection), as real connections do. Queues are drained outside the
//! measured time; the measured time is the hub's side: cache update, fan-out
//! loop, frame assembly and queue push.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kubemux::hub::{
    ClientParams, EndReason, HubConfig, LocalWatch, Overflow, Subscriber, Subscription, key,
};
use kubemux::metrics::Metrics;
use kubemux::upstream::Listing;
use kubemux::upstream::event::{EventType, WatchEvent};
use kubemux::ws::outbound::{Frame, Outbound, QueueLimits};

/// Subscriptions per connection queue.
const PER_CONNECTION: usize = 10;

/// Renders Headlamp `DATA` frames from shared parts, like the real sink.
struct Sink {
    outbound: Arc<Outbound>,
    head: Bytes,
}

impl Subscriber for Sink {
    fn event(&self, event: &Arc<WatchEvent>) -> Result<(), Overflow> {
        self.outbound.push(Frame::from_parts([
            self.head.clone(),
            Bytes::from_static(b",\"data\":"),
            event.json_string().clone(),
            Bytes::from_static(b",\"type\":\"DATA\"}"),
        ]))
    }
    fn warning(&self, _: &str) {}
    fn end(&self, _: EndReason) {}
    fn affinity(&self) -> usize {
        Arc::as_ptr(&self.outbound) as usize
    }
}

/// A pod of about `size` bytes of JSON at resourceVersion `rv`.
fn pod(name: &str, rv: u64, size: usize) -> Vec<u8> {
    let mut object = serde_json::json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": rv.to_string(),
                     "labels": {"app": "web"}, "annotations": {}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "web", "image": "nginx:1.27"}]},
        "status": {"phase": "Running"}
    });
    let bare = serde_json::to_vec(&object).unwrap().len();
    object["metadata"]["annotations"]["pad"] = "x".repeat(size.saturating_sub(bare + 10)).into();
    serde_json::to_vec(&object).unwrap()
}

struct Fixture {
    watch: LocalWatch,
    queues: Vec<Arc<Outbound>>,
    _subs: Vec<Subscription>,
    rv: u64,
    runtime: tokio::runtime::Runtime,
}

impl Fixture {
    fn new(subscribers: usize, history: usize, threads: usize) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let metrics = Arc::new(Metrics::new());
        let (wkey, _, _) = key::normalize("bench", "/api/v1/pods", "").unwrap();
        let mut config = HubConfig::default();
        config.history.max_events = history;
        config.fan_out.threads = threads;
        let watch = LocalWatch::new(wkey, config, metrics.clone());
        let _ = watch.feed().listed(Listing {
            item_kind: "Pod".into(),
            api_version: "v1".into(),
            resource_version: "1".into(),
            objects: vec![],
        });
        let connections = subscribers.div_ceil(PER_CONNECTION).max(1);
        let queues: Vec<Arc<Outbound>> = (0..connections)
            .map(|_| Arc::new(Outbound::new(QueueLimits::default(), metrics.clone())))
            .collect();
        let subs = (0..subscribers)
            .map(|i| {
                let sink = Arc::new(Sink {
                    outbound: queues[i / PER_CONNECTION].clone(),
                    head: Bytes::from(format!(
                        r#"{{"clusterId":"bench","path":"/api/v1/pods","query":"watch=1&s={i}""#
                    )),
                });
                watch.subscribe(ClientParams::default(), sink).unwrap()
            })
            .collect();
        Fixture {
            watch,
            queues,
            _subs: subs,
            rv: 1,
            runtime,
        }
    }

    fn next_event(&mut self, size: usize) -> WatchEvent {
        self.rv += 1;
        let name = format!("pod-{}", self.rv % 100);
        WatchEvent::synthesize(EventType::Modified, &pod(&name, self.rv, size)).unwrap()
    }

    fn drain(&self) {
        let mut batch = Vec::new();
        for q in &self.queues {
            if q.queued_bytes() > 0 {
                self.runtime.block_on(q.next_batch(&mut batch));
                batch.clear();
            }
        }
    }
}

fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("fan_out");
    // One thread, then the batch spread over two (`--fan-out-threads 2`;
    // by default a watch spreads from 16,384 subscribers up).
    for (subscribers, threads) in [
        (1usize, 1),
        (100, 1),
        (10_000, 1),
        (10_000, 2),
        (30_000, 1),
        (30_000, 2),
        (100_000, 1),
        (100_000, 2),
    ] {
        let mut fx = Fixture::new(subscribers, 1000, threads);
        let name = match threads {
            1 => "1KiB_event".to_string(),
            n => format!("1KiB_event_{n}_threads"),
        };
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_function(BenchmarkId::new(name, subscribers), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let event = fx.next_event(1024);
                    let start = Instant::now();
                    fx.watch.feed().event(black_box(event));
                    total += start.elapsed();
                    fx.drain();
                }
                total
            })
        });
    }
    group.finish();
}

fn replay(c: &mut Criterion) {
    let mut group = c.benchmark_group("history_replay");
    let events = 1000u64;
    // One live subscriber keeps the watch from stopping between resumes.
    let mut fx = Fixture::new(1, 10_000, 1);
    let from = fx.rv;
    for _ in 0..events {
        let event = fx.next_event(1024);
        fx.watch.feed().event(event);
    }
    fx.drain();
    let metrics = Arc::new(Metrics::new());
    group.throughput(Throughput::Elements(events));
    group.bench_function("1000_events", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let outbound = Arc::new(Outbound::new(QueueLimits::default(), metrics.clone()));
                let sink = Arc::new(Sink {
                    outbound: outbound.clone(),
                    head: Bytes::from_static(
                        br#"{"clusterId":"bench","path":"/api/v1/pods","query":"watch=1""#,
                    ),
                });
                let params = ClientParams {
                    resource_version: Some(from.to_string()),
                    ..ClientParams::default()
                };
                let start = Instant::now();
                let sub = fx.watch.subscribe(params, sink).unwrap();
                total += start.elapsed();
                assert!(outbound.queued_bytes() > 0);
                drop(sub);
            }
            total
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = fan_out, replay
}
criterion_main!(benches);
