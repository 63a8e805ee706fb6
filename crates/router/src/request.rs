//! What a routing decision is asked: the request ([`Request`], with the
//! builder's [`Preferences`] and the app's [`PrivatePool`]), how price,
//! latency and trust weigh ([`Weights`]), and the network-wide knobs
//! ([`RouteParams`]). Plain data, serializable so a simulator can log it.

use serde::{Deserialize, Serialize};

use crate::candidate::NodeKey;

/// A key that, when given, decides the order before the score (OpenRouter's
/// `provider.sort`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sort {
    /// Lowest expected price of this request first.
    Price,
    /// Lowest predicted time to first token first (RTT + queue + TTFT).
    Latency,
    /// Highest predicted per-request decode speed first.
    Throughput,
}

/// An app's own nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivatePool {
    pub nodes: Vec<NodeKey>,
    /// The data must stay on these nodes: no public node, ever.
    pub sensitive: bool,
    /// For non-sensitive requests: public nodes may serve when the pool
    /// cannot (they come after every usable pool node). `false`: pool only.
    pub spill_to_public: bool,
}

/// Per-request routing preferences: OpenRouter's `provider` object plus the
/// app's routing rules (the private pool).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Preferences {
    pub sort: Option<Sort>,
    /// Try these nodes first, in this order (those that pass the filters).
    pub order: Vec<NodeKey>,
    /// If non-empty, only these nodes.
    pub only: Vec<NodeKey>,
    /// Never these nodes.
    pub ignore: Vec<NodeKey>,
    /// `false`: return only the first choice, or only the `order` nodes if
    /// `order` is given (OpenRouter's meaning: no nodes beyond the ones
    /// asked for). Default `true`.
    pub allow_fallbacks: bool,
    /// Highest acceptable nano-USD per prompt token.
    pub max_price_in: Option<u64>,
    /// Highest acceptable nano-USD per completion token.
    pub max_price_out: Option<u64>,
    /// Lowest acceptable trust score; only ever raises `trust_floor`.
    pub min_trust: Option<f64>,
    /// Only nodes in this region (ASCII case-insensitive).
    pub region: Option<String>,
    /// If non-empty, only nodes whose quantization is one of these (ASCII
    /// case-insensitive); a node with unknown quantization never matches.
    pub quantizations: Vec<String>,
    /// Only nodes serving exactly these weights.
    pub weights_sha256: Option<[u8; 32]>,
    /// Only nodes whose offer has every one of these capabilities
    /// (`sharenet_proto::Capabilities::bits`: tools, structured outputs;
    /// and [`crate::candidate::NO_PROMPT_RETENTION`]); 0 asks for none.
    pub capabilities: u32,
    /// If non-empty, only models under one of these licenses (ASCII
    /// case-insensitive); a model with no stated license never matches.
    pub licenses: Vec<String>,
    pub private_pool: Option<PrivatePool>,
}

impl Default for Preferences {
    fn default() -> Self {
        Self {
            sort: None,
            order: Vec::new(),
            only: Vec::new(),
            ignore: Vec::new(),
            allow_fallbacks: true,
            max_price_in: None,
            max_price_out: None,
            min_trust: None,
            region: None,
            quantizations: Vec::new(),
            weights_sha256: None,
            capabilities: 0,
            licenses: Vec::new(),
            private_pool: None,
        }
    }
}

/// What is being routed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Prompt tokens (an estimate is fine: it only ranks and checks context).
    pub input_tokens: u32,
    /// The request's `max_tokens`: the worst case it may cost and take.
    pub max_output_tokens: u32,
    pub prefs: Preferences,
}

/// How much price, latency and trust count in the score. Negative or
/// non-finite weights count as 0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Weights {
    /// Default 1: a node twice the best price adds 1 to the score.
    pub price: f64,
    /// Default 0.5: time matters, but half as much as money (builders pay
    /// for every token, they wait only for slow ones).
    pub latency: f64,
    /// Default 1: each 0.1 of trust is worth 10% of the best price.
    pub trust: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            price: 1.0,
            latency: 0.5,
            trust: 1.0,
        }
    }
}

/// Network-wide routing knobs (not per request).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouteParams {
    /// Most first picks that may go to nodes on probation. Default 0.1.
    pub probation_share: f64,
    /// Nodes below this trust never get traffic. Default 0.5 (one failed spot
    /// check puts a node under it, see `TrustParams`).
    pub trust_floor: f64,
    /// Length of the fallback list. Default 8. At least 1 is returned.
    pub max_candidates: usize,
    /// A node is full when `max(queue_depth, in_flight)` reaches
    /// `max_concurrency * max_queue_factor`. Default 1: no waiting at a node
    /// while another has a free slot (chosen with the simulator: against 2,
    /// time-to-first-token p95 falls from 2.7 s to 0.47 s in the baseline
    /// scenario at the same cost; see BENCHMARKS.md).
    pub max_queue_factor: u32,
    /// When every node is full at `max_queue_factor`, the decision is made
    /// again with this factor instead, so a burst waits in the nodes' own
    /// queues rather than failing. Default 5. At most `max_queue_factor`
    /// turns it off.
    pub spill_queue_factor: u32,
    /// Power-of-two-choices draws among at most this many best nodes.
    /// Default 4.
    pub p2c_top_k: usize,
    /// ... and only among those whose score is within this fraction of the
    /// best. Default 0.2: a node 50% dearer is not "near-equivalent".
    pub p2c_slack: f64,
    /// RTT assumed for a node never pinged (doubled when relayed), ms.
    /// Default 100.
    pub unknown_rtt_ms: f64,
    /// Time to first token assumed for a node never measured, ms. Default
    /// 500: pessimistic enough not to prefer the unknown, not so much that
    /// new nodes never win.
    pub unknown_ttft_ms: f64,
    /// Per-request decode speed assumed when neither measured nor
    /// advertised, tokens/s. Default 20.
    pub unknown_tokens_per_sec: f64,
    /// Size of a job already in a node's queue, in output tokens, to turn
    /// queue depth into waiting time. Default 256.
    pub typical_job_tokens: u32,
}

impl Default for RouteParams {
    fn default() -> Self {
        Self {
            probation_share: 0.1,
            trust_floor: 0.5,
            max_candidates: 8,
            max_queue_factor: 1,
            spill_queue_factor: 5,
            p2c_top_k: 4,
            p2c_slack: 0.2,
            unknown_rtt_ms: 100.0,
            unknown_ttft_ms: 500.0,
            unknown_tokens_per_sec: 20.0,
            typical_job_tokens: 256,
        }
    }
}
