//! The coordinator's Prometheus metrics (the `prometheus` crate, classic
//! text format, which `promtool check metrics` accepts), named the way
//! vLLM and LiteLLM dashboards expect:
//!
//! - per request, when it ends: `sharenet_http_requests_total{path,
//!   status}`, and for inference `sharenet_inference_requests_total{model,
//!   status, app}`, `sharenet_time_to_first_token_seconds{model}`,
//!   `sharenet_e2e_request_latency_seconds{model}`,
//!   `sharenet_prompt_tokens_total{model, app}`,
//!   `sharenet_generation_tokens_total{model, app}` and
//!   `sharenet_spend_nano_usd_total{model, app}`;
//! - as things happen: requests received, fallbacks, receipts accepted and
//!   rejected, spot checks;
//! - at scrape time ([`Metrics::page`], which `/metrics` serves): adverts
//!   by outcome, live nodes per model, open breakers, nodes by trust band,
//!   jobs in flight, network events dropped.
//!
//! Label values come from the coordinator's own records (model names that
//! routed, app ids the operator created, status codes), never from raw
//! request text, so their number stays bounded.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::proto::MetricFamily;
use sharenet_api::dashboard::MinuteStats;

use crate::core::clock::now_ms;
use crate::core::registry::Registry as Adverts;
use crate::core::routing::Routing;
use crate::core::sync::lock;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds (vLLM's time-to-first-token buckets).
const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
];

/// The paths `sharenet_http_requests_total` names; any other is `other`.
const PATHS: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/messages",
    "/v1/models",
    "/v1/receipts",
    "/v1/usage",
    "/v1/statements",
    "/v1/generation",
    "/health",
    "/ready",
    "/metrics",
];

pub struct Metrics {
    registry: Registry,
    /// Chat, completion, messages and embedding requests received.
    pub requests: IntCounter,
    pub fallbacks: IntCounter,
    pub receipts_accepted: IntCounter,
    /// By reason (`ReceiptRejection::reason`, `replay`, `over_hold`).
    receipts_rejected: IntCounterVec,
    /// Spot checks completed, and nodes found failing one.
    pub spot_checks: IntCounter,
    pub spot_checks_failed: IntCounter,
    /// Completion notices the spot-check sampler had no room for.
    pub spot_check_notices_dropped: IntCounter,
    http: IntCounterVec,
    inference: IntCounterVec,
    ttft: HistogramVec,
    latency: HistogramVec,
    prompt_tokens: IntCounterVec,
    generation_tokens: IntCounterVec,
    spend: IntCounterVec,
    /// Inference requests per minute over the last hour, for the
    /// dashboard's charts (Prometheus keeps the long history).
    timeline: Mutex<VecDeque<Minute>>,
}

/// Every `reason` of `sharenet_receipts_rejected_total`, exported at 0
/// from the start (so rates and alerts see each series before its first
/// increment).
const REJECTION_REASONS: &[&str] = &[
    "invalid",
    "wrong_signer",
    "wrong_job",
    "wrong_coordinator",
    "wrong_model",
    "over_price",
    "output_tokens",
    "input_tokens",
    "request_digest",
    "response_digest",
    "replay",
    "over_hold",
];

/// Inference paths, whose requests the timeline counts.
const INFERENCE_PATHS: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/messages",
];
/// Minutes the timeline keeps.
pub const TIMELINE_MINUTES: usize = 60;
const MINUTE_MS: u64 = 60_000;

#[derive(Debug, Clone, Copy, Default)]
struct Minute {
    start_ms: u64,
    requests: u64,
    client_errors: u64,
    server_errors: u64,
    ttft_sum_ms: f64,
    ttft_count: u64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("requests", &self.requests.get())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// What one finished request contributes.
pub struct Finished<'a> {
    pub path: &'a str,
    pub status: u16,
    pub app: &'a str,
    pub duration_s: f64,
    /// For inference: the model, tokens, charge and time to first token.
    pub inference: Option<Inference<'a>>,
}

pub struct Inference<'a> {
    pub model: &'a str,
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub charge_nano_usd: u64,
    pub ttft_s: Option<f64>,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|_| unreachable_metric(name));
    // Names are constants of this module: registering cannot collide.
    let _ = r.register(Box::new(c.clone()));
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|_| unreachable_metric(name));
    let _ = r.register(Box::new(c.clone()));
    c
}

fn histogram_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
        labels,
    )
    .unwrap_or_else(|_| unreachable_metric(name));
    let _ = r.register(Box::new(h.clone()));
    h
}

/// A metric of this module with an invalid name: a programming error that
/// the unit test below catches; never reached at run time.
#[allow(clippy::panic)]
fn unreachable_metric(name: &str) -> ! {
    panic!("invalid metric definition {name}")
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let this = Self {
            requests: counter(
                &r,
                "sharenet_requests_total",
                "Chat, completion, messages and embedding requests received.",
            ),
            fallbacks: counter(
                &r,
                "sharenet_fallbacks_total",
                "Times a request moved to another node before its first token.",
            ),
            receipts_accepted: counter(
                &r,
                "sharenet_receipts_accepted_total",
                "Receipts verified, countersigned and stored.",
            ),
            receipts_rejected: counter_vec(
                &r,
                "sharenet_receipts_rejected_total",
                "Receipts refused, by reason (invalid, wrong_signer, output_tokens, replay, ...).",
                &["reason"],
            ),
            spot_checks: counter(
                &r,
                "sharenet_spot_checks_total",
                "Spot checks completed (both runs finished).",
            ),
            spot_checks_failed: counter(
                &r,
                "sharenet_spot_checks_failed_total",
                "Nodes found serving something other than their advertised weights.",
            ),
            spot_check_notices_dropped: counter(
                &r,
                "sharenet_spot_check_notices_dropped_total",
                "Finished jobs the spot-check sampler had no room for.",
            ),
            http: counter_vec(
                &r,
                "sharenet_http_requests_total",
                "HTTP requests answered, by path and status.",
                &["path", "status"],
            ),
            inference: counter_vec(
                &r,
                "sharenet_inference_requests_total",
                "Inference requests answered, by model, status and app.",
                &["model", "status", "app"],
            ),
            ttft: histogram_vec(
                &r,
                "sharenet_time_to_first_token_seconds",
                "Time from the request to the first token, by model.",
                &["model"],
            ),
            latency: histogram_vec(
                &r,
                "sharenet_e2e_request_latency_seconds",
                "Time from the request to its end, by model.",
                &["model"],
            ),
            prompt_tokens: counter_vec(
                &r,
                "sharenet_prompt_tokens_total",
                "Prompt tokens billed, by model and app.",
                &["model", "app"],
            ),
            generation_tokens: counter_vec(
                &r,
                "sharenet_generation_tokens_total",
                "Generated tokens billed, by model and app.",
                &["model", "app"],
            ),
            spend: counter_vec(
                &r,
                "sharenet_spend_nano_usd_total",
                "What apps were charged, nano-USD, by model and app.",
                &["model", "app"],
            ),
            timeline: Mutex::default(),
            registry: r,
        };
        for reason in REJECTION_REASONS {
            this.receipts_rejected.with_label_values(&[reason]);
        }
        this
    }

    /// Records a request that ended (called once per request, where its
    /// access-log line is written).
    pub fn finished(&self, f: &Finished<'_>) {
        let path = PATHS
            .iter()
            .find(|p| {
                f.path
                    .strip_prefix(**p)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
            .copied()
            .unwrap_or("other");
        if INFERENCE_PATHS.contains(&path) {
            self.on_timeline(f, now_ms());
        }
        let status = f.status.to_string();
        self.http.with_label_values(&[path, &status]).inc();
        let Some(i) = &f.inference else {
            return;
        };
        self.inference
            .with_label_values(&[i.model, &status, f.app])
            .inc();
        self.latency
            .with_label_values(&[i.model])
            .observe(f.duration_s);
        if let Some(t) = i.ttft_s {
            self.ttft.with_label_values(&[i.model]).observe(t);
        }
        let labels = [i.model, f.app];
        self.prompt_tokens
            .with_label_values(&labels)
            .inc_by(u64::from(i.input_tokens));
        self.generation_tokens
            .with_label_values(&labels)
            .inc_by(u64::from(i.output_tokens));
        self.spend
            .with_label_values(&labels)
            .inc_by(i.charge_nano_usd);
    }

    /// A node's receipt refused for `reason`.
    pub fn receipt_rejected(&self, reason: &str) {
        self.receipts_rejected.with_label_values(&[reason]).inc();
    }

    /// Receipts refused, all reasons.
    pub fn receipts_rejected_total(&self) -> u64 {
        use prometheus::core::Collector;
        self.receipts_rejected
            .collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    fn on_timeline(&self, f: &Finished<'_>, now_ms: u64) {
        let start_ms = now_ms - now_ms % MINUTE_MS;
        let mut t = lock(&self.timeline);
        if t.back().is_none_or(|m| m.start_ms < start_ms) {
            t.push_back(Minute {
                start_ms,
                ..Minute::default()
            });
            while t.len() > TIMELINE_MINUTES {
                t.pop_front();
            }
        }
        let Some(m) = t.back_mut() else { return };
        m.requests += 1;
        match f.status {
            400..=499 => m.client_errors += 1,
            500.. => m.server_errors += 1,
            _ => {}
        }
        if let Some(ttft_s) = f.inference.as_ref().and_then(|i| i.ttft_s) {
            m.ttft_sum_ms += ttft_s * 1e3;
            m.ttft_count += 1;
        }
    }

    /// The last hour minute by minute up to `now_ms`, oldest first, quiet
    /// minutes included.
    pub fn timeline(&self, now_ms: u64) -> Vec<MinuteStats> {
        let t = lock(&self.timeline);
        let last = now_ms - now_ms % MINUTE_MS;
        (0..TIMELINE_MINUTES as u64)
            .rev()
            .map(|back| last.saturating_sub(back * MINUTE_MS))
            .map(|start_ms| {
                let m = t
                    .iter()
                    .find(|m| m.start_ms == start_ms)
                    .copied()
                    .unwrap_or(Minute {
                        start_ms,
                        ..Minute::default()
                    });
                MinuteStats {
                    start_ms,
                    requests: m.requests,
                    client_errors: m.client_errors,
                    server_errors: m.server_errors,
                    ttft_ms: (m.ttft_count > 0).then(|| m.ttft_sum_ms / m.ttft_count as f64),
                }
            })
            .collect()
    }

    /// The text exposition of everything here plus `extra` (families
    /// computed at scrape time), sorted by name.
    pub fn render(&self, extra: Vec<MetricFamily>) -> String {
        let mut families = self.registry.gather();
        families.extend(extra);
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!(error = %e, "encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// What the page reads at scrape time, from where it is kept.
pub struct Scrape<'a> {
    /// Adverts by outcome, and the live models.
    pub registry: &'a Adverts,
    /// Open breakers, nodes by trust band, jobs in flight.
    pub routing: &'a Routing,
    /// Network events the transport dropped because its channel was full.
    pub dropped_events: u64,
    pub now_ms: u64,
}

impl Metrics {
    /// The Prometheus page: everything counted here plus the families
    /// read at scrape time from `scrape`.
    pub fn page(&self, scrape: &Scrape<'_>) -> String {
        self.render(scraped(scrape).families())
    }
}

/// The families read at scrape time.
fn scraped(scrape: &Scrape<'_>) -> Snapshot {
    let a = &scrape.registry.stats;
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let counters: [(&str, &str, u64); 13] = [
        (
            "sharenet_adverts_accepted_total",
            "Adverts verified and recorded.",
            get(&a.accepted),
        ),
        (
            "sharenet_adverts_invalid_total",
            "Adverts that did not decode or verify.",
            get(&a.invalid),
        ),
        (
            "sharenet_adverts_wrong_signer_total",
            "Adverts signed by a key other than the publisher's.",
            get(&a.wrong_signer),
        ),
        (
            "sharenet_adverts_expired_total",
            "Adverts that arrived expired.",
            get(&a.expired),
        ),
        (
            "sharenet_adverts_from_the_future_total",
            "Adverts issued too far in the future.",
            get(&a.from_the_future),
        ),
        (
            "sharenet_adverts_stale_total",
            "Adverts not newer than the last one seen.",
            get(&a.stale),
        ),
        (
            "sharenet_adverts_pruned_total",
            "Adverts dropped from routing when they expired.",
            get(&a.pruned),
        ),
        (
            "sharenet_adverts_over_price_ceiling_total",
            "Adverts with offers above the price ceiling (those offers are not routable).",
            get(&a.over_price_ceiling),
        ),
        (
            "sharenet_uncatalogued_adverts_total",
            "Advertised offers for a model outside the catalog (not routable unless allow_uncatalogued).",
            get(&a.uncatalogued),
        ),
        (
            "sharenet_adverts_catalog_mismatch_total",
            "Advertised offers under a catalogued id with weights or a kind the catalog does not accept (not routable).",
            get(&a.catalog_mismatch),
        ),
        (
            "sharenet_adverts_evicted_total",
            "Nodes without history evicted from a full registry for a node with history.",
            get(&a.evicted),
        ),
        (
            "sharenet_adverts_full_total",
            "Adverts refused because the registry was full.",
            get(&a.full),
        ),
        (
            "sharenet_p2p_events_dropped_total",
            "Network events dropped because the channel was full.",
            scrape.dropped_events,
        ),
    ];
    let snap = Snapshot::default();
    for (name, help, value) in counters {
        snap.counter(name, help, value);
    }
    let models = scrape.registry.models(scrape.now_ms);
    let live: Vec<(&str, i64)> = models
        .iter()
        .map(|m| (m.id.as_str(), i64::try_from(m.nodes).unwrap_or(i64::MAX)))
        .collect();
    snap.gauge_vec(
        "sharenet_live_nodes",
        "Nodes with a live advert, by model (node id or canonical name).",
        "model",
        &live,
    );
    let (open, bands, in_flight) = scrape.routing.summary(scrape.now_ms);
    snap.gauge(
        "sharenet_open_breakers",
        "Nodes whose circuit breaker is open.",
        open,
    );
    snap.gauge_vec(
        "sharenet_nodes_by_trust",
        "Live nodes by trust score band.",
        "band",
        &[("low", bands[0]), ("medium", bands[1]), ("high", bands[2])],
    );
    snap.gauge(
        "sharenet_jobs_in_flight",
        "This coordinator's jobs running on nodes.",
        in_flight,
    );
    snap
}

/// Families built at scrape time from values kept elsewhere.
#[derive(Default)]
pub struct Snapshot {
    registry: Registry,
}

impl Snapshot {
    /// A counter whose value is kept elsewhere (an atomic).
    pub fn counter(&self, name: &str, help: &str, value: u64) {
        let c = counter(&self.registry, name, help);
        c.inc_by(value);
    }

    /// A gauge with one label, one series per (label value, value).
    pub fn gauge_vec(&self, name: &str, help: &str, label: &str, values: &[(&str, i64)]) {
        let Ok(g) = prometheus::IntGaugeVec::new(Opts::new(name, help), &[label]) else {
            return;
        };
        for (k, v) in values {
            g.with_label_values(&[k]).set(*v);
        }
        let _ = self.registry.register(Box::new(g));
    }

    pub fn gauge(&self, name: &str, help: &str, value: i64) {
        let Ok(g) = prometheus::IntGauge::new(name, help) else {
            return;
        };
        g.set(value);
        let _ = self.registry.register(Box::new(g));
    }

    pub fn families(self) -> Vec<MetricFamily> {
        self.registry.gather()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rejection_reason_is_exported_from_the_start() {
        use crate::core::receipts::ReceiptRejection as R;
        let all = [
            R::Invalid(sharenet_proto::ProtoError::TrailingBytes(1)),
            R::WrongSigner,
            R::WrongJob,
            R::WrongCoordinator,
            R::WrongModel(String::new()),
            R::WrongPrice {
                got_in: 0,
                got_out: 0,
                want_in: 0,
                want_out: 0,
            },
            R::OutputTokens {
                claimed: 0,
                streamed: 0,
            },
            R::InputTokens {
                claimed: 0,
                reported: 0,
            },
            R::InputTokensOverBound {
                claimed: 0,
                bound: 0,
            },
            R::RequestDigest,
            R::ResponseDigest,
        ];
        let page = Metrics::new().render(Vec::new());
        for r in all.iter().map(R::reason).chain(["replay", "over_hold"]) {
            let series = format!(r#"sharenet_receipts_rejected_total{{reason="{r}"}} 0"#);
            assert!(page.contains(&series), "{series} missing:\n{page}");
        }
    }

    #[test]
    fn the_timeline_counts_inference_minute_by_minute_for_an_hour() {
        let m = Metrics::new();
        let at = |path, status, ttft_s: Option<f64>, now| {
            m.on_timeline(
                &Finished {
                    path,
                    status,
                    app: "acme",
                    duration_s: 0.1,
                    inference: ttft_s.map(|t| Inference {
                        model: "m",
                        input_tokens: 1,
                        output_tokens: 1,
                        charge_nano_usd: 1,
                        ttft_s: Some(t),
                    }),
                },
                now,
            )
        };
        let t0 = 1_000 * MINUTE_MS;
        at("/v1/chat/completions", 200, Some(0.010), t0);
        at("/v1/chat/completions", 200, Some(0.030), t0 + 5);
        at("/v1/chat/completions", 400, None, t0 + 6);
        at("/v1/chat/completions", 503, None, t0 + MINUTE_MS);
        let minutes = m.timeline(t0 + MINUTE_MS + 1);
        assert_eq!(minutes.len(), TIMELINE_MINUTES);
        let (before, last) = (
            &minutes[TIMELINE_MINUTES - 2],
            &minutes[TIMELINE_MINUTES - 1],
        );
        assert_eq!((before.start_ms, before.requests), (t0, 3));
        assert_eq!((before.client_errors, before.server_errors), (1, 0));
        assert!((before.ttft_ms.unwrap() - 20.0).abs() < 1e-9);
        assert_eq!(
            (last.requests, last.server_errors, last.ttft_ms),
            (1, 1, None)
        );
        // An hour later both minutes have scrolled out.
        let later = m.timeline(t0 + 61 * MINUTE_MS);
        assert!(later.iter().all(|m| m.requests == 0));
        // Only inference paths count, through `finished`.
        m.finished(&Finished {
            path: "/v1/receipts",
            status: 200,
            app: "-",
            duration_s: 0.0,
            inference: None,
        });
        assert_eq!(
            m.timeline(now_ms()).iter().map(|m| m.requests).sum::<u64>(),
            0
        );
    }

    #[test]
    fn the_page_adds_what_is_read_at_scrape_time() {
        let registry = Adverts::default();
        registry.stats.accepted.fetch_add(3, Ordering::Relaxed);
        let routing = Routing::new(1, 1_000.0);
        let page = Metrics::new().page(&Scrape {
            registry: &registry,
            routing: &routing,
            dropped_events: 2,
            now_ms: now_ms(),
        });
        for want in [
            "sharenet_adverts_accepted_total 3",
            "sharenet_p2p_events_dropped_total 2",
            "sharenet_open_breakers 0",
            r#"sharenet_nodes_by_trust{band="high"} 0"#,
            "sharenet_jobs_in_flight 0",
            "sharenet_requests_total 0",
        ] {
            assert!(page.contains(want), "{want} missing from\n{page}");
        }
    }

    #[test]
    fn every_family_registers_and_renders() {
        let m = Metrics::new();
        m.requests.inc();
        m.finished(&Finished {
            path: "/v1/chat/completions",
            status: 200,
            app: "acme",
            duration_s: 0.2,
            inference: Some(Inference {
                model: "m",
                input_tokens: 5,
                output_tokens: 7,
                charge_nano_usd: 1234,
                ttft_s: Some(0.05),
            }),
        });
        m.finished(&Finished {
            path: "/v1/receipts/abc",
            status: 404,
            app: "-",
            duration_s: 0.001,
            inference: None,
        });
        let snap = Snapshot::default();
        snap.gauge_vec("sharenet_live_nodes", "Live nodes.", "model", &[("m", 2)]);
        let text = m.render(snap.families());
        for want in [
            "sharenet_requests_total 1",
            r#"sharenet_http_requests_total{path="/v1/chat/completions",status="200"} 1"#,
            r#"sharenet_http_requests_total{path="/v1/receipts",status="404"} 1"#,
            r#"sharenet_generation_tokens_total{app="acme",model="m"} 7"#,
            r#"sharenet_spend_nano_usd_total{app="acme",model="m"} 1234"#,
            r#"sharenet_time_to_first_token_seconds_count{model="m"} 1"#,
            r#"sharenet_live_nodes{model="m"} 2"#,
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
    }
}
