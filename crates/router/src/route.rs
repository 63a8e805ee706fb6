//! One routing decision: filter the live candidates for a model by the
//! request's hard constraints, rank the rest, return an ordered fallback list.
//!
//! # Filter
//!
//! Every hard constraint is one [`Filter`]; they run in the order its
//! variants are listed ([`Filter::ALL`]), which only matters for naming the
//! constraint that emptied the list in [`NoCandidate`]. Each filter's
//! predicate is in `crate::filter`.
//!
//! # Rank
//!
//! Each survivor gets three numbers: the expected price of this request
//! (`input_tokens * price_in + max_output_tokens * price_out`, integer
//! nano-USD), a predicted completion time (RTT + queue wait + time to first
//! token + `max_output_tokens / tokens_per_sec`, observed values preferred to
//! advertised ones), and its trust. The score (lower is better) is
//!
//! ```text
//! w.price * price / best_price + w.latency * time / best_time + w.trust * (1 - trust)
//! ```
//!
//! i.e. each of price and time as a multiple of the best survivor's, so the
//! weights mean the same thing whatever the model's price level or size.
//!
//! The list is then: the `order` nodes that survived, in that order; for an
//! app with a private pool that may spill, the pool's nodes; then the rest.
//! Within a group nodes go by `sort`'s key if one is given, then by score,
//! then by node key (so the order is total and deterministic).
//!
//! The *first* slot (unless an `order` node takes it) is not simply the best
//! node, or every coordinator would stampede the single cheapest one:
//! - without `sort`, it is drawn by power-of-two-choices among the best few
//!   (`p2c_top_k`, within `p2c_slack` of the best score): two random ones,
//!   and the one with the lower peak-EWMA load cost (`first-token time * (1 +
//!   load / max_concurrency)`) wins, so load spreads over near-equivalent
//!   nodes and moves away from one the moment its peak latency rises;
//! - nodes on probation may take it only with probability `probation_share`
//!   (when a non-probation node is available), so new nodes get some traffic
//!   to prove themselves but never more than that share of first picks.
//!
//! With `sort`, load balancing is off (as on OpenRouter): the first slot is
//! the best by that key, still subject to the probation cap.
//!
//! An `order` node in the first slot is the builder's explicit choice: the
//! probation cap and load balancing do not override it.
//!
//! # Where it is written
//!
//! - `crate::request`: what is asked ([`Request`], [`Preferences`],
//!   [`Weights`], [`RouteParams`]);
//! - `crate::facts`: what a [`Candidate`] is, as the plain numbers the
//!   decision reads (`Facts`), and `Source`, the rows of either walk;
//! - `crate::filter`: the filters and [`NoCandidate`];
//! - `crate::rank`: predictions, score and the list (`Ranking`);
//! - `crate::scan`: the full scan (`route_core`), one pass over every
//!   candidate;
//! - `crate::indexed`: the indexed walk (`route_indexed`) over a
//!   `CandidateTable`, reading only the blocks whose lower bounds (see
//!   `crate::index`) show they can change the answer.
//!
//! Both walks read rows with the same filter-and-predict step and rank with
//! the same `Ranking`; the indexed walk returns the full scan's list, bit
//! for bit, for a fraction of the reads (see `benches/route.rs`). `route`
//! builds the rows from the caller's `Offer`s and `Observed`s on every call
//! (memory-bound at 10,000+ nodes); `route_table` (in `table`) reads them
//! from a `CandidateTable` the caller keeps up to date.

use rand::Rng;

pub use crate::facts::Candidate;
pub use crate::filter::{Filter, NoCandidate};
pub use crate::request::{Preferences, PrivatePool, Request, RouteParams, Sort, Weights};

use crate::candidate::NodeKey;
use crate::scan::route_core;

/// Ranks `candidates` for `req`; see the module docs for the rules. Returns
/// node keys, first = try first, at most `params.max_candidates` long (at
/// least one), or the constraint that left no node.
///
/// Deterministic: the same inputs and the same `rng` state give the same
/// list. The `rng` is used for the probation coin and the two P2C draws only.
pub fn route<R: Rng + ?Sized>(
    candidates: &[Candidate<'_>],
    req: &Request,
    weights: &Weights,
    params: &RouteParams,
    rng: &mut R,
) -> Result<Vec<NodeKey>, NoCandidate> {
    with_spill(params, |p| route_core(candidates, req, weights, p, rng))
}

/// Runs `decide` with `params`; if only capacity emptied the list, again
/// with `spill_queue_factor` (see [`RouteParams::spill_queue_factor`]).
pub(crate) fn with_spill(
    params: &RouteParams,
    mut decide: impl FnMut(&RouteParams) -> Result<Vec<NodeKey>, NoCandidate>,
) -> Result<Vec<NodeKey>, NoCandidate> {
    match decide(params) {
        Err(NoCandidate::Filtered {
            filter: Filter::Capacity,
            ..
        }) if params.spill_queue_factor > params.max_queue_factor => decide(&RouteParams {
            max_queue_factor: params.spill_queue_factor,
            ..params.clone()
        }),
        decided => decided,
    }
}
