//! Admission behind reverse proxies and per client: forwarded headers from
//! trusted proxies (and only from them) for the same-origin check and the
//! client address, the REST rate limit, and each client address's share of
//! the outbound queue budget. Over real sockets, from several loopback
//! source addresses (127.0.0.1 is the trusted proxy, 127.0.0.3 is not).

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::*;
use futures::StreamExt;
use kubemux::server::ServerConfig;
use kubemux::ws::conn::Liveness;
use kubemux::ws::forwarded::TrustedProxies;
use kubemux::ws::limits::Limits;
use kubemux::ws::outbound::QueueLimits;
use kubemux_sim::SimConfig;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const PROXY: &str = "127.0.0.1";
const UNTRUSTED: &str = "127.0.0.3";

fn trusting_loopback_one() -> TrustedProxies {
    TrustedProxies::parse(&["127.0.0.1/32"]).unwrap()
}

/// A WebSocket handshake to `/wsMultiplexer` from `from` with `extra`
/// headers; the answer and the open stream.
async fn upgrade(from: &str, server: SocketAddr, extra: &[(&str, &str)]) -> (String, TcpStream) {
    let answer = Request::websocket("/wsMultiplexer")
        .header("Host", server.to_string())
        .headers(extra)
        .from(from)
        .upgrade(server)
        .await;
    (answer.text, answer.stream)
}

/// A REST GET of the namespaces from `from` with `extra` headers.
async fn rest_get(from: &str, server: SocketAddr, extra: &[(&str, &str)]) -> String {
    Request::get("/clusters/sim/api/v1/namespaces")
        .header("Host", "kubemux")
        .headers(extra)
        .from(from)
        .send(server)
        .await
        .text
}

/// Connects a WebSocket through `front` (HAProxy) as a browser on
/// `origin` would: `Host` is the front's address, `Origin` the page's.
async fn browser_connect(
    front: SocketAddr,
    origin: &str,
) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
    WsConnect::new(&format!("ws://{front}/wsMultiplexer"))
        .header("Origin", origin)
        .client()
        .await
}

/// HAProxy in front of `backend` as nginx is by default: `Host` rewritten
/// to the backend's address, the original one in `X-Forwarded-Host`, the
/// client in `X-Forwarded-For`.
async fn haproxy_rewriting_host(backend: SocketAddr) -> (tokio::process::Child, SocketAddr) {
    let front: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        "{HAPROXY_DEFAULTS}frontend front\n  bind {front}\n  option forwardfor\n\
         http-request set-header X-Forwarded-Host %[req.hdr(host)]\n\
         http-request set-header X-Forwarded-Proto http\n\
         http-request set-header Host {backend}\n  default_backend kubemux\n\
         backend kubemux\n  server k {backend}\n"
    );
    (start_haproxy(&config, front).await, front)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_proxy_that_rewrites_host_a_trusted_forwarded_host_passes_the_origin_check() {
    let sim = kubemux_sim::SimServer::start(SimConfig::default())
        .await
        .unwrap();
    let (trusting, _hub) = start_proxy(
        &sim,
        quick_hub(),
        ServerConfig {
            trusted_proxies: trusting_loopback_one(),
            ..ServerConfig::default()
        },
    )
    .await;
    let (default, _hub2) = start_proxy(&sim, quick_hub(), ServerConfig::default()).await;
    let (_h1, front) = haproxy_rewriting_host(trusting.addr()).await;
    let (_h2, front_default) = haproxy_rewriting_host(default.addr()).await;

    // The page is served from the front's own address: same origin.
    let mut client = browser_connect(front, &format!("http://{front}"))
        .await
        .expect("a same-origin socket through the proxy is accepted");
    client.request("/api/v1/namespaces", "watch=1").await;
    assert_eq!(client.event().await.1["type"], "ADDED");
    let foreign = browser_connect(front, "http://evil.example").await;
    assert!(
        matches!(&foreign, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 403),
        "a foreign origin stays refused behind the proxy: {:?}",
        foreign.err()
    );

    // Off by default: the rewritten Host is all kubemux believes.
    let refused = browser_connect(front_default, &format!("http://{front_default}")).await;
    assert!(
        matches!(&refused, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 403),
        "without --trusted-proxies the forwarded host is ignored: {:?}",
        refused.err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_host_and_proto_count_only_from_a_trusted_peer() {
    let env = start(
        SimConfig::default(),
        quick_hub(),
        ServerConfig {
            trusted_proxies: trusting_loopback_one(),
            ..ServerConfig::default()
        },
    )
    .await;
    let addr = env.server.addr();
    let xfh = [
        ("Origin", "https://dash.example.com"),
        ("X-Forwarded-Host", "dash.example.com"),
        ("X-Forwarded-Proto", "https"),
    ];
    let (trusted, _s1) = upgrade(PROXY, addr, &xfh).await;
    assert!(trusted.starts_with("HTTP/1.1 101"), "{trusted}");
    let (spoofed, _s2) = upgrade(UNTRUSTED, addr, &xfh).await;
    assert!(spoofed.starts_with("HTTP/1.1 403"), "{spoofed}");
    assert!(spoofed.contains("dash.example.com"), "{spoofed}");

    let rfc = [
        ("Origin", "https://dash.example.com"),
        (
            "Forwarded",
            "for=192.0.2.9;host=\"dash.example.com\";proto=https",
        ),
    ];
    let (trusted, _s3) = upgrade(PROXY, addr, &rfc).await;
    assert!(trusted.starts_with("HTTP/1.1 101"), "{trusted}");
    let (spoofed, _s4) = upgrade(UNTRUSTED, addr, &rfc).await;
    assert!(spoofed.starts_with("HTTP/1.1 403"), "{spoofed}");
    let other_scheme = [
        ("Origin", "http://dash.example.com"),
        (
            "Forwarded",
            "for=192.0.2.9;host=dash.example.com;proto=https",
        ),
    ];
    let (refused, _s5) = upgrade(PROXY, addr, &other_scheme).await;
    assert!(
        refused.starts_with("HTTP/1.1 403"),
        "http:// is another origin than the https:// the proxy served: {refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_address_cap_counts_forwarded_clients_and_ignores_spoofed_ones() {
    let env = start(
        SimConfig::default(),
        quick_hub(),
        ServerConfig {
            trusted_proxies: trusting_loopback_one(),
            limits: Limits {
                connections_per_address: 2,
                ..Limits::default()
            },
            ..ServerConfig::default()
        },
    )
    .await;
    let addr = env.server.addr();
    let mut open = Vec::new();
    for _ in 0..2 {
        let (answer, stream) = upgrade(PROXY, addr, &[("X-Forwarded-For", "192.0.2.1")]).await;
        assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
        open.push(stream);
    }
    let (third, _) = upgrade(PROXY, addr, &[("X-Forwarded-For", "192.0.2.1")]).await;
    assert!(third.starts_with("HTTP/1.1 429"), "{third}");
    assert!(
        third.contains("too many connections from 192.0.2.1: at most 2 per client address"),
        "{third}"
    );
    let body: Value = serde_json::from_str(third.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["reason"], "TooManyRequests", "{body}");
    let (another, other_stream) = upgrade(
        PROXY,
        addr,
        &[("X-Forwarded-For", "203.0.113.5, 192.0.2.2")],
    )
    .await;
    assert!(
        another.starts_with("HTTP/1.1 101"),
        "another forwarded client has its own count: {another}"
    );
    open.push(other_stream);

    // From an untrusted peer, X-Forwarded-For changes nothing: the peer
    // is the client, whatever it claims.
    for claimed in ["192.0.2.50", "192.0.2.51"] {
        let (answer, stream) = upgrade(UNTRUSTED, addr, &[("X-Forwarded-For", claimed)]).await;
        assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
        open.push(stream);
    }
    let (spoofed, _) = upgrade(UNTRUSTED, addr, &[("X-Forwarded-For", "192.0.2.52")]).await;
    assert!(spoofed.starts_with("HTTP/1.1 429"), "{spoofed}");
    assert!(
        spoofed.contains("too many connections from 127.0.0.3"),
        "{spoofed}"
    );
    assert_eq!(refusals(&env, "connections_per_address"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_beyond_the_rate_gets_429_with_retry_after_per_address_and_per_identity() {
    let env = start(
        SimConfig::default(),
        quick_hub(),
        ServerConfig {
            trusted_proxies: trusting_loopback_one(),
            limits: Limits {
                // No refill within the test: the burst is all there is.
                rest_rate: 0.001,
                rest_burst: 3.0,
                ..Limits::default()
            },
            ..ServerConfig::default()
        },
    )
    .await;
    let addr = env.server.addr();
    let a = [("X-Forwarded-For", "192.0.2.1")];
    for _ in 0..3 {
        let ok = rest_get(PROXY, addr, &a).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    }
    let limited = rest_get(PROXY, addr, &a).await;
    assert!(limited.starts_with("HTTP/1.1 429"), "{limited}");
    let (head, body) = limited.split_once("\r\n\r\n").unwrap();
    let retry_after: u64 = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after:")
                .map(|v| v.trim().to_string())
        })
        .expect("a Retry-After header")
        .parse()
        .expect("Retry-After in whole seconds");
    assert!(retry_after >= 1, "{head}");
    let status: Value = serde_json::from_str(body).unwrap();
    assert_eq!(status["kind"], "Status", "{status}");
    assert_eq!(status["status"], "Failure", "{status}");
    assert_eq!(status["reason"], "TooManyRequests", "{status}");
    assert_eq!(status["code"], 429, "{status}");
    assert_eq!(
        status["details"]["retryAfterSeconds"], retry_after,
        "{status}"
    );
    let message = status["message"].as_str().unwrap();
    assert!(message.contains("192.0.2.1"), "{message}");
    assert!(message.contains("--rest-rate"), "{message}");

    let b = rest_get(PROXY, addr, &[("X-Forwarded-For", "192.0.2.2")]).await;
    assert!(b.starts_with("HTTP/1.1 200"), "another client: {b}");

    // One identity from several addresses shares one bucket.
    let token = "Bearer some-token";
    for n in 0..3 {
        let from = format!("192.0.2.{}", 10 + n);
        let ok = rest_get(
            PROXY,
            addr,
            &[("X-Forwarded-For", &from), ("Authorization", token)],
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    }
    let limited = rest_get(
        PROXY,
        addr,
        &[("X-Forwarded-For", "192.0.2.20"), ("Authorization", token)],
    )
    .await;
    assert!(limited.starts_with("HTTP/1.1 429"), "{limited}");
    assert!(limited.contains("this identity"), "{limited}");

    // Spoofed X-Forwarded-For from an untrusted peer: one client.
    for n in 0..3 {
        let claimed = format!("198.51.100.{n}");
        let ok = rest_get(UNTRUSTED, addr, &[("X-Forwarded-For", &claimed)]).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    }
    let limited = rest_get(UNTRUSTED, addr, &[("X-Forwarded-For", "198.51.100.99")]).await;
    assert!(limited.starts_with("HTTP/1.1 429"), "{limited}");
    assert!(limited.contains("127.0.0.3"), "{limited}");
    assert_eq!(refusals(&env, "rest_rate"), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_that_never_reads_is_held_to_its_share_and_others_still_connect() {
    const BUDGET: usize = 4 << 20;
    const SHARE: usize = 1 << 20;
    const STUCK: usize = 4;
    let env = start(
        SimConfig::default(),
        quick_hub(),
        ServerConfig {
            queue: QueueLimits {
                budget: BUDGET,
                per_client: SHARE,
                ..QueueLimits::default()
            },
            limits: Limits {
                queue_budget: BUDGET,
                ..Limits::default()
            },
            // The stuck clients' sockets stay open for as long as the test
            // looks at them.
            headlamp: kubemux::dialect::headlamp::Settings {
                liveness: Liveness {
                    write_timeout: Duration::from_secs(600),
                    ..Liveness::default()
                },
                ..Default::default()
            },
            ..ServerConfig::default()
        },
    )
    .await;
    let mut stuck = Vec::new();
    for _ in 0..STUCK {
        let mut client = env.client().await;
        client.request("/api/v1/configmaps", "watch=1").await;
        stuck.push(client);
    }
    env.eventually("the watch is open", || {
        env.sim.watch_requests("configmaps") == 1
    })
    .await;
    let payload = "x".repeat(4096);
    let mut i = 0;
    while refusals(&env, "queue_share") < STUCK as f64 {
        churn_configmap(env.sim.store(), i, &payload);
        i += 1;
        assert!(
            i < 200_000,
            "the stuck clients were never held to their share"
        );
        if i % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let text = env.hub.metrics().encode();
    assert_eq!(refusals(&env, "queue_budget"), 0.0, "{text}");
    assert!(
        metric(&text, "kubemux_queue_bytes").unwrap() <= (SHARE + STUCK * 64 * 1024) as f64,
        "{text}"
    );

    // Another address connects and is served while the stuck sockets are
    // still open.
    let mut other = WsConnect::new(&env.ws_url())
        .from("127.0.0.2")
        .client()
        .await
        .expect("a socket from another address is accepted");
    other.request("/api/v1/namespaces", "watch=1").await;
    assert_eq!(other.event().await.1["type"], "ADDED");

    // Each stuck client, once it reads, finds the close naming the limit.
    for mut client in stuck {
        let close = loop {
            match tokio::time::timeout(PATIENCE, client.ws.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => break frame,
                Ok(Some(Ok(_))) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        };
        let close = close.expect("a close frame with a reason");
        assert_eq!(u16::from(close.code), 1008);
        assert!(
            close.reason.contains("--queue-budget-per-client"),
            "{}",
            close.reason
        );
    }
}
