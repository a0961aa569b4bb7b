//! The one HTTP/1.1 client of the tests: requests written by hand over a
//! plain socket (so a test controls every header, the source address and
//! when it reads), answers parsed just enough to assert on.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::PATIENCE;

/// A request: `Host: x` and `Connection: close` unless set otherwise, so
/// the answer ends with the connection.
#[derive(Clone, Debug)]
pub struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    from: Option<IpAddr>,
}

/// An answer read to the end of its connection.
#[derive(Debug)]
pub struct Answer {
    pub code: u16,
    /// The head, lower-cased.
    pub head: String,
    /// The body, de-chunked.
    pub body: String,
    /// A chunked body ended with its terminating chunk.
    pub terminated: bool,
    /// Everything received, as received.
    pub text: String,
}

/// An answer to an upgrade request: its head (and, if refused, body) as
/// received, the open stream, and the bytes read past the head.
pub struct Upgraded {
    pub text: String,
    pub stream: TcpStream,
    pub rest: Vec<u8>,
}

impl Request {
    pub fn new(method: &str, target: &str) -> Request {
        Request {
            method: method.to_string(),
            target: target.to_string(),
            headers: vec![
                ("Host".to_string(), "x".to_string()),
                ("Connection".to_string(), "close".to_string()),
            ],
            from: None,
        }
    }

    pub fn get(target: &str) -> Request {
        Request::new("GET", target)
    }

    /// A WebSocket handshake for `target` (a fixed key; nothing checks the
    /// accept value).
    pub fn websocket(target: &str) -> Request {
        Request::get(target)
            .header("Upgrade", "websocket")
            .header("Connection", "Upgrade")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("Sec-WebSocket-Version", "13")
    }

    /// Sets `name`, replacing a header of that name (in any case).
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Request {
        let value = value.into();
        match self
            .headers
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(slot) => slot.1 = value,
            None => self.headers.push((name.to_string(), value)),
        }
        self
    }

    pub fn headers<K: AsRef<str>, V: AsRef<str>>(self, headers: &[(K, V)]) -> Request {
        headers
            .iter()
            .fold(self, |r, (k, v)| r.header(k.as_ref(), v.as_ref()))
    }

    /// Sends from this loopback source address (the server sees it as the peer).
    pub fn from(mut self, ip: &str) -> Request {
        self.from = Some(ip.parse().expect("an IP address"));
        self
    }

    fn head(&self) -> String {
        let mut head = format!("{} {} HTTP/1.1\r\n", self.method, self.target);
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        head
    }

    /// Connects (from the source address, if set) and writes the request.
    pub async fn try_start(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let mut stream = match self.from {
            None => TcpStream::connect(addr).await?,
            Some(ip) => {
                let socket = TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(addr).await?
            }
        };
        stream.write_all(self.head().as_bytes()).await?;
        Ok(stream)
    }

    /// Writes the request and leaves the answer unread.
    pub async fn start(&self, addr: SocketAddr) -> TcpStream {
        self.try_start(addr).await.expect("the request is sent")
    }

    /// Sends the request and reads the answer to the end of the connection.
    pub async fn try_send(&self, addr: SocketAddr) -> std::io::Result<Answer> {
        read_answer(self.try_start(addr).await?).await
    }

    pub async fn send(&self, addr: SocketAddr) -> Answer {
        self.try_send(addr).await.expect("an HTTP answer")
    }

    /// Sends the request and reads only the answer's head and, unless it
    /// is a 101, its `Content-Length` body; the connection stays open.
    pub async fn upgrade(&self, addr: SocketAddr) -> Upgraded {
        let mut stream = self.start(addr).await;
        let mut buf = Vec::new();
        let (text, rest) = loop {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
                .await
                .expect("an answer")
                .unwrap();
            buf.extend_from_slice(&chunk[..n]);
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                assert!(n > 0, "closed during the head");
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let length = if head.starts_with("HTTP/1.1 101") {
                0
            } else {
                content_length(&head)
            };
            if n == 0 || buf.len() >= end + 4 + length {
                let rest = buf.split_off((end + 4 + length).min(buf.len()));
                break (String::from_utf8_lossy(&buf).into_owned(), rest);
            }
        };
        Upgraded { text, stream, rest }
    }
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .unwrap_or(0)
}

/// Reads an answer to the end of the connection.
pub async fn read_answer(mut stream: TcpStream) -> std::io::Result<Answer> {
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut raw))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "the answer never ended")
        })??;
    let text = String::from_utf8(raw).map_err(std::io::Error::other)?;
    Answer::parse(text).ok_or_else(|| std::io::Error::other("not an HTTP answer"))
}

impl Answer {
    fn parse(text: String) -> Option<Answer> {
        let code = text.split(' ').nth(1)?.parse().ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        let head = head.to_ascii_lowercase();
        let (body, terminated) = if head.contains("transfer-encoding: chunked") {
            dechunk(body)
        } else {
            (body.to_string(), false)
        };
        Some(Answer {
            code,
            head,
            body,
            terminated,
            text,
        })
    }

    /// The value of header `name` (lower-case), lower-cased.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|v| v.strip_prefix(':'))
                .map(str::trim)
        })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// A watch stream's events, one per line.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.body
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

/// A chunked body's data, and whether its terminating chunk arrived (a
/// stream cut short ends without one).
fn dechunk(mut body: &str) -> (String, bool) {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 {
            return (out, rest == "\r\n");
        }
        if rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    (out, false)
}

/// A plain GET: everything received, head and raw body.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    Request::get(path).send(addr).await.text
}

/// The body of a plain GET, de-chunked.
pub async fn http_get_body(addr: SocketAddr, path: &str) -> String {
    Request::get(path).send(addr).await.body
}

/// The value of a metric line like `name{labels} value` in exposition text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A watch stream read as it arrives: a GET whose chunked answer stays
/// open, its events taken line by line.
pub struct WatchStream {
    stream: TcpStream,
    /// Received and not yet de-chunked.
    raw: Vec<u8>,
    /// De-chunked and not yet a whole line.
    body: Vec<u8>,
}

impl WatchStream {
    /// Opens the watch `target` on `addr`, which must answer 200.
    pub async fn open(addr: SocketAddr, target: &str) -> WatchStream {
        let upgraded = Request::get(target).upgrade(addr).await;
        assert!(
            upgraded.text.starts_with("HTTP/1.1 200"),
            "{target}: {}",
            upgraded.text
        );
        WatchStream {
            stream: upgraded.stream,
            raw: upgraded.rest,
            body: Vec::new(),
        }
    }

    /// The events that arrived by now (waiting a moment for more).
    pub async fn read_available(&mut self) -> Vec<serde_json::Value> {
        let mut chunk = [0u8; 16 * 1024];
        while let Ok(Ok(n)) = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            self.stream.read(&mut chunk),
        )
        .await
        {
            if n == 0 {
                break;
            }
            self.raw.extend_from_slice(&chunk[..n]);
        }
        while let Some(end) = self.raw.windows(2).position(|w| w == b"\r\n") {
            let size = std::str::from_utf8(&self.raw[..end])
                .ok()
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                .expect("a chunk size");
            if self.raw.len() < end + 2 + size + 2 {
                break;
            }
            self.body
                .extend_from_slice(&self.raw[end + 2..end + 2 + size]);
            self.raw.drain(..end + 2 + size + 2);
        }
        let mut events = Vec::new();
        while let Some(end) = self.body.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.body.drain(..=end).collect();
            if line.len() > 1 {
                events.push(serde_json::from_slice(&line).expect("a JSON watch event"));
            }
        }
        events
    }
}
