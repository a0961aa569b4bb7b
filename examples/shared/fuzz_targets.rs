//! Fuzz targets and a small mutation engine shared by `examples/fuzz.rs`
//! (long runs, millions of inputs per target) and `tests/it/fuzz.rs` (a short
//! run of every target in CI).
//!
//! Not coverage-guided: inputs are random bytes, dictionary tokens, and
//! mutations (bit flips, interesting bytes, deletions, insertions, repeats,
//! truncations, splices) of a seed corpus of valid inputs. Inputs a target
//! accepts join the corpus (bounded), so well-formed shapes keep evolving.
//! Each target calls the same public functions the server runs on
//! untrusted bytes and checks the properties that must hold on success; a
//! panic or a broken property is a failure, reported with the input as a
//! Rust byte string ready for a regression test.
#![allow(dead_code)]

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::Bytes;
use kubemux::auth::credentials::Credentials;
use kubemux::auth::origin::OriginPolicy;
use kubemux::auth::secret::Secret;
use kubemux::config::{ProxyArgs, Settings};
use kubemux::dialect::dashboard::{self, view as dashboard_view};
use kubemux::dialect::headlamp;
use kubemux::hub::key::{normalize, parse_path};
use kubemux::upstream::event::{WatchEvent, parse_list};
use kubemux_vocab::path::ApiPath;

/// What a target says about one input: accepted (the parser returned a
/// value), rejected (an error, which is fine), or a broken property.
pub enum Verdict {
    Accepted,
    Rejected,
    Broken(String),
}

use Verdict::{Accepted, Broken, Rejected};

/// One fuzz target.
pub struct Target {
    pub name: &'static str,
    /// What it drives.
    pub about: &'static str,
    /// Valid (or nearly valid) inputs to mutate.
    pub corpus: &'static [&'static str],
    /// Tokens spliced into inputs.
    pub dictionary: &'static [&'static str],
    pub run: fn(&[u8]) -> Verdict,
}

/// Multi-field inputs are split on newlines (`cluster\npath\nquery`).
fn fields(input: &[u8], n: usize) -> Vec<String> {
    let mut out: Vec<String> = input
        .splitn(n, |b| *b == b'\n')
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    out.resize(n, String::new());
    out
}

fn text(input: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(input)
}

fn key(input: &[u8]) -> Verdict {
    let f = fields(input, 3);
    let Ok((key, _, _)) = normalize(&f[0], &f[1], &f[2]) else {
        return Rejected;
    };
    if parse_path(key.path()).is_err() {
        return Broken(format!(
            "normalised path {:?} does not parse again",
            key.path()
        ));
    }
    match normalize(&f[0], key.path(), key.selectors()) {
        Ok((again, _, _)) if again == key => Accepted,
        Ok((again, _, _)) => Broken(format!("not idempotent: {key:?} then {again:?}")),
        Err(e) => Broken(format!("a canonical key is rejected: {key:?}: {e}")),
    }
}

fn path(input: &[u8]) -> Verdict {
    let t = text(input);
    if let Ok(ApiPath::Resource { collection, .. }) = kubemux_vocab::path::parse(&t)
        && matches!(collection.resource.as_str(), "watch" | "proxy")
    {
        return Broken(format!("a legacy path was read as a resource: {t:?}"));
    }
    match parse_path(&t) {
        Ok(_) if t.contains("/../") || t.ends_with("/..") || t.contains("/./") => {
            Broken(format!("a relative path was accepted: {t:?}"))
        }
        Ok(_) if !(t.starts_with("/api/") || t.starts_with("/apis/")) => {
            Broken(format!("a path outside the API was accepted: {t:?}"))
        }
        Ok(_) => Accepted,
        Err(_) => Rejected,
    }
}

fn watch_line(input: &[u8]) -> Verdict {
    let Ok(ev) = WatchEvent::parse_line(Bytes::copy_from_slice(input)) else {
        return Rejected;
    };
    // The Headlamp frame embeds this string: it must be valid JSON and
    // decode to the line (lossily, U+FFFD, where the line is not UTF-8: serde
    // does not check the UTF-8 of values it skips).
    match serde_json::from_slice::<String>(ev.json_string()) {
        Ok(s) if s == String::from_utf8_lossy(ev.line()) => Accepted,
        Ok(_) => Broken("json_string does not decode to the line".into()),
        Err(e) => Broken(format!("json_string is not a JSON string: {e}")),
    }
}

fn list(input: &[u8]) -> Verdict {
    let Ok(page) = parse_list(input) else {
        return Rejected;
    };
    for item in page.items {
        if serde_json::from_slice::<serde_json::Value>(item.object()).is_err() {
            return Broken("a listed item is not JSON".into());
        }
    }
    Accepted
}

fn projections(input: &[u8]) -> Verdict {
    let a = dashboard_view::node(input).is_some();
    let b = dashboard_view::pod(input).is_some();
    let c = dashboard_view::namespace(input).is_some();
    if a || b || c { Accepted } else { Rejected }
}

fn headlamp_message(input: &[u8]) -> Verdict {
    let t = text(input);
    match headlamp::parse_client_message(&t) {
        Ok(_) => Accepted,
        Err(e) if e.starts_with("invalid message: ") => Rejected,
        Err(e) => Broken(format!("error frame text without its prefix: {e:?}")),
    }
}

fn dashboard_message(input: &[u8]) -> Verdict {
    match dashboard::parse_client_message(&text(input)) {
        Ok(_) => Accepted,
        Err(_) => Rejected,
    }
}

fn credentials(input: &[u8]) -> Verdict {
    let f: Vec<&[u8]> = input.splitn(5, |b| *b == b'\n').collect();
    let mut headers = http::HeaderMap::new();
    for (name, value) in [
        "authorization",
        "sec-websocket-protocol",
        "cookie",
        "origin",
        "host",
    ]
    .into_iter()
    .zip(f.iter())
    {
        if let Ok(v) = http::HeaderValue::from_bytes(value) {
            headers.insert(name, v);
        }
    }
    let _ = Secret::new("backend").check_backend_token(&headers);
    let _ = OriginPolicy::new(vec!["https://a.example".into()]).check(&headers);
    let creds = Credentials::from_headers(&headers);
    let shown = format!("{creds:?}");
    // Cookie cluster names are shown on purpose (they are not secret); a
    // token may happen to spell one, so only the part before them counts.
    let shown = shown.split("cookie_clusters").next().unwrap_or_default();
    for cluster in ["sim", "c", ""] {
        if let Some(token) = creds.token_for(cluster) {
            if token.len() > 8 && shown.contains(token) {
                return Broken(format!("Debug shows the token {token:?}"));
            }
            return Accepted;
        }
    }
    Rejected
}

fn origin(input: &[u8]) -> Verdict {
    let f: Vec<&[u8]> = input.splitn(3, |b| *b == b'\n').collect();
    let allowed: Vec<String> = f
        .get(2)
        .map(|a| text(a).split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let mut headers = http::HeaderMap::new();
    for (name, value) in ["origin", "host"].into_iter().zip(f.iter()) {
        if let Ok(v) = http::HeaderValue::from_bytes(value) {
            headers.insert(name, v);
        }
    }
    match OriginPolicy::new(allowed).check(&headers) {
        Ok(()) => Accepted,
        Err(_) => Rejected,
    }
}

/// An accepted file's settings, printed by `kubemux config` and read
/// again, are the same settings.
fn config(input: &[u8]) -> Verdict {
    let Ok(settings) = Settings::from_toml(&ProxyArgs::default(), &text(input), "fuzz") else {
        return Rejected;
    };
    let printed = settings.to_toml();
    match Settings::from_toml(&ProxyArgs::default(), &printed, "printed") {
        Ok(again) if again == settings => Accepted,
        Ok(again) => Broken(format!("printed as {printed:?}, read back as {again:?}")),
        Err(e) => Broken(format!("printed as {printed:?}, refused: {e}")),
    }
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "key",
        about: "hub::key::normalize (cluster, path, query → shared key) and its idempotence",
        corpus: &[
            "sim\n/api/v1/pods\nwatch=1",
            "sim\n/api/v1/namespaces/default/pods\nwatch=1&labelSelector=app%3Dweb%2Ctier+in+(a%2Cb)&resourceVersion=10",
            "c\n/apis/apps/v1/deployments\nfieldSelector=metadata.name%3D%3Dx&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan",
            "sim\n/api/v1/nodes\nlabelSelector=!a,b!=c,d notin (x)&timeoutSeconds=30&limit=5",
        ],
        dictionary: &[
            "/api/v1/",
            "/apis/",
            "namespaces/",
            "/..",
            "%2F",
            "%",
            "%zz",
            "&",
            "=",
            "==",
            "!=",
            "!",
            " in (",
            " notin (",
            ")",
            ",",
            "labelSelector=",
            "fieldSelector=",
            "watch=",
            "resourceVersion=",
            "timeoutSeconds=",
            "+",
            "\u{0}",
            "\u{ff}",
        ],
        run: key,
    },
    Target {
        name: "path",
        about: "api_path::parse (every REST path) and hub::key::parse_path (watchable collections only)",
        corpus: &[
            "/api/v1/pods",
            "/api/v1/namespaces/default/pods",
            "/apis/apps/v1/namespaces/x/deployments",
            "/apis/example.com/v1alpha1/widgets",
        ],
        dictionary: &[
            "/",
            "..",
            ".",
            "//",
            "%2e",
            "%2F",
            "namespaces",
            "exec",
            "log",
            "?",
            "#",
        ],
        run: path,
    },
    Target {
        name: "watch_line",
        about: "upstream::event::WatchEvent::parse_line (upstream watch events) and the encode-once string",
        corpus: &[
            r#"{"type":"ADDED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","namespace":"default","resourceVersion":"12","uid":"u"}}}"#,
            r#"{"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"99","annotations":{"k8s.io/initial-events-end":"true"}}}}"#,
            r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Expired","code":410}}"#,
            r#"{"type":"DELETED","object":{"metadata":{"name":"n\u00e9","resourceVersion":"5"}}}"#,
        ],
        dictionary: &[
            "\"type\"",
            "\"object\"",
            "\"metadata\"",
            "\"resourceVersion\"",
            "\"name\"",
            "\"namespace\"",
            "\\u0000",
            "\\ud800",
            "\\\"",
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "null",
            "1e999",
            "-0",
            "\"MODIFIED\"",
        ],
        run: watch_line,
    },
    Target {
        name: "list",
        about: "upstream::event::parse_list (upstream LIST pages)",
        corpus: &[
            r#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"10","continue":"abc"},"items":[{"metadata":{"name":"a","namespace":"d","resourceVersion":"9"}}]}"#,
            r#"{"kind":"NodeList","apiVersion":"v1","metadata":{"resourceVersion":"1"},"items":[]}"#,
        ],
        dictionary: &[
            "\"items\"",
            "\"metadata\"",
            "\"continue\"",
            "[",
            "]",
            "{",
            "}",
            ",",
            "null",
        ],
        run: list,
    },
    Target {
        name: "projections",
        about: "dialect::dashboard::view node/pod/namespace projections of upstream objects",
        corpus: &[
            r#"{"metadata":{"name":"n1","labels":{"a":"b"}},"status":{"conditions":[{"type":"Ready","status":"True"}],"capacity":{"cpu":"2","memory":"4Gi"}}}"#,
            r#"{"metadata":{"name":"p","namespace":"d"},"spec":{"nodeName":"n1","containers":[{"name":"c","image":"i"}]},"status":{"phase":"Running","containerStatuses":[{"restartCount":3,"ready":true}]}}"#,
            r#"{"metadata":{"name":"ns"},"status":{"phase":"Active"}}"#,
        ],
        dictionary: &[
            "\"status\"",
            "\"spec\"",
            "\"conditions\"",
            "\"containers\"",
            "\"Ready\"",
            "-1",
            "1e400",
            "null",
        ],
        run: projections,
    },
    Target {
        name: "headlamp_message",
        about: "dialect::headlamp::parse_client_message (Headlamp client messages)",
        corpus: &[
            r#"{"clusterId":"sim","path":"/api/v1/pods","query":"watch=1","userId":"u","type":"REQUEST"}"#,
            r#"{"clusterId":"sim","path":"/api/v1/pods","query":"watch=1","type":"CLOSE"}"#,
            r#"  {"type":"COMPLETE","clusterId":null}"#,
        ],
        dictionary: &[
            "\"clusterId\"",
            "\"path\"",
            "\"query\"",
            "\"type\"",
            "\"REQUEST\"",
            "null",
            "[",
            "{",
            "\\u0000",
        ],
        run: headlamp_message,
    },
    Target {
        name: "dashboard_message",
        about: "dialect::dashboard::parse_client_message (dashboard stream client messages)",
        corpus: &[
            r#"{"type":"ping"}"#,
            r#"{"type":"subscribe","namespaces":["a"]}"#,
        ],
        dictionary: &["\"type\"", "\"ping\"", "null", "{", "}"],
        run: dashboard_message,
    },
    Target {
        name: "credentials",
        about: "auth::credentials (Authorization header, split cookies), Headlamp's backend token and the origin check",
        corpus: &[
            "Bearer abcdefghijk\nheadlamp.multiplexer.k8s.io, base64url.headlamp.backend.authorization.k8s.io.dG9rZW4tdTE\nheadlamp-auth-sim.1=n-u2; other=1; headlamp-auth-sim.0=toke\nhttps://a.example\na.example",
            "bearer   x\n\nheadlamp-auth-c.0=abc\n",
        ],
        dictionary: &[
            "Bearer ",
            "base64url.headlamp.backend.authorization.k8s.io.",
            "headlamp-auth-",
            ".0=",
            ".1=",
            ".99999999999999999999=",
            "; ",
            ",",
            "=",
            "\u{7f}",
        ],
        run: credentials,
    },
    Target {
        name: "origin",
        about: "auth::origin::OriginPolicy (Origin against Host and the allow-list)",
        corpus: &[
            "https://a.example\na.example\nhttps://a.example",
            "http://localhost:3000\nlocalhost:4466\nhttp://localhost:3000,https://b.example",
        ],
        dictionary: &["https://", "http://", ":", "null", "*", "[::1]", "%00"],
        run: origin,
    },
    Target {
        name: "config",
        about: "config::Settings::from_toml (config files)",
        corpus: &[
            "listen = \"127.0.0.1:4466\"\nlinger = \"30s\"\nmax_subscriptions = 1000\nallowed_origins = [\"https://a\"]\n",
            "auth = \"shared\"\nqueue_max_bytes = 8388608\n",
            "console_max_subscriptions = 2\ndashboard_message_rate = 120\nidle_timeout = \"0s\"\nbacklog_bytes = \"64 KiB\"\n",
        ],
        dictionary: &[
            "=",
            "\"",
            "[",
            "]",
            "\n",
            "linger",
            "auth",
            "console_idle_timeout",
            "dashboard_message_rate",
            "notifications_max_message_size",
            "\"0s\"",
            "\" KiB\"",
            "99999999999999999999",
            "-1",
            "\"1ns\"",
        ],
        run: config,
    },
];

/// A fast seeded generator (SplitMix64): the driver spends its time in the
/// targets, not in the RNG.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: &[u8] = &[
    0, 0x7f, 0x80, 0xff, 0xc3, 0xe2, 0xf0, b'"', b'\\', b'%', b'&', b'=', b'/', b'{', b'}', b'[',
    b']', b',', b':', b'\n', b' ', b'.', b'0', b'9',
];
/// Inputs larger than this are cut, so one input never dominates a run.
const MAX_LEN: usize = 4096;
/// Accepted inputs kept for further mutation, per target.
const MAX_CORPUS: usize = 2048;

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, t: &Target, corpus: &[Vec<u8>]) {
    let pos = |rng: &mut Rng, v: &Vec<u8>| rng.below(v.len() + 1);
    match rng.below(10) {
        0 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] ^= 1 << rng.below(8);
        }
        1 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] = INTERESTING[rng.below(INTERESTING.len())];
        }
        2 if !input.is_empty() => {
            let a = rng.below(input.len());
            let b = (a + 1 + rng.below(16)).min(input.len());
            input.drain(a..b);
        }
        3 => {
            let token = t.dictionary[rng.below(t.dictionary.len())].as_bytes();
            let i = pos(rng, input);
            input.splice(i..i, token.iter().copied());
        }
        4 if !input.is_empty() => {
            let a = rng.below(input.len());
            let b = (a + 1 + rng.below(32)).min(input.len());
            let chunk = input[a..b].to_vec();
            for _ in 0..1 + rng.below(8) {
                input.splice(b..b, chunk.iter().copied());
            }
        }
        5 => {
            let i = pos(rng, input);
            input.truncate(i);
        }
        6 if !corpus.is_empty() => {
            let other = &corpus[rng.below(corpus.len())];
            let i = pos(rng, input);
            let j = rng.below(other.len() + 1);
            input.truncate(i);
            input.extend_from_slice(&other[j..]);
        }
        7 => {
            let i = pos(rng, input);
            let n = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            input.splice(i..i, bytes);
        }
        8 => {
            let i = pos(rng, input);
            let digits = [
                "0",
                "-1",
                "18446744073709551616",
                "99999999999999999999999",
                "1e308",
            ];
            let d = digits[rng.below(digits.len())].as_bytes();
            input.splice(i..i, d.iter().copied());
        }
        _ => {
            let i = pos(rng, input);
            input.insert(i, INTERESTING[rng.below(INTERESTING.len())]);
        }
    }
    input.truncate(MAX_LEN);
}

/// A failure: the input and what went wrong.
pub struct Failure {
    pub input: Vec<u8>,
    pub what: String,
}

impl Failure {
    /// The input as a Rust byte-string literal.
    pub fn literal(&self) -> String {
        format!("b\"{}\"", self.input.escape_ascii())
    }
}

/// Counts of one run of one target.
pub struct Outcome {
    pub inputs: u64,
    pub accepted: u64,
    pub corpus: usize,
    pub failures: Vec<Failure>,
}

thread_local! {
    static PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Routes panic messages to the failure report instead of stderr.
pub fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let msg = format!("panic: {info}");
        PANIC.with(|p| *p.borrow_mut() = Some(msg));
    }));
}

/// One input through one target, a panic turned into a verdict.
pub fn check(t: &Target, input: &[u8]) -> Verdict {
    match catch_unwind(AssertUnwindSafe(|| (t.run)(input))) {
        Ok(v) => v,
        Err(_) => Broken(
            PANIC
                .with(|p| p.borrow_mut().take())
                .unwrap_or_else(|| "panic".into()),
        ),
    }
}

/// Runs `inputs` generated inputs through `t`; stops collecting after 10 failures.
pub fn run(t: &Target, inputs: u64, seed: u64) -> Outcome {
    let mut rng = Rng::new(seed ^ t.name.len() as u64 ^ (t.name.as_bytes()[0] as u64) << 32);
    let mut corpus: Vec<Vec<u8>> = t.corpus.iter().map(|s| s.as_bytes().to_vec()).collect();
    let mut out = Outcome {
        inputs: 0,
        accepted: 0,
        corpus: 0,
        failures: Vec::new(),
    };
    let mut input = Vec::with_capacity(MAX_LEN);
    for _ in 0..inputs {
        input.clear();
        match rng.below(20) {
            0 => input.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
            1 => {
                for _ in 0..1 + rng.below(8) {
                    let token = t.dictionary[rng.below(t.dictionary.len())];
                    input.extend_from_slice(token.as_bytes());
                }
            }
            _ => {
                input.extend_from_slice(&corpus[rng.below(corpus.len())]);
                for _ in 0..1 + rng.below(4) {
                    mutate(&mut rng, &mut input, t, &corpus);
                }
            }
        }
        out.inputs += 1;
        match check(t, &input) {
            Accepted => {
                out.accepted += 1;
                if corpus.len() < MAX_CORPUS && rng.below(16) == 0 {
                    corpus.push(input.clone());
                }
            }
            Rejected => {}
            Broken(what) => {
                if out.failures.len() < 10 {
                    out.failures.push(Failure {
                        input: input.clone(),
                        what,
                    });
                }
            }
        }
    }
    out.corpus = corpus.len();
    out
}
