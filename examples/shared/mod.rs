//! Helpers shared by the examples that drive kubemux as separate processes
//! (`loadgen`, `soak`, `junkload`): child processes, `/proc` readings, plain HTTP and
//! Prometheus scrapes, WebSocket connects and byte-level frame peeking.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A child process, killed on drop.
pub struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl From<Child> for Proc {
    /// Owns a process started elsewhere: it is killed when dropped.
    fn from(child: Child) -> Self {
        Proc { child }
    }
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Starts `bin args…` (under `taskset -c cpu` if given) and waits for a
/// stdout line containing `marker`, returning the address that follows `http://`.
pub fn spawn(
    name: &'static str,
    bin: &PathBuf,
    args: &[String],
    cpu: Option<&str>,
    marker: &str,
) -> Result<(Proc, SocketAddr)> {
    let mut cmd = match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {} ({})", name, bin.display()))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let proc = Proc { child };
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines
            .next()
            .ok_or_else(|| anyhow!("{name} exited before printing {marker:?}"))??;
        if line.contains(marker)
            && let Some(rest) = line.split("http://").nth(1)
        {
            let addr = rest.split_whitespace().next().unwrap_or_default();
            break addr
                .parse()
                .with_context(|| format!("{name} address {addr:?}"))?;
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok((proc, addr))
}

/// User + system CPU time of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Resident set size of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

// ---------------------------------------------------------------- HTTP helpers

/// One HTTP/1.1 request with `Connection: close`; returns status and body.
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> Result<(u16, String)> {
    http_as(addr, method, path, "loadgen", "").await
}

/// [`http`] with a bearer token of the caller's and a JSON body (none if empty).
pub async fn http_as(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    let content_type = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/json\r\n"
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n{content_type}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body.as_bytes())
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut data: &[u8]) -> String {
    let mut out = Vec::new();
    while let Some(pos) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..pos]).unwrap_or("0").trim(), 16)
                .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = pos + 2;
        let end = (start + size).min(data.len());
        out.extend_from_slice(&data[start..end]);
        data = &data[(end + 2).min(data.len())..];
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Prometheus samples `name{labels} value` → value, keyed by `name{labels}`.
pub async fn scrape(addr: SocketAddr) -> Result<BTreeMap<String, f64>> {
    let (status, body) = http(addr, "GET", "/metrics").await?;
    if status != 200 {
        bail!("GET {addr}/metrics answered {status}");
    }
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect())
}

pub fn metric(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.as_str() == name || k.starts_with(&format!("{name}{{")))
        .map(|(_, v)| v)
        .sum()
}

pub fn metric_with(m: &BTreeMap<String, f64>, name: &str, label: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(&format!("{name}{{")) && k.contains(label))
        .map(|(_, v)| v)
        .sum()
}

/// Where `needle` first occurs in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// The first decimal number within a few bytes after `key` in `text`.
pub fn number_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(text, key)? + key.len();
    let rest = &text[at..];
    let start = rest.iter().take(8).position(u8::is_ascii_digit)?;
    let digits = &rest[start..];
    let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&digits[..len]).ok()?.parse().ok()
}

/// The resourceVersion of the event in a Headlamp frame (or a plain watch
/// line): the first one after `"data":"`, because a resumed subscription's
/// echoed query holds `resourceVersion=` too, and taking that one would pin
/// every later resume to the first.
pub fn event_resource_version(frame: &[u8]) -> Option<u64> {
    let data = find(frame, b"\"data\":\"").map_or(0, |at| at + 8);
    number_after(&frame[data..], b"resourceVersion")
}

/// A WebSocket to kubemux's Headlamp multiplexer over `wrap` of the TCP
/// connection, offering permessage-deflate when `deflate` (`wrap` must then
/// inflate: tungstenite cannot), retried with backoff (a busy proxy may
/// refuse a burst of connects).
pub async fn ws_connect<S>(
    addr: SocketAddr,
    deflate: Option<&str>,
    wrap: impl Fn(TcpStream) -> S,
) -> Result<tokio_tungstenite::WebSocketStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    let mut delay = Duration::from_millis(50);
    for attempt in 0..20 {
        let once = async {
            let mut request = format!("ws://{addr}/wsMultiplexer").into_client_request()?;
            if let Some(offer) = deflate {
                request
                    .headers_mut()
                    .insert("Sec-WebSocket-Extensions", HeaderValue::from_str(offer)?);
            }
            let tcp = TcpStream::connect(addr).await?;
            let (ws, _) = tokio_tungstenite::client_async(request, wrap(tcp)).await?;
            anyhow::Ok(ws)
        };
        match tokio::time::timeout(Duration::from_secs(10), once).await {
            Ok(Ok(ws)) => return Ok(ws),
            Ok(Err(e)) if attempt == 19 => return Err(e),
            Err(_) if attempt == 19 => bail!("connecting timed out"),
            _ => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
    unreachable!()
}

/// Starts `kubemux serve` on a loopback port for the clusters in
/// `kubeconfig`, with `--auth none`: the examples' clients are loopback
/// clients without tokens, served with kubemux's own identity.
pub fn spawn_proxy(
    bin: &PathBuf,
    kubeconfig: &std::path::Path,
    cpu: Option<&str>,
) -> Result<(Proc, SocketAddr)> {
    spawn_proxy_on(bin, kubeconfig, cpu, "127.0.0.1")
}

/// [`spawn_proxy`] on a given loopback address (replicas use 127.0.0.2, …).
pub fn spawn_proxy_on(
    bin: &PathBuf,
    kubeconfig: &std::path::Path,
    cpu: Option<&str>,
    ip: &str,
) -> Result<(Proc, SocketAddr)> {
    let args: Vec<String> = vec![
        "serve".into(),
        "--kubeconfig".into(),
        kubeconfig.to_string_lossy().into_owned(),
        "--listen".into(),
        format!("{ip}:0"),
        "--auth".into(),
        "none".into(),
    ];
    spawn("proxy", bin, &args, cpu, "kubemux listening on")
}

/// Polls `cond` every 50 ms until it holds, failing after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let start = std::time::Instant::now();
    while !cond() {
        if start.elapsed() > limit {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
