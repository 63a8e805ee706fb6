//! Shared harness for the end-to-end tests: a real coordinator and real
//! nodes (libp2p over QUIC, sled stores, candle models) on loopback, on
//! ephemeral ports, in one process.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use sharenet_coordinator::core::registry::Lookup;
use sharenet_devnet::{self as devnet, Devnet, DevnetOptions};
use sharenet_node::{ModelConfig, NodeConfig, NodeHandle};
use sharenet_p2p::Identity;
use tokio_util::sync::CancellationToken;

pub use sharenet_devnet::DEVNET_MODEL as MODEL;

/// A running test network. Dropping it without [`TestNet::stop`] still
/// cancels everything.
pub struct TestNet {
    net: Option<Devnet>,
    pub http: reqwest::Client,
    cancel: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for TestNet {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl TestNet {
    /// A coordinator and `nodes` nodes serving the tiny model.
    pub async fn start(nodes: usize) -> Self {
        Self::start_with(nodes, |_| {}).await
    }

    /// As [`TestNet::start`], with the devnet options adjusted first.
    pub async fn start_with(nodes: usize, adjust: impl FnOnce(&mut DevnetOptions)) -> Self {
        let dir = tempfile::tempdir().expect("create temp dir");
        let mut opts = DevnetOptions::new(
            dir.path().to_path_buf(),
            "127.0.0.1:0".parse().expect("addr"),
            nodes,
        );
        opts.advert_interval = Duration::from_secs(1);
        opts.advert_ttl = Duration::from_secs(3);
        adjust(&mut opts);
        let cancel = CancellationToken::new();
        let net = devnet::start(opts, cancel.clone())
            .await
            .expect("start the test network");
        Self {
            net: Some(net),
            http: reqwest::Client::new(),
            cancel,
            _dir: dir,
        }
    }

    pub fn net(&self) -> &Devnet {
        self.net.as_ref().expect("network is running")
    }

    pub fn base_url(&self) -> String {
        self.net().coordinator.base_url()
    }

    pub fn key(&self) -> &str {
        &self.net().api_key
    }

    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// POSTs JSON to `/v1/{path}` with the API key.
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}/{path}", self.base_url()))
            .bearer_auth(self.key())
            .json(body)
            .send()
            .await
            .expect("send request")
    }

    /// Calls `/operator/{path}` with the devnet's operator key.
    pub async fn operator(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!(
            "{}/operator/{path}",
            self.base_url().trim_end_matches("/v1")
        );
        let mut req = self
            .http
            .request(method, url)
            .bearer_auth(sharenet_devnet::DEVNET_OPERATOR_KEY);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("send operator request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Creates app `id` (with `margin_bps` margin), tops it up with one USD
    /// and returns a new key of it.
    pub async fn funded_app(&self, id: &str, margin_bps: u32) -> String {
        let (s, v) = self
            .operator(
                reqwest::Method::POST,
                "apps",
                Some(serde_json::json!({"id": id, "builder": format!("{id}-inc"), "margin_bps": margin_bps})),
            )
            .await;
        assert_eq!(s, 200, "create app {id}: {v}");
        let (s, v) = self
            .operator(
                reqwest::Method::POST,
                &format!("apps/{id}/topup"),
                Some(serde_json::json!({"amount_nano_usd": 1_000_000_000u64})),
            )
            .await;
        assert_eq!(s, 200, "top up {id}: {v}");
        let (_, k) = self
            .operator(reqwest::Method::POST, &format!("apps/{id}/keys"), None)
            .await;
        k["key"].as_str().expect("a new key").to_string()
    }

    /// GETs `/v1/{path}` with the API key.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}/{path}", self.base_url()))
            .bearer_auth(self.key())
            .send()
            .await
            .expect("send request")
    }

    /// Starts one more node serving `slow-model` (a 4-layer tiny llama, so
    /// a long generation is still running when a test acts on it) at 100
    /// and 1,000 nano-USD per token in and out.
    pub async fn add_slow_node(&self) -> NodeHandle {
        let dir = self
            ._dir
            .path()
            .join(format!("slow-model-{}", rand_suffix()));
        let shape = sharenet_engine::tiny::TinyConfig {
            hidden_size: 256,
            intermediate_size: 768,
            num_hidden_layers: 4,
            ..Default::default()
        };
        sharenet_engine::tiny::write_tiny_llama(&dir, 1, shape).expect("write the slow model");
        self.add_node(vec![ModelConfig::local("slow-model", dir, 100, 1000)])
            .await
    }

    /// Starts one more node serving `models`, bootstrapped to the
    /// coordinator, and waits until the coordinator routes to all of them.
    pub async fn add_node(&self, models: Vec<ModelConfig>) -> NodeHandle {
        self.add_node_with(models, |_| {}).await
    }

    /// [`TestNet::add_node`] with the node's config adjusted first.
    pub async fn add_node_with(
        &self,
        models: Vec<ModelConfig>,
        adjust: impl FnOnce(&mut NodeConfig),
    ) -> NodeHandle {
        let ids: Vec<String> = models.iter().map(|m| m.id.clone()).collect();
        let dir = self._dir.path().join(format!("extra-{}", rand_suffix()));
        let mut config = NodeConfig {
            identity: Identity::generate(),
            data_dir: dir,
            listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("addr")],
            bootstrap: self.net().coordinator.p2p_addrs.clone(),
            relays: Vec::new(),
            advert_interval: Duration::from_secs(1),
            advert_ttl: Duration::from_secs(3),
            region: None,
            coordinators: vec![self.net().coordinator.peer_id],
            keeps_prompts: false,
            admin_listen: None,
            models,
        };
        adjust(&mut config);
        let node = sharenet_node::start(config, self.cancel.clone())
            .await
            .expect("start the extra node");
        // Wait for this node's own advert for every model (other nodes may
        // already serve the same model names).
        let key = node.public_key();
        let registry = &self.net().coordinator.core.registry;
        wait_for(
            &format!("the new node's models {ids:?} to reach the coordinator"),
            PATIENCE,
            || {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                let missing: Vec<&String> = ids
                    .iter()
                    .filter(|id| match registry.lookup(id, now) {
                        Lookup::Found(offers) => !offers.iter().any(|o| o.advert.node == key),
                        _ => true,
                    })
                    .collect();
                std::future::ready(if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!("not yet advertised: {missing:?}"))
                })
            },
        )
        .await;
        node
    }

    /// Stops everything and waits for every task to end.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(net) = self.net.take() {
            tokio::time::timeout(Duration::from_secs(10), net.wait())
                .await
                .expect("the network shuts down within 10 s");
        }
    }
}

/// How long a test waits for something it expects to happen before it
/// fails: generous, because the suite runs on loaded machines (two cores
/// shared with a workspace build) where a step that takes 50 ms alone can
/// take seconds; a condition that holds at all holds well within it, and
/// one that never holds still fails, only later.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// How often [`wait_for`] looks again: often enough not to slow a test
/// down, rarely enough to be no load of its own.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// Waits for a condition, never for a time: calls `check` until it returns
/// `Ok`, and returns what that carried. While the condition does not hold,
/// `check` returns `Err` with what it saw; once `limit` has passed the
/// test fails naming `what` and that last observed state.
///
/// Tests use this instead of "sleep, then assert that it happened", which
/// fails whenever the machine is slower than the sleep assumed.
pub async fn wait_for<T, S, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    S: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, S>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let seen = match check().await {
            Ok(done) => return done,
            Err(seen) => seen,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}; last seen: {seen:?}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// [`wait_for`] a yes-or-no condition (no state worth showing).
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_for(what, limit, || {
        let holds = check();
        async move { if holds.await { Ok(()) } else { Err("not yet") } }
    })
    .await
}

/// Runs an official client's check script (`program args…` in `dir`, with
/// `envs`), and fails the test with its output unless it exits 0 and
/// prints `OK`.
pub async fn run_client_check(
    program: impl AsRef<std::ffi::OsStr>,
    args: &[&str],
    dir: &std::path::Path,
    envs: &[(&str, String)],
) -> String {
    let output = tokio::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .kill_on_drop(true)
        .output()
        .await
        .expect("run the client check");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("OK"),
        "client check {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
}

/// Fails the test unless `promtool check metrics` (Debian's `prometheus`,
/// installed by scripts/setup-test-deps) accepts the exposition `text`.
pub async fn promtool_check(text: &str) {
    use tokio::io::AsyncWriteExt;
    let mut check = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool: run scripts/setup-test-deps (Debian's prometheus package)");
    let mut stdin = check.stdin.take().expect("promtool's stdin");
    stdin
        .write_all(text.as_bytes())
        .await
        .expect("write to promtool");
    drop(stdin);
    let out = check.wait_with_output().await.expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Parses an SSE body into its `data:` payloads.
pub fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .map(|s| s.trim().to_string())
        .collect()
}

/// The workspace root (for finding the Python test client).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The Python with the test clients: `SHARENET_PYTHON`, else the `.venv`
/// that `scripts/test` creates; fails with how to set it up.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SHARENET_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = workspace_root().join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no Python with the test clients: run `scripts/test` (it creates .venv) or set SHARENET_PYTHON"
    );
    venv
}

/// The real all-MiniLM-L6-v2 folder that scripts/setup-test-deps fetches.
pub fn minilm_dir() -> PathBuf {
    let dir = std::env::var_os("SHARENET_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/test-models/all-minilm-l6-v2"));
    assert!(
        dir.join("model.safetensors").exists(),
        "all-MiniLM-L6-v2 is not at {}: run scripts/setup-test-deps (scripts/test does)",
        dir.display()
    );
    dir
}

/// A real llama.cpp server (llama-cpp-python's, through
/// `tests/python/llama_server.py`) serving `gguf` as `alias` on a free
/// loopback port, once it answers `/v1/models`: the process (killed when
/// dropped) and its OpenAI base URL.
pub async fn start_llama_server(
    gguf: &std::path::Path,
    alias: &str,
    n_ctx: u32,
) -> (tokio::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let server = tokio::process::Command::new(python())
        .arg(workspace_root().join("tests/python/llama_server.py"))
        .args(["--model", &gguf.to_string_lossy(), "--host", "127.0.0.1"])
        .args(["--port", &port.to_string(), "--n_ctx", &n_ctx.to_string()])
        .args(["--model_alias", alias])
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the llama.cpp server");
    let base = format!("http://127.0.0.1:{port}/v1");
    let http = reqwest::Client::new();
    wait_until("the llama.cpp server", Duration::from_secs(120), || async {
        http.get(format!("{base}/models"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    (server, base)
}
