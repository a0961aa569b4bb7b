//! The `kubemux` command: `serve`, `config`, and with the default `sim`
//! feature `sim` and `demo` (the simulated API server, crate `kubemux-sim`);
//! `--no-default-features` builds the proxy alone, without those two commands.

#[cfg(feature = "sim")]
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
#[cfg(feature = "sim")]
use kubemux::auth::jwt::JwtSettings;
use kubemux::auth::jwt::JwtVerifier;
use kubemux::auth::policy::AuthMode;
use kubemux::cluster::{Cluster, Registry};
use kubemux::config::{LogFormat, ProxyArgs, Settings};
use kubemux::hub::Hub;
use kubemux::metrics::Metrics;
use kubemux::server::Server;
#[cfg(feature = "sim")]
use kubemux_sim::{SimConfig, SimServer};

/// A Kubernetes watch multiplexer: many WebSocket subscribers, one upstream watch per key.
#[derive(Parser)]
#[command(name = "kubemux", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve clients against real clusters (one clusterId per kubeconfig context).
    Serve {
        /// Kubeconfig files (repeat, or separate with ':'); every context becomes a clusterId, and edits are picked up while running [default: KUBECONFIG or ~/.kube/config].
        #[arg(long, env = "KUBECONFIG", value_delimiter = ':')]
        kubeconfig: Vec<PathBuf>,
        /// Use the pod's service account (clusterId `in-cluster`) instead of a kubeconfig.
        #[arg(long, env = "KUBEMUX_IN_CLUSTER")]
        in_cluster: bool,
        #[command(flatten)]
        proxy: ProxyArgs,
    },
    /// Run the simulated Kubernetes API server alone.
    #[cfg(feature = "sim")]
    Sim {
        /// Address the simulated API server listens on.
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: SocketAddr,
        /// Write a kubeconfig pointing at the simulated server here.
        #[arg(long)]
        kubeconfig_out: Option<PathBuf>,
        /// Context (clusterId) name in the written kubeconfig.
        #[arg(long, default_value = "sim")]
        context: String,
        /// Object changes per second made by the churn generator.
        #[arg(long, default_value_t = 0.0)]
        churn: f64,
        /// Pad churned pods to about this many bytes of JSON (0 = no padding).
        #[arg(long, default_value_t = 0)]
        object_size: usize,
        /// Shape of the simulated pods: `small` (~1.7 KiB) or `realistic` (5.5–8 KiB, kubelet-managed, with managedFields and full status).
        #[arg(long, default_value = "small")]
        object_profile: kubemux_sim::ObjectProfile,
        /// Stamp every change with the annotation `kubemux.io/sent-at` (Unix µs).
        #[arg(long)]
        stamp_sent_at: bool,
        /// Pods in the initial population (and the count churn keeps it near).
        #[arg(long, default_value_t = SimConfig::default().initial_pods)]
        pods: usize,
        /// Static tokens and RBAC-like rules (YAML/JSON); without it every request is admin.
        #[arg(long)]
        auth_file: Option<PathBuf>,
        /// Compact the history every interval up to the version recorded one interval before, like kube-apiserver's etcd compaction (0 = off).
        #[arg(long, default_value = "5m", value_parser = kubemux::config::parse_duration)]
        compaction_interval: std::time::Duration,
    },
    /// Print the effective configuration (flags over KUBEMUX_* over --config file over defaults) and exit.
    Config {
        #[command(flatten)]
        proxy: ProxyArgs,
    },
    /// The proxy plus an embedded simulated cluster (clusterId `demo`) with churn.
    #[cfg(feature = "sim")]
    Demo {
        /// Address of the embedded simulated API server (its /metrics too).
        #[arg(long, default_value = "127.0.0.1:4467")]
        sim_listen: SocketAddr,
        /// Object changes per second in the simulated cluster.
        #[arg(long, default_value_t = 2.0)]
        churn: f64,
        /// History compaction interval of the simulated cluster, like kube-apiserver's etcd compaction (0 = off).
        #[arg(long, default_value = "5m", value_parser = kubemux::config::parse_duration)]
        sim_compaction_interval: std::time::Duration,
        /// Print a JWT for the subscription API (/ws/v1), valid for a day, naming the simulated cluster's admin; signs with the configured HS256 secret, or enables /ws/v1 with a random one.
        #[arg(long)]
        print_demo_token: bool,
        #[command(flatten)]
        proxy: ProxyArgs,
    },
}

/// The HS256 secret `kubemux demo --print-demo-token` signs its token with.
#[cfg(feature = "sim")]
struct DemoSecret {
    secret: Vec<u8>,
    /// Generated for this run (no key was configured), so the subscription
    /// API is enabled with it.
    generated: bool,
}

/// How long the demo token is valid: a day of trying things out.
#[cfg(feature = "sim")]
const DEMO_TOKEN_SECS: u64 = 86_400;

#[cfg(feature = "sim")]
impl DemoSecret {
    /// The configured HS256 secret (read as the verifier reads it), or a
    /// random one when no JWT key is configured.
    fn new(jwt: &JwtSettings) -> anyhow::Result<DemoSecret> {
        if jwt.public_key_file.is_some() {
            anyhow::bail!(
                "--print-demo-token signs with an HS256 secret, but a public key (jwt_public_key_file) is configured: a token for it can only come from its private key"
            );
        }
        let Some(path) = &jwt.hs256_secret_file else {
            let bytes: [u8; 32] = rand::random();
            let secret = bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
            return Ok(DemoSecret {
                secret: secret.into_bytes(),
                generated: true,
            });
        };
        let mut secret =
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        while matches!(secret.last(), Some(b'\n' | b'\r')) {
            secret.pop();
        }
        Ok(DemoSecret {
            secret,
            generated: false,
        })
    }

    /// A token the subscription API accepts (the configured issuer,
    /// audience and claim names), for the simulator's admin: the demo's
    /// simulated cluster has no RBAC rules, and its admin's group is
    /// allowed everything.
    fn token(&self, jwt: &JwtSettings) -> anyhow::Result<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let mut claims = serde_json::Map::new();
        claims.insert(jwt.user_claim.clone(), kubemux_sim::auth::ADMIN_USER.into());
        claims.insert(
            jwt.groups_claim.clone(),
            serde_json::json!([kubemux_sim::rbac::SUPERUSER_GROUP]),
        );
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + DEMO_TOKEN_SECS).into());
        if let Some(issuer) = &jwt.issuer {
            claims.insert("iss".into(), issuer.clone().into());
        }
        if let Some(audience) = &jwt.audience {
            claims.insert("aud".into(), audience.clone().into());
        }
        Ok(jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&self.secret),
        )?)
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve {
            kubeconfig,
            in_cluster,
            proxy,
        } => {
            let settings = Settings::resolve(&proxy, AuthMode::Passthrough)?;
            init_logs(settings.log_format);
            let registry = Arc::new(Registry::new());
            if in_cluster {
                let config =
                    kube::Config::incluster().context("reading the in-cluster configuration")?;
                registry.insert(Cluster::with_config("in-cluster", config)?);
            } else {
                let paths = if kubeconfig.is_empty() {
                    kubemux::cluster::kubeconfig::default_paths()
                } else {
                    kubeconfig
                };
                registry
                    .load_and_follow(paths, std::time::Duration::from_secs(2))
                    .await
                    .context("loading clusters from the kubeconfig")?;
            }
            run_proxy(registry, &settings, RunExtras::default()).await
        }
        Command::Config { proxy } => {
            print!(
                "{}",
                Settings::resolve(&proxy, AuthMode::Passthrough)?.to_toml()
            );
            Ok(())
        }
        #[cfg(feature = "sim")]
        Command::Sim {
            listen,
            kubeconfig_out,
            context,
            churn,
            auth_file,
            object_size,
            object_profile,
            stamp_sent_at,
            pods,
            compaction_interval,
        } => {
            init_logs(LogFormat::Human);
            let auth = auth_file
                .map(|path| {
                    kubemux_sim::SimAuth::from_file(&path)
                        .with_context(|| format!("loading --auth-file {}", path.display()))
                })
                .transpose()?;
            let sim = SimServer::start(SimConfig {
                listen,
                churn_rate: churn,
                auth,
                object_size,
                object_profile,
                stamp_sent_at,
                compaction_interval,
                initial_pods: pods,
                ..SimConfig::default()
            })
            .await?;
            if let Some(path) = kubeconfig_out {
                std::fs::write(&path, sim.kubeconfig(&context))
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("kubeconfig written to {}", path.display());
            }
            println!("simulated API server listening on {}", sim.url());
            wait_for_signal().await?;
            sim.shutdown().await;
            Ok(())
        }
        #[cfg(feature = "sim")]
        Command::Demo {
            sim_listen,
            churn,
            sim_compaction_interval,
            print_demo_token,
            proxy,
        } => {
            let settings = Settings::resolve(&proxy, AuthMode::None)?;
            init_logs(settings.log_format);
            let jwt = settings.jwt();
            let demo_secret = print_demo_token
                .then(|| DemoSecret::new(&jwt))
                .transpose()?;
            let sim = SimServer::start(SimConfig {
                listen: sim_listen,
                churn_rate: churn,
                compaction_interval: sim_compaction_interval,
                ..SimConfig::default()
            })
            .await
            .context("starting the simulated API server")?;
            let registry = Arc::new(Registry::new());
            registry
                .load_kubeconfig_text(&sim.kubeconfig("demo"), "embedded simulated cluster")
                .await?;
            println!(
                "simulated API server (cluster \"demo\") on {} (metrics: {}/metrics)",
                sim.url(),
                sim.url()
            );
            // With a demo secret the subscription API is always on: the
            // secret is either the configured one or enabled here.
            let mut extras = RunExtras::default();
            if let Some(demo) = &demo_secret {
                if demo.generated {
                    extras.console_verifier = Some(JwtVerifier::hs256(&demo.secret, &jwt));
                }
                extras.notes.push(format!(
                    "demo token for the subscription API (valid 24 h): {}",
                    demo.token(&jwt)?
                ));
            }
            run_proxy(registry, &settings, extras).await?;
            sim.shutdown().await;
            Ok(())
        }
    }
}

/// What a command adds to the proxy it runs (`demo`: its token), so that
/// `run_proxy` needs nothing of the simulator.
#[derive(Default)]
struct RunExtras {
    /// Verifies the subscription API's tokens instead of the configured
    /// JWT settings (`demo`'s generated secret).
    console_verifier: Option<JwtVerifier>,
    /// Printed after the listening lines.
    notes: Vec<String>,
}

/// Serves until SIGINT/SIGTERM, then drains and shuts down.
async fn run_proxy(
    registry: Arc<Registry>,
    settings: &Settings,
    extras: RunExtras,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let mut server_config = settings.server_config(&metrics);
    let rechecks = server_config.policy.rechecks().cloned();
    server_config.console_auth = match extras.console_verifier {
        Some(verifier) => Some(settings.console_auth_with(verifier, &metrics, rechecks.as_ref())),
        None => settings.console_auth(&metrics, rechecks.as_ref())?,
    };
    server_config.headlamp_backend_token = settings.headlamp_backend_token()?;
    server_config.admin_token = settings.admin_token()?;
    let console = server_config.console_auth.is_some();
    let hub = Hub::new(settings.hub_config(), registry.clone(), metrics);
    let server = Server::start(settings.listen, hub, server_config)
        .await
        .with_context(|| format!("listening on {}", settings.listen))?;
    let addr = server.addr();
    println!(
        "kubemux listening on http://{addr} (clusters: {}; auth: {})",
        registry.ids().join(", "),
        settings.auth.as_str()
    );
    println!(
        "status page: http://{addr}/   Headlamp multiplexer: ws://{addr}/wsMultiplexer   metrics: http://{addr}/metrics"
    );
    println!(
        "dashboard stream: ws://{addr}/ws/dashboard   cluster notifications: ws://{addr}/ws/clusters"
    );
    if console {
        println!("subscription API (JWT): ws://{addr}/ws/v1");
    }
    // The dialects' own listeners, in the order `Server::extra_addrs` has
    // them, each at the address it actually bound (a port 0 is resolved).
    let extra = [
        (
            settings.notifications_listen,
            "--notifications-listen: ws://{}/ws and http://{}/api/clusters",
        ),
        (settings.dashboard_listen, "--dashboard-listen: ws://{}/ws"),
        (
            settings.subscriptions_listen,
            "--subscriptions-listen (JWT): ws://{}/ws",
        ),
    ];
    let configured = extra.iter().filter(|(at, _)| at.is_some());
    for ((_, line), bound) in configured.zip(server.extra_addrs()) {
        println!("{}", line.replace("{}", &bound.to_string()));
    }
    for note in &extras.notes {
        println!("{note}");
    }
    if let Some(cluster) = registry.ids().first() {
        println!(
            "try:  cargo run --example client -- ws://{addr}/wsMultiplexer {cluster} /api/v1/pods"
        );
    }
    wait_for_signal().await?;
    // Readiness fails first, so a load balancer sends new clients to
    // another replica while these are still served; then the subscribers
    // get their final bookmark and COMPLETE, and the sockets close with
    // 1012 so clients reconnect (anywhere) and resume.
    server.drain();
    tracing::info!(delay = ?settings.shutdown_delay, grace = ?settings.shutdown_grace, "shutting down");
    tokio::time::sleep(settings.shutdown_delay).await;
    server.shutdown(settings.shutdown_grace).await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
