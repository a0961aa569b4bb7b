//! Prometheus metrics for the simulator, readable both over `GET /metrics`
//! and in-process, so tests and benchmarks can assert on server-side
//! behaviour (e.g. that a client really closed its watch).

use std::collections::HashMap;

use parking_lot::Mutex;
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

/// Labels of `sim_requests_total`: who made which request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabel {
    user: String,
    verb: String,
    resource: String,
}

/// Labels of `sim_user_active_watches`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UserResourceLabel {
    user: String,
    resource: String,
}

fn user_label(user: &str, resource: &str) -> UserResourceLabel {
    UserResourceLabel {
        user: user.to_string(),
        resource: resource.to_string(),
    }
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
    requests: Family<RequestLabel, Counter>,
    user_active_watches: Family<UserResourceLabel, Gauge>,
    review_requests: Family<ResourceLabel, Counter>,
    log_streams: Gauge,
    /// Requests per user over all verbs and resources (the family cannot be
    /// summed in-process).
    requests_per_user: Mutex<HashMap<String, u64>>,
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
        let requests = Family::<RequestLabel, Counter>::default();
        let user_active_watches = Family::<UserResourceLabel, Gauge>::default();
        let review_requests = Family::<ResourceLabel, Counter>::default();
        registry.register(
            "sim_requests",
            "Resource requests per authenticated user, verb and resource",
            requests.clone(),
        );
        registry.register(
            "sim_user_active_watches",
            "Open watch streams per user and resource",
            user_active_watches.clone(),
        );
        registry.register(
            "sim_review_requests",
            "TokenReview and SubjectAccessReview requests received",
            review_requests.clone(),
        );
        let log_streams = Gauge::default();
        registry.register(
            "sim_log_streams",
            "Open pod log streams",
            log_streams.clone(),
        );
        Metrics {
            log_streams,
            registry,
            active_watches,
            watch_requests,
            list_requests,
            requests,
            user_active_watches,
            review_requests,
            requests_per_user: Mutex::new(HashMap::new()),
        }
    }

    /// The gauge of open pod log streams (shared with [`crate::logs`]).
    pub fn log_streams(&self) -> Gauge {
        self.log_streams.clone()
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
        ActiveWatchGuard {
            gauge,
            user_gauge: None,
        }
    }

    /// [`Metrics::watch_opened`], also counted under the watching user.
    pub fn watch_opened_by(&self, resource: &str, user: &str) -> ActiveWatchGuard {
        let mut guard = self.watch_opened(resource);
        let gauge = self
            .user_active_watches
            .get_or_create(&user_label(user, resource))
            .clone();
        gauge.inc();
        guard.user_gauge = Some(gauge);
        guard
    }

    /// Counts an authenticated resource request (allowed or not).
    pub fn user_request(&self, user: &str, verb: &str, resource: &str) {
        self.requests
            .get_or_create(&RequestLabel {
                user: user.to_string(),
                verb: verb.to_string(),
                resource: resource.to_string(),
            })
            .inc();
        *self
            .requests_per_user
            .lock()
            .entry(user.to_string())
            .or_default() += 1;
    }

    /// Authenticated resource requests made by `user`.
    pub fn requests_by(&self, user: &str) -> u64 {
        self.requests_per_user
            .lock()
            .get(user)
            .copied()
            .unwrap_or(0)
    }

    /// Requests by `user` with `verb` on `resource`.
    pub fn requests_by_verb(&self, user: &str, verb: &str, resource: &str) -> u64 {
        self.requests
            .get_or_create(&RequestLabel {
                user: user.to_string(),
                verb: verb.to_string(),
                resource: resource.to_string(),
            })
            .get()
    }

    /// Open watch streams of `user` on `resource`.
    pub fn active_watches_by(&self, user: &str, resource: &str) -> i64 {
        self.user_active_watches
            .get_or_create(&user_label(user, resource))
            .get()
    }

    /// Counts a TokenReview or SubjectAccessReview request (by plural).
    pub fn review_requested(&self, resource: &str) {
        self.review_requests.get_or_create(&label(resource)).inc();
    }

    /// Review requests received for a review plural.
    pub fn review_requests(&self, resource: &str) -> u64 {
        self.review_requests.get_or_create(&label(resource)).get()
    }

    /// Open watch streams for a resource.
    pub fn active_watches(&self, resource: &str) -> i64 {
        self.active_watches.get_or_create(&label(resource)).get()
    }

    /// Open watch streams over all resources.
    pub fn total_active_watches(&self) -> i64 {
        crate::resources::RESOURCES
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
    user_gauge: Option<Gauge>,
}

impl Drop for ActiveWatchGuard {
    fn drop(&mut self) {
        self.gauge.dec();
        if let Some(gauge) = &self.user_gauge {
            gauge.dec();
        }
    }
}
