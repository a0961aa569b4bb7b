//! The shared watch's state machine on the paused clock: a watch in a real
//! hub, fed by the test instead of an upstream task (its cluster is
//! configured but never contacted: subscribers join the watch the test put
//! in the hub's map, so none is launched).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::Upstream;
use crate::cluster::Registry;
use crate::hub::watch_cache::tests::{listing, pod};
use crate::hub::{
    EndReason, Hub, HubConfig, Identity, Overflow, SubscribeRequest, Subscriber, Subscription, key,
};
use crate::metrics::Metrics;
use crate::upstream::event::{EventType, WatchEvent};
use crate::upstream::{UpstreamError, WatchSink};

const LINGER: Duration = Duration::from_secs(30);
const PODS: &str = "/api/v1/pods";

/// A kubeconfig naming a cluster nothing listens for: the tests never let
/// the hub start an upstream request.
const KUBECONFIG: &str = "apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: http://127.0.0.1:9
contexts:
- name: c
  context:
    cluster: c
    user: u
users:
- name: u
  user:
    token: t
current-context: c
";

/// What a subscriber was given, in order.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<String>>,
}

impl Recorder {
    fn seen(&self) -> Vec<String> {
        self.seen.lock().clone()
    }

    fn ends(&self) -> usize {
        self.seen().iter().filter(|s| s.starts_with("end:")).count()
    }
}

fn describe(event: &WatchEvent) -> String {
    format!(
        "{}:{}@{}",
        event.kind(),
        event.key(),
        event.resource_version()
    )
}

impl Subscriber for Recorder {
    fn event(&self, event: &Arc<WatchEvent>) -> Result<(), Overflow> {
        self.seen.lock().push(describe(event));
        Ok(())
    }
    fn replay(&self, events: Vec<Arc<WatchEvent>>) -> Result<(), Overflow> {
        let all: Vec<String> = events.iter().map(|e| describe(e)).collect();
        self.seen.lock().push(format!("replay[{}]", all.join(" ")));
        Ok(())
    }
    fn warning(&self, message: &str) {
        self.seen.lock().push(format!("warning:{message}"));
    }
    fn end(&self, reason: EndReason) {
        self.seen.lock().push(format!("end:{reason:?}"));
    }
}

/// A hub whose cluster `c` is configured but never contacted.
async fn hub() -> Hub {
    let registry = Arc::new(Registry::new());
    registry
        .load_kubeconfig_text(KUBECONFIG, "test")
        .await
        .unwrap();
    let config = HubConfig {
        linger: LINGER,
        ..HubConfig::default()
    };
    Hub::new(config, registry, Arc::new(Metrics::new()))
}

/// Puts a shared watch for the pods of cluster `c` into the hub, admitted
/// like any other, and returns where to feed it.
fn fed_watch(hub: &Hub) -> Upstream {
    let (key, _, _) = key::normalize("c", PODS, "").unwrap();
    hub.inner.admit(&key).unwrap();
    let watch = hub.new_watch(&key);
    hub.inner.watches.insert(key, watch.clone());
    Upstream(Arc::downgrade(&watch))
}

/// A hub with a fed watch that listed at version 10, empty.
async fn listed_watch() -> (Hub, Upstream) {
    let hub = hub().await;
    let feed = fed_watch(&hub);
    let _ = feed.listed(listing(10, vec![]));
    (hub, feed)
}

fn request(query: &str) -> SubscribeRequest<'_> {
    SubscribeRequest {
        cluster: "c",
        path: PODS,
        query,
        identity: &Identity::Proxy,
    }
}

fn join(hub: &Hub, query: &str) -> (Arc<Recorder>, Subscription) {
    let recorder = Arc::new(Recorder::default());
    let subscription = hub.subscribe(request(query), recorder.clone()).unwrap();
    (recorder, subscription)
}

/// Lets every spawned task run as far as it can (a timer's deadline is
/// taken when its task first runs).
async fn settle() {
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
}

/// Moves the paused clock on, then lets the timers that fell due run.
async fn advance(by: Duration) {
    settle().await;
    tokio::time::advance(by).await;
    settle().await;
}

#[tokio::test(start_paused = true)]
async fn the_watch_stops_one_linger_after_its_last_subscriber_leaves() {
    let (hub, feed) = listed_watch().await;
    let (_, first) = join(&hub, "");
    let (_, second) = join(&hub, "");
    drop(first);
    advance(LINGER * 2).await;
    assert_eq!(hub.watch_count(), 1, "a subscriber still holds it");
    drop(second);
    advance(LINGER - Duration::from_millis(1)).await;
    assert_eq!(hub.watch_count(), 1, "lingering");
    advance(Duration::from_millis(2)).await;
    assert_eq!(hub.watch_count(), 0, "stopped when the linger fell due");
    assert!(hub.inner.counts.is_empty(), "released from the limits");
    assert!(
        feed.listed(listing(11, vec![])).is_break(),
        "a stopped watch's upstream task is told to end"
    );
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_joining_during_the_linger_keeps_the_watch() {
    let (hub, feed) = listed_watch().await;
    drop(join(&hub, ""));
    advance(LINGER / 2).await;
    let (recorder, again) = join(&hub, "");
    advance(LINGER).await;
    assert_eq!(
        hub.watch_count(),
        1,
        "the first countdown found a new subscriber"
    );
    feed.event(pod(EventType::Added, "a", 11));
    assert_eq!(
        recorder.seen(),
        ["ADDED:d/a@11"],
        "nothing owed (an empty replay is not sent), then live"
    );
    drop(again);
    advance(LINGER + Duration::from_millis(1)).await;
    assert_eq!(hub.watch_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_store_holds_the_watch_but_does_not_extend_a_running_linger() {
    let hub = hub().await;
    let feed = fed_watch(&hub);
    let _ = feed.listed(listing(10, vec![pod(EventType::Added, "a", 5)]));
    drop(join(&hub, ""));
    let store = hub.store(request("")).unwrap();
    let reader = store.clone();
    drop(store);
    advance(LINGER * 3).await;
    assert_eq!(
        hub.watch_count(),
        1,
        "held by a read handle past the linger"
    );
    let snapshot = reader.snapshot().unwrap();
    assert_eq!(snapshot.resource_version, "10");
    assert_eq!(snapshot.objects.len(), 1);
    drop(reader);
    advance(LINGER - Duration::from_millis(1)).await;
    assert_eq!(hub.watch_count(), 1, "lingers after its last reader");
    advance(Duration::from_millis(2)).await;
    assert_eq!(hub.watch_count(), 0);

    let feed = fed_watch(&hub);
    let _ = feed.listed(listing(10, vec![]));
    drop(join(&hub, ""));
    advance(LINGER / 2).await;
    drop(hub.cached_list("c", PODS, "", &Identity::Proxy).unwrap());
    advance(LINGER / 2 + Duration::from_millis(1)).await;
    assert_eq!(
        hub.watch_count(),
        0,
        "a LIST served from the store during the linger does not prolong it"
    );
}

#[tokio::test(start_paused = true)]
async fn a_store_waits_for_the_first_listing_and_learns_of_the_end() {
    let hub = hub().await;
    let feed = fed_watch(&hub);
    let store = hub.store(request("")).unwrap();
    assert!(!store.is_synced());
    assert!(store.snapshot().is_none());
    let waiting = tokio::spawn({
        let store = store.clone();
        async move { store.wait_until_synced().await }
    });
    let _ = feed.listed(listing(7, vec![pod(EventType::Added, "a", 3)]));
    assert_eq!(waiting.await.unwrap(), Ok(()));
    assert!(store.is_synced());
    assert_eq!(store.snapshot().unwrap().resource_version, "7");
    feed.failed(UpstreamError::Transport("gone".into()));
    assert!(!store.is_synced());
    assert!(store.snapshot().is_none());
    assert_eq!(store.wait_until_synced().await, Err(crate::hub::StoreEnded));
    assert_eq!(hub.watch_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_first_listing_places_every_pending_subscriber_and_the_end_reaches_each_once() {
    let hub = hub().await;
    let feed = fed_watch(&hub);
    let (snapshot, _a) = join(
        &hub,
        "watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan",
    );
    let (plain, _b) = join(&hub, "watch=1");
    let (waiting, _c) = join(&hub, "watch=1&resourceVersion=12");
    assert!(snapshot.seen().is_empty(), "nothing before the listing");
    let _ = feed.listed(listing(10, vec![pod(EventType::Added, "a", 5)]));
    assert_eq!(
        snapshot.seen(),
        ["replay[ADDED:d/a@5 BOOKMARK:@10]"],
        "its snapshot and the initial-events-end bookmark, as one replay"
    );
    assert_eq!(plain.seen(), ["replay[ADDED:d/a@5]"]);
    assert!(waiting.seen().is_empty(), "waits for version 12");
    feed.event(pod(EventType::Modified, "a", 11));
    assert!(waiting.seen().is_empty());
    feed.event(pod(EventType::Added, "b", 12));
    assert!(
        waiting.seen().is_empty(),
        "placed at its version 12: owed nothing after it"
    );
    feed.event(pod(EventType::Added, "c", 13));
    assert_eq!(waiting.seen(), ["ADDED:d/c@13"], "live from its version on");
    assert_eq!(
        plain.seen()[1..],
        ["MODIFIED:d/a@11", "ADDED:d/b@12", "ADDED:d/c@13"]
    );
    feed.failed(UpstreamError::Transport("gone".into()));
    feed.failed(UpstreamError::Transport("again".into()));
    for recorder in [&snapshot, &plain, &waiting] {
        assert_eq!(recorder.ends(), 1, "{:?}", recorder.seen());
        assert!(
            recorder
                .seen()
                .last()
                .unwrap()
                .starts_with("end:Failed(\"cannot reach the API server: gone")
        );
    }
    assert_eq!(hub.watch_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_served_from_the_listing_alone_lets_the_watch_stop_before_it_watches() {
    let hub = hub().await;
    let feed = fed_watch(&hub);
    let (invalid, _sub) = join(&hub, "watch=1&resourceVersion=abc");
    assert!(feed.listed(listing(10, vec![])).is_break());
    assert_eq!(invalid.ends(), 1);
    assert_eq!(hub.watch_count(), 0);

    let feed = fed_watch(&hub);
    let (_, _sub) = join(&hub, "watch=1&resourceVersion=abc");
    let _store = hub.store(request("")).unwrap();
    assert!(
        feed.listed(listing(10, vec![])).is_continue(),
        "a read handle still needs the watch"
    );
    assert_eq!(hub.watch_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_client_timeout_ends_its_subscriber_alone() {
    let (hub, _feed) = listed_watch().await;
    let (short, _a) = join(&hub, "watch=1&timeoutSeconds=5");
    let (long, _b) = join(&hub, "watch=1");
    advance(Duration::from_secs(5)).await;
    assert_eq!(short.seen().last().unwrap(), "end:Timeout");
    assert_eq!(long.ends(), 0);
    assert_eq!(hub.watches()[0].subscribers, 1);
}

#[tokio::test(start_paused = true)]
async fn subscribers_with_the_same_request_share_one_filter_and_see_only_their_namespace() {
    let (hub, feed) = listed_watch().await;
    let at = |path: &'static str| {
        let recorder = Arc::new(Recorder::default());
        let request = SubscribeRequest {
            cluster: "c",
            path,
            query: "watch=1",
            identity: &Identity::Proxy,
        };
        let subscription = hub.subscribe(request, recorder.clone()).unwrap();
        (recorder, subscription)
    };
    let (first, _first) = at("/api/v1/namespaces/d/pods");
    let (second, _second) = at("/api/v1/namespaces/d/pods");
    let (other, _other) = at("/api/v1/namespaces/e/pods");
    assert_eq!(
        hub.watch_count(),
        1,
        "all three are served by the pods' watch"
    );
    let watch = hub.inner.watches.iter().next().unwrap().clone();
    {
        let st = watch.state.lock();
        let filters: std::collections::HashSet<*const crate::hub::filter::Filter> = st
            .watchers
            .values()
            .filter_map(|w| w.filter.as_ref().map(Arc::as_ptr))
            .collect();
        assert_eq!(st.watchers.len(), 3);
        assert_eq!(
            filters.len(),
            2,
            "the two requests for namespace d share one"
        );
    }
    feed.event(pod(EventType::Added, "a", 11));
    assert_eq!(first.seen(), ["ADDED:d/a@11"]);
    assert_eq!(second.seen(), first.seen());
    assert!(other.seen().is_empty(), "{:?}", other.seen());
}
