//! The console dialect's asynchronous work, run off the connection task:
//! SubjectAccessReviews, `get_workspace_status` from the hub's caches, pod
//! log streams and `metrics.k8s.io` polling. Each writes its answer straight
//! into the connection's outbound queue.

use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams};
use serde_json::{Value, json};

use super::events as derive;
use crate::auth::recheck::Access;
use crate::auth::review::{ReviewError, Reviewer, User};
use crate::cluster::Cluster;
use crate::dialect::{WATCH_LIST, timestamp};
use crate::hub::{Hub, Identity, SubscribeRequest};
use crate::ws::outbound::{Frame, Outbound};

/// How long `get_workspace_status` waits for a store to sync.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(15);

/// Interval of `monitoring.metrics_update`.
pub const METRICS_EVERY: Duration = Duration::from_secs(15);

/// A refusal in the seed's error shape.
#[derive(Clone, Debug)]
pub struct Refusal {
    /// The seed's error code.
    pub code: &'static str,
    /// A human-readable message.
    pub message: String,
    /// Structured details.
    pub details: Value,
}

impl Refusal {
    /// A refusal with empty details.
    pub fn new(code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            details: json!({}),
        }
    }
}

/// A server message `{type, id, timestamp, data}`.
pub fn envelope(kind: &str, id: &Value, data: Value) -> Frame {
    Frame::text(json!({"type": kind, "id": id, "timestamp": timestamp(), "data": data}).to_string())
}

/// The seed's error message, answering the request `id`.
pub fn error_frame(id: &Value, refusal: &Refusal) -> Frame {
    Frame::text(
        json!({
            "type": "error",
            "id": id,
            "timestamp": timestamp(),
            "error": {"code": refusal.code, "message": refusal.message, "details": refusal.details},
        })
        .to_string(),
    )
}

/// Runs every check for `user`; the first denial becomes `PERMISSION_DENIED`.
pub async fn authorise(
    reviewer: &Reviewer,
    cluster: &Cluster,
    user: &User,
    checks: &[Access],
    fresh: bool,
) -> Result<(), Refusal> {
    for check in checks {
        reviewer
            .check_user(
                cluster,
                user,
                check.verb,
                &check.resource,
                check.subresource,
                fresh,
            )
            .await
            .map_err(|e| match e {
                ReviewError::Unavailable { .. } => {
                    Refusal::new("WORKSPACE_UNAVAILABLE", e.to_string())
                }
                e => Refusal::new("PERMISSION_DENIED", e.to_string()),
            })?;
    }
    Ok(())
}

/// The current objects of a collection, from the store of the hub's
/// shared watch (a cache hit when any console or dashboard already watches
/// it; otherwise the watch starts, and lingers after the read).
pub async fn snapshot(hub: &Hub, cluster: &str, path: &str) -> Result<Vec<Value>, Refusal> {
    let store = hub
        .store(SubscribeRequest {
            cluster,
            path,
            query: WATCH_LIST,
            identity: &Identity::Proxy,
        })
        .map_err(|e| Refusal::new("RESOURCE_NOT_FOUND", e.to_string()))?;
    let unavailable = || {
        Refusal::new(
            "WORKSPACE_UNAVAILABLE",
            format!("cannot list {path} on {cluster:?}"),
        )
    };
    tokio::time::timeout(SNAPSHOT_WAIT, store.wait_until_synced())
        .await
        .map_err(|_| unavailable())?
        .map_err(|_| unavailable())?;
    let snapshot = store.snapshot().ok_or_else(unavailable)?;
    Ok(snapshot
        .objects
        .iter()
        .filter_map(|event| serde_json::from_slice(event.object()).ok())
        .collect())
}

/// The `workspace_status` data: reachability, node readiness and pod phases.
pub async fn workspace_status(hub: &Hub, cluster: &Cluster) -> Result<Value, Refusal> {
    let nodes = snapshot(hub, cluster.id(), "/api/v1/nodes").await?;
    let pods = snapshot(hub, cluster.id(), "/api/v1/pods").await?;
    let ready = nodes
        .iter()
        .filter(|n| kubemux_vocab::object::node_is_ready(n))
        .count();
    let phase = |p: &str| {
        pods.iter()
            .filter(|x| x["status"]["phase"].as_str().unwrap_or("Pending") == p)
            .count()
    };
    let reachable = cluster.health().reachable != Some(false);
    let status = if reachable { "active" } else { "unreachable" };
    let health = match (reachable, ready == nodes.len()) {
        (false, _) => "unhealthy",
        (true, false) => "degraded",
        (true, true) => "healthy",
    };
    Ok(json!({
        "workspace_id": cluster.id(),
        "status": status,
        "health": health,
        "nodes": {"ready": ready, "total": nodes.len()},
        "pods": {
            "running": phase("Running"),
            "pending": phase("Pending"),
            "failed": phase("Failed"),
            "succeeded": phase("Succeeded"),
            "total": pods.len(),
        },
    }))
}

/// What a `stream_logs` command asked for.
#[derive(Clone, Debug)]
pub struct LogRequest {
    /// The stream id (the command's id).
    pub stream_id: Value,
    /// Namespace.
    pub namespace: String,
    /// Pod.
    pub pod: String,
    /// Container, if named.
    pub container: Option<String>,
    /// Keep streaming.
    pub follow: bool,
    /// Only the last lines.
    pub tail_lines: Option<i64>,
}

/// Streams one pod log into `log_entry` frames until it ends, the client
/// stops it (the task is aborted, which drops the upstream request) or the
/// connection's queue overflows.
pub async fn stream_logs(
    cluster: Arc<Cluster>,
    request: LogRequest,
    outbound: Arc<Outbound>,
) -> Result<(), Refusal> {
    let api: Api<Pod> = Api::namespaced(cluster.streaming_client(), &request.namespace);
    let params = LogParams {
        container: request.container.clone(),
        follow: request.follow,
        tail_lines: request.tail_lines,
        ..LogParams::default()
    };
    let reader = api
        .log_stream(&request.pod, &params)
        .await
        .map_err(|e| match e {
            kube::Error::Api(status) if status.code == 404 => Refusal::new(
                "RESOURCE_NOT_FOUND",
                format!(
                    "pod {:?} in namespace {:?}: {}",
                    request.pod, request.namespace, status.message
                ),
            ),
            kube::Error::Api(status) if status.code == 403 => {
                Refusal::new("PERMISSION_DENIED", status.message.clone())
            }
            e => Refusal::new("LOG_STREAM_FAILED", e.to_string()),
        })?;
    let mut lines = reader.lines();
    while let Some(line) = lines.next().await {
        let line = line.map_err(|e| Refusal::new("LOG_STREAM_FAILED", e.to_string()))?;
        let frame = Frame::text(
            json!({
                "type": "log_entry",
                "id": request.stream_id,
                "timestamp": timestamp(),
                "data": {
                    "stream_id": request.stream_id,
                    "timestamp": line_timestamp(&line).unwrap_or_else(timestamp),
                    "level": derive::log_level(&line),
                    "message": line,
                    "namespace": request.namespace,
                    "pod": request.pod,
                    "container": request.container,
                },
            })
            .to_string(),
        );
        if outbound.push(frame).is_err() {
            return Err(Refusal::new(
                "LOG_STREAM_FAILED",
                "the client did not read the log stream fast enough",
            ));
        }
    }
    Ok(())
}

/// An RFC 3339 timestamp opening a log line, if there is one.
fn line_timestamp(line: &str) -> Option<String> {
    let first = line.split_whitespace().next()?;
    humantime::parse_rfc3339_weak(first.trim_end_matches('Z'))
        .ok()
        .map(|_| first.to_string())
}

/// Whether the cluster serves `metrics.k8s.io/v1beta1`.
pub async fn metrics_available(cluster: &Cluster) -> bool {
    fetch(cluster, "/apis/metrics.k8s.io/v1beta1").await.is_ok()
}

async fn fetch(cluster: &Cluster, path: &str) -> Result<Value, String> {
    let request = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let text = cluster
        .client()
        .request_text(request)
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

/// The seed's `average_5m` window.
const FIVE_MINUTES: Duration = Duration::from_secs(300);
/// The seed's `average_1h` window, which bounds what [`Samples`] keeps.
const ONE_HOUR: Duration = Duration::from_secs(3600);

/// A bounded ring of the last hour of [`METRICS_EVERY`] samples (CPU cores,
/// memory Mi): `metrics.k8s.io` reports only the instant, so the seed's
/// averages are kubemux's own, over what it sampled (240 pairs at most).
#[derive(Debug, Default)]
struct Samples {
    ring: std::collections::VecDeque<(f64, f64)>,
}

impl Samples {
    const CAPACITY: usize = (ONE_HOUR.as_secs() / METRICS_EVERY.as_secs()) as usize;

    fn push(&mut self, sample: (f64, f64)) {
        if self.ring.len() == Self::CAPACITY {
            self.ring.pop_front();
        }
        self.ring.push_back(sample);
    }

    /// The mean of the samples within the last `window` (fewer while the
    /// history is shorter), and how many that was.
    fn average(&self, window: Duration) -> ((f64, f64), usize) {
        let n = ((window.as_secs() / METRICS_EVERY.as_secs()) as usize).min(self.ring.len());
        if n == 0 {
            return ((0.0, 0.0), 0);
        }
        let sum = self
            .ring
            .iter()
            .rev()
            .take(n)
            .fold((0.0, 0.0), |a, s| (a.0 + s.0, a.1 + s.1));
        ((sum.0 / n as f64, sum.1 / n as f64), n)
    }
}

fn cores(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Sends `monitoring.metrics_update` (node usage summed from
/// `metrics.k8s.io`, with averages over the subscription's own samples)
/// now and every [`METRICS_EVERY`].
pub async fn poll_metrics(cluster: Arc<Cluster>, subscription: String, outbound: Arc<Outbound>) {
    let mut tick = tokio::time::interval(METRICS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut samples = Samples::default();
    loop {
        tick.tick().await;
        let id = Value::String(subscription.clone());
        let frame = match fetch(&cluster, "/apis/metrics.k8s.io/v1beta1/nodes").await {
            Ok(list) => {
                let items = list["items"].as_array().cloned().unwrap_or_default();
                let sum = |field: &str| {
                    items
                        .iter()
                        .filter_map(|n| {
                            n["usage"][field].as_str().and_then(kubemux_vocab::quantity)
                        })
                        .sum::<f64>()
                };
                let instant = (sum("cpu"), sum("memory") / 1048576.0);
                samples.push(instant);
                let (five, in_five) = samples.average(FIVE_MINUTES);
                let (hour, in_hour) = samples.average(ONE_HOUR);
                envelope(
                    "monitoring.metrics_update",
                    &id,
                    json!({
                        "subscription_id": subscription,
                        "workspace_id": cluster.id(),
                        "metrics": {
                            "cpu": {"instant": cores(instant.0), "average_5m": cores(five.0),
                                    "average_1h": cores(hour.0), "unit": "cores"},
                            "memory": {"instant": instant.1.round(), "average_5m": five.1.round(),
                                       "average_1h": hour.1.round(), "unit": "Mi"},
                            "nodes": items.len(),
                            // How many 15 s samples each average covers: fewer
                            // than 20 and 240 while the subscription is young.
                            "samples": {"5m": in_five, "1h": in_hour},
                        },
                    }),
                )
            }
            Err(message) => error_frame(
                &id,
                &Refusal::new("METRICS_UNAVAILABLE", format!("metrics.k8s.io: {message}")),
            ),
        };
        outbound.push_forced(frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_cover_their_window_of_the_bounded_ring() {
        let mut samples = Samples::default();
        assert_eq!(samples.average(FIVE_MINUTES), ((0.0, 0.0), 0));
        samples.push((1.0, 100.0));
        samples.push((3.0, 300.0));
        assert_eq!(samples.average(FIVE_MINUTES), ((2.0, 200.0), 2));
        // 300 samples (75 min): the ring keeps the last hour (240), the
        // 5-minute average the last 20.
        for i in 0..300 {
            samples.push((f64::from(i), 0.0));
        }
        assert_eq!(samples.ring.len(), 240);
        let ((cpu5, _), n5) = samples.average(FIVE_MINUTES);
        assert_eq!((cpu5, n5), ((280..300).sum::<i32>() as f64 / 20.0, 20));
        let ((cpu1, _), n1) = samples.average(ONE_HOUR);
        assert_eq!((cpu1, n1), ((60..300).sum::<i32>() as f64 / 240.0, 240));
    }
}
