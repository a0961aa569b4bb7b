//! The protocols ("dialects") clients speak over the shared hub. Each is a
//! folder of its own: its frames and client messages, its per-connection
//! state, its settings. A dialect uses the hub and the connection machinery
//! ([`crate::ws`]); neither of those knows any dialect.

pub mod console;
pub mod dashboard;
pub mod headlamp;
pub mod notifications;
pub mod sink;

use crate::auth::policy::Policy;
use crate::hub::Hub;

/// The query of the hub watches the dashboard and the console make: the
/// store's contents, a bookmark marking their end, then live events (a
/// "watch list", which any subscriber of the key is served from the cache).
pub const WATCH_LIST: &str = "watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan";

/// Now, in RFC 3339 to the second, as the seeds write timestamps.
pub fn timestamp() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// What every dialect's connection is served with besides its own
/// settings: the hub, the auth mode, and the server's shutdown signal.
#[derive(Clone)]
pub struct Services {
    /// The hub every subscription goes through.
    pub hub: Hub,
    /// Whose identity upstream requests run as, and the reviews.
    pub policy: Policy,
    /// Turns true when the server shuts down.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}
