//! The `kubemux` command: `serve`, `sim` and `demo`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kubemux::auth::policy::AuthMode;
use kubemux::cluster::{Cluster, Registry};
use kubemux::config::{LogFormat, ProxyArgs, Settings};
use kubemux::hub::Hub;
use kubemux::metrics::Metrics;
use kubemux::server::Server;
use kubemux::sim::{SimConfig, SimServer};

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
        /// Stamp every change with the annotation `kubemux.io/sent-at` (Unix µs).
        #[arg(long)]
        stamp_sent_at: bool,
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
        #[command(flatten)]
        proxy: ProxyArgs,
    },
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
            run_proxy(registry, &settings, None).await
        }
        Command::Config { proxy } => {
            print!(
                "{}",
                Settings::resolve(&proxy, AuthMode::Passthrough)?.to_toml()
            );
            Ok(())
        }
        Command::Sim {
            listen,
            kubeconfig_out,
            context,
            churn,
            auth_file,
            object_size,
            stamp_sent_at,
            compaction_interval,
        } => {
            init_logs(LogFormat::Human);
            let auth = auth_file
                .map(|path| {
                    kubemux::sim::SimAuth::from_file(&path)
                        .with_context(|| format!("loading --auth-file {}", path.display()))
                })
                .transpose()?;
            let sim = SimServer::start(SimConfig {
                listen,
                churn_rate: churn,
                auth,
                object_size,
                stamp_sent_at,
                compaction_interval,
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
        Command::Demo {
            sim_listen,
            churn,
            sim_compaction_interval,
            proxy,
        } => {
            let settings = Settings::resolve(&proxy, AuthMode::None)?;
            init_logs(settings.log_format);
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
            run_proxy(registry, &settings, Some(sim)).await
        }
    }
}

async fn run_proxy(
    registry: Arc<Registry>,
    settings: &Settings,
    sim: Option<SimServer>,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let mut server_config = settings.server_config(&metrics);
    server_config.console = settings.console_auth(&metrics)?;
    server_config.headlamp_backend_token = settings.headlamp_backend_token()?;
    server_config.admin_token = settings.admin_token()?;
    let console = server_config.console.is_some();
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
    if console {
        println!("subscription API (JWT): ws://{addr}/ws/v1");
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
    if let Some(sim) = sim {
        sim.shutdown().await;
    }
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
