//! WebSocket close codes used by kubemux.

/// Normal closure.
pub const NORMAL: u16 = 1000;
/// The server is restarting (shutdown, scale-down, rolling update): the
/// client should reconnect, to any replica, and resume from its version.
pub const SERVICE_RESTART: u16 = 1012;
/// Policy violation (e.g. a client that never answers pings).
pub const POLICY: u16 = 1008;
/// A message was too big to process.
pub const TOO_BIG: u16 = 1009;
/// No status code: never sent as one. A close frame with this code goes
/// out without a payload, as the answer to a client's empty close.
pub const NO_STATUS: u16 = 1005;
