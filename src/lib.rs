//! kubemux: a Kubernetes watch multiplexer.
//!
//! Clients subscribe over one WebSocket to many watches; kubemux keeps one
//! shared upstream watch per distinct key and fans its events out. See
//! `docs/architecture.md` for the design.

pub mod auth;
pub mod cluster;
pub mod config;
pub mod dialect;
pub mod hub;
pub mod metrics;
pub mod server;
pub mod upstream;
pub mod ws;
