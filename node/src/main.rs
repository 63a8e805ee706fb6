//! `sharenet-node`: the provider daemon's command line.

use std::path::PathBuf;

use anyhow::{Context, bail};
use candle_core::quantized::GgmlDType;
use clap::{Parser, Subcommand};
use sharenet_engine::Arch;
use sharenet_engine::tiny::{TinyConfig, write_tiny_gguf};
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
    /// Create an identity key (mode 0600) and a commented node.toml in DIR.
    Init {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The coordinator to join through, with its `/p2p/<id>` (e.g.
        /// `/ip4/203.0.113.7/udp/4000/quic-v1/p2p/12D3KooW...`): written as
        /// `bootstrap`, and so the coordinator whose jobs the node serves.
        #[arg(long)]
        coordinator: Option<String>,
    },
    /// Run the daemon.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Write a small random-weight model: a Hugging Face folder at PATH,
    /// or with --gguf a single GGUF file at PATH.
    GenTinyModel {
        path: PathBuf,
        /// Same seed, same weights.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, value_enum, default_value_t = ArchArg::Llama)]
        arch: ArchArg,
        /// Write one GGUF file with matrices in this type instead of a folder.
        #[arg(long, value_enum)]
        gguf: Option<GgufType>,
        /// The larger benchmark shape (about 25 M parameters); the same as
        /// `--shape bench`.
        #[arg(long)]
        bench_size: bool,
        /// A real model's shape, with random weights: `llama-3.2-1b`
        /// (1.5 B parameters as written, head untied), `llama-3.1-8b`
        /// (8.0 B; 16 GB in f16, 4.5 GB in Q4_0), `qwen2.5-0.5b`,
        /// `smollm2-135m`. Real shapes are written in parallel a tensor at
        /// a time, without the tiny models' bias towards word-like text.
        #[arg(long, value_enum, default_value_t = ShapeArg::Tiny)]
        shape: ShapeArg,
        /// Weight dtype of a safetensors folder (without `--gguf`).
        #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
        dtype: DtypeArg,
    },
    /// Measure one model on a device: load time, time to first token,
    /// decode tokens/s at several concurrencies, the share of the GPU's
    /// memory-bandwidth roofline, peak GPU memory and (with --agreement)
    /// agreement with the CPU. Prints JSON. What scripts/gpu-check runs.
    BenchModel {
        /// A model folder or `.gguf` file.
        path: PathBuf,
        /// `cpu`, `cuda:N` or `auto`.
        #[arg(long, default_value = "auto", value_parser = parse_device)]
        device: sharenet_node::config::DeviceChoice,
        #[arg(long, default_value_t = 512)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 64)]
        decode_tokens: u32,
        /// Concurrencies to measure decode at, comma-separated.
        #[arg(long, default_value = "1,8,32", value_delimiter = ',')]
        concurrency: Vec<usize>,
        /// KV cache budget of the benchmark's scheduler, in MiB.
        #[arg(long, default_value_t = 4096)]
        kv_cache_mb: usize,
        /// Also load the model on the CPU and compare log-probabilities.
        #[arg(long)]
        agreement: bool,
    },
    /// Ask the running daemon (its `admin_listen`) how it is doing: models,
    /// load, peers, receipts and earnings this period.
    Status {
        #[arg(long, short)]
        config: PathBuf,
        /// The raw JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Ask the running daemon to re-read its config and apply price and
    /// model-list changes (what SIGHUP does; the daemon logs the result).
    Reload {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check the config (file plus `SHARENET_NODE_*` overrides) and print
    /// the effective settings.
    ConfigCheck {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List the models the config would serve and whether each loads.
    Models {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Earnings per settlement period from this node's own receipts (read
    /// from the store, or through the running daemon's local API).
    Earnings {
        #[arg(long, short)]
        config: PathBuf,
        /// Fixed-length periods instead of calendar months (UTC).
        #[arg(long)]
        period_secs: Option<u64>,
    },
    /// Check a coordinator's statement bundle (GET /statements/LABEL)
    /// against this node's receipts: every receipt proven in, totals match.
    /// Exits non-zero and lists discrepancies otherwise.
    Reconcile {
        #[arg(long, short)]
        config: PathBuf,
        /// The statement bundle JSON file.
        bundle: PathBuf,
    },
    /// List the receipts this node has signed (from the store, or through
    /// the running daemon's local API).
    Receipts {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ArchArg {
    Llama,
    Mistral,
    Qwen2,
}

fn parse_device(s: &str) -> Result<sharenet_node::config::DeviceChoice, String> {
    sharenet_node::config::DeviceChoice::parse(s)
        .ok_or_else(|| format!("{s:?}: expected auto, cpu or cuda:N"))
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ShapeArg {
    Tiny,
    Bench,
    #[value(name = "llama-3.2-1b")]
    Llama32_1b,
    #[value(name = "llama-3.1-8b")]
    Llama31_8b,
    #[value(name = "qwen2.5-0.5b")]
    Qwen25_05b,
    #[value(name = "smollm2-135m")]
    Smollm2_135m,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DtypeArg {
    F32,
    F16,
    Bf16,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum GgufType {
    F32,
    F16,
    Q8_0,
    Q4_0,
    Q4k,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = sharenet_daemon::init_logs(cli.log_format, "sharenet-node")?;
    match cli.command {
        Command::Init { dir, coordinator } => init(&dir, coordinator.as_deref()),
        Command::Run { config } => run(&config).await,
        Command::GenTinyModel {
            path,
            seed,
            arch,
            gguf,
            bench_size,
            shape,
            dtype,
        } => {
            let shape = if bench_size { ShapeArg::Bench } else { shape };
            gen_tiny_model(&path, seed, arch, gguf, shape, dtype)
        }
        Command::Models { config } => models(&config),
        Command::BenchModel {
            path,
            device,
            prompt_tokens,
            decode_tokens,
            concurrency,
            kv_cache_mb,
            agreement,
        } => {
            anyhow::ensure!(
                !concurrency.is_empty() && !concurrency.contains(&0),
                "--concurrency: positive numbers, e.g. 1,8,32"
            );
            anyhow::ensure!(prompt_tokens > 0, "--prompt-tokens: at least 1");
            let opts = sharenet_node::bench::BenchOptions {
                path,
                device,
                prompt_tokens,
                decode_tokens: decode_tokens.max(2),
                concurrency,
                kv_cache_bytes: kv_cache_mb << 20,
                agreement,
            };
            let report =
                tokio::task::spawn_blocking(move || sharenet_node::bench::bench_model(&opts))
                    .await
                    .context("join the benchmark")??;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::ConfigCheck { config } => {
            NodeConfig::from_file(&config)?;
            print!("{}", sharenet_node::config::effective(&config)?);
            println!("# ok: {} is valid", config.display());
            Ok(())
        }
        Command::Status { config, json } => status(&config, json).await,
        Command::Reload { config } => request_reload(&config).await,
        Command::Receipts { config, limit } => receipts(&config, limit).await,
        Command::Earnings {
            config,
            period_secs,
        } => earnings(&config, period_secs).await,
        Command::Reconcile { config, bundle } => reconcile(&config, &bundle),
    }
}

fn init(dir: &std::path::Path, coordinator: Option<&str>) -> anyhow::Result<()> {
    let bootstrap = match coordinator {
        None => None,
        Some(addr) => {
            let parsed = sharenet_p2p::parse_multiaddrs("--coordinator", &[addr.to_string()])?;
            if sharenet_node::config::peer_ids_in(&parsed).is_empty() {
                bail!(
                    "--coordinator {addr:?}: the address must end in /p2p/<the coordinator's PeerId>"
                );
            }
            Some(addr.to_string())
        }
    };
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let config_path = dir.join("node.toml");
    if config_path.exists() {
        bail!(
            "{} already exists; refusing to overwrite it",
            config_path.display()
        );
    }
    let identity = Identity::create(&dir.join("identity.key")).context("create identity key")?;
    let mut body = sharenet_node::config::template("models/tiny-llama");
    if let Some(addr) = &bootstrap {
        body = body.replacen("bootstrap = []", &format!("bootstrap = [{addr:?}]"), 1);
    }
    std::fs::write(&config_path, body)
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

async fn run(config_path: &std::path::Path) -> anyhow::Result<()> {
    let config = NodeConfig::from_file(config_path)?;
    let cancel = CancellationToken::new();
    let node = sharenet_node::start(config, cancel.clone()).await?;
    println!("sharenet-node {} listening on:", node.peer_id);
    for addr in &node.listen_addrs {
        println!("  {addr}");
    }
    // SIGHUP re-reads the config and applies price and model changes (see
    // `NodeHandle::reload`); SIGINT or SIGTERM stop.
    let stop = sharenet_daemon::shutdown_signal();
    tokio::pin!(stop);
    let signal = loop {
        tokio::select! {
            signal = &mut stop => break signal?,
            () = reload_asked(&node) => match NodeConfig::from_file(config_path) {
                Ok(new) => {
                    let r = node.reload(&new).await;
                    if r.repriced.is_empty() && r.added.is_empty() && r.removed.is_empty() {
                        println!("reload: no price or model changes");
                    }
                    for m in &r.repriced {
                        println!("reload: repriced {m}");
                    }
                    for m in &r.added {
                        println!("reload: now serving {m}");
                    }
                    for m in &r.removed {
                        println!("reload: no longer serving {m} (its running jobs finish)");
                    }
                    for m in &r.failed {
                        println!("reload: could not add {m}");
                    }
                    for c in &r.needs_restart {
                        println!("reload: not applied (needs a restart): {c}");
                    }
                }
                Err(e) => println!("reload: config not reloaded: {e:#}"),
            },
        }
    };
    // Drain: refuse new jobs, advertise no models, let the jobs in flight
    // finish and send their receipts; a second signal stops at once.
    println!(
        "{signal}: draining (up to {} s; again to stop now)",
        DRAIN_TIMEOUT.as_secs()
    );
    let left = tokio::select! {
        left = node.drain(DRAIN_TIMEOUT) => left,
        _ = sharenet_daemon::shutdown_signal() => usize::MAX,
    };
    match left {
        0 => println!("drained; shutting down"),
        usize::MAX => println!("stopping now"),
        n => println!("{n} jobs still running after the drain timeout; stopping them"),
    }
    cancel.cancel();
    node.wait().await;
    Ok(())
}

/// How long a stopping node lets its jobs in flight finish.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn gen_tiny_model(
    path: &std::path::Path,
    seed: u64,
    arch: ArchArg,
    gguf: Option<GgufType>,
    shape: ShapeArg,
    dtype: DtypeArg,
) -> anyhow::Result<()> {
    use candle_core::DType;
    use sharenet_engine::tiny::{RandomFormat, write_random_model, write_tiny_model_as};
    let arch = match arch {
        ArchArg::Llama => Arch::Llama,
        ArchArg::Mistral => Arch::Mistral,
        ArchArg::Qwen2 => Arch::Qwen2,
    };
    let (base, real) = match shape {
        ShapeArg::Tiny => (TinyConfig::default(), false),
        ShapeArg::Bench => (TinyConfig::bench(), false),
        ShapeArg::Llama32_1b => (TinyConfig::llama32_1b(), true),
        ShapeArg::Llama31_8b => (TinyConfig::llama31_8b(), true),
        ShapeArg::Qwen25_05b => (TinyConfig::qwen25_05b(), true),
        ShapeArg::Smollm2_135m => (TinyConfig::smollm2_135m_vocab32k(), true),
    };
    // A named shape keeps its own architecture (Qwen2.5's biases).
    let shape = if real {
        base
    } else {
        TinyConfig { arch, ..base }
    };
    let dense = match dtype {
        DtypeArg::F32 => DType::F32,
        DtypeArg::F16 => DType::F16,
        DtypeArg::Bf16 => DType::BF16,
    };
    let ggml = gguf.map(|t| match t {
        GgufType::F32 => GgmlDType::F32,
        GgufType::F16 => GgmlDType::F16,
        GgufType::Q8_0 => GgmlDType::Q8_0,
        GgufType::Q4_0 => GgmlDType::Q4_0,
        GgufType::Q4k => GgmlDType::Q4K,
    });
    let started = std::time::Instant::now();
    if real {
        let format = match ggml {
            Some(g) => RandomFormat::Gguf(g),
            None => RandomFormat::Safetensors(dense),
        };
        let pb = indicatif::ProgressBar::new(0);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "writing {msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        pb.set_message(path.display().to_string());
        let progress = |done: u64, total: u64| {
            pb.set_length(total);
            pb.set_position(done);
        };
        write_random_model(path, seed, shape, format, &progress)
            .with_context(|| format!("write a random model to {}", path.display()))?;
        pb.finish_and_clear();
    } else {
        match ggml {
            None => write_tiny_model_as(path, seed, shape, dense),
            Some(g) => write_tiny_gguf(path, seed, shape, g),
        }
        .with_context(|| format!("write tiny model to {}", path.display()))?;
    }
    println!(
        "wrote a {} model ({} parameters) to {} in {:.1} s",
        shape.arch.as_str(),
        shape.parameters(),
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn models(config: &std::path::Path) -> anyhow::Result<()> {
    let config = NodeConfig::from_file(config)?;
    let mut failed = 0;
    for m in &config.models {
        match sharenet_node::load::load(m) {
            Ok(report) => println!(
                "ok    {}  {}  {} / {} nano-USD per token in / out  loaded in {} ms",
                m.id,
                report.summary,
                m.price_in,
                m.price_out,
                report.elapsed.as_millis()
            ),
            Err(e) => {
                failed += 1;
                println!("FAIL  {}  {:#}", m.id, e);
            }
        }
    }
    if failed > 0 {
        bail!("{failed} model(s) failed to load");
    }
    Ok(())
}

fn open_store(config: &NodeConfig) -> anyhow::Result<SledReceiptStore> {
    let path = config.data_dir.join("receipts");
    SledReceiptStore::open(&path).with_context(|| {
        format!(
            "open receipt store {} (is the node running?)",
            path.display()
        )
    })
}

async fn status(config: &std::path::Path, raw: bool) -> anyhow::Result<()> {
    let config = NodeConfig::from_file(config)?;
    let Some(addr) = config.admin_listen else {
        bail!("the config sets no admin_listen: the daemon has no local API to ask");
    };
    let url = format!("http://{addr}/status");
    let v: serde_json::Value = reqwest::get(&url)
        .await
        .with_context(|| format!("reach the daemon at {url} (is it running?)"))?
        .json()
        .await
        .with_context(|| format!("read {url}"))?;
    if raw {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "node {}  peers {}  jobs open {}{}",
        v["peer_id"].as_str().unwrap_or("?"),
        v["connected_peers"],
        v["jobs_open"],
        if v["draining"] == true {
            "  DRAINING"
        } else {
            ""
        }
    );
    println!("model                          running  waiting  slots  tok/s  price in/out");
    for m in v["models"].as_array().into_iter().flatten() {
        let load = &m["load"];
        println!(
            "{:<30} {:>7}  {:>7}  {:>5}  {:>5}  {}/{}",
            m["id"].as_str().unwrap_or("?"),
            load["running"],
            load["waiting"],
            m["slots"],
            load["tokens_per_sec"].as_u64().unwrap_or(0),
            m["price_in"],
            m["price_out"]
        );
    }
    match v["this_period"].as_object() {
        Some(p) => println!(
            "this period ({}): {} jobs, {} nano-USD earned, {} pending countersignature",
            p["period"].as_str().unwrap_or("?"),
            p["jobs"],
            p["earned_nano_usd"],
            p["pending"]
        ),
        None => println!("this period: no jobs yet"),
    }
    Ok(())
}

/// The running daemon's local API at `path`, for a command whose store
/// the daemon holds.
async fn ask_daemon<T: serde::de::DeserializeOwned>(
    config: &NodeConfig,
    path: &str,
    store_error: anyhow::Error,
) -> anyhow::Result<T> {
    let Some(addr) = config.admin_listen else {
        return Err(store_error.context(
            "the store is in use and the config sets no admin_listen to ask the daemon instead",
        ));
    };
    let url = format!("http://{addr}{path}");
    let r = reqwest::get(&url)
        .await
        .map_err(|e| store_error.context(format!("and the daemon's local API {url}: {e}")))?;
    if !r.status().is_success() {
        bail!(
            "{url}: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    r.json().await.with_context(|| format!("read {url}"))
}

/// SIGHUP, or `sharenet-node reload` through the local API.
async fn reload_asked(node: &sharenet_node::NodeHandle) {
    tokio::select! {
        () = sharenet_daemon::hangup() => {}
        () = node.reload_requested() => {}
    }
}

async fn request_reload(config: &std::path::Path) -> anyhow::Result<()> {
    let config = NodeConfig::from_file(config)?;
    let Some(addr) = config.admin_listen else {
        bail!("the config sets no admin_listen: send the daemon SIGHUP instead");
    };
    let url = format!("http://{addr}/reload");
    let r = reqwest::Client::new()
        .post(&url)
        .send()
        .await
        .with_context(|| format!("reach the daemon at {url} (is it running?)"))?;
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{url}: {status} {text}");
    }
    println!("{text}");
    Ok(())
}

async fn earnings(config: &std::path::Path, period_secs: Option<u64>) -> anyhow::Result<()> {
    let config = NodeConfig::from_file(config)?;
    let rule = sharenet_node::reconcile::period_rule(period_secs).map_err(anyhow::Error::msg)?;
    // The store itself when the daemon is stopped, else the daemon's API.
    let rows = match open_store(&config) {
        Ok(store) => sharenet_node::reconcile::earnings(&store.list(usize::MAX)?, &rule),
        Err(e) => {
            let query = period_secs
                .map(|s| format!("?period_secs={s}"))
                .unwrap_or_default();
            ask_daemon(&config, &format!("/earnings{query}"), e).await?
        }
    };
    println!("period       jobs  input tokens  output tokens  earned (nano-USD)  pending");
    for e in rows {
        println!(
            "{:<12} {:>5}  {:>12}  {:>13}  {:>17}  {:>7}",
            e.period, e.jobs, e.input_tokens, e.output_tokens, e.earned, e.pending
        );
    }
    Ok(())
}

fn reconcile(config: &std::path::Path, bundle: &std::path::Path) -> anyhow::Result<()> {
    let config = NodeConfig::from_file(config)?;
    let text = std::fs::read_to_string(bundle)
        .with_context(|| format!("read statement bundle {}", bundle.display()))?;
    let bundle: sharenet_node::reconcile::Bundle = serde_json::from_str(&text)
        .with_context(|| format!("parse statement bundle {}", bundle.display()))?;
    let store = open_store(&config)?;
    let local = store.list(usize::MAX)?;
    let report =
        sharenet_node::reconcile::reconcile(&bundle, &config.identity.public_key(), &local)
            .context("check the statement")?;
    println!(
        "period {}: {} receipts proven into the statement, {} nano-USD; the statement rewards this node {} nano-USD",
        report.period, report.included, report.included_amount, report.statement_reward
    );
    if report.is_clean() {
        println!("reconciled: no discrepancies");
        return Ok(());
    }
    for d in &report.discrepancies {
        println!("DISCREPANCY  {d}");
    }
    bail!("{} discrepancies", report.discrepancies.len())
}

async fn receipts(config: &std::path::Path, limit: usize) -> anyhow::Result<()> {
    use sharenet_node::reconcile::{ReceiptList, ReceiptRow};
    let config = NodeConfig::from_file(config)?;
    let list: ReceiptList = match open_store(&config) {
        Ok(store) => ReceiptList {
            stored: store.len(),
            data: store.list(limit)?.iter().map(ReceiptRow::from).collect(),
        },
        Err(e) => ask_daemon(&config, &format!("/receipts?limit={limit}"), e).await?,
    };
    let mut total: u128 = 0;
    for r in &list.data {
        total += u128::from(r.amount);
        println!(
            "{}  {}  in {}  out {}  amount {} nano-USD  {}",
            r.job_id, r.model, r.input_tokens, r.output_tokens, r.amount, r.state
        );
    }
    println!(
        "{} receipts in store; listed total {total} nano-USD",
        list.stored
    );
    Ok(())
}
