//! Load generator for kubemux: many WebSocket clients with many subscriptions
//! each, against the simulated API server through the proxy, or (`--direct`)
//! the same subscriptions as plain HTTP watches on the simulated server.
//!
//! ```sh
//! cargo build --release
//! taskset -c 0 target/release/examples/loadgen --proxy-cpu 1 --sim-cpu 0 \
//!     --connections 1000 --subs 10 --keys 10 --rate 10 --mode both
//! ```
//!
//! Phases of one run: start the simulated server (and the proxy) as child
//! processes; open the connections (idle memory per connection); subscribe
//! (idle memory per subscription, once every subscription has its initial
//! state); start churn, warm up, measure a window (delivered frames,
//! latency, CPU); optionally reconnect storms (every client drops and resumes
//! from its last resourceVersion at once); stop everything.
//!
//! Every key is `/api/v1/pods` with a label selector that matches every pod
//! (`lg-key!=N`), so each subscription receives every pod event and
//! delivered frames/s ≈ pod events/s × subscriptions. kubemux evaluates
//! label selectors itself, so all keys are one upstream watch of pods,
//! filtered per subscriber; loadgen starts `kubemux serve` with its own
//! environment, so `KUBEMUX_WATCH_PER_QUERY=true` gives each key an
//! upstream watch of its own. Latency is measured from
//! the `kubemux.io/sent-at` stamp the simulated server puts on each change
//! when it commits it, to the moment the client has the frame; events that
//! were committed before their subscription was (re)requested (initial state,
//! replays) are not counted.
//!
//! `--object-profile realistic` has the simulated server generate pods
//! shaped like a real cluster's (kubelet-managed, with `managedFields` and
//! full status, 5.5–8 KiB) and churn them with kubelet's status updates;
//! the report gives the mean pod and delivered-frame sizes either way.
//!
//! `--deflate` has the WebSocket clients offer permessage-deflate, as
//! browsers do (`--deflate-offer` changes the offer: with
//! `server_no_context_takeover` every message comes deflated on its own),
//! and inflate what arrives compressed under tungstenite (which
//! cannot); every run reports the bytes its clients read from their sockets
//! per delivered frame (`wire_bytes_per_frame`), compressed or not.

mod shared;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, ValueEnum};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as TokioBufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use shared::{
    Proc, cpu_seconds, event_resource_version, find, http, metric, metric_with, number_after,
    rss_bytes, scrape, spawn, spawn_proxy, spawn_proxy_on, wait_until, ws_connect,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Clients talk to kubemux over WebSockets.
    Kubemux,
    /// Clients watch the simulated API server directly (the baseline).
    Direct,
    /// Direct first, then kubemux, with the same settings.
    Both,
}

/// Load generator for kubemux (see the module documentation).
#[derive(Parser, Debug, Clone)]
#[command(name = "loadgen")]
struct Args {
    /// The kubemux binary (runs `sim` and `serve`).
    #[arg(long, default_value = "target/release/kubemux")]
    bin: PathBuf,
    /// Which side the clients talk to.
    #[arg(long, value_enum, default_value = "kubemux")]
    mode: Mode,
    /// Same as `--mode direct`.
    #[arg(long)]
    direct: bool,
    /// Use this running simulated server (`host:port`) instead of starting one.
    /// Its churn rate is changed through `/_sim/churn`; it must stamp objects
    /// (`kubemux sim --stamp-sent-at`).
    #[arg(long)]
    sim_addr: Option<SocketAddr>,
    /// Use this running proxy (`host:port`), pointed at `--sim-addr`, instead of starting one.
    #[arg(long, requires = "sim_addr")]
    proxy_addr: Option<SocketAddr>,
    /// Pid of the `--proxy-addr` process, for CPU and memory figures.
    #[arg(long)]
    proxy_pid: Option<u32>,
    /// clusterId of the simulated cluster at `--proxy-addr`.
    #[arg(long, default_value = "sim")]
    cluster: String,
    /// Pin the proxy to this CPU (`taskset -c`). In direct mode the simulated
    /// server, being the server the clients talk to, is pinned here instead.
    #[arg(long)]
    proxy_cpu: Option<String>,
    /// Pin the simulated server to this CPU (kubemux mode).
    #[arg(long)]
    sim_cpu: Option<String>,
    /// WebSocket connections (M).
    #[arg(long, short = 'm', default_value_t = 100)]
    connections: usize,
    /// Subscriptions per connection (K).
    #[arg(long, short = 'k', default_value_t = 10)]
    subs: usize,
    /// Distinct watch keys (D) the subscriptions are spread over.
    #[arg(long, short = 'd', default_value_t = 10)]
    keys: usize,
    /// Churn: object changes per second in the simulated cluster (R).
    #[arg(long, short = 'r', default_value_t = 10.0)]
    rate: f64,
    /// Size of churned objects in bytes (S): small pods are padded up to it;
    /// realistic ones are larger already, so it adds nothing to them.
    #[arg(long, short = 's', default_value_t = 1024)]
    object_size: usize,
    /// Shape of the simulated pods (`kubemux sim --object-profile`): `small`
    /// (~1.7 KiB) or `realistic` (kubelet-managed, 5.5–8 KiB, with
    /// managedFields and full status, changed by status updates).
    #[arg(long, default_value = "small")]
    object_profile: kubemux_sim::ObjectProfile,
    /// Pods the simulated server starts with (`kubemux sim --pods`): the
    /// size of every shared watch's cache.
    #[arg(long, default_value_t = kubemux_sim::SimConfig::default().initial_pods)]
    pods: usize,
    /// Seconds of churn before the measured window.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Seconds of the measured window.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Reconnect storms after the window: every client drops and resumes at once.
    #[arg(long, default_value_t = 0)]
    storms: usize,
    /// Connections opened at once while connecting.
    #[arg(long, default_value_t = 64)]
    connect_parallelism: usize,
    /// kubemux replicas behind HAProxy (on 127.0.0.2, 127.0.0.3, …; HAProxy
    /// from the machine's packages). CPU and memory figures are the sums
    /// over the replicas; HAProxy's own CPU is reported apart.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// WebSocket clients offer permessage-deflate, as browsers do, and
    /// inflate what comes compressed; `wire_bytes_per_frame` shows the saving.
    #[arg(long)]
    deflate: bool,
    /// The `Sec-WebSocket-Extensions` offer `--deflate` makes.
    #[arg(long, default_value = "permessage-deflate; client_max_window_bits")]
    deflate_offer: String,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// A few seconds with small counts, both modes; exits non-zero if a report field is missing.
    #[arg(long)]
    smoke: bool,
}

const SENT_AT: &[u8] = b"kubemux.io/sent-at";

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The simulated server's current resourceVersion.
async fn sim_rv(sim: SocketAddr) -> Result<u64> {
    let (_, body) = http(sim, "GET", "/api/v1/namespaces?limit=1").await?;
    let v: Value = serde_json::from_str(&body)?;
    v["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no resourceVersion in a list from the simulated server"))
}

// ---------------------------------------------------------------- frames

/// The mean serialised size of the simulated server's pods (as LIST items)
/// and the mean share of it that is `metadata.managedFields`.
async fn pod_sizes(sim: SocketAddr) -> Result<(f64, f64)> {
    let (_, body) = http(sim, "GET", "/api/v1/pods").await?;
    let list: Value = serde_json::from_str(&body)?;
    let items = list["items"]
        .as_array()
        .filter(|items| !items.is_empty())
        .ok_or_else(|| anyhow!("no pods in a list from the simulated server"))?;
    let len = |v: &Value| serde_json::to_vec(v).map_or(0, |b| b.len()) as f64;
    let (mut bytes, mut share) = (0.0, 0.0);
    for item in items {
        let total = len(item);
        bytes += total;
        if let Some(managed) = item.pointer("/metadata/managedFields") {
            // `"managedFields":` and its comma are part of its cost.
            share += (len(managed) + 17.0) / total;
        }
    }
    let n = items.len() as f64;
    Ok((bytes / n, share / n))
}

/// What one received frame (kubemux) or watch line (direct) is.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// A watch event of an object.
    Data,
    /// A BOOKMARK (not expected: no client asks for them).
    Bookmark,
    /// An in-band ERROR event (410 Expired, …).
    EventError,
    /// A Headlamp ERROR frame; `true` when it reports a slow consumer.
    FrameError(bool),
    /// A Headlamp COMPLETE frame.
    Complete,
}

fn classify_event(data: &[u8]) -> Kind {
    // The event starts `{"type":"X"` (escaped or not).
    let head = &data[..data.len().min(40)];
    if find(head, b"BOOKMARK").is_some() {
        Kind::Bookmark
    } else if find(head, b"ERROR").is_some() {
        Kind::EventError
    } else {
        Kind::Data
    }
}

fn classify_frame(frame: &[u8]) -> Kind {
    let tail = &frame[frame.len().saturating_sub(24)..];
    if find(tail, b"\"DATA\"").is_some() {
        match find(frame, b"\"data\":\"") {
            Some(at) => classify_event(&frame[at + 8..]),
            None => Kind::Data,
        }
    } else if find(tail, b"\"COMPLETE\"").is_some() {
        Kind::Complete
    } else {
        Kind::FrameError(find(frame, b"slow consumer").is_some())
    }
}

// ---------------------------------------------------------------- shared state

#[derive(Clone, Debug, Default)]
struct Ctl {
    subscribe: bool,
    storm: usize,
    stop: bool,
}

#[derive(Default)]
struct Shared {
    measuring: AtomicBool,
    connected: AtomicU64,
    subscribed: AtomicU64,
    subs_with_data: AtomicU64,
    frames_total: AtomicU64,
    frames_window: AtomicU64,
    /// Bytes of the frames (kubemux) or watch lines (direct) in the window.
    bytes_window: AtomicU64,
    /// Bytes the WebSocket clients read from their sockets in the window
    /// (frame headers included, compressed if it was negotiated).
    wire_window: AtomicU64,
    resumed: AtomicU64,
    resumes_expired: AtomicU64,
    slow_cuts: AtomicU64,
    completes: AtomicU64,
    errors: AtomicU64,
    connect_failures: AtomicU64,
}

/// What a client task hands back.
#[derive(Default)]
struct ClientResult {
    latencies_us: Vec<u32>,
}

struct SubState {
    query: String,
    last_rv: u64,
    requested_at: u64,
    has_data: bool,
    /// Waiting for the first frame after a resume.
    resuming: bool,
}

impl SubState {
    fn new(query: String) -> Self {
        SubState {
            query,
            last_rv: 0,
            requested_at: 0,
            has_data: false,
            resuming: false,
        }
    }

    /// Bookkeeping for one event; returns its latency if it counts.
    fn on_event(&mut self, kind: &Kind, event: &[u8], shared: &Shared) -> Option<u32> {
        if self.resuming {
            self.resuming = false;
            if *kind == Kind::EventError {
                shared.resumes_expired.fetch_add(1, Ordering::Relaxed);
            }
        }
        match kind {
            Kind::Data => {}
            Kind::EventError => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            _ => return None,
        }
        if !self.has_data {
            self.has_data = true;
            shared.subs_with_data.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(rv) = event_resource_version(event) {
            self.last_rv = self.last_rv.max(rv);
        }
        shared.frames_total.fetch_add(1, Ordering::Relaxed);
        if !shared.measuring.load(Ordering::Relaxed) {
            return None;
        }
        shared.frames_window.fetch_add(1, Ordering::Relaxed);
        shared
            .bytes_window
            .fetch_add(event.len() as u64, Ordering::Relaxed);
        let sent = number_after(event, SENT_AT)?;
        if sent < self.requested_at {
            return None;
        }
        Some(now_us().saturating_sub(sent).min(u32::MAX as u64) as u32)
    }

    /// The query to send: the original, plus where to resume from.
    fn request_query(&self) -> String {
        if self.last_rv > 0 {
            format!("{}&resourceVersion={}", self.query, self.last_rv)
        } else {
            self.query.clone()
        }
    }
}

/// The query of subscription `j` of connection `c`.
fn sub_query(c: usize, j: usize, args: &Args) -> (usize, String) {
    let key = (c * args.subs + j) % args.keys;
    // `limit` is ignored for watches (not part of the key); it only makes
    // two subscriptions of one connection on the same key distinct.
    (
        key,
        format!("watch=1&labelSelector=lg-key%21%3D{key}&limit={j}"),
    )
}

// ---------------------------------------------------------------- kubemux clients

async fn ws_client(
    c: usize,
    args: Arc<Args>,
    proxy: SocketAddr,
    shared: Arc<Shared>,
    gate: Arc<tokio::sync::Semaphore>,
    mut ctl: watch::Receiver<Ctl>,
) -> ClientResult {
    let mut result = ClientResult::default();
    let mut subs: Vec<SubState> = (0..args.subs)
        .map(|j| SubState::new(sub_query(c, j, &args).1))
        .collect();
    let permit = gate.acquire().await;
    let mut ws = match connect(
        proxy,
        args.deflate.then_some(args.deflate_offer.as_str()),
        &shared,
    )
    .await
    {
        Ok(ws) => ws,
        Err(_) => {
            shared.connect_failures.fetch_add(1, Ordering::Relaxed);
            return result;
        }
    };
    drop(permit);
    shared.connected.fetch_add(1, Ordering::Relaxed);
    let mut generation = 0;
    let mut subscribed = false;
    loop {
        if !subscribed && ctl.borrow().subscribe {
            subscribed = true;
            let now = now_us();
            for s in subs.iter_mut() {
                s.requested_at = now;
                let msg = json!({"clusterId": args.cluster, "path": "/api/v1/pods",
                                 "query": s.request_query(), "userId": "", "type": "REQUEST"});
                if ws.send(Message::text(msg.to_string())).await.is_err() {
                    break;
                }
            }
            shared
                .subscribed
                .fetch_add(subs.len() as u64, Ordering::Relaxed);
        }
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let frame = text.as_bytes();
                    let kind = classify_frame(frame);
                    // Route by the `limit=N` in the echoed query.
                    let sub = find(frame, b"limit=")
                        .map(|at| frame[at + 6..].iter().take_while(|b| b.is_ascii_digit())
                            .fold(0usize, |n, d| n * 10 + usize::from(d - b'0')))
                        .filter(|i| *i < subs.len());
                    match (&kind, sub) {
                        (Kind::Complete, _) => { shared.completes.fetch_add(1, Ordering::Relaxed); }
                        (Kind::FrameError(slow), _) => {
                            if *slow { shared.slow_cuts.fetch_add(1, Ordering::Relaxed); }
                            shared.errors.fetch_add(1, Ordering::Relaxed);
                        }
                        (_, Some(i)) => {
                            if let Some(l) = subs[i].on_event(&kind, frame, &shared) {
                                result.latencies_us.push(l);
                            }
                        }
                        (_, None) => { shared.errors.fetch_add(1, Ordering::Relaxed); }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    // The proxy closed on us; wait for the end.
                    let _ = ctl.wait_for(|c| c.stop || c.storm > generation).await;
                    if ctl.borrow().stop { break; }
                }
            },
            changed = ctl.changed() => {
                if changed.is_err() { break; }
                let c = ctl.borrow_and_update().clone();
                if c.stop {
                    let _ = ws.close(None).await;
                    break;
                }
                if c.storm > generation {
                    generation = c.storm;
                    let _ = ws.close(None).await;
                    drop(ws);
                    let permit = gate.acquire().await;
                    ws = match connect(proxy, args.deflate.then_some(args.deflate_offer.as_str()), &shared).await {
                        Ok(ws) => ws,
                        Err(_) => {
                            shared.connect_failures.fetch_add(1, Ordering::Relaxed);
                            return result;
                        }
                    };
                    drop(permit);
                    for s in subs.iter_mut() {
                        s.resuming = s.last_rv > 0;
                    }
                    shared.resumed.fetch_add(subs.iter().filter(|s| s.resuming).count() as u64, Ordering::Relaxed);
                    subscribed = false;
                }
            }
        }
    }
    result
}

/// Opens `/wsMultiplexer` at `proxy` over a [`Counted`] socket, offering
/// permessage-deflate with the `deflate` offer.
async fn connect(
    proxy: SocketAddr,
    deflate: Option<&str>,
    shared: &Arc<Shared>,
) -> Result<tokio_tungstenite::WebSocketStream<Counted>> {
    ws_connect(proxy, deflate, |tcp| Counted::new(tcp, shared.clone())).await
}

/// A client socket that counts the bytes it reads (in the window) and
/// inflates the server's compressed messages into plain frames for
/// tungstenite, which has no permessage-deflate of its own: keeping its
/// window between messages, as browsers do, unless the server answered
/// `server_no_context_takeover`.
struct Counted {
    tcp: TcpStream,
    shared: Arc<Shared>,
    /// Still in the handshake's response head: how much of `\r\n\r\n`
    /// the bytes so far end with.
    head: Option<usize>,
    raw: Vec<u8>,
    ready: Vec<u8>,
    sent: usize,
    inflater: flate2::Decompress,
    /// The response head, until it has been read.
    response: Vec<u8>,
    /// Whether the server keeps its context between messages.
    takeover: bool,
}

impl Counted {
    fn new(tcp: TcpStream, shared: Arc<Shared>) -> Self {
        Counted {
            tcp,
            shared,
            head: Some(0),
            raw: Vec::new(),
            ready: Vec::new(),
            sent: 0,
            inflater: flate2::Decompress::new(false),
            response: Vec::new(),
            takeover: false,
        }
    }

    /// Takes what arrived: the response head as it is, then whole frames,
    /// inflated when compressed (kubemux sends every message as one frame).
    fn take(&mut self, mut bytes: &[u8]) {
        if let Some(mut matched) = self.head {
            let end = b"\r\n\r\n";
            let mut at = 0;
            while at < bytes.len() && matched < end.len() {
                matched = if bytes[at] == end[matched] {
                    matched + 1
                } else {
                    usize::from(bytes[at] == end[0])
                };
                at += 1;
            }
            self.ready.extend_from_slice(&bytes[..at]);
            self.response.extend_from_slice(&bytes[..at]);
            bytes = &bytes[at..];
            self.head = (matched < end.len()).then_some(matched);
            if self.head.is_some() {
                return;
            }
            let response = String::from_utf8_lossy(&self.response).to_ascii_lowercase();
            self.takeover = response.contains("permessage-deflate")
                && !response.contains("server_no_context_takeover");
            self.response = Vec::new();
        }
        self.raw.extend_from_slice(bytes);
        let mut start = 0;
        while let Some((header, len)) = frame_at(&self.raw[start..]) {
            let frame = &self.raw[start..start + header + len];
            if frame[0] & 0x40 == 0 {
                self.ready.extend_from_slice(frame);
            } else {
                let mut payload = frame[header..].to_vec();
                payload.extend_from_slice(&[0, 0, 0xff, 0xff]);
                if !self.takeover {
                    self.inflater.reset(false);
                }
                let before = self.inflater.total_in();
                let mut plain = Vec::with_capacity(payload.len() * 6);
                // Until the input is taken and the output was not cut
                // short: the inflater may hold output for a fuller buffer.
                loop {
                    plain.reserve(plain.capacity().max(4096));
                    let consumed = (self.inflater.total_in() - before) as usize;
                    if self
                        .inflater
                        .decompress_vec(
                            &payload[consumed..],
                            &mut plain,
                            flate2::FlushDecompress::Sync,
                        )
                        .is_err()
                    {
                        break;
                    }
                    let consumed = (self.inflater.total_in() - before) as usize;
                    if consumed == payload.len() && plain.len() < plain.capacity() {
                        break;
                    }
                }
                self.ready.push(0x80 | (frame[0] & 0x0f));
                match plain.len() {
                    n if n < 126 => self.ready.push(n as u8),
                    n if n <= usize::from(u16::MAX) => {
                        self.ready.push(126);
                        self.ready.extend_from_slice(&(n as u16).to_be_bytes());
                    }
                    n => {
                        self.ready.push(127);
                        self.ready.extend_from_slice(&(n as u64).to_be_bytes());
                    }
                }
                self.ready.extend_from_slice(&plain);
            }
            start += header + len;
        }
        self.raw.drain(..start);
    }
}

/// The header length and payload length of the whole frame `buf` starts
/// with, if it holds one.
fn frame_at(buf: &[u8]) -> Option<(usize, usize)> {
    let (header, len) = match *buf.get(1)? & 0x7f {
        126 => (
            4,
            usize::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
        ),
        127 => (
            10,
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
        ),
        n => (2, usize::from(n)),
    };
    (buf.len() >= header + len).then_some((header, len))
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            if this.sent < this.ready.len() {
                let n = (this.ready.len() - this.sent).min(buf.remaining());
                buf.put_slice(&this.ready[this.sent..this.sent + n]);
                this.sent += n;
                if this.sent == this.ready.len() {
                    this.ready.clear();
                    this.sent = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16384];
            let mut read = tokio::io::ReadBuf::new(&mut chunk);
            match std::pin::Pin::new(&mut this.tcp).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    let got = read.filled();
                    if this.shared.measuring.load(Ordering::Relaxed) {
                        this.shared
                            .wire_window
                            .fetch_add(got.len() as u64, Ordering::Relaxed);
                    }
                    let got = got.to_vec();
                    this.take(&got);
                }
                other => return other,
            }
        }
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------- direct clients

/// Reads a chunked HTTP body and yields complete lines.
struct ChunkedLines {
    reader: TokioBufReader<TcpStream>,
    pending: Vec<u8>,
    remaining_in_chunk: usize,
    done: bool,
}

impl ChunkedLines {
    async fn open(sim: SocketAddr, path: &str) -> Result<Self> {
        let mut s = TcpStream::connect(sim).await?;
        s.set_nodelay(true)?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {sim}\r\nAuthorization: Bearer loadgen\r\nAccept: application/json\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut reader = TokioBufReader::with_capacity(64 * 1024, s);
        let mut line = String::new();
        reader.read_line(&mut line).await?;
        if !line.contains(" 200 ") {
            bail!("watch {path}: {}", line.trim());
        }
        let mut chunked = false;
        loop {
            line.clear();
            reader.read_line(&mut line).await?;
            if line.trim().is_empty() {
                break;
            }
            if line.to_ascii_lowercase().starts_with("transfer-encoding:")
                && line.contains("chunked")
            {
                chunked = true;
            }
        }
        if !chunked {
            bail!("watch {path}: response is not chunked");
        }
        Ok(ChunkedLines {
            reader,
            pending: Vec::new(),
            remaining_in_chunk: 0,
            done: false,
        })
    }

    /// The next line (without the newline), or `None` at the end of the body.
    async fn next_line(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            if let Some(pos) = self.pending.iter().position(|b| *b == b'\n') {
                let rest = self.pending.split_off(pos + 1);
                let mut line = std::mem::replace(&mut self.pending, rest);
                line.pop();
                return Ok(Some(line));
            }
            if self.done {
                return Ok(None);
            }
            if self.remaining_in_chunk == 0 {
                let mut size = String::new();
                if self.reader.read_line(&mut size).await? == 0 {
                    self.done = true;
                    continue;
                }
                let size = size.trim();
                if size.is_empty() {
                    continue;
                }
                let n = usize::from_str_radix(size.split(';').next().unwrap_or("0"), 16)?;
                if n == 0 {
                    self.done = true;
                    continue;
                }
                self.remaining_in_chunk = n;
            }
            let buf = self.reader.fill_buf().await?;
            if buf.is_empty() {
                self.done = true;
                continue;
            }
            let take = buf.len().min(self.remaining_in_chunk);
            self.pending.extend_from_slice(&buf[..take]);
            self.reader.consume(take);
            self.remaining_in_chunk -= take;
            if self.remaining_in_chunk == 0 {
                let mut crlf = [0u8; 2];
                self.reader.read_exact(&mut crlf).await?;
            }
        }
    }
}

async fn direct_client(
    c: usize,
    j: usize,
    args: Arc<Args>,
    sim: SocketAddr,
    shared: Arc<Shared>,
    gate: Arc<tokio::sync::Semaphore>,
    mut ctl: watch::Receiver<Ctl>,
) -> ClientResult {
    let mut result = ClientResult::default();
    let (_, query) = sub_query(c, j, &args);
    let query = query.split("&limit").next().unwrap_or_default().to_string();
    let mut sub = SubState::new(query);
    // A direct client "connects" when it subscribes: one watch per TCP connection.
    shared.connected.fetch_add(1, Ordering::Relaxed);
    if ctl.wait_for(|c| c.subscribe || c.stop).await.is_err() || ctl.borrow().stop {
        return result;
    }
    let mut generation = ctl.borrow().storm;
    loop {
        let permit = gate.acquire().await;
        sub.requested_at = now_us();
        let path = format!("/api/v1/pods?{}", sub.request_query());
        let mut stream = match ChunkedLines::open(sim, &path).await {
            Ok(s) => s,
            Err(_) => {
                shared.connect_failures.fetch_add(1, Ordering::Relaxed);
                return result;
            }
        };
        drop(permit);
        shared.subscribed.fetch_add(1, Ordering::Relaxed);
        loop {
            tokio::select! {
                line = stream.next_line() => match line {
                    Ok(Some(line)) => {
                        let kind = classify_event(&line);
                        if let Some(l) = sub.on_event(&kind, &line, &shared) {
                            result.latencies_us.push(l);
                        }
                    }
                    _ => {
                        shared.completes.fetch_add(1, Ordering::Relaxed);
                        let _ = ctl.wait_for(|c| c.stop || c.storm > generation).await;
                        if ctl.borrow().stop { return result; }
                    }
                },
                changed = ctl.changed() => {
                    if changed.is_err() { return result; }
                    let c = ctl.borrow_and_update().clone();
                    if c.stop { return result; }
                    if c.storm > generation {
                        generation = c.storm;
                        sub.resuming = sub.last_rv > 0;
                        if sub.resuming { shared.resumed.fetch_add(1, Ordering::Relaxed); }
                        break;
                    }
                }
            }
        }
    }
}

/// HAProxy (from the machine's packages) in front of `replicas`, round
/// robin with health checks on `/readyz`, on a free loopback port; returns
/// it with its address once it accepts connections.
pub fn spawn_haproxy(replicas: &[SocketAddr]) -> Result<(Proc, SocketAddr)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let front = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cfg = format!(
        "global\n  maxconn 8000\n\
         defaults\n  mode http\n  timeout connect 2s\n  timeout client 1h\n  timeout server 1h\n  timeout tunnel 1h\n\
         frontend front\n  bind {front}\n  default_backend kubemux\n\
         backend kubemux\n  balance roundrobin\n  option httpchk GET /readyz\n"
    );
    for (i, r) in replicas.iter().enumerate() {
        cfg.push_str(&format!("  server r{i} {r} check inter 1s\n"));
    }
    let path = std::env::temp_dir().join(format!("loadgen-{}-haproxy.cfg", std::process::id()));
    std::fs::write(&path, cfg)?;
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting haproxy (install Debian's haproxy package)")?;
    let proc = Proc::from(child);
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(front).is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("haproxy did not listen on {front}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((proc, front))
}

/// Metrics of several processes, summed series by series.
pub async fn scrape_sum(addrs: &[SocketAddr]) -> Result<BTreeMap<String, f64>> {
    let mut sum = BTreeMap::new();
    for addr in addrs {
        for (k, v) in scrape(*addr).await? {
            *sum.entry(k).or_insert(0.0) += v;
        }
    }
    Ok(sum)
}

// ---------------------------------------------------------------- a run

#[derive(Debug, Default)]
struct Report {
    fields: BTreeMap<&'static str, Value>,
}

impl Report {
    fn set(&mut self, k: &'static str, v: impl Into<Value>) {
        self.fields.insert(k, v.into());
    }
}

/// Fields every report must have, with a label and unit for the table.
const FIELDS: &[(&str, &str)] = &[
    ("mode", "mode"),
    ("connections", "connections (M)"),
    ("subscriptions", "subscriptions (M×K)"),
    ("keys", "distinct keys (D)"),
    ("churn_rate", "churn requested, events/s (R)"),
    ("churn_measured", "churn measured, events/s"),
    ("object_size", "object size, bytes (S)"),
    ("object_profile", "object profile"),
    ("object_bytes_mean", "pod size before churn, mean bytes"),
    ("object_managed_fields_pct", "… of which managedFields, %"),
    ("frame_bytes_mean", "delivered frame, mean bytes"),
    ("deflate", "clients offer permessage-deflate"),
    (
        "wire_bytes_per_frame",
        "bytes on the wire per delivered frame",
    ),
    ("replicas", "kubemux replicas"),
    ("upstream_watches", "upstream watches (sim, pods)"),
    ("window_secs", "measured window, s"),
    ("delivered_frames", "delivered frames in window"),
    ("delivered_frames_per_sec", "delivered frames/s"),
    ("latency_samples", "latency samples"),
    ("latency_p50_ms", "latency p50, ms"),
    ("latency_p99_ms", "latency p99, ms"),
    ("latency_max_ms", "latency max, ms"),
    ("server_cpu_percent", "server CPU, % of a core"),
    (
        "server_cpu_us_per_frame",
        "server CPU per delivered frame, µs",
    ),
    ("sim_cpu_percent", "sim CPU, % of a core"),
    ("balancer_cpu_percent", "HAProxy CPU, % of a core"),
    ("loadgen_cpu_percent", "loadgen CPU, % of a core"),
    ("load_average", "machine load average (1 min)"),
    ("pods", "pods in the cluster"),
    ("server_rss_base_mib", "server RSS before clients, MiB"),
    (
        "server_rss_synced_mib",
        "server RSS with every initial state sent, MiB",
    ),
    (
        "server_rss_per_idle_connection_kib",
        "server RSS per idle connection, KiB",
    ),
    (
        "server_rss_per_idle_subscription_kib",
        "server RSS per idle subscription, KiB",
    ),
    ("slow_consumer_cuts", "slow-consumer cuts"),
    ("storms", "reconnect storms"),
    ("reconnects", "reconnects (resumes with a resourceVersion)"),
    ("reconnects_expired", "reconnects answered 410"),
    (
        "reconnects_from_history_pct",
        "reconnects served from history, %",
    ),
    (
        "storm_upstream_watch_requests",
        "upstream watch requests during storms",
    ),
    ("storm_recovery_secs", "storm: all resubscribed after, s"),
    ("connect_failures", "connect failures"),
    ("errors", "error frames / events"),
];

/// Waits until the frame counter has been still for `quiet`.
async fn wait_quiet(shared: &Shared, quiet: Duration, limit: Duration) {
    let start = Instant::now();
    let mut last = shared.frames_total.load(Ordering::Relaxed);
    let mut since = Instant::now();
    while start.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = shared.frames_total.load(Ordering::Relaxed);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return;
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn round(x: f64, digits: i32) -> Value {
    if !x.is_finite() {
        return Value::Null;
    }
    let m = 10f64.powi(digits);
    json!((x * m).round() / m)
}

async fn run(args: Arc<Args>, mode: Mode) -> Result<Report> {
    let mut report = Report::default();
    let direct = mode == Mode::Direct;
    report.set("mode", if direct { "direct" } else { "kubemux" });
    // Processes.
    let tmp = std::env::temp_dir().join(format!("loadgen-{}-kubeconfig", std::process::id()));
    let mut procs: Vec<Proc> = Vec::new();
    let sim = match args.sim_addr {
        Some(addr) => addr,
        None => {
            let cpu = if direct {
                args.proxy_cpu.as_deref()
            } else {
                args.sim_cpu.as_deref()
            };
            let sim_args: Vec<String> = [
                "sim",
                "--listen",
                "127.0.0.1:0",
                "--context",
                &args.cluster,
                "--kubeconfig-out",
                tmp.to_str().unwrap_or("/tmp/loadgen-kubeconfig"),
                "--object-size",
                &args.object_size.to_string(),
                "--object-profile",
                args.object_profile.as_str(),
                "--pods",
                &args.pods.to_string(),
                "--stamp-sent-at",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let (p, addr) = spawn("sim", &args.bin, &sim_args, cpu, "listening on")?;
            procs.push(p);
            addr
        }
    };
    let sim_pid = procs.first().map(Proc::pid);
    // Where clients connect, the processes serving them (their CPU and
    // memory are summed), where their metrics are read, and HAProxy's pid.
    let mut server_pids: Vec<u32> = Vec::new();
    let mut proxy_metrics: Vec<SocketAddr> = Vec::new();
    let mut balancer_pid = None;
    let proxy = if direct {
        server_pids.extend(sim_pid);
        None
    } else {
        match args.proxy_addr {
            Some(addr) => {
                server_pids.extend(args.proxy_pid);
                proxy_metrics.push(addr);
                Some(addr)
            }
            None if args.replicas <= 1 => {
                let (p, addr) = spawn_proxy(&args.bin, &tmp, args.proxy_cpu.as_deref())?;
                server_pids.push(p.pid());
                procs.push(p);
                proxy_metrics.push(addr);
                Some(addr)
            }
            None => {
                for i in 0..args.replicas {
                    let ip = format!("127.0.0.{}", 2 + i);
                    let (p, addr) =
                        spawn_proxy_on(&args.bin, &tmp, args.proxy_cpu.as_deref(), &ip)?;
                    server_pids.push(p.pid());
                    procs.push(p);
                    proxy_metrics.push(addr);
                }
                let (p, front) = spawn_haproxy(&proxy_metrics)?;
                balancer_pid = Some(p.pid());
                procs.push(p);
                Some(front)
            }
        }
    };
    let server_cpu = || -> Option<f64> { server_pids.iter().map(|p| cpu_seconds(*p)).sum() };
    let server_rss = || -> Option<u64> { server_pids.iter().map(|p| rss_bytes(*p)).sum() };
    let _ = http(sim, "POST", "/_sim/churn?rate=0").await?;
    if !proxy_metrics.is_empty() {
        scrape_sum(&proxy_metrics).await.context("proxy metrics")?;
    }
    report.set("replicas", if direct { 0 } else { args.replicas.max(1) });
    let total_subs = args.connections * args.subs;
    report.set("connections", args.connections);
    report.set("subscriptions", total_subs);
    report.set("keys", args.keys);
    report.set("churn_rate", args.rate);
    report.set("object_size", args.object_size);
    report.set("object_profile", args.object_profile.as_str());
    report.set("pods", args.pods);
    report.set("deflate", args.deflate && !direct);
    report.set("storms", args.storms);

    let shared = Arc::new(Shared::default());
    let (ctl_tx, ctl_rx) = watch::channel(Ctl::default());
    let gate = Arc::new(tokio::sync::Semaphore::new(args.connect_parallelism.max(1)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_base = server_rss();

    // Connect.
    let mut tasks = Vec::new();
    if direct {
        for c in 0..args.connections {
            for j in 0..args.subs {
                tasks.push(tokio::spawn(direct_client(
                    c,
                    j,
                    args.clone(),
                    sim,
                    shared.clone(),
                    gate.clone(),
                    ctl_rx.clone(),
                )));
            }
        }
    } else {
        let proxy = proxy.expect("proxy address");
        for c in 0..args.connections {
            tasks.push(tokio::spawn(ws_client(
                c,
                args.clone(),
                proxy,
                shared.clone(),
                gate.clone(),
                ctl_rx.clone(),
            )));
        }
    }
    let expected_conns = tasks.len() as u64;
    wait_until("connections", Duration::from_secs(120), || {
        shared.connected.load(Ordering::Relaxed) + shared.connect_failures.load(Ordering::Relaxed)
            >= expected_conns
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_conns = server_rss();

    // Subscribe and wait for every initial state.
    ctl_tx.send_modify(|c| c.subscribe = true);
    wait_until("subscriptions", Duration::from_secs(120), || {
        shared.subscribed.load(Ordering::Relaxed) as usize >= total_subs
            || shared.connect_failures.load(Ordering::Relaxed) > 0
    })
    .await?;
    wait_until("initial states", Duration::from_secs(120), || {
        shared.subs_with_data.load(Ordering::Relaxed) as usize >= total_subs
            || shared.connect_failures.load(Ordering::Relaxed) > 0
    })
    .await?;
    wait_quiet(&shared, Duration::from_millis(500), Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_subs = server_rss();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    if let (Some(base), Some(conns), Some(subs)) = (rss_base, rss_conns, rss_subs) {
        report.set("server_rss_base_mib", round(mib(base), 1));
        report.set("server_rss_synced_mib", round(mib(subs), 1));
        let per_conn = conns.saturating_sub(base) as f64 / 1024.0 / args.connections.max(1) as f64;
        let per_sub = subs.saturating_sub(conns) as f64 / 1024.0 / total_subs.max(1) as f64;
        if direct {
            // Every direct watch is its own connection: all of it is per subscription.
            report.set("server_rss_per_idle_connection_kib", "-");
        } else {
            report.set("server_rss_per_idle_connection_kib", round(per_conn, 2));
        }
        report.set("server_rss_per_idle_subscription_kib", round(per_sub, 2));
    }
    // Sizes of the pods as seeded, read while the server is quiet (during
    // the window a direct-mode server is too busy to answer a LIST in time).
    let (object_bytes, managed_fields_share) = pod_sizes(sim).await?;
    report.set("object_bytes_mean", round(object_bytes, 0));
    report.set(
        "object_managed_fields_pct",
        round(managed_fields_share * 100.0, 1),
    );
    let sim_watches = scrape(sim).await?;
    report.set(
        "upstream_watches",
        metric_with(&sim_watches, "sim_active_watches", "resource=\"pods\""),
    );

    // Churn, warm up, measure.
    http(sim, "POST", &format!("/_sim/churn?rate={}", args.rate)).await?;
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    let proxy_before = match proxy {
        Some(_) => Some(scrape_sum(&proxy_metrics).await?),
        None => None,
    };
    let cpu0 = server_cpu();
    let sim_cpu0 = sim_pid.and_then(cpu_seconds);
    let balancer_cpu0 = balancer_pid.and_then(cpu_seconds);
    let own_cpu0 = cpu_seconds(std::process::id());
    let rv0 = sim_rv(sim).await?;
    let t0 = Instant::now();
    shared.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let window = t0.elapsed().as_secs_f64();
    let cpu1 = server_cpu();
    let sim_cpu1 = sim_pid.and_then(cpu_seconds);
    let balancer_cpu1 = balancer_pid.and_then(cpu_seconds);
    let own_cpu1 = cpu_seconds(std::process::id());
    // A direct-mode server that cannot keep up with its watches (realistic
    // objects) may not answer within the request deadline: what such reads
    // feed is then left out of the report instead of failing the run.
    let rv1 = sim_rv(sim)
        .await
        .inspect_err(|e| eprintln!("the simulated server did not answer: {e}"))
        .ok();
    let frames = shared.frames_window.load(Ordering::Relaxed);
    let frame_bytes = shared.bytes_window.load(Ordering::Relaxed);
    if frames > 0 {
        report.set(
            "frame_bytes_mean",
            round(frame_bytes as f64 / frames as f64, 0),
        );
        let wire = shared.wire_window.load(Ordering::Relaxed);
        report.set(
            "wire_bytes_per_frame",
            if direct {
                Value::from("-")
            } else {
                round(wire as f64 / frames as f64, 0)
            },
        );
    }
    report.set("window_secs", round(window, 2));
    report.set(
        "churn_measured",
        rv1.map_or(Value::Null, |rv1| {
            round(rv1.saturating_sub(rv0) as f64 / window, 1)
        }),
    );
    report.set("delivered_frames", frames);
    report.set("delivered_frames_per_sec", round(frames as f64 / window, 0));
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        report.set("server_cpu_percent", round((b - a) / window * 100.0, 1));
        if frames > 0 {
            report.set(
                "server_cpu_us_per_frame",
                round((b - a) * 1e6 / frames as f64, 2),
            );
        }
    }
    if let (Some(a), Some(b)) = (sim_cpu0, sim_cpu1) {
        report.set("sim_cpu_percent", round((b - a) / window * 100.0, 1));
    }
    match (balancer_cpu0, balancer_cpu1) {
        (Some(a), Some(b)) => {
            report.set("balancer_cpu_percent", round((b - a) / window * 100.0, 1))
        }
        _ => report.set("balancer_cpu_percent", "-"),
    }
    if let (Some(a), Some(b)) = (own_cpu0, own_cpu1) {
        report.set("loadgen_cpu_percent", round((b - a) / window * 100.0, 1));
    }
    report.set(
        "load_average",
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| {
                l.split_whitespace()
                    .next()
                    .and_then(|x| x.parse::<f64>().ok())
            })
            .map_or(Value::Null, |l| json!(l)),
    );
    let watch_requests = || async {
        match scrape(sim).await {
            Ok(m) => Some(metric_with(
                &m,
                "sim_watch_requests_total",
                "resource=\"pods\"",
            )),
            Err(e) => {
                eprintln!("the simulated server did not answer: {e}");
                None
            }
        }
    };
    let watch_requests_before = watch_requests().await;

    // Reconnect storms.
    let resumed_before = shared.resumed.load(Ordering::Relaxed);
    let proxy_resumes_before = proxy_before.as_ref().map(|m| {
        (
            metric_with(m, "kubemux_resumes_total", "history"),
            metric(m, "kubemux_resumes_total"),
        )
    });
    let mut recovery = 0.0f64;
    for storm in 1..=args.storms {
        let subscribed_before = shared.subscribed.load(Ordering::Relaxed);
        let t = Instant::now();
        ctl_tx.send_modify(|c| {
            c.storm = storm;
            c.subscribe = true;
        });
        wait_until("storm resubscriptions", Duration::from_secs(120), || {
            shared.subscribed.load(Ordering::Relaxed) - subscribed_before >= total_subs as u64
                || shared.connect_failures.load(Ordering::Relaxed) > 0
        })
        .await?;
        recovery = recovery.max(t.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let resumed = shared.resumed.load(Ordering::Relaxed) - resumed_before;
    let expired = shared.resumes_expired.load(Ordering::Relaxed);
    report.set("reconnects", resumed);
    report.set("reconnects_expired", expired);
    report.set("storm_recovery_secs", round(recovery, 2));
    let watch_requests_after = watch_requests().await;
    report.set(
        "storm_upstream_watch_requests",
        match (watch_requests_before, watch_requests_after) {
            (Some(before), Some(after)) => json!(after - before),
            _ => Value::Null,
        },
    );
    let history_pct = match (proxy, proxy_resumes_before) {
        (Some(_), Some((hist0, _))) => {
            // kubemux: its own count of resumes served from a shared watch's history.
            let m = scrape_sum(&proxy_metrics).await?;
            let hist = metric_with(&m, "kubemux_resumes_total", "history") - hist0;
            (resumed > 0).then(|| hist / resumed as f64 * 100.0)
        }
        _ => {
            // direct: the simulated server replays from its history unless it answers 410.
            (resumed > 0).then(|| (resumed - expired.min(resumed)) as f64 / resumed as f64 * 100.0)
        }
    };
    report.set(
        "reconnects_from_history_pct",
        match history_pct {
            Some(p) => round(p, 2),
            None if args.storms == 0 => json!("-"),
            None => Value::Null,
        },
    );
    let slow = match proxy {
        Some(_) => metric(
            &scrape_sum(&proxy_metrics).await?,
            "kubemux_slow_consumer_terminations_total",
        ),
        None => shared.slow_cuts.load(Ordering::Relaxed) as f64,
    };
    report.set("slow_consumer_cuts", slow);

    // Stop.
    ctl_tx.send_modify(|c| c.stop = true);
    let mut latencies = Vec::new();
    for t in tasks {
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(10), t).await {
            latencies.extend(r.latencies_us);
        }
    }
    latencies.sort_unstable();
    report.set("latency_samples", latencies.len());
    report.set("latency_p50_ms", round(percentile(&latencies, 0.50), 2));
    report.set("latency_p99_ms", round(percentile(&latencies, 0.99), 2));
    report.set(
        "latency_max_ms",
        round(latencies.last().map_or(f64::NAN, |l| *l as f64 / 1000.0), 2),
    );
    report.set(
        "connect_failures",
        shared.connect_failures.load(Ordering::Relaxed),
    );
    report.set("errors", shared.errors.load(Ordering::Relaxed));
    drop(procs);
    let _ = std::fs::remove_file(&tmp);
    Ok(report)
}

fn missing(report: &Report) -> Vec<&'static str> {
    FIELDS
        .iter()
        .filter(|(k, _)| report.fields.get(k).is_none_or(Value::is_null))
        .map(|(k, _)| *k)
        .collect()
}

fn print_table(reports: &[Report]) {
    let width = FIELDS
        .iter()
        .map(|(_, l)| l.chars().count())
        .max()
        .unwrap_or(0);
    for (k, label) in FIELDS {
        let mut line = format!("{label:<width$}");
        for r in reports {
            let v = match r.fields.get(k) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => "n/a".into(),
                Some(v) => v.to_string(),
            };
            line.push_str(&format!("  {v:>12}"));
        }
        println!("{line}");
    }
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.direct {
        args.mode = Mode::Direct;
    }
    if args.smoke {
        args.mode = Mode::Both;
        args.connections = 4;
        args.subs = 3;
        args.keys = 2;
        args.rate = 50.0;
        args.warmup = 1.0;
        args.duration = 2.0;
        args.storms = 1;
    }
    if args.keys == 0 || args.subs == 0 || args.connections == 0 {
        bail!("--connections, --subs and --keys must be positive");
    }
    let modes = match args.mode {
        Mode::Both => vec![Mode::Direct, Mode::Kubemux],
        m => vec![m],
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let args = Arc::new(args);
    let mut reports = Vec::new();
    for mode in modes {
        let report = runtime.block_on(run(args.clone(), mode))?;
        reports.push(report);
    }
    if args.json {
        let out: Vec<Value> = reports
            .iter()
            .map(|r| {
                Value::Object(
                    r.fields
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.clone()))
                        .collect(),
                )
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_table(&reports);
    }
    let mut incomplete = false;
    for r in &reports {
        let m = missing(r);
        if !m.is_empty() {
            eprintln!(
                "report for {} is missing: {}",
                r.fields["mode"],
                m.join(", ")
            );
            incomplete = true;
        }
    }
    if args.smoke && incomplete {
        std::process::exit(1);
    }
    if args.smoke {
        eprintln!("smoke: reports complete");
    }
    Ok(())
}
