//! `sharenet-sim`: run a scenario, compare two parameter sets, or measure
//! the simulator's own speed. See simulations/README.md.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use sharenet_sim::{RunResult, Scenario, compare, simulate};

#[derive(Parser)]
#[command(
    name = "sharenet-sim",
    about = "Deterministic network simulator for sharenet operators"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Seed of every random draw (default: the scenario's `seed`).
    #[arg(long)]
    seed: Option<u64>,
    /// Builder requests to simulate (default: the scenario's `requests`).
    #[arg(long)]
    requests: Option<u64>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one scenario and write its outputs into a folder.
    Run {
        scenario: PathBuf,
        /// Output folder (default: sim-out/<scenario name>).
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// Override a scenario key, e.g. `operator.network_fee_bps=300`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Run a scenario as written (A) and with `--set` overrides (B) on the
    /// same seed, and print the differences.
    Compare {
        scenario: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE", required = true)]
        sets: Vec<String>,
        /// Output folder (A in a/, B in b/, compare.md and compare.json).
        #[arg(long, short)]
        out: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// Time the simulator: nodes × requests grid on a generated market.
    Bench {
        /// Node counts to run.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
        nodes: Vec<u64>,
        /// Requests per run.
        #[arg(long, default_value_t = 100_000)]
        requests: u64,
        /// Also run 1,000,000 requests at 10,000 nodes.
        #[arg(long)]
        million: bool,
    },
}

fn load(path: &Path, sets: &[String], common: &Common) -> Result<Scenario> {
    let src = std::fs::read_to_string(path)
        .with_context(|| format!("read scenario {}", path.display()))?;
    let mut sc =
        Scenario::parse(&src, sets).with_context(|| format!("load scenario {}", path.display()))?;
    if let Some(s) = common.seed {
        sc.seed = s;
    }
    if let Some(r) = common.requests {
        sc.requests = r.max(1);
    }
    Ok(sc)
}

fn run_one(sc: &Scenario, quiet: bool, label: &str) -> Result<(RunResult, f64)> {
    run_with(sc, quiet, label, None)
}

fn run_with(
    sc: &Scenario,
    quiet: bool,
    label: &str,
    multi: Option<&MultiProgress>,
) -> Result<(RunResult, f64)> {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        let b = match multi {
            Some(m) => m.add(ProgressBar::new(sc.requests)),
            None => ProgressBar::new(sc.requests),
        };
        b.set_style(
            ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} requests ({per_sec}, eta {eta})",
            )
            .context("build the progress bar style")?,
        );
        b.set_prefix(label.to_string());
        b
    };
    let t = Instant::now();
    let result = simulate(sc, &mut |done, _| bar.set_position(done))
        .with_context(|| format!("simulate scenario {}", sc.name))?;
    bar.finish_and_clear();
    Ok((result, t.elapsed().as_secs_f64()))
}

fn print_summary(r: &RunResult, wall_s: f64, out: &Path) {
    let s = &r.summary;
    println!(
        "{}: {} requests ({} served, {} failed, success {:.2}%) in {:.0} simulated s, {} events in {:.2} s wall ({:.0} events/s)",
        s.scenario,
        s.requests.arrivals,
        s.requests.served,
        s.requests.failed,
        s.requests.success_rate * 100.0,
        s.simulated_s,
        s.events,
        wall_s,
        s.events as f64 / wall_s.max(1e-9)
    );
    println!(
        "  TTFT p50/p95/p99 {:.0}/{:.0}/{:.0} ms; total p50/p95/p99 {:.0}/{:.0}/{:.0} ms",
        s.latency_ms.ttft.p50,
        s.latency_ms.ttft.p95,
        s.latency_ms.ttft.p99,
        s.latency_ms.total.p50,
        s.latency_ms.total.p95,
        s.latency_ms.total.p99
    );
    println!(
        "  builders paid ${:.4} per 1M tokens; providers earned ${:.2} (Gini {:.3}); fee ${:.2}; margins ${:.2}; balances: {}",
        s.cost.usd_per_mtok,
        s.settlement.total_provider as f64 / 1e9,
        s.providers.gini,
        s.settlement.total_network_fee as f64 / 1e9,
        s.settlement.total_margin as f64 / 1e9,
        s.settlement.balances
    );
    if s.adversaries.nodes > 0 {
        println!(
            "  adversaries: {} nodes, {:.2}% of traffic, {:.2}% of money; under 1% of traffic from request {}",
            s.adversaries.nodes,
            s.adversaries.traffic_share * 100.0,
            s.adversaries.money_share * 100.0,
            s.adversaries
                .share_below_1pct_after_requests
                .map_or_else(|| "never".to_string(), |r| r.to_string())
        );
    }
    println!("  outputs in {}", out.display());
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run {
            scenario,
            out,
            sets,
            common,
        } => {
            let sc = load(&scenario, &sets, &common)?;
            let out = out.unwrap_or_else(|| PathBuf::from("sim-out").join(&sc.name));
            let (r, wall) = run_one(&sc, common.quiet, &sc.name)?;
            r.write(&out)
                .with_context(|| format!("write outputs to {}", out.display()))?;
            print_summary(&r, wall, &out);
        }
        Cmd::Compare {
            scenario,
            sets,
            out,
            common,
        } => {
            let a = load(&scenario, &[], &common)?;
            let b = load(&scenario, &sets, &common)?;
            let out =
                out.unwrap_or_else(|| PathBuf::from("sim-out").join(format!("{}-compare", a.name)));
            // The two runs are independent (each is a function of its own
            // scenario and seed), so they run on two threads.
            let multi = MultiProgress::new();
            let (ra, rb) = std::thread::scope(|s| {
                let ta = s.spawn(|| run_with(&a, common.quiet, "A", Some(&multi)));
                let rb = run_with(&b, common.quiet, "B", Some(&multi));
                let ra = ta
                    .join()
                    .map_err(|_| anyhow::anyhow!("run A panicked"))
                    .and_then(|r| r);
                (ra, rb)
            });
            let ((ra, wa), (rb, wb)) = (ra?, rb?);
            ra.write(&out.join("a"))
                .with_context(|| format!("write outputs to {}", out.join("a").display()))?;
            rb.write(&out.join("b"))
                .with_context(|| format!("write outputs to {}", out.join("b").display()))?;
            let label = sets.join(" ");
            let rows = compare::rows(&ra.summary, &rb.summary);
            let table = compare::table(&rows, &label);
            std::fs::write(
                out.join("compare.md"),
                format!(
                    "# {} (seed {}): A vs B ({label})\n\n{table}",
                    a.name, a.seed
                ),
            )
            .context("write compare.md")?;
            std::fs::write(
                out.join("compare.json"),
                serde_json::to_string_pretty(&rows).context("encode compare.json")? + "\n",
            )
            .context("write compare.json")?;
            println!("{} (seed {}), A = as written, B = {label}", a.name, a.seed);
            println!("{table}");
            println!(
                "A: {:.2} s wall, B: {:.2} s wall; outputs in {}",
                wa,
                wb,
                out.display()
            );
        }
        Cmd::Bench {
            nodes,
            requests,
            million,
        } => {
            let mut runs: Vec<(u64, u64)> = nodes.iter().map(|n| (*n, requests)).collect();
            if million {
                runs.push((10_000, 1_000_000));
            }
            println!(
                "| nodes | requests | events | wall (s) | events/s | requests/s | peak RSS (MiB) |"
            );
            println!("|---:|---:|---:|---:|---:|---:|---:|");
            for (n, r) in runs {
                let sc = sharenet_sim::scenario::bench_scenario(n, r)
                    .context("build the bench scenario")?;
                let (res, wall) = run_one(&sc, true, "bench")?;
                let s = &res.summary;
                anyhow::ensure!(s.settlement.balances, "bench run does not balance");
                println!(
                    "| {} | {} | {} | {:.2} | {:.0} | {:.0} | {} |",
                    n,
                    r,
                    s.events,
                    wall,
                    s.events as f64 / wall.max(1e-9),
                    r as f64 / wall.max(1e-9),
                    peak_rss_kib()
                        .map_or_else(|| "?".into(), |k| format!("{:.0}", k as f64 / 1024.0))
                );
            }
        }
    }
    Ok(())
}
