//! The protocols ("dialects") clients speak over the shared hub. Each is a
//! folder of its own: its frames and client messages, its per-connection
//! state, its settings. A dialect uses the hub and the connection machinery
//! ([`crate::ws`]); neither of those knows any dialect.

pub mod console;
pub mod dashboard;
pub mod headlamp;
pub mod notifications;
