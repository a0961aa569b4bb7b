//! The simulated API server and the real proxy in front of it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kubemux::cluster::Registry;
use kubemux::hub::{Hub, HubConfig};
use kubemux::metrics::Metrics;
use kubemux::server::{Server, ServerConfig};
use kubemux_sim::{SimConfig, SimServer};
use serde_json::{Value, json};

use super::{Answer, CLUSTER, Client, Request, eventually, http_get_body, metric};

/// A simulator, and a proxy (with its hub) whose only cluster, [`CLUSTER`], it is.
pub struct Env {
    pub sim: SimServer,
    pub server: Server,
    pub hub: Hub,
}

/// The hub's defaults, but a watch without subscribers stops after 200 ms,
/// so tests that wait for a watch to stop do not wait long.
pub fn quick_hub() -> HubConfig {
    HubConfig {
        linger: Duration::from_millis(200),
        ..HubConfig::default()
    }
}

pub async fn start(sim: SimConfig, hub: HubConfig, server: ServerConfig) -> Env {
    start_with(sim, hub, |_| server).await
}

/// [`start`] with a server configuration made from the hub's metrics (the
/// reviewers of an auth policy count into them).
pub async fn start_with(
    sim: SimConfig,
    hub: HubConfig,
    server: impl FnOnce(Arc<Metrics>) -> ServerConfig,
) -> Env {
    let sim = SimServer::start(sim).await.expect("sim starts");
    let (server, hub) = start_proxy_with(&sim.kubeconfig(CLUSTER), hub, server).await;
    Env { sim, server, hub }
}

pub async fn start_default() -> Env {
    start(SimConfig::default(), quick_hub(), ServerConfig::default()).await
}

/// A proxy (with a hub of its own, so an empty cache) in front of `sim`.
pub async fn start_proxy(sim: &SimServer, hub: HubConfig, server: ServerConfig) -> (Server, Hub) {
    start_proxy_with(&sim.kubeconfig(CLUSTER), hub, |_| server).await
}

/// A proxy of the clusters in `kubeconfig`, its server configuration made
/// from the hub's metrics.
pub async fn start_proxy_with(
    kubeconfig: &str,
    hub: HubConfig,
    server: impl FnOnce(Arc<Metrics>) -> ServerConfig,
) -> (Server, Hub) {
    let registry = Arc::new(Registry::new());
    registry
        .load_kubeconfig_text(kubeconfig, "test")
        .await
        .expect("kubeconfig loads");
    serve(registry, hub, server).await
}

/// A proxy of the clusters in the kubeconfig file `file`, followed as it
/// changes (checked every 50 ms).
pub async fn start_proxy_following(
    file: &Path,
    hub: HubConfig,
    server: ServerConfig,
) -> (Server, Hub) {
    let registry = Arc::new(Registry::new());
    registry
        .load_and_follow(vec![file.to_path_buf()], Duration::from_millis(50))
        .await
        .expect("kubeconfig loads");
    serve(registry, hub, |_| server).await
}

async fn serve(
    registry: Arc<Registry>,
    hub: HubConfig,
    server: impl FnOnce(Arc<Metrics>) -> ServerConfig,
) -> (Server, Hub) {
    let metrics = Arc::new(Metrics::new());
    let hub = Hub::new(hub, registry, metrics.clone());
    let server = Server::start("127.0.0.1:0".parse().unwrap(), hub.clone(), server(metrics))
        .await
        .expect("proxy starts");
    (server, hub)
}

impl Env {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/wsMultiplexer", self.server.addr())
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.ws_url()).await
    }

    /// The proxy's `/metrics`, as scraped over HTTP.
    pub async fn metrics_text(&self) -> String {
        http_get_body(self.server.addr(), "/metrics").await
    }

    /// Polls `f` until it holds; panics with `what` after [`super::PATIENCE`].
    pub async fn eventually(&self, what: &str, f: impl Fn() -> bool) {
        eventually(what, f).await
    }
}

/// Requests refused by the named admission limit, as the hub's metrics count them.
pub fn refusals(env: &Env, limit: &str) -> f64 {
    metric(
        &env.hub.metrics().encode(),
        &format!("kubemux_limit_refusals_total{{limit=\"{limit}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Writes configmap `cm-{i % 50}` in `default` carrying `blob`: created for
/// the first 50 `i`, updated after, so a loop over `i` makes a steady
/// stream of large events on one watch.
pub fn churn_configmap(store: &kubemux_sim::Store, i: usize, blob: &str) {
    let cm = json!({"metadata": {"name": format!("cm-{}", i % 50), "namespace": "default"},
                    "data": {"blob": blob, "i": i.to_string()}});
    if i < 50 {
        store.create("configmaps", Some("default"), cm).unwrap();
    } else {
        store.update("configmaps", Some("default"), cm).unwrap();
    }
}

/// Writes a kubeconfig whose contexts are the given simulated servers,
/// atomically (a watcher never reads half a file).
pub fn write_kubeconfig(path: &Path, sims: &[(&str, &SimServer)]) {
    let mut merged: Option<Value> = None;
    for (name, sim) in sims {
        let doc: Value = serde_json::from_str(&sim.kubeconfig(name)).unwrap();
        merged = Some(match merged {
            None => doc,
            Some(mut m) => {
                for list in ["clusters", "contexts", "users"] {
                    let extra = doc[list].as_array().unwrap().clone();
                    m[list].as_array_mut().unwrap().extend(extra);
                }
                m
            }
        });
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_string(&merged.unwrap()).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The same GET of kubemux (through `/clusters/sim`) and of the simulator
/// itself, for comparing what the two answer.
pub async fn both(env: &Env, path_and_query: &str) -> (Answer, Answer) {
    let ours = Request::get(&format!("/clusters/{CLUSTER}{path_and_query}"))
        .send(env.server.addr())
        .await;
    let theirs = Request::get(path_and_query).send(env.sim.addr()).await;
    (ours, theirs)
}
