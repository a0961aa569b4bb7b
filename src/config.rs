//! Settings of the proxy, from command-line flags and `KUBEMUX_…` environment
//! variables (flags win).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::hub::{HistoryLimits, HubConfig};
use crate::server::ServerConfig;
use crate::server::conn::Liveness;
use crate::server::outbound::QueueLimits;
use crate::upstream::UpstreamConfig;

/// Settings shared by `serve` and `demo`.
#[derive(Args, Clone, Debug)]
pub struct ProxyArgs {
    /// How long a shared watch outlives its last subscriber (e.g. 30s, 2m, 0s).
    #[arg(long, env = "KUBEMUX_LINGER", default_value = "30s", value_parser = parse_duration)]
    pub linger: Duration,
    /// Largest accepted client message in bytes; a larger one closes the socket with 1009.
    #[arg(long, env = "KUBEMUX_MAX_MESSAGE_SIZE", default_value_t = 64 * 1024, value_parser = clap::value_parser!(u32).range(256..=64 * 1024 * 1024))]
    pub max_message_size: u32,
    /// Most subscriptions one connection may hold.
    #[arg(long, env = "KUBEMUX_MAX_SUBSCRIPTIONS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_subscriptions: u32,
    /// Most bytes waiting in one connection's outbound queue before its
    /// subscriptions are cut off as slow consumers.
    #[arg(long, env = "KUBEMUX_QUEUE_MAX_BYTES", default_value_t = 8 << 20, value_parser = clap::value_parser!(u64).range(4096..=1 << 32))]
    pub queue_max_bytes: u64,
    /// Most frames waiting in one connection's outbound queue.
    #[arg(long, env = "KUBEMUX_QUEUE_MAX_FRAMES", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(16..=10_000_000))]
    pub queue_max_frames: u32,
    /// Most events kept in each shared watch's history.
    #[arg(long, env = "KUBEMUX_HISTORY_MAX_EVENTS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub history_max_events: u32,
    /// Oldest event kept in each shared watch's history (keep at least 75s).
    #[arg(long, env = "KUBEMUX_HISTORY_MAX_AGE", default_value = "150s", value_parser = parse_duration)]
    pub history_max_age: Duration,
    /// Interval of kubemux's own bookmarks to subscribers that ask for them.
    #[arg(long, env = "KUBEMUX_BOOKMARK_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub bookmark_interval: Duration,
    /// Interval of server pings on client connections.
    #[arg(long, env = "KUBEMUX_PING_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub ping_interval: Duration,
    /// How long after a ping an unanswered connection is closed.
    #[arg(long, env = "KUBEMUX_PONG_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub pong_timeout: Duration,
}

/// Parses `30s`, `2m`, `500ms` and the like.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 30s, 2m, 500ms)"))
}

impl ProxyArgs {
    /// The hub's settings.
    pub fn hub_config(&self) -> HubConfig {
        HubConfig {
            linger: self.linger,
            bookmark_interval: self.bookmark_interval.max(Duration::from_secs(1)),
            history: HistoryLimits {
                max_events: self.history_max_events as usize,
                max_age: self.history_max_age,
            },
            upstream: UpstreamConfig::default(),
            ..HubConfig::default()
        }
    }

    /// The server's settings.
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            max_message_size: self.max_message_size as usize,
            max_subscriptions: self.max_subscriptions as usize,
            queue: QueueLimits {
                max_bytes: self.queue_max_bytes as usize,
                max_frames: self.queue_max_frames as usize,
            },
            liveness: Liveness {
                ping_interval: self.ping_interval.max(Duration::from_millis(100)),
                pong_timeout: self.pong_timeout,
                ..Liveness::default()
            },
        }
    }
}

/// Address flags.
#[derive(Args, Clone, Debug)]
pub struct ListenArgs {
    /// Address the proxy listens on.
    #[arg(long, env = "KUBEMUX_LISTEN", default_value = "127.0.0.1:4466")]
    pub listen: SocketAddr,
}
