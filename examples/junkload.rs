//! Junk-token load test for kubemux: many made-up bearer tokens over REST and
//! WebSocket, in `--auth passthrough` and `--auth shared`, while a
//! legitimate client keeps working; reports what the junk cost kubemux and
//! the simulated API server, and whether the legitimate client noticed.
//!
//! ```sh
//! cargo build --release --bin kubemux --example junkload
//! target/release/examples/junkload --bin target/release/kubemux
//! ```
//!
//! A run per auth mode: start the simulated server (static tokens: its
//! admin for kubemux, one legitimate user allowed to get/list/watch pods in
//! one namespace) and kubemux as child processes; start the legitimate
//! client (a REST LIST every 100 ms through kubemux, a Headlamp subscription
//! to the namespace's pods while a writer creates a pod there every 100 ms
//! directly on the simulated server) and measure it alone for a baseline;
//! take the "before" figures (kubemux's RSS, open fds, threads and tokio
//! tasks, the simulated server's fds and reviews); send the junk — every
//! even-numbered token a REST GET of `/clusters/<c>/api/v1/namespaces/<random>/pods`,
//! every odd one a `/wsMultiplexer` connection sending one REQUEST for the
//! same kind of path, each with a fresh random token, `--concurrency` in
//! flight — with a checkpoint after `--checkpoint` tokens; take the "after"
//! figures; stop the writer and check that the subscription received every
//! pod it created; with `--settle`, a last reading after that long idle.
//!
//! `--quick` is a smoke for CI: a few hundred tokens; it fails if a report
//! field is missing, a junk token was not refused as the API server would
//! (REST `401`, Headlamp `ERROR`), or the legitimate client missed an event
//! or got an error. Nothing about time is asserted.

// junkload uses a part of the helpers the other examples share.
#[allow(dead_code)]
mod shared;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use shared::{Proc, cpu_seconds, http_as, metric, rss_bytes, scrape, spawn};

/// The simulated cluster's id.
const CLUSTER: &str = "sim";
/// The legitimate user's namespace, token and name.
const LEGIT_NAMESPACE: &str = "junkload-legit";
const LEGIT_TOKEN: &str = "junkload-legit-token";
/// The simulated server's admin token (kubemux's own identity).
const ADMIN_TOKEN: &str = "junkload-admin-token";
/// The legitimate client's period, for its LISTs and the writer's pods.
const PERIOD: Duration = Duration::from_millis(100);
/// How long a junk request or a legitimate request may take before it is
/// counted as unanswered.
const PATIENCE: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum AuthMode {
    Passthrough,
    Shared,
}

impl AuthMode {
    fn name(self) -> &'static str {
        match self {
            AuthMode::Passthrough => "passthrough",
            AuthMode::Shared => "shared",
        }
    }
}

/// Junk-token load test (see the module documentation).
#[derive(Parser, Debug, Clone)]
#[command(name = "junkload")]
struct Args {
    /// The kubemux binary (runs `sim` and `serve`).
    #[arg(long, default_value = "target/release/kubemux")]
    bin: PathBuf,
    /// Auth modes to run, one after the other.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [AuthMode::Passthrough, AuthMode::Shared])]
    auth: Vec<AuthMode>,
    /// Junk tokens to send (half REST, half WebSocket).
    #[arg(long, default_value_t = 20_000)]
    tokens: usize,
    /// Report the figures once this many junk tokens are done.
    #[arg(long, default_value_t = 2_000)]
    checkpoint: usize,
    /// Junk requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds the legitimate client runs alone before the junk, its baseline.
    #[arg(long, default_value_t = 5.0)]
    baseline: f64,
    /// Seconds to wait idle after the junk before a last reading (0: none),
    /// to see what kubemux gives back (the upstream pool closes idle
    /// connections after 90 s).
    #[arg(long, default_value_t = 0.0)]
    settle: f64,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// CI smoke: 300 tokens (checkpoint at 100), 16 in flight, 1 s baseline;
    /// exits non-zero if a field is missing or a refusal or event is wrong.
    #[arg(long)]
    quick: bool,
}

fn random_string(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A namespace-shaped random name (lowercase, starts with a letter).
fn random_namespace() -> String {
    format!("ns-{}", random_string(12).to_ascii_lowercase())
}

// ---------------------------------------------------------------- figures

/// One reading of the processes.
#[derive(Clone, Copy, Debug, Default)]
struct Snapshot {
    rss: u64,
    fds: u64,
    threads: u64,
    tasks: f64,
    sim_fds: u64,
    cpu: f64,
    sim_cpu: f64,
    sim_reviews: f64,
    sim_requests: f64,
}

/// Open file descriptors of a process (entries of `/proc/PID/fd`).
fn fd_count(pid: u32) -> Result<u64> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("reading /proc/{pid}/fd"))?
        .count() as u64)
}

/// Threads of a process (`Threads:` in `/proc/PID/status`).
fn thread_count(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .context("no Threads: in /proc/PID/status")
}

async fn snapshot(kubemux: (u32, SocketAddr), sim: (u32, SocketAddr)) -> Result<Snapshot> {
    let proxy_metrics = scrape(kubemux.1).await.context("kubemux metrics")?;
    let sim_metrics = scrape(sim.1).await.context("simulator metrics")?;
    Ok(Snapshot {
        rss: rss_bytes(kubemux.0).context("kubemux RSS")?,
        fds: fd_count(kubemux.0)?,
        threads: thread_count(kubemux.0)?,
        tasks: metric(&proxy_metrics, "kubemux_tasks"),
        sim_fds: fd_count(sim.0)?,
        cpu: cpu_seconds(kubemux.0).context("kubemux CPU time")?,
        sim_cpu: cpu_seconds(sim.0).context("simulator CPU time")?,
        sim_reviews: metric(&sim_metrics, "sim_review_requests_total"),
        sim_requests: metric(&sim_metrics, "sim_requests_total"),
    })
}

/// Latencies in µs → (p50, p99, max) in ms.
fn latency_ms(mut samples: Vec<u64>) -> (Value, Value, Value) {
    if samples.is_empty() {
        return (Value::Null, Value::Null, Value::Null);
    }
    samples.sort_unstable();
    let at = |p: f64| {
        let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
        round(samples[i] as f64 / 1000.0, 2)
    };
    (at(0.5), at(0.99), at(1.0))
}

fn round(x: f64, digits: i32) -> Value {
    if !x.is_finite() {
        return Value::Null;
    }
    let m = 10f64.powi(digits);
    json!((x * m).round() / m)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

// ---------------------------------------------------------------- junk

/// How the junk was answered.
#[derive(Default)]
struct JunkTally {
    /// REST status → count (0: no answer within [`PATIENCE`] or a socket error).
    rest: Mutex<BTreeMap<u16, u64>>,
    /// WebSocket outcome → count.
    ws: Mutex<BTreeMap<&'static str, u64>>,
    done: AtomicUsize,
}

impl JunkTally {
    fn ws_outcome(&self, outcome: &'static str) {
        *self.ws.lock().entry(outcome).or_default() += 1;
    }
}

async fn junk_rest(proxy: SocketAddr, tally: &JunkTally) {
    let path = format!(
        "/clusters/{CLUSTER}/api/v1/namespaces/{}/pods",
        random_namespace()
    );
    let status = match tokio::time::timeout(
        PATIENCE,
        http_as(proxy, "GET", &path, &random_string(40), ""),
    )
    .await
    {
        Ok(Ok((status, _))) => status,
        _ => 0,
    };
    *tally.rest.lock().entry(status).or_default() += 1;
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A `/wsMultiplexer` connection presenting `token` as a bearer token.
async fn ws_with_token(proxy: SocketAddr, token: &str) -> Result<Ws> {
    let mut request = format!("ws://{proxy}/wsMultiplexer").into_client_request()?;
    request.headers_mut().insert(
        tokio_tungstenite::tungstenite::http::header::AUTHORIZATION,
        format!("Bearer {token}").parse()?,
    );
    let (ws, _) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(request))
        .await
        .context("connecting timed out")??;
    Ok(ws)
}

fn request_message(path: &str) -> Message {
    Message::text(
        json!({"clusterId": CLUSTER, "path": path, "query": "watch=1",
               "userId": "junkload", "type": "REQUEST"})
        .to_string(),
    )
}

/// One WebSocket with a junk token: connect, send a REQUEST, wait for the
/// answer (an ERROR frame, as the API server's 401 in Headlamp's terms).
async fn junk_ws(proxy: SocketAddr, tally: &JunkTally) {
    let mut ws = match ws_with_token(proxy, &random_string(40)).await {
        Ok(ws) => ws,
        Err(e) => {
            tally.ws_outcome(
                match e.downcast_ref::<tokio_tungstenite::tungstenite::Error>() {
                    Some(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 401 => {
                        "upgrade refused 401"
                    }
                    Some(tokio_tungstenite::tungstenite::Error::Http(_)) => {
                        "upgrade refused, other"
                    }
                    _ => "connect failed",
                },
            );
            return;
        }
    };
    let path = format!("/api/v1/namespaces/{}/pods", random_namespace());
    if ws.send(request_message(&path)).await.is_err() {
        tally.ws_outcome("closed before REQUEST");
        return;
    }
    let outcome = match tokio::time::timeout(PATIENCE, ws.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => {
            match serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|f| f["type"].as_str().map(str::to_owned))
                .as_deref()
            {
                Some("ERROR") => "ERROR",
                Some("DATA") => "DATA (served!)",
                _ => "other frame",
            }
        }
        Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => "closed",
        Ok(Some(Ok(_))) => "other frame",
        Err(_) => "no answer",
    };
    tally.ws_outcome(outcome);
    let _ = ws.close(None).await;
}

/// Sends junk tokens `from..to`, `concurrency` at a time.
async fn junk(
    proxy: SocketAddr,
    tally: Arc<JunkTally>,
    from: usize,
    to: usize,
    concurrency: usize,
) {
    futures::stream::iter(from..to)
        .for_each_concurrent(concurrency.max(1), |i| {
            let tally = tally.clone();
            async move {
                if i % 2 == 0 {
                    junk_rest(proxy, &tally).await;
                } else {
                    junk_ws(proxy, &tally).await;
                }
                tally.done.fetch_add(1, Ordering::Relaxed);
            }
        })
        .await;
}

// ---------------------------------------------------------------- the legitimate client

/// What the legitimate client saw, split into the baseline (0) and the
/// junk phase (1).
#[derive(Default)]
struct Legit {
    phase: AtomicUsize,
    stop: AtomicBool,
    /// REST LIST latencies, µs.
    rest: Mutex<[Vec<u64>; 2]>,
    rest_failures: [AtomicU64; 2],
    /// Event latencies (pod created on the simulator → its ADDED through kubemux), µs.
    events: Mutex<[Vec<u64>; 2]>,
    ws_errors: AtomicU64,
    /// Pods created by the writer, with when.
    created: Mutex<HashMap<String, (Instant, usize)>>,
    /// Pods whose ADDED arrived.
    seen: Mutex<HashSet<String>>,
}

fn pod(name: &str) -> String {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": LEGIT_NAMESPACE},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    .to_string()
}

async fn create_pod(sim: SocketAddr, name: &str) -> Result<()> {
    let (status, body) = http_as(
        sim,
        "POST",
        &format!("/api/v1/namespaces/{LEGIT_NAMESPACE}/pods"),
        ADMIN_TOKEN,
        &pod(name),
    )
    .await?;
    if status != 201 {
        bail!("creating pod {name} answered {status}: {body}");
    }
    Ok(())
}

/// A REST LIST through kubemux every [`PERIOD`].
async fn legit_rest(proxy: SocketAddr, legit: Arc<Legit>) {
    let path = format!("/clusters/{CLUSTER}/api/v1/namespaces/{LEGIT_NAMESPACE}/pods");
    let mut tick = tokio::time::interval(PERIOD);
    while !legit.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let phase = legit.phase.load(Ordering::Relaxed);
        let t = Instant::now();
        let answer =
            tokio::time::timeout(PATIENCE, http_as(proxy, "GET", &path, LEGIT_TOKEN, "")).await;
        let took = t.elapsed().as_micros() as u64;
        match answer {
            Ok(Ok((200, body))) if body.contains("\"PodList\"") => {
                legit.rest.lock()[phase].push(took)
            }
            _ => {
                legit.rest_failures[phase].fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Creates a pod every [`PERIOD`] directly on the simulated server.
async fn legit_writer(sim: SocketAddr, legit: Arc<Legit>) -> Result<()> {
    let mut tick = tokio::time::interval(PERIOD);
    for i in 1.. {
        tick.tick().await;
        if legit.stop.load(Ordering::Relaxed) {
            break;
        }
        let name = format!("legit-{i}");
        let phase = legit.phase.load(Ordering::Relaxed);
        legit
            .created
            .lock()
            .insert(name.clone(), (Instant::now(), phase));
        create_pod(sim, &name).await?;
    }
    Ok(())
}

/// The name of the pod an ADDED event in a Headlamp DATA frame is about.
fn added_pod(frame: &Value) -> Option<String> {
    let event: Value = serde_json::from_str(frame["data"].as_str()?).ok()?;
    (event["type"] == "ADDED").then(|| {
        event["object"]["metadata"]["name"]
            .as_str()
            .map(str::to_owned)
    })?
}

/// The Headlamp subscription: records every ADDED pod and its latency.
/// Returns once `legit-0` (created before the call) has arrived, with the
/// task reading the rest.
async fn legit_subscription(
    proxy: SocketAddr,
    legit: Arc<Legit>,
) -> Result<tokio::task::JoinHandle<()>> {
    let mut ws = ws_with_token(proxy, LEGIT_TOKEN).await?;
    ws.send(request_message(&format!(
        "/api/v1/namespaces/{LEGIT_NAMESPACE}/pods"
    )))
    .await?;
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut started = Some(started_tx);
        while let Some(Ok(msg)) = ws.next().await {
            let Message::Text(text) = msg else { continue };
            let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                legit.ws_errors.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if frame["type"] != "DATA" {
                legit.ws_errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Some(name) = added_pod(&frame) else {
                continue;
            };
            if name == "legit-0" {
                if let Some(tx) = started.take() {
                    let _ = tx.send(());
                }
                continue;
            }
            let created = legit.created.lock().get(&name).copied();
            if let Some((at, phase)) = created {
                legit.events.lock()[phase].push(at.elapsed().as_micros() as u64);
            }
            legit.seen.lock().insert(name);
        }
    });
    tokio::time::timeout(PATIENCE, started_rx)
        .await
        .context("the legitimate subscription did not receive its first pod")?
        .context("the legitimate subscription ended before its first pod")?;
    Ok(task)
}

// ---------------------------------------------------------------- a run

#[derive(Default)]
struct Report {
    fields: BTreeMap<&'static str, Value>,
}

impl Report {
    fn set(&mut self, k: &'static str, v: impl Into<Value>) {
        self.fields.insert(k, v.into());
    }

    /// The figures of `s` under `keys` (RSS, fds, threads, tasks, simulator fds).
    fn figures(&mut self, keys: [&'static str; 5], s: &Snapshot) {
        let [rss, fds, threads, tasks, sim_fds] = keys;
        self.set(rss, round(mib(s.rss), 1));
        self.set(fds, s.fds);
        self.set(threads, s.threads);
        self.set(tasks, s.tasks);
        self.set(sim_fds, s.sim_fds);
    }

    /// kubemux's RSS and fds growth from `base` to `s` under `keys`.
    fn growth(&mut self, keys: [&'static str; 2], s: &Snapshot, base: &Snapshot) {
        self.set(keys[0], round(mib(s.rss) - mib(base.rss), 1));
        self.set(keys[1], s.fds as i64 - base.fds as i64);
    }
}

/// Every report field, with its label for the table.
const FIELDS: &[(&str, &str)] = &[
    ("auth", "auth mode"),
    ("tokens", "junk tokens (half REST, half WebSocket)"),
    ("concurrency", "junk in flight"),
    ("junk_secs", "junk phase, s"),
    ("junk_per_sec", "junk tokens/s"),
    ("before_rss_mib", "before: kubemux RSS, MiB"),
    ("before_fds", "before: kubemux fds"),
    ("before_threads", "before: kubemux threads"),
    ("before_tasks", "before: kubemux tokio tasks"),
    ("before_sim_fds", "before: simulator fds"),
    ("checkpoint", "checkpoint: junk tokens"),
    ("checkpoint_rss_mib", "checkpoint: kubemux RSS, MiB"),
    ("checkpoint_rss_growth_mib", "checkpoint: RSS growth, MiB"),
    ("checkpoint_fds", "checkpoint: kubemux fds"),
    ("checkpoint_fds_growth", "checkpoint: fds growth"),
    ("checkpoint_threads", "checkpoint: kubemux threads"),
    ("checkpoint_tasks", "checkpoint: kubemux tokio tasks"),
    ("checkpoint_sim_fds", "checkpoint: simulator fds"),
    ("after_rss_mib", "after: kubemux RSS, MiB"),
    ("after_rss_growth_mib", "after: RSS growth, MiB"),
    ("after_fds", "after: kubemux fds"),
    ("after_fds_growth", "after: fds growth"),
    ("after_threads", "after: kubemux threads"),
    ("after_tasks", "after: kubemux tokio tasks"),
    ("after_sim_fds", "after: simulator fds"),
    ("cpu_ms_per_token", "kubemux CPU per junk token, ms"),
    ("sim_cpu_ms_per_token", "simulator CPU per junk token, ms"),
    ("settled_rss_growth_mib", "settled: RSS growth, MiB"),
    ("settled_fds_growth", "settled: fds growth"),
    ("settled_tasks", "settled: kubemux tokio tasks"),
    ("settled_sim_fds", "settled: simulator fds"),
    ("sim_reviews_per_token", "simulator reviews per junk token"),
    (
        "sim_requests_per_token",
        "simulator resource requests per junk token",
    ),
    ("junk_rest", "junk REST answers (status: count)"),
    ("junk_ws", "junk WebSocket outcomes"),
    ("legit_rest_baseline_p50_ms", "legit LIST alone, p50 ms"),
    ("legit_rest_baseline_p99_ms", "legit LIST alone, p99 ms"),
    ("legit_rest_baseline_max_ms", "legit LIST alone, max ms"),
    ("legit_rest_p50_ms", "legit LIST under junk, p50 ms"),
    ("legit_rest_p99_ms", "legit LIST under junk, p99 ms"),
    ("legit_rest_max_ms", "legit LIST under junk, max ms"),
    ("legit_rest_lists", "legit LISTs under junk, answered 200"),
    ("legit_rest_failures", "legit LISTs failed (both phases)"),
    ("legit_event_baseline_p50_ms", "legit event alone, p50 ms"),
    ("legit_event_baseline_p99_ms", "legit event alone, p99 ms"),
    ("legit_event_baseline_max_ms", "legit event alone, max ms"),
    ("legit_event_p50_ms", "legit event under junk, p50 ms"),
    ("legit_event_p99_ms", "legit event under junk, p99 ms"),
    ("legit_event_max_ms", "legit event under junk, max ms"),
    ("legit_events_expected", "legit events expected"),
    ("legit_events_missed", "legit events missed"),
    ("legit_ws_errors", "legit subscription ERROR/other frames"),
];

fn write_auth_file(path: &std::path::Path) -> Result<()> {
    let auth = json!({
        "adminToken": ADMIN_TOKEN,
        "tokens": {LEGIT_TOKEN: {"username": "legit", "uid": "uid-legit", "groups": ["legit"]}},
        "rules": [{"users": ["legit"], "verbs": ["get", "list", "watch"],
                   "resources": ["pods"], "namespaces": [LEGIT_NAMESPACE]}],
    });
    std::fs::write(path, auth.to_string()).context("writing the simulator's auth file")
}

async fn run(args: &Args, mode: AuthMode) -> Result<Report> {
    let mut report = Report::default();
    report.set("auth", mode.name());
    report.set("tokens", args.tokens);
    report.set("concurrency", args.concurrency);
    let tmp = std::env::temp_dir();
    let id = std::process::id();
    let kubeconfig = tmp.join(format!("junkload-{id}-kubeconfig"));
    let auth_file = tmp.join(format!("junkload-{id}-auth.json"));
    write_auth_file(&auth_file)?;
    let path_arg = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let sim_args: Vec<String> = vec![
        "sim".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--context".into(),
        CLUSTER.into(),
        "--kubeconfig-out".into(),
        path_arg(&kubeconfig),
        "--auth-file".into(),
        path_arg(&auth_file),
    ];
    let (sim_proc, sim) = spawn("sim", &args.bin, &sim_args, None, "listening on")?;
    let proxy_args: Vec<String> = vec![
        "serve".into(),
        "--kubeconfig".into(),
        path_arg(&kubeconfig),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--auth".into(),
        mode.name().into(),
        // Every junk token comes from 127.0.0.1, as does the legitimate
        // client: the REST rate limit is raised out of the way so each junk
        // request reaches the identity path, the costly case this measures
        // (with the default, junk beyond the burst is answered 429 at once).
        "--rest-rate".into(),
        "100000".into(),
        "--rest-burst".into(),
        "1000000".into(),
    ];
    let (proxy_proc, proxy) = spawn(
        "kubemux",
        &args.bin,
        &proxy_args,
        None,
        "kubemux listening on",
    )?;
    let procs: [Proc; 2] = [proxy_proc, sim_proc];
    let kubemux = (procs[0].pid(), proxy);
    let sim_at = (procs[1].pid(), sim);

    // The legitimate client, alone for its baseline.
    let (status, body) = http_as(
        sim,
        "POST",
        "/api/v1/namespaces",
        ADMIN_TOKEN,
        &json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": LEGIT_NAMESPACE}})
        .to_string(),
    )
    .await?;
    if status != 201 {
        bail!("creating namespace {LEGIT_NAMESPACE} answered {status}: {body}");
    }
    create_pod(sim, "legit-0").await?;
    let legit = Arc::new(Legit::default());
    let reader = legit_subscription(proxy, legit.clone()).await?;
    let writer = tokio::spawn(legit_writer(sim, legit.clone()));
    let lister = tokio::spawn(legit_rest(proxy, legit.clone()));
    tokio::time::sleep(Duration::from_secs_f64(args.baseline)).await;
    let before = snapshot(kubemux, sim_at).await?;
    report.figures(
        [
            "before_rss_mib",
            "before_fds",
            "before_threads",
            "before_tasks",
            "before_sim_fds",
        ],
        &before,
    );

    // The junk, with a checkpoint.
    legit.phase.store(1, Ordering::Relaxed);
    let tally = Arc::new(JunkTally::default());
    let checkpoint = args.checkpoint.min(args.tokens);
    let t0 = Instant::now();
    junk(proxy, tally.clone(), 0, checkpoint, args.concurrency).await;
    let at_checkpoint = snapshot(kubemux, sim_at).await?;
    report.set("checkpoint", checkpoint);
    report.figures(
        [
            "checkpoint_rss_mib",
            "checkpoint_fds",
            "checkpoint_threads",
            "checkpoint_tasks",
            "checkpoint_sim_fds",
        ],
        &at_checkpoint,
    );
    report.growth(
        ["checkpoint_rss_growth_mib", "checkpoint_fds_growth"],
        &at_checkpoint,
        &before,
    );
    junk(
        proxy,
        tally.clone(),
        checkpoint,
        args.tokens,
        args.concurrency,
    )
    .await;
    let junk_secs = t0.elapsed().as_secs_f64();
    let after = snapshot(kubemux, sim_at).await?;
    report.figures(
        [
            "after_rss_mib",
            "after_fds",
            "after_threads",
            "after_tasks",
            "after_sim_fds",
        ],
        &after,
    );
    report.growth(
        ["after_rss_growth_mib", "after_fds_growth"],
        &after,
        &before,
    );
    report.set("junk_secs", round(junk_secs, 1));
    report.set("junk_per_sec", round(args.tokens as f64 / junk_secs, 0));
    let per_token = |x: f64| round(x / args.tokens.max(1) as f64, 2);
    report.set(
        "cpu_ms_per_token",
        per_token((after.cpu - before.cpu) * 1000.0),
    );
    report.set(
        "sim_cpu_ms_per_token",
        per_token((after.sim_cpu - before.sim_cpu) * 1000.0),
    );
    report.set(
        "sim_reviews_per_token",
        per_token(after.sim_reviews - before.sim_reviews),
    );
    report.set(
        "sim_requests_per_token",
        per_token(after.sim_requests - before.sim_requests),
    );
    let outcomes = |m: BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    report.set(
        "junk_rest",
        outcomes(
            tally
                .rest
                .lock()
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
        ),
    );
    report.set(
        "junk_ws",
        outcomes(
            tally
                .ws
                .lock()
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
        ),
    );

    // Stop the legitimate client; every pod created must have arrived.
    legit.stop.store(true, Ordering::Relaxed);
    writer.await??;
    lister.await?;
    let expected: HashSet<String> = legit.created.lock().keys().cloned().collect();
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline && !expected.is_subset(&legit.seen.lock()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reader.abort();
    let missed = expected.difference(&legit.seen.lock()).count();
    let rest = std::mem::take(&mut *legit.rest.lock());
    let events = std::mem::take(&mut *legit.events.lock());
    report.set("legit_rest_lists", rest[1].len());
    let [rest_alone, rest_junk] = rest;
    let [events_alone, events_junk] = events;
    for (keys, samples) in [
        (
            [
                "legit_rest_baseline_p50_ms",
                "legit_rest_baseline_p99_ms",
                "legit_rest_baseline_max_ms",
            ],
            rest_alone,
        ),
        (
            [
                "legit_rest_p50_ms",
                "legit_rest_p99_ms",
                "legit_rest_max_ms",
            ],
            rest_junk,
        ),
        (
            [
                "legit_event_baseline_p50_ms",
                "legit_event_baseline_p99_ms",
                "legit_event_baseline_max_ms",
            ],
            events_alone,
        ),
        (
            [
                "legit_event_p50_ms",
                "legit_event_p99_ms",
                "legit_event_max_ms",
            ],
            events_junk,
        ),
    ] {
        let (p50, p99, max) = latency_ms(samples);
        report.set(keys[0], p50);
        report.set(keys[1], p99);
        report.set(keys[2], max);
    }
    report.set(
        "legit_rest_failures",
        legit
            .rest_failures
            .iter()
            .map(|f| f.load(Ordering::Relaxed))
            .sum::<u64>(),
    );
    report.set("legit_events_expected", expected.len());
    report.set("legit_events_missed", missed);
    report.set("legit_ws_errors", legit.ws_errors.load(Ordering::Relaxed));
    if args.settle > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
        let settled = snapshot(kubemux, sim_at).await?;
        report.growth(
            ["settled_rss_growth_mib", "settled_fds_growth"],
            &settled,
            &before,
        );
        report.set("settled_tasks", settled.tasks);
        report.set("settled_sim_fds", settled.sim_fds);
    }
    drop(procs);
    let _ = std::fs::remove_file(&kubeconfig);
    let _ = std::fs::remove_file(&auth_file);
    Ok(report)
}

/// What is wrong with a report for `--quick`: missing fields, junk not
/// refused as the API server would refuse it, a legitimate client affected.
fn problems(report: &Report, tokens: usize) -> Vec<String> {
    let mut out: Vec<String> = FIELDS
        .iter()
        .filter(|(k, _)| !k.starts_with("settled_"))
        .filter(|(k, _)| report.fields.get(k).is_none_or(Value::is_null))
        .map(|(k, _)| format!("missing {k}"))
        .collect();
    let field = |k: &str| report.fields.get(k).cloned().unwrap_or(Value::Null);
    let rest_401 = format!("401: {}", tokens.div_ceil(2));
    if field("junk_rest") != json!(rest_401) {
        out.push(format!(
            "junk REST answers {} (expected {rest_401})",
            field("junk_rest")
        ));
    }
    let ws_error = format!("ERROR: {}", tokens / 2);
    if field("junk_ws") != json!(ws_error) {
        out.push(format!(
            "junk WebSocket outcomes {} (expected {ws_error})",
            field("junk_ws")
        ));
    }
    for k in [
        "legit_rest_failures",
        "legit_events_missed",
        "legit_ws_errors",
    ] {
        if field(k) != json!(0) {
            out.push(format!("{k} = {}", field(k)));
        }
    }
    out
}

fn print_table(reports: &[Report]) {
    let width = FIELDS
        .iter()
        .map(|(_, l)| l.chars().count())
        .max()
        .unwrap_or(0);
    for (k, label) in FIELDS {
        if reports.iter().all(|r| !r.fields.contains_key(k)) {
            continue;
        }
        let mut line = format!("{label:<width$}");
        for r in reports {
            let v = match r.fields.get(k) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => "n/a".into(),
                Some(v) => v.to_string(),
            };
            line.push_str(&format!("  {v:>14}"));
        }
        println!("{line}");
    }
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.tokens = 300;
        args.checkpoint = 100;
        args.concurrency = 16;
        args.baseline = 1.0;
    }
    if args.tokens == 0 {
        bail!("--tokens must be positive");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut reports = Vec::new();
    for mode in args.auth.clone() {
        reports.push(runtime.block_on(run(&args, mode))?);
    }
    if args.json {
        let out: Vec<Value> = reports
            .iter()
            .map(|r| {
                Value::Object(
                    r.fields
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.clone()))
                        .collect(),
                )
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_table(&reports);
    }
    if args.quick {
        let mut failed = false;
        for r in &reports {
            for p in problems(r, args.tokens) {
                eprintln!("quick: {}: {p}", r.fields["auth"]);
                failed = true;
            }
        }
        if failed {
            std::process::exit(1);
        }
        eprintln!("quick: reports complete, junk refused, legitimate client unaffected");
    }
    Ok(())
}
