//! Limits that keep one client (or a crowd of them) from taking the proxy
//! down: connections per client address, a handshake deadline, an idle
//! deadline, a message rate per connection and a budget for all outbound
//! queues together. Each refusal is counted in
//! `kubemux_limit_refusals_total{limit}` and explained to the client.
//! (The idle deadline itself is part of [`super::conn::Liveness`].)

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

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
    /// Client messages per second per connection, refilled continuously…
    /// Headlamp sends a REQUEST (and a CLOSE) for every change of a list it
    /// shows, so the default is far above what a person causes; messages
    /// beyond it are delayed, not refused, and only a flood past the
    /// backlog closes the connection.
    pub message_rate: f64,
    /// …with bursts of up to this many.
    pub message_burst: f64,
    /// Bytes all outbound queues may hold together. Beyond it, frames for
    /// connections with a backlog are refused (their subscriptions end as
    /// slow consumers) and new WebSockets get 503.
    pub queue_budget: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections_per_address: 1024,
            handshake_timeout: Duration::from_secs(10),
            message_rate: 1000.0,
            message_burst: 2000.0,
            queue_budget: 2 << 30,
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
}

/// Counts open connections per client address.
pub struct Admission {
    open: DashMap<IpAddr, usize>,
    max: usize,
    metrics: Arc<Metrics>,
}

/// One admitted connection; the address's count drops when the last clone
/// is gone (the HTTP connection and, after an upgrade, the WebSocket).
pub struct Admitted {
    admission: Arc<Admission>,
    address: IpAddr,
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
        let mut open = self.open.entry(address).or_insert(0);
        if *open >= self.max {
            drop(open);
            self.metrics.refused(limit::CONNECTIONS_PER_ADDRESS);
            return None;
        }
        *open += 1;
        Some(Arc::new(Admitted {
            admission: self.clone(),
            address,
        }))
    }

    /// Connections open from `address`.
    #[cfg(test)]
    fn open(&self, address: IpAddr) -> usize {
        self.open.get(&address).map_or(0, |n| *n)
    }

    /// The per-address maximum.
    pub fn max(&self) -> usize {
        self.max
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission.open.remove_if_mut(&self.address, |_, open| {
            *open = open.saturating_sub(1);
            *open == 0
        });
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
    fn bucket_allows_the_burst_then_refuses() {
        let mut bucket = TokenBucket::new(0.001, 3.0);
        assert!((0..3).all(|_| bucket.try_take()));
        assert!(!bucket.try_take());
        assert!(bucket.ready_at() > Instant::now() + Duration::from_secs(100));
    }
}
