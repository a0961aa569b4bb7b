//! Shared helpers for the simulator's integration tests: a fast test config,
//! a real `kube` client, raw watch streams and raw HTTP.
#![allow(dead_code)]

use std::time::Duration;

use futures::{AsyncBufReadExt, StreamExt};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kubemux_sim::{SimConfig, SimServer};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Upper bound for anything a test waits on; only a hang guard.
pub const GUARD: Duration = Duration::from_secs(10);

pub fn test_config() -> SimConfig {
    SimConfig {
        bookmark_interval: Duration::from_millis(100),
        ..SimConfig::default()
    }
}

pub async fn start(config: SimConfig) -> SimServer {
    SimServer::start(config).await.expect("start simulator")
}

/// A `kube` client built exactly as the main crate builds one.
pub async fn client(server: &SimServer) -> Client {
    client_with_retry(server, true).await
}

pub async fn client_with_retry(server: &SimServer, retry: bool) -> Client {
    let kubeconfig = Kubeconfig::from_yaml(&server.kubeconfig("sim")).expect("parse kubeconfig");
    let options = KubeConfigOptions {
        context: Some("sim".into()),
        ..KubeConfigOptions::default()
    };
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .expect("kube config");
    config.default_retry = retry;
    Client::try_from(config).expect("kube client")
}

/// A watch stream read line by line, each line parsed as JSON.
pub struct WatchLines {
    lines: futures::io::Lines<Box<dyn futures::AsyncBufRead + Send + Unpin>>,
}

impl WatchLines {
    /// The next event, or `None` when the server ended the stream.
    pub async fn next(&mut self) -> Option<Value> {
        let line = tokio::time::timeout(GUARD, self.lines.next())
            .await
            .expect("watch line within the guard time")?;
        let line = line.ok()?;
        Some(serde_json::from_str(&line).expect("watch line is JSON"))
    }

    /// The next line exactly as the server wrote it (without the newline),
    /// or `None` when the server ended the stream.
    pub async fn next_line(&mut self) -> Option<String> {
        let line = tokio::time::timeout(GUARD, self.lines.next())
            .await
            .expect("watch line within the guard time")?;
        line.ok()
    }

    /// The next event that is not a BOOKMARK.
    pub async fn next_event(&mut self) -> Option<Value> {
        loop {
            let event = self.next().await?;
            if event["type"] != "BOOKMARK" {
                return Some(event);
            }
        }
    }

    /// Reads until the server ends the stream, returning what was left.
    pub async fn drain(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(event) = self.next().await {
            out.push(event);
        }
        out
    }
}

/// Opens a raw watch (`path` includes the query string).
pub async fn watch(client: &Client, path: &str) -> WatchLines {
    try_watch(client, path)
        .await
        .expect("watch request accepted")
}

pub async fn try_watch(client: &Client, path: &str) -> Result<WatchLines, kube::Error> {
    let request = http::Request::get(path).body(Vec::new()).expect("request");
    let stream = client.request_stream(request).await?;
    let boxed: Box<dyn futures::AsyncBufRead + Send + Unpin> = Box::new(stream);
    Ok(WatchLines {
        lines: boxed.lines(),
    })
}

/// `(type, name)` of an event.
pub fn summary(event: &Value) -> (String, String) {
    (
        event["type"].as_str().unwrap_or_default().to_string(),
        event["object"]["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

pub fn rv_of(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("resourceVersion")
}

/// A raw HTTP/1.1 exchange with `Connection: close`: (status, head, body).
pub async fn raw_http(
    server: &SimServer,
    method: &str,
    path_and_query: &str,
    body: &str,
) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connect");
    let request = format!(
        "{method} {path_and_query} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        server.addr(),
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(GUARD, stream.read_to_end(&mut response))
        .await
        .expect("response within guard")
        .expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, head.to_string(), body.to_string())
}

/// Polls `condition` (yielding to the runtime) until it holds; panics after
/// the guard time. Used for server-side effects that are asynchronous.
pub async fn eventually(mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + GUARD;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached in time"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
