//! The status page as a person sees it: headless Chromium renders `/`
//! against a running proxy; a screenshot is kept under `target/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::*;

/// Debian's Chromium, which `.ci/run` installs. Outside CI a machine without
/// it skips this test loudly; in CI its absence is a failure.
fn chromium() -> Option<PathBuf> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is required in CI (.ci/run installs Debian's chromium package)"
        );
        eprintln!(
            "SKIPPED: no chromium on this machine; install Debian's chromium package to run this test"
        );
    }
    found
}

async fn headless(
    chromium: &Path,
    profile: &Path,
    extra: &[&str],
    url: &str,
) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg(url)
    .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("chromium finishes")
        .expect("chromium runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_the_cluster_and_its_shared_watches() {
    let Some(chromium) = chromium() else { return };
    let env = start_default().await;
    let mut c = env.client().await;
    c.request(
        "/api/v1/pods",
        &format!("watch=1&labelSelector=app%3Dweb%2Ctier+in+(a%2Cb)&{OWN_WATCH}"),
    )
    .await;
    env.eventually("the watch is shared", || !env.hub.watches().is_empty())
        .await;
    env.eventually("the cluster has been probed", || {
        env.hub.clusters().all()[0].health().reachable == Some(true)
    })
    .await;
    let url = format!("http://{}/", env.server.addr());
    let profile = tempdir("profile");
    let out = headless(&chromium, &profile, &["--dump-dom"], &url).await;
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(dom.contains("<td>sim</td>"), "the cluster row: {dom}");
    assert!(dom.contains("reachable"), "its health: {dom}");
    assert!(
        dom.contains("<td>/api/v1/pods</td>"),
        "the shared watch: {dom}"
    );
    assert!(
        dom.contains(
            "<td>fieldSelector: spec.hostNetwork=false; labelSelector: app=web,tier in (a,b)</td>"
        ),
        "the selectors, decoded: {dom}"
    );
    assert!(dom.contains("1 shared watch(es)"), "totals: {dom}");
    assert!(dom.contains("1 subscriber(s)"), "totals: {dom}");

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::fs::remove_file(&shot).ok();
    let out = headless(
        &chromium,
        &tempdir("profile-shot"),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,720",
        ],
        &url,
    )
    .await;
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        png.starts_with(b"\x89PNG"),
        "a PNG screenshot at {}",
        shot.display()
    );
}

fn tempdir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("chromium-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
