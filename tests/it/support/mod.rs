//! What the integration tests share: the simulated API server and the real
//! proxy on loopback ([`Env`]), one HTTP client ([`Request`]), the
//! WebSocket clients ([`Client`], and [`RawWs`] for the wire format
//! itself), `kubemux` and HAProxy processes, and one way to wait
//! ([`eventually`]).

mod env;
mod http;
mod process;
mod state;
mod ws;

use std::time::Duration;

pub use env::*;
pub use http::*;
pub use process::*;
pub use state::*;
pub use ws::*;

/// Generous upper bound for anything a test waits for; never asserted as a speed.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The cluster name every single-cluster test's kubeconfig uses.
pub const CLUSTER: &str = "sim";

/// A pod field selector the API server (and the simulator) evaluates and
/// kubemux does not, and that every simulated pod matches: a query with it
/// keeps an upstream watch of its own instead of being filtered from the
/// pods' one cluster-wide watch, for tests of what happens per key.
pub const OWN_WATCH: &str = "fieldSelector=spec.hostNetwork%3Dfalse";

/// How often [`eventually`] polls.
const POLL: Duration = Duration::from_millis(20);

/// Polls `f` until it holds; panics with `what` after [`PATIENCE`].
pub async fn eventually(what: &str, f: impl Fn() -> bool) {
    eventually_ok(what, async || if f() { Ok(()) } else { Err("") }).await
}

/// Polls `poll` until it returns `Ok`, and returns its value; after
/// [`PATIENCE`] panics with `what` and the last `Err` (what was seen).
pub async fn eventually_ok<T, E: std::fmt::Display>(
    what: &str,
    mut poll: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match poll().await {
            Ok(value) => return value,
            Err(seen) if tokio::time::Instant::now() > deadline => match seen.to_string() {
                seen if seen.is_empty() => panic!("gave up waiting for: {what}"),
                seen => panic!("gave up waiting for: {what}; last seen: {seen}"),
            },
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// `base` (a dialect's own heartbeat) at test speed: a ping every 300 ms
/// and 300 ms to answer it.
pub fn quick_pings(base: kubemux::ws::conn::Liveness) -> kubemux::ws::conn::Liveness {
    kubemux::ws::conn::Liveness {
        ping_interval: Duration::from_millis(300),
        pong_timeout: Duration::from_millis(300),
        ..base
    }
}
