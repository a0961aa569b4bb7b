//! The settings table's layering, checks and printing.

use std::time::Duration;

use super::*;

/// `toml` read as a config file, without flags.
fn file(toml: &str) -> Result<Settings, ConfigError> {
    Settings::from_toml(&ProxyArgs::default(), toml, "test")
}

#[test]
fn printed_settings_read_back_identically() {
    let custom = file("linger = \"5s\"\nmax_subscriptions = 7\nlog_format = \"json\"\n").unwrap();
    let again = file(&custom.to_toml()).unwrap();
    assert_eq!(custom, again);
    assert_eq!(again.linger, Duration::from_secs(5));
    assert_eq!(again.max_subscriptions, 7);
}

#[test]
fn the_documented_example_is_the_defaults() {
    let example = include_str!("../../docs/kubemux.example.toml");
    let s = file(example).unwrap();
    assert_eq!(s, Settings::default());
}

#[test]
fn flags_win_over_the_file_and_the_file_over_defaults() {
    let args = ProxyArgs {
        linger: Some(Duration::from_secs(1)),
        ..ProxyArgs::default()
    };
    let s = Settings::from_toml(&args, "linger = \"9s\"\nping_interval = \"9s\"\n", "t").unwrap();
    assert_eq!(s.linger, Duration::from_secs(1));
    assert_eq!(s.ping_interval, Duration::from_secs(9));
    assert_eq!(s.pong_timeout, Settings::default().pong_timeout);
}

#[test]
fn every_bad_value_names_its_setting() {
    let cases = [
        ("max_subscriptions = 0", "max_subscriptions"),
        ("max_message_size = 10", "max_message_size"),
        ("queue_max_bytes = 1", "queue_max_bytes"),
        ("queue_max_frames = 1", "queue_max_frames"),
        ("history_max_events = 0", "history_max_events"),
        ("history_max_age = \"10s\"", "history_max_age"),
        ("linger = \"2h\"", "linger"),
        ("linger = \"soon\"", "linger"),
        ("bookmark_interval = \"0s\"", "bookmark_interval"),
        ("ping_interval = \"0s\"", "ping_interval"),
        ("pong_timeout = \"1h\"", "pong_timeout"),
        ("shutdown_grace = \"1h\"", "shutdown_grace"),
        ("listen = \"nowhere\"", "listen"),
    ];
    for (toml, setting) in cases {
        let err = file(toml).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(setting) && text.contains("accepted"),
            "{toml}: {text}"
        );
    }
    let err = file("auth = \"none\"\nlisten = \"0.0.0.0:1\"").unwrap_err();
    assert!(
        err.to_string().contains("--allow-unauthenticated-remote"),
        "{err}"
    );
    assert!(
        file("auth = \"none\"\nlisten = \"0.0.0.0:1\"\nallow_unauthenticated_remote = true")
            .is_ok()
    );
    let err = file("lingr = \"1s\"").unwrap_err();
    assert!(err.to_string().contains("lingr"), "{err}");
}

#[test]
fn byte_sizes_take_binary_units_as_readme_writes_them() {
    for (text, bytes) in [
        ("4096", 4096),
        ("64KiB", 64 << 10),
        ("64 K", 64 << 10),
        ("8 MiB", 8 << 20),
        ("8M", 8 << 20),
        ("2GiB", 2 << 30),
        ("1 TiB", 1 << 40),
        ("512B", 512),
        (" 8 MiB ", 8 << 20),
    ] {
        assert_eq!(parse_byte_size(text), Ok(bytes), "{text}");
    }
    for text in [
        "",
        "MiB",
        "8 MB",
        "8mib",
        "1.5GiB",
        "-1",
        "8 MiB x",
        "99999999999999999999",
    ] {
        let err = parse_byte_size(text).unwrap_err();
        assert!(err.contains("KiB"), "{text}: {err}");
    }
    assert!(
        parse_byte_size("17179869184 GiB")
            .unwrap_err()
            .contains("too large")
    );
}

#[test]
fn byte_sizes_in_the_file_are_numbers_or_strings_with_units() {
    let s = file(
        "queue_max_bytes = \"8 MiB\"\nqueue_memory_budget = \"2GiB\"\n\
         max_message_size = 4096\nready_max_queue_bytes = \"1G\"\n",
    )
    .unwrap();
    assert_eq!(s.queue_max_bytes, 8 << 20);
    assert_eq!(s.queue_memory_budget, 2 << 30);
    assert_eq!(s.max_message_size, 4096);
    assert_eq!(s.ready_max_queue_bytes, 1 << 30);
    for (toml, setting) in [
        ("queue_max_bytes = \"8 MB\"", "queue_max_bytes"),
        ("max_message_size = -1", "max_message_size"),
        ("queue_memory_budget = \"lots\"", "queue_memory_budget"),
        ("ready_max_queue_bytes = \"1.5G\"", "ready_max_queue_bytes"),
        ("queue_max_bytes = \"8 GiB\"", "queue_max_bytes"),
    ] {
        let text = file(toml).unwrap_err().to_string();
        assert!(
            text.contains(setting) && text.contains("accepted") && text.contains("GiB"),
            "{toml}: {text}"
        );
    }
}

#[test]
fn byte_size_flags_and_variables_take_units() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        proxy: ProxyArgs,
    }
    let cli = Cli::try_parse_from([
        "kubemux",
        "--queue-max-bytes",
        "8 MiB",
        "--max-message-size",
        "64KiB",
    ])
    .unwrap();
    assert_eq!(cli.proxy.queue_max_bytes, Some(8 << 20));
    assert_eq!(cli.proxy.max_message_size, Some(64 << 10));
    let err = Cli::try_parse_from(["kubemux", "--queue-memory-budget", "2 GB"])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("--queue-memory-budget") && err.contains("GiB"),
        "{err}"
    );
}

#[test]
fn the_subscription_api_needs_a_usable_jwt_key() {
    let err = file("subscriptions_listen = \"127.0.0.1:0\"").unwrap_err();
    assert!(err.to_string().contains("jwt_hs256_secret_file"), "{err}");
    let err = file("jwt_public_key_file = \"/nonexistent/kubemux-key.pem\"").unwrap_err();
    assert!(err.to_string().contains("kubemux-key.pem"), "{err}");
    let err = file("jwt_user_claim = \"\"").unwrap_err();
    assert!(err.to_string().contains("jwt_user_claim"), "{err}");
    let key = std::env::temp_dir().join(format!("kubemux-config-test-{}", std::process::id()));
    std::fs::write(&key, "secret\n").unwrap();
    let toml = format!(
        "subscriptions_listen = \"127.0.0.1:0\"\njwt_hs256_secret_file = {:?}\njwt_audience = \"a\"\n",
        key.display().to_string()
    );
    let s = file(&toml).unwrap();
    let again = file(&s.to_toml()).unwrap();
    assert_eq!(s, again);
    assert!(
        s.console_auth(&Arc::new(Metrics::new()), None)
            .unwrap()
            .is_some()
    );
}

#[test]
fn every_default_given_as_its_flag_reads_back_as_the_default() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        proxy: ProxyArgs,
    }
    let defaults = Settings::default();
    let mut argv = vec!["kubemux".to_string()];
    for line in defaults.to_toml().lines().filter(|l| !l.starts_with('#')) {
        let (key, value) = line.split_once(" = ").unwrap();
        match value {
            "false" | "[]" => {}
            _ => argv.extend([
                format!("--{}", key.replace('_', "-")),
                value.replace('"', ""),
            ]),
        }
    }
    let cli = Cli::try_parse_from(&argv).unwrap();
    let given = Settings::from_toml(&cli.proxy, "", "none").unwrap();
    assert_eq!(given, defaults, "{argv:?}");
    let file = file(&defaults.to_toml());
    assert_eq!(file.unwrap(), defaults);
}

/// The subsystems' configurations that settings land in, to compare.
fn landed(c: &ServerConfig, hub: &HubConfig) -> String {
    format!(
        "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {hub:?}",
        c.headlamp, c.dashboard, c.notifications, c.console, c.limits, c.queue, c.ready_budget,
    )
}

#[test]
fn the_defaults_are_the_subsystems_own() {
    let s = Settings::default();
    assert_eq!(
        landed(&s.server_config(&Arc::new(Metrics::new())), &s.hub_config()),
        landed(&ServerConfig::default(), &HubConfig::default())
    );
}

#[test]
fn stripping_managed_fields_is_off_unless_asked_and_reaches_the_upstream_watches() {
    let strips = |s: Settings| s.hub_config().upstream.transform.strip_managed_fields;
    assert!(!strips(Settings::default()));
    assert!(strips(file("strip_managed_fields = true\n").unwrap()));
    let args = ProxyArgs {
        strip_managed_fields: Some(true),
        ..ProxyArgs::default()
    };
    assert!(strips(
        Settings::from_toml(&args, "strip_managed_fields = false\n", "t").unwrap()
    ));
}

#[test]
fn dialect_settings_reach_their_dialect_from_the_file_and_flags() {
    let file = "console_max_subscriptions = 2\ndashboard_message_rate = 120\n\
                notifications_pong_timeout = \"7s\"\nbacklog_messages = 9\n\
                console_idle_timeout = \"0s\"\nconsole_write_timeout = \"4s\"\n";
    let args = ProxyArgs {
        dashboard_ping_interval: Some(Duration::from_secs(3)),
        console_max_log_streams: Some(1),
        write_timeout: Some(Duration::from_secs(2)),
        ..ProxyArgs::default()
    };
    let s = Settings::from_toml(&args, file, "t").unwrap();
    let c = s.server_config(&Arc::new(Metrics::new()));
    assert_eq!(c.console.max_subscriptions, 2);
    assert_eq!(c.console.max_log_streams, 1);
    assert_eq!(c.console.liveness.idle_timeout, None);
    assert_eq!(c.console.liveness.write_timeout, Duration::from_secs(4));
    assert_eq!(c.headlamp.liveness.write_timeout, Duration::from_secs(2));
    assert_eq!(c.dashboard.message_rate, 2.0, "120 per minute");
    assert_eq!(c.dashboard.liveness.ping_interval, Duration::from_secs(3));
    assert_eq!(
        c.notifications.liveness.pong_timeout,
        Duration::from_secs(7)
    );
    assert_eq!(c.headlamp.backlog_messages, 9);
    assert_eq!(
        c.headlamp.max_subscriptions,
        ServerConfig::default().headlamp.max_subscriptions
    );
}

#[test]
fn an_out_of_range_dialect_value_names_the_setting_and_its_range() {
    for (toml, expected) in [
        (
            "console_max_subscriptions = 0",
            "invalid console_max_subscriptions = 0: accepted 1 to 100000",
        ),
        (
            "dashboard_message_rate = 0",
            "invalid dashboard_message_rate = 0: accepted 1 to 6000000 per minute",
        ),
        (
            "console_idle_timeout = \"25h\"",
            "invalid console_idle_timeout = 25h: accepted 0s (never) to 24h",
        ),
        (
            "notifications_max_message_size = \"128 MiB\"",
            "invalid notifications_max_message_size = 134217728: accepted 256 to 67108864 bytes (256 to 64 MiB)",
        ),
        (
            "backlog_bytes = \"lots\"",
            "invalid backlog_bytes = lots: accepted 4096 to 1073741824 bytes (4 KiB to 1 GiB), written as",
        ),
        (
            "dashboard_pong_timeout = 10",
            "invalid dashboard_pong_timeout = 10: accepted 1s to 10m, written as a number and a unit",
        ),
    ] {
        let err = file(toml).unwrap_err();
        assert!(err.to_string().starts_with(expected), "{toml}: {err}");
    }
}

/// README's settings reference as the table declares it.
fn reference_markdown() -> String {
    let described = Settings::described();
    let mut out = String::new();
    let mut group = "";
    for d in &described {
        if d.group != group {
            group = d.group;
            out.push_str(&format!(
                "\n#### {group}\n\n| flag | default | accepted | what |\n|---|---|---|---|\n"
            ));
        }
        let cell = |s: &str| s.replace('|', "\\|");
        out.push_str(&format!(
            "| `{}` | `{}` | {} | {} |\n",
            d.flag(),
            cell(&d.default),
            cell(d.accepted.as_deref().unwrap_or("")),
            cell(d.doc)
        ));
    }
    out
}

#[test]
fn readme_lists_every_setting_as_the_table_declares_it() {
    let readme = include_str!("../../README.md");
    let start =
        "<!-- settings: the settings! table in src/config/mod.rs; config::tests checks it -->\n";
    let end = "<!-- end of settings -->";
    let quoted = readme
        .split_once(start)
        .and_then(|(_, rest)| rest.split_once(end))
        .map(|(quoted, _)| quoted)
        .expect("README marks its settings reference");
    let expected = reference_markdown();
    assert!(
        quoted.trim() == expected.trim(),
        "README's settings reference is out of date; between its markers it should read:\n{expected}"
    );
}

#[test]
fn strings_print_as_toml_reads_them() {
    let s =
        file("jwt_user_claim = \"a\\\"b\\\\c\\u0001é\"\nallowed_origins = [\"x\\\"y\", \"z\"]\n")
            .unwrap();
    assert_eq!(s.jwt_user_claim, "a\"b\\c\u{1}é");
    assert_eq!(file(&s.to_toml()).unwrap(), s);
}
