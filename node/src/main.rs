//! `sharenet-node`: the provider daemon's command line.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use sharenet_engine::tiny::{TinyConfig, write_tiny_llama};
use sharenet_ledger::{ReceiptStore, SledReceiptStore};
use sharenet_node::NodeConfig;
use sharenet_p2p::Identity;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "sharenet-node",
    version,
    about = "Sell LLM inference on the sharenet network"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create an identity key (mode 0600) and a commented node.toml in DIR.
    Init {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Run the daemon.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Write a small random-weight llama model and tokenizer into DIR.
    GenTinyModel {
        dir: PathBuf,
        /// Same seed, same weights.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// List the models the config would serve and whether each loads.
    Models {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List the receipts this node has signed (stop the daemon first: the
    /// store is locked while it runs).
    Receipts {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,libp2p=warn".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Init { dir } => init(&dir),
        Command::Run { config } => run(&config).await,
        Command::GenTinyModel { dir, seed } => {
            write_tiny_llama(&dir, seed, TinyConfig::default())
                .with_context(|| format!("write tiny model to {}", dir.display()))?;
            println!("wrote a tiny llama model to {}", dir.display());
            Ok(())
        }
        Command::Models { config } => models(&config),
        Command::Receipts { config, limit } => receipts(&config, limit),
    }
}

fn init(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let config_path = dir.join("node.toml");
    if config_path.exists() {
        bail!(
            "{} already exists; refusing to overwrite it",
            config_path.display()
        );
    }
    let identity = Identity::create(&dir.join("identity.key")).context("create identity key")?;
    std::fs::write(
        &config_path,
        sharenet_node::config::template("models/tiny-llama"),
    )
    .with_context(|| format!("write {}", config_path.display()))?;
    println!("node identity: {}", identity.peer_id());
    println!(
        "wrote {} and {}",
        dir.join("identity.key").display(),
        config_path.display()
    );
    println!(
        "next: sharenet-node gen-tiny-model {}  (or point [[models]].path at a real model folder)",
        dir.join("models/tiny-llama").display()
    );
    println!("then: sharenet-node run --config {}", config_path.display());
    Ok(())
}

async fn run(config: &std::path::Path) -> anyhow::Result<()> {
    let config = NodeConfig::from_file(config)?;
    let cancel = CancellationToken::new();
    let node = sharenet_node::start(config, cancel.clone()).await?;
    println!("sharenet-node {} listening on:", node.peer_id);
    for addr in &node.listen_addrs {
        println!("  {addr}");
    }
    tokio::signal::ctrl_c().await.context("wait for Ctrl-C")?;
    println!("shutting down");
    cancel.cancel();
    node.wait().await;
    Ok(())
}

fn models(config: &std::path::Path) -> anyhow::Result<()> {
    let config = NodeConfig::from_file(config)?;
    let mut failed = 0;
    for m in &config.models {
        let started = std::time::Instant::now();
        match sharenet_engine::TextModel::load(&m.path) {
            Ok(model) => println!(
                "ok    {}  {}  context {}  {} / {} nano-USD per token in / out  loaded in {} ms",
                m.id,
                m.path.display(),
                model.context_length(),
                m.price_in,
                m.price_out,
                started.elapsed().as_millis()
            ),
            Err(e) => {
                failed += 1;
                println!("FAIL  {}  {}", m.id, e);
            }
        }
    }
    if failed > 0 {
        bail!("{failed} model(s) failed to load");
    }
    Ok(())
}

fn receipts(config: &std::path::Path, limit: usize) -> anyhow::Result<()> {
    let config = NodeConfig::from_file(config)?;
    let path = config.data_dir.join("receipts");
    let store = SledReceiptStore::open(&path).with_context(|| {
        format!(
            "open receipt store {} (is the node running?)",
            path.display()
        )
    })?;
    let mut total: u128 = 0;
    for stored in store.list(limit)? {
        let r = stored.receipt();
        let state = match stored {
            sharenet_ledger::StoredReceipt::NodeSigned(_) => "signed",
            sharenet_ledger::StoredReceipt::Countersigned(_) => "countersigned",
        };
        total += u128::from(r.amount);
        println!(
            "{}  {}  in {}  out {}  amount {} nano-USD  {state}",
            r.job_id, r.model, r.input_tokens, r.output_tokens, r.amount
        );
    }
    println!(
        "{} receipts in store; listed total {total} nano-USD",
        store.len()
    );
    Ok(())
}
