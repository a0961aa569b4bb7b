//! Prometheus metrics for the simulator, readable both over `GET /metrics`
//! and in-process, so tests and benchmarks can assert on server-side
//! behaviour (e.g. that a client really closed its watch).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The `resource` label: a plural resource name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabel {
    resource: String,
}

fn label(resource: &str) -> ResourceLabel {
    ResourceLabel {
        resource: resource.to_string(),
    }
}

/// Counters and gauges per resource plural.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    active_watches: Family<ResourceLabel, Gauge>,
    watch_requests: Family<ResourceLabel, Counter>,
    list_requests: Family<ResourceLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers the metric families.
    pub fn new() -> Self {
        let active_watches = Family::<ResourceLabel, Gauge>::default();
        let watch_requests = Family::<ResourceLabel, Counter>::default();
        let list_requests = Family::<ResourceLabel, Counter>::default();
        let mut registry = Registry::default();
        registry.register(
            "sim_active_watches",
            "Open watch streams per resource",
            active_watches.clone(),
        );
        registry.register(
            "sim_watch_requests",
            "Watch requests received per resource",
            watch_requests.clone(),
        );
        registry.register(
            "sim_list_requests",
            "LIST requests received per resource",
            list_requests.clone(),
        );
        Metrics {
            registry,
            active_watches,
            watch_requests,
            list_requests,
        }
    }

    /// Counts a watch request (before any fault injection or validation).
    pub fn watch_requested(&self, resource: &str) {
        self.watch_requests.get_or_create(&label(resource)).inc();
    }

    /// Counts a LIST request.
    pub fn list_requested(&self, resource: &str) {
        self.list_requests.get_or_create(&label(resource)).inc();
    }

    /// Marks a watch stream open; the returned guard marks it closed when
    /// dropped, whatever ends the stream.
    pub fn watch_opened(&self, resource: &str) -> ActiveWatchGuard {
        let gauge = self.active_watches.get_or_create(&label(resource)).clone();
        gauge.inc();
        ActiveWatchGuard { gauge }
    }

    /// Open watch streams for a resource.
    pub fn active_watches(&self, resource: &str) -> i64 {
        self.active_watches.get_or_create(&label(resource)).get()
    }

    /// Open watch streams over all resources.
    pub fn total_active_watches(&self) -> i64 {
        crate::sim::resources::RESOURCES
            .iter()
            .map(|def| self.active_watches(def.plural))
            .sum()
    }

    /// Watch requests received for a resource.
    pub fn watch_requests(&self, resource: &str) -> u64 {
        self.watch_requests.get_or_create(&label(resource)).get()
    }

    /// LIST requests received for a resource.
    pub fn list_requests(&self, resource: &str) -> u64 {
        self.list_requests.get_or_create(&label(resource)).get()
    }

    /// The Prometheus text exposition of all metrics.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Decrements `sim_active_watches` when the watch stream is dropped.
#[derive(Debug)]
pub struct ActiveWatchGuard {
    gauge: Gauge,
}

impl Drop for ActiveWatchGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}
