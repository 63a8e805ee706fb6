//! Writes a run's results ([`crate::results`]) into a folder: the summary
//! (JSON), time series and per-node tables (CSV), the signed sample
//! statement, and the charts (SVG, `charts.rs`). Nothing here depends on
//! the wall clock, so the files are a function of the scenario and the
//! seed.

use std::fmt::Write as _;
use std::path::Path;

use crate::charts;
use crate::error::SimError;
use crate::results::RunResult;

fn f(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        String::new()
    }
}

fn opt(x: Option<f64>) -> String {
    x.map(f).unwrap_or_default()
}

impl RunResult {
    pub fn timeseries_csv(&self) -> String {
        let mut s = String::from(
            "t_s,arrivals,served,failed,success_rate,ttft_p50_ms,ttft_p95_ms,ttft_p99_ms,total_p50_ms,total_p95_ms,total_p99_ms,usd_per_mtok,adversary_traffic_share,trust_honest,trust_adversary,live_nodes\n",
        );
        for w in &self.windows {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{},{},{},{:.6},{:.5},{:.5},{},{}",
                f(w.t_s),
                w.arrivals,
                w.served,
                w.failed,
                f(w.success_rate),
                f(w.ttft.p50),
                f(w.ttft.p95),
                f(w.ttft.p99),
                f(w.total.p50),
                f(w.total.p95),
                f(w.total.p99),
                w.usd_per_mtok,
                w.adversary_traffic_share,
                w.trust_honest,
                if w.trust_adversary.is_finite() {
                    format!("{:.5}", w.trust_adversary)
                } else {
                    String::new()
                },
                w.live_nodes
            );
        }
        s
    }

    pub fn nodes_csv(&self) -> String {
        let mut s = String::from(
            "node,model,hardware,behaviour,price_out,joined_s,left_s,last_dispatch_s,jobs,dispatches,earned_nano_usd,check_earned_nano_usd,trust_end,spot_failed\n",
        );
        for n in self.nodes.iter().filter(|n| n.ever_joined) {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{},{},{},{},{:.5},{}",
                n.node,
                n.model,
                n.hardware,
                n.behaviour,
                n.price_out,
                f(n.joined_s),
                opt(n.left_s),
                opt(n.last_dispatch_s),
                n.jobs,
                n.dispatches,
                n.earned,
                n.check_earned,
                n.trust_end,
                n.spot_failed
            );
        }
        s
    }

    pub fn adversaries_csv(&self) -> String {
        let mut s = String::from(
            "node,kind,group,joined_s,caught_after_s,served_before_caught,earned_before_caught_nano_usd,earned_nano_usd,dispatches\n",
        );
        for a in &self.adversaries {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{}",
                a.node,
                a.kind,
                a.group,
                f(a.joined_s),
                opt(a.caught_after_s),
                a.served_before_caught,
                a.earned_before_caught,
                a.earned,
                a.dispatches
            );
        }
        s
    }

    pub fn blocks_csv(&self) -> String {
        let mut s = String::from("first_request,attempts,adversary_attempts,adversary_share\n");
        for b in &self.blocks {
            let _ = writeln!(
                s,
                "{},{},{},{:.5}",
                b.first_request,
                b.attempts,
                b.adversary_attempts,
                b.share()
            );
        }
        s
    }

    /// Writes every output file into `dir` (created if missing).
    pub fn write(&self, dir: &Path) -> Result<(), SimError> {
        std::fs::create_dir_all(dir).map_err(|source| SimError::Write {
            path: dir.display().to_string(),
            source,
        })?;
        let put = |name: &str, body: &str| {
            let p = dir.join(name);
            std::fs::write(&p, body).map_err(|source| SimError::Write {
                path: p.display().to_string(),
                source,
            })
        };
        let json = serde_json::to_string_pretty(&self.summary)
            .map_err(|e| SimError::Encode(e.to_string()))?;
        put("summary.json", &(json + "\n"))?;
        put("timeseries.csv", &self.timeseries_csv())?;
        put("nodes.csv", &self.nodes_csv())?;
        put("adversaries.csv", &self.adversaries_csv())?;
        put("adversary_share_blocks.csv", &self.blocks_csv())?;
        if let Some(j) = &self.statement_json {
            let s = serde_json::to_string_pretty(j).map_err(|e| SimError::Encode(e.to_string()))?;
            put("statement_sample.json", &(s + "\n"))?;
        }
        if let Some(c) = &self.statement_csv {
            put("statement_sample.csv", c)?;
        }
        charts::write_all(self, dir)?;
        Ok(())
    }
}
