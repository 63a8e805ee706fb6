//! `CandidateTable`: the live candidates for one model, kept compact so a
//! routing decision over tens of thousands of nodes stays within the
//! caches.
//!
//! Why it exists: `route` over `&[Candidate]` follows two pointers per node
//! into the caller's structures (an `Offer` with its strings, an `Observed`),
//! a few hundred scattered bytes each; at 10,000 nodes that no longer fits
//! in a core's cache and a decision costs the memory traffic (see
//! `benches/route.rs`). The table stores only what the filter and the ranking
//! read, about 80 bytes a node in one contiguous array, labels (region,
//! quantization, weights hash) interned to integers, and is updated in
//! place when something about a node changes (an advert, a finished job, a
//! trust or breaker change), so the per-request work is the scan alone.
//!
//! The table (its rows are in `crate::candidate_table`) also keeps a block
//! index (`crate::index`): rows grouped in blocks of 64 by price, then by a
//! reference completion time, each block with exact minima / maxima of what
//! the ranking reads. `route_table` reads
//! only the blocks whose bounds show they can change the answer, so at
//! 10,000 rows a decision reads a few hundred to a few thousand rows instead
//! of all. Every change to a row recomputes its block's summary (64 rows),
//! so bounds are always exact; the grouping itself is redone when about a
//! sixteenth of the rows were added, removed or moved far (`reindex` does it
//! on demand).
//!
//! `route_table` gives exactly the list `route` gives for the same
//! candidates (tested), so callers can switch freely; `route_table_scan` is
//! the same decision without the index.
//!
//! The caller keeps time-dependent inputs fresh, as for `route`: the trust
//! score, probation and breaker admission are stored as given, so refresh a
//! node when they change and periodically (e.g. once a second) for the
//! decays.

use rand::Rng;

pub use crate::candidate_table::CandidateTable;

use crate::candidate::NodeKey;
use crate::filter::NoCandidate;
use crate::indexed::route_indexed;
use crate::request::{Request, RouteParams, Weights};
use crate::route::with_spill;
use crate::scan::route_core;

/// `route` over a `CandidateTable`: the same decision, the same list,
/// reading only the blocks of rows that can matter (see `crate::index`).
pub fn route_table<R: Rng + ?Sized>(
    table: &CandidateTable,
    req: &Request,
    weights: &Weights,
    params: &RouteParams,
    rng: &mut R,
) -> Result<Vec<NodeKey>, NoCandidate> {
    with_spill(params, |p| route_indexed(table, req, weights, p, rng))
}

/// `route_table` without the block index: one pass over every row (what
/// `route_table` did before the index). The same list; kept as the
/// reference the indexed path is tested and benchmarked against.
pub fn route_table_scan<R: Rng + ?Sized>(
    table: &CandidateTable,
    req: &Request,
    weights: &Weights,
    params: &RouteParams,
    rng: &mut R,
) -> Result<Vec<NodeKey>, NoCandidate> {
    with_spill(params, |p| route_core(table, req, weights, p, rng))
}
