//! The settings table's layering, checks and printing.

use std::time::Duration;

use super::*;

#[test]
fn printed_settings_read_back_identically() {
    let custom = Settings::from_toml(
        &ProxyArgs::default(),
        "linger = \"5s\"\nmax_subscriptions = 7\nlog_format = \"json\"\n",
        "test",
    )
    .unwrap();
    let again = Settings::from_toml(&ProxyArgs::default(), &custom.to_toml(), "printed").unwrap();
    assert_eq!(custom, again);
    assert_eq!(again.linger, Duration::from_secs(5));
    assert_eq!(again.max_subscriptions, 7);
}

#[test]
fn the_documented_example_is_the_defaults() {
    let example = include_str!("../../docs/kubemux.example.toml");
    let s =
        Settings::from_toml(&ProxyArgs::default(), example, "docs/kubemux.example.toml").unwrap();
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
        let err = Settings::from_toml(&ProxyArgs::default(), toml, "t").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(setting) && text.contains("accepted"),
            "{toml}: {text}"
        );
    }
    let err = Settings::from_toml(
        &ProxyArgs::default(),
        "auth = \"none\"\nlisten = \"0.0.0.0:1\"",
        "t",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("--allow-unauthenticated-remote"),
        "{err}"
    );
    assert!(
        Settings::from_toml(
            &ProxyArgs::default(),
            "auth = \"none\"\nlisten = \"0.0.0.0:1\"\nallow_unauthenticated_remote = true",
            "t"
        )
        .is_ok()
    );
    let err = Settings::from_toml(&ProxyArgs::default(), "lingr = \"1s\"", "t").unwrap_err();
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
    let s = Settings::from_toml(
        &ProxyArgs::default(),
        "queue_max_bytes = \"8 MiB\"\nqueue_memory_budget = \"2GiB\"\n\
         max_message_size = 4096\nready_max_queue_bytes = \"1G\"\n",
        "t",
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
        let text = Settings::from_toml(&ProxyArgs::default(), toml, "t")
            .unwrap_err()
            .to_string();
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
    let err = Settings::from_toml(
        &ProxyArgs::default(),
        "subscriptions_listen = \"127.0.0.1:0\"",
        "t",
    )
    .unwrap_err();
    assert!(err.to_string().contains("jwt_hs256_secret_file"), "{err}");
    let err = Settings::from_toml(
        &ProxyArgs::default(),
        "jwt_public_key_file = \"/nonexistent/kubemux-key.pem\"",
        "t",
    )
    .unwrap_err();
    assert!(err.to_string().contains("kubemux-key.pem"), "{err}");
    let err = Settings::from_toml(&ProxyArgs::default(), "jwt_user_claim = \"\"", "t").unwrap_err();
    assert!(err.to_string().contains("jwt_user_claim"), "{err}");
    let key = std::env::temp_dir().join(format!("kubemux-config-test-{}", std::process::id()));
    std::fs::write(&key, "secret\n").unwrap();
    let toml = format!(
        "subscriptions_listen = \"127.0.0.1:0\"\njwt_hs256_secret_file = {:?}\njwt_audience = \"a\"\n",
        key.display().to_string()
    );
    let s = Settings::from_toml(&ProxyArgs::default(), &toml, "t").unwrap();
    let again = Settings::from_toml(&ProxyArgs::default(), &s.to_toml(), "printed").unwrap();
    assert_eq!(s, again);
    assert!(
        s.console_auth(&Arc::new(Metrics::new()), None)
            .unwrap()
            .is_some()
    );
}
