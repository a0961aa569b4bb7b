//! Property: whatever the interleaving of subscribe, resume and close with
//! upstream faults, kubemux restarts (a new process with an empty cache) and
//! shared watches lingering out between resumes, every live subscriber's
//! applied state ends equal to the server's.

use std::time::Duration;

use crate::support::*;
use kubemux::hub::HubConfig;
use kubemux::server::ServerConfig;
use kubemux::upstream::UpstreamConfig;
use kubemux_sim::{SimConfig, SimServer, WatchFailure};
use proptest::prelude::*;
use serde_json::{Value, json};

#[derive(Clone, Debug)]
enum Op {
    Subscribe(usize),
    Resume(usize),
    Close(usize),
    Churn(u8),
    Fault(u8),
    /// kubemux restarts: every client reconnects and resumes from its version.
    Restart,
    /// One subscriber closes, waits out the linger (its shared watch stops if
    /// nobody else holds it) and resumes from its version.
    Linger(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..KEYS.len()).prop_map(Op::Subscribe),
        2 => (0..8usize).prop_map(Op::Resume),
        1 => (0..8usize).prop_map(Op::Close),
        4 => (1..20u8).prop_map(Op::Churn),
        1 => (0..4u8).prop_map(Op::Fault),
        1 => Just(Op::Restart),
        1 => (0..8usize).prop_map(Op::Linger),
    ]
}

/// (path, query base, resource, namespace) of the keys subscribers pick from.
const KEYS: [(&str, &str, &str, Option<&str>); 3] = [
    ("/api/v1/pods", "watch=1", "pods", None),
    (
        "/api/v1/namespaces/default/pods",
        "watch=1",
        "pods",
        Some("default"),
    ),
    (
        "/api/v1/namespaces/team-a/pods",
        "watch=1&allowWatchBookmarks=true",
        "pods",
        Some("team-a"),
    ),
];

struct Sub {
    key: usize,
    client: Client,
    query: String,
    applied: Applied,
    last_rv: Option<u64>,
    expired: bool,
    restarts: u32,
}

impl Sub {
    /// Reads whatever is waiting (frames of an older query are stale and
    /// skipped). A 410 is answered the way a real client answers it: start
    /// over from a fresh snapshot.
    async fn drain(&mut self, wait: Duration, may_expire: bool) {
        while let Some(frame) = self.client.next_within(wait).await {
            if frame["query"] != self.query.as_str() {
                continue;
            }
            match frame["type"].as_str().unwrap() {
                "DATA" => {
                    let ev: Value = serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
                    if ev["type"] == "ERROR" {
                        assert_eq!(ev["object"]["code"], 410, "{ev}");
                        assert!(
                            may_expire,
                            "a 410 although the cluster serves every version: {ev}"
                        );
                        self.expired = true;
                        continue;
                    }
                    if let Some(rv) = ev["object"]["metadata"]["resourceVersion"].as_str() {
                        let rv: u64 = rv.parse().unwrap();
                        self.last_rv = Some(self.last_rv.map_or(rv, |r| r.max(rv)));
                    }
                    self.applied.apply(&ev);
                }
                "COMPLETE" => {
                    assert!(
                        self.expired,
                        "a live subscription completes only after a 410"
                    );
                    self.expired = false;
                    self.applied = Applied::default();
                    self.last_rv = None;
                    self.resubscribe().await;
                }
                _ => {}
            }
        }
    }

    /// Subscribes again: from the last version applied, else from scratch
    /// (a unique `timeoutSeconds` keeps stale frames apart).
    async fn resubscribe(&mut self) {
        self.restarts += 1;
        let (path, base, ..) = KEYS[self.key];
        self.query = match self.last_rv {
            Some(rv) => format!(
                "{base}&resourceVersion={rv}&timeoutSeconds={}",
                3600 + self.restarts
            ),
            None => {
                self.applied = Applied::default();
                format!("{base}&timeoutSeconds={}", 3600 + self.restarts)
            }
        };
        self.client.request(path, &self.query).await;
    }
}

fn churn(sim: &SimServer, step: u64, n: u8) {
    let store = sim.store();
    for i in 0..n as u64 {
        let x = step * 31 + i * 7;
        let ns = if x.is_multiple_of(2) {
            "default"
        } else {
            "team-a"
        };
        let name = format!("p-{}", x % 6);
        let r = match x % 3 {
            0 => store.create(
                "pods",
                Some(ns),
                json!({"metadata": {"name": name, "namespace": ns}, "spec": {"containers": []}}),
            ),
            1 => store.merge_patch(
                "pods",
                Some(ns),
                &name,
                &json!({"metadata": {"labels": {"x": x.to_string()}}}),
            ),
            _ => store.delete("pods", Some(ns), &name),
        };
        drop(r);
    }
}

fn hub_config() -> HubConfig {
    HubConfig {
        linger: Duration::from_millis(50),
        upstream: UpstreamConfig {
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_millis(200),
            rewatch_delay: Duration::from_millis(10),
            ..UpstreamConfig::default()
        },
        ..quick_hub()
    }
}

async fn run(ops: Vec<Op>) {
    let sim = SimServer::start(SimConfig::default()).await.unwrap();
    let (mut server, _) = start_proxy(&sim, hub_config(), ServerConfig::default()).await;
    let url = |server: &kubemux::server::Server| format!("ws://{}/wsMultiplexer", server.addr());
    let mut subs: Vec<Sub> = Vec::new();
    // Only an injected 410 may reach a client: the simulator never compacts
    // here, so it serves every version.
    let mut may_expire = false;
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Subscribe(key) => {
                let mut client = Client::connect(&url(&server)).await;
                let query = KEYS[key].1.to_string();
                client.request(KEYS[key].0, &query).await;
                subs.push(Sub {
                    key,
                    client,
                    query,
                    applied: Applied::default(),
                    last_rv: None,
                    expired: false,
                    restarts: 0,
                });
            }
            Op::Resume(i) if !subs.is_empty() => {
                let i = i % subs.len();
                let s = &mut subs[i];
                s.drain(Duration::from_millis(30), may_expire).await;
                let (path, base, ..) = KEYS[s.key];
                let old = s.query.clone();
                s.query = match &s.last_rv {
                    Some(rv) => format!("{base}&resourceVersion={rv}"),
                    None => format!("{base}&timeoutSeconds=3600"),
                };
                if s.query == old {
                    continue;
                }
                if s.last_rv.is_none() {
                    s.applied = Applied::default();
                }
                s.client.request(path, &s.query).await;
                s.client.close(path, &old).await;
            }
            Op::Close(i) if !subs.is_empty() => {
                let i = i % subs.len();
                let mut s = subs.remove(i);
                s.client.close(KEYS[s.key].0, &s.query).await;
            }
            Op::Churn(n) => churn(&sim, step as u64, n),
            Op::Restart => {
                server.shutdown(Duration::from_secs(2)).await;
                (server, _) = start_proxy(&sim, hub_config(), ServerConfig::default()).await;
                for s in subs.iter_mut() {
                    // Whatever was still in flight is lost with the old
                    // process; the client resumes from what it applied.
                    s.client = Client::connect(&url(&server)).await;
                    s.expired = false;
                    s.resubscribe().await;
                }
            }
            Op::Linger(i) if !subs.is_empty() => {
                let i = i % subs.len();
                let s = &mut subs[i];
                s.drain(Duration::from_millis(30), may_expire).await;
                s.client.close(KEYS[s.key].0, &s.query).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
                s.resubscribe().await;
            }
            Op::Fault(kind) => {
                let faults = sim.faults();
                match kind {
                    0 => {}
                    1 => {
                        may_expire = true;
                        faults.fail_next_watches(1, WatchFailure::Expired)
                    }
                    2 => faults.fail_next_watches(1, WatchFailure::InternalError),
                    _ => faults.fail_next_watches(
                        1,
                        WatchFailure::TooManyRequests {
                            retry_after_secs: 0,
                        },
                    ),
                }
                faults.drop_watches();
            }
            _ => {}
        }
        for s in subs.iter_mut() {
            s.drain(Duration::from_millis(5), may_expire).await;
        }
    }
    for s in subs.iter_mut() {
        let (_, _, resource, ns) = KEYS[s.key];
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let (objects, _) = sim.store().list(resource, ns, None, None).unwrap();
            if s.applied.versions() == versions_of(&objects) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "subscriber on {:?} never converged",
                KEYS[s.key].0
            );
            s.drain(Duration::from_millis(100), may_expire).await;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn live_subscribers_always_converge(ops in proptest::collection::vec(op(), 5..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run(ops));
    }
}
