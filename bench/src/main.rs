//! `gateway-bench`: how much the sharenet coordinator adds to a request,
//! measured against the same mock upstream called directly and through
//! LiteLLM's proxy, in one run on loopback (`scripts/bench-gateway`).
//!
//! It sets sharenet up as the README tells a user to: `sharenet-coordinator
//! init`, `sharenet-node init --coordinator ...`, the node's model an
//! `[models.upstream]` pointing at `mock-openai`; only ports, the default
//! app's starting balance and the models block are edited. Then, per
//! target: streamed time to first chunk (sequential, one kept-alive
//! connection), non-streamed latency at fixed rates with the CPU time each
//! server process spent per request, and the most it carries with 64
//! connections. Last, sharenet alone holds `--streams` open SSE streams
//! across `--stream-nodes` nodes while the mock holds the tokens back.

mod load;
mod procs;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::{Value, json};

use load::{Sample, Target};
use procs::{Proc, bin, free_port, wait_http};

#[derive(Parser)]
#[command(about = "Benchmark the sharenet gateway against LiteLLM on a mock upstream")]
struct Cli {
    /// Folder with the release binaries (sharenet-coordinator,
    /// sharenet-node, mock-openai).
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// LiteLLM's `litellm` executable (from `pip install 'litellm[proxy]'`);
    /// without it the LiteLLM column is left out.
    #[arg(long)]
    litellm: Option<PathBuf>,
    /// Fixed rates to offer, requests per second.
    #[arg(long, default_value = "200,500,1000,2000", value_delimiter = ',')]
    rates: Vec<u32>,
    /// Seconds per fixed-rate step and for the closed loop.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Connections of the closed loop (the most each carries).
    #[arg(long, default_value_t = 64)]
    conns: usize,
    /// Sequential streamed requests for time to first chunk.
    #[arg(long, default_value_t = 300)]
    ttfc_requests: usize,
    /// Open SSE streams to hold (0 skips the test).
    #[arg(long, default_value_t = 10_000)]
    streams: usize,
    /// Nodes sharing the open streams.
    #[arg(long, default_value_t = 4)]
    stream_nodes: usize,
    /// How long the mock holds each stream's tokens, seconds (under the
    /// coordinator's first-token timeout, 30 s by default).
    #[arg(long, default_value_t = 20)]
    hold_secs: u64,
    /// Which targets to measure.
    #[arg(long, default_value = "direct,sharenet,litellm", value_delimiter = ',')]
    targets: Vec<String>,
    /// Shared books: a throwaway PostgreSQL (Debian's server binaries) and
    /// two coordinator replicas on it, the node advertising to both; the
    /// `sharenet` target is then one replica on PostgreSQL and
    /// `sharenet-replicas` both, in turn.
    #[arg(long)]
    replicas: bool,
    /// Where the report, the JSON results and the logs go.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// The model whose tokenizer and chat template the coordinator counts
    /// with: catalogued (as `sharenet/bench-model` and
    /// `sharenet/bench-held`), and given to the node as its upstream's
    /// `tokenizer`, so every token is counted by both sides as in
    /// production. (SmolLM2's GGUF, installed by scripts/setup-test-deps.)
    #[arg(
        long,
        default_value = "target/test-models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    )]
    model_file: PathBuf,
    /// The old path for comparison: nothing catalogued,
    /// `allow_uncatalogued = true`, counts are the node's word.
    #[arg(long)]
    uncounted: bool,
}

const MODEL: &str = "bench-model";
const HELD_MODEL: &str = "bench-held";
/// The catalog ids `MODEL` and `HELD_MODEL` alias (nodes advertise these).
const MODEL_ID: &str = "sharenet/bench-model";
const HELD_MODEL_ID: &str = "sharenet/bench-held";
const LITELLM_KEY: &str = "sk-bench-litellm-master-key-0123456789abcdef";

/// Everything started, killed when dropped.
struct World {
    dir: tempfile::TempDir,
    logs: PathBuf,
    bins: PathBuf,
    mock: Proc,
    mock_url: String,
    coordinator: Option<Proc>,
    api: String,
    api_key: String,
    coordinator_p2p: String,
    /// With `--replicas`: the database and the second replica (process,
    /// API URL, p2p address).
    postgres: Option<sharenet_ledger::testing::TestPostgres>,
    second: Option<(Proc, String, String)>,
    nodes: Vec<Proc>,
    litellm: Option<Proc>,
    litellm_url: String,
    hold_ms: u64,
    /// See `Cli::model_file`; `None` with `--uncounted`.
    model_file: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cli.out).with_context(|| format!("create {}", cli.out.display()))?;
    let steps = 4 * (2 + cli.rates.len() as u64) + 5;
    let bar = indicatif::ProgressBar::new(steps).with_style(
        indicatif::ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message("starting the mock upstream");
    let mut w = World::start(&cli).await?;
    bar.inc(1);
    bar.set_message("starting a coordinator and a node (init, then run)");
    if cli.replicas {
        bar.set_message("starting PostgreSQL, two coordinator replicas and a node");
        let pg = sharenet_ledger::testing::TestPostgres::start()?;
        let url = pg.url();
        w.postgres = Some(pg);
        let (p, api, p2p, _) = w.start_coordinator_in("coordinator", Some(&url)).await?;
        w.coordinator = Some(p);
        w.api = api;
        w.coordinator_p2p = p2p;
        let (p, api, p2p, _) = w.start_coordinator_in("coordinator-2", Some(&url)).await?;
        w.second = Some((p, api, p2p));
    } else {
        w.start_coordinator().await?;
    }
    w.start_node().await?;
    w.wait_for_nodes(1).await?;
    bar.inc(1);
    if let Some(l) = cli
        .litellm
        .as_ref()
        .filter(|_| cli.targets.iter().any(|t| t == "litellm"))
    {
        bar.set_message("starting LiteLLM's proxy");
        w.start_litellm(l).await?;
    }
    bar.inc(1);

    let client = load::client(1024)?;
    let mut results = Vec::new();
    for name in ["direct", "sharenet", "sharenet-replicas", "litellm"] {
        let wanted = cli.targets.iter().any(|t| t == name);
        let Some(target) = w.target(name).filter(|_| wanted) else {
            bar.inc(2 + cli.rates.len() as u64);
            continue;
        };
        bar.set_message(format!("{name}: warm-up and time to first chunk"));
        load::closed_loop(&client, &target, 8, 1.0).await;
        // A client of its own: one kept-alive connection, as an SDK has.
        let ttfc = load::first_chunk(&load::client(1)?, &target, cli.ttfc_requests).await;
        bar.inc(1);
        let mut rates = Vec::new();
        for &rate in &cli.rates {
            bar.set_message(format!("{name}: {rate} req/s for {} s", cli.secs));
            let before = w.cpu(name);
            let s = load::fixed_rate(&client, &target, rate, cli.secs, 4096).await;
            let after = w.cpu(name);
            rates.push((rate, s.clone(), cpu_per_request(&before, &after, s.ok())));
            bar.inc(1);
            w.wait_idle(name).await;
        }
        bar.set_message(format!("{name}: {} connections, back to back", cli.conns));
        let before = w.cpu(name);
        let max = load::closed_loop(&client, &target, cli.conns, cli.secs).await;
        let after = w.cpu(name);
        let max_cpu = cpu_per_request(&before, &after, max.ok());
        w.wait_idle(name).await;
        bar.inc(1);
        results.push(TargetResult {
            name,
            ttfc,
            rates,
            max,
            max_cpu,
        });
    }

    let mut held = None;
    if cli.streams > 0 {
        bar.set_message(format!(
            "sharenet: {} open streams across {} nodes",
            cli.streams, cli.stream_nodes
        ));
        held = Some(w.held_streams(&cli).await?);
    }
    bar.inc(2);
    bar.finish_with_message("done");

    let report = report(&cli, &results, held.as_ref());
    println!("{report}");
    std::fs::write(cli.out.join("report.md"), &report)?;
    std::fs::write(
        cli.out.join("results.json"),
        serde_json::to_string_pretty(&to_json(&results, held.as_ref()))?,
    )?;
    eprintln!("wrote {}", cli.out.join("report.md").display());
    drop(w);
    Ok(())
}

/// Milliseconds of CPU per request, per server process.
type CpuPerRequest = Vec<(String, f64)>;

struct TargetResult {
    name: &'static str,
    ttfc: Sample,
    /// Offered rate, what happened, CPU.
    rates: Vec<(u32, Sample, CpuPerRequest)>,
    max: Sample,
    max_cpu: CpuPerRequest,
}

struct HeldResult {
    streams: usize,
    nodes: usize,
    reached_upstream: u64,
    done: u64,
    errors: u64,
    coordinator_rss_per_stream: f64,
    node_rss_per_stream: f64,
    open_secs: f64,
}

/// Milliseconds of CPU per request, per process.
fn cpu_per_request(
    before: &[(String, f64)],
    after: &[(String, f64)],
    n: u64,
) -> Vec<(String, f64)> {
    before
        .iter()
        .zip(after)
        .map(|((name, b), (_, a))| (name.clone(), (a - b) * 1e3 / n.max(1) as f64))
        .collect()
}

impl World {
    async fn start(cli: &Cli) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        // Logs go straight to the output folder, so a failed run keeps them.
        let logs = cli.out.join("logs");
        std::fs::create_dir_all(&logs)?;
        let bins = cli.bin_dir.clone();
        let port = free_port()?;
        let mut cmd = Command::new(bin(&bins, "mock-openai")?);
        cmd.args(["--listen", &format!("127.0.0.1:{port}")]);
        let mut mock = Proc::spawn("mock-openai", cmd, &logs.join("mock.log"))?;
        mock.wait_for(Duration::from_secs(10), |l| l.contains("listening"))?;
        Ok(Self {
            dir,
            logs,
            bins,
            mock,
            mock_url: format!("http://127.0.0.1:{port}"),
            coordinator: None,
            api: String::new(),
            api_key: String::new(),
            coordinator_p2p: String::new(),
            postgres: None,
            second: None,
            nodes: Vec::new(),
            litellm: None,
            litellm_url: String::new(),
            hold_ms: cli.hold_secs * 1000,
            model_file: match cli.uncounted {
                true => None,
                false => Some(std::fs::canonicalize(&cli.model_file).with_context(|| {
                    format!(
                        "find --model-file {} (scripts/setup-test-deps installs it)",
                        cli.model_file.display()
                    )
                })?),
            },
        })
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    async fn start_coordinator(&mut self) -> anyhow::Result<()> {
        let (p, api, p2p, key) = self.start_coordinator_in("coordinator", None).await?;
        self.api = api;
        self.api_key = key;
        self.coordinator_p2p = p2p;
        self.coordinator = Some(p);
        Ok(())
    }

    /// `init` in `name`, then run; with `database`, as one of two replicas
    /// on it. Returns the process, the API URL, the p2p address and the
    /// key `init` made.
    async fn start_coordinator_in(
        &mut self,
        name: &str,
        database: Option<&str>,
    ) -> anyhow::Result<(Proc, String, String, String)> {
        let exe = bin(&self.bins, "sharenet-coordinator")?;
        let dir = self.path(name);
        let out = command_output(Command::new(&exe).args(["init", "--dir"]).arg(&dir))?;
        let key = out
            .lines()
            .find_map(|l| l.strip_prefix("API key: "))
            .context("`sharenet-coordinator init` printed no API key")?
            .trim()
            .to_string();
        if self.api_key.is_empty() {
            self.api_key = key.clone();
        }
        let (http, quic) = (free_port()?, free_udp_port()?);
        let config = dir.join("coordinator.toml");
        let uncounted = self.model_file.is_none();
        edit(&config, |s| {
            let s = s
                .replacen(
                    "http_listen = \"127.0.0.1:8080\"",
                    &format!("http_listen = \"127.0.0.1:{http}\""),
                    1,
                )
                .replacen(
                    "p2p_listen = [\"/ip4/0.0.0.0/udp/4000/quic-v1\", \"/ip4/0.0.0.0/tcp/4000\"]",
                    &format!("p2p_listen = [\"/ip4/127.0.0.1/udp/{quic}/quic-v1\"]"),
                    1,
                )
                .replacen(
                    "bootstrap_balance_nano_usd = 1000000000 ",
                    "bootstrap_balance_nano_usd = 1000000000000000 ",
                    1,
                )
                // Replicas on one host: each its own metrics port.
                .replacen(
                    "metrics_listen = \"127.0.0.1:9464\"",
                    "metrics_listen = \"127.0.0.1:0\"",
                    1,
                );
            // Top-level keys go first (the template ends in a table).
            let s = match database {
                Some(url) => format!("database_url = \"{url}\"\nreplicas = 2\n{s}"),
                None => s,
            };
            Ok(if uncounted {
                s.replacen("allow_uncatalogued = false", "allow_uncatalogued = true", 1)
            } else {
                s
            })
        })?;
        if let Some(file) = &self.model_file {
            for (id, alias) in [(MODEL_ID, MODEL), (HELD_MODEL_ID, HELD_MODEL)] {
                command_output(
                    Command::new(&exe)
                        .args(["catalog", "--config"])
                        .arg(&config)
                        .arg("add")
                        .arg(file)
                        .args(["--id", id, "--license", "apache-2.0", "--alias", alias]),
                )
                .with_context(|| format!("catalog {} as {id}", file.display()))?;
            }
        }
        let mut cmd = Command::new(&exe);
        cmd.args(["run", "--config"]).arg(&config);
        let mut p = Proc::spawn(name, cmd, &self.logs.join(format!("{name}.log")))?;
        let lines = p.wait_for(Duration::from_secs(30), |l| {
            l.trim_start().starts_with("API:")
        })?;
        let peer = lines
            .iter()
            .find_map(|l| l.strip_prefix("sharenet-coordinator "))
            .context("the coordinator printed no peer id")?
            .trim()
            .to_string();
        Ok((
            p,
            format!("http://127.0.0.1:{http}/v1"),
            format!("/ip4/127.0.0.1/udp/{quic}/quic-v1/p2p/{peer}"),
            key,
        ))
    }

    async fn start_node(&mut self) -> anyhow::Result<()> {
        let exe = bin(&self.bins, "sharenet-node")?;
        let i = self.nodes.len();
        let dir = self.path(&format!("node-{i}"));
        command_output(
            Command::new(&exe)
                .args(["init", "--dir"])
                .arg(&dir)
                .args(["--coordinator", &self.coordinator_p2p]),
        )?;
        let quic = free_udp_port()?;
        let (mock, hold) = (self.mock_url.clone(), self.hold_ms);
        let model_file = self.model_file.clone();
        let config = dir.join("node.toml");
        let (first, second) = (
            self.coordinator_p2p.clone(),
            self.second.as_ref().map(|s| s.2.clone()),
        );
        edit(&config, |s| {
            // Replicas: the node bootstraps to (and so serves) both.
            let s = match &second {
                Some(second) => s.replacen(
                    &format!("bootstrap = [\"{first}\"]"),
                    &format!("bootstrap = [\"{first}\", \"{second}\"]"),
                    1,
                ),
                None => s.to_string(),
            };
            let s = s
                .replacen(
                    "listen = [\"/ip4/0.0.0.0/udp/4001/quic-v1\", \"/ip4/0.0.0.0/tcp/4001\"]",
                    &format!("listen = [\"/ip4/127.0.0.1/udp/{quic}/quic-v1\"]"),
                    1,
                )
                // Several nodes on one machine: each its own local API port.
                .replacen(
                    "admin_listen = \"127.0.0.1:9470\"",
                    "admin_listen = \"127.0.0.1:0\"",
                    1,
                );
            let at = s
                .find("\n[[models]]")
                .context("no [[models]] table in the node template")?;
            Ok(format!(
                "{}\n{}",
                &s[..at],
                upstream_models(&mock, hold, model_file.as_deref())
            ))
        })?;
        let mut cmd = Command::new(&exe);
        cmd.args(["run", "--config"]).arg(&config);
        let mut p = Proc::spawn(
            &format!("node-{i}"),
            cmd,
            &self.logs.join(format!("node-{i}.log")),
        )?;
        p.wait_for(Duration::from_secs(60), |l| l.contains("listening on"))?;
        self.nodes.push(p);
        Ok(())
    }

    /// Waits until the coordinator lists `n` live nodes for the model.
    async fn wait_for_nodes(&self, n: usize) -> anyhow::Result<()> {
        let mut apis = vec![self.api.clone()];
        apis.extend(self.second.as_ref().map(|s| s.1.clone()));
        for api in apis {
            self.wait_for_nodes_on(&api, n).await?;
        }
        Ok(())
    }

    async fn wait_for_nodes_on(&self, api: &str, n: usize) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let nodes = async {
                let v: Value = client
                    .get(format!("{api}/models"))
                    .bearer_auth(&self.api_key)
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                v["data"]
                    .as_array()?
                    .iter()
                    .find(|m| m["id"] == MODEL || m["id"] == MODEL_ID)?["nodes"]
                    .as_u64()
            }
            .await
            .unwrap_or(0);
            if nodes as usize >= n {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("the coordinator lists {nodes} of {n} nodes after 60 s; see the logs");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn start_litellm(&mut self, exe: &Path) -> anyhow::Result<()> {
        let port = free_port()?;
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let config = self.path("litellm.yaml");
        std::fs::write(
            &config,
            format!(
                "model_list:\n  - model_name: {MODEL}\n    litellm_params:\n      model: openai/mock-model\n      api_base: {}/v1\n      api_key: mock\nlitellm_settings:\n  telemetry: false\n  drop_params: true\n",
                self.mock_url
            ),
        )?;
        let mut cmd = Command::new(exe);
        cmd.args(["--config"])
            .arg(&config)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            // One worker per core, as LiteLLM's docs advise.
            .args(["--num_workers", &workers.to_string()])
            // No network: use the cost map shipped in the package.
            .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            // Authenticated like sharenet's requests (no database: the
            // master key is checked in memory).
            .env("LITELLM_MASTER_KEY", LITELLM_KEY)
            .env("LITELLM_LOG", "ERROR");
        self.litellm = Some(Proc::spawn("litellm", cmd, &self.logs.join("litellm.log"))?);
        self.litellm_url = format!("http://127.0.0.1:{port}");
        wait_http(
            &format!("{}/health/liveliness", self.litellm_url),
            Duration::from_secs(120),
        )
        .await
    }

    fn target(&self, name: &str) -> Option<Target> {
        match name {
            "direct" => Some(Target {
                urls: vec![format!("{}/v1/chat/completions", self.mock_url)],
                next: Default::default(),
                api_key: None,
                model: "mock-model".into(),
            }),
            "sharenet" => Some(Target {
                urls: vec![format!("{}/chat/completions", self.api)],
                next: Default::default(),
                api_key: Some(self.api_key.clone()),
                model: MODEL.into(),
            }),
            "sharenet-replicas" => self.second.as_ref().map(|(_, api, _)| Target {
                urls: vec![
                    format!("{}/chat/completions", self.api),
                    format!("{api}/chat/completions"),
                ],
                next: Default::default(),
                api_key: Some(self.api_key.clone()),
                model: MODEL.into(),
            }),
            "litellm" => self.litellm.as_ref().map(|_| Target {
                urls: vec![format!("{}/v1/chat/completions", self.litellm_url)],
                next: Default::default(),
                api_key: Some(LITELLM_KEY.into()),
                model: MODEL.into(),
            }),
            _ => None,
        }
    }

    /// CPU seconds so far of the processes serving `target`.
    fn cpu(&self, target: &str) -> Vec<(String, f64)> {
        let mut v = vec![("mock".to_string(), self.mock.cpu_secs())];
        match target {
            "sharenet" | "sharenet-replicas" => {
                if let Some(c) = &self.coordinator {
                    v.push(("coordinator".into(), c.cpu_secs()));
                }
                if let Some((c, _, _)) = &self.second {
                    v.push(("coordinator-2".into(), c.cpu_secs()));
                }
                v.push((
                    "node".into(),
                    self.nodes.iter().map(Proc::cpu_secs).sum::<f64>(),
                ));
            }
            "litellm" => {
                if let Some(l) = &self.litellm {
                    v.push(("litellm".into(), l.cpu_secs()));
                }
            }
            _ => {}
        }
        v
    }

    /// Waits (at most a minute) until the servers behind `target` have
    /// worked off what a step left them: under 5% of a core for a second.
    /// A server past its limit keeps serving abandoned requests, which
    /// must not count against the next step.
    async fn wait_idle(&self, target: &str) {
        let busy = |v: &[(String, f64)]| v.iter().map(|(_, c)| c).sum::<f64>();
        for _ in 0..60 {
            let before = busy(&self.cpu(target));
            tokio::time::sleep(Duration::from_secs(1)).await;
            if busy(&self.cpu(target)) - before < 0.05 {
                return;
            }
        }
    }

    fn rss(&self) -> (u64, u64) {
        (
            self.coordinator.as_ref().map_or(0, Proc::rss_bytes),
            self.nodes.iter().map(Proc::rss_bytes).sum(),
        )
    }

    async fn held_streams(&mut self, cli: &Cli) -> anyhow::Result<HeldResult> {
        while self.nodes.len() < cli.stream_nodes {
            self.start_node().await?;
        }
        self.wait_for_nodes(cli.stream_nodes).await?;
        let target = Target {
            urls: vec![format!("{}/chat/completions", self.api)],
            next: Default::default(),
            api_key: Some(self.api_key.clone()),
            model: HELD_MODEL.into(),
        };
        let (c0, n0) = self.rss();
        let client = load::client(cli.streams)?;
        let stats = format!("{}/stats", self.mock_url);
        let start = std::time::Instant::now();
        let mut sample = (0u64, 0u64, 0u64, 0f64);
        let streams = cli.streams;
        let hold = Duration::from_millis(self.hold_ms);
        let h = load::held_streams(&client, &target, streams, async {
            // Wait until the mock holds every stream (each reached an
            // upstream through a node), or most of the hold has passed.
            let http = reqwest::Client::new();
            let mut held = 0;
            while start.elapsed() < hold.mul_f64(0.8) {
                held = async {
                    let v: Value = http.get(&stats).send().await.ok()?.json().await.ok()?;
                    v["held"].as_u64()
                }
                .await
                .unwrap_or(held);
                if held >= streams as u64 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let (c, n) = self.rss();
            sample = (held, c, n, start.elapsed().as_secs_f64());
        })
        .await;
        let (held, c1, n1, open_secs) = sample;
        let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / held.max(1) as f64;
        Ok(HeldResult {
            streams,
            nodes: self.nodes.len(),
            reached_upstream: held,
            done: h.done,
            errors: h.errors,
            coordinator_rss_per_stream: per(c1, c0),
            node_rss_per_stream: per(n1, n0),
            open_secs,
        })
    }
}

/// The node's models: the mock upstream under the catalog ids (with the
/// tokenizer the coordinator counts with), or under the plain names when
/// nothing is counted.
fn upstream_models(mock: &str, hold_ms: u64, model_file: Option<&Path>) -> String {
    let (model, held, tokenizer) = match model_file {
        Some(f) => (
            MODEL_ID,
            HELD_MODEL_ID,
            format!("tokenizer = {:?}\n", f.display().to_string()),
        ),
        None => (MODEL, HELD_MODEL, String::new()),
    };
    format!(
        r#"[[models]]
id = "{model}"
price_in = 100
price_out = 200
max_concurrency = 4096
[models.upstream]
base_url = "{mock}/v1"
model = "mock-model"
context_length = 8192
{tokenizer}
[[models]]
id = "{held}"
price_in = 100
price_out = 200
max_concurrency = 4096
[models.upstream]
base_url = "{mock}/v1"
model = "hold-{hold_ms}"
context_length = 8192
timeout_secs = 600
{tokenizer}"#
    )
}

fn free_udp_port() -> anyhow::Result<u16> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok(s.local_addr()?.port())
}

fn command_output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn edit(path: &Path, f: impl FnOnce(&str) -> anyhow::Result<String>) -> anyhow::Result<()> {
    let s = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let edited = f(&s)?;
    if edited == s {
        bail!(
            "{}: the template changed; nothing was edited",
            path.display()
        );
    }
    std::fs::write(path, edited).with_context(|| format!("write {}", path.display()))
}

fn report(cli: &Cli, results: &[TargetResult], held: Option<&HeldResult>) -> String {
    let mut r = String::new();
    let find = |n: &str| results.iter().find(|t| t.name == n);
    let _ = writeln!(
        r,
        "Non-streamed requests ({} s per rate; latency in ms from when each request was due; 16 completion tokens):\n",
        cli.secs
    );
    let _ = writeln!(
        r,
        "| target | offered req/s | achieved | errors | p50 ms | p99 ms | CPU ms per request |"
    );
    let _ = writeln!(r, "|---|---:|---:|---:|---:|---:|---|");
    for t in results {
        for (rate, s, cpu) in &t.rates {
            let _ = writeln!(
                r,
                "| {} | {rate} | {:.0} | {} | {:.2} | {:.2} | {} |",
                t.name,
                s.rate(),
                s.errors,
                s.ms(0.5),
                s.ms(0.99),
                cpu_text(cpu)
            );
        }
    }
    let _ = writeln!(
        r,
        "\nThe most each carries ({} connections back to back, {} s), and streamed time to first content chunk ({} sequential requests on one kept-alive connection):\n",
        cli.conns, cli.secs, cli.ttfc_requests
    );
    let _ = writeln!(
        r,
        "| target | max req/s | errors | p50 ms | p99 ms | CPU ms per request | first chunk p50 ms | p99 ms |"
    );
    let _ = writeln!(r, "|---|---:|---:|---:|---:|---|---:|---:|");
    for t in results {
        let _ = writeln!(
            r,
            "| {} | {:.0} | {} | {:.2} | {:.2} | {} | {:.2} | {:.2} |",
            t.name,
            t.max.rate(),
            t.max.errors,
            t.max.ms(0.5),
            t.max.ms(0.99),
            cpu_text(&t.max_cpu),
            t.ttfc.ms(0.5),
            t.ttfc.ms(0.99)
        );
    }
    if let (Some(d), Some(s)) = (find("direct"), find("sharenet")) {
        let _ = writeln!(r, "\nAdded over calling the mock directly:\n");
        let _ = writeln!(r, "| | sharenet | LiteLLM | LiteLLM ÷ sharenet |");
        let _ = writeln!(r, "|---|---:|---:|---:|");
        let l = find("litellm");
        let mut row = |what: &str, f: &dyn Fn(&TargetResult) -> f64, lower: bool| {
            let sv = f(s) - if lower { f(d) } else { 0.0 };
            let lv = l.map(|l| f(l) - if lower { f(d) } else { 0.0 });
            let _ = writeln!(
                r,
                "| {what} | {sv:.2} | {} | {} |",
                lv.map_or("—".into(), |v| format!("{v:.2}")),
                lv.map_or("—".into(), |v| format!("{:.1}×", v / sv.max(1e-9)))
            );
        };
        row("first chunk p50, ms", &|t| t.ttfc.ms(0.5), true);
        row("first chunk p99, ms", &|t| t.ttfc.ms(0.99), true);
        for (i, rate) in cli.rates.iter().enumerate() {
            row(
                &format!("p50 at {rate} req/s, ms"),
                &|t| t.rates.get(i).map_or(f64::NAN, |x| x.1.ms(0.5)),
                true,
            );
            row(
                &format!("p99 at {rate} req/s, ms"),
                &|t| t.rates.get(i).map_or(f64::NAN, |x| x.1.ms(0.99)),
                true,
            );
        }
        let _ = writeln!(
            r,
            "| max req/s ({} connections) | {:.0} | {} | {} |",
            cli.conns,
            s.max.rate(),
            l.map_or("—".into(), |l| format!("{:.0}", l.max.rate())),
            l.map_or("—".into(), |l| format!(
                "{:.2}× (sharenet carries {:.1}×)",
                l.max.rate() / s.max.rate().max(1e-9),
                s.max.rate() / l.max.rate().max(1e-9)
            ))
        );
    }
    if let Some(h) = held {
        let _ = writeln!(
            r,
            "\nOpen streams: {} streamed requests at once across {} nodes, the mock holding every stream's tokens: {} reached the upstream ({:.1} s after the first was sent), {} ended with [DONE], {} failed; resident memory per open stream: coordinator {:.1} KiB, nodes {:.1} KiB.",
            h.streams,
            h.nodes,
            h.reached_upstream,
            h.open_secs,
            h.done,
            h.errors,
            h.coordinator_rss_per_stream / 1024.0,
            h.node_rss_per_stream / 1024.0
        );
    }
    r
}

fn cpu_text(cpu: &[(String, f64)]) -> String {
    cpu.iter()
        .map(|(n, ms)| format!("{n} {ms:.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn sample_json(s: &Sample) -> Value {
    json!({
        "ok": s.ok(), "errors": s.errors, "rate": s.rate(),
        "p50_ms": s.ms(0.5), "p90_ms": s.ms(0.9), "p99_ms": s.ms(0.99), "max_ms": s.ms(1.0),
    })
}

fn to_json(results: &[TargetResult], held: Option<&HeldResult>) -> Value {
    json!({
        "targets": results.iter().map(|t| json!({
            "name": t.name,
            "first_chunk": sample_json(&t.ttfc),
            "rates": t.rates.iter().map(|(rate, s, cpu)| json!({
                "offered": rate, "sample": sample_json(s),
                "cpu_ms_per_request": cpu.iter().map(|(n, v)| (n.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            })).collect::<Vec<_>>(),
            "max": sample_json(&t.max),
            "max_cpu_ms_per_request": t.max_cpu.iter().map(|(n, v)| (n.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
        "held_streams": held.map(|h| json!({
            "streams": h.streams, "nodes": h.nodes, "reached_upstream": h.reached_upstream,
            "done": h.done, "errors": h.errors, "open_secs": h.open_secs,
            "coordinator_rss_bytes_per_stream": h.coordinator_rss_per_stream,
            "node_rss_bytes_per_stream": h.node_rss_per_stream,
        })),
    })
}
