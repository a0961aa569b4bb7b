//! WebSocket clients: [`Client`] (tungstenite, JSON frames, Headlamp's
//! messages) opened by [`WsConnect`], and [`RawWs`], which speaks the wire
//! format itself for what tungstenite does not let a test do (leave pings
//! unanswered, negotiate permessage-deflate).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error, Message};

use super::{CLUSTER, PATIENCE, Request};

pub type Ws = WebSocketStream<TcpStream>;

/// How to open a WebSocket: the URL, extra request headers, and the
/// socket's source address and receive buffer.
pub struct WsConnect {
    url: String,
    headers: Vec<(String, String)>,
    from: Option<IpAddr>,
    recv_buffer: Option<u32>,
}

impl WsConnect {
    pub fn new(url: &str) -> WsConnect {
        WsConnect {
            url: url.to_string(),
            headers: Vec::new(),
            from: None,
            recv_buffer: None,
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> WsConnect {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    pub fn bearer(self, token: &str) -> WsConnect {
        self.header("authorization", format!("Bearer {token}"))
    }

    /// Connects from this loopback source address.
    pub fn from(mut self, ip: &str) -> WsConnect {
        self.from = Some(ip.parse().expect("an IP address"));
        self
    }

    /// A tiny receive buffer makes a client that stops reading back up
    /// into kubemux's queue quickly.
    pub fn recv_buffer(mut self, bytes: u32) -> WsConnect {
        self.recv_buffer = Some(bytes);
        self
    }

    pub async fn open(self) -> Result<Ws, Error> {
        let mut request = self.url.as_str().into_client_request()?;
        for (name, value) in &self.headers {
            let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(http::Error::from)?;
            let value = value.parse().map_err(http::Error::from)?;
            request.headers_mut().insert(name, value);
        }
        let uri = request.uri();
        let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
        let addr = tokio::net::lookup_host((host, uri.port_u16().unwrap_or(80)))
            .await?
            .find(SocketAddr::is_ipv4)
            .ok_or_else(|| std::io::Error::other(format!("no IPv4 address for {host}")))?;
        let socket = TcpSocket::new_v4()?;
        if let Some(ip) = self.from {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        if let Some(bytes) = self.recv_buffer {
            socket.set_recv_buffer_size(bytes)?;
        }
        let stream = socket.connect(addr).await?;
        let (ws, _) = tokio_tungstenite::client_async(request, stream).await?;
        Ok(ws)
    }

    pub async fn client(self) -> Result<Client, Error> {
        Ok(Client {
            ws: self.open().await?,
        })
    }
}

/// A WebSocket client reading JSON text frames.
pub struct Client {
    pub ws: Ws,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        WsConnect::new(url).client().await.expect("ws connects")
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

/// The message of a Headlamp `ERROR` frame, which it must be.
pub fn error_of(frame: &Value) -> String {
    assert_eq!(frame["type"], "ERROR", "expected ERROR, got {frame}");
    let data: Value = serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
    data["error"].as_str().unwrap().to_string()
}

/// A WebSocket spoken frame by frame: it never answers a ping (tungstenite
/// answers every ping it reads) and may offer extensions.
pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// One frame as received.
pub struct Frame {
    /// RSV1: the payload is compressed (permessage-deflate).
    pub rsv1: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// How a [`RawWs`] connection ended.
#[derive(Debug)]
pub struct Closed {
    /// The close frame's code, if the server sent one.
    pub code: Option<u16>,
    /// Its reason.
    pub reason: String,
    /// Pings received (none answered).
    pub pings: usize,
}

impl RawWs {
    /// The handshake for `path` with `extra` headers, which must be accepted.
    pub async fn connect(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> RawWs {
        let (ws, head) = RawWs::connect_head(addr, path, extra).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        ws
    }

    /// The handshake for `path` with `extra` headers; the client and the
    /// answer's head.
    pub async fn connect_head(
        addr: SocketAddr,
        path: &str,
        extra: &[(&str, &str)],
    ) -> (RawWs, String) {
        let answer = Request::websocket(path)
            .header("Host", addr.to_string())
            .headers(extra)
            .upgrade(addr)
            .await;
        let ws = RawWs {
            stream: answer.stream,
            buf: answer.rest,
        };
        (ws, answer.text)
    }

    /// Reads until `n` bytes are buffered; false if the connection ended first.
    async fn fill(&mut self, n: usize) -> bool {
        while self.buf.len() < n {
            let mut chunk = [0u8; 65536];
            match tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk)).await {
                Ok(Ok(got)) if got > 0 => self.buf.extend_from_slice(&chunk[..got]),
                Ok(_) => return false,
                Err(_) => panic!("the server neither sent nor closed within {PATIENCE:?}"),
            }
        }
        true
    }

    /// The next frame, or `None` if the connection ended first.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        if !self.fill(2).await {
            return None;
        }
        let (rsv1, opcode) = (self.buf[0] & 0x40 != 0, self.buf[0] & 0x0f);
        assert_eq!(self.buf[1] & 0x80, 0, "server frames are never masked");
        let (len, header) = match self.buf[1] & 0x7f {
            126 => {
                assert!(self.fill(4).await, "a frame cut short");
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 => {
                assert!(self.fill(10).await, "a frame cut short");
                let n: [u8; 8] = self.buf[2..10].try_into().unwrap();
                (u64::from_be_bytes(n) as usize, 10)
            }
            n => (n as usize, 2),
        };
        assert!(self.fill(header + len).await, "a frame cut short");
        let payload = self.buf.drain(..header + len).skip(header).collect();
        Some(Frame {
            rsv1,
            opcode,
            payload,
        })
    }

    /// Sends one final frame (`first` is its first byte: FIN, RSV1, opcode)
    /// with `payload`, masked as a client must.
    pub async fn send_frame(&mut self, first: u8, payload: &[u8]) {
        let mask = [7u8, 13, 21, 42];
        let mut frame = vec![first];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&u16::try_from(n).expect("a short frame").to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await.unwrap();
    }

    /// Sends a text message.
    pub async fn send_text(&mut self, text: &str) {
        self.send_frame(0x81, text.as_bytes()).await;
    }

    /// Reads (and ignores) everything up to the server's close frame.
    pub async fn until_closed(mut self) -> Closed {
        let mut pings = 0;
        while let Some(frame) = self.next_frame().await {
            match frame.opcode {
                0x9 => pings += 1,
                0x8 => {
                    let p = frame.payload;
                    return Closed {
                        code: (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]])),
                        reason: String::from_utf8_lossy(p.get(2..).unwrap_or_default())
                            .into_owned(),
                        pings,
                    };
                }
                _ => {}
            }
        }
        Closed {
            code: None,
            reason: String::new(),
            pings,
        }
    }
}

/// A client of `path` that never answers pings is closed with 1008 "no pong
/// received", after at least one ping.
pub async fn assert_closed_for_no_pong(addr: SocketAddr, path: &str) {
    let silent = RawWs::connect(addr, path, &[]).await;
    let closed = silent.until_closed().await;
    assert_eq!(closed.code, Some(1008), "{path}: {closed:?}");
    assert_eq!(closed.reason, "no pong received", "{path}: {closed:?}");
    assert!(closed.pings >= 1, "{path}: {closed:?}");
}

/// A client's inflater that keeps its window between messages, as one
/// must when the server did not answer `server_no_context_takeover`.
pub struct Inflater(flate2::Decompress);

impl Default for Inflater {
    fn default() -> Self {
        Inflater(flate2::Decompress::new(false))
    }
}

impl Inflater {
    /// One message's payload (RSV1 set), inflated.
    pub fn inflate(&mut self, payload: &[u8]) -> Vec<u8> {
        let mut input = payload.to_vec();
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let (before, mut out) = (self.0.total_in(), Vec::new());
        // Until the input is taken and the output was not cut short (the
        // inflater may hold output for a fuller buffer).
        loop {
            out.reserve(out.capacity().max(65536));
            let consumed = (self.0.total_in() - before) as usize;
            self.0
                .decompress_vec(&input[consumed..], &mut out, flate2::FlushDecompress::Sync)
                .expect("the payload inflates with the window of the messages before it");
            let consumed = (self.0.total_in() - before) as usize;
            if consumed == input.len() && out.len() < out.capacity() {
                return out;
            }
        }
    }
}

/// Raw deflate as RFC 7692 frames it: compress and strip the sync-flush
/// tail, or put the tail back and inflate (a message compressed on its
/// own).
pub fn deflate_raw(data: &[u8], compress: bool) -> Vec<u8> {
    use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
    let mut out = Vec::with_capacity(data.len() * 8 + 1024);
    if compress {
        let mut c = Compress::new(Compression::default(), false);
        c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
        out.truncate(out.len() - 4);
    } else {
        let mut input = data.to_vec();
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut d = Decompress::new(false);
        while (d.total_in() as usize) < input.len() {
            out.reserve(out.capacity().max(65536));
            let consumed = d.total_in() as usize;
            d.decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
                .unwrap();
        }
    }
    out
}
