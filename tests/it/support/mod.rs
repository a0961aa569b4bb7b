//! Test harness: a simulated API server and the real proxy on loopback, and a
//! Headlamp-speaking WebSocket client.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use kubemux::cluster::Registry;
use kubemux::hub::{Hub, HubConfig};
use kubemux::metrics::Metrics;
use kubemux::server::{Server, ServerConfig};
use kubemux_sim::{SimConfig, SimServer};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Generous upper bound for anything a test waits for; never asserted as a speed.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub const CLUSTER: &str = "sim";

pub struct Env {
    pub sim: SimServer,
    pub server: Server,
    pub hub: Hub,
}

pub fn quick_hub() -> HubConfig {
    HubConfig {
        linger: Duration::from_millis(200),
        ..HubConfig::default()
    }
}

pub async fn start(sim: SimConfig, hub: HubConfig, server: ServerConfig) -> Env {
    let sim = SimServer::start(sim).await.expect("sim starts");
    let (server, hub) = start_proxy(&sim, hub, server).await;
    Env { sim, server, hub }
}

/// A proxy (with a hub of its own, so an empty cache) in front of `sim`.
pub async fn start_proxy(sim: &SimServer, hub: HubConfig, server: ServerConfig) -> (Server, Hub) {
    let registry = Arc::new(Registry::new());
    registry
        .load_kubeconfig_text(&sim.kubeconfig(CLUSTER), "test")
        .await
        .expect("kubeconfig loads");
    let hub = Hub::new(hub, registry, Arc::new(Metrics::new()));
    let server = Server::start("127.0.0.1:0".parse().unwrap(), hub.clone(), server)
        .await
        .expect("proxy starts");
    (server, hub)
}

/// The body of a plain HTTP GET, de-chunked.
pub async fn http_get_body(addr: SocketAddr, path: &str) -> String {
    let text = http_get(addr, path).await;
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_string();
    }
    let mut body = body;
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub async fn start_default() -> Env {
    start(SimConfig::default(), quick_hub(), ServerConfig::default()).await
}

impl Env {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/wsMultiplexer", self.server.addr())
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.ws_url()).await
    }

    pub async fn metrics_text(&self) -> String {
        http_get(self.server.addr(), "/metrics").await
    }

    /// Polls `f` until it holds; panics with `what` after [`PATIENCE`].
    pub async fn eventually(&self, what: &str, f: impl Fn() -> bool) {
        eventually(what, f).await
    }
}

pub async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !f() {
        if tokio::time::Instant::now() > deadline {
            panic!("gave up waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A minimal HTTP/1.1 GET over a plain socket.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The value of a metric line like `name{labels} value` in exposition text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connects");
        Client { ws }
    }

    pub async fn send(&mut self, msg: Value) {
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_string())).await.unwrap();
    }

    pub async fn request(&mut self, path: &str, query: &str) {
        self.send(json!({"clusterId": CLUSTER, "path": path, "query": query, "userId": "u", "type": "REQUEST"}))
            .await;
    }

    pub async fn close(&mut self, path: &str, query: &str) {
        self.send(json!({"clusterId": CLUSTER, "path": path, "query": query, "userId": "u", "type": "CLOSE"}))
            .await;
    }

    /// The next text frame as JSON, or `None` if the socket closed.
    pub async fn next(&mut self) -> Option<Value> {
        self.next_within(PATIENCE).await
    }

    pub async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(wait, self.ws.next()).await.ok()??;
            match msg {
                Ok(Message::Text(t)) => {
                    return Some(serde_json::from_str(&t).expect("frames are JSON"));
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// The next frame, which must exist.
    pub async fn frame(&mut self) -> Value {
        self.next().await.expect("a frame before the deadline")
    }

    /// The next DATA frame's watch event.
    pub async fn event(&mut self) -> (Value, Value) {
        let frame = self.frame().await;
        assert_eq!(frame["type"], "DATA", "expected DATA, got {frame}");
        let ev: Value = serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
        (frame, ev)
    }

    /// Reads events until `n` have arrived.
    pub async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        while out.len() < n {
            out.push(self.event().await.1);
        }
        out
    }
}

/// Objects by `namespace/name`, built by applying watch events.
#[derive(Default, Debug, Clone)]
pub struct Applied {
    pub objects: BTreeMap<String, Value>,
}

pub fn object_key(obj: &Value) -> String {
    let md = &obj["metadata"];
    match md["namespace"].as_str() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{}", md["name"].as_str().unwrap()),
        _ => md["name"].as_str().unwrap().to_string(),
    }
}

impl Applied {
    pub fn apply(&mut self, ev: &Value) {
        let obj = &ev["object"];
        match ev["type"].as_str().unwrap() {
            "ADDED" | "MODIFIED" => {
                self.objects.insert(object_key(obj), obj.clone());
            }
            "DELETED" => {
                self.objects.remove(&object_key(obj));
            }
            _ => {}
        }
    }

    /// `key -> resourceVersion`, for comparing with the server's state.
    pub fn versions(&self) -> BTreeMap<String, String> {
        self.objects
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                )
            })
            .collect()
    }
}

pub fn versions_of(objects: &[Value]) -> BTreeMap<String, String> {
    objects
        .iter()
        .map(|o| {
            (
                object_key(o),
                o["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect()
}

/// A `kubemux` process started by a test, and the address it printed.
pub struct Process {
    pub child: tokio::process::Child,
    pub addr: String,
    /// Every line it has printed on stdout so far (the banner included).
    pub stdout: Arc<std::sync::Mutex<Vec<String>>>,
}

/// Starts the real `kubemux` binary with `args` (stdout and stderr piped,
/// `KUBEMUX_*`/`RUST_LOG` from the test's environment removed unless set
/// in `env`) and waits for its "listening on" line.
pub async fn spawn_kubemux(args: &[&str], env: &[(&str, &str)]) -> Process {
    use tokio::io::AsyncBufReadExt;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubemux"));
    cmd.args(args)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("KUBEMUX_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("kubemux starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let stdout = Arc::new(std::sync::Mutex::new(Vec::new()));
    let addr = loop {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("kubemux prints its address in time")
            .unwrap()
            .expect("kubemux keeps running");
        stdout.lock().unwrap().push(line.clone());
        if let Some(rest) = line.strip_prefix("kubemux listening on http://") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let printed = stdout.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            printed.lock().unwrap().push(line);
        }
    });
    Process {
        child,
        addr,
        stdout,
    }
}

/// `kubemux demo` on free loopback ports (proxy and embedded simulator),
/// with `extra` flags.
pub async fn spawn_demo(extra: &[&str]) -> Process {
    let mut args = vec![
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--sim-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    spawn_kubemux(&args, &[]).await
}

impl Process {
    /// The rest of the first stdout line starting with `prefix`, once printed.
    pub async fn printed(&self, prefix: &str) -> String {
        eventually(&format!("kubemux prints {prefix:?}"), || {
            self.stdout
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.starts_with(prefix))
        })
        .await;
        let lines = self.stdout.lock().unwrap();
        let line = lines.iter().find(|l| l.starts_with(prefix)).unwrap();
        line[prefix.len()..].to_string()
    }

    /// Sends SIGTERM and returns the exit status and everything written to stderr.
    pub async fn terminate(self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().unwrap().to_string();
        let killed = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(killed.success());
        let out = tokio::time::timeout(PATIENCE, self.child.wait_with_output())
            .await
            .expect("kubemux exits in time")
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// Writes a kubeconfig whose contexts are the given simulated servers,
/// atomically (a watcher never reads half a file).
pub fn write_kubeconfig(path: &std::path::Path, sims: &[(&str, &SimServer)]) {
    let mut merged: Option<Value> = None;
    for (name, sim) in sims {
        let doc: Value = serde_json::from_str(&sim.kubeconfig(name)).unwrap();
        merged = Some(match merged {
            None => doc,
            Some(mut m) => {
                for list in ["clusters", "contexts", "users"] {
                    let extra = doc[list].as_array().unwrap().clone();
                    m[list].as_array_mut().unwrap().extend(extra);
                }
                m
            }
        });
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_string(&merged.unwrap()).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A WebSocket client that never answers pings: a hand-made handshake and
/// frame reader, because tungstenite answers every ping it reads.
pub struct SilentClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// How a [`SilentClient`]'s connection ended.
#[derive(Debug)]
pub struct Closed {
    /// The close frame's code, if the server sent one.
    pub code: Option<u16>,
    /// Its reason.
    pub reason: String,
    /// Pings received (none answered).
    pub pings: usize,
}

impl SilentClient {
    pub async fn connect(addr: SocketAddr, path: &str) -> SilentClient {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
                .await
                .expect("handshake answered")
                .unwrap();
            assert!(n > 0, "closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        buf.drain(..end);
        SilentClient { stream, buf }
    }

    /// Sends a text message (masked with a zero key, as the protocol allows).
    pub async fn send_text(&mut self, text: &str) {
        use tokio::io::AsyncWriteExt;
        let payload = text.as_bytes();
        let mut frame = vec![0x81];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        frame.extend_from_slice(&[0, 0, 0, 0]);
        frame.extend_from_slice(payload);
        self.stream.write_all(&frame).await.unwrap();
    }

    async fn fill(&mut self, n: usize) -> bool {
        use tokio::io::AsyncReadExt;
        while self.buf.len() < n {
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk)).await {
                Ok(Ok(got)) if got > 0 => self.buf.extend_from_slice(&chunk[..got]),
                Ok(_) => return false,
                Err(_) => panic!("the server neither sent nor closed within {PATIENCE:?}"),
            }
        }
        true
    }

    /// Reads (and ignores) everything up to the server's close frame.
    pub async fn until_closed(mut self) -> Closed {
        let mut pings = 0;
        loop {
            if !self.fill(2).await {
                return Closed {
                    code: None,
                    reason: String::new(),
                    pings,
                };
            }
            let opcode = self.buf[0] & 0x0f;
            let (len, header) = match self.buf[1] & 0x7f {
                126 => {
                    assert!(self.fill(4).await);
                    (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                }
                127 => {
                    assert!(self.fill(10).await);
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&self.buf[2..10]);
                    (u64::from_be_bytes(n) as usize, 10)
                }
                n => (n as usize, 2),
            };
            assert!(self.fill(header + len).await, "a frame cut short");
            let payload: Vec<u8> = self.buf.drain(..header + len).skip(header).collect();
            match opcode {
                0x9 => pings += 1,
                0x8 => {
                    return Closed {
                        code: (payload.len() >= 2)
                            .then(|| u16::from_be_bytes([payload[0], payload[1]])),
                        reason: String::from_utf8_lossy(payload.get(2..).unwrap_or_default())
                            .into_owned(),
                        pings,
                    };
                }
                _ => {}
            }
        }
    }
}

/// `global` and `defaults` of the HAProxy configurations the tests write.
pub const HAPROXY_DEFAULTS: &str = "global\n  maxconn 2000\n\
     defaults\n  mode http\n  timeout connect 1s\n  timeout client 60s\n  timeout server 60s\n  timeout tunnel 1h\n";

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// HAProxy (Debian's package; `.ci/run` installs it) running `config`,
/// which binds `front`; returned once it accepts connections, killed when
/// dropped. Fails the test, naming the package, when it is not installed.
pub async fn start_haproxy(config: &str, front: SocketAddr) -> tokio::process::Child {
    let path = std::env::temp_dir().join(format!(
        "kubemux-test-haproxy-{}-{}.cfg",
        std::process::id(),
        front.port()
    ));
    std::fs::write(&path, config).unwrap();
    let child = tokio::process::Command::new("haproxy")
        .args(["-db", "-f", path.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("haproxy does not start ({e}): `apt-get install haproxy` (.ci/run does)")
        });
    eventually("haproxy listens", || {
        std::net::TcpStream::connect(front).is_ok()
    })
    .await;
    child
}

/// A client of `path` that never answers pings is closed with 1008 "no pong
/// received", after at least one ping.
pub async fn assert_closed_for_no_pong(addr: SocketAddr, path: &str) {
    let silent = SilentClient::connect(addr, path).await;
    let closed = silent.until_closed().await;
    assert_eq!(closed.code, Some(1008), "{path}: {closed:?}");
    assert_eq!(closed.reason, "no pong received", "{path}: {closed:?}");
    assert!(closed.pings >= 1, "{path}: {closed:?}");
}
