//! High-volume generated inputs through every parser of untrusted bytes
//! (issue 10's fuzzing, the part that runs on stable in CI): nothing may
//! panic, and what is accepted must be well-formed. `KUBEMUX_FUZZ_CASES`
//! raises the count for long runs. The last test runs every target of the
//! high-volume driver (`examples/fuzz.rs`) briefly, through the same engine.

#[path = "../../examples/shared/fuzz_targets.rs"]
mod fuzz_targets;

use bytes::Bytes;
use kubemux::auth::credentials::Credentials;
use kubemux::auth::jwt::{JwtSettings, JwtVerifier};
use kubemux::auth::origin::OriginPolicy;
use kubemux::config::{ProxyArgs, Settings};
use kubemux::dialect::console::events as console_events;
use kubemux::dialect::dashboard::view as dashboard_view;
use kubemux::hub::key::{normalize, parse_path};
use kubemux::upstream::event::{Transform, WatchEvent, parse_list};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("KUBEMUX_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

/// Strings biased towards the shapes the parsers care about.
fn shaped() -> impl Strategy<Value = String> {
    prop_oneof![
        ".*",
        "[a-z0-9/._%=&,!() -]{0,80}",
        "(/api/v1|/apis/[a-z.]{1,12}/v[0-9])(/namespaces/[a-z0-9-]{1,8})?(/[a-z.%]{0,12}){0,3}",
        "((labelSelector|fieldSelector|watch|resourceVersion|timeoutSeconds|allowWatchBookmarks|sendInitialEvents|resourceVersionMatch|limit)=[a-zA-Z0-9%=,!() ._-]{0,20}&?){0,6}",
    ]
}

fn json_like() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        "-?[0-9]{1,5}".prop_map(|s| s),
        "\"[a-zA-Z0-9:./ -]{0,12}\"".prop_map(|s| s),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("type"),
                        Just("object"),
                        Just("metadata"),
                        Just("name"),
                        Just("namespace"),
                        Just("resourceVersion"),
                        Just("items"),
                        Just("kind"),
                        Just("status"),
                        Just("spec"),
                        Just("conditions"),
                        Just("containers"),
                        Just("labels")
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|kv| format!(
                "{{{}}}",
                kv.iter()
                    .map(|(k, v)| format!("\"{k}\":{v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            )),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn key_normalisation_never_panics_and_is_idempotent(cluster in "[a-z]{0,6}", path in shaped(), query in shaped()) {
        if let Ok((key, _, _)) = normalize(&cluster, &path, &query) {
            prop_assert!(parse_path(key.path()).is_ok());
            let (again, _, _) = normalize(&cluster, key.path(), key.selectors()).expect("a canonical key normalises again");
            prop_assert_eq!(again, key);
        }
    }

    #[test]
    fn watch_lines_and_lists_never_panic(text in prop_oneof![json_like(), ".*"]) {
        if let Ok(ev) = WatchEvent::parse_line(Bytes::from(text.clone())) {
            let s: String = serde_json::from_slice(ev.json_string()).expect("the encoded event is a JSON string");
            prop_assert_eq!(s.as_bytes(), &ev.line()[..]);
        }
        let strip = Transform { strip_managed_fields: true };
        let whole = WatchEvent::parse_line(Bytes::from(text.clone()))
            .ok()
            .and_then(|ev| serde_json::from_slice::<serde_json::Value>(ev.object()).ok());
        if let (Some(mut whole), Ok(ev)) = (whole, WatchEvent::parse_line_with(Bytes::from(text.clone()), strip)) {
            // Stripping removes the member from valid JSON and nothing else.
            let stripped: serde_json::Value = serde_json::from_slice(ev.object()).expect("a stripped object is JSON");
            if let Some(metadata) = whole.get_mut("metadata").and_then(serde_json::Value::as_object_mut)
                && metadata.get("managedFields").is_some_and(|m| !m.is_null())
            {
                metadata.remove("managedFields");
            }
            prop_assert_eq!(stripped, whole);
        }
        if let Ok(page) = parse_list(text.as_bytes()) {
            for item in page.items {
                prop_assert!(serde_json::from_slice::<serde_json::Value>(item.object()).is_ok());
            }
        }
        let _ = dashboard_view::node(text.as_bytes());
        let _ = dashboard_view::pod(text.as_bytes());
        let _ = dashboard_view::namespace(text.as_bytes());
    }

    #[test]
    fn credentials_and_origins_never_panic(
        auth in ".*", protocol in "[ -~]{0,80}", cookie in "[ -~]{0,120}", origin in "[ -~]{0,40}", host in "[a-z0-9.:]{0,20}",
    ) {
        let mut headers = http::HeaderMap::new();
        for (name, value) in [("authorization", auth), ("sec-websocket-protocol", protocol), ("cookie", cookie), ("origin", origin), ("host", host)] {
            if let Ok(v) = http::HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
        let creds = Credentials::from_headers(&headers);
        let shown = format!("{creds:?}");
        if let Some(token) = creds.token_for("c").filter(|t| t.len() > 8) {
            prop_assert!(!shown.contains(token), "Debug must not show the token");
        }
        let _ = OriginPolicy::new(vec!["https://a.example".into()]).check(&headers);
    }

    #[test]
    fn config_files_never_panic(text in prop_oneof![".*", "([a-z_]{1,20} = (\"[a-z0-9.:]{0,10}\"|[0-9]{1,12}|true|\\[\\]))\n{0,1}"]) {
        let _ = Settings::from_toml(&ProxyArgs::default(), &text, "fuzz");
    }

    #[test]
    fn console_derivations_and_tokens_never_panic(text in prop_oneof![json_like(), ".*"], token in "[A-Za-z0-9_.-]{0,120}") {
        if let Ok(object) = serde_json::from_str::<serde_json::Value>(&text) {
            let _ = console_events::pod_alerts(&object);
            let _ = console_events::node_alerts(&object);
            let _ = console_events::quota_exceeded(&object);
            let _ = console_events::pod_requests(&object);
            let _ = console_events::node_allocatable(&object);
        }
        let _ = console_events::log_level(&text);
        let _ = kubemux_vocab::quantity(&text);
        prop_assert!(verifier().verify(&token).is_err());
    }
}

/// A verifier with a fixed secret (no generated token can carry its signature).
fn verifier() -> &'static JwtVerifier {
    static VERIFIER: std::sync::OnceLock<JwtVerifier> = std::sync::OnceLock::new();
    VERIFIER.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("kubemux-fuzz-jwt-{}", std::process::id()));
        std::fs::write(&path, "fuzz-secret").unwrap();
        JwtVerifier::from_settings(&JwtSettings {
            hs256_secret_file: Some(path),
            user_claim: "sub".into(),
            groups_claim: "groups".into(),
            ..JwtSettings::default()
        })
        .unwrap()
        .unwrap()
    })
}

#[test]
fn every_fuzz_driver_target_survives_a_short_run() {
    let inputs = u64::from(cases()) * 2;
    for t in fuzz_targets::TARGETS {
        let out = fuzz_targets::run(t, inputs, 1);
        let report: Vec<String> = out
            .failures
            .iter()
            .map(|f| format!("{}: {}", f.what, f.literal()))
            .collect();
        assert!(
            report.is_empty(),
            "{}: {} failures\n{}",
            t.name,
            report.len(),
            report.join("\n")
        );
        assert!(
            out.accepted > 0,
            "{}: no generated input was accepted, the corpus is broken",
            t.name
        );
    }
}

/// Inputs `examples/fuzz` found failing (10 M-input runs, seed 1), kept as
/// regressions: each must now pass its target's checks.
#[test]
fn fuzz_driver_findings_stay_fixed() {
    let findings: [(&str, &[u8]); 6] = [
        // A fieldSelector value starting with `=` changed meaning in the canonical key.
        (
            "key",
            b"c\n/apis/apps/v1/deJps\nfieldSelector=menamuspacector====mena[muspacect=menamuspacector",
        ),
        (
            "key",
            b"c\n/apis/apps/v1/deployments\nfieldSelector=0meta===0meta=0meta=0metadall9999y999999999999999999owWatokmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan",
        ),
        // A canonical key that did not normalise again.
        (
            "key",
            b"0c\n/apis/apps/v1/deployments\nfieldSelector=or==0meta=0metafieldSelector==0meta=0metafieldSelector==0meta=0metafieldSelector==0meta=0metafieldSelector==0meta=0metpi/v11e308/n",
        ),
        // Invalid UTF-8 in a field the parser skips: relayed lossily, still a valid JSON string.
        (
            "watch_line",
            b"{\"type\":\"ADDED\",\"otype\":\"\xf0DDED\",\"object\":{\"kind\":\"Pod\",\"metadata\":{\"name\":\"a\",\"namespace\":\"default\",\"resourceVersion\":\"12\",\"uid\":\"u\"}}}",
        ),
        (
            "watch_line",
            b"{\"type\":\"ERROR\",\"objype\":\"E\x86\x99\xea\x81RROR\",\"object\":{\"kind\":\"Status\",\"apiVn\":\"v1\",\"status\":\"Failure\"}}",
        ),
        // A token spelling part of a cookie's cluster name (shown by design) is no leak.
        (
            "credentials",
            b"Bearer base64url\nheadlam`.rl.headmamp.backend.authorization.k8s.io.dG9rZW4tdTE\nheadlamp-auth-base64url.headlamp.backend.authorization.k8s.io.sim.1=n-u2; other",
        ),
    ];
    for (name, input) in findings {
        let target = fuzz_targets::TARGETS
            .iter()
            .find(|t| t.name == name)
            .expect("a known target");
        if let fuzz_targets::Verdict::Broken(what) = fuzz_targets::check(target, input) {
            panic!("{name}: {what}: {}", input.escape_ascii());
        }
    }
}
