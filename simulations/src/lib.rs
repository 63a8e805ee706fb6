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
//! Modules: [`scenario`] (TOML → validated scenario), [`dist`]
//! (distributions), [`sim`] (the event loop), [`report`] (summary, CSV),
//! [`charts`] (SVG), [`compare`] (A/B of two parameter sets).

pub mod charts;
pub mod compare;
pub mod dist;
pub mod report;
pub mod scenario;
pub mod sim;

pub use report::{RunResult, Summary};
pub use scenario::Scenario;
pub use sim::simulate;

use thiserror::Error;

/// Why a scenario could not be loaded or run.
#[derive(Debug, Error)]
pub enum SimError {
    /// The file is not valid TOML or has an unknown key or a wrong type;
    /// the message names the key and the line (from the TOML parser).
    #[error("{0}")]
    Parse(String),
    /// A value serde accepted but the simulator cannot use.
    #[error("scenario key `{key}`{}: {reason}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Invalid {
        key: String,
        line: Option<usize>,
        reason: String,
    },
    /// A `--set key=value` override that does not apply.
    #[error("--set {set}: {reason}")]
    Set { set: String, reason: String },
    #[error("money: {0}")]
    Market(#[from] sharenet_market::MarketError),
    #[error("receipt: {0}")]
    Proto(#[from] sharenet_proto::ProtoError),
    #[error("amount overflows 64 bits: {0}")]
    Overflow(&'static str),
    /// The simulation's money and the market crate's disagree (a bug).
    #[error("settlement does not balance: {0}")]
    Unbalanced(String),
    #[error("write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("encode: {0}")]
    Encode(String),
    #[error("chart {path}: {reason}")]
    Chart { path: String, reason: String },
}
