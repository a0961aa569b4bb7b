//! One WATCH stream: initial state or replay, then live events, bookmarks,
//! timeouts and the stall/drop faults, written as newline-delimited JSON
//! chunks like the real API server's watch cache.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::event::{Event, bookmark_line, error_line, line};
use crate::metrics::ActiveWatchGuard;
use crate::resources::ResourceDef;
use crate::selector::Filter;
use crate::store::{Initial, Store, WatchFrom};

/// How a watch starts, decided from its query parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchStart {
    /// Current state or replay point.
    pub from: WatchFrom,
    /// Wait until the store reaches this resourceVersion before starting.
    pub min_rv: u64,
    /// Send the `k8s.io/initial-events-end` bookmark after the initial state.
    pub initial_events_end: bool,
}

/// Everything a watch stream needs, gathered by the HTTP handler.
#[derive(Debug)]
pub struct WatchSpec {
    /// The store to subscribe to.
    pub store: Arc<Store>,
    /// The watched resource type.
    pub def: &'static ResourceDef,
    /// Namespace scope and selectors.
    pub filter: Filter,
    /// Where to start.
    pub start: WatchStart,
    /// When the stream ends by itself.
    pub deadline: Instant,
    /// Periodic bookmarks, if the client allowed them.
    pub bookmark_interval: Option<Duration>,
    /// Cancelled by the drop-watches fault and by shutdown.
    pub cancel: CancellationToken,
    /// The stall switch.
    pub stall: watch::Receiver<bool>,
    /// Keeps `sim_active_watches` up while the stream exists.
    pub guard: ActiveWatchGuard,
}

/// The chunked `application/json` response carrying the watch stream. The
/// body (and with it the metrics guard) is dropped as soon as the stream ends
/// or hyper notices the client went away.
pub fn response(spec: WatchSpec) -> Response {
    let stream = futures::stream::unfold(WatchStream::new(spec), |mut stream| async move {
        let chunk = stream.next_chunk().await?;
        Some((Ok::<Bytes, Infallible>(chunk), stream))
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A watch that ends at once with one in-band ERROR line carrying `error`:
/// what the real server's `newErrWatcher` sends (HTTP 200) for a failure it
/// finds only after the request was accepted as a watch.
pub fn error_response(error: &ApiError) -> Response {
    let mut response = Response::new(Body::from(error_line(error)));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

struct WatchStream {
    spec: WatchSpec,
    pending_start: Option<WatchStart>,
    initial: VecDeque<Initial>,
    initial_end_rv: Option<u64>,
    live: Option<broadcast::Receiver<Arc<Event>>>,
    last_rv: u64,
    bookmarks: Option<Interval>,
    done: bool,
}

impl WatchStream {
    fn new(spec: WatchSpec) -> Self {
        let bookmarks = spec.bookmark_interval.map(|period| {
            let mut interval = tokio::time::interval_at(Instant::now() + period, period);
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            interval
        });
        WatchStream {
            pending_start: Some(spec.start),
            spec,
            initial: VecDeque::new(),
            initial_end_rv: None,
            live: None,
            last_rv: 0,
            bookmarks,
            done: false,
        }
    }

    /// The next chunk to write, or `None` to end the stream cleanly.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if self.done || self.spec.cancel.is_cancelled() {
                return None;
            }
            if *self.spec.stall.borrow_and_update() {
                self.wait_out_stall().await?;
                continue;
            }
            if let Some(start) = self.pending_start.take() {
                if let Some(error) = self.begin(start).await? {
                    self.done = true;
                    return Some(error);
                }
                continue;
            }
            if let Some(item) = self.initial.pop_front() {
                if let Some(chunk) = self.render_initial(item) {
                    return Some(chunk);
                }
                continue;
            }
            if let Some(rv) = self.initial_end_rv.take() {
                return Some(bookmark_line(self.spec.def, rv, true));
            }
            if let Some(chunk) = self.next_live().await? {
                return Some(chunk);
            }
        }
    }

    /// Blocks while stalled; `None` if the watch was dropped meanwhile.
    async fn wait_out_stall(&mut self) -> Option<()> {
        tokio::select! {
            () = self.spec.cancel.cancelled() => None,
            lifted = self.spec.stall.wait_for(|stalled| !*stalled) => lifted.ok().map(|_| ()),
        }
    }

    /// Waits for the requested resourceVersion, then subscribes. Returns an
    /// in-band error line if the start point is too old; `None` ends the
    /// stream (timeout or drop while waiting).
    async fn begin(&mut self, start: WatchStart) -> Option<Option<Bytes>> {
        if self.spec.store.resource_version() < start.min_rv {
            let mut rv = self.spec.store.subscribe_rv();
            tokio::select! {
                () = self.spec.cancel.cancelled() => return None,
                () = tokio::time::sleep_until(self.spec.deadline) => return None,
                reached = rv.wait_for(|rv| *rv >= start.min_rv) => { reached.ok()?; }
            }
        }
        match self.spec.store.subscribe(self.spec.def, start.from) {
            Ok(subscription) => {
                self.initial = subscription.initial.into();
                self.live = Some(subscription.live);
                self.last_rv = subscription.rv;
                if start.initial_events_end {
                    self.initial_end_rv = Some(subscription.rv);
                }
                Some(None)
            }
            Err(error) => Some(Some(error_line(&error))),
        }
    }

    fn render_initial(&mut self, item: Initial) -> Option<Bytes> {
        match item {
            Initial::Object(object) => self
                .spec
                .filter
                .matches(&object)
                .then(|| line("ADDED", &object)),
            Initial::Event(event) => event.render(&self.spec.filter),
        }
    }

    /// Waits for the next live event, bookmark tick, deadline or drop.
    /// `None` ends the stream; `Some(None)` means "nothing to send, loop".
    async fn next_live(&mut self) -> Option<Option<Bytes>> {
        let live = self.live.as_mut()?;
        let bookmarks = self.bookmarks.as_mut();
        tokio::select! {
            () = self.spec.cancel.cancelled() => None,
            () = tokio::time::sleep_until(self.spec.deadline) => None,
            changed = self.spec.stall.changed() => changed.ok().map(|()| None),
            received = live.recv() => match received {
                Ok(event) => {
                    self.last_rv = event.rv;
                    Some(event.render(&self.spec.filter))
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(resource = self.spec.def.plural, missed, "watcher fell too far behind; ending it");
                    None
                }
                Err(RecvError::Closed) => None,
            },
            _ = tick(bookmarks) => Some(Some(self.bookmark())),
        }
    }

    /// A periodic bookmark. When nothing is queued for this watcher, every
    /// event up to the store's current resourceVersion has been seen, so that
    /// version is safe to report; otherwise the last one processed is.
    fn bookmark(&self) -> Bytes {
        let current = self.spec.store.resource_version();
        let caught_up = self
            .live
            .as_ref()
            .is_some_and(broadcast::Receiver::is_empty);
        let rv = if caught_up {
            current.max(self.last_rv)
        } else {
            self.last_rv
        };
        bookmark_line(self.spec.def, rv, false)
    }
}

/// The next bookmark tick, or never if bookmarks are off.
async fn tick(interval: Option<&mut Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}
