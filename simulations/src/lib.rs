//! `sharenet-sim`: a deterministic discrete-event simulator of the sharenet
//! market, for operators to try a change (fees, trust rules, routing
//! weights, probation, spot-check rate) on thousands of simulated nodes
//! before touching the real network.
//!
//! It runs the project's real decision code, not a copy of it:
//! - every routing decision is `sharenet_router::route_table` over one
//!   `CandidateTable` per model, updated in place as in the coordinator;
//! - trust, probation and circuit breakers are `sharenet_router`'s
//!   `NodeHealth` (`Trust`, `Breaker`, `Observed`), fed the same evidence the
//!   coordinator feeds them (completed, failed, rejected receipt, spot check
//!   passed / failed);
//! - every spot check's reference, arbiter and verdict are
//!   `sharenet_router::verdict` (`choose_reference`, `decide`), the code the
//!   coordinator's spot checks call;
//! - every billed job is priced with `sharenet_market::pricing::charge`
//!   (provider cost from `sharenet_proto::job_cost`); a sample of jobs gets
//!   real signed, countersigned receipts and is settled with
//!   `sharenet_market::settle`, and its statement must agree with the
//!   simulation's own totals.
//!
//! What it must not do: read clocks, use global randomness, iterate a hash
//! map, or touch the network or disk during a run (outputs are written
//! after). Same scenario + same seed → byte-identical output files.
//! Money is integer nano-USD throughout; floats are only latencies,
//! scores and chart values.
//!
//! Modules, each importing only those listed before it: [`error`]
//! ([`SimError`]), [`dist`] (distributions), [`scenario`] (TOML →
//! validated scenario), [`results`] (what a run produced: the summary,
//! rows and totals; computes, writes nothing), [`sim`] (the event loop,
//! producing the results), [`charts`] (SVG of the results), [`report`]
//! (writes the results: summary JSON, CSV, charts), [`compare`] (A/B of two
//! parameter sets).

pub mod charts;
pub mod compare;
pub mod dist;
pub mod error;
pub mod report;
pub mod results;
pub mod scenario;
pub mod sim;

pub use error::SimError;
pub use results::{RunResult, Summary};
pub use scenario::Scenario;
pub use sim::simulate;
