//! The `kubemux` command: `serve`, `sim` and `demo`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kubemux::cluster::Registry;
use kubemux::config::{ListenArgs, ProxyArgs};
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
    /// Serve clients against the clusters of a kubeconfig (one clusterId per context).
    Serve {
        /// Kubeconfig file; every context becomes a clusterId.
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        #[command(flatten)]
        listen: ListenArgs,
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
    },
    /// The proxy plus an embedded simulated cluster (clusterId `demo`) with churn.
    Demo {
        #[command(flatten)]
        listen: ListenArgs,
        /// Address of the embedded simulated API server (its /metrics too).
        #[arg(long, default_value = "127.0.0.1:4467")]
        sim_listen: SocketAddr,
        /// Object changes per second in the simulated cluster.
        #[arg(long, default_value_t = 2.0)]
        churn: f64,
        #[command(flatten)]
        proxy: ProxyArgs,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve {
            kubeconfig,
            listen,
            proxy,
        } => {
            let registry = Arc::new(Registry::new());
            match kubeconfig {
                Some(path) => registry.load_kubeconfig_file(&path).await?,
                None => {
                    let kubeconfig = kube::config::Kubeconfig::read()
                        .context("no --kubeconfig given and no default kubeconfig found")?;
                    registry.load(kubeconfig, "default kubeconfig").await?
                }
            };
            run_proxy(registry, listen.listen, &proxy, None).await
        }
        Command::Sim {
            listen,
            kubeconfig_out,
            context,
            churn,
            object_size,
            stamp_sent_at,
        } => {
            let sim = SimServer::start(SimConfig {
                listen,
                churn_rate: churn,
                object_size,
                stamp_sent_at,
                ..SimConfig::default()
            })
            .await?;
            if let Some(path) = kubeconfig_out {
                std::fs::write(&path, sim.kubeconfig(&context))
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("kubeconfig written to {}", path.display());
            }
            println!("simulated API server listening on {}", sim.url());
            tokio::signal::ctrl_c().await?;
            sim.shutdown().await;
            Ok(())
        }
        Command::Demo {
            listen,
            sim_listen,
            churn,
            proxy,
        } => {
            let sim = SimServer::start(SimConfig {
                listen: sim_listen,
                churn_rate: churn,
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
            run_proxy(registry, listen.listen, &proxy, Some(sim)).await
        }
    }
}

async fn run_proxy(
    registry: Arc<Registry>,
    listen: SocketAddr,
    proxy: &ProxyArgs,
    sim: Option<SimServer>,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let hub = Hub::new(proxy.hub_config(), registry.clone(), metrics);
    let server = Server::start(listen, hub, proxy.server_config())
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let addr = server.addr();
    println!(
        "kubemux listening on http://{addr} (clusters: {})",
        registry.ids().join(", ")
    );
    println!("Headlamp multiplexer: ws://{addr}/wsMultiplexer   metrics: http://{addr}/metrics");
    if let Some(cluster) = registry.ids().first() {
        println!(
            "try:  cargo run --example client -- ws://{addr}/wsMultiplexer {cluster} /api/v1/pods"
        );
    }
    wait_for_signal().await?;
    server.shutdown(std::time::Duration::from_secs(10)).await;
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
