//! Settings of the proxy: command-line flags over `KUBEMUX_…` environment
//! variables over a TOML file (`--config`) over built-in defaults.
//!
//! Every setting is declared once, in the `settings!` table
//! below: its kind, range, default (or the subsystem field it lands in,
//! whose `Default` is then its default) and doc line. Flags, the file's
//! keys, the layering and range checks, `kubemux config`'s printing and
//! README's settings reference all come from that table. An out-of-range
//! value is refused naming the setting and its accepted range.

mod declare;
pub mod kind;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::ValueEnum;

use crate::auth::jwt::{JwtSettings, JwtVerifier};
use crate::auth::origin::OriginPolicy;
use crate::auth::policy::{AuthMode, Policy};
use crate::auth::recheck::Rechecks;
use crate::auth::review::Reviewer;
use crate::auth::secret::{Secret, SecretFileError};
use crate::dialect::console::ConsoleAuth;
use crate::hub::HubConfig;
use crate::metrics::Metrics;
use crate::server::ServerConfig;
use crate::ws::forwarded::TrustedProxies;
use declare::settings;
pub use declare::{Described, Targets};
use kind::{Addr, Bytes, Choice, Claim, Count, Dur, Flag, List, OptAddr, OptPath, OptText};
use kind::{PerMinute, Proxies};
pub use kind::{parse_byte_size, parse_duration};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

settings! {
    "General" {
        /// Address the proxy listens on.
        listen: Addr = std::net::SocketAddr::from(([127, 0, 0, 1], 4466));
        /// Log output: human or json. The level comes from RUST_LOG (default info).
        log_format: Choice<LogFormat> = LogFormat::Human;
        /// On SIGTERM/SIGINT: a final BOOKMARK to subscribers that asked for bookmarks,
        /// COMPLETE to every subscriber, close with 1012 (service restart: reconnect
        /// anywhere and resume), exit within this.
        shutdown_grace: Dur [0, 600] = std::time::Duration::from_secs(20);
        /// On SIGTERM, how long /readyz fails while every client is still served, before
        /// the sockets close (a load balancer's time to stop sending new clients; in a
        /// Deployment the preStop sleep plays this part).
        shutdown_delay: Dur [0, 600] = std::time::Duration::ZERO;
        /// Open WebSocket connections above which /readyz fails, so a load balancer sends
        /// new clients to another replica (the connections already there stay).
        ready_max_connections: Count [0 "no budget", u64::MAX] => server.ready_budget.max_connections;
        /// Bytes queued for clients above which /readyz fails.
        ready_max_queue_bytes: Bytes [0 "no budget", u64::MAX] => server.ready_budget.max_queue_bytes;
    }
    "Shared watches (the hub)" {
        /// How long a shared watch outlives its last subscriber, so a page reload or
        /// reconnect finds it still warm.
        linger: Dur [0, 3600] => hub.linger;
        /// Events kept in each shared watch's history, to resume reconnecting clients
        /// without the cluster.
        history_max_events: Count [1, 10_000_000] => hub.history.max_events;
        /// Age of the oldest event kept in a history; keep it at 75s or more so clients
        /// resuming after a reconnect are served from it.
        history_max_age: Dur [75, 86_400] => hub.history.max_age;
        /// Interval of kubemux's own bookmarks to subscribers with allowWatchBookmarks=true.
        bookmark_interval: Dur [1, 3600] => hub.bookmark_interval;
        /// Shared (= upstream) watches on one cluster; a REQUEST for a new key beyond it
        /// gets an ERROR naming this limit (joining an existing watch always works).
        max_upstream_watches: Count [1, 1_000_000] => hub.max_watches_per_cluster;
        /// With --auth passthrough, shared watches one caller's token may hold on one cluster.
        max_watches_per_identity: Count [1, 1_000_000] => hub.max_watches_per_identity;
        /// Give every namespace and selector an upstream watch of its own, instead of
        /// serving those kubemux can evaluate from their resource type's one
        /// cluster-wide watch, filtered per subscriber as the API server's cacher does
        /// (in passthrough, one such watch per token that may watch every namespace).
        watch_per_query: Flag => hub.watch_per_query;
        /// Drop metadata.managedFields from every object a shared watch lists or watches,
        /// before it is cached or sent (client-go's TransformStripManagedFields): watches,
        /// snapshots and LISTs served from the cache lack it; requests kubemux forwards
        /// to the cluster keep it.
        strip_managed_fields: Flag => hub.upstream.transform.strip_managed_fields;
        /// Threads one event's delivery to a shared watch's subscribers is spread over,
        /// at least 8,192 subscribers each (a watch with fewer than 16,384 uses one);
        /// 0: one per worker thread, i.e. per core.
        fan_out_threads: Count [0 "one per worker thread", 1024] => hub.fan_out.threads;
    }
    "Connections (every dialect)" {
        /// Bytes waiting in one connection's outbound queue (and one REST watch stream's)
        /// before its subscriptions are cut off as slow consumers.
        queue_max_bytes: Bytes [4096, 4 << 30] => server.queue.max_bytes;
        /// Frames waiting in one connection's outbound queue.
        queue_max_frames: Count [16, 10_000_000] => server.queue.max_frames;
        /// Bytes all outbound queues may hold together; beyond it connections with a
        /// backlog are cut as slow consumers and new WebSockets get 503.
        queue_memory_budget: Bytes [1_048_576, 1 << 40] => server.limits.queue_budget;
        /// Bytes the outbound queues of one client address may hold together; over it,
        /// that address's connection with a backlog is closed with 1008 naming the
        /// setting, so one client cannot fill the budget others' new sockets need.
        queue_budget_per_client: Bytes [0 "a quarter of queue_memory_budget", 1 << 40] = 0;
        /// Open TCP connections (WebSockets included) from one client address; more are
        /// answered 429 with a body naming the limit.
        max_connections_per_address: Count [1, 1_000_000] => server.limits.connections_per_address;
        /// A client must send its whole request head (the WebSocket handshake) within
        /// this long; also the idle limit of HTTP keep-alive connections (slow-loris
        /// defence).
        handshake_timeout: Dur [1, 600] => server.limits.handshake_timeout;
        /// Browser origins allowed besides the same origin, comma-separated (Headlamp's
        /// dev server: http://localhost:3000; * for any).
        allowed_origins: List = Vec::new();
        /// Reverse proxies (addresses or blocks, comma-separated: 10.0.0.0/8,127.0.0.1)
        /// whose Forwarded / X-Forwarded-For / -Host / -Proto headers give the client's
        /// address, host and scheme, for the same-origin check and per-address limits;
        /// from any other peer they are ignored.
        trusted_proxies: Proxies = Vec::new();
        /// REST requests (/clusters/…) per second per client address, and per identity
        /// when a credential is sent; beyond, 429 with Retry-After and a Status.
        rest_rate: Count [1, 100_000] => server.limits.rest_rate;
        /// Burst of REST requests above --rest-rate (a dashboard's page load lists a few
        /// dozen paths per cluster at once).
        rest_burst: Count [1, 1_000_000] => server.limits.rest_burst;
    }
    "Identity and authorisation" {
        /// Whose identity upstream requests use: passthrough (each client's own token),
        /// shared (kubemux's, every client reviewed) or none (kubemux's, loopback only);
        /// demo defaults to none.
        auth: Choice<AuthMode> = AuthMode::Passthrough;
        /// Allow --auth none on a non-loopback listener.
        allow_unauthenticated_remote: Flag = false;
        /// With --auth none, serve secrets too.
        allow_secrets: Flag = false;
        /// How long TokenReview and SubjectAccessReview answers are reused (shared,
        /// passthrough and /ws/v1; a refusal at most 2s; at most 10,000 answers per cache).
        auth_cache_ttl: Dur [0, 600] = std::time::Duration::from_secs(30);
        /// How often live subscribers are re-authorised (one review per distinct user
        /// and resource per interval, however many connections share it); a revoked one
        /// is ended.
        auth_recheck_interval: Dur [1, 3600] = std::time::Duration::from_secs(30);
        /// File holding the operator's bearer token: with --auth shared or passthrough,
        /// only `Authorization: Bearer <it>` sees the shared watches and API server
        /// addresses on /api/status and /api/clusters (nobody does without it).
        admin_token_file: OptPath = None;
    }
    "Headlamp (/wsMultiplexer)" {
        /// Largest client message on /wsMultiplexer; larger closes the socket with 1009.
        max_message_size: Bytes [256, 64 << 20] => server.headlamp.max_message_size;
        /// Subscriptions one /wsMultiplexer connection may hold.
        max_subscriptions: Count [1, 100_000] => server.headlamp.max_subscriptions;
        /// Client messages per second per /wsMultiplexer connection (Headlamp re-subscribes
        /// on every list change, so this is high); beyond, messages are delayed and
        /// processed in order as the rate allows (CLOSE always passes at once and drops
        /// a waiting REQUEST for the same subscription).
        message_rate: Count [1, 100_000] => server.headlamp.message_rate;
        /// Burst of /wsMultiplexer client messages above --message-rate.
        message_burst: Count [1, 100_000] => server.headlamp.message_burst;
        /// Messages one /wsMultiplexer connection may have waiting for --message-rate; one
        /// that sends more is closed with 1008 (message_rate), so a flood costs bounded memory.
        backlog_messages: Count [1, 1_000_000] => server.headlamp.backlog_messages;
        /// Bytes of text one /wsMultiplexer connection may have waiting for --message-rate,
        /// likewise.
        backlog_bytes: Bytes [4096, 1 << 30] => server.headlamp.backlog_bytes;
        /// Interval of WebSocket pings on /wsMultiplexer.
        ping_interval: Dur [1, 600] => server.headlamp.liveness.ping_interval;
        /// How long after a ping an unanswered /wsMultiplexer connection is closed.
        pong_timeout: Dur [1, 600] => server.headlamp.liveness.pong_timeout;
        /// A write to a /wsMultiplexer socket blocked this long closes it (the client is gone).
        write_timeout: Dur [1, 600] => server.headlamp.liveness.write_timeout;
        /// A /wsMultiplexer connection with nothing subscribed that sends nothing for this
        /// long is closed (1000, reason idle…).
        idle_timeout: Dur [0 "never", 86_400] => server.headlamp.liveness.idle_timeout;
        /// File holding Headlamp's backend token (its HEADLAMP_BACKEND_TOKEN): /wsMultiplexer
        /// and /clusters/… then require it, by X-HEADLAMP_BACKEND-TOKEN or Headlamp's
        /// backend-token subprotocol; it is never sent to a cluster (not required without it).
        headlamp_backend_token_file: OptPath = None;
    }
    "Dashboard stream (seed 001, /ws/dashboard)" {
        /// Also serve the dashboard stream at /ws on this address.
        dashboard_listen: OptAddr => server.dashboard_listen;
        /// Largest dashboard message in either direction: a larger client message closes
        /// with 1009, a batch that would exceed it is replaced by RATE_LIMITED and a fresh
        /// initial_state.
        dashboard_max_message_size: Bytes [4096, 64 << 20] => server.dashboard.max_message_size;
        /// Event messages per dashboard connection; beyond, events wait and go out
        /// together as one batch message, never dropped.
        dashboard_message_rate: PerMinute [1, 6_000_000] => server.dashboard.message_rate;
        /// Burst of dashboard event messages above --dashboard-message-rate.
        dashboard_message_burst: Count [1, 100_000] => server.dashboard.message_burst;
        /// Interval of the dashboard stream's metrics messages.
        dashboard_metrics_interval: Dur [1, 600] => server.dashboard.metrics_interval;
        /// Interval of WebSocket pings on the dashboard stream.
        dashboard_ping_interval: Dur [1, 600] => server.dashboard.liveness.ping_interval;
        /// How long after a ping an unanswered dashboard connection is closed with 1008.
        dashboard_pong_timeout: Dur [1, 600] => server.dashboard.liveness.pong_timeout;
        /// A write to a dashboard socket blocked this long closes it.
        dashboard_write_timeout: Dur [1, 600] => server.dashboard.liveness.write_timeout;
    }
    "Cluster notifications (seed 002, /ws/clusters)" {
        /// Also serve cluster notifications at /ws and /api/clusters on this address.
        notifications_listen: OptAddr => server.notifications_listen;
        /// Updates to one cluster closer together than this are merged.
        notifications_debounce: Dur [0, 60] => server.notifications.debounce;
        /// Largest message a notification client may send; larger closes with 1009.
        notifications_max_message_size: Bytes [256, 64 << 20] => server.notifications.max_message_size;
        /// Interval of WebSocket pings to notification clients.
        notifications_ping_interval: Dur [1, 600] => server.notifications.liveness.ping_interval;
        /// How long after a ping an unanswered notification client is closed with 1008 (the
        /// seed's 60s pong wait counts from the last pong, 54s + 6s).
        notifications_pong_timeout: Dur [1, 600] => server.notifications.liveness.pong_timeout;
        /// A write to a notification socket blocked this long closes it.
        notifications_write_timeout: Dur [1, 600] => server.notifications.liveness.write_timeout;
    }
    "Subscription API (seed 003, /ws/v1)" {
        /// Also serve the subscription API at /ws on this address; needs a JWT key.
        subscriptions_listen: OptAddr => server.subscriptions_listen;
        /// File holding the HS256 secret the subscription API's JWTs are signed with (a
        /// trailing newline is ignored).
        jwt_hs256_secret_file: OptPath = None;
        /// PEM public key the subscription API's JWTs are signed with (RSA → RS256, EC
        /// P-256 → ES256).
        jwt_public_key_file: OptPath = None;
        /// Required JWT issuer (iss).
        jwt_issuer: OptText = None;
        /// Required JWT audience (aud).
        jwt_audience: OptText = None;
        /// The JWT claim naming the Kubernetes user SubjectAccessReviews ask about.
        jwt_user_claim: Claim = "sub".into();
        /// The JWT claim listing the user's Kubernetes groups.
        jwt_groups_claim: Claim = "groups".into();
        /// Largest client message; larger gets MESSAGE_TOO_LARGE and the socket closes
        /// (beyond four times this, with 1009 unread).
        console_max_message_size: Bytes [256, 64 << 20] => server.console.max_message_size;
        /// Subscriptions one subscription-API connection may hold; more are refused
        /// with SUBSCRIPTION_LIMIT.
        console_max_subscriptions: Count [1, 100_000] => server.console.max_subscriptions;
        /// Concurrent log streams one subscription-API connection may hold.
        console_max_log_streams: Count [1, 10_000] => server.console.max_log_streams;
        /// Client messages per second per subscription-API connection; beyond, RATE_LIMITED.
        console_message_rate: Count [1, 100_000] => server.console.message_rate;
        /// Burst of subscription-API client messages above --console-message-rate.
        console_message_burst: Count [1, 100_000] => server.console.message_burst;
        /// Interval of the seed's {"type":"ping"} messages.
        console_ping_interval: Dur [1, 600] => server.console.ping_interval;
        /// Interval of WebSocket pings on the subscription API.
        console_socket_ping_interval: Dur [1, 600] => server.console.liveness.ping_interval;
        /// How long after a WebSocket ping an unanswered subscription-API connection is closed.
        console_pong_timeout: Dur [1, 600] => server.console.liveness.pong_timeout;
        /// A write to a subscription-API socket blocked this long closes it.
        console_write_timeout: Dur [1, 600] => server.console.liveness.write_timeout;
        /// A connection that has not authenticated after this long is closed.
        console_auth_deadline: Dur [1, 600] => server.console.auth_deadline;
        /// A subscription-API connection without any client message for this long is closed.
        console_idle_timeout: Dur [0 "never", 86_400] => server.console.liveness.idle_timeout;
    }
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
    /// The config file is not valid TOML.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The config file has a key that names no setting.
    #[error("config file {path}: unknown setting {key:?}")]
    Unknown {
        /// The file.
        path: String,
        /// The key.
        key: String,
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
        accepted: String,
    },
}

impl Settings {
    /// Layers flags/env over the config file (if any) over the defaults and
    /// validates the result; `default_auth` is the command's own default.
    pub fn resolve(args: &ProxyArgs, default_auth: AuthMode) -> Result<Settings, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => toml::Table::new(),
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
        file: toml::Table,
        default_auth: AuthMode,
    ) -> Result<Settings, ConfigError> {
        let defaults = Settings {
            auth: default_auth,
            ..Settings::default()
        };
        let settings = Self::layer_values(args, file, defaults)?;
        let verifier = JwtVerifier::from_settings(&settings.jwt())
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

    /// The subscription API's JWT key and claims.
    pub fn jwt(&self) -> JwtSettings {
        JwtSettings {
            hs256_secret_file: self.jwt_hs256_secret_file.clone(),
            public_key_file: self.jwt_public_key_file.clone(),
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            user_claim: self.jwt_user_claim.clone(),
            groups_claim: self.jwt_groups_claim.clone(),
        }
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
            JwtVerifier::from_settings(&self.jwt()).map_err(|e| ConfigError::Jwt(e.to_string()))?;
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

    /// The subsystems' configurations with every setting landed.
    fn targets(&self) -> Targets {
        let mut targets = Targets::default();
        self.land(&mut targets);
        targets
    }

    /// The hub's settings.
    pub fn hub_config(&self) -> HubConfig {
        self.targets().hub
    }

    /// The server's settings: those that land in it, and those built from
    /// several (the queue budgets, the auth policy).
    pub fn server_config(&self, metrics: &Arc<Metrics>) -> ServerConfig {
        let mut server = self.targets().server;
        let budget = server.limits.queue_budget;
        server.queue.budget = budget;
        server.queue.per_client = match self.queue_budget_per_client {
            0 => budget / 4,
            share => usize::try_from(share).unwrap_or(usize::MAX),
        };
        server.origins = OriginPolicy::new(self.allowed_origins.clone());
        // Checked when the settings were read.
        server.trusted_proxies = TrustedProxies::parse(&self.trusted_proxies).unwrap_or_default();
        server.policy = self.policy(metrics);
        server
    }
}

fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_file(&text, &path.display().to_string())
}

/// A config file's keys and values; a key that names no setting is an
/// error, so a typo does not silently fall back to a default.
fn parse_file(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: origin.to_string(),
        message: e.to_string(),
    })?;
    match table
        .keys()
        .find(|key| !Settings::NAMES.contains(&key.as_str()))
    {
        Some(key) => Err(ConfigError::Unknown {
            path: origin.to_string(),
            key: key.clone(),
        }),
        None => Ok(table),
    }
}
