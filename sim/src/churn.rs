//! The churn generator: a background task that creates, modifies and deletes
//! pods (and occasionally nodes) at a configurable rate, keeping the
//! population near its initial size. Deterministic given the seed (apart from
//! uids and timestamps) as long as nothing else writes to the store.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::object::meta_str;
use crate::population::random_suffix;
use crate::profile::ObjectProfile;
use crate::realistic;
use crate::store::Store;
use crate::templates::{self, APPS, NAMESPACES};

/// Token-bucket tick: small enough for smooth low rates, large enough that
/// thousands of events per second are a handful per tick.
const TICK: Duration = Duration::from_millis(10);
/// Share of events that touch nodes rather than pods.
const NODE_SHARE: f64 = 0.05;
/// Label flipped by churn modifications.
const FLIP_LABEL: &str = "churn.kubemux.io/flip";
/// Prefix of nodes the churn generator adds (and is allowed to delete).
const CHURN_NODE_PREFIX: &str = "churn-node-";
/// Annotation that pads churned pods to [`ChurnTargets::object_size`].
pub const PADDING_ANNOTATION: &str = "kubemux.io/padding";

/// Handle to change the churn rate at runtime.
#[derive(Debug, Clone)]
pub struct ChurnControl {
    rate: Arc<watch::Sender<f64>>,
}

impl ChurnControl {
    /// Sets the rate in events per second; 0 (or anything not positive)
    /// pauses the generator.
    pub fn set_rate(&self, events_per_sec: f64) {
        let rate = if events_per_sec.is_finite() {
            events_per_sec.max(0.0)
        } else {
            0.0
        };
        self.rate.send_replace(rate);
        tracing::info!(rate, "churn rate set");
    }
}

/// Sizes the generator keeps the population around.
#[derive(Debug, Clone, Copy)]
pub struct ChurnTargets {
    /// Pods to hover around.
    pub pods: usize,
    /// Nodes to hover around.
    pub nodes: usize,
    /// Pad written pods to about this many bytes of JSON (0 = no padding).
    pub object_size: usize,
    /// The shape of created pods, and so how they are changed: small pods
    /// get label flips, phase changes and readiness toggles, realistic ones
    /// kubelet's status updates.
    pub profile: ObjectProfile,
}

/// Starts the generator task; it runs until `shutdown` is cancelled.
pub fn spawn(
    store: Arc<Store>,
    seed: u64,
    targets: ChurnTargets,
    rate: f64,
    shutdown: CancellationToken,
) -> (ChurnControl, JoinHandle<()>) {
    let control = ChurnControl {
        rate: Arc::new(watch::channel(0.0).0),
    };
    control.set_rate(rate);
    let churner = Churner {
        store,
        rng: StdRng::seed_from_u64(seed ^ 0x006b_7562_656d_7578),
        targets,
        next_id: 0,
    };
    let task = tokio::spawn(churner.run(control.rate.subscribe(), shutdown));
    (control, task)
}

struct Churner {
    store: Arc<Store>,
    rng: StdRng,
    targets: ChurnTargets,
    next_id: u64,
}

impl Churner {
    async fn run(mut self, mut rate: watch::Receiver<f64>, shutdown: CancellationToken) {
        let mut tokens = 0.0_f64;
        let mut last = Instant::now();
        loop {
            let current = *rate.borrow_and_update();
            if current <= 0.0 {
                tokens = 0.0;
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = rate.changed() => if changed.is_err() { return },
                }
                last = Instant::now();
                continue;
            }
            let now = Instant::now();
            tokens = (tokens + current * now.duration_since(last).as_secs_f64())
                .min((current * 0.1).max(1.0));
            last = now;
            while tokens >= 1.0 {
                tokens -= 1.0;
                self.step();
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(TICK) => {}
                changed = rate.changed() => if changed.is_err() { return },
            }
        }
    }

    fn step(&mut self) {
        let result = if self.rng.random_bool(NODE_SHARE) {
            self.node_event()
        } else {
            self.pod_event()
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "churn operation failed");
        }
    }

    fn pick(&mut self, resource: &str) -> Option<Arc<Value>> {
        let count = self.store.count(resource);
        (count > 0)
            .then(|| self.rng.random_range(0..count))
            .and_then(|i| self.store.nth(resource, i))
    }

    fn pod_event(&mut self) -> Result<(), ApiError> {
        let count = self.store.count("pods");
        let target = self.targets.pods.max(1) as f64;
        let current = count as f64;
        let p_create = if count == 0 {
            1.0
        } else {
            (0.15 * target / current).min(0.45)
        };
        let p_delete = (0.15 * current / target).min(0.45);
        let roll: f64 = self.rng.random();
        if roll < p_create {
            return self.create_pod();
        }
        let Some(pod) = self.pick("pods") else {
            return Ok(());
        };
        let ns = meta_str(&pod, "namespace").map(str::to_string);
        let name = meta_str(&pod, "name").unwrap_or_default().to_string();
        if roll < p_create + p_delete {
            return self.store.delete("pods", ns.as_deref(), &name).map(drop);
        }
        let mut pod = (*pod).clone();
        if self.targets.profile == ObjectProfile::Realistic {
            if !realistic::kubelet_update(&mut self.rng, &mut pod) {
                return Ok(());
            }
            self.pad(&mut pod);
            strip_resource_version(&mut pod);
            return self.store.update("pods", ns.as_deref(), pod).map(drop);
        }
        match self.rng.random_range(0..3) {
            0 => {
                let flipped = if pod.pointer(&format!(
                    "/metadata/labels/{}",
                    FLIP_LABEL.replace('/', "~1")
                )) == Some(&json!("a"))
                {
                    "b"
                } else {
                    "a"
                };
                let mut patch = json!({"metadata": {"labels": {FLIP_LABEL: flipped}}});
                if let Some(padding) = self.padding(&pod) {
                    patch["metadata"]["annotations"] = json!({ PADDING_ANNOTATION: padding });
                }
                return self
                    .store
                    .merge_patch("pods", ns.as_deref(), &name, &patch)
                    .map(drop);
            }
            1 => {
                let phase = match pod.pointer("/status/phase").and_then(Value::as_str) {
                    Some("Running") if self.rng.random_bool(0.5) => "Succeeded",
                    Some("Running") => "Failed",
                    _ => "Running",
                };
                templates::set_pod_phase(&mut pod, phase);
            }
            _ => templates::toggle_container_ready(&mut pod),
        }
        self.pad(&mut pod);
        strip_resource_version(&mut pod);
        self.store.update("pods", ns.as_deref(), pod).map(drop)
    }

    fn create_pod(&mut self) -> Result<(), ApiError> {
        let ns = NAMESPACES[self.rng.random_range(0..NAMESPACES.len())];
        let app = &APPS[self.rng.random_range(0..APPS.len())];
        let node = self
            .pick("nodes")
            .and_then(|n| meta_str(&n, "name").map(str::to_string));
        self.next_id += 1;
        let name = format!(
            "{}-churn-{}-{}",
            app.name,
            self.next_id,
            random_suffix(&mut self.rng, 5)
        );
        let mut pod = self.targets.profile.pod(
            &mut self.rng,
            &name,
            ns,
            app,
            node.as_deref(),
            self.next_id as usize,
        );
        self.pad(&mut pod);
        self.store.create("pods", Some(ns), pod).map(drop)
    }

    /// The padding `pod` needs to reach the configured size, if any (the
    /// existing padding counts towards the size, so the result is stable).
    fn padding(&self, pod: &Value) -> Option<String> {
        if self.targets.object_size == 0 {
            return None;
        }
        let current = pod
            .pointer(&format!(
                "/metadata/annotations/{}",
                PADDING_ANNOTATION.replace('/', "~1")
            ))
            .and_then(Value::as_str)
            .map_or(0, str::len);
        let len = serde_json::to_vec(pod).map_or(0, |v| v.len());
        let bare = len.saturating_sub(current);
        // Room for the annotation's key and quotes when it is new.
        let overhead = if current == 0 {
            PADDING_ANNOTATION.len() + 6
        } else {
            0
        };
        let want = self.targets.object_size.saturating_sub(bare + overhead);
        (want != current).then(|| "x".repeat(want))
    }

    /// Pads `pod` to the configured size.
    fn pad(&self, pod: &mut Value) {
        if let Some(padding) = self.padding(pod)
            && let Some(meta) = pod.get_mut("metadata").and_then(Value::as_object_mut)
        {
            let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
            if let Some(map) = annotations.as_object_mut() {
                map.insert(PADDING_ANNOTATION.into(), Value::String(padding));
            }
        }
    }

    fn node_event(&mut self) -> Result<(), ApiError> {
        let count = self.store.count("nodes");
        if count > 0 && self.rng.random_bool(0.8) {
            let Some(node) = self.pick("nodes") else {
                return Ok(());
            };
            let mut node = (*node).clone();
            templates::toggle_node_ready(&mut node);
            strip_resource_version(&mut node);
            return self.store.update("nodes", None, node).map(drop);
        }
        if count > self.targets.nodes {
            let churned: Vec<String> = (0..count)
                .filter_map(|i| self.store.nth("nodes", i))
                .filter_map(|n| meta_str(&n, "name").map(str::to_string))
                .filter(|name| name.starts_with(CHURN_NODE_PREFIX))
                .collect();
            if !churned.is_empty() {
                let victim = &churned[self.rng.random_range(0..churned.len())];
                return self.store.delete("nodes", None, victim).map(drop);
            }
        }
        self.next_id += 1;
        let name = format!("{CHURN_NODE_PREFIX}{}", self.next_id);
        let index = count + self.next_id as usize;
        self.store
            .create("nodes", None, templates::node(&name, index, false))
            .map(drop)
    }
}

/// Churn writes unconditionally (no optimistic-lock precondition).
fn strip_resource_version(object: &mut Value) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
}
