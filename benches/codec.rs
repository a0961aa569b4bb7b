//! Per-event costs outside the hub: key normalisation, parsing a watch line,
//! rendering Headlamp frames (encode once and share, versus serialising
//! every subscriber's frame on its own; deflate the body once, versus every
//! subscriber's frame), and projecting dashboard events
//! (once per event, versus once per connection).

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kubemux::dialect::dashboard::view as dashboard_view;
use kubemux::hub::key;
use kubemux::upstream::event::{EventType, WatchEvent};
use kubemux::ws::deflate;
use kubemux::ws::outbound::Frame;
use serde::Serialize;

/// A pod of about `size` bytes of JSON.
fn object(size: usize) -> Vec<u8> {
    let mut object = serde_json::json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": "web-7d4b9c-x2x9z", "namespace": "default", "resourceVersion": "123456",
                     "uid": "0f4e3c1a-2b7d-4e8f-9a6b-1c2d3e4f5a6b",
                     "labels": {"app": "web", "pod-template-hash": "7d4b9c"},
                     "annotations": {"note": "line one\nline \"two\""}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "web", "image": "nginx:1.27",
                 "ports": [{"containerPort": 80, "protocol": "TCP"}]}]},
        "status": {"phase": "Running", "podIP": "10.0.0.7"}
    });
    let bare = serde_json::to_vec(&object).unwrap().len();
    object["metadata"]["annotations"]["pad"] = "x".repeat(size.saturating_sub(bare + 10)).into();
    serde_json::to_vec(&object).unwrap()
}

/// A watch line (`{"type":"MODIFIED","object":…}\n`) whose object is about `size` bytes.
fn line(size: usize) -> Bytes {
    let mut out = br#"{"type":"MODIFIED","object":"#.to_vec();
    out.extend_from_slice(&object(size));
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_event");
    for (name, size) in [("1KiB", 1024usize), ("50KiB", 50 * 1024)] {
        let bytes = line(size);
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| WatchEvent::parse_line(black_box(bytes.clone())).unwrap())
        });
    }
    group.finish();
}

fn normalize(c: &mut Criterion) {
    let mut group = c.benchmark_group("key_normalize");
    let cases = [
        ("plain", "/api/v1/pods", "watch=1"),
        (
            "selectors",
            "/api/v1/namespaces/default/pods",
            "watch=1&resourceVersion=123456&allowWatchBookmarks=true&labelSelector=tier%20in%20(b,a),app==web&fieldSelector=spec.nodeName%3Dnode-1,status.phase!=Failed",
        ),
    ];
    for (name, path, query) in cases {
        group.bench_function(name, |b| {
            b.iter(|| {
                key::normalize(black_box("bench"), black_box(path), black_box(query)).unwrap()
            })
        });
    }
    group.finish();
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HeadlampFrame<'a> {
    cluster_id: &'a str,
    path: &'a str,
    query: &'a str,
    data: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
}

/// One event to `n` subscribers of the Headlamp dialect, up to what the
/// writer hands to the socket.
fn frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("headlamp_frames");
    let subscribers = 100usize;
    let heads: Vec<(String, Bytes)> = (0..subscribers)
        .map(|i| {
            let query = format!("watch=1&labelSelector=app%3Dweb{i}");
            let head = format!(r#"{{"clusterId":"bench","path":"/api/v1/pods","query":"{query}""#);
            (query, Bytes::from(head))
        })
        .collect();
    for (name, size) in [("1KiB", 1024usize), ("50KiB", 50 * 1024)] {
        let bytes = line(size);
        let raw = object(size);
        group.throughput(Throughput::Elements(subscribers as u64));
        // What kubemux does: escape the event once, then per subscriber
        // assemble shared parts, which the writer sends as they are.
        group.bench_function(BenchmarkId::new("encode_once", name), |b| {
            b.iter_batched(
                || WatchEvent::synthesize(EventType::Modified, &raw).unwrap(),
                |event| {
                    for (_, head) in &heads {
                        let frame = Frame::from_parts([
                            head.clone(),
                            Bytes::from_static(b",\"data\":"),
                            event.json_string().clone(),
                            Bytes::from_static(b",\"type\":\"DATA\"}"),
                        ]);
                        black_box(frame);
                    }
                },
                BatchSize::SmallInput,
            )
        });
        // Compressed fan-out as kubemux does it: the body deflated once
        // per event, each subscription's prefix block cached (made here in
        // the setup), the tail block shared.
        let prefixes: Vec<Bytes> = heads
            .iter()
            .map(|(_, head)| Bytes::from(deflate::block(&[&head[..], b",\"data\":"].concat())))
            .collect();
        let tail = Bytes::from(deflate::compress(b",\"type\":\"DATA\"}"));
        group.bench_function(BenchmarkId::new("deflate_once", name), |b| {
            b.iter_batched(
                || WatchEvent::synthesize(EventType::Modified, &raw).unwrap(),
                |event| {
                    let body = Bytes::from(deflate::shared_block(event.json_string()));
                    for prefix in &prefixes {
                        black_box([prefix.clone(), body.clone(), tail.clone()]);
                    }
                },
                BatchSize::SmallInput,
            )
        });
        // Compressing every subscriber's frame on its own.
        group.bench_function(BenchmarkId::new("deflate_per_subscriber", name), |b| {
            b.iter_batched(
                || WatchEvent::synthesize(EventType::Modified, &raw).unwrap(),
                |event| {
                    for (_, head) in &heads {
                        let frame = Frame::from_parts([
                            head.clone(),
                            Bytes::from_static(b",\"data\":"),
                            event.json_string().clone(),
                            Bytes::from_static(b",\"type\":\"DATA\"}"),
                        ]);
                        black_box(deflate::compress(&frame.to_vec()));
                    }
                },
                BatchSize::SmallInput,
            )
        });
        // The naive way: serialise a whole frame per subscriber.
        group.bench_function(BenchmarkId::new("per_subscriber", name), |b| {
            let text = std::str::from_utf8(&bytes[..bytes.len() - 1])
                .unwrap()
                .to_string();
            b.iter(|| {
                for (query, _) in &heads {
                    let frame = HeadlampFrame {
                        cluster_id: "bench",
                        path: "/api/v1/pods",
                        query,
                        data: &text,
                        kind: "DATA",
                    };
                    black_box(serde_json::to_string(&frame).unwrap());
                }
            })
        });
    }
    group.finish();
}

/// The dashboard dialect's part of fanning one pod event out to 100
/// dashboards: project the pod (parse, derive kubectl's STATUS) and
/// serialise it, once per event through `WatchEvent::derived` as kubemux
/// does, versus once per connection.
fn dashboard_projection(c: &mut Criterion) {
    let mut group = c.benchmark_group("dashboard_pod_event");
    let dashboards = 100usize;
    let raw = object(2048);
    let message = |data: &str| {
        format!(
            r#"{{"type":"pod_event","action":"MODIFIED","data":{data},"timestamp":"2026-11-25T00:00:00Z"}}"#
        )
    };
    let project = |event: &WatchEvent| {
        let view = dashboard_view::pod(event.object()).unwrap();
        let data = serde_json::to_string(&view).unwrap();
        (std::sync::Arc::new(view), data)
    };
    group.throughput(Throughput::Elements(dashboards as u64));
    group.bench_function("project_once", |b| {
        b.iter_batched(
            || WatchEvent::synthesize(EventType::Modified, &raw).unwrap(),
            |event| {
                for _ in 0..dashboards {
                    let projected = event.derived(project);
                    black_box((projected.0.clone(), message(&projected.1)));
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("per_connection", |b| {
        b.iter_batched(
            || WatchEvent::synthesize(EventType::Modified, &raw).unwrap(),
            |event| {
                for _ in 0..dashboards {
                    let projected = project(&event);
                    black_box((projected.0, message(&projected.1)));
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = parse, normalize, frames, dashboard_projection
}
criterion_main!(benches);
