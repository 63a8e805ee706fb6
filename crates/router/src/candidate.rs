//! What the router knows about one node for one model: what the node says
//! (`Offer`, from its signed advert) and what the coordinator measured
//! (`Observed`).
//!
//! The two are kept apart on purpose: an advert is a claim, an observation
//! is evidence. The router prefers observed values and falls back to
//! advertised ones, then to conservative defaults (`RouteParams`).

use serde::{Deserialize, Serialize};
use sharenet_proto::{Advert, ModelOffer};

/// The capability bit of an offer whose node states it keeps no prompts
/// (OpenRouter's `data_collection: "deny"` asks for it). Above the model
/// capabilities' bits (`sharenet_proto::Capabilities`).
pub const NO_PROMPT_RETENTION: u32 = 1 << 16;

/// A node's ed25519 public key, the identity everything is keyed by (and the
/// final tie-breaker of every ranking, so orders are total).
pub type NodeKey = [u8; 32];

/// What one live advert says about one model on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub node: NodeKey,
    /// nano-USD per prompt token.
    pub price_in: u64,
    /// nano-USD per generated token.
    pub price_out: u64,
    /// Longest prompt + completion the node accepts, in tokens.
    pub context_length: u32,
    /// SHA-256 of the weights files; `None` where the node cannot know them
    /// (an upstream server), which never matches a requested hash.
    pub weights_sha256: Option<[u8; 32]>,
    /// Weight format, e.g. `Q8_0`; `None` when unknown.
    pub quantization: Option<String>,
    /// Operator-defined location, e.g. `eu-west`; `None` when unset.
    pub region: Option<String>,
    /// Jobs the node runs at once (0: it takes none).
    pub max_concurrency: u32,
    /// Jobs running or waiting on the node when it signed the advert.
    pub queue_depth: u32,
    /// Decode tokens/s the node measured for this model, all sequences
    /// together (an aggregate, not what one request sees).
    pub advertised_tokens_per_sec: Option<u32>,
    /// Reached through a relay (behind NAT): one more hop.
    pub relayed: bool,
    /// GPUs on the node (0: CPU only).
    pub gpus: u32,
    /// What the model can do beyond text
    /// (`sharenet_proto::Capabilities::bits`), and
    /// [`NO_PROMPT_RETENTION`] when the node keeps no prompts.
    #[serde(default)]
    pub capabilities: u32,
    /// The model's license as the node states it (e.g. `apache-2.0`);
    /// `None` when unstated.
    #[serde(default)]
    pub license: Option<String>,
}

impl Offer {
    /// The router's view of `model` in `advert`. Empty strings and a zero
    /// tokens/s mean "unknown" on the wire; here they become `None`.
    pub fn from_advert(advert: &Advert, model: &ModelOffer) -> Self {
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Self {
            node: advert.node,
            price_in: model.price_in,
            price_out: model.price_out,
            context_length: model.context_length,
            weights_sha256: model.weights_sha256,
            quantization: non_empty(&model.quantization),
            region: non_empty(&advert.region),
            max_concurrency: advert.max_concurrency,
            queue_depth: advert.queue_depth,
            advertised_tokens_per_sec: (model.tokens_per_sec > 0).then_some(model.tokens_per_sec),
            relayed: advert.relayed,
            gpus: u32::try_from(advert.gpus.len()).unwrap_or(u32::MAX),
            capabilities: model.capabilities.bits()
                | if advert.keeps_prompts {
                    0
                } else {
                    NO_PROMPT_RETENTION
                },
            license: non_empty(&model.license),
        }
    }

    /// Worst-case price of a request with `input_tokens` of prompt and up to
    /// `max_output` generated tokens, in nano-USD. Saturates instead of
    /// overflowing (a saturated price loses every price comparison, which is
    /// the right answer for an absurd price).
    pub fn expected_price(&self, input_tokens: u32, max_output: u32) -> u64 {
        u64::from(input_tokens)
            .saturating_mul(self.price_in)
            .saturating_add(u64::from(max_output).saturating_mul(self.price_out))
    }
}

/// Gain of the RTT smoother per sample: RFC 6298's SRTT gain (1/8), so one
/// outlier ping moves the estimate by an eighth.
pub const RTT_GAIN: f64 = 0.125;
/// Time constant of the time-to-first-token and throughput EWMAs: an old
/// sample's weight falls by `e` every 10 s, so the estimate follows the node's
/// load over tens of seconds rather than over a fixed number of jobs (a busy
/// node and an idle one age at the same speed).
pub const EWMA_TAU_MS: f64 = 10_000.0;
/// Every new sample weighs at least this much, so a burst of jobs finishing
/// in the same millisecond still moves the EWMA.
pub const MIN_SAMPLE_WEIGHT: f64 = 0.1;
/// Time constant with which a TTFT peak decays back towards the EWMA: a slow
/// first token is believed at once and forgotten over about 5 s (the
/// peak-EWMA of Finagle's load balancer: pessimistic about spikes, so load
/// moves away from a node the moment it slows down).
pub const PEAK_DECAY_TAU_MS: f64 = 5_000.0;

/// What the coordinator measured about a node (per model), smoothed.
///
/// Every field is an estimate the router may use; `None` means "no
/// measurement yet" and the router falls back to the advert, then to
/// `RouteParams` defaults. Decays are driven by the `now_ms` passed in, never
/// by a clock.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    /// Smoothed round-trip time to the node (ping), ms.
    pub rtt_ms: Option<f64>,
    /// Time-decayed EWMA of time to first token, ms (as seen by the
    /// coordinator: includes the node's queueing and prefill).
    pub ttft_ewma_ms: Option<f64>,
    /// Peak-EWMA of time to first token, ms: jumps up to a new maximum at
    /// once and decays towards `ttft_ewma_ms`; never below it.
    pub ttft_peak_ms: Option<f64>,
    /// Time-decayed EWMA of the decode speed one request saw, tokens/s.
    pub tokens_per_sec_ewma: Option<f64>,
    /// Jobs this coordinator has sent to the node that have not ended.
    pub in_flight: u32,
    /// When the last job sample was folded in (for the EWMA weights).
    pub last_sample_ms: Option<u64>,
    /// When `ttft_peak_ms` was last decayed.
    pub peak_updated_ms: Option<u64>,
}

fn usable(x: f64) -> bool {
    x.is_finite() && x >= 0.0
}

/// Weight of a new sample after `dt_ms` without one.
fn sample_weight(dt_ms: f64) -> f64 {
    (1.0 - (-dt_ms / EWMA_TAU_MS).exp()).max(MIN_SAMPLE_WEIGHT)
}

impl Observed {
    /// Folds in one RTT measurement (ms). Negative or non-finite values are
    /// ignored: a broken measurement is no evidence.
    pub fn record_rtt(&mut self, ms: f64) {
        if !usable(ms) {
            return;
        }
        self.rtt_ms = Some(match self.rtt_ms {
            Some(old) => old + RTT_GAIN * (ms - old),
            None => ms,
        });
    }

    /// A job was sent to the node. Pair it with exactly one `record_job` or
    /// `abandon_job`.
    pub fn begin_job(&mut self, now_ms: u64) {
        self.decay(now_ms);
        self.in_flight = self.in_flight.saturating_add(1);
    }

    /// A job ended without a usable measurement (failed, cancelled).
    pub fn abandon_job(&mut self, now_ms: u64) {
        self.decay(now_ms);
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// A job ended: its first token came after `ttft_ms`, and `tokens` tokens
    /// were generated in `duration_ms` (from sending to the last token).
    /// Decode speed is measured over the tokens after the first, between the
    /// first token and the end, so prefill and queueing do not count as slow
    /// decoding. Unusable values (negative, non-finite) are skipped.
    pub fn record_job(&mut self, ttft_ms: f64, tokens: u32, duration_ms: f64, now_ms: u64) {
        self.decay(now_ms);
        self.in_flight = self.in_flight.saturating_sub(1);
        let w = match self.last_sample_ms {
            Some(t) => sample_weight(now_ms.saturating_sub(t) as f64),
            None => 1.0,
        };
        let mut sampled = false;
        if usable(ttft_ms) {
            let ewma = match self.ttft_ewma_ms {
                Some(old) => old + w * (ttft_ms - old),
                None => ttft_ms,
            };
            self.ttft_ewma_ms = Some(ewma);
            let peak = self.ttft_peak_ms.unwrap_or(0.0).max(ttft_ms).max(ewma);
            self.ttft_peak_ms = Some(peak);
            self.peak_updated_ms = Some(now_ms);
            sampled = true;
        }
        let decode_ms = duration_ms - ttft_ms;
        if tokens >= 2 && usable(ttft_ms) && decode_ms.is_finite() && decode_ms > 0.0 {
            let tps = f64::from(tokens - 1) * 1000.0 / decode_ms;
            self.tokens_per_sec_ewma = Some(match self.tokens_per_sec_ewma {
                Some(old) => old + w * (tps - old),
                None => tps,
            });
            sampled = true;
        }
        if sampled {
            self.last_sample_ms = Some(now_ms);
        }
    }

    /// The TTFT peak as it stands at `now_ms`, without changing anything.
    pub fn peak_at(&self, now_ms: u64) -> Option<f64> {
        let (peak, ewma) = match (self.ttft_peak_ms, self.ttft_ewma_ms) {
            (Some(p), Some(e)) => (p, e),
            (p, _) => return p,
        };
        let dt = self.peak_updated_ms.map_or(0, |t| now_ms.saturating_sub(t));
        if peak <= ewma || dt == 0 {
            return Some(peak.max(ewma));
        }
        Some(ewma + (peak - ewma) * (-(dt as f64) / PEAK_DECAY_TAU_MS).exp())
    }

    /// Decays the TTFT peak to `now_ms`. The router reads `ttft_peak_ms` as
    /// stored (so a routing decision costs no `exp` per node); callers decay
    /// before building candidates, as they score trust at `now_ms`, so an idle
    /// node's old spike does not keep it out of traffic for ever. A `now_ms`
    /// earlier than the last update (a clock step back) changes nothing.
    pub fn decay(&mut self, now_ms: u64) {
        if let Some(t) = self.peak_updated_ms
            && now_ms <= t
        {
            return;
        }
        if self.ttft_peak_ms.is_some() {
            self.ttft_peak_ms = self.peak_at(now_ms);
            self.peak_updated_ms = Some(now_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn rtt_is_smoothed_and_ignores_garbage() {
        let mut o = Observed::default();
        o.record_rtt(100.0);
        assert_eq!(o.rtt_ms, Some(100.0));
        o.record_rtt(200.0);
        assert_eq!(o.rtt_ms, Some(112.5));
        o.record_rtt(f64::NAN);
        o.record_rtt(-5.0);
        assert_eq!(o.rtt_ms, Some(112.5));
    }

    #[test]
    fn peak_jumps_up_at_once_and_decays_towards_ewma() {
        let mut o = Observed::default();
        o.record_job(100.0, 11, 1100.0, 0);
        assert_eq!(o.ttft_ewma_ms, Some(100.0));
        assert_eq!(o.tokens_per_sec_ewma, Some(10.0));
        // A spike 1 ms later: the peak believes it immediately, the EWMA only
        // by the minimum sample weight.
        o.record_job(1000.0, 2, 1100.0, 1);
        assert_eq!(o.ttft_peak_ms, Some(1000.0));
        let ewma = o.ttft_ewma_ms.unwrap();
        assert!((ewma - 190.0).abs() < 1e-6, "{ewma}");
        // Decay: after one time constant, (peak - ewma) shrinks by e.
        let p = o.peak_at(1 + PEAK_DECAY_TAU_MS as u64).unwrap();
        let want = ewma + (1000.0 - ewma) / std::f64::consts::E;
        assert!((p - want).abs() < 1e-6, "{p} vs {want}");
        o.decay(1_000_000);
        assert!((o.ttft_peak_ms.unwrap() - ewma).abs() < 1e-6);
        // Clock going back changes nothing.
        let before = o.clone();
        o.decay(5);
        assert_eq!(o, before);
    }

    #[test]
    fn ewma_weight_grows_with_elapsed_time() {
        let mut a = Observed::default();
        a.record_job(100.0, 1, 100.0, 0);
        a.record_job(200.0, 1, 200.0, 100);
        let mut b = Observed::default();
        b.record_job(100.0, 1, 100.0, 0);
        b.record_job(200.0, 1, 200.0, 60_000);
        assert!(a.ttft_ewma_ms.unwrap() < b.ttft_ewma_ms.unwrap());
        assert!(
            b.ttft_ewma_ms.unwrap() > 199.0,
            "a minute later the old sample is nearly gone"
        );
    }

    #[test]
    fn in_flight_counts_and_never_underflows() {
        let mut o = Observed::default();
        o.begin_job(0);
        o.begin_job(0);
        assert_eq!(o.in_flight, 2);
        o.record_job(10.0, 5, 50.0, 1);
        o.abandon_job(2);
        o.abandon_job(3);
        assert_eq!(o.in_flight, 0);
    }

    #[test]
    fn expected_price_saturates() {
        let o = Offer {
            node: [1; 32],
            price_in: u64::MAX,
            price_out: 1,
            context_length: 1,
            weights_sha256: None,
            quantization: None,
            region: None,
            max_concurrency: 1,
            queue_depth: 0,
            advertised_tokens_per_sec: None,
            relayed: false,
            gpus: 0,
            capabilities: 0,
            license: None,
        };
        assert_eq!(o.expected_price(2, 2), u64::MAX);
        assert_eq!(o.expected_price(0, 7), 7);
    }
}
