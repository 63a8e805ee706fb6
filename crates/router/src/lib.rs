//! Node selection for sharenet, as pure functions.
//!
//! What lives here (GitHub issue 4, "Matching, routing and trust"):
//! - [`candidate`]: what a node offers for a model ([`Offer`], from its
//!   advert) and what the coordinator measured about it ([`Observed`]: RTT,
//!   time to first token as EWMA and peak-EWMA, decode speed, jobs in flight);
//! - [`trust`]: per-node evidence that decays with a half-life, a score in
//!   [0, 1], probation for new nodes;
//! - [`breaker`]: a per-node circuit breaker with exponential backoff and a
//!   single half-open probe;
//! - [`mod@route`]: one routing decision: filter by the request's preferences and
//!   the app's private-pool rules, rank by price / predicted latency / trust,
//!   spread load with power-of-two-choices, cap probation traffic, return an
//!   ordered fallback list or the constraint that emptied it;
//! - [`table`]: [`CandidateTable`], the live candidates for one model kept
//!   compact and updated in place, with a block index of lower bounds, and
//!   [`route_table`], the same decision over it (identical output to
//!   [`route()`], tested), reading only the blocks that can matter, for
//!   large fleets;
//! - [`health`]: the per-node bundle of the three above and the step that
//!   turns it into a [`route::Candidate`] at an instant.
//!
//! # Invariants
//!
//! - **Pure.** No sockets, clocks, disks, threads or global randomness. The
//!   current time is a `now_ms: u64` argument and randomness a caller-seeded
//!   `&mut impl rand::Rng`, so the coordinator and the discrete-event
//!   simulator run this very code, and tests drive it with fake time. A
//!   `now_ms` that goes backwards is treated as no time passing.
//! - **Deterministic.** The same inputs and rng state give the same output:
//!   every ordering is total (ties end on the node key), floats are compared
//!   with `total_cmp`, and the rng is drawn a fixed number of times for a
//!   given input (the probation coin, then two power-of-two-choices draws).
//!   Routing uses only IEEE-exact arithmetic (no `exp`), so its output is the
//!   same on every platform; the decays in `trust` and `candidate` use the
//!   platform's `exp`/`exp2`, identical run to run on one machine.
//! - **Money is integer nano-USD** (`u64`, saturating); only scores,
//!   latencies and trust are `f64`.
//! - **Never panics** on any input: NaN or negative measurements count as
//!   "unknown", a NaN trust fails the trust filter, nonsensical parameters
//!   degrade to documented fallbacks, overflow saturates.
//! - **Hard constraints are never traded for score**: a request marked
//!   sensitive only ever gets its private pool's nodes; nodes under the trust
//!   floor, with an open breaker or a full queue, or outside the request's
//!   filters are never returned.
//! - Nodes on probation win at most `probation_share` of first picks when a
//!   node not on probation is available.
//! - `route` costs one pass over the candidates plus one over the
//!   survivors, with no per-candidate allocation and no full sort.
//!   `route_table` reads only the blocks of its index whose lower bounds
//!   can still change the answer (the normalisers, then the best few), and
//!   returns exactly what the full scan returns: the bounds only decide what
//!   is read, never what is returned; the decision's semantics did not
//!   change. `cargo bench -p sharenet-router` prints p50/p99/max per
//!   decision at 1,000 / 10,000 / 100,000 candidates for `route`, the full
//!   scan over the table (`table::route_table_scan`) and `route_table`, and
//!   checks the three agree.
//! - Everything a simulator might log is `serde`-serializable (not
//!   `CandidateTable`: it is an index over logged inputs, rebuilt from them).

pub mod breaker;
pub mod candidate;
mod candidate_table;
mod facts;
mod filter;
pub mod health;
mod index;
mod indexed;
mod rank;
mod request;
pub mod route;
mod scan;
pub mod table;
mod topk;
pub mod trust;
pub mod verdict;

pub use breaker::{Admit, Breaker, BreakerParams, BreakerState};

pub use candidate::{NO_PROMPT_RETENTION, NodeKey, Observed, Offer};
pub use health::NodeHealth;
pub use route::{
    Candidate as RouteCandidate, Filter, NoCandidate, Preferences, PrivatePool, Request,
    RouteParams, Sort, Weights, route,
};
pub use table::{CandidateTable, route_table};
pub use trust::{Evidence, Trust, TrustParams};
