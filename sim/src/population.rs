//! The initial cluster state: namespaces, nodes, pods spread over them, and a
//! few services, config maps and deployments. Deterministic given the seed.

use rand::Rng;
use rand::rngs::StdRng;

use crate::error::ApiError;
use crate::profile::ObjectProfile;
use crate::store::Store;
use crate::templates::{self, APPS, NAMESPACES};

/// Characters Kubernetes uses in generated name suffixes.
pub(crate) const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `len` random characters from the generated-name alphabet.
pub fn random_suffix(rng: &mut StdRng, len: usize) -> String {
    (0..len)
        .map(|_| char::from(SUFFIX_ALPHABET[rng.random_range(0..SUFFIX_ALPHABET.len())]))
        .collect()
}

/// The name of the `index`-th initial node; node 0 is the control plane.
pub fn node_name(index: usize) -> String {
    format!("sim-node-{index}")
}

/// Fills an empty store with the initial population, pods in `profile`'s
/// shape.
pub fn seed(
    store: &Store,
    rng: &mut StdRng,
    nodes: usize,
    pods: usize,
    profile: ObjectProfile,
) -> Result<(), ApiError> {
    for ns in NAMESPACES {
        store.create("namespaces", None, templates::namespace(ns))?;
        store.create(
            "configmaps",
            Some(ns),
            templates::config_map("kube-root-ca.crt", ns),
        )?;
    }
    for i in 0..nodes {
        store.create("nodes", None, templates::node(&node_name(i), i, i == 0))?;
    }
    for i in 0..pods {
        let ns = NAMESPACES[i % NAMESPACES.len()];
        let app = if ns == "kube-system" {
            &APPS[APPS.len() - 1]
        } else {
            &APPS[i % (APPS.len() - 1)]
        };
        let node = (nodes > 0).then(|| node_name(i % nodes));
        let name = format!(
            "{}-{}-{}",
            app.name,
            random_suffix(rng, 10),
            random_suffix(rng, 5)
        );
        let pod = profile.pod(rng, &name, ns, app, node.as_deref(), i);
        store.create("pods", Some(ns), pod)?;
    }
    for (i, ns) in NAMESPACES.iter().enumerate() {
        let app = if *ns == "kube-system" {
            &APPS[APPS.len() - 1]
        } else {
            &APPS[i % 2]
        };
        let service_name = if *ns == "kube-system" {
            "kube-dns"
        } else {
            app.name
        };
        store.create(
            "services",
            Some(ns),
            templates::service(service_name, ns, app.name, i),
        )?;
        store.create("deployments", Some(ns), templates::deployment(ns, app, 2))?;
    }
    tracing::info!(
        nodes,
        pods,
        rv = store.resource_version(),
        "initial population seeded"
    );
    Ok(())
}
