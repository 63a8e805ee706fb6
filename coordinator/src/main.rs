//! `sharenet-coordinator`: the builder-facing API's command line. (The
//! one-command local network is `sharenet-devnet`, in `devnet/`.)

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use sharenet_coordinator::core::catalog::{Catalog, known};
use sharenet_coordinator::{CoordinatorConfig, config};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "sharenet-coordinator",
    version,
    about = "The sharenet builder API: OpenAI-compatible inference over a network of provider nodes"
)]
struct Cli {
    /// Log lines as `text` or `json` (one object per line). Default: the
    /// SHARENET_LOG_FORMAT environment variable, else text. Levels follow
    /// RUST_LOG.
    #[arg(long, global = true, value_enum)]
    log_format: Option<sharenet_daemon::LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a commented coordinator.toml (with a fresh API key) into DIR,
    /// and a model catalog (DIR/data/catalog.json) holding the models the
    /// project serves (the tiny llama, SmolLM2-135M-Instruct,
    /// all-MiniLM-L6-v2), read from their files where found.
    Init {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Where to look for the project's model files (repeatable;
        /// default: target/test-models and the devnet's cache,
        /// $SHARENET_CACHE or ~/.cache/sharenet).
        #[arg(long = "models")]
        models: Vec<PathBuf>,
    },
    /// Run the coordinator.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check the config (file plus `SHARENET_COORDINATOR_*` overrides) and
    /// print the effective settings, keys redacted.
    ConfigCheck {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The model catalog: the models this coordinator routes, by
    /// canonical id. A running coordinator reads the file at start; the
    /// operator API (/operator/catalog) changes a running one.
    Catalog {
        /// The coordinator's config (the catalog is `catalog_file`, else
        /// catalog.json in `data_dir`).
        #[arg(long, short, global = true, default_value = "coordinator.toml")]
        config: PathBuf,
        #[command(subcommand)]
        command: catalog_cli::CatalogCommand,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = sharenet_daemon::init_logs(cli.log_format, "sharenet-coordinator")?;
    match cli.command {
        Command::Init { dir, models } => init(&dir, models),
        Command::Run { config } => run(&config).await,
        Command::Catalog { config, command } => catalog_cli::run(&config, command),
        Command::ConfigCheck { config } => {
            sharenet_coordinator::config::CoordinatorConfig::from_file(&config)?;
            print!("{}", sharenet_coordinator::config::effective(&config)?);
            println!("# ok: {} is valid", config.display());
            Ok(())
        }
    }
}

mod catalog_cli;

fn init(dir: &std::path::Path, models: Vec<PathBuf>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join("coordinator.toml");
    if path.exists() {
        bail!(
            "{} already exists; refusing to overwrite it",
            path.display()
        );
    }
    let key = format!("sk-sharenet-{}", hex::encode(rand::random::<[u8; 16]>()));
    write_private(&path, config::template(&key).as_bytes())
        .with_context(|| format!("write {}", path.display()))?;
    println!("wrote {}", path.display());
    let (catalog_path, allow) = config::catalog_of(&path)?;
    let catalog = Catalog::open(&catalog_path, allow)
        .with_context(|| format!("load the catalog {}", catalog_path.display()))?;
    let search = if models.is_empty() {
        known::default_search(&std::env::current_dir().context("read the current folder")?)
    } else {
        models
    };
    for line in known::seed(&catalog, &search, true).context("write the model catalog")? {
        println!("catalog: {line}");
    }
    println!("wrote {}", catalog_path.display());
    println!("API key: {key}");
    println!("then: sharenet-coordinator run --config {}", path.display());
    Ok(())
}

async fn run(config: &std::path::Path) -> anyhow::Result<()> {
    let config = CoordinatorConfig::from_file(config)?;
    let cancel = CancellationToken::new();
    let coordinator = sharenet_coordinator::start(config, cancel.clone()).await?;
    println!("sharenet-coordinator {}", coordinator.peer_id);
    println!("  API: {}", coordinator.base_url());
    for addr in &coordinator.p2p_addrs {
        println!("  p2p: {addr}");
    }
    let signal = sharenet_daemon::shutdown_signal().await?;
    // Drain: no new connections; responses in progress (streams included)
    // finish and are booked; a second signal stops at once.
    println!(
        "{signal}: draining (up to {} s; again to stop now)",
        DRAIN_TIMEOUT.as_secs()
    );
    let drained = tokio::select! {
        drained = coordinator.drain(DRAIN_TIMEOUT) => drained,
        _ = sharenet_daemon::shutdown_signal() => false,
    };
    if drained {
        println!("drained; shutting down");
    } else {
        println!("stopping the responses still open");
    }
    cancel.cancel();
    coordinator.wait().await;
    Ok(())
}

/// How long a stopping coordinator lets open responses finish.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Writes a new file only its owner can read (it holds keys).
fn write_private(path: &std::path::Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(body)
}
