//! Who the client is when kubemux sits behind a reverse proxy.
//!
//! A proxy in front of kubemux is the TCP peer of every request it relays,
//! and nginx (by default) or HAProxy (`set-header Host`) may rewrite `Host`
//! on the way. Such a proxy says what the client asked for and where it came
//! from in `Forwarded` (RFC 7239: `for=`, `host=`, `proto=`) or in the
//! de-facto `X-Forwarded-For` / `X-Forwarded-Host` / `X-Forwarded-Proto`.
//! Those headers are anyone's to write, so kubemux reads them only from a
//! peer inside `--trusted-proxies` (none by default): from any other peer
//! they are ignored, and a client cannot pick its own address or host.
//!
//! The client address is found as nginx's `real_ip` module does with
//! `real_ip_recursive on`: walk the `for` chain from the right (the hop
//! nearest to kubemux) past every trusted proxy; the first address that is
//! not trusted is the client. The host and scheme are the right-most ones
//! given, the values the nearest trusted proxy set or appended (a value the
//! client sent itself ends up to the left of it).

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;

/// An address block like `10.0.0.0/8`, `127.0.0.1` or `fd00::/8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a `--trusted-proxies` entry was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address or address block (e.g. 10.0.0.0/8, 127.0.0.1, fd00::/8)")]
pub struct BadCidr(pub String);

impl std::str::FromStr for Cidr {
    type Err = BadCidr;

    fn from_str(text: &str) -> Result<Self, BadCidr> {
        let bad = || BadCidr(text.to_string());
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text.trim(), None),
        };
        let network: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Cidr { network, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Cidr {
    /// Whether `ip` lies inside the block (an IPv4-mapped IPv6 address
    /// counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The peers whose forwarded headers are believed (`--trusted-proxies`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    blocks: Vec<Cidr>,
}

impl TrustedProxies {
    /// Trusts these blocks; none means forwarded headers are never read.
    pub fn new(blocks: Vec<Cidr>) -> Self {
        TrustedProxies { blocks }
    }

    /// Parses a list of blocks as the setting is written.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, BadCidr> {
        entries
            .iter()
            .map(|e| e.as_ref().parse())
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies::new)
    }

    /// Whether `ip` is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.blocks.iter().any(|b| b.contains(ip))
    }

    /// Whether any block is configured.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// The blocks, as configured.
    pub fn blocks(&self) -> &[Cidr] {
        &self.blocks
    }
}

/// Who sent a request and what it addressed, once forwarded headers from
/// trusted proxies are taken into account. Put into every request's
/// extensions by the accept loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's address: the TCP peer, or the right-most untrusted
    /// address a trusted proxy forwarded.
    pub addr: IpAddr,
    /// The host (and port) the client addressed, when a trusted proxy said
    /// so; otherwise the request's own `Host` applies.
    pub forwarded_host: Option<String>,
    /// The scheme the client used (`http`/`https`), when a trusted proxy
    /// said so.
    pub forwarded_proto: Option<String>,
}

impl ClientInfo {
    /// Reads the request of TCP peer `peer`.
    pub fn of(peer: SocketAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> ClientInfo {
        let peer = peer.ip().to_canonical();
        let direct = ClientInfo {
            addr: peer,
            forwarded_host: None,
            forwarded_proto: None,
        };
        if !trusted.trusts(peer) {
            return direct;
        }
        let elements = forwarded_elements(headers);
        if !elements.is_empty() {
            let hops: Vec<Option<IpAddr>> = elements
                .iter()
                .map(|e| e.r#for.as_deref().and_then(parse_node))
                .collect();
            return ClientInfo {
                addr: client_of(peer, &hops, trusted),
                forwarded_host: elements.iter().rev().find_map(|e| e.host.clone()),
                forwarded_proto: elements.iter().rev().find_map(|e| e.proto.clone()),
            };
        }
        let hops: Vec<Option<IpAddr>> = list(headers, "x-forwarded-for")
            .iter()
            .map(|a| parse_node(a))
            .collect();
        ClientInfo {
            addr: client_of(peer, &hops, trusted),
            forwarded_host: list(headers, "x-forwarded-host").pop(),
            forwarded_proto: list(headers, "x-forwarded-proto")
                .pop()
                .map(|p| p.to_ascii_lowercase()),
        }
    }

    /// The site (`host[:port]`) the client addressed: the forwarded host
    /// or else the request's `Host`.
    pub fn site<'a>(&'a self, headers: &'a HeaderMap) -> Option<&'a str> {
        self.forwarded_host
            .as_deref()
            .or_else(|| headers.get(http::header::HOST)?.to_str().ok())
    }
}

/// The right-most address of `hops` (client first, nearest proxy last)
/// that is not a trusted proxy; `peer` (trusted) is the hop after the last.
/// An entry that is not an address (`unknown`, an obfuscated name) stops
/// the walk at the last address known, as nginx does.
fn client_of(peer: IpAddr, hops: &[Option<IpAddr>], trusted: &TrustedProxies) -> IpAddr {
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop {
            Some(addr) => {
                client = *addr;
                if !trusted.trusts(*addr) {
                    break;
                }
            }
            None => break,
        }
    }
    client
}

/// Every comma-separated value of every line of header `name`, in order.
fn list(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(String::from)
        .collect()
}

/// One element of RFC 7239's `Forwarded` (one hop).
#[derive(Debug, Default, PartialEq, Eq)]
struct Element {
    r#for: Option<String>,
    host: Option<String>,
    proto: Option<String>,
}

/// The elements of every `Forwarded` line, client first. Quoted values
/// may hold commas and semicolons (an IPv6 node with its port).
fn forwarded_elements(headers: &HeaderMap) -> Vec<Element> {
    let mut out = Vec::new();
    for line in headers
        .get_all(http::header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        let mut element = Element::default();
        let mut any = false;
        for (pair, end_of_element) in split_quoted(line) {
            if let Some((name, value)) = pair.split_once('=') {
                let value = value.trim();
                let value = value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(value)
                    .replace("\\\"", "\"");
                let slot = match name.trim().to_ascii_lowercase().as_str() {
                    "for" => Some(&mut element.r#for),
                    "host" => Some(&mut element.host),
                    "proto" => Some(&mut element.proto),
                    _ => None,
                };
                if let Some(slot) = slot {
                    *slot = Some(if name.trim().eq_ignore_ascii_case("proto") {
                        value.to_ascii_lowercase()
                    } else {
                        value
                    });
                    any = true;
                }
            }
            if end_of_element {
                if any {
                    out.push(std::mem::take(&mut element));
                }
                any = false;
            }
        }
    }
    out
}

/// Splits a `Forwarded` line at `;` and `,` outside quotes; each piece
/// comes with whether it ends an element (a `,` or the line's end).
fn split_quoted(line: &str) -> Vec<(&str, bool)> {
    let mut out = Vec::new();
    let mut quoted = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' | ',' if !quoted => {
                out.push((&line[start..i], c == ','));
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push((&line[start..], true));
    out
}

/// An address from a `for=` node or an `X-Forwarded-For` entry: `1.2.3.4`,
/// `1.2.3.4:5678`, `[2001:db8::1]:80`, `2001:db8::1`.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim();
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr.ip().to_canonical());
    }
    node.strip_prefix('[')
        .and_then(|n| n.split_once(']'))
        .and_then(|(ip, _)| ip.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, value.parse().unwrap());
        }
        h
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 5555)
    }

    #[test]
    fn blocks_contain_their_addresses() {
        let b: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(b.contains("10.1.200.3".parse().unwrap()));
        assert!(!b.contains("10.2.0.1".parse().unwrap()));
        assert!(b.contains("::ffff:10.1.0.9".parse().unwrap()), "v4-mapped");
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nonsense", "::/129", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    /// Proxies trusted on 10.0.0.0/8.
    fn private() -> TrustedProxies {
        TrustedProxies::parse(&["10.0.0.0/8"]).unwrap()
    }

    /// The client, host and scheme a trusted proxy said.
    fn assert_forwarded(info: &ClientInfo, addr: &str, host: &str, proto: &str) {
        assert_eq!(info.addr, addr.parse::<IpAddr>().unwrap());
        assert_eq!(info.forwarded_host.as_deref(), Some(host));
        assert_eq!(info.forwarded_proto.as_deref(), Some(proto));
    }

    #[test]
    fn untrusted_peers_are_taken_at_their_word_only_for_their_own_address() {
        let h = headers(&[
            ("x-forwarded-for", "192.0.2.7"),
            ("x-forwarded-host", "evil.example"),
        ]);
        let info = ClientInfo::of(peer("198.51.100.1"), &h, &private());
        assert_eq!(info.addr, "198.51.100.1".parse::<IpAddr>().unwrap());
        assert_eq!(info.forwarded_host, None);
        let none = ClientInfo::of(peer("10.0.0.1"), &h, &TrustedProxies::default());
        assert_eq!(
            none.addr,
            "10.0.0.1".parse::<IpAddr>().unwrap(),
            "off by default"
        );
    }

    #[test]
    fn the_right_most_untrusted_address_is_the_client() {
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.9, 192.0.2.7"),
            ("x-forwarded-for", "10.0.0.5"),
            ("x-forwarded-host", "spoofed.example, dash.example.com"),
            ("x-forwarded-proto", "HTTPS"),
        ]);
        let info = ClientInfo::of(peer("10.0.0.1"), &h, &private());
        assert_forwarded(&info, "192.0.2.7", "dash.example.com", "https");
        let all_trusted = headers(&[("x-forwarded-for", "10.9.9.9, 10.0.0.5")]);
        let info = ClientInfo::of(peer("10.0.0.1"), &all_trusted, &private());
        assert_eq!(info.addr, "10.9.9.9".parse::<IpAddr>().unwrap());
        let unknown = headers(&[("x-forwarded-for", "192.0.2.7, unknown, 10.0.0.5")]);
        let info = ClientInfo::of(peer("10.0.0.1"), &unknown, &private());
        assert_eq!(info.addr, "10.0.0.5".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn forwarded_is_read_as_rfc_7239_writes_it_and_wins() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8", "2001:db8:ffff::/48"]).unwrap();
        let h = headers(&[
            (
                "forwarded",
                "for=192.0.2.60;proto=http;by=203.0.113.43, For=\"[2001:db8:cafe::17]:4711\";host=\"a.example:8443\";proto=HTTPS",
            ),
            ("forwarded", "for=\"[2001:db8:ffff::1]\""),
            ("x-forwarded-for", "198.51.100.200"),
        ]);
        let info = ClientInfo::of(peer("10.0.0.1"), &h, &trusted);
        assert_forwarded(&info, "2001:db8:cafe::17", "a.example:8443", "https");
        assert_eq!(info.site(&h), Some("a.example:8443"));
    }
}
