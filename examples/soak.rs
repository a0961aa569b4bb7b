//! Soak run for kubemux: holds many subscriptions over many WebSocket
//! connections against churn for a long time and samples the proxy's
//! resources, so a leak (memory, file descriptors, tasks, queued bytes) shows
//! up as a slope instead of hiding inside one short benchmark.
//!
//! ```sh
//! cargo build --release --bin kubemux --example soak
//! target/release/examples/soak --bin target/release/kubemux --duration 3600 --interval 10
//! ```
//!
//! The simulated API server and the proxy run as separate processes (as in
//! `loadgen`). Every subscription watches `/api/v1/pods` with a label
//! selector matching every pod, spread over `--keys` distinct keys. Clients
//! also reconnect now and then (`--reconnect-mean`), resuming every
//! subscription from its last resourceVersion, so connection setup and
//! teardown are soaked too; a subscription that ends (`COMPLETE`, e.g. a 410
//! on resume) is requested again from scratch, so the count stays constant.
//!
//! Output: one CSV row per sample on stdout, then a summary of the RSS, fd
//! and task curves (first, last, min, max, drift) over the held period.

mod shared;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use shared::{
    Proc, cpu_seconds, event_resource_version, find, http, metric, metric_with, rss_bytes, scrape,
    spawn, spawn_proxy, wait_until, ws_connect,
};

/// Soak run for kubemux (see the module documentation).
#[derive(Parser, Debug, Clone)]
#[command(name = "soak")]
struct Args {
    /// The kubemux binary (runs `sim` and `serve`).
    #[arg(long, default_value = "target/release/kubemux")]
    bin: PathBuf,
    /// WebSocket connections.
    #[arg(long, short = 'm', default_value_t = 1000)]
    connections: usize,
    /// Subscriptions per connection.
    #[arg(long, short = 'k', default_value_t = 10)]
    subs: usize,
    /// Distinct watch keys the subscriptions are spread over.
    #[arg(long, short = 'd', default_value_t = 100)]
    keys: usize,
    /// Churn: object changes per second in the simulated cluster.
    #[arg(long, short = 'r', default_value_t = 2.0)]
    rate: f64,
    /// Size of churned objects in bytes.
    #[arg(long, default_value_t = 1024)]
    object_size: usize,
    /// Seconds to hold the subscriptions under churn.
    #[arg(long, default_value_t = 3600.0)]
    duration: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 5.0)]
    interval: f64,
    /// Mean seconds between reconnects of one connection (0: never reconnect).
    #[arg(long, default_value_t = 600.0)]
    reconnect_mean: f64,
    /// Seed of the reconnect schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Pin the proxy to this CPU (`taskset -c`).
    #[arg(long)]
    proxy_cpu: Option<String>,
    /// Pin the simulated server to this CPU.
    #[arg(long)]
    sim_cpu: Option<String>,
    /// Connections opened at once.
    #[arg(long, default_value_t = 64)]
    connect_parallelism: usize,
}

/// Counters the clients share with the sampler.
#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    /// Subscriptions that have received at least one event since they were first requested.
    held: AtomicU64,
    frames: AtomicU64,
    reconnects: AtomicU64,
    /// Connections the proxy closed on us.
    dropped: AtomicU64,
    /// Subscriptions that ended with COMPLETE and were requested again.
    rerequested: AtomicU64,
    slow_cuts: AtomicU64,
    connect_failures: AtomicU64,
}

struct Sub {
    query: String,
    last_rv: u64,
    held: bool,
}

impl Sub {
    fn request(&self, cluster: &str) -> Message {
        let query = if self.last_rv > 0 {
            format!("{}&resourceVersion={}", self.query, self.last_rv)
        } else {
            self.query.clone()
        };
        let msg = json!({"clusterId": cluster, "path": "/api/v1/pods", "query": query,
                         "userId": "", "type": "REQUEST"});
        Message::text(msg.to_string())
    }
}

/// The subscription index echoed in a frame's query (`limit=N`; `limit` is
/// ignored for watches, it only keeps one connection's subscriptions distinct).
fn sub_index(frame: &[u8], subs: usize) -> Option<usize> {
    let at = find(frame, b"limit=")? + 6;
    let n = frame[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0usize, |n, d| {
            n.saturating_mul(10).saturating_add(usize::from(d - b'0'))
        });
    (n < subs).then_some(n)
}

async fn client(
    c: usize,
    args: Arc<Args>,
    proxy: SocketAddr,
    counters: Arc<Counters>,
    gate: Arc<tokio::sync::Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = StdRng::seed_from_u64(args.seed ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut subs: Vec<Sub> = (0..args.subs)
        .map(|j| {
            let key = (c * args.subs + j) % args.keys;
            Sub {
                query: format!("watch=1&labelSelector=lg-key%21%3D{key}&limit={j}"),
                last_rv: 0,
                held: false,
            }
        })
        .collect();
    let mut first = true;
    loop {
        let permit = gate.acquire().await;
        let Ok(mut ws) = ws_connect(proxy, None, |tcp| tcp).await else {
            counters.connect_failures.fetch_add(1, Ordering::Relaxed);
            return;
        };
        drop(permit);
        if first {
            counters.connected.fetch_add(1, Ordering::Relaxed);
            first = false;
        }
        for s in &subs {
            if ws.send(s.request("sim")).await.is_err() {
                break;
            }
        }
        let lifetime = if args.reconnect_mean > 0.0 {
            // Exponential inter-arrival times: reconnects spread evenly over the run.
            let u: f64 = rng.random_range(f64::EPSILON..1.0);
            Duration::from_secs_f64(-u.ln() * args.reconnect_mean)
        } else {
            // Never within any run.
            Duration::from_secs(365 * 86_400)
        };
        let reconnect_at = tokio::time::Instant::now() + lifetime;
        loop {
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        let frame = text.as_bytes();
                        let Some(i) = sub_index(frame, subs.len()) else { continue };
                        let tail = &frame[frame.len().saturating_sub(24)..];
                        if find(tail, b"\"DATA\"").is_some() {
                            counters.frames.fetch_add(1, Ordering::Relaxed);
                            if let Some(rv) = event_resource_version(frame) {
                                subs[i].last_rv = subs[i].last_rv.max(rv);
                            }
                            if !subs[i].held {
                                subs[i].held = true;
                                counters.held.fetch_add(1, Ordering::Relaxed);
                            }
                        } else if find(tail, b"\"COMPLETE\"").is_some() {
                            // Ended (410 on resume, slow consumer): ask again from scratch.
                            subs[i].last_rv = 0;
                            counters.rerequested.fetch_add(1, Ordering::Relaxed);
                            if ws.send(subs[i].request("sim")).await.is_err() {
                                break;
                            }
                        } else if find(frame, b"slow consumer").is_some() {
                            counters.slow_cuts.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                },
                () = tokio::time::sleep_until(reconnect_at) => {
                    let _ = ws.close(None).await;
                    break;
                }
                _ = stop.changed() => {
                    let _ = ws.close(None).await;
                    return;
                }
            }
        }
        counters.reconnects.fetch_add(1, Ordering::Relaxed);
    }
}

/// Open file descriptors of a process.
fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// One sample of the proxy.
struct Sample {
    secs: f64,
    rss_mib: f64,
    fds: u64,
    tasks: f64,
    queue_bytes: f64,
}

/// First, last, min, max of a curve, and last − first.
fn curve(name: &str, unit: &str, values: &[f64]) {
    let (Some(first), Some(last)) = (values.first(), values.last()) else {
        return;
    };
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    println!(
        "{name:<12} first {first:>10.1}  last {last:>10.1}  min {min:>10.1}  max {max:>10.1}  drift {:>+9.1} {unit} ({:+.1} %)",
        last - first,
        if *first != 0.0 {
            (last - first) / first * 100.0
        } else {
            0.0
        }
    );
}

async fn run(args: Arc<Args>) -> Result<()> {
    let kubeconfig = std::env::temp_dir().join(format!("soak-{}-kubeconfig", std::process::id()));
    let kubeconfig_arg = kubeconfig.to_string_lossy().into_owned();
    let sim_args: Vec<String> = [
        "sim",
        "--listen",
        "127.0.0.1:0",
        "--context",
        "sim",
        "--kubeconfig-out",
        &kubeconfig_arg,
        "--object-size",
        &args.object_size.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (sim_proc, sim) = spawn(
        "sim",
        &args.bin,
        &sim_args,
        args.sim_cpu.as_deref(),
        "listening on",
    )?;
    let (proxy_proc, proxy) = spawn_proxy(&args.bin, &kubeconfig, args.proxy_cpu.as_deref())?;
    let procs: [Proc; 2] = [sim_proc, proxy_proc];
    let pid = procs[1].pid();
    http(sim, "POST", "/_sim/churn?rate=0").await?;
    scrape(proxy).await.context("proxy metrics")?;

    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let gate = Arc::new(tokio::sync::Semaphore::new(args.connect_parallelism.max(1)));
    let total = (args.connections * args.subs) as u64;
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.connections)
        .map(|c| {
            tokio::spawn(client(
                c,
                args.clone(),
                proxy,
                counters.clone(),
                gate.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    wait_until(
        "every subscription's first event",
        Duration::from_secs(300),
        || {
            counters.held.load(Ordering::Relaxed) >= total
                || counters.connect_failures.load(Ordering::Relaxed) > 0
        },
    )
    .await?;
    if counters.connect_failures.load(Ordering::Relaxed) > 0 {
        bail!("some connections could not be opened");
    }
    eprintln!(
        "soak: {} connections, {} subscriptions held after {:.1} s; churn {} events/s for {} s",
        args.connections,
        total,
        started.elapsed().as_secs_f64(),
        args.rate,
        args.duration
    );
    http(sim, "POST", &format!("/_sim/churn?rate={}", args.rate)).await?;

    println!(
        "secs,rss_mib,queue_bytes,open_fds,tasks,connections,subscribers,upstream_watches,frames_per_sec,proxy_cpu_pct,reconnects,rerequested,slow_cuts,dropped"
    );
    let t0 = Instant::now();
    let interval = Duration::from_secs_f64(args.interval.max(0.5));
    let mut samples: Vec<Sample> = Vec::new();
    let mut last_frames = counters.frames.load(Ordering::Relaxed);
    let mut last_cpu = cpu_seconds(pid);
    let mut last_t = Instant::now();
    loop {
        let m = scrape(proxy).await.context("proxy metrics")?;
        let sim_metrics = scrape(sim).await.context("sim metrics")?;
        let now = Instant::now();
        let dt = now.duration_since(last_t).as_secs_f64().max(1e-3);
        let frames = counters.frames.load(Ordering::Relaxed);
        let cpu = cpu_seconds(pid);
        let cpu_pct = match (last_cpu, cpu) {
            (Some(a), Some(b)) => (b - a) / dt * 100.0,
            _ => f64::NAN,
        };
        let sample = Sample {
            secs: t0.elapsed().as_secs_f64(),
            rss_mib: rss_bytes(pid).map_or(f64::NAN, |b| b as f64 / (1024.0 * 1024.0)),
            fds: open_fds(pid).unwrap_or(0),
            tasks: metric(&m, "kubemux_tasks"),
            queue_bytes: metric(&m, "kubemux_queue_bytes"),
        };
        println!(
            "{:.0},{:.1},{:.0},{},{:.0},{:.0},{:.0},{:.0},{:.0},{:.1},{},{},{},{}",
            sample.secs,
            sample.rss_mib,
            sample.queue_bytes,
            sample.fds,
            sample.tasks,
            metric(&m, "kubemux_connections"),
            metric(&m, "kubemux_subscribers"),
            metric_with(&sim_metrics, "sim_active_watches", "resource=\"pods\""),
            (frames - last_frames) as f64 / dt,
            cpu_pct,
            counters.reconnects.load(Ordering::Relaxed),
            counters.rerequested.load(Ordering::Relaxed),
            metric(&m, "kubemux_slow_consumer_terminations_total"),
            counters.dropped.load(Ordering::Relaxed),
        );
        samples.push(sample);
        last_frames = frames;
        last_cpu = cpu;
        last_t = now;
        if t0.elapsed().as_secs_f64() >= args.duration {
            break;
        }
        tokio::time::sleep(interval).await;
    }
    stop_tx.send_replace(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    println!();
    println!(
        "summary: {} connections, {} subscriptions, churn {} events/s, {:.0} s held, {} samples, {} frames received, {} reconnects",
        args.connections,
        total,
        args.rate,
        t0.elapsed().as_secs_f64(),
        samples.len(),
        counters.frames.load(Ordering::Relaxed),
        counters.reconnects.load(Ordering::Relaxed),
    );
    let series = |f: fn(&Sample) -> f64| samples.iter().map(f).collect::<Vec<_>>();
    curve("rss", "MiB", &series(|s| s.rss_mib));
    curve("open fds", "", &series(|s| s.fds as f64));
    curve("tasks", "", &series(|s| s.tasks));
    curve("queue bytes", "B", &series(|s| s.queue_bytes));
    drop(procs);
    let _ = std::fs::remove_file(&kubeconfig);
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.keys == 0 || args.subs == 0 || args.connections == 0 {
        bail!("--connections, --subs and --keys must be positive");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(Arc::new(args)))
}
