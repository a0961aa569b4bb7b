//! Side streams: extra upstream watches, under the shared watch's identity,
//! for subscribers whose version the store cannot serve by itself.
//!
//! A backfill (the version is older than the history) relays the events the
//! history no longer holds and, once they reach the history, hands its
//! subscribers over to the live stream and leaves those events in the
//! history for the next client. A forward (the cluster's versions are not
//! integers, so the store cannot order them) relays the server's stream for
//! as long as its subscribers stay. Either is shared by every subscriber
//! asking for the same thing, and only the API server's own answer ends one:
//! a 410 reaches clients only when the cluster itself no longer serves
//! their version.

use std::ops::ControlFlow;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::task::AbortHandle;
use tracing::Instrument;

use super::watcher::{Cursor, SubscriberId, Watcher};
use super::{SharedWatch, State, outage_message};
use crate::hub::key::WatchKey;
use crate::hub::subscriber::EndReason;
use crate::upstream::event::WatchEvent;
use crate::upstream::{
    self, FirstAnswer, FollowEnd, Listing, UpstreamConfig, UpstreamError, WatchSink, WatchTarget,
};

/// Identifies a side stream within its shared watch.
pub(super) type SideId = u64;

/// A forward keeps what it relayed so that a subscriber asking for the same
/// version later is served from its start; past this many events it takes
/// no new subscribers (they get a side stream of their own).
const FORWARD_REPLAY_LIMIT: usize = 1_000;

#[derive(Clone)]
pub(super) enum SideKind {
    /// Fetches the events after `from` that the history no longer holds;
    /// `cursor` is the newest version they cover so far (`from` before the
    /// first) and only grows.
    Backfill { from: u64, cursor: u64 },
    /// Relays the server's stream from `version`, which the store cannot place.
    Forward { version: String },
}

/// An extra upstream watch serving subscribers the store cannot serve alone.
pub(super) struct Side {
    kind: SideKind,
    /// The request of the filtered subscribers it serves, which it makes
    /// to the cluster as they asked it (so the cluster filters, and the
    /// selector transitions are its own); `None` for the shared watch's
    /// own request. Only subscribers of the same scope share a side stream,
    /// and only an unscoped backfill extends the history.
    scope: Option<WatchKey>,
    /// What the side stream delivered so far, for subscribers joining late.
    /// A backfill holds only events the history lacks (versions in
    /// `(from, horizon]`), in order; a forward at most
    /// [`FORWARD_REPLAY_LIMIT`].
    fetched: Vec<Arc<WatchEvent>>,
    /// Its subscribers, each with a [`Cursor::Side`] naming this stream.
    /// Never empty for long: the last one to leave removes the stream.
    subs: Vec<SubscriberId>,
    /// The upstream task; aborted when the stream is dropped.
    task: AbortHandle,
    /// Whether the current outage was reported to its subscribers.
    warned: bool,
}

impl Side {
    /// Whether a subscriber that needs a side stream of the `wanted` kind
    /// can be served by this one.
    fn takes(&self, wanted: &SideKind) -> bool {
        match (&self.kind, wanted) {
            (SideKind::Backfill { from: mine, .. }, SideKind::Backfill { from, .. }) => {
                mine <= from
            }
            (SideKind::Forward { version: mine }, SideKind::Forward { version }) => {
                mine == version && self.fetched.len() < FORWARD_REPLAY_LIMIT
            }
            _ => false,
        }
    }

    /// The newest version a backfill covers; `None` for a forward.
    fn backfilled_to(&self) -> Option<u64> {
        match self.kind {
            SideKind::Backfill { cursor, .. } => Some(cursor),
            SideKind::Forward { .. } => None,
        }
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SharedWatch {
    /// Puts a subscriber on a side stream of the `wanted` kind: a running
    /// one that may take it (a backfill that started at or before its
    /// version, the furthest along; a forward from its version that has not
    /// relayed too much to replay), else a new one. It is given at once
    /// what that stream fetched that it lacks.
    pub(super) fn join_side(
        self: &Arc<Self>,
        st: &mut State,
        id: SubscriberId,
        mut sub: Watcher,
        wanted: SideKind,
        upstream: (WatchTarget, UpstreamConfig),
    ) -> Option<Watcher> {
        let scope = sub
            .filter
            .as_ref()
            .filter(|filter| filter.needs_prev())
            .map(|filter| filter.narrow().clone());
        let joinable = st
            .sides
            .iter()
            .filter(|(_, side)| side.scope == scope && side.takes(&wanted))
            .max_by_key(|(_, side)| side.backfilled_to())
            .map(|(side_id, _)| *side_id);
        let side_id = match joinable {
            Some(side_id) => side_id,
            None => {
                let version = match &wanted {
                    SideKind::Backfill { from, .. } => from.to_string(),
                    SideKind::Forward { version } => version.clone(),
                };
                let (mut target, config) = upstream;
                if let Some(narrow) = &scope {
                    target.path = narrow.path().to_string();
                    target.selectors = narrow.selectors().to_string();
                }
                self.spawn_side(st, (target, config), wanted.clone(), version, scope)
            }
        };
        let side = self.side_for(st, side_id, &sub)?;
        let (owed, at) = match wanted {
            SideKind::Backfill { from, .. } => {
                let owed: Vec<Arc<WatchEvent>> = side
                    .fetched
                    .iter()
                    .filter(|ev| ev.rv() > Some(from))
                    .cloned()
                    .collect();
                let at = owed.last().and_then(|ev| ev.rv()).unwrap_or(from);
                (owed, at)
            }
            SideKind::Forward { .. } => (side.fetched.clone(), 0),
        };
        let owed: Vec<Arc<WatchEvent>> = owed
            .into_iter()
            .filter(|event| sub.sees_on_side(event))
            .collect();
        if !self.owed(&sub, owed) {
            return None;
        }
        side.subs.push(id);
        sub.cursor = Cursor::Side { side: side_id, at };
        Some(sub)
    }

    /// Starts a side stream from `version` under this watch's identity.
    fn spawn_side(
        self: &Arc<Self>,
        st: &mut State,
        (target, config): (WatchTarget, UpstreamConfig),
        kind: SideKind,
        version: String,
        scope: Option<WatchKey>,
    ) -> SideId {
        let side_id = st.next_side;
        st.next_side += 1;
        let first_answer = match kind {
            SideKind::Backfill { .. } => FirstAnswer::Retry,
            SideKind::Forward { .. } => FirstAnswer::Final,
        };
        self.count(&self.metrics.backfill_requests);
        let sink = Arc::new(SideSink {
            watch: Arc::downgrade(self),
            side: side_id,
        });
        let weak = Arc::downgrade(self);
        let span = tracing::info_span!("side", cluster = self.key.cluster(), key = %self.key.short_hash(), side = side_id, from = %version);
        let task = tokio::spawn(
            async move {
                let end = upstream::follow(target, config, version, sink, first_answer).await;
                if let Some(watch) = weak.upgrade() {
                    watch.side_ended(side_id, end);
                }
            }
            .instrument(span),
        );
        st.sides.insert(
            side_id,
            Side {
                kind,
                scope,
                fetched: Vec::new(),
                subs: Vec::new(),
                task: task.abort_handle(),
                warned: false,
            },
        );
        side_id
    }

    /// The side stream a subscriber joins, or its end if there is none
    /// (which cannot happen: it was just found or started under the lock).
    fn side_for<'s>(
        &self,
        st: &'s mut State,
        side_id: SideId,
        sub: &Watcher,
    ) -> Option<&'s mut Side> {
        let side = st.sides.get_mut(&side_id);
        if side.is_none() {
            self.metrics.subscribers.dec();
            sub.sink.end(EndReason::Failed(
                "the side stream for this version vanished".into(),
            ));
        }
        side
    }

    /// An event of a side stream.
    fn side_event(self: &Arc<Self>, side_id: SideId, event: WatchEvent) {
        let mut st = self.state.lock();
        if st.phase.is_stopped() {
            return;
        }
        let before = st.holders();
        let Some(scoped) = st.sides.get(&side_id).map(|side| side.scope.is_some()) else {
            return;
        };
        let horizon = st.cache.horizon_for(scoped);
        let event = Arc::new(event);
        let mut slow = Vec::new();
        let mut complete = false;
        {
            let State {
                sides, watchers, ..
            } = &mut *st;
            let Some(side) = sides.get_mut(&side_id) else {
                return;
            };
            match &mut side.kind {
                SideKind::Forward { .. } => {
                    if side.fetched.len() < FORWARD_REPLAY_LIMIT {
                        side.fetched.push(event.clone());
                    }
                    for id in &side.subs {
                        if let Some(sub) = watchers.get(id)
                            && sub.offer(&event).is_err()
                        {
                            slow.push(*id);
                        }
                    }
                }
                SideKind::Backfill { cursor, .. } => {
                    let Some(rv) = event.rv() else {
                        return;
                    };
                    if rv <= *cursor {
                        return;
                    }
                    if rv > horizon {
                        // Nothing lies between what was fetched and the
                        // history: the history (or the live stream) has
                        // this event and everything after it.
                        complete = true;
                    } else {
                        self.count(&self.metrics.backfill_events);
                        side.fetched.push(event.clone());
                        *cursor = rv;
                        complete = rv == horizon;
                        for id in &side.subs {
                            let Some(sub) = watchers.get_mut(id) else {
                                continue;
                            };
                            if let Cursor::Side { at, .. } = sub.cursor
                                && at < rv
                            {
                                if sub.offer(&event).is_err() {
                                    slow.push(*id);
                                } else if let Cursor::Side { at, .. } = &mut sub.cursor {
                                    *at = rv;
                                }
                            }
                        }
                    }
                }
            }
        }
        self.cut_slow(&mut st, slow);
        if complete {
            self.complete_backfill(&mut st, side_id);
        }
        self.linger_if_emptied(st, before);
    }

    /// A bookmark of a side stream: nothing changed up to `resource_version`.
    fn side_bookmark(self: &Arc<Self>, side_id: SideId, resource_version: &str) {
        let mut st = self.state.lock();
        let before = st.holders();
        let Ok(rv) = resource_version.parse::<u64>() else {
            return;
        };
        let covered = st.sides.get(&side_id).is_some_and(|side| {
            matches!(side.kind, SideKind::Backfill { .. })
                && rv >= st.cache.horizon_for(side.scope.is_some())
        });
        if covered {
            self.complete_backfill(&mut st, side_id);
            self.linger_if_emptied(st, before);
        }
    }

    /// A backfill reached the history: its events extend the history and
    /// its subscribers continue from there on the live stream. Other
    /// backfills the extended history now covers complete too.
    fn complete_backfill(self: &Arc<Self>, st: &mut State, side_id: SideId) {
        let mut done = vec![side_id];
        while let Some(side_id) = done.pop() {
            let Some(side) = st.sides.remove(&side_id) else {
                continue;
            };
            if let SideKind::Backfill { from, .. } = side.kind
                && side.scope.is_none()
            {
                st.cache.prepend(from, &side.fetched);
            }
            for id in &side.subs {
                let Some(mut sub) = st.watchers.remove(id) else {
                    continue;
                };
                let Cursor::Side { at, .. } = sub.cursor else {
                    st.watchers.insert(*id, sub);
                    continue;
                };
                if !self.owed(&sub, sub.view(&st.cache.replay_after(at))) {
                    continue;
                }
                sub.cursor = Cursor::Live;
                st.watchers.insert(*id, sub);
            }
            let cache = &st.cache;
            done.extend(
                st.sides
                    .iter()
                    .filter(|(_, s)| {
                        s.backfilled_to()
                            .is_some_and(|c| c >= cache.horizon_for(s.scope.is_some()))
                    })
                    .map(|(id, _)| *id),
            );
        }
    }

    /// A side stream ended for good: the API server's 410 (relayed as it
    /// sent it) or a failure retrying cannot fix.
    fn side_ended(self: &Arc<Self>, side_id: SideId, end: FollowEnd) {
        let mut st = self.state.lock();
        let before = st.holders();
        let Some(side) = st.sides.remove(&side_id) else {
            return;
        };
        let (last, reason) = match end {
            FollowEnd::Expired(status) => (Some(Arc::new(status)), EndReason::Expired),
            FollowEnd::Failed(err) => (None, EndReason::Failed(err.to_string())),
        };
        for id in &side.subs {
            let Some(sub) = st.watchers.remove(id) else {
                continue;
            };
            self.metrics.subscribers.dec();
            if let Some(last) = &last {
                self.resumed("expired");
                let _ = sub.sink.event(last);
            }
            sub.sink.end(reason.clone());
        }
        self.linger_if_emptied(st, before);
    }

    /// A side stream's outage, reported once to its subscribers.
    fn side_degraded(&self, side_id: SideId, message: &str) {
        let mut st = self.state.lock();
        let State {
            sides, watchers, ..
        } = &mut *st;
        let Some(side) = sides.get_mut(&side_id) else {
            return;
        };
        if std::mem::replace(&mut side.warned, true) {
            return;
        }
        for id in &side.subs {
            if let Some(sub) = watchers.get(id) {
                sub.sink.warning(message);
            }
        }
    }

    fn side_started(&self, side_id: SideId) {
        if let Some(side) = self.state.lock().sides.get_mut(&side_id) {
            side.warned = false;
        }
    }

    /// Takes a subscriber that left off its side stream; the last one to
    /// leave stops it.
    pub(super) fn leave_side(st: &mut State, id: SubscriberId, sub: &Watcher) {
        let Cursor::Side { side: side_id, .. } = sub.cursor else {
            return;
        };
        if let Some(side) = st.sides.get_mut(&side_id) {
            side.subs.retain(|s| *s != id);
            if side.subs.is_empty() {
                st.sides.remove(&side_id);
            }
        }
    }
}

/// Where a side stream's upstream task reports. Holds the watch weakly so
/// the task does not keep a stopped watch alive.
struct SideSink {
    watch: Weak<SharedWatch>,
    side: SideId,
}

impl WatchSink for SideSink {
    fn listed(&self, _listing: Listing) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }

    fn event(&self, event: WatchEvent) {
        if let Some(watch) = self.watch.upgrade() {
            watch.side_event(self.side, event);
        }
    }

    fn bookmark(&self, resource_version: &str) {
        if let Some(watch) = self.watch.upgrade() {
            watch.side_bookmark(self.side, resource_version);
        }
    }

    fn watch_started(&self) {
        if let Some(watch) = self.watch.upgrade() {
            watch.side_started(self.side);
        }
    }

    fn degraded(&self, error: &UpstreamError, retry_in: Duration) {
        if let Some(watch) = self.watch.upgrade() {
            watch.side_degraded(self.side, &outage_message(error, retry_in));
        }
    }

    fn failed(&self, _error: UpstreamError) {}
}
