//! The discrete-event engine: virtual time, one event queue, the real
//! router / trust / breaker (`sharenet-router`) and pricing / settlement
//! (`sharenet-market`) code at every decision.
//!
//! Time is integer microseconds of simulated time (events are ordered by
//! `(time, sequence number)`, so ties are broken by insertion order, never
//! by a hash or an address). The router gets `now_ms = ROUTER_EPOCH_MS +
//! time / 1000`.
//! Randomness comes from independent `StdRng` streams seeded from the
//! scenario's seed (traffic, routing, node behaviour, spot checks, set-up),
//! so a change to one part (e.g. the spot-check rate) does not reshuffle
//! the arrivals of the other.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use sharenet_market::pricing::{Charge, Margin, charge};
use sharenet_market::{Entry, PeriodRule, Settlement as SignedSettlement, settle};
use sharenet_proto::{
    CountersignedReceipt, JobId, Receipt, SignedReceipt, SigningKey, job_cost, public_key_of,
};
use sharenet_router::verdict::{self, Answer, Role, Verdict, WeightsHash};
use sharenet_router::{
    Admit, BreakerParams, CandidateTable, Evidence, NodeHealth, NodeKey, Offer, Preferences,
    Request, RouteParams, Sort, TrustParams, Weights, route_table,
};

use crate::dist::pick_weighted;
use crate::error::SimError;
use crate::results::{
    AdversaryRow, Counters, Latency, NodeRow, RunResult, RunTotals, ShareBlock, Totals, WindowRow,
    build_summary,
};
use crate::scenario::{AdversaryCfg, AdversaryKind, Arrival, Scenario, SortCfg, TrafficCfg};

/// App id the operator's spot checks are charged to (the coordinator's).
pub use sharenet_router::verdict::SPOT_CHECK_APP;

const US_PER_MS: f64 = 1_000.0;

/// The router's clock at simulated time 0: one day in, so the starting
/// nodes can have a history (first seen at router time 0, past probation)
/// without negative times.
pub const ROUTER_EPOCH_MS: u64 = 86_400_000;

/// How a node behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    Honest,
    Adversary(AdversaryKind),
}

/// One provider node: what it is (hidden from the router) and what the
/// coordinator knows about it (`offer`, `health`).
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub key: NodeKey,
    pub model: u16,
    pub hardware: u16,
    pub offer: Offer,
    pub health: NodeHealth,
    pub rtt_ms: f64,
    pub decode_tps: f64,
    pub prefill_tps: f64,
    /// When each of its `max_concurrency` slots is next free (ms).
    pub slots: Vec<f64>,
    pub behaviour: Behaviour,
    pub cheat_rate: f64,
    pub inflate_factor: f64,
    pub group: Option<u16>,
    pub join_ms: f64,
    /// Adverts are signed at `advert_origin_ms + k × interval`.
    pub advert_origin_ms: f64,
    pub left_ms: Option<f64>,
    pub in_table: bool,
    pub jobs: u64,
    pub earned: u64,
    pub check_earned: u64,
    pub last_dispatch_ms: Option<f64>,
    pub caught_ms: Option<f64>,
    pub served_before_caught: u64,
    pub earned_before_caught: u64,
    pub dispatches: u64,
    pub spot_failed: u64,
}

impl Node {
    fn adversary(&self) -> bool {
        matches!(self.behaviour, Behaviour::Adversary(_))
    }
}

/// A builder's app.
#[derive(Debug, Clone)]
pub(crate) struct Builder {
    pub app: String,
    pub margin: Margin,
    pub profile: Option<usize>,
    pub jobs: u64,
    pub charged: u64,
    pub payout: u64,
    pub tokens: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cheat {
    None,
    Garbage,
    Inflate,
    InflateInput,
}

#[derive(Debug, Clone)]
struct Job {
    req: u64,
    builder: u32,
    customer: u32,
    model: u16,
    input: u32,
    output: u32,
    arrival_us: u64,
    candidates: Vec<NodeKey>,
    attempt: u32,
    node: u32,
    sent_us: u64,
    ttft_attempt_ms: f64,
    cheat: Cheat,
}

/// A spot check under way: the suspect, its reference, and the shared
/// verdict (`sharenet_router::verdict::decide`), booked when the runs are
/// done.
#[derive(Debug, Clone, Copy)]
struct Check {
    node: u32,
    reference: u32,
    verdict: Verdict,
    /// The arbiter ran and was itself wrong (so it agreed with neither).
    arbiter_wrong: bool,
}

/// A node's run of a check job as the simulator models it: the right
/// output (and input count), or a cheat's. Cheats are never alike: two
/// wrong runs disagree with each other, as a wrong run disagrees with a
/// right one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckRun {
    Right,
    Wrong,
}

impl Answer for CheckRun {
    fn agrees_with(&self, reference: &Self) -> bool {
        *self == CheckRun::Right && *reference == CheckRun::Right
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Arrival,
    Complete(u32),
    AttemptFailed(u32),
    CheckDone(u32),
    Join(u32),
    Leave(u32),
    Expire(u32),
    Tick,
}

/// Per-window accumulators.
#[derive(Debug, Default)]
struct Window {
    arrivals: u64,
    served: u64,
    failed: u64,
    ttft: Vec<f32>,
    total: Vec<f32>,
    tokens: u64,
    charged: u64,
    attempts: u64,
    adversary_attempts: u64,
}

/// Runs a scenario to the end. `progress(done, total)` is called every
/// few thousand arrivals (drive a progress bar with it; it must not
/// influence the run).
pub fn simulate(sc: &Scenario, progress: &mut dyn FnMut(u64, u64)) -> Result<RunResult, SimError> {
    let mut sim = Sim::new(sc)?;
    sim.run(progress)?;
    sim.finish()
}

fn stream(seed: u64, n: u64) -> StdRng {
    // SplitMix64 of (seed, stream): well-separated seeds per stream.
    let mut z = seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    StdRng::seed_from_u64(z ^ (z >> 31))
}

fn node_key(i: u32) -> NodeKey {
    let mut k = [0u8; 32];
    k[..4].copy_from_slice(&i.to_be_bytes());
    // Filler so keys look like keys; the index prefix keeps them unique.
    let mut x = u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for chunk in k[4..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_be_bytes();
        let n = chunk.len();
        chunk.copy_from_slice(&b[..n]);
    }
    k
}

fn index_of(key: &NodeKey) -> u32 {
    u32::from_be_bytes([key[0], key[1], key[2], key[3]])
}

fn us(ms: f64) -> u64 {
    if ms.is_finite() && ms > 0.0 {
        (ms * US_PER_MS).round() as u64
    } else {
        0
    }
}

/// How many nodes the run has in all.
struct NodeCounts {
    /// Nodes joining over the churn window.
    joiners: u64,
    /// Starting nodes, joiners and Sybil groups.
    total: u32,
}

impl NodeCounts {
    fn of(sc: &Scenario) -> Result<Self, SimError> {
        let nd = &sc.nodes;
        let joiners = (nd.churn.join_share * nd.count as f64).round() as u64;
        let sybils: u64 = nd
            .adversaries
            .iter()
            .filter(|a| a.join_at_s.is_some())
            .map(|a| group_size(a, nd.count))
            .sum();
        let total = u32::try_from(nd.count + joiners + sybils).map_err(|_| SimError::Invalid {
            key: "nodes.count".into(),
            line: None,
            reason: "too many nodes in all".into(),
        })?;
        Ok(Self { joiners, total })
    }
}

/// Nodes in an adversary group (`count` or `share` of the starting nodes).
fn group_size(a: &AdversaryCfg, count: u64) -> u64 {
    a.count.unwrap_or(0) + (a.share.unwrap_or(0.0) * count as f64).round() as u64
}

/// Every node the run will have, honest, with its model, hardware, price,
/// speed and advert phase drawn from `setup`.
fn make_nodes(sc: &Scenario, total: u32, setup: &mut StdRng) -> Vec<Node> {
    let nd = &sc.nodes;
    let breaker: BreakerParams = sc.operator.breaker_params();
    let hw_shares: Vec<f64> = nd.hardware.iter().map(|h| h.share).collect();
    let node_shares: Vec<f64> = sc.models.iter().map(|m| m.node_share).collect();
    // Every node of a model serves the same weights.
    let weights: Vec<WeightsHash> = sc
        .models
        .iter()
        .map(|m| sharenet_proto::sha256(m.name.as_bytes()))
        .collect();
    let interval_ms = sc.network.advert_interval_s * 1000.0;
    let mut nodes = Vec::with_capacity(total as usize);
    for i in 0..total {
        let model = pick_weighted(&node_shares, setup);
        let hw_i = pick_weighted(&hw_shares, setup);
        let (Some(m), Some(hw)) = (sc.models.get(model), nd.hardware.get(hw_i)) else {
            continue;
        };
        let price_out = (nd.price_out.sample(setup) * m.price_factor).round();
        let rtt = nd.rtt_ms.sample(setup);
        let relayed = setup.random::<f64>() < nd.relayed_share;
        let jitter = 1.0 + hw.speed_jitter * (2.0 * setup.random::<f64>() - 1.0);
        let phase = setup.random::<f64>() * interval_ms;
        let decode = hw.decode_tokens_per_s * jitter / m.size_factor;
        let prefill = hw.prefill_tokens_per_s * jitter / m.size_factor;
        let price_out = price_out.max(1.0) as u64;
        let key = node_key(i);
        let offer = Offer {
            node: key,
            price_in: (price_out as f64 * nd.price_in_ratio).round() as u64,
            price_out,
            context_length: m.context_length,
            weights_sha256: weights.get(model).copied(),
            quantization: None,
            region: None,
            max_concurrency: hw.max_concurrency,
            queue_depth: 0,
            advertised_tokens_per_sec: Some(
                (decode * f64::from(hw.max_concurrency)).round().max(1.0) as u32,
            ),
            relayed,
            gpus: hw.gpus,
            capabilities: 0,
            license: None,
        };
        nodes.push(Node {
            key,
            model: model as u16,
            hardware: hw_i as u16,
            offer,
            health: NodeHealth::new(0, breaker),
            rtt_ms: if relayed { rtt * 2.0 } else { rtt },
            decode_tps: decode,
            prefill_tps: prefill,
            slots: vec![0.0; hw.max_concurrency as usize],
            behaviour: Behaviour::Honest,
            cheat_rate: 0.0,
            inflate_factor: 1.0,
            group: None,
            join_ms: 0.0,
            advert_origin_ms: -phase,
            left_ms: None,
            in_table: false,
            jobs: 0,
            earned: 0,
            check_earned: 0,
            last_dispatch_ms: None,
            caught_ms: None,
            served_before_caught: 0,
            earned_before_caught: 0,
            dispatches: 0,
            spot_failed: 0,
        });
    }
    nodes
}

/// Turns nodes into adversaries: groups without a join time are dealt
/// from the shuffled starting nodes, Sybil groups take the nodes after the
/// joiners. Returns the Sybils' join times (node, second).
fn place_adversaries(
    sc: &Scenario,
    nodes: &mut [Node],
    joiners: u64,
    setup: &mut StdRng,
) -> Vec<(u32, f64)> {
    let nd = &sc.nodes;
    let mut order: Vec<u32> = (0..u32::try_from(nd.count).unwrap_or(u32::MAX)).collect();
    order.shuffle(setup);
    let mut taken = 0usize;
    let mut next_extra = u32::try_from(nd.count + joiners).unwrap_or(u32::MAX);
    let mut sybil_joins: Vec<(u32, f64)> = Vec::new();
    for (g, a) in nd.adversaries.iter().enumerate() {
        let n = group_size(a, nd.count);
        let ids: Vec<u32> = match a.join_at_s {
            None => {
                let end = (taken + n as usize).min(order.len());
                let ids = order.get(taken..end).unwrap_or(&[]).to_vec();
                taken = end;
                ids
            }
            Some(at) => {
                let ids: Vec<u32> = (next_extra..next_extra.saturating_add(n as u32)).collect();
                next_extra = next_extra.saturating_add(n as u32);
                sybil_joins.extend(ids.iter().map(|&i| (i, at)));
                ids
            }
        };
        for i in ids {
            if let Some(node) = nodes.get_mut(i as usize) {
                node.behaviour = Behaviour::Adversary(a.kind);
                node.cheat_rate = a.rate;
                node.inflate_factor = a.inflate_factor;
                node.group = Some(g as u16);
                let p = (node.offer.price_out as f64 * a.price_factor)
                    .round()
                    .max(1.0);
                node.offer.price_out = p as u64;
                node.offer.price_in = (p * nd.price_in_ratio).round() as u64;
            }
        }
    }
    sybil_joins
}

/// The routing request of each preference profile (0: the defaults, then
/// one per `[[traffic.preferences]]`); only `input_tokens` changes per
/// request.
fn request_profiles(t: &TrafficCfg) -> Vec<Request> {
    let mut reqs = vec![Request {
        input_tokens: 0,
        max_output_tokens: t.max_tokens,
        prefs: Preferences::default(),
    }];
    for p in &t.preferences {
        reqs.push(Request {
            input_tokens: 0,
            max_output_tokens: t.max_tokens,
            prefs: Preferences {
                sort: p.sort.map(|s| match s {
                    SortCfg::Price => Sort::Price,
                    SortCfg::Latency => Sort::Latency,
                    SortCfg::Throughput => Sort::Throughput,
                }),
                max_price_in: p.max_price_in,
                max_price_out: p.max_price_out,
                min_trust: p.min_trust,
                ..Preferences::default()
            },
        });
    }
    reqs
}

/// The highest arrival rate (the arrival process thins against it).
fn max_rate(t: &TrafficCfg) -> f64 {
    let max_burst = t.bursts.iter().map(|b| b.multiplier).fold(1.0, f64::max);
    let diurnal = if t.arrival == Arrival::Diurnal {
        1.0 + t.diurnal_amplitude
    } else {
        1.0
    };
    t.rate_per_s * diurnal * max_burst
}

struct Sim<'a> {
    sc: &'a Scenario,
    weights: Weights,
    route: RouteParams,
    trust: TrustParams,
    nodes: Vec<Node>,
    /// Each model's nodes (a node serves one model for its life).
    by_model: Vec<Vec<u32>>,
    tables: Vec<CandidateTable>,
    builders: Vec<Builder>,
    requests: Vec<Request>,
    traffic_weights: Vec<f64>,
    jobs: Vec<Job>,
    free_jobs: Vec<u32>,
    active_jobs: u64,
    checks: Vec<Check>,
    free_checks: Vec<u32>,
    active_checks: u64,
    heap: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    now_us: u64,
    rng_traffic: StdRng,
    rng_route: StdRng,
    rng_node: StdRng,
    rng_check: StdRng,
    lambda_max: f64,
    next_arrival_candidate_us: u64,
    requests_target: u64,
    counters: Counters,
    totals: Totals,
    check_totals: Totals,
    ttft: Vec<f32>,
    total: Vec<f32>,
    window: Window,
    window_end_us: u64,
    window_us: u64,
    windows: Vec<WindowRow>,
    blocks: Vec<ShareBlock>,
    // Settlement sample.
    coordinator: SigningKey,
    signing: BTreeMap<u32, SigningKey>,
    entries: Vec<Entry>,
    sample_totals: Totals,
    job_counter: u64,
    refresh_us: u64,
    fee_bps: u32,
}

impl<'a> Sim<'a> {
    /// The set-up, in the order its draws come from the set-up stream:
    /// nodes, adversaries among them, builders, churn times.
    fn new(sc: &'a Scenario) -> Result<Self, SimError> {
        let mut setup = stream(sc.seed, 1);
        let counts = NodeCounts::of(sc)?;
        let mut nodes = make_nodes(sc, counts.total, &mut setup);
        let sybil_joins = place_adversaries(sc, &mut nodes, counts.joiners, &mut setup);
        let mut sim = Sim::empty(sc, nodes);
        sim.add_builders(&mut setup);
        sim.requests = request_profiles(&sc.traffic);
        sim.lambda_max = max_rate(&sc.traffic);
        sim.schedule_nodes(counts.joiners, &sybil_joins, &mut setup);
        sim.schedule_next_arrival();
        let tick = sim.refresh_us;
        sim.push(tick, Ev::Tick);
        Ok(sim)
    }

    /// The simulator with its nodes and nothing else under way.
    fn empty(sc: &'a Scenario, nodes: Vec<Node>) -> Self {
        let op = &sc.operator;
        let mut by_model = vec![Vec::new(); sc.models.len()];
        for (i, n) in nodes.iter().enumerate() {
            if let Some(m) = by_model.get_mut(usize::from(n.model)) {
                m.push(i as u32);
            }
        }
        Sim {
            sc,
            weights: op.weights(),
            route: op.route_params(),
            trust: op.trust_params(),
            by_model,
            tables: vec![CandidateTable::new(); sc.models.len()],
            builders: Vec::new(),
            requests: Vec::new(),
            traffic_weights: sc.models.iter().map(|m| m.traffic_share).collect(),
            jobs: Vec::new(),
            free_jobs: Vec::new(),
            active_jobs: 0,
            checks: Vec::new(),
            free_checks: Vec::new(),
            active_checks: 0,
            heap: BinaryHeap::new(),
            seq: 0,
            now_us: 0,
            rng_traffic: stream(sc.seed, 2),
            rng_route: stream(sc.seed, 3),
            rng_node: stream(sc.seed, 4),
            rng_check: stream(sc.seed, 5),
            lambda_max: 0.0,
            next_arrival_candidate_us: 0,
            requests_target: sc.requests,
            counters: Counters::default(),
            totals: Totals::default(),
            check_totals: Totals::default(),
            ttft: Vec::with_capacity(sc.requests.min(10_000_000) as usize),
            total: Vec::with_capacity(sc.requests.min(10_000_000) as usize),
            window: Window::default(),
            window_end_us: us(sc.window_s * 1000.0),
            window_us: us(sc.window_s * 1000.0).max(1),
            windows: Vec::new(),
            blocks: Vec::new(),
            coordinator: SigningKey::from_bytes(&[0xc0; 32]),
            signing: BTreeMap::new(),
            entries: Vec::new(),
            sample_totals: Totals::default(),
            job_counter: 0,
            refresh_us: us(op.refresh_interval_ms).max(1),
            fee_bps: op.network_fee_bps,
            nodes,
        }
    }

    /// Builders: margin drawn per app, preference profiles dealt by share.
    fn add_builders(&mut self, setup: &mut StdRng) {
        let t = &self.sc.traffic;
        let mut cumulative = Vec::new();
        let mut acc = 0.0;
        for p in &t.preferences {
            acc += p.share;
            cumulative.push(acc);
        }
        for b in 0..t.builders {
            let pos = (f64::from(b) + 0.5) / f64::from(t.builders);
            let profile = cumulative.iter().position(|c| pos < *c);
            let margin = Margin {
                percent_bps: t.margin_bps.sample(setup).round().min(1e6) as u32,
                per_mtok: t.margin_per_mtok.sample(setup).round() as u64,
            };
            self.builders.push(Builder {
                app: format!("app-{b:05}"),
                margin,
                profile,
                jobs: 0,
                charged: 0,
                payout: 0,
                tokens: 0,
            });
        }
    }

    /// Starting nodes are in the table at 0; joiners and leavers spread
    /// over the churn window; Sybil groups at their time.
    fn schedule_nodes(&mut self, joiners: u64, sybil_joins: &[(u32, f64)], setup: &mut StdRng) {
        let nd = &self.sc.nodes;
        let churn_end_s = nd
            .churn
            .end_s
            .unwrap_or(self.sc.expected_duration_s())
            .max(nd.churn.start_s);
        for i in 0..u32::try_from(nd.count).unwrap_or(u32::MAX) {
            self.join(i, 0);
        }
        let span_ms = (churn_end_s - nd.churn.start_s) * 1000.0;
        let start_ms = nd.churn.start_s * 1000.0;
        for k in 0..joiners {
            let i = u32::try_from(nd.count + k).unwrap_or(u32::MAX);
            let at = start_ms + setup.random::<f64>() * span_ms;
            self.push(us(at), Ev::Join(i));
        }
        let leavers = (nd.churn.leave_share * nd.count as f64).round() as usize;
        let mut order: Vec<u32> = (0..u32::try_from(nd.count).unwrap_or(u32::MAX)).collect();
        order.shuffle(setup);
        for &i in order.iter().take(leavers) {
            let at = start_ms + setup.random::<f64>() * span_ms;
            self.push(us(at), Ev::Leave(i));
        }
        for &(i, at) in sybil_joins {
            self.push(us(at * 1000.0), Ev::Join(i));
        }
    }

    fn push(&mut self, at_us: u64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse((at_us, self.seq, ev)));
    }

    /// The router's `now_ms`.
    fn now_ms(&self) -> u64 {
        ROUTER_EPOCH_MS + self.now_us / 1000
    }

    fn rate_at(&self, t_s: f64) -> f64 {
        let t = &self.sc.traffic;
        let mut r = t.rate_per_s;
        if t.arrival == Arrival::Diurnal {
            r *= 1.0
                + t.diurnal_amplitude * (std::f64::consts::TAU * t_s / t.diurnal_period_s).sin();
        }
        for b in &t.bursts {
            if t_s >= b.start_s && t_s < b.start_s + b.duration_s {
                r *= b.multiplier;
            }
        }
        r
    }

    fn schedule_next_arrival(&mut self) {
        if self.counters.arrivals >= self.requests_target || self.lambda_max <= 0.0 {
            return;
        }
        let mut t = self.next_arrival_candidate_us as f64 / 1e6;
        // Thinning; bounded so a zero-rate stretch cannot loop for ever.
        for _ in 0..1_000_000 {
            let u: f64 = 1.0 - self.rng_traffic.random::<f64>();
            t += -u.ln() / self.lambda_max;
            let accept: f64 = self.rng_traffic.random();
            if accept * self.lambda_max < self.rate_at(t) {
                break;
            }
        }
        let at = (t * 1e6).round() as u64;
        self.next_arrival_candidate_us = at;
        self.push(at, Ev::Arrival);
    }

    fn run(&mut self, progress: &mut dyn FnMut(u64, u64)) -> Result<(), SimError> {
        while let Some(Reverse((t, _, ev))) = self.heap.pop() {
            self.now_us = self.now_us.max(t);
            self.counters.events += 1;
            match ev {
                Ev::Arrival => {
                    self.arrival()?;
                    if self.counters.arrivals.is_multiple_of(4096) {
                        progress(self.counters.arrivals, self.requests_target);
                    }
                }
                Ev::Complete(j) => self.complete(j)?,
                Ev::AttemptFailed(j) => self.attempt_failed(j)?,
                Ev::CheckDone(c) => self.check_done(c),
                Ev::Join(i) => self.join(i, self.now_us),
                Ev::Leave(i) => self.leave(i),
                Ev::Expire(i) => self.expire(i),
                Ev::Tick => {
                    self.tick();
                    if self.done() {
                        break;
                    }
                    let next = self.now_us + self.refresh_us;
                    self.push(next, Ev::Tick);
                }
            }
        }
        self.close_window();
        progress(self.counters.arrivals, self.requests_target);
        Ok(())
    }

    fn done(&self) -> bool {
        self.counters.arrivals >= self.requests_target
            && self.active_jobs == 0
            && self.active_checks == 0
    }

    // ---- nodes -----------------------------------------------------------

    fn join(&mut self, i: u32, at_us: u64) {
        let breaker = self.sc.operator.breaker_params();
        let now_ms = ROUTER_EPOCH_MS + at_us / 1000;
        let history = self.sc.nodes.history_jobs;
        let Some(n) = self.nodes.get_mut(i as usize) else {
            return;
        };
        n.join_ms = at_us as f64 / US_PER_MS;
        if at_us > 0 {
            n.advert_origin_ms = n.join_ms;
            n.health = NodeHealth::new(now_ms, breaker);
        } else {
            // A starting node has been on the network for a day with a
            // clean record of `history_jobs` jobs (past probation).
            n.health = NodeHealth::new(0, breaker);
            for _ in 0..history {
                n.health.trust.record(Evidence::Completed, 0, &self.trust);
            }
        }
        n.in_table = true;
        let c = n.health.candidate(&n.offer, now_ms, &self.trust);
        if let Some(t) = self.tables.get_mut(usize::from(n.model)) {
            t.upsert(&c);
        }
    }

    fn leave(&mut self, i: u32) {
        let now = self.now_us as f64 / US_PER_MS;
        let interval = self.sc.network.advert_interval_s * 1000.0;
        let ttl = self.sc.network.advert_ttl_s * 1000.0;
        let Some(n) = self.nodes.get_mut(i as usize) else {
            return;
        };
        if n.left_ms.is_some() {
            return;
        }
        n.left_ms = Some(now);
        // Its last advert was the latest one signed before it left; the
        // registry forgets it when that advert expires.
        let k = ((now - n.advert_origin_ms) / interval).floor().max(0.0);
        let last = n.advert_origin_ms + k * interval;
        let expire = (last + ttl).max(now);
        self.push(us(expire), Ev::Expire(i));
    }

    fn expire(&mut self, i: u32) {
        let Some(n) = self.nodes.get_mut(i as usize) else {
            return;
        };
        if n.in_table {
            n.in_table = false;
            if let Some(t) = self.tables.get_mut(usize::from(n.model)) {
                t.remove(&n.key);
            }
        }
    }

    /// Re-reads a node's time-dependent routing state into its table row,
    /// and notes when an adversary falls under the trust floor.
    fn refresh(&mut self, i: u32) {
        let now_ms = self.now_ms();
        let floor = self.route.trust_floor;
        let Some(n) = self.nodes.get_mut(i as usize) else {
            return;
        };
        n.health.decay(now_ms);
        let score = n.health.trust.score(now_ms, &self.trust);
        if n.adversary() && n.caught_ms.is_none() && score < floor {
            n.caught_ms = Some(now_ms.saturating_sub(ROUTER_EPOCH_MS) as f64);
        }
        if n.in_table
            && let Some(t) = self.tables.get_mut(usize::from(n.model))
        {
            t.update_state(
                &n.key,
                &n.health.observed,
                score,
                n.health.trust.is_probation(now_ms, &self.trust),
                n.health.breaker.allow(now_ms),
            );
        }
    }

    fn tick(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes.get(i).is_some_and(|n| n.in_table) {
                self.refresh(i as u32);
            }
        }
        while self.now_us >= self.window_end_us {
            self.close_window();
            self.window_end_us += self.window_us;
        }
    }

    fn close_window(&mut self) {
        let w = std::mem::take(&mut self.window);
        if w.arrivals == 0 && w.served == 0 && w.failed == 0 && !self.windows.is_empty() {
            return;
        }
        let now_ms = self.now_ms();
        let (mut th, mut nh, mut ta, mut na, mut live) = (0.0, 0u64, 0.0, 0u64, 0u64);
        for n in self.nodes.iter().filter(|n| n.in_table) {
            live += 1;
            let s = n.health.trust.score(now_ms, &self.trust);
            if n.adversary() {
                ta += s;
                na += 1;
            } else {
                th += s;
                nh += 1;
            }
        }
        let mut ttft = w.ttft;
        let mut total = w.total;
        self.windows.push(WindowRow {
            t_s: self.window_end_us.min(self.now_us.max(1)) as f64 / 1e6,
            arrivals: w.arrivals,
            served: w.served,
            failed: w.failed,
            success_rate: if w.served + w.failed > 0 {
                w.served as f64 / (w.served + w.failed) as f64
            } else {
                1.0
            },
            ttft: Latency::of(&mut ttft),
            total: Latency::of(&mut total),
            usd_per_mtok: if w.tokens > 0 {
                w.charged as f64 / w.tokens as f64 * 1e6 / 1e9
            } else {
                0.0
            },
            adversary_traffic_share: if w.attempts > 0 {
                w.adversary_attempts as f64 / w.attempts as f64
            } else {
                0.0
            },
            trust_honest: if nh > 0 { th / nh as f64 } else { 0.0 },
            trust_adversary: if na > 0 { ta / na as f64 } else { f64::NAN },
            live_nodes: live,
        });
    }

    // ---- requests --------------------------------------------------------

    fn alloc_job(&mut self, job: Job) -> u32 {
        self.active_jobs += 1;
        match self.free_jobs.pop() {
            Some(j) => {
                if let Some(slot) = self.jobs.get_mut(j as usize) {
                    *slot = job;
                }
                j
            }
            None => {
                self.jobs.push(job);
                (self.jobs.len() - 1) as u32
            }
        }
    }

    fn free_job(&mut self, j: u32) {
        self.active_jobs = self.active_jobs.saturating_sub(1);
        self.free_jobs.push(j);
    }

    fn arrival(&mut self) -> Result<(), SimError> {
        let req = self.counters.arrivals;
        self.counters.arrivals += 1;
        self.window.arrivals += 1;
        self.schedule_next_arrival();
        let t = &self.sc.traffic;
        let r = &mut self.rng_traffic;
        let builder = r.random_range(0..t.builders);
        let customer = r.random_range(0..t.customers_per_builder);
        let model = pick_weighted(&self.traffic_weights, r) as u16;
        let input = t.prompt_tokens.sample(r).round().clamp(1.0, 1e9) as u32;
        let output = (t.output_tokens.sample(r).round().clamp(1.0, 1e9) as u32).min(t.max_tokens);
        let profile = self
            .builders
            .get(builder as usize)
            .and_then(|b| b.profile)
            .map_or(0, |p| p + 1);
        let Some(table) = self.tables.get(usize::from(model)) else {
            return Ok(());
        };
        let Some(request) = self.requests.get_mut(profile) else {
            return Ok(());
        };
        request.input_tokens = input;
        let routed = route_table(
            table,
            request,
            &self.weights,
            &self.route,
            &mut self.rng_route,
        );
        let candidates = match routed {
            Ok(c) => c,
            Err(e) => {
                self.counters.failed_no_candidate += 1;
                let name = match e {
                    sharenet_router::NoCandidate::NoNodes => "no_nodes".to_string(),
                    sharenet_router::NoCandidate::Filtered { filter, .. } => {
                        filter.name().to_string()
                    }
                };
                *self
                    .counters
                    .no_candidate_by_filter
                    .entry(name)
                    .or_default() += 1;
                self.fail_request();
                return Ok(());
            }
        };
        let j = self.alloc_job(Job {
            req,
            builder,
            customer,
            model,
            input,
            output,
            arrival_us: self.now_us,
            candidates,
            attempt: 0,
            node: 0,
            sent_us: 0,
            ttft_attempt_ms: 0.0,
            cheat: Cheat::None,
        });
        self.try_attempt(j)
    }

    fn fail_request(&mut self) {
        self.counters.failed += 1;
        self.window.failed += 1;
    }

    fn block(&mut self, req: u64) -> Option<&mut ShareBlock> {
        let b = (req / self.sc.share_block) as usize;
        while self.blocks.len() <= b {
            let start = self.blocks.len() as u64 * self.sc.share_block;
            self.blocks.push(ShareBlock {
                first_request: start,
                attempts: 0,
                adversary_attempts: 0,
            });
        }
        self.blocks.get_mut(b)
    }

    fn try_attempt(&mut self, j: u32) -> Result<(), SimError> {
        let max_attempts = self.sc.operator.max_attempts;
        let Some(job) = self.jobs.get(j as usize) else {
            return Ok(());
        };
        let (attempt, req) = (job.attempt, job.req);
        let Some(key) = job.candidates.get(attempt as usize).copied() else {
            return self.exhausted(j);
        };
        if attempt >= max_attempts {
            return self.exhausted(j);
        }
        if attempt > 0 {
            self.counters.fallbacks_used += 1;
        }
        let i = index_of(&key);
        let now_us = self.now_us;
        let now_ms = self.now_ms();
        let t_ms = now_us as f64 / US_PER_MS;
        let op = &self.sc.operator;
        let (failure_rate, timeout_rate) = (self.sc.nodes.failure_rate, self.sc.nodes.timeout_rate);
        let Some(n) = self.nodes.get_mut(i as usize) else {
            return self.exhausted(j);
        };
        let adversary = n.adversary();
        n.dispatches += 1;
        n.last_dispatch_ms = Some(t_ms);
        if n.health.breaker.allow(now_ms) == Admit::Probe {
            n.health.breaker.begin_probe(now_ms);
        }
        n.health.observed.begin_job(now_ms);
        self.counters.attempts += 1;
        self.window.attempts += 1;
        if adversary {
            self.window.adversary_attempts += 1;
        }
        let Some(job) = self.jobs.get_mut(j as usize) else {
            return Ok(());
        };
        job.node = i;
        job.sent_us = now_us;
        job.cheat = Cheat::None;
        let rn = &mut self.rng_node;
        // Fixed number of draws per attempt, whatever the outcome.
        let (u_fail, u_stall, u_cheat) =
            (rn.random::<f64>(), rn.random::<f64>(), rn.random::<f64>());
        let cheats = u_cheat < n.cheat_rate;
        let outcome_at = if n.left_ms.is_some() {
            self.counters.connect_failures += 1;
            Some(t_ms + op.connect_timeout_ms)
        } else if u_fail < failure_rate && !adversary {
            self.counters.refusals += 1;
            Some(t_ms + n.rtt_ms)
        } else if (!adversary && u_stall < timeout_rate)
            || (n.behaviour == Behaviour::Adversary(AdversaryKind::Stall) && cheats)
        {
            self.counters.timeouts += 1;
            Some(t_ms + op.first_token_timeout_ms)
        } else {
            None
        };
        if let Some(at) = outcome_at {
            self.push(us(at), Ev::AttemptFailed(j));
        } else {
            let half = n.rtt_ms / 2.0;
            let at_node = t_ms + half;
            let (slot, free) =
                n.slots
                    .iter()
                    .enumerate()
                    .fold(
                        (0usize, f64::MAX),
                        |best, (k, &f)| if f < best.1 { (k, f) } else { best },
                    );
            let start = at_node.max(free);
            let first = start + f64::from(job.input) / n.prefill_tps * 1000.0;
            let finish = first + f64::from(job.output.saturating_sub(1)) / n.decode_tps * 1000.0;
            let ttft = first + half - t_ms;
            if ttft > op.first_token_timeout_ms {
                // Queued too long: the coordinator gives up, the node drops it.
                self.counters.timeouts += 1;
                self.push(us(t_ms + op.first_token_timeout_ms), Ev::AttemptFailed(j));
            } else {
                if let Some(s) = n.slots.get_mut(slot) {
                    *s = finish;
                }
                job.ttft_attempt_ms = ttft;
                job.cheat = match n.behaviour {
                    Behaviour::Adversary(AdversaryKind::Garbage) if cheats => Cheat::Garbage,
                    Behaviour::Adversary(AdversaryKind::InflateTokens) if cheats => Cheat::Inflate,
                    Behaviour::Adversary(AdversaryKind::InflateInput) if cheats => {
                        Cheat::InflateInput
                    }
                    _ => Cheat::None,
                };
                self.push(us(finish + half), Ev::Complete(j));
            }
        }
        if let Some(b) = self.block(req) {
            b.attempts += 1;
            if adversary {
                b.adversary_attempts += 1;
            }
        }
        self.refresh(i);
        Ok(())
    }

    fn exhausted(&mut self, j: u32) -> Result<(), SimError> {
        self.counters.failed_attempts_exhausted += 1;
        self.fail_request();
        self.free_job(j);
        Ok(())
    }

    fn attempt_failed(&mut self, j: u32) -> Result<(), SimError> {
        let now_ms = self.now_ms();
        let Some(job) = self.jobs.get_mut(j as usize) else {
            return Ok(());
        };
        let i = job.node;
        job.attempt += 1;
        self.counters.attempt_failures += 1;
        if let Some(n) = self.nodes.get_mut(i as usize) {
            n.health.observed.abandon_job(now_ms);
            n.health.breaker.record_failure(now_ms);
            n.health.trust.record(Evidence::Failed, now_ms, &self.trust);
        }
        self.refresh(i);
        self.try_attempt(j)
    }

    fn complete(&mut self, j: u32) -> Result<(), SimError> {
        let now_us = self.now_us;
        let now_ms = self.now_ms();
        let Some(job) = self.jobs.get(j as usize).cloned() else {
            return Ok(());
        };
        let i = job.node;
        let duration_ms = (now_us - job.sent_us) as f64 / US_PER_MS;
        let builder_ttft = (job.sent_us - job.arrival_us) as f64 / US_PER_MS + job.ttft_attempt_ms;
        let builder_total = (now_us - job.arrival_us) as f64 / US_PER_MS;
        self.counters.served += 1;
        self.window.served += 1;
        self.ttft.push(builder_ttft as f32);
        self.total.push(builder_total as f32);
        self.window.ttft.push(builder_ttft as f32);
        self.window.total.push(builder_total as f32);
        let Some(n) = self.nodes.get_mut(i as usize) else {
            self.free_job(j);
            return Ok(());
        };
        n.health
            .observed
            .record_job(job.ttft_attempt_ms, job.output, duration_ms, now_ms);
        n.jobs += 1;
        if job.cheat == Cheat::Inflate {
            // The receipt claims more tokens than were streamed: the
            // coordinator rejects it, the job is not billed.
            n.health.breaker.record_failure(now_ms);
            n.health
                .trust
                .record(Evidence::RejectedReceipt, now_ms, &self.trust);
            self.counters.rejected_receipts += 1;
            self.counters.served_unbilled += 1;
        } else {
            n.health.breaker.record_success(now_ms);
            n.health
                .trust
                .record(Evidence::Completed, now_ms, &self.trust);
            if job.cheat == Cheat::Garbage {
                self.counters.garbage_served += 1;
            }
            if job.cheat == Cheat::InflateInput {
                // Within the hold's bound (every prompt byte a token: about
                // four bytes per real token, plus template room), so the
                // receipt check passes and the job is billed as claimed.
                let factor = self.nodes.get(i as usize).map_or(1.0, |n| n.inflate_factor);
                let bound = job.input.saturating_mul(4).saturating_add(256);
                let claimed = ((f64::from(job.input) * factor).ceil() as u32).min(bound);
                self.counters.inflated_input_tokens += u64::from(claimed.saturating_sub(job.input));
                let mut billed = job.clone();
                billed.input = claimed;
                self.bill(&billed, now_ms)?;
            } else {
                self.bill(&job, now_ms)?;
            }
            if self.sc.operator.spot_check_rate > 0.0
                && self.rng_check.random::<f64>() < self.sc.operator.spot_check_rate
            {
                self.spot_check(&job)?;
            }
        }
        self.refresh(i);
        self.free_job(j);
        Ok(())
    }

    // ---- money -----------------------------------------------------------

    fn bill(&mut self, job: &Job, now_ms: u64) -> Result<(), SimError> {
        let i = job.node;
        let Some(n) = self.nodes.get_mut(i as usize) else {
            return Ok(());
        };
        let Some(b) = self.builders.get_mut(job.builder as usize) else {
            return Ok(());
        };
        let (price_in, price_out) = (n.offer.price_in, n.offer.price_out);
        let cost = job_cost(job.input, job.output, price_in, price_out)?;
        let tokens = u64::from(job.input) + u64::from(job.output);
        let c = charge(cost, tokens, self.fee_bps, &b.margin)?;
        self.totals.add(&c)?;
        n.earned = n
            .earned
            .checked_add(cost)
            .ok_or(SimError::Overflow("node earnings"))?;
        if n.adversary() && n.caught_ms.is_none() {
            n.served_before_caught += 1;
            n.earned_before_caught += cost;
        }
        b.jobs += 1;
        b.tokens += tokens;
        b.charged = b
            .charged
            .checked_add(c.total)
            .ok_or(SimError::Overflow("builder charges"))?;
        b.payout = b
            .payout
            .checked_add(c.margin)
            .ok_or(SimError::Overflow("builder payout"))?;
        self.counters.builder_tokens += tokens;
        self.window.tokens += tokens;
        self.window.charged += c.total;
        let margin = b.margin;
        let app = b.app.clone();
        if self.entries.len() < self.sc.settlement.signed_sample as usize {
            let customer = format!("customer-{:05}", job.customer);
            self.sample_entry(job, i, &app, Some(customer), &margin, &c, now_ms)?;
        }
        Ok(())
    }

    /// A real signed + countersigned receipt and its ledger entry.
    #[allow(clippy::too_many_arguments)]
    fn sample_entry(
        &mut self,
        job: &Job,
        node: u32,
        app: &str,
        customer: Option<String>,
        margin: &Margin,
        expected: &Charge,
        now_ms: u64,
    ) -> Result<(), SimError> {
        self.job_counter += 1;
        let Some(n) = self.nodes.get(node as usize) else {
            return Ok(());
        };
        let key = self.signing.entry(node).or_insert_with(|| {
            let mut seed = [0x5e; 32];
            seed[..4].copy_from_slice(&node.to_be_bytes());
            SigningKey::from_bytes(&seed)
        });
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.sc.seed.to_be_bytes());
        id[8..].copy_from_slice(&self.job_counter.to_be_bytes());
        let epoch = self.sc.settlement.epoch_ms;
        let receipt = Receipt {
            job_id: JobId(id),
            node: public_key_of(key),
            coordinator: public_key_of(&self.coordinator),
            model: self
                .sc
                .models
                .get(usize::from(job.model))
                .map_or_else(String::new, |m| m.name.clone()),
            input_tokens: job.input,
            output_tokens: job.output,
            price_in: n.offer.price_in,
            price_out: n.offer.price_out,
            amount: expected.provider_cost,
            started_at_ms: epoch + job.sent_us / 1000,
            finished_at_ms: epoch + now_ms.saturating_sub(ROUTER_EPOCH_MS),
            request_digest: sharenet_proto::sha256(&id),
            response_digest: sharenet_proto::sha256(&job.req.to_be_bytes()),
        };
        let signed = SignedReceipt::sign(receipt, key)?;
        let counter = CountersignedReceipt::countersign(signed, &self.coordinator)?;
        let entry = Entry::new(&counter, app, customer, self.fee_bps, margin)?;
        if entry.charge != *expected {
            return Err(SimError::Unbalanced(format!(
                "entry charge {:?} differs from the simulated charge {:?}",
                entry.charge, expected
            )));
        }
        self.sample_totals.add(&entry.charge)?;
        self.entries.push(entry);
        Ok(())
    }

    // ---- spot checks -----------------------------------------------------

    /// The node a check on `suspect` is compared against, chosen as the
    /// coordinator chooses it (`verdict::choose_reference`): the most
    /// trusted live node with the suspect's weights (its model's), other
    /// than those in `exclude`.
    fn choose_checker(&self, model: u16, suspect: NodeKey, exclude: &[NodeKey]) -> Option<u32> {
        let now_ms = self.now_ms();
        let offers: Vec<(NodeKey, Option<WeightsHash>)> = self
            .by_model
            .get(usize::from(model))?
            .iter()
            .filter_map(|&i| self.nodes.get(i as usize))
            .filter(|n| n.in_table)
            .map(|n| (n.key, n.offer.weights_sha256))
            .collect();
        let trust_of = |keys: &[NodeKey]| {
            keys.iter()
                .map(|k| {
                    self.nodes
                        .get(index_of(k) as usize)
                        .map_or(0.0, |n| n.health.trust.score(now_ms, &self.trust))
                })
                .collect()
        };
        verdict::choose_reference(&offers, &suspect, exclude, trust_of).map(|k| index_of(&k))
    }

    /// `node`'s run of a check: a garbage node's output is wrong, and so is
    /// an input-inflating node's input count (the check compares both),
    /// each with the node's cheat rate.
    fn check_run(&mut self, node: u32) -> CheckRun {
        let u: f64 = self.rng_check.random();
        match self.nodes.get(node as usize) {
            Some(n)
                if (n.behaviour == Behaviour::Adversary(AdversaryKind::Garbage)
                    || n.behaviour == Behaviour::Adversary(AdversaryKind::InflateInput))
                    && u < n.cheat_rate =>
            {
                CheckRun::Wrong
            }
            _ => CheckRun::Right,
        }
    }

    /// Pays one check run on `node` (charged to the spot-check app).
    fn pay_check(&mut self, node: u32, input: u32) -> Result<f64, SimError> {
        let tokens_out = self.sc.operator.spot_check_tokens;
        let Some(n) = self.nodes.get_mut(node as usize) else {
            return Ok(0.0);
        };
        let cost = job_cost(input, tokens_out, n.offer.price_in, n.offer.price_out)?;
        let c = charge(
            cost,
            u64::from(input) + u64::from(tokens_out),
            self.fee_bps,
            &Margin::default(),
        )?;
        n.earned = n
            .earned
            .checked_add(cost)
            .ok_or(SimError::Overflow("node earnings"))?;
        n.check_earned += cost;
        self.totals.add(&c)?;
        self.check_totals.add(&c)?;
        Ok(n.rtt_ms
            + f64::from(input) / n.prefill_tps * 1000.0
            + f64::from(tokens_out) / n.decode_tps * 1000.0)
    }

    /// A spot check on the job's node, as the coordinator runs it: the
    /// node and a reference re-run the job; if they differ, an arbiter
    /// re-runs it; the shared verdict is booked when the runs are done.
    fn spot_check(&mut self, job: &Job) -> Result<(), SimError> {
        let node = job.node;
        let Some(key) = self.nodes.get(node as usize).map(|n| n.key) else {
            return Ok(());
        };
        let Some(reference) = self.choose_checker(job.model, key, &[key]) else {
            self.counters.spot_checks_inconclusive += 1;
            return Ok(());
        };
        self.counters.spot_checks += 1;
        // The re-run on the node itself: it cannot tell a check from a job.
        let run = self.check_run(node);
        let reference_run = self.check_run(reference);
        let mut took = self.pay_check(node, job.input)?;
        took = took.max(self.pay_check(reference, job.input)?);
        let mut arbiter_run = None;
        if verdict::needs_arbiter(&run, &reference_run) {
            let exclude = [key, node_key(reference)];
            if let Some(a) = self.choose_checker(job.model, key, &exclude) {
                arbiter_run = Some(self.check_run(a));
                took += self.pay_check(a, job.input)?;
            }
        }
        let check = Check {
            node,
            reference,
            verdict: verdict::decide(&run, &reference_run, arbiter_run.as_ref()),
            arbiter_wrong: arbiter_run == Some(CheckRun::Wrong),
        };
        let c = self.alloc_check(check);
        let at = self.now_us + us(took);
        self.push(at, Ev::CheckDone(c));
        Ok(())
    }

    fn alloc_check(&mut self, check: Check) -> u32 {
        self.active_checks += 1;
        match self.free_checks.pop() {
            Some(c) => {
                if let Some(slot) = self.checks.get_mut(c as usize) {
                    *slot = check;
                }
                c
            }
            None => {
                self.checks.push(check);
                (self.checks.len() - 1) as u32
            }
        }
    }

    /// Books a check's verdict as trust evidence.
    fn check_done(&mut self, c: u32) {
        self.active_checks = self.active_checks.saturating_sub(1);
        self.free_checks.push(c);
        let Some(check) = self.checks.get(c as usize).copied() else {
            return;
        };
        let now_ms = self.now_ms();
        if check.verdict == Verdict::Inconclusive {
            self.counters.spot_checks_inconclusive += 1;
        }
        for (role, passed) in check.verdict.judgements() {
            let who = match role {
                Role::Suspect => check.node,
                Role::Reference => check.reference,
            };
            if let Some(n) = self.nodes.get_mut(who as usize) {
                let ev = if passed {
                    Evidence::SpotCheckPassed
                } else {
                    self.counters.spot_checks_failed += 1;
                    n.spot_failed += 1;
                    if !n.adversary() {
                        self.counters.spot_check_false_positives += 1;
                        if check.arbiter_wrong {
                            self.counters.spot_check_false_positives_bad_arbiter += 1;
                        }
                    }
                    Evidence::SpotCheckFailed
                };
                n.health.trust.record(ev, now_ms, &self.trust);
            }
            self.refresh(who);
        }
    }

    // ---- the end ---------------------------------------------------------

    /// Settles the signed sample with the real `settle`, and checks its
    /// statement against the simulation's own totals for the same jobs.
    fn settle_sample(&self) -> Result<Option<SignedSettlement>, SimError> {
        let period = PeriodRule::Fixed {
            length_ms: 30 * 86_400_000,
            origin_ms: self.sc.settlement.epoch_ms,
        }
        .period_of(self.sc.settlement.epoch_ms)?;
        let statement = if self.entries.is_empty() {
            None
        } else {
            let signed = settle(period, &self.coordinator, &self.entries)?;
            let s = signed.statement();
            let got = Totals {
                jobs: s.receipts,
                charged: s.total_charged,
                provider: s.total_provider,
                network_fee: s.total_network_fee,
                margin: s.total_margin,
            };
            if got != self.sample_totals {
                return Err(SimError::Unbalanced(format!(
                    "signed statement {got:?} differs from the simulated sample {:?}",
                    self.sample_totals
                )));
            }
            Some(signed)
        };
        Ok(statement)
    }

    /// One row per node (`nodes.csv`).
    fn node_rows(&self) -> Vec<NodeRow> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| NodeRow {
                node: i as u32,
                model: self
                    .sc
                    .models
                    .get(usize::from(n.model))
                    .map_or_else(String::new, |m| m.name.clone()),
                hardware: self
                    .sc
                    .nodes
                    .hardware
                    .get(usize::from(n.hardware))
                    .map_or_else(String::new, |h| h.name.clone()),
                behaviour: match n.behaviour {
                    Behaviour::Honest => "honest".into(),
                    Behaviour::Adversary(k) => format!("{k:?}").to_lowercase(),
                },
                price_out: n.offer.price_out,
                joined_s: n.join_ms / 1000.0,
                left_s: n.left_ms.map(|m| m / 1000.0),
                last_dispatch_s: n.last_dispatch_ms.map(|m| m / 1000.0),
                jobs: n.jobs,
                dispatches: n.dispatches,
                earned: n.earned,
                check_earned: n.check_earned,
                trust_end: n
                    .health
                    .trust
                    .score(ROUTER_EPOCH_MS + self.now_us / 1000, &self.trust),
                spot_failed: n.spot_failed,
                ever_joined: n.in_table
                    || n.left_ms.is_some()
                    || n.jobs > 0
                    || n.join_ms > 0.0
                    || i < self.sc.nodes.count as usize,
            })
            .collect()
    }

    /// One row per adversary (`adversaries.csv`).
    fn adversary_rows(&self) -> Vec<AdversaryRow> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.adversary())
            .map(|(i, n)| AdversaryRow {
                node: i as u32,
                kind: match n.behaviour {
                    Behaviour::Adversary(k) => format!("{k:?}").to_lowercase(),
                    Behaviour::Honest => "honest".into(),
                },
                group: n.group.unwrap_or(0),
                joined_s: n.join_ms / 1000.0,
                caught_after_s: n.caught_ms.map(|c| (c - n.join_ms).max(0.0) / 1000.0),
                served_before_caught: n.served_before_caught,
                earned_before_caught: n.earned_before_caught,
                earned: n.earned,
                dispatches: n.dispatches,
            })
            .collect()
    }

    fn finish(mut self) -> Result<RunResult, SimError> {
        let statement = self.settle_sample()?;
        let nodes = self.node_rows();
        let adversaries = self.adversary_rows();
        let mut ttft = std::mem::take(&mut self.ttft);
        let mut total = std::mem::take(&mut self.total);
        let latency = (Latency::of(&mut ttft), Latency::of(&mut total));
        let totals = RunTotals {
            counters: &self.counters,
            totals: &self.totals,
            checks: &self.check_totals,
            sample: &self.sample_totals,
            latency,
            builder_charged: self.builders.iter().map(|b| b.charged).sum(),
            builder_payout: self.builders.iter().map(|b| b.payout).sum(),
            statement: statement.as_ref(),
            simulated_s: self.now_us as f64 / 1e6,
        };
        let summary = build_summary(self.sc, &totals, &nodes, &adversaries, &self.blocks)?;
        Ok(RunResult {
            summary,
            windows: self.windows,
            nodes,
            adversaries,
            blocks: self.blocks,
            statement_json: statement.as_ref().map(|s| s.to_json()),
            statement_csv: statement.as_ref().map(|s| s.to_csv()),
        })
    }
}
