//! Shared harness for the integration tests: start the real `switchyard` binary on
//! ephemeral loopback ports with a policy written by the test, start mock backends, send
//! requests, read metrics. Each test reads as a user story on top of this.

#![allow(dead_code)]

pub mod json_schema;
pub mod kubelet;
pub mod otlp;
pub mod policy;
pub mod report;

#[allow(unused_imports)]
pub use policy::{Policy, Pool, Route, Tenant, Tier};

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use switchyard_testkit::client::{self, Request, Response};
use switchyard_testkit::fleet::MockSpec;
use switchyard_testkit::mock::MockBackend;

/// A free port on 127.0.0.1 (bound, read, released), never one this test process handed out
/// before. The kernel can give a just-released port to the next `bind(0)`, and Pingora
/// listens with `SO_REUSEPORT`: two tests running in parallel that were handed the same
/// port would both bind it without an error and share its connections (a TLS handshake
/// then reached another test's plain-HTTP listener and ended in "tls handshake eof", in
/// `tests/tls.rs` on CI). Other processes can still race for it; the gateway's own ports are
/// also checked through `/readyz` (see [`Gateway::start_file`]).
pub fn free_addr() -> SocketAddr {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let mut seen = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if !seen.contains(&addr.port()) {
            seen.push(addr.port());
            return addr;
        }
    }
}

/// An address nothing listens on (bound then closed).
pub fn dead_addr() -> SocketAddr {
    free_addr()
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_switchyard"))
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A running gateway (child process) and where it listens.
pub struct Gateway {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub policy_path: PathBuf,
    child: Child,
}

impl Gateway {
    /// Write `policy` to a temp file and start `switchyard run` on fresh ports.
    pub async fn start(policy: &str) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let policy_path = dir.path().join("policy.yaml");
        std::fs::write(&policy_path, policy).expect("write policy");
        Self::start_file(dir, policy_path).await
    }

    pub async fn start_file(dir: tempfile::TempDir, policy_path: PathBuf) -> Gateway {
        Self::start_file_with(dir, policy_path, &[]).await
    }

    /// [`Gateway::start`] with extra `switchyard run` arguments (e.g. `--region us`).
    pub async fn start_with(policy: &str, args: &[&str]) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let policy_path = dir.path().join("policy.yaml");
        std::fs::write(&policy_path, policy).expect("write policy");
        Self::start_file_with(dir, policy_path, args).await
    }

    pub async fn start_file_with(
        dir: tempfile::TempDir,
        policy_path: PathBuf,
        args: &[&str],
    ) -> Gateway {
        let mut gw = Self::spawn(dir, policy_path, args);
        // The ports are picked by bind-and-release, so another test may take one first: the
        // gateway then refuses to start ("cannot listen on …") and gets fresh ports.
        for _ in 0..3 {
            match gw.try_ready().await {
                Err(log) if log.contains("cannot listen on") => {
                    gw = Self::spawn(
                        std::mem::replace(&mut gw.dir, tempfile::tempdir().expect("tempdir")),
                        gw.policy_path.clone(),
                        args,
                    );
                }
                Err(log) => panic!("{log}"),
                Ok(()) => return gw,
            }
        }
        gw.wait_ready().await;
        gw
    }

    fn spawn(dir: tempfile::TempDir, policy_path: PathBuf, args: &[&str]) -> Gateway {
        let proxy = free_addr();
        let admin = free_addr();
        let log = std::fs::File::create(dir.path().join("gateway.log")).expect("log file");
        let child = Command::new(binary())
            .args(["run", "--policy"])
            .arg(&policy_path)
            .args([
                "--listen",
                &proxy.to_string(),
                "--admin-listen",
                &admin.to_string(),
            ])
            .args(args)
            .env("RUST_LOG", "warn,switchyard::access=off")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn switchyard");
        Gateway {
            proxy,
            admin,
            dir,
            policy_path,
            child,
        }
    }

    async fn wait_ready(&mut self) {
        if let Err(e) = self.try_ready().await {
            panic!("{e}");
        }
    }

    /// Wait until `/readyz` says ready (which includes: the proxy listener is this
    /// process's); the reason and the log when it exits or does not get there in 20 s.
    async fn try_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "switchyard exited early ({status}):\n{}",
                    self.log()
                ));
            }
            if let Ok(r) = client::send(self.admin, &Request::get("/readyz")).await {
                if r.status == 200 && tokio::net::TcpStream::connect(self.proxy).await.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("switchyard did not become ready:\n{}", self.log()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The gateway's process id (to send it signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait up to `patience` for the gateway process to exit; its exit status if it did.
    pub async fn wait_exit(&mut self, patience: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + patience;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /admin/pools` as JSON.
    pub async fn pools(&self) -> serde_json::Value {
        let r = self.admin_get("/admin/pools").await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json().expect("pools json")
    }

    /// Send the gateway a signal by name (`HUP`, `TERM`, …) with `kill`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("gateway.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// POST a JSON body to the proxy with extra headers.
    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> Response {
        let mut req =
            Request::post(path, body.as_bytes()).header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(k, v);
        }
        client::send(self.proxy, &req)
            .await
            .expect("request to gateway")
    }

    pub async fn admin_get(&self, path: &str) -> Response {
        client::send(self.admin, &Request::get(path))
            .await
            .expect("admin request")
    }

    pub async fn admin_post(&self, path: &str, body: &str) -> Response {
        let req = Request::post(path, body.as_bytes()).header("content-type", "application/json");
        client::send(self.admin, &req).await.expect("admin request")
    }

    /// Scrape `/metrics` until `ready` holds (the access-log phase that counts a request
    /// runs just after its response is written), at most 5 s; returns the last scrape.
    pub async fn metrics_when(&self, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let m = self.metrics().await;
            if ready(&m) || Instant::now() > deadline {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        let r = self.admin_get("/metrics").await;
        assert_eq!(r.status, 200);
        String::from_utf8_lossy(&r.body).into_owned()
    }
}

impl Gateway {
    /// `SIGKILL` the gateway (no shutdown at all), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start the gateway again (same policy file and directory, fresh ports), e.g. after
    /// [`kill`](Self::kill).
    pub async fn restart(&mut self) {
        self.kill();
        self.proxy = free_addr();
        self.admin = free_addr();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.dir.path().join("gateway.log"))
            .expect("log file");
        self.child = Command::new(binary())
            .args(["run", "--policy"])
            .arg(&self.policy_path)
            .args([
                "--listen",
                &self.proxy.to_string(),
                "--admin-listen",
                &self.admin.to_string(),
            ])
            .env("RUST_LOG", "warn,switchyard::access=off")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn switchyard");
        self.wait_ready().await;
    }

    /// GET on the proxy with extra headers.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut req = Request::get(path);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        client::send(self.proxy, &req)
            .await
            .expect("request to gateway")
    }

    /// Any method on the proxy, without a body: (status, body).
    pub async fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        raw_request(self.proxy, method, path, headers).await
    }
}

/// A bare HTTP/1.1 request without a body, for methods the test client does not model.
pub async fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-length: 0\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// An HTTP sink on loopback that answers 200 to anything and keeps each request's body:
/// for callbacks and other outbound deliveries.
pub async fn sink() -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind sink");
    let addr = listener.local_addr().expect("addr");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            kept.lock().unwrap().push(body.to_string());
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, seen)
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start a mock backend on a fresh loopback port.
pub async fn mock(name: &str, latency_ms: u64) -> MockBackend {
    MockSpec::new(name, Duration::from_millis(latency_ms), Duration::ZERO)
        .start()
        .await
        .expect("start mock")
}

/// The sum of a metric's samples whose label set contains every `k="v"` in `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Run `switchyard` with arguments; returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let out = Command::new(binary())
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run switchyard");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The chat request body used across tests.
pub fn chat(model: &str) -> String {
    format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hello"}}]}}"#)
}

/// The shared test Redis (`SWITCHYARD_TEST_REDIS`, which `.ci/run` starts and sets): required
/// under CI, where a missing one fails the test; elsewhere the `what` test is skipped loudly.
pub fn test_redis(what: &str) -> Option<String> {
    match std::env::var("SWITCHYARD_TEST_REDIS") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("SWITCHYARD_TEST_REDIS is not set under CI: .ci/run must start redis-server")
        }
        _ => {
            eprintln!("\n!!! SKIPPING Redis {what} test: set SWITCHYARD_TEST_REDIS=redis://127.0.0.1:6390 (see .ci/run) !!!\n");
            None
        }
    }
}

/// A `redis-server` of the `what` test's own (one it may stop, hang or restart): required
/// under CI, where `.ci/run` installs it and a failure to start fails the test; elsewhere
/// the test is skipped loudly without one, as [`test_redis`] does.
pub fn own_redis(what: &str) -> Option<OwnRedis> {
    let started = redis_server_available()
        .then(|| OwnRedis::start(None))
        .flatten();
    if started.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("cannot start redis-server under CI: .ci/run must install it");
        }
        eprintln!("\n!!! SKIPPING Redis {what} test: cannot start redis-server !!!\n");
    }
    started
}

/// A `redis-server` of the test's own, on a free port, without persistence.
pub struct OwnRedis {
    pub port: u16,
    pub child: Option<Child>,
}

impl OwnRedis {
    pub fn start(port: Option<u16>) -> Option<OwnRedis> {
        let port = port.unwrap_or_else(|| free_addr().port());
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(OwnRedis {
            port,
            child: Some(child),
        })
    }

    /// `kill -STOP` / `-CONT` this test's own redis-server (by its pid).
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill").args([sig, &pid]).status();
        assert!(ok.is_ok_and(|s| s.success()), "kill {sig} {pid}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn redis_server_available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
