//! The node's TOML config: a serde mirror of the file, then a validated
//! runtime [`NodeConfig`]. Unknown keys and bad values are errors naming the
//! key, before anything starts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use sharenet_p2p::{Identity, Multiaddr, parse_multiaddrs};
use sharenet_proto::{MAX_ADVERT_TTL_MS, NanoUsd};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    identity_file: PathBuf,
    data_dir: PathBuf,
    #[serde(default = "default_listen")]
    listen: Vec<String>,
    #[serde(default)]
    bootstrap: Vec<String>,
    #[serde(default = "default_interval")]
    advert_interval_secs: u64,
    #[serde(default = "default_ttl")]
    advert_ttl_secs: u64,
    models: Vec<ModelFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    id: String,
    path: PathBuf,
    price_in: NanoUsd,
    price_out: NanoUsd,
    #[serde(default = "default_concurrency")]
    max_concurrency: u32,
    #[serde(default = "default_queue")]
    max_queue: u32,
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

/// One model the node serves.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// The name builders ask for.
    pub id: String,
    /// Folder with config.json, *.safetensors and tokenizer.json.
    pub path: PathBuf,
    /// nano-USD per prompt token.
    pub price_in: NanoUsd,
    /// nano-USD per generated token.
    pub price_out: NanoUsd,
    /// Jobs generated at once.
    pub max_concurrency: u32,
    /// Jobs allowed to wait for a slot; beyond that jobs are refused.
    pub max_queue: u32,
}

/// A validated node configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub identity: Identity,
    pub data_dir: PathBuf,
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub advert_interval: Duration,
    pub advert_ttl: Duration,
    pub models: Vec<ModelConfig>,
}

impl NodeConfig {
    /// Reads and validates a config file. Relative paths in it are relative
    /// to the file's folder. The identity key must exist (`sharenet-node init`).
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read node config {}", path.display()))?;
        let file: NodeFile = toml::from_str(&text)
            .with_context(|| format!("parse node config {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let identity_path = base.join(&file.identity_file);
        let identity = Identity::load(&identity_path).context("load identity_file")?;
        let models = file
            .models
            .into_iter()
            .map(|m| ModelConfig {
                id: m.id,
                path: base.join(m.path),
                price_in: m.price_in,
                price_out: m.price_out,
                max_concurrency: m.max_concurrency,
                max_queue: m.max_queue,
            })
            .collect();
        let config = Self {
            identity,
            data_dir: base.join(file.data_dir),
            listen: parse_multiaddrs("listen", &file.listen)?,
            bootstrap: parse_multiaddrs("bootstrap", &file.bootstrap)?,
            advert_interval: Duration::from_secs(file.advert_interval_secs),
            advert_ttl: Duration::from_secs(file.advert_ttl_secs),
            models,
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
        }
        if self.listen.is_empty() {
            bail!("listen: at least one address is required");
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

# Adverts are re-published every interval and expire after the TTL.
advert_interval_secs = 10
advert_ttl_secs = 30

# One [[models]] table per model served. `path` is a Hugging Face-style
# folder: config.json, model.safetensors (or shards) and tokenizer.json.
# Prices are integers in nano-USD (1e-9 USD) per token:
# 200 nano-USD per token = $0.20 per million tokens.
[[models]]
id = "tiny-llama"
path = "{model_dir}"
price_in = 100
price_out = 200
max_concurrency = 2   # jobs generated at once
max_queue = 16        # jobs waiting for a slot; beyond this jobs are refused
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
        assert_eq!(cfg.models[0].path, dir.path().join("models/tiny"));
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
    }
}
