//! Which shape the simulator's pods have: today's compact ones or pods as a
//! real cluster's kubelet and controllers leave them. One switch for the
//! initial population and the churn generator, so a run never mixes the two.

use std::fmt;
use std::str::FromStr;

use rand::rngs::StdRng;
use serde_json::Value;

use crate::realistic;
use crate::templates::{self, App};

/// The shape of generated pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ObjectProfile {
    /// Compact pods (~1.7 KiB of JSON): one container, a short status.
    #[default]
    Small,
    /// Pods shaped like kubelet-managed pods of a Deployment on a real
    /// cluster (5.5–8 KiB; a container's first restart adds ~0.25 KiB of
    /// `lastState`): `managedFields`, owner references, probes, volumes,
    /// the five conditions and full container statuses. Churn changes them the way
    /// kubelet does, through status updates.
    Realistic,
}

impl ObjectProfile {
    /// A new pod of `app` in `namespace` in this profile's shape (see
    /// [`templates::pod`] for the arguments). `rng` supplies what a real
    /// cluster draws at random (container ids, sidecars), so a seeded
    /// simulator repeats itself.
    pub fn pod(
        self,
        rng: &mut StdRng,
        name: &str,
        namespace: &str,
        app: &App,
        node: Option<&str>,
        pod_index: usize,
    ) -> Value {
        match self {
            ObjectProfile::Small => templates::pod(name, namespace, app, node, pod_index),
            ObjectProfile::Realistic => realistic::pod(rng, name, namespace, app, node, pod_index),
        }
    }

    /// The name as the command line spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectProfile::Small => "small",
            ObjectProfile::Realistic => "realistic",
        }
    }
}

impl fmt::Display for ObjectProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A profile name other than `small` or `realistic`.
#[derive(Debug, thiserror::Error)]
#[error("unknown object profile {0:?} (expected small or realistic)")]
pub struct UnknownProfile(String);

impl FromStr for ObjectProfile {
    type Err = UnknownProfile;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "small" => Ok(ObjectProfile::Small),
            "realistic" => Ok(ObjectProfile::Realistic),
            other => Err(UnknownProfile(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ObjectProfile;

    #[test]
    fn parses_what_it_prints() {
        for profile in [ObjectProfile::Small, ObjectProfile::Realistic] {
            assert_eq!(
                profile.as_str().parse::<ObjectProfile>().ok(),
                Some(profile)
            );
        }
        assert!("large".parse::<ObjectProfile>().is_err());
        assert_eq!(ObjectProfile::default(), ObjectProfile::Small);
    }
}
