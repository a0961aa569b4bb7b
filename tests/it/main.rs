//! The proxy's integration tests, as one test binary: each module was its
//! own binary (`tests/NAME.rs`) linking the whole stack once more; here the
//! stack is linked once. Every test still starts its own simulator and
//! proxy on loopback, and nextest runs each test in a process of its own,
//! so process-wide state (tokio's paused clock, environment variables)
//! stays per test. Shared helpers are in [`support`].

mod support;

mod admission;
mod auth;
mod cacher;
mod chaos;
mod clusters;
mod dashboard;
mod demo;
mod deploy;
mod fuzz;
mod headlamp;
mod headlamp_client;
mod layering;
mod limits;
mod managed_fields;
mod notifications;
mod operations;
mod property;
mod replicas;
mod resilience;
mod rest;
mod resume;
mod security;
mod seed_clients;
mod status_page;
mod subscriptions;
