//! Several interchangeable replicas behind a real load balancer (HAProxy,
//! from Debian's packages; `.ci/run` installs it): three `kubemux serve`
//! processes on 127.0.0.2–127.0.0.4 in front of one simulated cluster.
//! Headlamp-style clients list and watch through HAProxy under churn; one
//! replica is killed (SIGKILL), another rolled (SIGTERM). Each client
//! reconnects through HAProxy and resumes from its last version on whichever
//! replica it lands, so its state must end equal to the simulator's LIST,
//! with every event once and no 410. Seed-001-style dashboard clients
//! reconnect the same way and end showing the simulator's pods.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use futures::{SinkExt, StreamExt};
use kubemux_sim::{SimConfig, SimServer};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const PATH: &str = "/api/v1/pods";
const CLIENTS: usize = 12;

/// What one client has seen, shared with the test.
#[derive(Default)]
struct Seen {
    applied: Applied,
    /// The newest version applied; every later event must be newer.
    last: u64,
    /// Connections it made (1 + reconnects).
    connections: u32,
    /// For each reconnect, the time from losing its socket to having
    /// re-subscribed through the balancer.
    outages: Vec<Duration>,
    /// Frames that broke a rule (an ERROR, a version going back), to report.
    violations: Vec<String>,
}

fn haproxy_config(front: SocketAddr, replicas: &[String]) -> String {
    let mut cfg = format!(
        "{HAPROXY_DEFAULTS}  option redispatch\n  retries 3\n\
         frontend front\n  bind {front}\n  default_backend kubemux\n\
         backend kubemux\n  balance roundrobin\n  option httpchk GET /readyz\n"
    );
    for (i, addr) in replicas.iter().enumerate() {
        cfg.push_str(&format!(
            "  server r{i} {addr} check inter 300ms fall 1 rise 1\n"
        ));
    }
    cfg
}

async fn spawn_replica(kubeconfig: &std::path::Path, ip: &str) -> Process {
    spawn_kubemux(
        &[
            "serve",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--listen",
            &format!("{ip}:0"),
            "--auth",
            "none",
            "--linger",
            "1s",
        ],
        &[],
    )
    .await
}

/// A Headlamp-style client: LIST through the balancer, then REQUEST from the
/// list's version; whenever its socket ends, reconnect through the balancer
/// and REQUEST from the newest version it applied.
async fn client(
    front: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let body = loop {
        let body = http_get_body(front, &format!("/clusters/{CLUSTER}{PATH}")).await;
        if body.starts_with('{') {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let list: Value = serde_json::from_str(&body).unwrap();
    {
        let mut s = seen.lock();
        for item in list["items"].as_array().unwrap() {
            s.applied.apply(&json!({"type": "ADDED", "object": item}));
        }
        s.last = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
    }
    let mut lost: Option<tokio::time::Instant> = None;
    while !*stop.borrow() {
        let Ok(mut ws) = WsConnect::new(&format!("ws://{front}/wsMultiplexer"))
            .open()
            .await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let query = {
            let mut s = seen.lock();
            s.connections += 1;
            if let Some(at) = lost.take() {
                s.outages.push(at.elapsed());
            }
            format!("watch=1&resourceVersion={}", s.last)
        };
        let request =
            json!({"clusterId": CLUSTER, "path": PATH, "query": query, "type": "REQUEST"});
        if ws.send(Message::text(request.to_string())).await.is_err() {
            continue;
        }
        let mut stop = stop.clone();
        loop {
            let msg = tokio::select! {
                msg = ws.next() => msg,
                _ = stop.changed() => break,
            };
            let Some(Ok(Message::Text(text))) = msg else {
                break;
            };
            let frame: Value = serde_json::from_str(&text).unwrap();
            let mut s = seen.lock();
            match frame["type"].as_str().unwrap() {
                "DATA" => {
                    let ev: Value = serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
                    if ev["type"] == "ERROR" {
                        s.violations.push(format!("in-band error: {ev}"));
                        continue;
                    }
                    let rv: u64 = ev["object"]["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    if ev["type"] == "BOOKMARK" {
                        s.last = s.last.max(rv);
                        continue;
                    }
                    if rv <= s.last {
                        let last = s.last;
                        s.violations
                            .push(format!("event {rv} after {last}: twice or out of order"));
                    }
                    s.last = rv;
                    s.applied.apply(&ev);
                }
                // A replica shutting down completes its subscriptions; the
                // socket close that follows makes the client move on.
                "COMPLETE" => {}
                other => s.violations.push(format!("{other} frame: {frame}")),
            }
        }
        lost = Some(tokio::time::Instant::now());
    }
}

/// A dashboard client's pods (`namespace/name`) and how often it connected.
type Board = Arc<Mutex<(BTreeMap<String, ()>, u32)>>;

/// A seed-001-style dashboard client: `/ws/dashboard` through the balancer;
/// its pods are the last `initial_state`'s plus the `pod_event`s since
/// (also inside `batch` frames). When its socket ends it waits a second and
/// reconnects, as the seed's client does, and starts over from the new
/// `initial_state`.
async fn dashboard(front: SocketAddr, pods: Board, stop: tokio::sync::watch::Receiver<bool>) {
    fn apply(pods: &mut BTreeMap<String, ()>, msg: &Value) {
        let key = |d: &Value| {
            format!(
                "{}/{}",
                d["namespace"].as_str().unwrap_or(""),
                d["name"].as_str().unwrap_or("")
            )
        };
        match msg["type"].as_str() {
            Some("initial_state") => {
                pods.clear();
                for p in msg["data"]["pods"].as_array().into_iter().flatten() {
                    pods.insert(key(p), ());
                }
            }
            Some("pod_event") if msg["action"] == "DELETED" => {
                pods.remove(&key(&msg["data"]));
            }
            Some("pod_event") => {
                pods.insert(key(&msg["data"]), ());
            }
            Some("batch") => {
                for ev in msg["events"].as_array().into_iter().flatten() {
                    apply(pods, ev);
                }
            }
            _ => {}
        }
    }
    while !*stop.borrow() {
        let url = format!("ws://{front}/ws/dashboard?cluster={CLUSTER}");
        let Ok(mut ws) = WsConnect::new(&url).open().await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        pods.lock().1 += 1;
        let mut stop = stop.clone();
        loop {
            let msg = tokio::select! {
                msg = ws.next() => msg,
                _ = stop.changed() => return,
            };
            match msg {
                Some(Ok(Message::Text(text))) => {
                    let msg: Value = serde_json::from_str(&text).unwrap();
                    apply(&mut pods.lock().0, &msg);
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn pods(sim: &SimServer) -> BTreeMap<String, String> {
    let (objects, _) = sim.store().list("pods", None, None, None).unwrap();
    versions_of(&objects)
}

/// Waits until every client's state equals the simulator's; returns how long it took.
async fn whole(sim: &SimServer, clients: &[Arc<Mutex<Seen>>], what: &str) -> Duration {
    let started = tokio::time::Instant::now();
    eventually(what, || {
        let want = pods(sim);
        clients.iter().all(|c| c.lock().applied.versions() == want)
    })
    .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_fail_over_between_replicas_behind_haproxy_exactly() {
    let sim = SimServer::start(SimConfig {
        churn_rate: 20.0,
        initial_pods: 40,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("kubemux-replicas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    write_kubeconfig(&kubeconfig, &[(CLUSTER, &sim)]);
    let mut replicas = Vec::new();
    for ip in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        replicas.push(Some(spawn_replica(&kubeconfig, ip).await));
    }
    let addrs: Vec<String> = replicas
        .iter()
        .map(|r| r.as_ref().unwrap().addr.clone())
        .collect();
    let front = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut haproxy = start_haproxy(&haproxy_config(front, &addrs), front).await;

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let seen: Vec<Arc<Mutex<Seen>>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let tasks: Vec<_> = seen
        .iter()
        .map(|s| tokio::spawn(client(front, s.clone(), stop.clone())))
        .collect();
    let boards: Vec<Board> = (0..3).map(|_| Arc::default()).collect();
    let board_tasks: Vec<_> = boards
        .iter()
        .map(|b| tokio::spawn(dashboard(front, b.clone(), stop.clone())))
        .collect();
    eventually("every client connected", || {
        seen.iter().all(|s| s.lock().connections >= 1) && boards.iter().all(|b| b.lock().1 >= 1)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A replica dies: its clients' sockets break, HAProxy marks it down.
    let killed = replicas[0].take().unwrap();
    let mut child = killed.child;
    child.start_kill().unwrap();
    let _ = child.wait().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // A rolling update: another replica is terminated gracefully.
    let rolled = replicas[1].take().unwrap();
    let (status, _) = rolled.terminate().await;
    assert!(status.success(), "a SIGTERM'd replica exits cleanly");
    tokio::time::sleep(Duration::from_secs(3)).await;

    sim.set_churn_rate(0.0);
    let took = whole(
        &sim,
        &seen,
        "every client equals the simulator after the failovers",
    )
    .await;
    eventually("every dashboard shows the simulator's pods", || {
        let want: BTreeMap<String, ()> = pods(&sim).into_keys().map(|k| (k, ())).collect();
        boards.iter().all(|b| b.lock().0 == want)
    })
    .await;
    let _ = stop_tx.send(true);
    for t in tasks.into_iter().chain(board_tasks) {
        let _ = t.await;
    }
    let reconnects: u32 = seen.iter().map(|s| s.lock().connections - 1).sum();
    let longest = seen
        .iter()
        .filter_map(|s| s.lock().outages.iter().max().copied())
        .max()
        .unwrap_or_default();
    for (i, s) in seen.iter().enumerate() {
        let s = s.lock();
        assert!(s.violations.is_empty(), "client {i}: {:?}", s.violations);
    }
    assert!(
        reconnects > 0,
        "the killed and the rolled replica had clients, and they moved"
    );
    let board_reconnects: u32 = boards.iter().map(|b| b.lock().1 - 1).sum();
    println!(
        "failover: {CLIENTS} clients, {reconnects} reconnects ({board_reconnects} more by the 3 dashboards), longest time without a subscription {longest:?}, every client equal to the simulator {took:?} after the churn stopped"
    );
    let _ = haproxy.start_kill();
    let _ = std::fs::remove_dir_all(&dir);
}
