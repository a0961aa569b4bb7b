//! Chaos suite (issue 10): churn in the simulated API server, a seeded
//! random schedule of upstream faults (dropped watches, 410, 429 with
//! Retry-After, 500, stalls, refused connections, compaction) and client
//! behaviours (reconnect storms, Headlamp's re-subscribe, slow readers,
//! abrupt disconnects, malformed and oversized frames, requests for
//! namespaces the user may not see), against the real proxy with two users
//! restricted to different namespaces.
//!
//! Checked while it runs: every object a client receives is in a namespace
//! its user may list; no event is applied twice; versions only move forward
//! once a client's state is complete; a subscription only completes after a
//! 410; slow readers are cut; bad messages get an ERROR (or 1009) and
//! nothing else. At the end, with faults lifted and churn stopped, every
//! live subscription's applied state (uid → resourceVersion) must equal a
//! LIST of the server's store, and upstream watches must equal distinct keys.
//!
//! `KUBEMUX_CHAOS_SEED` (default 1) fixes the schedule, `KUBEMUX_CHAOS_SECS`
//! (default 15) its length; the seed is printed at the start and in every
//! failure. The schedule is reproducible; thread timing is not, so a replay
//! applies the same actions in the same order with the same pauses.

mod client;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use client::{Cmd, Conn, Ctx, Start, Sub, USERS, VANDALISMS};
use kubemux::auth::policy::{AuthMode, Policy};
use kubemux::auth::review::Reviewer;
use kubemux::hub::HubConfig;
use kubemux::metrics::Metrics;
use kubemux::server::ServerConfig;
use kubemux::upstream::UpstreamConfig;
use kubemux::ws::outbound::QueueLimits;
use kubemux_sim::{Rule, SimAuth, SimConfig, UserInfo, WatchFailure};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;
use tokio::time::Instant;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sim_auth() -> SimAuth {
    let mut auth = SimAuth::new().with_admin_token("admin-token");
    for (i, u) in USERS.iter().enumerate() {
        auth = auth
            .with_token(
                u.token,
                UserInfo::new(u.name, format!("uid-{i}"), ["chaos"]),
            )
            .with_rule(
                Rule::allow(["get", "list", "watch"], ["pods"])
                    .users([u.name])
                    .api_groups([""])
                    .namespaces(u.namespaces.iter().copied()),
            );
    }
    auth
}

/// Largest client message in this suite (the oversized vandal exceeds it).
const MAX_MESSAGE: usize = 16 * 1024;
/// Subscriptions each slow reader opens before it stops reading.
const SLOW_READER_SUBS: usize = 400;
/// Live subscriber connections are kept between these bounds.
const MIN_CONNS: usize = 3;
const MAX_CONNS: usize = 10;

#[derive(Default)]
struct Tally(BTreeMap<&'static str, u64>);

impl Tally {
    fn add(&mut self, what: &'static str) {
        *self.0.entry(what).or_default() += 1;
    }
    fn total(&self) -> u64 {
        self.0.values().sum()
    }
    fn show(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn new_conn(ctx: &Arc<Ctx>, rng: &mut StdRng) -> Conn {
    let user = rng.random_range(0..USERS.len());
    let n = rng.random_range(1..=3);
    let subs = (0..n)
        .map(|_| {
            let namespaces = USERS[user].namespaces;
            let ns = namespaces[rng.random_range(0..namespaces.len())];
            let start = if rng.random_bool(0.5) {
                Start::Plain
            } else {
                Start::InitialEvents
            };
            Sub::new(user, ns, start)
        })
        .collect();
    Conn::spawn(ctx.clone(), user, subs)
}

async fn run(mode: AuthMode) {
    let seed = env_u64("KUBEMUX_CHAOS_SEED", 1);
    let secs = env_u64("KUBEMUX_CHAOS_SECS", 15);
    let label = format!("chaos seed {seed} ({} mode, {secs} s)", mode.as_str());
    println!("{label}: replay with KUBEMUX_CHAOS_SEED={seed} KUBEMUX_CHAOS_SECS={secs}");
    let mut rng = StdRng::seed_from_u64(seed);
    let metrics = Arc::new(Metrics::new());
    let policy = match mode {
        AuthMode::Shared => Policy::shared(
            Arc::new(Reviewer::new(Duration::from_secs(2), metrics.clone())),
            Duration::from_secs(1),
        ),
        AuthMode::Passthrough => Policy::passthrough(
            Arc::new(Reviewer::new(Duration::from_secs(2), metrics.clone())),
            Duration::from_secs(1),
        ),
        AuthMode::None => Policy::none(false),
    };
    let env = start(
        SimConfig {
            auth: Some(sim_auth()),
            churn_rate: 40.0,
            seed,
            initial_pods: 40,
            object_size: 1024,
            bookmark_interval: Duration::from_secs(1),
            ..SimConfig::default()
        },
        HubConfig {
            upstream: UpstreamConfig {
                backoff_initial: Duration::from_millis(50),
                backoff_max: Duration::from_millis(400),
                rewatch_delay: Duration::from_millis(10),
                idle_timeout: Duration::from_secs(3),
                ..UpstreamConfig::default()
            },
            ..quick_hub()
        },
        ServerConfig {
            headlamp: kubemux::dialect::headlamp::Settings {
                max_message_size: MAX_MESSAGE,
                ..Default::default()
            },
            queue: QueueLimits {
                max_bytes: 1 << 20,
                max_frames: 8192,
                ..QueueLimits::default()
            },
            policy,
            ..ServerConfig::default()
        },
    )
    .await;
    let ctx = Arc::new(Ctx::new(env.server.addr(), seed));
    let mut conns: Vec<Conn> = (0..6).map(|_| new_conn(&ctx, &mut rng)).collect();
    let mut side: Vec<(&'static str, JoinHandle<&'static str>)> = Vec::new();
    let mut faults = Tally::default();
    let mut behaviours = Tally::default();
    let faults_api = env.sim.faults();
    let mut stalled_until: Option<Instant> = None;
    let mut refused_until = Instant::now();
    let end = Instant::now() + Duration::from_secs(secs);

    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..400))).await;
        if stalled_until.is_some_and(|t| Instant::now() >= t) {
            faults_api.resume_watches();
            stalled_until = None;
        }
        let live = conns.len();
        match rng.random_range(0..100) {
            // Upstream faults.
            0..=5 => {
                faults_api.drop_watches();
                faults.add("drop_watches");
            }
            6..=10 => {
                faults_api.fail_next_watches(rng.random_range(1..=3), WatchFailure::Expired);
                faults_api.drop_watches();
                faults.add("410_expired");
            }
            11..=15 => {
                let retry_after_secs = rng.random_range(0..=1);
                faults_api.fail_next_watches(
                    rng.random_range(1..=3),
                    WatchFailure::TooManyRequests { retry_after_secs },
                );
                faults_api.drop_watches();
                faults.add("429_retry_after");
            }
            16..=20 => {
                faults_api.fail_next_watches(rng.random_range(1..=3), WatchFailure::InternalError);
                faults_api.drop_watches();
                faults.add("500_internal");
            }
            21..=24 if stalled_until.is_none() => {
                faults_api.stall_watches();
                stalled_until =
                    Some(Instant::now() + Duration::from_millis(rng.random_range(200..4000)));
                faults.add("stall");
            }
            25..=27 => {
                let d = Duration::from_millis(rng.random_range(200..2000));
                faults_api.refuse_connections(d);
                refused_until = refused_until.max(Instant::now() + d);
                faults.add("refuse_connections");
            }
            28..=31 => {
                faults_api.compact_history();
                if rng.random_bool(0.5) {
                    faults_api.drop_watches();
                }
                faults.add("compact_history");
            }
            // Client behaviours.
            32..=35 => {
                for c in &conns {
                    c.send(Cmd::Reconnect);
                }
                behaviours.add("reconnect_storm");
            }
            36..=47 if live > 0 => {
                let c = &conns[rng.random_range(0..live)];
                let n = c.subs.lock().len();
                c.send(Cmd::Resubscribe(rng.random_range(0..n)));
                behaviours.add("headlamp_resubscribe");
            }
            48..=53 if live > 0 => {
                conns[rng.random_range(0..live)].send(Cmd::Reconnect);
                behaviours.add("reconnect_one");
            }
            54..=59 if live > MIN_CONNS => {
                let c = conns.swap_remove(rng.random_range(0..live));
                c.send(Cmd::Abort);
                behaviours.add("abrupt_disconnect");
            }
            60..=65 if live < MAX_CONNS => {
                conns.push(new_conn(&ctx, &mut rng));
                behaviours.add("new_subscriber");
            }
            66..=69 if live > 0 => {
                let c = &conns[rng.random_range(0..live)];
                let n = c.subs.lock().len();
                c.send(Cmd::Close(rng.random_range(0..n)));
                behaviours.add("close_subscription");
            }
            70..=73 => {
                let user = rng.random_range(0..USERS.len());
                let stall = Duration::from_millis(rng.random_range(1500..4000));
                side.push((
                    "slow_reader",
                    tokio::spawn(client::slow_reader(
                        ctx.clone(),
                        user,
                        SLOW_READER_SUBS,
                        stall,
                    )),
                ));
                behaviours.add("slow_reader");
            }
            74..=83 => {
                let user = rng.random_range(0..USERS.len());
                let kind = VANDALISMS[rng.random_range(0..VANDALISMS.len())];
                let ctx = ctx.clone();
                side.push((
                    "vandal",
                    tokio::spawn(async move {
                        client::vandal(ctx, user, kind, MAX_MESSAGE).await;
                        "done"
                    }),
                ));
                behaviours.add(if matches!(kind, client::Vandalism::Oversized) {
                    "oversized_frame"
                } else {
                    "malformed_frame"
                });
            }
            84..=89 => {
                let user = rng.random_range(0..USERS.len());
                let other = ["default", "team-a", "team-b", "kube-system"]
                    .into_iter()
                    .filter(|ns| !USERS[user].namespaces.contains(ns))
                    .collect::<Vec<_>>();
                let ns = if rng.random_bool(0.25) {
                    None
                } else {
                    Some(other[rng.random_range(0..other.len())])
                };
                let ctx = ctx.clone();
                side.push((
                    "forbidden_probe",
                    tokio::spawn(async move {
                        client::forbidden_probe(ctx, user, ns).await;
                        "done"
                    }),
                ));
                behaviours.add("forbidden_probe");
            }
            _ => behaviours.add("quiet"),
        }
    }

    // Settle: lift every fault, stop churn, let the abusive clients finish.
    if stalled_until.is_some() {
        faults_api.resume_watches();
    }
    tokio::time::sleep_until(refused_until).await;
    env.sim.set_churn_rate(0.0);
    let mut slow_cuts = Tally::default();
    for (what, task) in side {
        match task.await {
            Ok(outcome) if what == "slow_reader" => slow_cuts.add(outcome),
            Ok(_) => {}
            Err(e) => ctx.violation(format!("a {what} task panicked: {e}")),
        }
    }

    // The oracle: every live subscription equals a LIST of the store.
    let deadline = Instant::now() + PATIENCE;
    let compared = loop {
        let mut mismatches = Vec::new();
        let mut compared = 0;
        for c in &conns {
            for s in c.subs.lock().iter().filter(|s| s.open) {
                let (objects, _) = env
                    .sim
                    .store()
                    .list("pods", Some(s.ns), None, None)
                    .unwrap();
                let truth: BTreeMap<String, u64> = objects
                    .iter()
                    .map(|o| {
                        let md = &o["metadata"];
                        (
                            md["uid"].as_str().unwrap().to_string(),
                            md["resourceVersion"].as_str().unwrap().parse().unwrap(),
                        )
                    })
                    .collect();
                compared += 1;
                if s.objects != truth {
                    let missing = truth.keys().filter(|k| !s.objects.contains_key(*k)).count();
                    let extra = s.objects.keys().filter(|k| !truth.contains_key(*k)).count();
                    let stale = truth
                        .iter()
                        .filter(|(k, v)| s.objects.get(*k).is_some_and(|a| a != *v))
                        .count();
                    mismatches.push(format!(
                        "{} {} {}: {missing} missing, {extra} extra, {stale} at another version",
                        USERS[s.user].name, s.path, s.query
                    ));
                }
            }
        }
        if mismatches.is_empty() {
            break compared;
        }
        if Instant::now() > deadline {
            for m in mismatches {
                ctx.violation(format!("oracle mismatch: {m}"));
            }
            break compared;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // One upstream watch per distinct key: per user and namespace when
    // watching as each user; when kubemux watches for all, one cluster-wide
    // watch of pods that every namespace is filtered from.
    let keys: HashSet<(usize, &str)> = conns
        .iter()
        .flat_map(|c| {
            c.subs
                .lock()
                .iter()
                .filter(|s| s.open)
                .map(|s| match mode {
                    AuthMode::Passthrough => (s.user, s.ns),
                    _ => (0, "every namespace"),
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let deadline = Instant::now() + PATIENCE;
    while env.sim.active_watches("pods") != keys.len() as i64 {
        if Instant::now() > deadline {
            let shared: Vec<String> = env
                .hub
                .watches()
                .iter()
                .map(|w| format!("{} ({} subscribers)", w.key.path(), w.subscribers))
                .collect();
            let by_user: Vec<String> = USERS
                .iter()
                .map(|u| {
                    format!(
                        "{}: {}",
                        u.name,
                        env.sim.metrics().active_watches_by(u.name, "pods")
                    )
                })
                .collect();
            ctx.violation(format!(
                "{} upstream pod watches for {} distinct keys {keys:?}; kubemux's shared watches: {shared:?}; \
                 the simulator's by user: {by_user:?}",
                env.sim.active_watches("pods"),
                keys.len()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let text = env.metrics_text().await;
    let slow_metric = metric(&text, "kubemux_slow_consumer_terminations_total").unwrap_or(0.0);
    if behaviours.0.contains_key("slow_reader") && slow_cuts.0.contains_key("slow-consumer ERROR") {
        assert!(slow_metric >= 1.0, "{label}: cuts must be counted: {text}");
    }
    for c in &conns {
        c.send(Cmd::Stop);
    }
    for c in conns.drain(..) {
        if let Err(e) = c.task.await {
            ctx.violation(format!("a subscriber task panicked: {e}"));
        }
    }
    println!(
        "{label}: faults {} [{}]; behaviours {} [{}]; slow readers cut [{}]; events checked {}; \
         subscriptions compared {compared}; resumes {}; restarts after 410 {}; \
         restarts after an unavailable review {}; warnings {}; \
         upstream pod watches at the end {}; slow-consumer terminations {slow_metric}",
        faults.total(),
        faults.show(),
        behaviours.total(),
        behaviours.show(),
        slow_cuts.show(),
        ctx.events_checked
            .load(std::sync::atomic::Ordering::Relaxed),
        ctx.resumes.load(std::sync::atomic::Ordering::Relaxed),
        ctx.restarts_after_410
            .load(std::sync::atomic::Ordering::Relaxed),
        ctx.restarts_after_review
            .load(std::sync::atomic::Ordering::Relaxed),
        ctx.warnings.load(std::sync::atomic::Ordering::Relaxed),
        env.sim.active_watches("pods"),
    );
    let violations = ctx.violations();
    assert!(
        violations.is_empty(),
        "{label}: {} violations (replay with KUBEMUX_CHAOS_SEED={seed}):\n{}",
        violations.len(),
        violations.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_passthrough_users_stay_exact_and_isolated() {
    run(AuthMode::Passthrough).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_shared_watches_stay_exact_and_isolated() {
    run(AuthMode::Shared).await;
}
