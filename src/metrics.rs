//! Prometheus metrics of the proxy.
//!
//! Labels are bounded: cluster ids and fixed outcome names, never a path, a
//! query or a user.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Declares a label set of one field, for series split by one bounded name.
macro_rules! label {
    ($(#[$doc:meta])* $name:ident { $(#[$field_doc:meta])* $field:ident: $ty:ty }) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        pub struct $name {
            $(#[$field_doc])*
            pub $field: $ty,
        }
    };
}

label!(
    /// Label for per-cluster series.
    ClusterLabel {
        /// The cluster id.
        cluster: String
    }
);
label!(
    /// Label for outcome series.
    OutcomeLabel {
        /// A fixed outcome name.
        outcome: &'static str
    }
);
label!(
    /// Label for per-dialect series.
    DialectLabel {
        /// The dialect's name (`headlamp`, …).
        dialect: &'static str
    }
);
label!(
    /// Label for re-check reviews.
    KindLabel {
        /// `token` (TokenReview) or `access` (SubjectAccessReview).
        kind: &'static str
    }
);
label!(
    /// Label for refusals by an abuse limit.
    LimitLabel {
        /// The limit's name (see `ws::limits::limit`).
        limit: &'static str
    }
);

/// Label for auth decisions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabel {
    /// `token` (TokenReview) or `access` (SubjectAccessReview).
    pub kind: &'static str,
    /// `allowed`, `denied` or `cache_hit`.
    pub outcome: &'static str,
}

/// Label for REST requests on `/clusters/{cluster}/{path}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RestLabel {
    /// `list`, `watch` or `get` (anything else: an object, discovery).
    pub request: &'static str,
    /// `shared_watch` (a live shared watch answered, the cluster saw no
    /// request) or `cluster` (forwarded).
    pub served: &'static str,
}

/// Every metric kubemux exports.
pub struct Metrics {
    registry: Registry,
    /// Open client connections per dialect.
    pub connections: Family<DialectLabel, Gauge>,
    /// Client connections accepted per dialect.
    pub connections_opened: Family<DialectLabel, Counter>,
    /// Live subscriptions across all connections.
    pub subscribers: Gauge,
    /// Subscriptions started.
    pub subscriptions_started: Counter,
    /// Open shared (= upstream) watches per cluster.
    pub upstream_watches: Family<ClusterLabel, Gauge>,
    /// Upstream watch requests (first watch and re-watches) per cluster.
    pub upstream_watch_starts: Family<ClusterLabel, Counter>,
    /// Upstream LIST cycles (first list and relists) per cluster.
    pub upstream_lists: Family<ClusterLabel, Counter>,
    /// Upstream failures per cluster.
    pub upstream_failures: Family<ClusterLabel, Counter>,
    /// Upstream events received per cluster.
    pub events_in: Family<ClusterLabel, Counter>,
    /// How new subscriptions were served: snapshot, history, backfilled,
    /// waited, forwarded, invalid (a version the cluster would refuse) and
    /// expired (the cluster's own 410, relayed).
    pub resumes: Family<OutcomeLabel, Counter>,
    /// Side-stream watch requests (backfills and forwards) per cluster: the
    /// upstream cost of serving versions the cache cannot serve alone.
    pub backfill_requests: Family<ClusterLabel, Counter>,
    /// Events fetched by backfills (and kept in the history) per cluster.
    pub backfill_events: Family<ClusterLabel, Counter>,
    /// Subscriptions ended because their client could not keep up.
    pub slow_consumers: Counter,
    /// Frames taken from connection queues by their writers (counted per
    /// batch taken, not per frame queued, for the reason `queue_bytes`
    /// gives).
    pub frames_out: Counter,
    /// Frames not delivered: refused by a full queue, or still queued when a
    /// connection closed.
    pub frames_dropped: Counter,
    /// Bytes waiting in the outbound queues of connections that are behind
    /// (more than `min(queue_max_bytes / 8, 64 KiB)` queued): the backlog
    /// the memory budgets are about. A connection keeping up is not counted,
    /// so its pushes touch no counter shared with the others.
    pub queue_bytes: Gauge,
    /// Auth decisions (shared mode) by kind and outcome, cache hits included.
    pub auth_decisions: Family<AuthLabel, Counter>,
    /// Live subscriptions registered for periodic re-checks
    /// (`auth::recheck`); zero once their connections are gone.
    pub auth_rechecks: Gauge,
    /// Re-check ticks run.
    pub auth_recheck_ticks: Counter,
    /// Reviews made by re-check ticks, by kind: one per distinct question
    /// per tick, however many subscriptions share it.
    pub auth_recheck_reviews: Family<KindLabel, Counter>,
    /// Reviews (both kinds) the last re-check tick made.
    pub auth_recheck_last_reviews: Gauge,
    /// Connections, messages and frames refused by an abuse limit.
    pub limit_refusals: Family<LimitLabel, Counter>,
    /// REST GETs by request and by who answered them.
    pub rest_requests: Family<RestLabel, Counter>,
    /// Alive tokio tasks, read from the runtime at scrape time: a leaked
    /// connection or watch task shows up here before it shows up in memory.
    pub tasks: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kubemux");
        let m = Metrics {
            registry: Registry::default(),
            connections: Family::default(),
            connections_opened: Family::default(),
            subscribers: Gauge::default(),
            subscriptions_started: Counter::default(),
            upstream_watches: Family::default(),
            upstream_watch_starts: Family::default(),
            upstream_lists: Family::default(),
            upstream_failures: Family::default(),
            events_in: Family::default(),
            resumes: Family::default(),
            backfill_requests: Family::default(),
            backfill_events: Family::default(),
            slow_consumers: Counter::default(),
            frames_out: Counter::default(),
            frames_dropped: Counter::default(),
            queue_bytes: Gauge::default(),
            auth_decisions: Family::default(),
            auth_rechecks: Gauge::default(),
            auth_recheck_ticks: Counter::default(),
            auth_recheck_reviews: Family::default(),
            auth_recheck_last_reviews: Gauge::default(),
            limit_refusals: Family::default(),
            rest_requests: Family::default(),
            tasks: Gauge::default(),
        };
        registry.register(
            "connections",
            "Open client connections",
            m.connections.clone(),
        );
        registry.register(
            "connections_opened",
            "Client connections accepted",
            m.connections_opened.clone(),
        );
        registry.register("subscribers", "Live subscriptions", m.subscribers.clone());
        registry.register(
            "subscriptions",
            "Subscriptions started",
            m.subscriptions_started.clone(),
        );
        registry.register(
            "upstream_watches",
            "Open shared upstream watches",
            m.upstream_watches.clone(),
        );
        registry.register(
            "upstream_watch_requests",
            "Upstream watch requests, including silent re-watches",
            m.upstream_watch_starts.clone(),
        );
        registry.register(
            "upstream_lists",
            "Upstream LIST cycles, including relists after 410",
            m.upstream_lists.clone(),
        );
        registry.register(
            "upstream_failures",
            "Failed upstream requests",
            m.upstream_failures.clone(),
        );
        registry.register(
            "events_in",
            "Upstream watch events received",
            m.events_in.clone(),
        );
        registry.register(
            "resumes",
            "How subscriptions started: snapshot, history, backfilled, waited, forwarded, invalid, expired (the cluster's 410)",
            m.resumes.clone(),
        );
        registry.register(
            "backfill_requests",
            "Upstream watch requests made to serve versions older than a shared watch's history (backfills) or not comparable (forwards)",
            m.backfill_requests.clone(),
        );
        registry.register(
            "backfill_events",
            "Events fetched by backfills and spliced into the history",
            m.backfill_events.clone(),
        );
        registry.register(
            "slow_consumer_terminations",
            "Subscriptions ended because the client could not keep up",
            m.slow_consumers.clone(),
        );
        registry.register(
            "frames_out",
            "Frames taken from connection queues to be written to clients",
            m.frames_out.clone(),
        );
        registry.register(
            "frames_dropped",
            "Frames refused by a full queue or discarded with a closed connection",
            m.frames_dropped.clone(),
        );
        registry.register(
            "queue_bytes",
            "Bytes waiting in the outbound queues of connections that are behind (more than min(queue_max_bytes/8, 64 KiB) queued)",
            m.queue_bytes.clone(),
        );
        registry.register(
            "auth_decisions",
            "TokenReview and SubjectAccessReview outcomes, and answers served from the cache",
            m.auth_decisions.clone(),
        );
        registry.register(
            "auth_rechecks",
            "Live subscriptions registered for periodic re-checks",
            m.auth_rechecks.clone(),
        );
        registry.register(
            "auth_recheck_ticks",
            "Re-check ticks run",
            m.auth_recheck_ticks.clone(),
        );
        registry.register(
            "auth_recheck_reviews",
            "TokenReviews and SubjectAccessReviews made by re-check ticks, one per distinct question per tick",
            m.auth_recheck_reviews.clone(),
        );
        registry.register(
            "auth_recheck_last_reviews",
            "Reviews the last re-check tick made",
            m.auth_recheck_last_reviews.clone(),
        );
        registry.register(
            "limit_refusals",
            "Connections, messages and frames refused by an abuse limit, by limit",
            m.limit_refusals.clone(),
        );
        registry.register(
            "rest_requests",
            "REST GETs on /clusters/{cluster}/{path} by request (list, watch, get) and by who answered (shared_watch, cluster)",
            m.rest_requests.clone(),
        );
        registry.register(
            "tasks",
            "Alive tokio tasks of the runtime serving the scrape",
            m.tasks.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The per-cluster label value.
    pub fn cluster(cluster: &str) -> ClusterLabel {
        ClusterLabel {
            cluster: cluster.to_string(),
        }
    }

    /// The per-dialect label value.
    pub fn dialect(dialect: &'static str) -> DialectLabel {
        DialectLabel { dialect }
    }

    /// Counts one refusal by `limit`.
    pub fn refused(&self, limit: &'static str) {
        self.limit_refusals
            .get_or_create(&LimitLabel { limit })
            .inc();
    }

    /// Counts one REST GET: `request` answered by `served`.
    pub fn rest(&self, request: &'static str, served: &'static str) {
        self.rest_requests
            .get_or_create(&RestLabel { request, served })
            .inc();
    }

    /// Every metric in the OpenMetrics text format (what Prometheus asks for).
    pub fn encode(&self) -> String {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let alive = runtime.metrics().num_alive_tasks();
            self.tasks.set(i64::try_from(alive).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The content type of [`Metrics::encode`].
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of [`to_text_004`].
pub const TEXT_004: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Rewrites OpenMetrics text as the classic Prometheus text format
/// (0.0.4), which a browser shows as text instead of downloading and
/// older scrapers read: no `# EOF` or `# UNIT` lines, and a counter's
/// family named like its `_total` sample, as that format expects.
pub fn to_text_004(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod text_tests {
    use super::*;

    #[test]
    fn text_004_names_counter_families_by_their_samples_and_drops_eof() {
        let metrics = Metrics::new();
        metrics.refused("message_rate");
        let text = to_text_004(&metrics.encode());
        assert!(!text.contains("# EOF"), "{text}");
        assert!(
            text.contains("# TYPE kubemux_limit_refusals_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# HELP kubemux_limit_refusals_total "),
            "{text}"
        );
        assert!(
            text.contains("kubemux_limit_refusals_total{limit=\"message_rate\"} 1"),
            "{text}"
        );
        assert!(text.contains("# TYPE kubemux_subscribers gauge"), "{text}");
    }
}
