//! The chaos suite's clients: Headlamp-speaking subscribers that keep their
//! own applied state (the oracle's input) and check every frame as it
//! arrives, plus the abusive clients (slow readers, vandals, forbidden
//! probes) whose expected treatment is checked by their own tasks.
//!
//! Nothing here panics on a broken promise: every violation is recorded with
//! its context, so the test ends with the complete list and the seed.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::{Error, Message};

use crate::support::{CLUSTER, PATIENCE, Request, Ws, WsConnect};

/// A user of the simulated cluster and the namespaces it may list and watch pods in.
pub struct User {
    pub name: &'static str,
    pub token: &'static str,
    pub namespaces: &'static [&'static str],
}

/// Two users with disjoint namespaces (`kube-system` is nobody's), so any
/// sharing across identities shows up as a foreign object.
pub const USERS: [User; 2] = [
    User {
        name: "alice",
        token: "token-alice",
        namespaces: &["default", "team-a"],
    },
    User {
        name: "bob",
        token: "token-bob",
        namespaces: &["team-b"],
    },
];

/// What every client task reports into.
pub struct Ctx {
    pub addr: SocketAddr,
    pub seed: u64,
    violations: Mutex<Vec<String>>,
    /// DATA events whose namespace was checked against the receiver's rights.
    pub events_checked: AtomicU64,
    /// Subscriptions restarted after a client-visible 410.
    pub restarts_after_410: AtomicU64,
    /// Subscriptions restarted after shared mode could not review access.
    pub restarts_after_review: AtomicU64,
    /// Non-terminal ERROR frames (upstream interruptions).
    pub warnings: AtomicU64,
    /// Resumes sent with a resourceVersion.
    pub resumes: AtomicU64,
    next_session: AtomicU64,
}

impl Ctx {
    pub fn new(addr: SocketAddr, seed: u64) -> Self {
        Ctx {
            addr,
            seed,
            violations: Mutex::new(Vec::new()),
            events_checked: AtomicU64::new(0),
            restarts_after_410: AtomicU64::new(0),
            restarts_after_review: AtomicU64::new(0),
            warnings: AtomicU64::new(0),
            resumes: AtomicU64::new(0),
            next_session: AtomicU64::new(0),
        }
    }

    pub fn violation(&self, what: String) {
        eprintln!("chaos seed {}: VIOLATION {what}", self.seed);
        self.violations.lock().push(what);
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().clone()
    }

    /// A number that makes every subscription's query unique (`limit` is
    /// ignored by watches), so frames of an earlier session are never
    /// mistaken for the current one's.
    fn session(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// The rights check every DATA event of user `u` passes through.
    fn check_rights(&self, u: usize, ev: &Value, context: &str) {
        if !matches!(ev["type"].as_str(), Some("ADDED" | "MODIFIED" | "DELETED")) {
            return;
        }
        self.events_checked.fetch_add(1, Ordering::Relaxed);
        let ns = ev["object"]["metadata"]["namespace"].as_str().unwrap_or("");
        if !USERS[u].namespaces.contains(&ns) {
            self.violation(format!(
                "{} ({context}) received an object in namespace {ns:?}: {}",
                USERS[u].name, ev["object"]["metadata"]
            ));
        }
    }
}

/// A WebSocket to `/wsMultiplexer` as `user`; a tiny receive buffer makes a
/// client that stops reading back up into kubemux's queue quickly.
async fn connect(addr: SocketAddr, user: usize, tiny_buffer: bool) -> Result<Ws, Error> {
    let connect = WsConnect::new(&format!("ws://{addr}/wsMultiplexer")).bearer(USERS[user].token);
    let connect = if tiny_buffer {
        connect.recv_buffer(4096)
    } else {
        connect
    };
    connect.open().await
}

fn request(path: &str, query: &str, kind: &str) -> Message {
    Message::text(
        json!({"clusterId": CLUSTER, "path": path, "query": query, "userId": "", "type": kind})
            .to_string(),
    )
}

fn pods_path(ns: &str) -> String {
    format!("/api/v1/namespaces/{ns}/pods")
}

/// How a subscription starts from scratch.
#[derive(Clone, Copy, Debug)]
pub enum Start {
    /// `watch=1`: a snapshot of unknown length, then live events.
    Plain,
    /// `sendInitialEvents=true`: the snapshot ends with a marked bookmark.
    InitialEvents,
}

/// One subscription and the state its client has applied.
pub struct Sub {
    pub user: usize,
    pub ns: &'static str,
    pub path: String,
    start: Start,
    pub query: String,
    pub open: bool,
    /// uid → resourceVersion, from the events applied so far.
    pub objects: BTreeMap<String, u64>,
    last_rv: u64,
    /// The applied state is complete (snapshot ended, or listed): versions
    /// must now only move forward and a reconnect may resume from `last_rv`.
    synced: bool,
    /// (uid, resourceVersion, type) applied in this line of sessions.
    seen: HashSet<(String, u64, String)>,
    /// An in-band 410 arrived; COMPLETE must follow.
    expired: bool,
    /// Shared mode could not review access (API server unreachable); COMPLETE follows.
    review_unavailable: bool,
}

impl Sub {
    pub fn new(user: usize, ns: &'static str, start: Start) -> Self {
        Sub {
            user,
            ns,
            path: pods_path(ns),
            start,
            query: String::new(),
            open: true,
            objects: BTreeMap::new(),
            last_rv: 0,
            synced: false,
            seen: HashSet::new(),
            expired: false,
            review_unavailable: false,
        }
    }

    /// A new session from scratch: forget everything applied.
    fn fresh(&mut self, ctx: &Ctx) -> Message {
        let s = ctx.session();
        self.objects.clear();
        self.seen.clear();
        self.last_rv = 0;
        self.expired = false;
        self.review_unavailable = false;
        self.synced = false;
        self.query = match self.start {
            Start::Plain => format!("watch=1&limit={s}"),
            Start::InitialEvents => format!(
                "watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&limit={s}"
            ),
        };
        request(&self.path, &self.query, "REQUEST")
    }

    /// Resumes from the last version if the state is complete, else starts over.
    fn resume(&mut self, ctx: &Ctx) -> Message {
        if !self.synced || self.expired || self.last_rv == 0 {
            return self.fresh(ctx);
        }
        ctx.resumes.fetch_add(1, Ordering::Relaxed);
        self.query = format!(
            "watch=1&allowWatchBookmarks=true&resourceVersion={}&limit={}",
            self.last_rv,
            ctx.session()
        );
        request(&self.path, &self.query, "REQUEST")
    }

    /// Applies one watch event of this subscription's current session.
    fn on_event(&mut self, ctx: &Ctx, ev: &Value) {
        let who = format!("{} {} {}", USERS[self.user].name, self.path, self.query);
        let ty = ev["type"].as_str().unwrap_or("");
        let rv = ev["object"]["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse::<u64>().ok());
        match ty {
            "ERROR" => {
                if ev["object"]["code"] != 410 {
                    ctx.violation(format!("{who}: in-band error other than 410: {ev}"));
                }
                self.expired = true;
            }
            "BOOKMARK" => {
                let Some(rv) = rv else {
                    ctx.violation(format!("{who}: bookmark without a version: {ev}"));
                    return;
                };
                let end = &ev["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"];
                if end == "true" {
                    self.synced = true;
                }
                self.last_rv = self.last_rv.max(rv);
            }
            "ADDED" | "MODIFIED" | "DELETED" => {
                let (Some(uid), Some(rv)) = (ev["object"]["metadata"]["uid"].as_str(), rv) else {
                    ctx.violation(format!("{who}: event without uid or version: {ev}"));
                    return;
                };
                if self.synced && rv < self.last_rv {
                    ctx.violation(format!(
                        "{who}: version went back from {} to {rv}: {ty} {uid}",
                        self.last_rv
                    ));
                }
                if !self.seen.insert((uid.to_string(), rv, ty.to_string())) {
                    ctx.violation(format!("{who}: duplicate {ty} {uid} at {rv}"));
                }
                self.last_rv = self.last_rv.max(rv);
                if ty == "DELETED" {
                    self.objects.remove(uid);
                } else {
                    self.objects.insert(uid.to_string(), rv);
                }
            }
            other => ctx.violation(format!("{who}: unexpected event type {other:?}: {ev}")),
        }
    }
}

/// Commands the driver sends to a subscriber connection.
pub enum Cmd {
    /// Drop the socket without a close frame and reconnect, resuming every
    /// subscription that can be resumed (a reconnect storm is this, to all).
    Reconnect,
    /// Headlamp's re-subscribe: CLOSE, LIST through kubemux's REST path,
    /// REQUEST from the list's resourceVersion.
    Resubscribe(usize),
    /// CLOSE one subscription; it leaves the oracle.
    Close(usize),
    /// Drop the socket without a close frame and end.
    Abort,
    /// Close politely and end.
    Stop,
}

/// A subscriber connection run by its own task.
pub struct Conn {
    pub subs: Arc<Mutex<Vec<Sub>>>,
    tx: mpsc::UnboundedSender<Cmd>,
    pub task: JoinHandle<()>,
}

impl Conn {
    pub fn spawn(ctx: Arc<Ctx>, user: usize, subs: Vec<Sub>) -> Conn {
        let subs = Arc::new(Mutex::new(subs));
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run_conn(ctx, user, subs.clone(), rx));
        Conn { subs, tx, task }
    }

    pub fn send(&self, cmd: Cmd) {
        // A task that already ended has recorded why.
        let _ = self.tx.send(cmd);
    }
}

/// Connects, retrying: kubemux is never down in this suite, but a loaded
/// machine may make a connect slow.
async fn connect_retrying(ctx: &Ctx, user: usize) -> Option<Ws> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match connect(ctx.addr, user, false).await {
            Ok(ws) => return Some(ws),
            Err(e) if tokio::time::Instant::now() > deadline => {
                ctx.violation(format!("{} could not connect: {e}", USERS[user].name));
                return None;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn run_conn(
    ctx: Arc<Ctx>,
    user: usize,
    subs: Arc<Mutex<Vec<Sub>>>,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
) {
    let Some(mut ws) = connect_retrying(&ctx, user).await else {
        return;
    };
    let first: Vec<Message> = subs.lock().iter_mut().map(|s| s.fresh(&ctx)).collect();
    for m in first {
        if ws.send(m).await.is_err() {
            ctx.violation(format!(
                "{}: send failed on a new connection",
                USERS[user].name
            ));
            return;
        }
    }
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let replies = on_frame(&ctx, user, &subs, &text);
                    for m in replies {
                        if ws.send(m).await.is_err() {
                            break;
                        }
                    }
                }
                Some(Ok(_)) => {}
                other => {
                    ctx.violation(format!(
                        "{}: kubemux closed a reading subscriber's connection: {other:?}",
                        USERS[user].name
                    ));
                    return;
                }
            },
            cmd = rx.recv() => match cmd {
                None | Some(Cmd::Stop) => {
                    let _ = ws.close(None).await;
                    return;
                }
                Some(Cmd::Abort) => return,
                Some(Cmd::Reconnect) => {
                    drop(ws);
                    let Some(new) = connect_retrying(&ctx, user).await else { return };
                    ws = new;
                    let msgs: Vec<Message> = subs
                        .lock()
                        .iter_mut()
                        .filter(|s| s.open)
                        .map(|s| s.resume(&ctx))
                        .collect();
                    for m in msgs {
                        if ws.send(m).await.is_err() {
                            break;
                        }
                    }
                }
                Some(Cmd::Close(i)) => {
                    let msg = {
                        let mut subs = subs.lock();
                        subs.get_mut(i).filter(|s| s.open).map(|s| {
                            s.open = false;
                            request(&s.path, &s.query, "CLOSE")
                        })
                    };
                    if let Some(m) = msg {
                        let _ = ws.send(m).await;
                    }
                }
                Some(Cmd::Resubscribe(i)) => {
                    let old = {
                        let subs = subs.lock();
                        subs.get(i).filter(|s| s.open && !s.expired).map(|s| (s.path.clone(), s.query.clone()))
                    };
                    let Some((path, query)) = old else { continue };
                    let _ = ws.send(request(&path, &query, "CLOSE")).await;
                    let listed = rest_list(&ctx, user, &path).await;
                    let msg = {
                        let mut subs = subs.lock();
                        let s = &mut subs[i];
                        match listed {
                            Some((rv, items)) => {
                                let who = format!("{} REST {path}", USERS[user].name);
                                for item in &items {
                                    ctx.check_rights(user, &json!({"type": "ADDED", "object": item}), &who);
                                }
                                s.objects = items
                                    .iter()
                                    .filter_map(|o| {
                                        let md = &o["metadata"];
                                        Some((md["uid"].as_str()?.to_string(), md["resourceVersion"].as_str()?.parse().ok()?))
                                    })
                                    .collect();
                                s.seen.clear();
                                s.last_rv = rv;
                                s.synced = true;
                                s.expired = false;
                                ctx.resumes.fetch_add(1, Ordering::Relaxed);
                                s.query = format!("watch=1&resourceVersion={rv}&limit={}", ctx.session());
                                request(&s.path, &s.query, "REQUEST")
                            }
                            None => s.fresh(&ctx),
                        }
                    };
                    let _ = ws.send(msg).await;
                }
            }
        }
    }
}

/// An ERROR frame an outage of the API server explains: the upstream watch
/// retrying (the subscription goes on), or, in shared mode, a first access
/// review that could not be made (the subscription ends and is asked again).
fn is_transient(frame: &str) -> bool {
    frame.contains("\"type\":\"ERROR\"")
        && (frame.contains("upstream watch interrupted") || frame.contains(REVIEW_UNAVAILABLE))
}

const REVIEW_UNAVAILABLE: &str = "could not check access";

/// Handles one frame; returns the messages to send in reply (restarts).
fn on_frame(ctx: &Ctx, user: usize, subs: &Mutex<Vec<Sub>>, text: &str) -> Vec<Message> {
    let name = USERS[user].name;
    let Ok(frame) = serde_json::from_str::<Value>(text) else {
        ctx.violation(format!("{name}: a frame that is not JSON: {text:.200}"));
        return Vec::new();
    };
    let path = frame["path"].as_str().unwrap_or("");
    let query = frame["query"].as_str().unwrap_or("");
    let mut subs = subs.lock();
    let current = subs
        .iter_mut()
        .find(|s| s.open && s.path == path && s.query == query);
    match frame["type"].as_str() {
        Some("DATA") => {
            let Some(ev) = frame["data"]
                .as_str()
                .and_then(|d| serde_json::from_str::<Value>(d).ok())
            else {
                ctx.violation(format!("{name}: DATA without an event: {text:.200}"));
                return Vec::new();
            };
            ctx.check_rights(user, &ev, &format!("{path} {query}"));
            if let Some(s) = current {
                s.on_event(ctx, &ev);
            }
        }
        Some("ERROR") => {
            let error = frame["data"].as_str().unwrap_or("");
            if error.contains("slow consumer") {
                ctx.violation(format!(
                    "{name} {path} {query}: a reading subscriber was cut: {error}"
                ));
            } else {
                ctx.warnings.fetch_add(1, Ordering::Relaxed);
            }
            if error.contains(REVIEW_UNAVAILABLE)
                && let Some(s) = current
            {
                s.review_unavailable = true;
            }
        }
        Some("COMPLETE") => {
            if let Some(s) = current {
                if s.expired {
                    ctx.restarts_after_410.fetch_add(1, Ordering::Relaxed);
                    return vec![s.fresh(ctx)];
                }
                if s.review_unavailable {
                    ctx.restarts_after_review.fetch_add(1, Ordering::Relaxed);
                    return vec![s.fresh(ctx)];
                }
                ctx.violation(format!(
                    "{name} {path} {query}: COMPLETE without a 410 before it"
                ));
                s.open = false;
            }
        }
        _ => ctx.violation(format!("{name}: unexpected frame {text:.200}")),
    }
    Vec::new()
}

/// `GET /clusters/sim{path}` as `user`: the list's resourceVersion and
/// items, or `None` if kubemux answered anything but a list (an upstream
/// outage, forwarded).
async fn rest_list(ctx: &Ctx, user: usize, path: &str) -> Option<(u64, Vec<Value>)> {
    let answer = Request::get(&format!("/clusters/{CLUSTER}{path}"))
        .header("Authorization", format!("Bearer {}", USERS[user].token))
        .try_send(ctx.addr)
        .await
        .ok()?;
    if answer.code != 200 {
        return None;
    }
    let list: Value = serde_json::from_str(&answer.body).ok()?;
    let rv = list["metadata"]["resourceVersion"].as_str()?.parse().ok()?;
    Some((rv, list["items"].as_array()?.clone()))
}

/// A client that subscribes many times and stops reading for `stall`, then
/// reads: kubemux must have cut it (a slow-consumer ERROR, or the socket
/// closed). Returns how it was cut.
pub async fn slow_reader(ctx: Arc<Ctx>, user: usize, subs: usize, stall: Duration) -> &'static str {
    let name = USERS[user].name;
    let Ok(mut ws) = connect(ctx.addr, user, true).await else {
        ctx.violation(format!("{name} slow reader could not connect"));
        return "none";
    };
    let ns = USERS[user].namespaces[0];
    for j in 0..subs {
        if ws
            .send(request(
                &pods_path(ns),
                &format!("watch=1&limit={j}"),
                "REQUEST",
            ))
            .await
            .is_err()
        {
            break;
        }
    }
    tokio::time::sleep(stall).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    // Frames seen while draining: DATA, transient ERRORs, COMPLETEs.
    let (mut data, mut transient, mut completes) = (0u32, 0u32, 0u32);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left.min(Duration::from_secs(5)), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                    ctx.violation(format!("{name} slow reader: a frame that is not JSON"));
                    return "none";
                };
                match frame["type"].as_str() {
                    Some("DATA") => {
                        if let Some(ev) = frame["data"]
                            .as_str()
                            .and_then(|d| serde_json::from_str::<Value>(d).ok())
                        {
                            ctx.check_rights(user, &ev, "slow reader");
                        }
                        data += 1;
                    }
                    Some("ERROR")
                        if frame["data"]
                            .as_str()
                            .is_some_and(|d| d.contains("slow consumer")) =>
                    {
                        return "slow-consumer ERROR";
                    }
                    Some("ERROR") if is_transient(&text) => transient += 1,
                    Some("COMPLETE") => completes += 1,
                    _ => {}
                }
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) => return "connection closed",
            // Shared mode during an outage: the reviews could not be made,
            // every subscription ended before any data; nothing to cut.
            Err(_) if data == 0 && completes as usize == subs && transient > 0 => {
                return "ended by an unavailable review";
            }
            // What a subscriber is owed at join is handed over outside its
            // queue's bounds: a reader that stalled while only its initial
            // states waited, and then read them all, kept up and is not cut.
            Err(_) if data > 0 && transient == 0 && completes == 0 => return "caught up",
            Err(_) => {
                ctx.violation(format!(
                    "{name} slow reader ({subs} subscriptions, stalled {stall:?}) was never cut: \
                     read {data} DATA, {transient} outage ERRORs, {completes} COMPLETEs"
                ));
                return "none";
            }
        }
    }
}

/// Malformed and oversized client messages.
#[derive(Clone, Copy, Debug)]
pub enum Vandalism {
    NotJson,
    WrongShape,
    UnknownType,
    BadPath,
    UnknownParameter,
    Binary,
    Oversized,
}

pub const VANDALISMS: [Vandalism; 7] = [
    Vandalism::NotJson,
    Vandalism::WrongShape,
    Vandalism::UnknownType,
    Vandalism::BadPath,
    Vandalism::UnknownParameter,
    Vandalism::Binary,
    Vandalism::Oversized,
];

/// Sends one bad message: an oversized one must close the socket with 1009;
/// any other must get an ERROR frame and leave the connection working (a
/// REQUEST afterwards is served).
pub async fn vandal(ctx: Arc<Ctx>, user: usize, kind: Vandalism, max_message: usize) {
    let name = USERS[user].name;
    let Ok(mut ws) = connect(ctx.addr, user, false).await else {
        ctx.violation(format!("{name} vandal could not connect"));
        return;
    };
    let path = pods_path(USERS[user].namespaces[0]);
    let bad = match kind {
        Vandalism::NotJson => Message::text("{\"type\":\"REQUEST\",\"clusterId\""),
        Vandalism::WrongShape => Message::text("[\"REQUEST\",1,null]"),
        Vandalism::UnknownType => request(&path, "watch=1", "SUBSCRIBE"),
        Vandalism::BadPath => request("/api/v1/namespaces/../secrets", "watch=1", "REQUEST"),
        Vandalism::UnknownParameter => request(&path, "watch=1&follow=true", "REQUEST"),
        Vandalism::Binary => Message::binary(vec![0xff, 0x00, 0x7b]),
        Vandalism::Oversized => Message::text("x".repeat(max_message + 1024)),
    };
    if ws.send(bad).await.is_err() {
        ctx.violation(format!("{name} vandal ({kind:?}): send failed"));
        return;
    }
    let next = tokio::time::timeout(PATIENCE, ws.next()).await;
    match (kind, next) {
        (Vandalism::Oversized, Ok(Some(Ok(Message::Close(Some(close)))))) => {
            if u16::from(close.code) != 1009 {
                ctx.violation(format!(
                    "{name} oversized message closed with {}",
                    close.code
                ));
            }
        }
        (Vandalism::Oversized, other) => {
            ctx.violation(format!(
                "{name} oversized message: expected a 1009 close, got {other:?}"
            ));
        }
        (_, Ok(Some(Ok(Message::Text(text))))) if text.contains("\"type\":\"ERROR\"") => {
            let query = "watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan";
            if ws.send(request(&path, query, "REQUEST")).await.is_err() {
                ctx.violation(format!(
                    "{name} vandal ({kind:?}): connection unusable after the ERROR"
                ));
                return;
            }
            // Served, or told why not during an outage: either way answered.
            // Frames of the bad request may still come first (in shared mode
            // it is reviewed before it is validated; an unavailable review
            // ends it with ERROR + COMPLETE).
            let mine = format!("\"query\":\"{query}\"");
            loop {
                match tokio::time::timeout(PATIENCE, ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) if !t.contains(&mine) => {}
                    Ok(Some(Ok(Message::Text(t))))
                        if t.contains("\"type\":\"DATA\"") || is_transient(&t) =>
                    {
                        break;
                    }
                    other => {
                        ctx.violation(format!(
                            "{name} vandal ({kind:?}): no answer to a valid REQUEST: {other:?}"
                        ));
                        break;
                    }
                }
            }
        }
        (_, other) => ctx.violation(format!(
            "{name} vandal ({kind:?}): expected an ERROR frame, got {other:?}"
        )),
    }
    let _ = ws.close(None).await;
}

/// Asks for pods `user` may not see: an ERROR then COMPLETE, never an object.
pub async fn forbidden_probe(ctx: Arc<Ctx>, user: usize, ns: Option<&'static str>) {
    let name = USERS[user].name;
    let Ok(mut ws) = connect(ctx.addr, user, false).await else {
        ctx.violation(format!("{name} probe could not connect"));
        return;
    };
    let path = ns.map_or_else(|| "/api/v1/pods".to_string(), pods_path);
    if ws.send(request(&path, "watch=1", "REQUEST")).await.is_err() {
        return;
    }
    let mut saw_error = false;
    loop {
        match tokio::time::timeout(PATIENCE, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                let frame: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                match frame["type"].as_str() {
                    Some("ERROR") => saw_error = true,
                    Some("COMPLETE") if saw_error => break,
                    _ => {
                        ctx.violation(format!("{name} asking for {path}: {text:.300}"));
                        break;
                    }
                }
            }
            Ok(Some(Ok(_))) => {}
            other => {
                ctx.violation(format!(
                    "{name} asking for {path}: no ERROR + COMPLETE: {other:?}"
                ));
                break;
            }
        }
    }
    let _ = ws.close(None).await;
}
