//! Fault injection: the failure modes a watch client must survive, switchable
//! in-process (tests, benchmarks) or over HTTP under `/_sim/`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::store::Store;

/// How an injected watch failure answers (a plain HTTP error response, not an
/// in-band watch event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchFailure {
    /// 410 Gone with a `Status` of reason `Expired`.
    Expired,
    /// 429 with `Retry-After: retry_after_secs`.
    TooManyRequests {
        /// Seconds the client is asked to wait.
        retry_after_secs: u64,
    },
    /// 500 InternalError.
    InternalError,
}

impl WatchFailure {
    /// The error response this failure produces.
    pub fn error(&self) -> ApiError {
        match self {
            WatchFailure::Expired => ApiError::expired("too old resource version: injected fault"),
            WatchFailure::TooManyRequests { retry_after_secs } => {
                ApiError::too_many_requests(*retry_after_secs)
            }
            WatchFailure::InternalError => ApiError::internal("injected fault"),
        }
    }
}

/// The simulator's fault switches. Reached via [`crate::SimServer::faults`].
#[derive(Debug)]
pub struct Faults {
    shutdown: CancellationToken,
    watch_generation: Mutex<CancellationToken>,
    connection_generation: Mutex<CancellationToken>,
    stall: watch::Sender<bool>,
    refuse_until: watch::Sender<Option<Instant>>,
    pending_failures: Mutex<VecDeque<WatchFailure>>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
}

impl Faults {
    /// Fault switches for one server; `shutdown` ends everything at once.
    pub(crate) fn new(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Self {
        Faults {
            watch_generation: Mutex::new(shutdown.child_token()),
            connection_generation: Mutex::new(CancellationToken::new()),
            shutdown,
            stall: watch::channel(false).0,
            refuse_until: watch::channel(None).0,
            pending_failures: Mutex::new(VecDeque::new()),
            store,
            metrics,
        }
    }

    /// Ends every open watch stream cleanly, as a server-side timeout would.
    /// Returns how many streams were open.
    pub fn drop_watches(&self) -> i64 {
        let open = self.metrics.total_active_watches();
        let mut generation = self.watch_generation.lock();
        generation.cancel();
        *generation = self.shutdown.child_token();
        tracing::info!(open, "fault: dropping all watches");
        open
    }

    /// Makes the next `count` watch requests fail with `failure`.
    pub fn fail_next_watches(&self, count: usize, failure: WatchFailure) {
        let mut pending = self.pending_failures.lock();
        pending.extend(std::iter::repeat_n(failure, count));
        tracing::info!(count, ?failure, "fault: failing next watch requests");
    }

    /// Stops every open (and new) watch from sending anything, keeping the
    /// connections open, until [`Faults::resume_watches`].
    pub fn stall_watches(&self) {
        self.stall.send_replace(true);
        tracing::info!("fault: watches stalled");
    }

    /// Lifts a stall; watchers that fell too far behind are then ended.
    pub fn resume_watches(&self) {
        self.stall.send_replace(false);
        tracing::info!("fault: watches resumed");
    }

    /// Whether watches are currently stalled.
    pub fn is_stalled(&self) -> bool {
        *self.stall.borrow()
    }

    /// Simulates the server going away for `duration`: the listening socket
    /// is closed (connects are refused) and every open connection, watches
    /// included, is reset; afterwards the same address is bound again.
    pub fn refuse_connections(&self, duration: Duration) {
        self.refuse_until
            .send_replace(Some(Instant::now() + duration));
        self.reset_connections();
        tracing::info!(?duration, "fault: refusing connections");
    }

    /// Resets every open connection (a new generation for later ones).
    pub(crate) fn reset_connections(&self) {
        let mut generation = self.connection_generation.lock();
        generation.cancel();
        *generation = CancellationToken::new();
    }

    /// Compacts the history now: every resourceVersion up to the current one
    /// becomes too old. Returns the compaction resourceVersion.
    pub fn compact_history(&self) -> u64 {
        self.store.compact();
        self.store.resource_version()
    }

    /// Takes the next injected watch failure, if any.
    pub(crate) fn take_watch_failure(&self) -> Option<WatchFailure> {
        self.pending_failures.lock().pop_front()
    }

    /// Cancelled when watches opened now must end (drop or shutdown).
    pub(crate) fn watch_token(&self) -> CancellationToken {
        self.watch_generation.lock().clone()
    }

    /// Cancelled when connections accepted now must be reset.
    pub(crate) fn connection_token(&self) -> CancellationToken {
        self.connection_generation.lock().clone()
    }

    /// Follows the stall switch.
    pub(crate) fn stall_receiver(&self) -> watch::Receiver<bool> {
        self.stall.subscribe()
    }

    /// Follows the refuse-connections deadline.
    pub(crate) fn refuse_receiver(&self) -> watch::Receiver<Option<Instant>> {
        self.refuse_until.subscribe()
    }
}
