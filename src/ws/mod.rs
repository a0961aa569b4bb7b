//! The connection machinery every dialect runs on: the listener (per-address
//! admission, handshake deadline, trusted-proxy client info), the WebSocket
//! upgrade and permessage-deflate, the connection loop with its [`conn::Dialect`]
//! trait, the two lanes a subscription's output travels (the outbound queue and
//! the notice channel, one [`lane::Lane`] contract), the writer that sends the
//! outbound queue as vectored writes (with context takeover for frames many
//! connections send in the same order), and the abuse limits.
//!
//! It imports no dialect and no router: a dialect plugs in by implementing
//! [`conn::Dialect`] and being handed a [`WebSocket`].

pub mod close;
pub mod conn;
pub mod deflate;
pub mod forwarded;
pub mod lane;
pub mod limits;
pub mod listener;
pub mod notice;
pub mod outbound;
mod takeover;
mod upgrade;
mod writer;

pub use upgrade::{WebSocket, WebSocketUpgrade};
