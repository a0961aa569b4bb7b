//! Settings of the proxy: command-line flags over `KUBEMUX_…` environment
//! variables over a TOML file (`--config`) over built-in defaults.
//!
//! Clap parses flags and environment variables into [`ProxyArgs`] (every
//! field optional, so "not given" is visible); [`Settings::resolve`] layers
//! them over the file and the defaults and validates every value, naming the
//! setting and its accepted range when one is out of bounds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;

use crate::auth::jwt::{JwtSettings, JwtVerifier};
use crate::auth::origin::OriginPolicy;
use crate::auth::policy::{AuthMode, Policy};
use crate::auth::recheck::Rechecks;
use crate::auth::review::Reviewer;
use crate::auth::secret::{Secret, SecretFileError};
use crate::dialect::console::ConsoleAuth;
use crate::dialect::{dashboard, headlamp, notifications};
use crate::hub::{HistoryLimits, HubConfig};
use crate::metrics::Metrics;
use crate::server::{ReadyBudget, ServerConfig};
use crate::upstream::UpstreamConfig;
use crate::ws::conn::Liveness;
use crate::ws::forwarded::TrustedProxies;
use crate::ws::limits::Limits;
use crate::ws::outbound::QueueLimits;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Flags (and their environment variables) shared by `serve` and `demo`.
/// Every value is optional here; defaults are applied by [`Settings::resolve`].
#[derive(Args, Clone, Debug, Default)]
pub struct ProxyArgs {
    /// TOML config file; flags and KUBEMUX_* variables override its values.
    #[arg(long, env = "KUBEMUX_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address the proxy listens on [default: 127.0.0.1:4466].
    #[arg(long, env = "KUBEMUX_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// How long a shared watch outlives its last subscriber, 0s to 1h [default: 30s].
    #[arg(long, env = "KUBEMUX_LINGER", value_parser = parse_duration)]
    pub linger: Option<Duration>,
    /// Largest client message in bytes (4096, 64KiB, 1 MiB…), 256 to 64 MiB; larger closes the socket with 1009 [default: 65536].
    #[arg(long, env = "KUBEMUX_MAX_MESSAGE_SIZE", value_parser = parse_byte_size)]
    pub max_message_size: Option<u64>,
    /// Subscriptions one connection may hold, 1 to 100000 [default: 1000].
    #[arg(long, env = "KUBEMUX_MAX_SUBSCRIPTIONS")]
    pub max_subscriptions: Option<u64>,
    /// Bytes (8MiB, 8 MiB, 8388608…) waiting in one connection's queue before its subscriptions are cut off as slow consumers, 4096 to 4 GiB [default: 8388608].
    #[arg(long, env = "KUBEMUX_QUEUE_MAX_BYTES", value_parser = parse_byte_size)]
    pub queue_max_bytes: Option<u64>,
    /// Frames waiting in one connection's queue, 16 to 10000000 [default: 65536].
    #[arg(long, env = "KUBEMUX_QUEUE_MAX_FRAMES")]
    pub queue_max_frames: Option<u64>,
    /// Events kept in each shared watch's history, 1 to 10000000 [default: 10000].
    #[arg(long, env = "KUBEMUX_HISTORY_MAX_EVENTS")]
    pub history_max_events: Option<u64>,
    /// Age of the oldest event kept in a history, 75s to 24h [default: 150s].
    #[arg(long, env = "KUBEMUX_HISTORY_MAX_AGE", value_parser = parse_duration)]
    pub history_max_age: Option<Duration>,
    /// Interval of kubemux's own bookmarks to subscribers that ask for them, 1s to 1h [default: 60s].
    #[arg(long, env = "KUBEMUX_BOOKMARK_INTERVAL", value_parser = parse_duration)]
    pub bookmark_interval: Option<Duration>,
    /// Interval of server pings, 1s to 10m [default: 30s].
    #[arg(long, env = "KUBEMUX_PING_INTERVAL", value_parser = parse_duration)]
    pub ping_interval: Option<Duration>,
    /// How long after a ping an unanswered connection is closed, 1s to 10m [default: 30s].
    #[arg(long, env = "KUBEMUX_PONG_TIMEOUT", value_parser = parse_duration)]
    pub pong_timeout: Option<Duration>,
    /// On SIGTERM/SIGINT, how long to wait for clients to receive COMPLETE and close, 0s to 10m [default: 20s].
    #[arg(long, env = "KUBEMUX_SHUTDOWN_GRACE", value_parser = parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// Log output: human or json [default: human]. The level comes from RUST_LOG (default info).
    #[arg(long, env = "KUBEMUX_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Browser origins allowed besides the same origin, comma-separated (e.g. https://dash.example.com, or * for any) [default: none].
    #[arg(long, env = "KUBEMUX_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Reverse proxies (addresses or blocks, comma-separated: 10.0.0.0/8,127.0.0.1) whose Forwarded / X-Forwarded-For / -Host / -Proto headers are believed, for the same-origin check and the client address of per-address limits [default: none, the headers are ignored].
    #[arg(long, env = "KUBEMUX_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
    /// Whose identity upstream requests use: passthrough (each client's own token) or none (kubemux's, loopback only) [default: passthrough for serve, none for demo].
    #[arg(long, env = "KUBEMUX_AUTH")]
    pub auth: Option<AuthMode>,
    /// Allow --auth none on a non-loopback listener.
    #[arg(long, env = "KUBEMUX_ALLOW_UNAUTHENTICATED_REMOTE")]
    pub allow_unauthenticated_remote: bool,
    /// With --auth none, serve secrets too.
    #[arg(long, env = "KUBEMUX_ALLOW_SECRETS")]
    pub allow_secrets: bool,
    /// Also serve cluster notifications (seed 002) at /ws and /api/clusters on this address [default: off].
    #[arg(long, env = "KUBEMUX_NOTIFICATIONS_LISTEN")]
    pub notifications_listen: Option<SocketAddr>,
    /// Also serve the cluster-dashboard stream (seed 001) at /ws on this address [default: off].
    #[arg(long, env = "KUBEMUX_DASHBOARD_LISTEN")]
    pub dashboard_listen: Option<SocketAddr>,
    /// Interval of the dashboard stream's metrics messages, 1s to 10m [default: 10s].
    #[arg(long, env = "KUBEMUX_DASHBOARD_METRICS_INTERVAL", value_parser = parse_duration)]
    pub dashboard_metrics_interval: Option<Duration>,
    /// Open TCP connections from one client address; more are answered 429, 1 to 1000000 [default: 1024].
    #[arg(long, env = "KUBEMUX_MAX_CONNECTIONS_PER_ADDRESS")]
    pub max_connections_per_address: Option<u64>,
    /// A client must send its whole request head (the WebSocket handshake) within this long; also the idle limit of HTTP keep-alive connections, 1s to 10m [default: 10s].
    #[arg(long, env = "KUBEMUX_HANDSHAKE_TIMEOUT", value_parser = parse_duration)]
    pub handshake_timeout: Option<Duration>,
    /// A Headlamp connection with nothing subscribed that sends nothing for this long is closed; 0s never closes, 0s to 24h [default: 10m].
    #[arg(long, env = "KUBEMUX_IDLE_TIMEOUT", value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Client messages per second per connection (CLOSE always passes); more get an ERROR and are not processed, 1 to 100000 [default: 1000].
    #[arg(long, env = "KUBEMUX_MESSAGE_RATE")]
    pub message_rate: Option<u64>,
    /// Burst of client messages above --message-rate, 1 to 100000 [default: 2000].
    #[arg(long, env = "KUBEMUX_MESSAGE_BURST")]
    pub message_burst: Option<u64>,
    /// Bytes (2GiB, 512 MiB…) all outbound queues may hold together; beyond it connections with a backlog are cut and new WebSockets get 503, 1 MiB to 1 TiB [default: 2147483648].
    #[arg(long, env = "KUBEMUX_QUEUE_MEMORY_BUDGET", value_parser = parse_byte_size)]
    pub queue_memory_budget: Option<u64>,
    /// Bytes (512MiB, 64 MiB…) the outbound queues of one client address may hold together; over it, its connection with a backlog is closed with 1008; 0 = a quarter of --queue-memory-budget, up to 1 TiB [default: 0].
    #[arg(long, env = "KUBEMUX_QUEUE_BUDGET_PER_CLIENT", value_parser = parse_byte_size)]
    pub queue_budget_per_client: Option<u64>,
    /// REST requests (/clusters/…) per second per client address, and per identity when a credential is sent; more get 429 with Retry-After, 1 to 100000 [default: 100].
    #[arg(long, env = "KUBEMUX_REST_RATE")]
    pub rest_rate: Option<u64>,
    /// Burst of REST requests above --rest-rate (a dashboard's page load lists a few dozen paths per cluster at once), 1 to 1000000 [default: 1000].
    #[arg(long, env = "KUBEMUX_REST_BURST")]
    pub rest_burst: Option<u64>,
    /// Shared (= upstream) watches on one cluster; a REQUEST for a new key beyond it gets an ERROR naming this limit, 1 to 1000000 [default: 2000].
    #[arg(long, env = "KUBEMUX_MAX_UPSTREAM_WATCHES")]
    pub max_upstream_watches: Option<u64>,
    /// With --auth passthrough, shared watches one caller's token may hold on one cluster, 1 to 1000000 [default: 200].
    #[arg(long, env = "KUBEMUX_MAX_WATCHES_PER_IDENTITY")]
    pub max_watches_per_identity: Option<u64>,
    /// On SIGTERM, how long /readyz fails while every client is still served, before the sockets close (a load balancer's time to stop sending new clients; a Deployment's preStop delay), 0s to 10m [default: 0s].
    #[arg(long, env = "KUBEMUX_SHUTDOWN_DELAY", value_parser = parse_duration)]
    pub shutdown_delay: Option<Duration>,
    /// Open WebSocket connections above which /readyz fails, so a load balancer sends new clients to another replica; 0 = no budget [default: 0].
    #[arg(long, env = "KUBEMUX_READY_MAX_CONNECTIONS")]
    pub ready_max_connections: Option<u64>,
    /// Bytes (1GiB, 1073741824…) queued for clients above which /readyz fails; 0 = no budget [default: 0].
    #[arg(long, env = "KUBEMUX_READY_MAX_QUEUE_BYTES", value_parser = parse_byte_size)]
    pub ready_max_queue_bytes: Option<u64>,
    /// Cluster notifications: updates to one cluster closer together than this are merged, 0s to 1m [default: 1s].
    #[arg(long, env = "KUBEMUX_NOTIFICATIONS_DEBOUNCE", value_parser = parse_duration)]
    pub notifications_debounce: Option<Duration>,
    /// With --auth shared, how long TokenReview and SubjectAccessReview answers are reused, 0s to 10m [default: 30s].
    #[arg(long, env = "KUBEMUX_AUTH_CACHE_TTL", value_parser = parse_duration)]
    pub auth_cache_ttl: Option<Duration>,
    /// With --auth shared, how often live subscribers are re-authorised (a revoked one gets ERROR and COMPLETE), 1s to 1h [default: 30s].
    #[arg(long, env = "KUBEMUX_AUTH_RECHECK_INTERVAL", value_parser = parse_duration)]
    pub auth_recheck_interval: Option<Duration>,
    /// Also serve the subscription API (seed 003) at /ws on this address; needs a JWT key [default: off].
    #[arg(long, env = "KUBEMUX_SUBSCRIPTIONS_LISTEN")]
    pub subscriptions_listen: Option<SocketAddr>,
    /// Subscription API: file holding the HS256 secret its JWTs are signed with [default: none].
    #[arg(long, env = "KUBEMUX_JWT_HS256_SECRET_FILE")]
    pub jwt_hs256_secret_file: Option<PathBuf>,
    /// Subscription API: PEM public key its JWTs are signed with (RSA → RS256, EC P-256 → ES256) [default: none].
    #[arg(long, env = "KUBEMUX_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// Subscription API: required JWT issuer (iss) [default: not checked].
    #[arg(long, env = "KUBEMUX_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Subscription API: required JWT audience (aud) [default: not checked].
    #[arg(long, env = "KUBEMUX_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Subscription API: the JWT claim naming the Kubernetes user [default: sub].
    #[arg(long, env = "KUBEMUX_JWT_USER_CLAIM")]
    pub jwt_user_claim: Option<String>,
    /// Subscription API: the JWT claim listing the user's Kubernetes groups [default: groups].
    #[arg(long, env = "KUBEMUX_JWT_GROUPS_CLAIM")]
    pub jwt_groups_claim: Option<String>,
    /// File holding Headlamp's backend token (its HEADLAMP_BACKEND_TOKEN): /wsMultiplexer and /clusters/… then require it, by X-HEADLAMP_BACKEND-TOKEN or Headlamp's backend-token subprotocol; it is never sent to a cluster [default: not required].
    #[arg(long, env = "KUBEMUX_HEADLAMP_BACKEND_TOKEN_FILE")]
    pub headlamp_backend_token_file: Option<PathBuf>,
    /// File holding the operator's bearer token: with --auth shared or passthrough, only `Authorization: Bearer <it>` sees the shared watches and API server addresses on /api/status and /api/clusters [default: nobody does].
    #[arg(long, env = "KUBEMUX_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
}

/// The same settings as read from a TOML file. Unknown keys are errors, so a
/// typo does not silently fall back to a default.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    linger: Option<String>,
    max_message_size: Option<FileBytes>,
    max_subscriptions: Option<u64>,
    queue_max_bytes: Option<FileBytes>,
    queue_max_frames: Option<u64>,
    history_max_events: Option<u64>,
    history_max_age: Option<String>,
    bookmark_interval: Option<String>,
    ping_interval: Option<String>,
    pong_timeout: Option<String>,
    shutdown_grace: Option<String>,
    log_format: Option<LogFormat>,
    allowed_origins: Option<Vec<String>>,
    trusted_proxies: Option<Vec<String>>,
    auth: Option<AuthMode>,
    allow_unauthenticated_remote: Option<bool>,
    allow_secrets: Option<bool>,
    auth_cache_ttl: Option<String>,
    auth_recheck_interval: Option<String>,
    notifications_listen: Option<String>,
    notifications_debounce: Option<String>,
    dashboard_listen: Option<String>,
    dashboard_metrics_interval: Option<String>,
    max_connections_per_address: Option<u64>,
    handshake_timeout: Option<String>,
    idle_timeout: Option<String>,
    message_rate: Option<u64>,
    message_burst: Option<u64>,
    queue_memory_budget: Option<FileBytes>,
    queue_budget_per_client: Option<FileBytes>,
    rest_rate: Option<u64>,
    rest_burst: Option<u64>,
    max_upstream_watches: Option<u64>,
    max_watches_per_identity: Option<u64>,
    shutdown_delay: Option<String>,
    ready_max_connections: Option<u64>,
    ready_max_queue_bytes: Option<FileBytes>,
    subscriptions_listen: Option<String>,
    jwt_hs256_secret_file: Option<PathBuf>,
    jwt_public_key_file: Option<PathBuf>,
    jwt_issuer: Option<String>,
    jwt_audience: Option<String>,
    jwt_user_claim: Option<String>,
    jwt_groups_claim: Option<String>,
    headlamp_backend_token_file: Option<PathBuf>,
    admin_token_file: Option<PathBuf>,
}

/// Why the configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for kubemux.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The combination of settings is unsafe.
    #[error("{0}")]
    Unsafe(String),
    /// The subscription API's JWT settings are unusable.
    #[error("{0}")]
    Jwt(String),
    /// A token file (Headlamp's backend token, the admin token) is unusable.
    #[error(transparent)]
    Secret(#[from] SecretFileError),
    /// A setting is out of its accepted range.
    #[error("invalid {setting} = {value}: accepted {accepted}")]
    Invalid {
        /// The setting's name (as in the file; the flag is `--` plus dashes).
        setting: &'static str,
        /// The rejected value.
        value: String,
        /// The accepted range.
        accepted: &'static str,
    },
}

/// The effective settings of the proxy.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Linger of idle shared watches.
    pub linger: Duration,
    /// Largest client message.
    pub max_message_size: u64,
    /// Subscriptions per connection.
    pub max_subscriptions: u64,
    /// Outbound queue bytes per connection.
    pub queue_max_bytes: u64,
    /// Outbound queue frames per connection.
    pub queue_max_frames: u64,
    /// History events per shared watch.
    pub history_max_events: u64,
    /// History age per shared watch.
    pub history_max_age: Duration,
    /// kubemux's own bookmark interval.
    pub bookmark_interval: Duration,
    /// Ping interval.
    pub ping_interval: Duration,
    /// Pong deadline.
    pub pong_timeout: Duration,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Browser origins allowed besides the same origin.
    pub allowed_origins: Vec<String>,
    /// Reverse proxies whose forwarded headers are believed.
    pub trusted_proxies: Vec<String>,
    /// Auth mode.
    pub auth: AuthMode,
    /// `none` on a non-loopback listener is allowed.
    pub allow_unauthenticated_remote: bool,
    /// `none` serves secrets.
    pub allow_secrets: bool,
    /// `shared`: review answers are reused this long.
    pub auth_cache_ttl: Duration,
    /// `shared`: live subscribers are re-authorised this often.
    pub auth_recheck_interval: Duration,
    /// Own listener for cluster notifications.
    pub notifications_listen: Option<SocketAddr>,
    /// Debounce of cluster updates.
    pub notifications_debounce: Duration,
    /// Own listener for the dashboard stream.
    pub dashboard_listen: Option<SocketAddr>,
    /// Dashboard metrics interval.
    pub dashboard_metrics_interval: Duration,
    /// Open connections per client address.
    pub max_connections_per_address: u64,
    /// Deadline for a request head.
    pub handshake_timeout: Duration,
    /// Idle Headlamp connections are closed after this (zero: never).
    pub idle_timeout: Duration,
    /// Client messages per second per connection.
    pub message_rate: u64,
    /// Burst above the message rate.
    pub message_burst: u64,
    /// Bytes of all outbound queues together.
    pub queue_memory_budget: u64,
    /// Bytes of one client address's outbound queues together (0: a
    /// quarter of the budget).
    pub queue_budget_per_client: u64,
    /// REST requests per second per client address and per identity.
    pub rest_rate: u64,
    /// Burst above the REST rate.
    pub rest_burst: u64,
    /// Shared watches per cluster.
    pub max_upstream_watches: u64,
    /// Shared watches per passthrough identity and cluster.
    pub max_watches_per_identity: u64,
    /// Readiness-failing time before the sockets close on SIGTERM.
    pub shutdown_delay: Duration,
    /// Connections above which readiness fails (0 = none).
    pub ready_max_connections: u64,
    /// Queued bytes above which readiness fails (0 = none).
    pub ready_max_queue_bytes: u64,
    /// Own listener for the subscription API.
    pub subscriptions_listen: Option<SocketAddr>,
    /// The subscription API's JWT key and claims.
    pub jwt: JwtSettings,
    /// File of Headlamp's backend token, required of Headlamp's requests.
    pub headlamp_backend_token_file: Option<PathBuf>,
    /// File of the operator's bearer token, for the status detail.
    pub admin_token_file: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 4466)),
            linger: Duration::from_secs(30),
            max_message_size: 64 * 1024,
            max_subscriptions: 1000,
            queue_max_bytes: 8 << 20,
            queue_max_frames: 65_536,
            history_max_events: 10_000,
            history_max_age: Duration::from_secs(150),
            bookmark_interval: Duration::from_secs(60),
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(20),
            log_format: LogFormat::Human,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            auth: AuthMode::Passthrough,
            allow_unauthenticated_remote: false,
            allow_secrets: false,
            auth_cache_ttl: Duration::from_secs(30),
            auth_recheck_interval: Duration::from_secs(30),
            notifications_listen: None,
            notifications_debounce: Duration::from_secs(1),
            dashboard_listen: None,
            dashboard_metrics_interval: Duration::from_secs(10),
            max_connections_per_address: 1024,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            message_rate: 1000,
            message_burst: 2000,
            queue_memory_budget: 2 << 30,
            queue_budget_per_client: 0,
            rest_rate: 100,
            rest_burst: 1000,
            max_upstream_watches: 2_000,
            max_watches_per_identity: 200,
            shutdown_delay: Duration::ZERO,
            ready_max_connections: 0,
            ready_max_queue_bytes: 0,
            subscriptions_listen: None,
            jwt: JwtSettings {
                user_claim: "sub".into(),
                groups_claim: "groups".into(),
                ..JwtSettings::default()
            },
            headlamp_backend_token_file: None,
            admin_token_file: None,
        }
    }
}

/// Parses `30s`, `2m`, `500ms` and the like.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 30s, 2m, 500ms)"))
}

/// How byte sizes may be written, for error messages.
const BYTE_FORMS: &str = "a whole number of bytes, optionally with a binary unit: 4096, 64KiB, 8 MiB, 2G (B, K/KiB, M/MiB, G/GiB, T/TiB)";

/// Parses a byte size as README writes them (`8 MiB`, `64KiB`, `2G`,
/// `4096`): a whole number, optional spaces, an optional binary unit. Decimal
/// units (`MB`) are refused rather than guessed at, since `8MB` as 8,000,000
/// or 8,388,608 would both surprise someone.
pub fn parse_byte_size(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let shift = match unit.trim_start() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        _ => return Err(format!("{s:?} is not a size: expected {BYTE_FORMS}")),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size: expected {BYTE_FORMS}"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large: at most {} bytes", u64::MAX))
}

/// A byte size in the config file: a TOML integer (as `to_toml` writes and
/// older files have) or a string with a unit. TOML integers are signed, so a
/// negative one is refused by [`file_bytes`] with the setting's name instead
/// of an anonymous "did not match any variant".
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum FileBytes {
    Number(i64),
    Text(String),
}

fn file_bytes(setting: &'static str, value: Option<FileBytes>) -> Result<Option<u64>, ConfigError> {
    let invalid = |value: String| ConfigError::Invalid {
        setting,
        value,
        accepted: BYTE_FORMS,
    };
    value
        .map(|v| match v {
            FileBytes::Number(n) => u64::try_from(n).map_err(|_| invalid(n.to_string())),
            FileBytes::Text(t) => parse_byte_size(&t).map_err(|_| invalid(t)),
        })
        .transpose()
}

fn file_duration(
    setting: &'static str,
    value: Option<String>,
    accepted: &'static str,
) -> Result<Option<Duration>, ConfigError> {
    value
        .map(|v| {
            parse_duration(&v).map_err(|_| ConfigError::Invalid {
                setting,
                value: v.clone(),
                accepted,
            })
        })
        .transpose()
}

fn check_int(
    setting: &'static str,
    value: u64,
    range: std::ops::RangeInclusive<u64>,
    accepted: &'static str,
) -> Result<u64, ConfigError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::Invalid {
            setting,
            value: value.to_string(),
            accepted,
        })
    }
}

fn check_duration(
    setting: &'static str,
    value: Duration,
    range: std::ops::RangeInclusive<Duration>,
    accepted: &'static str,
) -> Result<Duration, ConfigError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::Invalid {
            setting,
            value: humantime::format_duration(value).to_string(),
            accepted,
        })
    }
}

impl Settings {
    /// Layers flags/env over the config file (if any) over the defaults and
    /// validates the result; `default_auth` is the command's own default.
    pub fn resolve(args: &ProxyArgs, default_auth: AuthMode) -> Result<Settings, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Self::layer(args, file, default_auth)
    }

    /// Parses a TOML document as a config file and layers `args` over it
    /// (with `serve`'s defaults).
    pub fn from_toml(
        args: &ProxyArgs,
        toml_text: &str,
        origin: &str,
    ) -> Result<Settings, ConfigError> {
        Self::layer(args, parse_file(toml_text, origin)?, AuthMode::Passthrough)
    }

    /// The auth policy these settings describe.
    pub fn policy(&self, metrics: &Arc<Metrics>) -> Policy {
        match self.auth {
            AuthMode::Shared => Policy::shared(
                Arc::new(Reviewer::new(self.auth_cache_ttl, metrics.clone())),
                self.auth_recheck_interval,
            ),
            AuthMode::Passthrough => Policy::passthrough(
                Arc::new(Reviewer::new(self.auth_cache_ttl, metrics.clone())),
                self.auth_recheck_interval,
            ),
            AuthMode::None => Policy::none(self.allow_secrets),
        }
    }

    fn layer(
        args: &ProxyArgs,
        file: FileConfig,
        default_auth: AuthMode,
    ) -> Result<Settings, ConfigError> {
        let settings = Self::layer_values(args, file, default_auth)?;
        let verifier = JwtVerifier::from_settings(&settings.jwt)
            .map_err(|e| ConfigError::Jwt(e.to_string()))?;
        if settings.subscriptions_listen.is_some() && verifier.is_none() {
            return Err(ConfigError::Jwt(
                "subscriptions_listen serves the subscription API, which needs a JWT key: set jwt_hs256_secret_file or jwt_public_key_file".into(),
            ));
        }
        settings.headlamp_backend_token()?;
        settings.admin_token()?;
        settings
            .auth
            .check_listener(settings.listen, settings.allow_unauthenticated_remote)
            .map_err(|e| ConfigError::Unsafe(e.to_string()))?;
        Ok(settings)
    }

    fn layer_values(
        args: &ProxyArgs,
        file: FileConfig,
        default_auth: AuthMode,
    ) -> Result<Settings, ConfigError> {
        let d = Settings::default();
        let listen = match (args.listen, file.listen) {
            (Some(a), _) => a,
            (None, Some(s)) => s.parse().map_err(|_| ConfigError::Invalid {
                setting: "listen",
                value: s.clone(),
                accepted: "an address like 127.0.0.1:4466",
            })?,
            (None, None) => d.listen,
        };
        let dur = |flag: Option<Duration>,
                   setting: &'static str,
                   file: Option<String>,
                   default: Duration,
                   range: std::ops::RangeInclusive<Duration>,
                   accepted: &'static str|
         -> Result<Duration, ConfigError> {
            let value = match flag {
                Some(v) => v,
                None => file_duration(setting, file, accepted)?.unwrap_or(default),
            };
            check_duration(setting, value, range, accepted)
        };
        let secs = Duration::from_secs;
        let bytes = |flag: Option<u64>,
                     setting: &'static str,
                     file: Option<FileBytes>|
         -> Result<Option<u64>, ConfigError> {
            match flag {
                Some(v) => Ok(Some(v)),
                None => file_bytes(setting, file),
            }
        };
        let claim = |flag: &Option<String>,
                     file: Option<String>,
                     setting: &'static str,
                     default: String| {
            let value = flag.clone().or(file).unwrap_or(default);
            if value.is_empty() {
                Err(ConfigError::Invalid {
                    setting,
                    value,
                    accepted: "a non-empty claim name",
                })
            } else {
                Ok(value)
            }
        };
        let jwt = JwtSettings {
            hs256_secret_file: args
                .jwt_hs256_secret_file
                .clone()
                .or(file.jwt_hs256_secret_file),
            public_key_file: args
                .jwt_public_key_file
                .clone()
                .or(file.jwt_public_key_file),
            issuer: args.jwt_issuer.clone().or(file.jwt_issuer),
            audience: args.jwt_audience.clone().or(file.jwt_audience),
            user_claim: claim(
                &args.jwt_user_claim,
                file.jwt_user_claim,
                "jwt_user_claim",
                d.jwt.user_claim.clone(),
            )?,
            groups_claim: claim(
                &args.jwt_groups_claim,
                file.jwt_groups_claim,
                "jwt_groups_claim",
                d.jwt.groups_claim.clone(),
            )?,
        };
        Ok(Settings {
            jwt,
            headlamp_backend_token_file: args
                .headlamp_backend_token_file
                .clone()
                .or(file.headlamp_backend_token_file),
            admin_token_file: args.admin_token_file.clone().or(file.admin_token_file),
            subscriptions_listen: optional_addr(
                "subscriptions_listen",
                args.subscriptions_listen,
                file.subscriptions_listen,
            )?,
            listen,
            linger: dur(
                args.linger,
                "linger",
                file.linger,
                d.linger,
                Duration::ZERO..=secs(3600),
                "0s to 1h",
            )?,
            max_message_size: check_int(
                "max_message_size",
                bytes(
                    args.max_message_size,
                    "max_message_size",
                    file.max_message_size,
                )?
                .unwrap_or(d.max_message_size),
                256..=64 << 20,
                "256 to 67108864 bytes (64 MiB)",
            )?,
            max_subscriptions: check_int(
                "max_subscriptions",
                args.max_subscriptions
                    .or(file.max_subscriptions)
                    .unwrap_or(d.max_subscriptions),
                1..=100_000,
                "1 to 100000",
            )?,
            queue_max_bytes: check_int(
                "queue_max_bytes",
                bytes(
                    args.queue_max_bytes,
                    "queue_max_bytes",
                    file.queue_max_bytes,
                )?
                .unwrap_or(d.queue_max_bytes),
                4096..=4 << 30,
                "4096 to 4294967296 bytes (4 GiB)",
            )?,
            queue_max_frames: check_int(
                "queue_max_frames",
                args.queue_max_frames
                    .or(file.queue_max_frames)
                    .unwrap_or(d.queue_max_frames),
                16..=10_000_000,
                "16 to 10000000",
            )?,
            history_max_events: check_int(
                "history_max_events",
                args.history_max_events
                    .or(file.history_max_events)
                    .unwrap_or(d.history_max_events),
                1..=10_000_000,
                "1 to 10000000",
            )?,
            history_max_age: dur(
                args.history_max_age,
                "history_max_age",
                file.history_max_age,
                d.history_max_age,
                secs(75)..=secs(86_400),
                "75s to 24h",
            )?,
            bookmark_interval: dur(
                args.bookmark_interval,
                "bookmark_interval",
                file.bookmark_interval,
                d.bookmark_interval,
                secs(1)..=secs(3600),
                "1s to 1h",
            )?,
            ping_interval: dur(
                args.ping_interval,
                "ping_interval",
                file.ping_interval,
                d.ping_interval,
                secs(1)..=secs(600),
                "1s to 10m",
            )?,
            pong_timeout: dur(
                args.pong_timeout,
                "pong_timeout",
                file.pong_timeout,
                d.pong_timeout,
                secs(1)..=secs(600),
                "1s to 10m",
            )?,
            shutdown_grace: dur(
                args.shutdown_grace,
                "shutdown_grace",
                file.shutdown_grace,
                d.shutdown_grace,
                Duration::ZERO..=secs(600),
                "0s to 10m",
            )?,
            log_format: args.log_format.or(file.log_format).unwrap_or(d.log_format),
            allowed_origins: if args.allowed_origins.is_empty() {
                file.allowed_origins.unwrap_or(d.allowed_origins)
            } else {
                args.allowed_origins.clone()
            },
            trusted_proxies: {
                let blocks = if args.trusted_proxies.is_empty() {
                    file.trusted_proxies.unwrap_or_default()
                } else {
                    args.trusted_proxies.clone()
                };
                let blocks: Vec<String> = blocks
                    .iter()
                    .map(|b| b.trim().to_string())
                    .filter(|b| !b.is_empty())
                    .collect();
                TrustedProxies::parse(&blocks).map_err(|bad| ConfigError::Invalid {
                    setting: "trusted_proxies",
                    value: bad.0,
                    accepted: "addresses or blocks like 10.0.0.0/8, 127.0.0.1, fd00::/8",
                })?;
                blocks
            },
            auth: args.auth.or(file.auth).unwrap_or(default_auth),
            allow_unauthenticated_remote: args.allow_unauthenticated_remote
                || file.allow_unauthenticated_remote.unwrap_or(false),
            allow_secrets: args.allow_secrets || file.allow_secrets.unwrap_or(false),
            auth_cache_ttl: dur(
                args.auth_cache_ttl,
                "auth_cache_ttl",
                file.auth_cache_ttl,
                d.auth_cache_ttl,
                Duration::ZERO..=secs(600),
                "0s to 10m",
            )?,
            auth_recheck_interval: dur(
                args.auth_recheck_interval,
                "auth_recheck_interval",
                file.auth_recheck_interval,
                d.auth_recheck_interval,
                secs(1)..=secs(3600),
                "1s to 1h",
            )?,
            notifications_listen: optional_addr(
                "notifications_listen",
                args.notifications_listen,
                file.notifications_listen,
            )?,
            dashboard_listen: optional_addr(
                "dashboard_listen",
                args.dashboard_listen,
                file.dashboard_listen,
            )?,
            dashboard_metrics_interval: dur(
                args.dashboard_metrics_interval,
                "dashboard_metrics_interval",
                file.dashboard_metrics_interval,
                d.dashboard_metrics_interval,
                secs(1)..=secs(600),
                "1s to 10m",
            )?,
            notifications_debounce: dur(
                args.notifications_debounce,
                "notifications_debounce",
                file.notifications_debounce,
                d.notifications_debounce,
                Duration::ZERO..=secs(60),
                "0s to 1m",
            )?,
            max_connections_per_address: check_int(
                "max_connections_per_address",
                args.max_connections_per_address
                    .or(file.max_connections_per_address)
                    .unwrap_or(d.max_connections_per_address),
                1..=1_000_000,
                "1 to 1000000",
            )?,
            handshake_timeout: dur(
                args.handshake_timeout,
                "handshake_timeout",
                file.handshake_timeout,
                d.handshake_timeout,
                secs(1)..=secs(600),
                "1s to 10m",
            )?,
            idle_timeout: dur(
                args.idle_timeout,
                "idle_timeout",
                file.idle_timeout,
                d.idle_timeout,
                Duration::ZERO..=secs(86_400),
                "0s (never) to 24h",
            )?,
            message_rate: check_int(
                "message_rate",
                args.message_rate
                    .or(file.message_rate)
                    .unwrap_or(d.message_rate),
                1..=100_000,
                "1 to 100000",
            )?,
            message_burst: check_int(
                "message_burst",
                args.message_burst
                    .or(file.message_burst)
                    .unwrap_or(d.message_burst),
                1..=100_000,
                "1 to 100000",
            )?,
            queue_memory_budget: check_int(
                "queue_memory_budget",
                bytes(
                    args.queue_memory_budget,
                    "queue_memory_budget",
                    file.queue_memory_budget,
                )?
                .unwrap_or(d.queue_memory_budget),
                1 << 20..=1 << 40,
                "1048576 to 1099511627776 bytes (1 MiB to 1 TiB)",
            )?,
            queue_budget_per_client: check_int(
                "queue_budget_per_client",
                bytes(
                    args.queue_budget_per_client,
                    "queue_budget_per_client",
                    file.queue_budget_per_client,
                )?
                .unwrap_or(d.queue_budget_per_client),
                0..=1 << 40,
                "0 (a quarter of queue_memory_budget) to 1099511627776 bytes (1 TiB)",
            )?,
            rest_rate: check_int(
                "rest_rate",
                args.rest_rate.or(file.rest_rate).unwrap_or(d.rest_rate),
                1..=100_000,
                "1 to 100000",
            )?,
            rest_burst: check_int(
                "rest_burst",
                args.rest_burst.or(file.rest_burst).unwrap_or(d.rest_burst),
                1..=1_000_000,
                "1 to 1000000",
            )?,
            max_upstream_watches: check_int(
                "max_upstream_watches",
                args.max_upstream_watches
                    .or(file.max_upstream_watches)
                    .unwrap_or(d.max_upstream_watches),
                1..=1_000_000,
                "1 to 1000000",
            )?,
            max_watches_per_identity: check_int(
                "max_watches_per_identity",
                args.max_watches_per_identity
                    .or(file.max_watches_per_identity)
                    .unwrap_or(d.max_watches_per_identity),
                1..=1_000_000,
                "1 to 1000000",
            )?,
            shutdown_delay: dur(
                args.shutdown_delay,
                "shutdown_delay",
                file.shutdown_delay,
                d.shutdown_delay,
                Duration::ZERO..=secs(600),
                "0s to 10m",
            )?,
            ready_max_connections: args
                .ready_max_connections
                .or(file.ready_max_connections)
                .unwrap_or(d.ready_max_connections),
            ready_max_queue_bytes: bytes(
                args.ready_max_queue_bytes,
                "ready_max_queue_bytes",
                file.ready_max_queue_bytes,
            )?
            .unwrap_or(d.ready_max_queue_bytes),
        })
    }

    /// The settings as a TOML document, in the config file's own format.
    pub fn to_toml(&self) -> String {
        let d = |v: Duration| humantime::format_duration(v).to_string();
        let format = match self.log_format {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        };
        format!(
            "listen = \"{}\"\nlinger = \"{}\"\nmax_message_size = {}\nmax_subscriptions = {}\n\
             queue_max_bytes = {}\nqueue_max_frames = {}\nhistory_max_events = {}\n\
             history_max_age = \"{}\"\nbookmark_interval = \"{}\"\nping_interval = \"{}\"\n\
             pong_timeout = \"{}\"\nshutdown_grace = \"{}\"\nlog_format = \"{}\"\n\
             allowed_origins = {:?}\ntrusted_proxies = {:?}\nauth = \"{}\"\nallow_unauthenticated_remote = {}\n\
             allow_secrets = {}\nauth_cache_ttl = \"{}\"\nauth_recheck_interval = \"{}\"\n\
             {}notifications_debounce = \"{}\"\n{}dashboard_metrics_interval = \"{}\"\n\
             {}jwt_user_claim = {:?}\njwt_groups_claim = {:?}\n",
            self.listen,
            d(self.linger),
            self.max_message_size,
            self.max_subscriptions,
            self.queue_max_bytes,
            self.queue_max_frames,
            self.history_max_events,
            d(self.history_max_age),
            d(self.bookmark_interval),
            d(self.ping_interval),
            d(self.pong_timeout),
            d(self.shutdown_grace),
            format,
            self.allowed_origins,
            self.trusted_proxies,
            self.auth.as_str(),
            self.allow_unauthenticated_remote,
            self.allow_secrets,
            d(self.auth_cache_ttl),
            d(self.auth_recheck_interval),
            self.notifications_listen
                .map(|a| format!("notifications_listen = \"{a}\"\n"))
                .unwrap_or_default(),
            d(self.notifications_debounce),
            self.dashboard_listen
                .map(|a| format!("dashboard_listen = \"{a}\"\n"))
                .unwrap_or_default(),
            d(self.dashboard_metrics_interval),
            self.optional_console_toml(),
            self.jwt.user_claim,
            self.jwt.groups_claim,
        ) + &format!(
            "max_connections_per_address = {}\nhandshake_timeout = \"{}\"\nidle_timeout = \"{}\"\n\
             message_rate = {}\nmessage_burst = {}\nqueue_memory_budget = {}\n\
             queue_budget_per_client = {}\nrest_rate = {}\nrest_burst = {}\n",
            self.max_connections_per_address,
            d(self.handshake_timeout),
            d(self.idle_timeout),
            self.message_rate,
            self.message_burst,
            self.queue_memory_budget,
            self.queue_budget_per_client,
            self.rest_rate,
            self.rest_burst,
        ) + &format!(
            "max_upstream_watches = {}\nmax_watches_per_identity = {}\nshutdown_delay = \"{}\"\n\
             ready_max_connections = {}\nready_max_queue_bytes = {}\n",
            self.max_upstream_watches,
            self.max_watches_per_identity,
            d(self.shutdown_delay),
            self.ready_max_connections,
            self.ready_max_queue_bytes,
        )
    }

    /// The subscription API's optional settings as TOML lines (those set).
    fn optional_console_toml(&self) -> String {
        let mut out = String::new();
        if let Some(a) = self.subscriptions_listen {
            out.push_str(&format!("subscriptions_listen = \"{a}\"\n"));
        }
        let paths = [
            ("jwt_hs256_secret_file", &self.jwt.hs256_secret_file),
            ("jwt_public_key_file", &self.jwt.public_key_file),
            (
                "headlamp_backend_token_file",
                &self.headlamp_backend_token_file,
            ),
            ("admin_token_file", &self.admin_token_file),
        ];
        for (key, path) in paths {
            if let Some(p) = path {
                out.push_str(&format!("{key} = {:?}\n", p.display().to_string()));
            }
        }
        for (key, value) in [
            ("jwt_issuer", &self.jwt.issuer),
            ("jwt_audience", &self.jwt.audience),
        ] {
            if let Some(v) = value {
                out.push_str(&format!("{key} = {v:?}\n"));
            }
        }
        out
    }

    /// The subscription API's verifier and re-checks, when a JWT key is
    /// configured. SubjectAccessReviews are asked with kubemux's own
    /// credentials, cached for auth_cache_ttl and re-checked every
    /// auth_recheck_interval, whatever the auth mode of the other dialects:
    /// through `shared`, the other dialects' re-check service (so one
    /// question is asked once per tick whoever asks it), or a service of
    /// its own in `--auth none`.
    pub fn console_auth(
        &self,
        metrics: &Arc<Metrics>,
        shared: Option<&Rechecks>,
    ) -> Result<Option<Arc<ConsoleAuth>>, ConfigError> {
        let verifier =
            JwtVerifier::from_settings(&self.jwt).map_err(|e| ConfigError::Jwt(e.to_string()))?;
        Ok(verifier.map(|verifier| self.console_auth_with(verifier, metrics, shared)))
    }

    /// The subscription API's verifier and re-checks around `verifier`
    /// (the demo's generated secret, which no setting names).
    pub fn console_auth_with(
        &self,
        verifier: JwtVerifier,
        metrics: &Arc<Metrics>,
        shared: Option<&Rechecks>,
    ) -> Arc<ConsoleAuth> {
        let rechecks = shared.cloned().unwrap_or_else(|| {
            Rechecks::new(
                Arc::new(Reviewer::new(self.auth_cache_ttl, metrics.clone())),
                self.auth_recheck_interval,
            )
        });
        Arc::new(ConsoleAuth { verifier, rechecks })
    }

    /// Headlamp's backend token, when a file for it is configured.
    pub fn headlamp_backend_token(&self) -> Result<Option<Arc<Secret>>, ConfigError> {
        Self::secret(
            "headlamp_backend_token_file",
            &self.headlamp_backend_token_file,
        )
    }

    /// The operator's bearer token, when a file for it is configured.
    pub fn admin_token(&self) -> Result<Option<Arc<Secret>>, ConfigError> {
        Self::secret("admin_token_file", &self.admin_token_file)
    }

    fn secret(
        setting: &'static str,
        path: &Option<PathBuf>,
    ) -> Result<Option<Arc<Secret>>, ConfigError> {
        Ok(path
            .as_deref()
            .map(|p| Secret::from_file(setting, p))
            .transpose()?
            .map(Arc::new))
    }

    /// The hub's settings.
    pub fn hub_config(&self) -> HubConfig {
        HubConfig {
            linger: self.linger,
            bookmark_interval: self.bookmark_interval,
            history: HistoryLimits {
                max_events: self.history_max_events as usize,
                max_age: self.history_max_age,
            },
            upstream: UpstreamConfig::default(),
            max_watches_per_cluster: self.max_upstream_watches as usize,
            max_watches_per_identity: self.max_watches_per_identity as usize,
        }
    }

    /// The server's settings.
    pub fn server_config(&self, metrics: &Arc<Metrics>) -> ServerConfig {
        ServerConfig {
            queue: QueueLimits {
                max_bytes: self.queue_max_bytes as usize,
                max_frames: self.queue_max_frames as usize,
                budget: self.queue_memory_budget as usize,
                per_client: match self.queue_budget_per_client {
                    0 => self.queue_memory_budget / 4,
                    share => share,
                } as usize,
            },
            headlamp: headlamp::Settings {
                max_message_size: self.max_message_size as usize,
                max_subscriptions: self.max_subscriptions as usize,
                message_rate: self.message_rate as f64,
                message_burst: self.message_burst as f64,
                liveness: Liveness {
                    ping_interval: self.ping_interval,
                    pong_timeout: self.pong_timeout,
                    idle_timeout: Some(self.idle_timeout).filter(|t| !t.is_zero()),
                    ..Liveness::default()
                },
                ..headlamp::Settings::default()
            },
            dashboard: dashboard::Settings {
                metrics_interval: self.dashboard_metrics_interval,
                ..dashboard::Settings::default()
            },
            notifications: notifications::Settings {
                debounce: self.notifications_debounce,
                ..notifications::Settings::default()
            },
            limits: Limits {
                connections_per_address: self.max_connections_per_address as usize,
                handshake_timeout: self.handshake_timeout,
                queue_budget: self.queue_memory_budget as usize,
                rest_rate: self.rest_rate as f64,
                rest_burst: self.rest_burst as f64,
            },
            origins: OriginPolicy::new(self.allowed_origins.clone()),
            // Checked when the settings were read.
            trusted_proxies: TrustedProxies::parse(&self.trusted_proxies).unwrap_or_default(),
            policy: self.policy(metrics),
            notifications_listen: self.notifications_listen,
            dashboard_listen: self.dashboard_listen,
            subscriptions_listen: self.subscriptions_listen,
            ready_budget: ReadyBudget {
                max_connections: self.ready_max_connections as usize,
                max_queue_bytes: self.ready_max_queue_bytes,
            },
            ..ServerConfig::default()
        }
    }
}

fn optional_addr(
    setting: &'static str,
    flag: Option<SocketAddr>,
    file: Option<String>,
) -> Result<Option<SocketAddr>, ConfigError> {
    match (flag, file) {
        (Some(a), _) => Ok(Some(a)),
        (None, Some(s)) => s.parse().map(Some).map_err(|_| ConfigError::Invalid {
            setting,
            value: s.clone(),
            accepted: "an address like 127.0.0.1:3001",
        }),
        (None, None) => Ok(None),
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_file(&text, &path.display().to_string())
}

fn parse_file(text: &str, origin: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: origin.to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_settings_read_back_identically() {
        let custom = Settings::from_toml(
            &ProxyArgs::default(),
            "linger = \"5s\"\nmax_subscriptions = 7\nlog_format = \"json\"\n",
            "test",
        )
        .unwrap();
        let again =
            Settings::from_toml(&ProxyArgs::default(), &custom.to_toml(), "printed").unwrap();
        assert_eq!(custom, again);
        assert_eq!(again.linger, Duration::from_secs(5));
        assert_eq!(again.max_subscriptions, 7);
    }

    #[test]
    fn the_documented_example_is_the_defaults() {
        let example = include_str!("../docs/kubemux.example.toml");
        let s = Settings::from_toml(&ProxyArgs::default(), example, "docs/kubemux.example.toml")
            .unwrap();
        assert_eq!(s, Settings::default());
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let args = ProxyArgs {
            linger: Some(Duration::from_secs(1)),
            ..ProxyArgs::default()
        };
        let s =
            Settings::from_toml(&args, "linger = \"9s\"\nping_interval = \"9s\"\n", "t").unwrap();
        assert_eq!(s.linger, Duration::from_secs(1));
        assert_eq!(s.ping_interval, Duration::from_secs(9));
        assert_eq!(s.pong_timeout, Settings::default().pong_timeout);
    }

    #[test]
    fn every_bad_value_names_its_setting() {
        let cases = [
            ("max_subscriptions = 0", "max_subscriptions"),
            ("max_message_size = 10", "max_message_size"),
            ("queue_max_bytes = 1", "queue_max_bytes"),
            ("queue_max_frames = 1", "queue_max_frames"),
            ("history_max_events = 0", "history_max_events"),
            ("history_max_age = \"10s\"", "history_max_age"),
            ("linger = \"2h\"", "linger"),
            ("linger = \"soon\"", "linger"),
            ("bookmark_interval = \"0s\"", "bookmark_interval"),
            ("ping_interval = \"0s\"", "ping_interval"),
            ("pong_timeout = \"1h\"", "pong_timeout"),
            ("shutdown_grace = \"1h\"", "shutdown_grace"),
            ("listen = \"nowhere\"", "listen"),
        ];
        for (toml, setting) in cases {
            let err = Settings::from_toml(&ProxyArgs::default(), toml, "t").unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains(setting) && text.contains("accepted"),
                "{toml}: {text}"
            );
        }
        let err = Settings::from_toml(
            &ProxyArgs::default(),
            "auth = \"none\"\nlisten = \"0.0.0.0:1\"",
            "t",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("--allow-unauthenticated-remote"),
            "{err}"
        );
        assert!(
            Settings::from_toml(
                &ProxyArgs::default(),
                "auth = \"none\"\nlisten = \"0.0.0.0:1\"\nallow_unauthenticated_remote = true",
                "t"
            )
            .is_ok()
        );
        let err = Settings::from_toml(&ProxyArgs::default(), "lingr = \"1s\"", "t").unwrap_err();
        assert!(err.to_string().contains("lingr"), "{err}");
    }

    #[test]
    fn byte_sizes_take_binary_units_as_readme_writes_them() {
        for (text, bytes) in [
            ("4096", 4096),
            ("64KiB", 64 << 10),
            ("64 K", 64 << 10),
            ("8 MiB", 8 << 20),
            ("8M", 8 << 20),
            ("2GiB", 2 << 30),
            ("1 TiB", 1 << 40),
            ("512B", 512),
            (" 8 MiB ", 8 << 20),
        ] {
            assert_eq!(parse_byte_size(text), Ok(bytes), "{text}");
        }
        for text in [
            "",
            "MiB",
            "8 MB",
            "8mib",
            "1.5GiB",
            "-1",
            "8 MiB x",
            "99999999999999999999",
        ] {
            let err = parse_byte_size(text).unwrap_err();
            assert!(err.contains("KiB"), "{text}: {err}");
        }
        assert!(
            parse_byte_size("17179869184 GiB")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn byte_sizes_in_the_file_are_numbers_or_strings_with_units() {
        let s = Settings::from_toml(
            &ProxyArgs::default(),
            "queue_max_bytes = \"8 MiB\"\nqueue_memory_budget = \"2GiB\"\n\
             max_message_size = 4096\nready_max_queue_bytes = \"1G\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(s.queue_max_bytes, 8 << 20);
        assert_eq!(s.queue_memory_budget, 2 << 30);
        assert_eq!(s.max_message_size, 4096);
        assert_eq!(s.ready_max_queue_bytes, 1 << 30);
        for (toml, setting) in [
            ("queue_max_bytes = \"8 MB\"", "queue_max_bytes"),
            ("max_message_size = -1", "max_message_size"),
            ("queue_memory_budget = \"lots\"", "queue_memory_budget"),
            ("ready_max_queue_bytes = \"1.5G\"", "ready_max_queue_bytes"),
            ("queue_max_bytes = \"8 GiB\"", "queue_max_bytes"),
        ] {
            let text = Settings::from_toml(&ProxyArgs::default(), toml, "t")
                .unwrap_err()
                .to_string();
            assert!(
                text.contains(setting) && text.contains("accepted") && text.contains("GiB"),
                "{toml}: {text}"
            );
        }
    }

    #[test]
    fn byte_size_flags_and_variables_take_units() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            proxy: ProxyArgs,
        }
        let cli = Cli::try_parse_from([
            "kubemux",
            "--queue-max-bytes",
            "8 MiB",
            "--max-message-size",
            "64KiB",
        ])
        .unwrap();
        assert_eq!(cli.proxy.queue_max_bytes, Some(8 << 20));
        assert_eq!(cli.proxy.max_message_size, Some(64 << 10));
        let err = Cli::try_parse_from(["kubemux", "--queue-memory-budget", "2 GB"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("--queue-memory-budget") && err.contains("GiB"),
            "{err}"
        );
    }

    #[test]
    fn the_subscription_api_needs_a_usable_jwt_key() {
        let err = Settings::from_toml(
            &ProxyArgs::default(),
            "subscriptions_listen = \"127.0.0.1:0\"",
            "t",
        )
        .unwrap_err();
        assert!(err.to_string().contains("jwt_hs256_secret_file"), "{err}");
        let err = Settings::from_toml(
            &ProxyArgs::default(),
            "jwt_public_key_file = \"/nonexistent/kubemux-key.pem\"",
            "t",
        )
        .unwrap_err();
        assert!(err.to_string().contains("kubemux-key.pem"), "{err}");
        let err =
            Settings::from_toml(&ProxyArgs::default(), "jwt_user_claim = \"\"", "t").unwrap_err();
        assert!(err.to_string().contains("jwt_user_claim"), "{err}");
        let key = std::env::temp_dir().join(format!("kubemux-config-test-{}", std::process::id()));
        std::fs::write(&key, "secret\n").unwrap();
        let toml = format!(
            "subscriptions_listen = \"127.0.0.1:0\"\njwt_hs256_secret_file = {:?}\njwt_audience = \"a\"\n",
            key.display().to_string()
        );
        let s = Settings::from_toml(&ProxyArgs::default(), &toml, "t").unwrap();
        let again = Settings::from_toml(&ProxyArgs::default(), &s.to_toml(), "printed").unwrap();
        assert_eq!(s, again);
        assert!(
            s.console_auth(&Arc::new(Metrics::new()), None)
                .unwrap()
                .is_some()
        );
    }
}
