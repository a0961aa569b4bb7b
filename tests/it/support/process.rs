//! Processes a test starts: the real `kubemux` binary, and HAProxy.

use std::net::SocketAddr;
use std::sync::Arc;

use super::{PATIENCE, eventually};

/// A `kubemux` process started by a test, and the address it printed.
pub struct Process {
    pub child: tokio::process::Child,
    pub addr: String,
    /// Every line it has printed on stdout so far (the banner included).
    pub stdout: Arc<std::sync::Mutex<Vec<String>>>,
}

/// Starts the real `kubemux` binary with `args` (stdout and stderr piped,
/// `KUBEMUX_*`/`RUST_LOG` from the test's environment removed unless set
/// in `env`) and waits for its "listening on" line.
pub async fn spawn_kubemux(args: &[&str], env: &[(&str, &str)]) -> Process {
    use tokio::io::AsyncBufReadExt;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubemux"));
    cmd.args(args)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("KUBEMUX_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("kubemux starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let stdout = Arc::new(std::sync::Mutex::new(Vec::new()));
    let addr = loop {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("kubemux prints its address in time")
            .unwrap()
            .expect("kubemux keeps running");
        stdout.lock().unwrap().push(line.clone());
        if let Some(rest) = line.strip_prefix("kubemux listening on http://") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let printed = stdout.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            printed.lock().unwrap().push(line);
        }
    });
    Process {
        child,
        addr,
        stdout,
    }
}

/// `kubemux demo` on free loopback ports (proxy and embedded simulator),
/// with `extra` flags.
pub async fn spawn_demo(extra: &[&str]) -> Process {
    let mut args = vec![
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--sim-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    spawn_kubemux(&args, &[]).await
}

impl Process {
    /// The rest of the first stdout line starting with `prefix`, once printed.
    pub async fn printed(&self, prefix: &str) -> String {
        eventually(&format!("kubemux prints {prefix:?}"), || {
            self.stdout
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.starts_with(prefix))
        })
        .await;
        let lines = self.stdout.lock().unwrap();
        let line = lines.iter().find(|l| l.starts_with(prefix)).unwrap();
        line[prefix.len()..].to_string()
    }

    /// Sends SIGTERM and returns the exit status and everything written to stderr.
    pub async fn terminate(self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().unwrap().to_string();
        let killed = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(killed.success());
        let out = tokio::time::timeout(PATIENCE, self.child.wait_with_output())
            .await
            .expect("kubemux exits in time")
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// `global` and `defaults` of the HAProxy configurations the tests write.
pub const HAPROXY_DEFAULTS: &str = "global\n  maxconn 2000\n\
     defaults\n  mode http\n  timeout connect 1s\n  timeout client 60s\n  timeout server 60s\n  timeout tunnel 1h\n";

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// HAProxy (Debian's package; `.ci/run` installs it) running `config`,
/// which binds `front`; returned once it accepts connections, killed when
/// dropped. Fails the test, naming the package, when it is not installed.
pub async fn start_haproxy(config: &str, front: SocketAddr) -> tokio::process::Child {
    let path = std::env::temp_dir().join(format!(
        "kubemux-test-haproxy-{}-{}.cfg",
        std::process::id(),
        front.port()
    ));
    std::fs::write(&path, config).unwrap();
    let child = tokio::process::Command::new("haproxy")
        .args(["-db", "-f", path.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("haproxy does not start ({e}): `apt-get install haproxy` (.ci/run does)")
        });
    eventually("haproxy listens", || {
        std::net::TcpStream::connect(front).is_ok()
    })
    .await;
    child
}
