//! Limits that keep one client (or a crowd of them) from taking the proxy
//! down: connections per client address, a handshake deadline, an idle
//! deadline, a message rate per connection, a REST request rate per client
//! address and per identity, and a budget for all outbound queues together
//! of which one client address may fill only a share. The client address is
//! the TCP peer's, or the one a trusted reverse proxy forwarded
//! (`super::forwarded`). Each refusal is counted in
//! `kubemux_limit_refusals_total{limit}` and explained to the client.
//! (The idle deadline itself is part of [`super::conn::Liveness`].)

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;
use parking_lot::Mutex;

use crate::metrics::Metrics;

/// Settings of the abuse limits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Most open TCP connections from one client address; more are
    /// answered 429. Clients behind one NAT or reverse proxy share an
    /// address, hence the generous default.
    pub connections_per_address: usize,
    /// A client must send its complete request head (the WebSocket
    /// handshake included) within this long, and an idle HTTP keep-alive
    /// connection is closed after it: a slow-loris client holds a socket
    /// for at most this.
    pub handshake_timeout: Duration,
    /// Bytes all outbound queues may hold together. Beyond it, frames for
    /// connections with a backlog are refused (their subscriptions end as
    /// slow consumers) and new WebSockets get 503.
    pub queue_budget: usize,
    /// REST requests (`/clusters/…`) per second per client address, and
    /// per identity when the request carries a credential…
    pub rest_rate: f64,
    /// …with bursts of up to this many. A dashboard's page load (Headlamp
    /// lists and discovers a few dozen paths per cluster at once) stays far
    /// below it.
    pub rest_burst: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections_per_address: 1024,
            handshake_timeout: Duration::from_secs(10),
            queue_budget: 2 << 30,
            rest_rate: 100.0,
            rest_burst: 1000.0,
        }
    }
}

/// Names of the limits, as the `limit` label of the refusal counter.
pub mod limit {
    /// Too many connections from one address.
    pub const CONNECTIONS_PER_ADDRESS: &str = "connections_per_address";
    /// The request head did not arrive in time.
    pub const HANDSHAKE_TIMEOUT: &str = "handshake_timeout";
    /// A connection with nothing subscribed stayed silent too long.
    pub const IDLE_TIMEOUT: &str = "idle_timeout";
    /// A client sent messages faster than its rate until its backlog of
    /// delayed messages was full.
    pub const MESSAGE_RATE: &str = "message_rate";
    /// The outbound queues together hold too many bytes.
    pub const QUEUE_BUDGET: &str = "queue_budget";
    /// A client sent messages whose answers it did not read until they no
    /// longer fit its queue (closed with 1008).
    pub const UNREAD_ANSWERS: &str = "unread_answers";
    /// One client address's connections together held more than its share
    /// of the outbound budget (the connection pushing past it is closed
    /// with 1008).
    pub const QUEUE_SHARE: &str = "queue_share";
    /// A client address or identity sent REST requests faster than its
    /// rate (answered 429).
    pub const REST_RATE: &str = "rest_rate";
}

/// What is kept per client address while it has connections open.
struct Slot {
    open: usize,
    /// Bytes queued for this address's WebSockets together.
    queued: Arc<AtomicUsize>,
}

/// Counts open connections per client address (and the bytes queued for
/// them, so one address can be held to its share of the outbound budget).
/// An address's entry lives exactly as long as its connections, so the map
/// is bounded by the open connections whatever addresses clients claim.
pub struct Admission {
    open: DashMap<IpAddr, Slot>,
    max: usize,
    metrics: Arc<Metrics>,
}

/// One admitted connection; the address's count drops when the last clone
/// is gone (the HTTP connection and, after an upgrade, the WebSocket).
pub struct Admitted {
    admission: Arc<Admission>,
    address: IpAddr,
    queued: Arc<AtomicUsize>,
}

impl Admission {
    /// Allows up to `max` connections per address.
    pub fn new(max: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Admission {
            open: DashMap::new(),
            max,
            metrics,
        })
    }

    /// Admits one more connection from `address`, or counts the refusal.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Option<Arc<Admitted>> {
        let mut slot = self.open.entry(address).or_insert_with(|| Slot {
            open: 0,
            queued: Arc::new(AtomicUsize::new(0)),
        });
        if slot.open >= self.max {
            drop(slot);
            self.metrics.refused(limit::CONNECTIONS_PER_ADDRESS);
            return None;
        }
        slot.open += 1;
        let queued = slot.queued.clone();
        Some(Arc::new(Admitted {
            admission: self.clone(),
            address,
            queued,
        }))
    }

    /// Connections open from `address`.
    #[cfg(test)]
    fn open(&self, address: IpAddr) -> usize {
        self.open.get(&address).map_or(0, |slot| slot.open)
    }

    /// The per-address maximum.
    pub fn max(&self) -> usize {
        self.max
    }
}

impl Admitted {
    /// The client address this connection counts against.
    pub fn address(&self) -> IpAddr {
        self.address
    }

    /// The counter of bytes queued for this address's connections.
    pub fn queued(&self) -> Arc<AtomicUsize> {
        self.queued.clone()
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission.open.remove_if_mut(&self.address, |_, slot| {
            slot.open = slot.open.saturating_sub(1);
            slot.open == 0
        });
    }
}

/// One client address's part of the outbound budget, shared by the queues
/// of its connections.
#[derive(Clone, Debug)]
pub struct QueueShare {
    /// The address, to name it when refusing.
    pub address: IpAddr,
    /// Bytes queued for its connections together.
    pub queued: Arc<AtomicUsize>,
}

impl QueueShare {
    /// The share of the connection admitted as `admitted`.
    pub fn of(admitted: &Admitted) -> Self {
        QueueShare {
            address: admitted.address,
            queued: admitted.queued(),
        }
    }

    /// Bytes queued for the address now.
    pub fn bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// Most buckets one generation of [`RestRate`] holds; two generations are
/// kept, so at most twice this many exist whatever addresses and tokens
/// clients send.
const RATE_GENERATION: usize = 32_768;

/// Whose requests a REST bucket counts.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum RateKey {
    Address(IpAddr),
    /// A keyed hash of the credential (the token itself is not kept).
    Identity(u64),
}

/// Buckets in two generations: a bucket not used for a whole generation
/// is forgotten, which loses nothing a fresh (full) bucket would not give
/// back, so the state is bounded without a sweep.
struct Generations {
    current: HashMap<RateKey, TokenBucket>,
    previous: HashMap<RateKey, TokenBucket>,
}

/// The REST rate limit: a token bucket per client address and one per
/// identity; a request passes when both have a token.
pub struct RestRate {
    rate: f64,
    burst: f64,
    hasher: std::hash::RandomState,
    buckets: Mutex<Generations>,
    metrics: Arc<Metrics>,
}

/// A request over the REST rate, with when to retry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "too many requests from {who}: at most {rate} a second with bursts of {burst} (--rest-rate, --rest-burst); retry in {retry_after}s"
)]
pub struct RateLimited {
    /// `address 192.0.2.1` or `this identity`.
    pub who: String,
    /// The configured rate.
    pub rate: f64,
    /// The configured burst.
    pub burst: f64,
    /// Whole seconds until a request would pass (at least 1), as
    /// `Retry-After` says it.
    pub retry_after: u64,
}

impl RestRate {
    /// `rate` requests a second, bursts of `burst`, per address and identity.
    pub fn new(rate: f64, burst: f64, metrics: Arc<Metrics>) -> Self {
        RestRate {
            rate,
            burst,
            hasher: std::hash::RandomState::new(),
            buckets: Mutex::new(Generations {
                current: HashMap::new(),
                previous: HashMap::new(),
            }),
            metrics,
        }
    }

    /// Takes a token for a request from `address` carrying `credential`
    /// (if any), or says when to come back.
    pub fn check(&self, address: IpAddr, credential: Option<&str>) -> Result<(), RateLimited> {
        let identity = credential.map(|c| RateKey::Identity(self.hasher.hash_one(c)));
        let mut g = self.buckets.lock();
        let address_ready = self.bucket(&mut g, RateKey::Address(address)).ready_at();
        let identity_ready = identity.map(|key| self.bucket(&mut g, key).ready_at());
        let now = Instant::now();
        let ready = identity_ready.map_or(address_ready, |i| i.max(address_ready));
        if ready <= now {
            self.bucket(&mut g, RateKey::Address(address)).try_take();
            if let Some(key) = identity {
                self.bucket(&mut g, key).try_take();
            }
            return Ok(());
        }
        drop(g);
        self.metrics.refused(limit::REST_RATE);
        let wait = ready.duration_since(now);
        Err(RateLimited {
            who: if address_ready > now {
                format!("address {address}")
            } else {
                "this identity".into()
            },
            rate: self.rate,
            burst: self.burst,
            retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
        })
    }

    fn bucket<'a>(&self, g: &'a mut Generations, key: RateKey) -> &'a mut TokenBucket {
        if !g.current.contains_key(&key) {
            let bucket = g
                .previous
                .remove(&key)
                .unwrap_or_else(|| TokenBucket::new(self.rate, self.burst));
            if g.current.len() >= RATE_GENERATION {
                g.previous = std::mem::take(&mut g.current);
            }
            g.current.insert(key, bucket);
        }
        g.current
            .entry(key)
            .or_insert_with(|| TokenBucket::new(self.rate, self.burst))
    }

    /// Buckets kept now.
    #[cfg(test)]
    fn buckets(&self) -> usize {
        let g = self.buckets.lock();
        g.current.len() + g.previous.len()
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64) -> Self {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            refilled: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    /// Takes a token if one is there.
    pub fn try_take(&mut self) -> bool {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token will be there (now if one is).
    pub fn ready_at(&mut self) -> Instant {
        self.refill();
        if self.tokens >= 1.0 {
            return self.refilled;
        }
        // A zero rate (never refilling) waits a day rather than overflowing.
        let wait = Duration::try_from_secs_f64((1.0 - self.tokens) / self.rate)
            .unwrap_or(Duration::from_secs(86_400));
        self.refilled + wait
    }
}

/// A 429 as the API server's own limits send one: `Retry-After` in whole
/// seconds and a `Status` with reason `TooManyRequests`.
pub fn too_many_requests(message: &str, retry_after: u64) -> Response {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "TooManyRequests",
        "details": { "retryAfterSeconds": retry_after },
        "code": 429,
    });
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, retry_after.to_string())],
        axum::Json(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_counts_per_address_and_releases_on_drop() {
        let metrics = Arc::new(Metrics::new());
        let admission = Admission::new(2, metrics);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = admission.admit(a).expect("first");
        let second = admission.admit(a).expect("second");
        assert!(admission.admit(a).is_none(), "third from the same address");
        let other = admission.admit(b).expect("another address");
        let kept = first.clone();
        drop(first);
        assert_eq!(admission.open(a), 2, "a clone keeps the slot");
        drop(kept);
        assert_eq!(admission.open(a), 1);
        assert!(admission.admit(a).is_some());
        drop((second, other));
        assert_eq!(admission.open(b), 0);
        assert!(
            admission.open.is_empty(),
            "no entry outlives its connections"
        );
    }

    #[test]
    fn rest_rate_limits_address_and_identity_with_bounded_state() {
        let rate = RestRate::new(0.001, 2.0, Arc::new(Metrics::new()));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(rate.check(a, Some("t")).is_ok());
        assert!(rate.check(a, None).is_ok());
        let refused = rate.check(a, None).unwrap_err();
        assert_eq!(refused.who, "address 192.0.2.1");
        assert!(refused.retry_after >= 1);
        assert!(rate.check(b, Some("t")).is_ok(), "one token left for t");
        let refused = rate.check(b, Some("t")).unwrap_err();
        assert_eq!(refused.who, "this identity");
        assert!(rate.check(b, None).is_ok(), "b kept its token");
        for i in 0..3 * RATE_GENERATION as u32 {
            let _ = rate.check(IpAddr::from(i.to_be_bytes()), Some(&i.to_string()));
        }
        assert!(rate.buckets() <= 2 * RATE_GENERATION, "{}", rate.buckets());
    }

    #[test]
    fn bucket_allows_the_burst_then_refuses() {
        let mut bucket = TokenBucket::new(0.001, 3.0);
        assert!((0..3).all(|_| bucket.try_take()));
        assert!(!bucket.try_take());
        assert!(bucket.ready_at() > Instant::now() + Duration::from_secs(100));
    }
}
