//! The node's TOML config: a serde mirror of the file, then a validated
//! runtime [`NodeConfig`]. Unknown keys and bad values are errors naming the
//! key, before anything starts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use sharenet_p2p::{Identity, Multiaddr, PeerId, Protocol, parse_multiaddrs};
use sharenet_proto::{Capabilities, MAX_ADVERT_TTL_MS, NanoUsd};

/// Environment variables that override `node.toml`: `SHARENET_NODE_<KEY>`.
pub const ENV_PREFIX: &str = "SHARENET_NODE_";

/// The effective `node.toml` (file plus environment) as TOML, for
/// `sharenet-node config-check` (the node's file holds no secrets: API
/// keys of upstreams are named by environment variable).
pub fn effective(path: &Path) -> anyhow::Result<String> {
    Ok(sharenet_daemon::config::effective(path, ENV_PREFIX, &[])?)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    identity_file: PathBuf,
    data_dir: PathBuf,
    #[serde(default = "default_listen")]
    listen: Vec<String>,
    #[serde(default)]
    bootstrap: Vec<String>,
    /// Relays to listen through when the node cannot be dialled (NAT).
    #[serde(default)]
    relays: Vec<String>,
    /// The coordinators (PeerIds) whose jobs this node serves; default:
    /// the `/p2p/` ids of `bootstrap`.
    coordinators: Option<Vec<String>>,
    #[serde(default = "default_interval")]
    advert_interval_secs: u64,
    #[serde(default = "default_ttl")]
    advert_ttl_secs: u64,
    region: Option<String>,
    /// The node's stated data policy: it keeps (stores, logs or trains
    /// on) prompts or outputs. Default false: the node itself keeps only
    /// receipts (digests, never text); set it when an upstream you forward
    /// to keeps them.
    #[serde(default)]
    keeps_prompts: bool,
    /// The local API (`/health`, `/ready`, `/status`, `/metrics`), on
    /// loopback only; absent: off.
    admin_listen: Option<String>,
    models: Vec<ModelFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    id: String,
    path: Option<PathBuf>,
    upstream: Option<UpstreamFile>,
    price_in: NanoUsd,
    price_out: NanoUsd,
    #[serde(default = "default_concurrency")]
    max_concurrency: u32,
    #[serde(default = "default_queue")]
    max_queue: u32,
    #[serde(default = "default_kv_cache_mb")]
    kv_cache_mb: u64,
    device: Option<String>,
    /// The weights' license (e.g. `apache-2.0`), when the model files do
    /// not state it (GGUF `general.license`, a model card's front matter).
    license: Option<String>,
    /// The weights' network-wide name (e.g.
    /// `meta-llama/llama-3.1-8b-instruct:q4_k_m`); default: from the model
    /// files, slugged, with the quantization.
    canonical: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamFile {
    base_url: String,
    model: String,
    api_key_env: Option<String>,
    #[serde(default = "default_upstream_context")]
    context_length: u32,
    #[serde(default = "default_upstream_timeout")]
    timeout_secs: u64,
    /// The server takes `tools` and answers with `tool_calls`.
    #[serde(default)]
    tools: bool,
    /// The server enforces `response_format` `json_object` / `json_schema`.
    #[serde(default)]
    structured_outputs: bool,
    /// The served model's tokenizer (`tokenizer.json`, a folder holding
    /// one, or the `.gguf` whose metadata carries it): the node counts the
    /// server's output with it instead of trusting the server's `usage`.
    tokenizer: Option<PathBuf>,
}

fn default_kv_cache_mb() -> u64 {
    2048
}
fn default_upstream_context() -> u32 {
    4096
}
fn default_upstream_timeout() -> u64 {
    300
}

fn default_listen() -> Vec<String> {
    vec![
        "/ip4/0.0.0.0/udp/0/quic-v1".into(),
        "/ip4/0.0.0.0/tcp/0".into(),
    ]
}
fn default_interval() -> u64 {
    10
}
fn default_ttl() -> u64 {
    30
}
fn default_concurrency() -> u32 {
    2
}
fn default_queue() -> u32 {
    16
}

/// An OpenAI-compatible server the node forwards a model's jobs to.
/// (`Debug` never shows the API key.)
#[derive(Clone, PartialEq)]
pub struct UpstreamConfig {
    /// e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    /// The model name the upstream server expects.
    pub model: String,
    /// Bearer key (read from the environment variable the config names).
    pub api_key: Option<String>,
    /// Advertised context window.
    pub context_length: u32,
    /// Longest a whole job may take upstream.
    pub timeout: Duration,
    /// What the server supports beyond text, as the provider declares it
    /// (advertised; requests that need it are passed through).
    pub capabilities: Capabilities,
    /// The served model's tokenizer (a `tokenizer.json`, a folder holding
    /// one, or a `.gguf`). With it the node re-tokenizes the streamed text
    /// and every delta carries the ids it counts; without it each streamed
    /// chunk counts as one token and deltas carry no ids. Never the
    /// server's own `usage`.
    pub tokenizer: Option<PathBuf>,
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("context_length", &self.context_length)
            .field("timeout", &self.timeout)
            .field("capabilities", &self.capabilities)
            .field("tokenizer", &self.tokenizer)
            .finish()
    }
}

/// Which device a local model runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The first GPU when the node is built with `cuda` and one is found;
    /// otherwise the CPU.
    Auto,
    Cpu,
    /// This CUDA device (needs the `cuda` build).
    Cuda(usize),
}

impl DeviceChoice {
    /// `auto`, `cpu` or `cuda:N`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            "cpu" => Some(Self::Cpu),
            _ => s.strip_prefix("cuda:")?.parse().ok().map(Self::Cuda),
        }
    }
}

/// Where a model's inference runs.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// A Hugging Face folder (text or BERT embedding model) or a `.gguf` file.
    Local(PathBuf),
    /// Forwarded to an OpenAI-compatible server.
    Upstream(UpstreamConfig),
}

/// One model the node serves.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The name builders ask for.
    pub id: String,
    pub source: ModelSource,
    /// nano-USD per prompt token.
    pub price_in: NanoUsd,
    /// nano-USD per generated token.
    pub price_out: NanoUsd,
    /// Jobs generated at once.
    pub max_concurrency: u32,
    /// Jobs allowed to wait for a slot; beyond that jobs are refused.
    pub max_queue: u32,
    /// KV cache memory all running jobs of this model may reserve.
    pub kv_cache_bytes: usize,
    /// Device for a local model.
    pub device: DeviceChoice,
    /// Adversary simulation for tests only (never read from a config file):
    /// advertise this weights hash instead of the real one, as a node that
    /// serves a cheaper model under an honest model's name would. Spot
    /// checks exist to catch exactly this.
    #[doc(hidden)]
    pub claimed_weights_sha256: Option<[u8; 32]>,
    /// The weights' license, stated by the provider; else what the model
    /// files say.
    pub license: Option<String>,
    /// The weights' network-wide name, stated by the provider; else
    /// derived from the model files.
    pub canonical: Option<String>,
}

impl ModelConfig {
    /// A local model at `path` with default limits.
    pub fn local(id: &str, path: PathBuf, price_in: NanoUsd, price_out: NanoUsd) -> Self {
        Self {
            id: id.to_string(),
            source: ModelSource::Local(path),
            price_in,
            price_out,
            max_concurrency: default_concurrency(),
            max_queue: default_queue(),
            kv_cache_bytes: (default_kv_cache_mb() as usize) << 20,
            device: DeviceChoice::Cpu,
            claimed_weights_sha256: None,
            license: None,
            canonical: None,
        }
    }
}

/// A validated node configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub identity: Identity,
    pub data_dir: PathBuf,
    /// Direct listen addresses; may be empty behind NAT when `relays` is set.
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    /// Relays (with `/p2p/<id>`) to reserve a slot on and be reached
    /// through, for a node behind NAT; hole punching (DCUtR) then upgrades
    /// connections to direct where the NAT allows.
    pub relays: Vec<Multiaddr>,
    pub advert_interval: Duration,
    pub advert_ttl: Duration,
    /// Where the node is (advertised for region-restricted requests).
    pub region: Option<String>,
    pub models: Vec<ModelConfig>,
    /// The only peers whose job streams this node serves: its
    /// coordinators. Any other peer is refused before its request is read.
    pub coordinators: Vec<PeerId>,
    /// The node's stated data policy (advertised): it keeps prompts.
    pub keeps_prompts: bool,
    /// Where the local API listens (loopback); `None`: off.
    pub admin_listen: Option<std::net::SocketAddr>,
}

/// The peer ids named in `/p2p/` components of `addrs`.
pub fn peer_ids_in(addrs: &[Multiaddr]) -> Vec<PeerId> {
    let mut out = Vec::new();
    for a in addrs {
        for p in a.iter() {
            if let Protocol::P2p(id) = p
                && !out.contains(&id)
            {
                out.push(id);
            }
        }
    }
    out
}

impl NodeConfig {
    /// Reads and validates a config file. Relative paths in it are relative
    /// to the file's folder. The identity key must exist (`sharenet-node init`).
    /// Reads `path`, with any setting overridden from the environment
    /// (`SHARENET_NODE_<KEY>`, `__` for a nested table; see
    /// `sharenet_daemon::config`).
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let file: NodeFile = sharenet_daemon::config::layered(path, ENV_PREFIX)
            .with_context(|| format!("read node config {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let identity_path = base.join(&file.identity_file);
        let identity = Identity::load(&identity_path).context("load identity_file")?;
        let mut models = Vec::with_capacity(file.models.len());
        for (i, m) in file.models.into_iter().enumerate() {
            let source = match (m.path, m.upstream) {
                (Some(path), None) => ModelSource::Local(base.join(path)),
                (None, Some(u)) => {
                    let api_key = match &u.api_key_env {
                        None => None,
                        Some(var) => Some(std::env::var(var).with_context(|| {
                            format!("models[{i}].upstream.api_key_env: read ${var}")
                        })?),
                    };
                    if !(u.base_url.starts_with("http://") || u.base_url.starts_with("https://")) {
                        bail!("models[{i}].upstream.base_url: must start with http:// or https://");
                    }
                    ModelSource::Upstream(UpstreamConfig {
                        base_url: u.base_url.trim_end_matches('/').to_string(),
                        model: u.model,
                        api_key,
                        context_length: u.context_length,
                        timeout: Duration::from_secs(u.timeout_secs),
                        capabilities: Capabilities {
                            tools: u.tools,
                            structured_outputs: u.structured_outputs,
                        },
                        tokenizer: u.tokenizer.map(|t| base.join(t)),
                    })
                }
                _ => bail!("models[{i}]: set exactly one of `path` or `upstream`"),
            };
            let device = match m.device.as_deref() {
                None => DeviceChoice::Auto,
                Some(d) => DeviceChoice::parse(d).with_context(|| {
                    format!("models[{i}].device: {d:?} is not one of \"auto\", \"cpu\", \"cuda:N\"")
                })?,
            };
            models.push(ModelConfig {
                device,
                id: m.id,
                source,
                price_in: m.price_in,
                price_out: m.price_out,
                max_concurrency: m.max_concurrency,
                max_queue: m.max_queue,
                kv_cache_bytes: usize::try_from(m.kv_cache_mb.saturating_mul(1 << 20))
                    .unwrap_or(usize::MAX),
                claimed_weights_sha256: None,
                license: m.license.filter(|l| !l.trim().is_empty()),
                canonical: m
                    .canonical
                    .map(|c| sharenet_proto::model_slug(&c))
                    .filter(|c| !c.is_empty()),
            });
        }
        let bootstrap = parse_multiaddrs("bootstrap", &file.bootstrap)?;
        let coordinators = match &file.coordinators {
            None => peer_ids_in(&bootstrap),
            Some(ids) => ids
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    id.parse::<PeerId>()
                        .with_context(|| format!("coordinators[{i}]: {id:?} is not a PeerId"))
                })
                .collect::<anyhow::Result<_>>()?,
        };
        let config = Self {
            identity,
            data_dir: base.join(file.data_dir),
            listen: parse_multiaddrs("listen", &file.listen)?,
            bootstrap,
            coordinators,
            relays: parse_multiaddrs("relays", &file.relays)?,
            advert_interval: Duration::from_secs(file.advert_interval_secs),
            advert_ttl: Duration::from_secs(file.advert_ttl_secs),
            region: file.region,
            models,
            keeps_prompts: file.keeps_prompts,
            admin_listen: match &file.admin_listen {
                None => None,
                Some(a) => Some(a.parse().with_context(|| {
                    format!("admin_listen: {a:?} is not an address like 127.0.0.1:9470")
                })?),
            },
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks values a file or a caller could get wrong.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.models.is_empty() {
            bail!("models: at least one [[models]] entry is required");
        }
        for (i, m) in self.models.iter().enumerate() {
            if m.id.is_empty() || m.id.len() > 128 {
                bail!("models[{i}].id: must be 1 to 128 bytes");
            }
            if self.models[..i].iter().any(|o| o.id == m.id) {
                bail!("models[{i}].id: {:?} appears twice", m.id);
            }
            if m.max_concurrency == 0 {
                bail!("models[{i}].max_concurrency: must be at least 1");
            }
            if m.license.as_ref().is_some_and(|l| l.len() > 64) {
                bail!(
                    "models[{i}].license: at most 64 bytes (an SPDX-style id such as \"apache-2.0\")"
                );
            }
        }
        if let Some(a) = self.admin_listen
            && !a.ip().is_loopback()
        {
            bail!(
                "admin_listen: {a} is not loopback; the local API has no authentication (use 127.0.0.1)"
            );
        }
        if self.listen.is_empty() && self.relays.is_empty() {
            bail!(
                "listen: at least one address is required (or, behind NAT, `relays` to be reached through)"
            );
        }
        if let Some(r) = self
            .relays
            .iter()
            .find(|r| !matches!(r.iter().last(), Some(sharenet_p2p::Protocol::P2p(_))))
        {
            bail!("relays: {r} must end in /p2p/<relay peer id>");
        }
        if self.advert_interval.is_zero() {
            bail!("advert_interval_secs: must be at least 1");
        }
        if self.advert_ttl <= self.advert_interval {
            bail!("advert_ttl_secs: must be longer than advert_interval_secs");
        }
        if self.advert_ttl.as_millis() > u128::from(MAX_ADVERT_TTL_MS) {
            bail!(
                "advert_ttl_secs: at most {} seconds",
                MAX_ADVERT_TTL_MS / 1000
            );
        }
        Ok(())
    }
}

/// The commented config `sharenet-node init` writes.
pub fn template(model_dir: &str) -> String {
    format!(
        r#"# sharenet-node configuration. Relative paths are relative to this file.

# The node's ed25519 key (created by `sharenet-node init`, mode 0600). It
# signs adverts and receipts, and the node's libp2p PeerId derives from it.
identity_file = "identity.key"

# Where the node keeps its own receipts (sled).
data_dir = "data"

# libp2p listen addresses: QUIC first, TCP as fallback. Port 0 = any port.
listen = ["/ip4/0.0.0.0/udp/4001/quic-v1", "/ip4/0.0.0.0/tcp/4001"]

# Coordinators (or other peers) to join the network through, e.g.
# "/ip4/203.0.113.7/udp/4000/quic-v1/p2p/12D3KooW...".
bootstrap = []

# The coordinators whose jobs this node serves (their PeerIds); any other
# peer that opens a job stream is refused before its request is read.
# Default: the /p2p/ ids in `bootstrap`.
# coordinators = ["12D3KooW..."]

# Behind NAT (nobody can dial this machine)? Name relays to be reached
# through (a coordinator relays by default), e.g. the bootstrap address
# above; `listen` may then be empty. AutoNAT tells the node whether it is
# reachable, and hole punching (DCUtR) upgrades relayed connections to
# direct ones where the NAT allows. Other peers find it through Kademlia.
relays = []

# Where this node is, for builders who restrict requests to a region.
# region = "eu-west"
admin_listen = "127.0.0.1:9470"   # local API: /health /ready /status /metrics
# keeps_prompts = false  # your data policy, advertised: set true if anything you
#                        # forward to stores, logs or trains on prompts

# Adverts are re-published every interval and expire after the TTL.
advert_interval_secs = 10
advert_ttl_secs = 30

# One [[models]] table per model served. `path` is either a Hugging
# Face-style folder (config.json, tokenizer.json, tokenizer_config.json,
# model.safetensors or shards; Llama, Mistral and Qwen2 text models, or a
# BERT sentence-embedding model) or a single .gguf file (quantized).
# Prices are integers in nano-USD (1e-9 USD) per token:
# 200 nano-USD per token = $0.20 per million tokens.
[[models]]
id = "tiny-llama"
path = "{model_dir}"
price_in = 100
price_out = 200
max_concurrency = 2   # sequences decoded together (continuous batching)
max_queue = 16        # jobs waiting for a slot; beyond this jobs are refused
kv_cache_mb = 2048    # KV cache all running jobs may reserve (on a GPU: device
                      # memory, allocated at load)
# device = "auto"     # "auto" (GPU 0 in a CUDA build, scripts/cargo-cuda, on a
#                     # machine with a driver; else the CPU), "cpu", "cuda:0"
# license = "apache-2.0"  # advertised; default: GGUF general.license or the model card
# canonical = "meta-llama/llama-3.1-8b-instruct:q8_0"  # one market across nodes;
#                        # default: the weights' own name, slugged, + quantization

# A model served by an OpenAI-compatible server you already run (vLLM,
# SGLang, llama.cpp server, Ollama, or a hosted API):
# [[models]]
# id = "llama-3.1-8b"
# price_in = 50
# price_out = 150
# max_concurrency = 8
# [models.upstream]
# base_url = "http://127.0.0.1:8000/v1"
# model = "meta-llama/Llama-3.1-8B-Instruct"
# api_key_env = "UPSTREAM_API_KEY"   # optional
# context_length = 8192
# timeout_secs = 300
# tools = true                # the server takes `tools` (vLLM with a tool parser,
#                             # llama.cpp server with --jinja)
# structured_outputs = true   # the server enforces response_format json_schema
# tokenizer = "models/Llama-3.1-8B-Instruct/tokenizer.json"  # or the .gguf the
#                             # server runs: the node counts the output tokens
#                             # itself (never the server's `usage`); without it
#                             # each streamed chunk counts as one token
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, body: &str) -> PathBuf {
        Identity::create(&dir.join("identity.key")).unwrap();
        let path = dir.join("node.toml");
        std::fs::write(&path, body).unwrap();
        path
    }

    #[test]
    fn template_parses() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &template("models/tiny"));
        let cfg = NodeConfig::from_file(&path).unwrap();
        assert_eq!(cfg.models[0].price_out, 200);
        assert!(
            matches!(&cfg.models[0].source, ModelSource::Local(p) if *p == dir.path().join("models/tiny"))
        );
        assert_eq!(cfg.advert_ttl, Duration::from_secs(30));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let body = template("m").replace("max_queue = 16", "max_qeue = 16");
        let err = format!(
            "{:#}",
            NodeConfig::from_file(&write(dir.path(), &body)).unwrap_err()
        );
        assert!(err.contains("max_qeue"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let body = template("m").replace("advert_ttl_secs = 30", "advert_ttl_secs = 5");
        let err = format!(
            "{:#}",
            NodeConfig::from_file(&write(dir.path(), &body)).unwrap_err()
        );
        assert!(err.contains("advert_ttl_secs"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let body = template("m").replace("bootstrap = []", "bootstrap = [\"nonsense\"]");
        let err = format!(
            "{:#}",
            NodeConfig::from_file(&write(dir.path(), &body)).unwrap_err()
        );
        assert!(err.contains("bootstrap[0]"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let body = template("m").replace(
            "kv_cache_mb = 2048",
            "[models.upstream]\nbase_url = \"http://x/v1\"\nmodel = \"m\"",
        );
        let err = format!(
            "{:#}",
            NodeConfig::from_file(&write(dir.path(), &body)).unwrap_err()
        );
        assert!(err.contains("exactly one of `path` or `upstream`"), "{err}");
    }

    #[test]
    fn devices_parse_and_bad_ones_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = NodeConfig::from_file(&write(dir.path(), &template("m"))).unwrap();
        assert_eq!(cfg.models[0].device, DeviceChoice::Auto);
        let dir = tempfile::tempdir().unwrap();
        let body = template("m").replace("# device = \"auto\"", "device = \"cuda:1\"");
        let cfg = NodeConfig::from_file(&write(dir.path(), &body)).unwrap();
        assert_eq!(cfg.models[0].device, DeviceChoice::Cuda(1));
        let dir = tempfile::tempdir().unwrap();
        let body = template("m").replace("# device = \"auto\"", "device = \"gpu\"");
        let err = format!(
            "{:#}",
            NodeConfig::from_file(&write(dir.path(), &body)).unwrap_err()
        );
        assert!(err.contains("models[0].device"), "{err}");
        // Without the cuda build a CUDA device is a clear error at load.
        if !cfg!(feature = "cuda") {
            let err = format!(
                "{:#}",
                crate::load::device_for(DeviceChoice::Cuda(0)).unwrap_err()
            );
            assert!(err.contains("--features cuda"), "{err}");
        }
    }

    #[test]
    fn upstream_models_parse() {
        let dir = tempfile::tempdir().unwrap();
        let body = template("m").replace("path = \"m\"\n", "").replace(
            "kv_cache_mb = 2048",
            "[models.upstream]\nbase_url = \"http://127.0.0.1:8000/v1/\"\nmodel = \"qwen\"\n\
             tokenizer = \"qwen/tokenizer.json\"",
        );
        let cfg = NodeConfig::from_file(&write(dir.path(), &body)).unwrap();
        match &cfg.models[0].source {
            ModelSource::Upstream(u) => {
                assert_eq!(u.base_url, "http://127.0.0.1:8000/v1");
                assert_eq!(u.context_length, 4096);
                assert_eq!(
                    u.tokenizer.as_deref(),
                    Some(dir.path().join("qwen/tokenizer.json").as_path())
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn debug_never_shows_the_upstream_api_key() {
        let u = UpstreamConfig {
            base_url: "http://127.0.0.1:8000/v1".into(),
            model: "m".into(),
            api_key: Some("sk-very-secret-upstream-key".into()),
            context_length: 4096,
            timeout: Duration::from_secs(1),
            capabilities: Capabilities::default(),
            tokenizer: None,
        };
        let shown = format!("{u:?}");
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn coordinators_default_to_the_bootstrap_peers_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let coordinator = Identity::generate().peer_id();
        let body = template("m").replace(
            "bootstrap = []",
            &format!("bootstrap = [\"/ip4/127.0.0.1/udp/4000/quic-v1/p2p/{coordinator}\"]"),
        );
        let cfg = NodeConfig::from_file(&write(dir.path(), &body)).unwrap();
        assert_eq!(cfg.coordinators, vec![coordinator]);

        let other = Identity::generate().peer_id();
        let listed = body.replace(
            "# coordinators = [\"12D3KooW...\"]",
            &format!("coordinators = [\"{other}\"]"),
        );
        let dir = tempfile::tempdir().unwrap();
        let cfg = NodeConfig::from_file(&write(dir.path(), &listed)).unwrap();
        assert_eq!(
            cfg.coordinators,
            vec![other],
            "an explicit list replaces the default"
        );

        let bad = body.replace(
            "# coordinators = [\"12D3KooW...\"]",
            "coordinators = [\"not-a-peer\"]",
        );
        let dir = tempfile::tempdir().unwrap();
        let err = format!(
            "{:#}",
            NodeConfig::from_file(&write(dir.path(), &bad)).unwrap_err()
        );
        assert!(err.contains("coordinators[0]"), "{err}");
    }
}
