//! A simulated Kubernetes API server for tests and benchmarks.
//!
//! It speaks real HTTP and writes JSON the way the real API server does, so
//! the `kube` client can be pointed at it: discovery, LIST with selectors and
//! pagination, WATCH with the watch cache's semantics (replay from a
//! resourceVersion, waiting for a future one, 410 Expired after compaction
//! by count, on a timer like etcd's or on demand, bookmarks,
//! `sendInitialEvents`, selector transitions, the legacy `/watch/` paths),
//! LIST at `Exact` or `NotOlderThan` versions, `ValidateListOptions`' 422s,
//! create/update/merge-patch/delete, Prometheus metrics, fault injection and
//! a churn generator.
//!
//! Layout: [`resources`] is the served-type table; [`store`] holds objects,
//! the global resourceVersion and the event history; [`watch`] streams
//! events; [`http`], [`api`], [`discovery`] and [`admin`] are the routes;
//! [`faults`], [`listener`] and [`churn`] implement the test knobs;
//! [`templates`] and [`realistic`] are the objects' bodies, [`profile`]
//! picks which pods look like.
//! Identities: [`auth`] (static tokens, live tables), [`rbac`] (rules),
//! [`access`] (401/403 and per-user counting), [`review`] (TokenReview and
//! SubjectAccessReview) and [`identity`] (per-user assertions).
//!
//! Seam for later work: a latency-stamp annotation belongs in
//! [`event::Event`]'s serialisation, the one place every watch line is
//! produced.

pub mod access;
pub mod admin;
pub mod api;
pub mod auth;
pub mod churn;
pub mod discovery;
pub mod error;
pub mod event;
pub mod faults;
pub mod http;
pub mod identity;
pub mod listener;
pub mod logs;
pub mod metrics;
pub mod object;
pub mod pagination;
pub mod path;
pub mod population;
pub mod profile;
pub mod query;
pub mod rbac;
pub mod realistic;
pub mod resource_metrics;
pub mod resources;
pub mod review;
pub mod selector;
pub mod server;
pub mod store;
pub mod templates;
pub mod time;
pub mod watch;

pub use auth::{Auth, AuthError, SimAuth, UserInfo};
pub use error::{ApiError, SimError};
pub use faults::{Faults, WatchFailure};
pub use profile::ObjectProfile;
pub use rbac::Rule;
pub use server::{SimConfig, SimServer};
pub use store::Store;
