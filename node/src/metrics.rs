//! The node's Prometheus metrics: what it has served since it started
//! (counters bumped as each job ends) and, at scrape time, each model's
//! load (gauges). The local API (`admin`) serves them at `/metrics`. A
//! leaf: the state hands it plain [`ModelLoad`] rows.

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

/// What the node has served since it started, for `/metrics`.
pub(crate) struct NodeMetrics {
    registry: Registry,
    jobs: IntCounterVec,
    tokens: IntCounterVec,
    earned: IntCounterVec,
    schema_compiles: IntCounterVec,
}

impl NodeMetrics {
    pub(crate) fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let jobs = IntCounterVec::new(
            Opts::new(
                "sharenet_node_jobs_total",
                "Jobs served to the end, by model and finish reason.",
            ),
            &["model", "finish_reason"],
        )?;
        let tokens = IntCounterVec::new(
            Opts::new(
                "sharenet_node_tokens_total",
                "Tokens in receipts, by model and direction (prompt, generation).",
            ),
            &["model", "direction"],
        )?;
        let earned = IntCounterVec::new(
            Opts::new(
                "sharenet_node_earned_nano_usd_total",
                "What this node's receipts claim, nano-USD, by model.",
            ),
            &["model"],
        )?;
        let schema_compiles = IntCounterVec::new(
            Opts::new(
                "sharenet_node_schema_compiles_total",
                "Grammars compiled for admitted jobs (response_format schemas, forced tool calls), by model.",
            ),
            &["model"],
        )?;
        registry.register(Box::new(jobs.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        registry.register(Box::new(earned.clone()))?;
        registry.register(Box::new(schema_compiles.clone()))?;
        Ok(Self {
            registry,
            jobs,
            tokens,
            earned,
            schema_compiles,
        })
    }

    /// A job finished with this receipt.
    pub(crate) fn served(&self, model: &str, finish: &str, r: &sharenet_proto::Receipt) {
        self.jobs.with_label_values(&[model, finish]).inc();
        self.tokens
            .with_label_values(&[model, "prompt"])
            .inc_by(u64::from(r.input_tokens));
        self.tokens
            .with_label_values(&[model, "generation"])
            .inc_by(u64::from(r.output_tokens));
        self.earned.with_label_values(&[model]).inc_by(r.amount);
    }

    /// A job's grammar is about to be compiled.
    pub(crate) fn schema_compile(&self, model: &str) {
        self.schema_compiles.with_label_values(&[model]).inc();
    }

    /// Grammars compiled for `model` so far.
    #[cfg(test)]
    pub(crate) fn schema_compiles(&self, model: &str) -> u64 {
        self.schema_compiles.with_label_values(&[model]).get()
    }
}

/// One model's load at scrape time.
pub(crate) struct ModelLoad {
    /// The model's id on this node.
    pub(crate) id: String,
    /// Jobs generating now.
    pub(crate) running: usize,
    /// Jobs queued for a slot.
    pub(crate) waiting: usize,
    /// KV cache and decode speed: local text models only.
    pub(crate) text: Option<TextLoad>,
}

/// A local text model's scheduler figures.
pub(crate) struct TextLoad {
    pub(crate) kv_used_bytes: usize,
    pub(crate) kv_budget_bytes: usize,
    pub(crate) tokens_per_sec: usize,
}

impl NodeMetrics {
    /// The Prometheus text for `/metrics`: the counters, and gauges of
    /// `loads` taken now.
    pub(crate) fn render(&self, loads: &[ModelLoad]) -> Vec<u8> {
        let mut families = self.registry.gather();
        let snapshot = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["model"]).ok()?;
            snapshot.register(Box::new(g.clone())).ok()?;
            Some(g)
        };
        let running = gauge("sharenet_node_running_jobs", "Jobs generating now.");
        let waiting = gauge("sharenet_node_waiting_jobs", "Jobs queued for a slot.");
        let kv = gauge("sharenet_node_kv_cache_used_bytes", "KV cache reserved.");
        let kv_budget = gauge("sharenet_node_kv_cache_budget_bytes", "KV cache budget.");
        let speed = gauge(
            "sharenet_node_decode_tokens_per_second",
            "Decode speed of all sequences together, smoothed.",
        );
        let set = |g: &Option<IntGaugeVec>, model: &str, v: usize| {
            if let Some(g) = g {
                g.with_label_values(&[model])
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
            }
        };
        for l in loads {
            let id = l.id.as_str();
            set(&running, id, l.running);
            set(&waiting, id, l.waiting);
            if let Some(t) = &l.text {
                set(&kv, id, t.kv_used_bytes);
                set(&kv_budget, id, t.kv_budget_bytes);
                set(&speed, id, t.tokens_per_sec);
            }
        }
        families.extend(snapshot.gather());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!(error = %e, "encode node metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_show_each_models_load_and_kv_only_for_text_models() {
        let m = NodeMetrics::new().unwrap();
        let loads = [
            ModelLoad {
                id: "text".into(),
                running: 2,
                waiting: 1,
                text: Some(TextLoad {
                    kv_used_bytes: 4096,
                    kv_budget_bytes: 8192,
                    tokens_per_sec: 30,
                }),
            },
            ModelLoad {
                id: "embed".into(),
                running: 0,
                waiting: 3,
                text: None,
            },
        ];
        let text = String::from_utf8(m.render(&loads)).unwrap();
        for line in [
            r#"sharenet_node_running_jobs{model="text"} 2"#,
            r#"sharenet_node_waiting_jobs{model="text"} 1"#,
            r#"sharenet_node_running_jobs{model="embed"} 0"#,
            r#"sharenet_node_waiting_jobs{model="embed"} 3"#,
            r#"sharenet_node_kv_cache_used_bytes{model="text"} 4096"#,
            r#"sharenet_node_kv_cache_budget_bytes{model="text"} 8192"#,
            r#"sharenet_node_decode_tokens_per_second{model="text"} 30"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        assert!(
            !text.contains(r#"kv_cache_used_bytes{model="embed"}"#),
            "{text}"
        );
    }
}
