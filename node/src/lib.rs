//! The sharenet provider daemon as a library: the binary in `main.rs` is a
//! thin CLI over [`start`], and tests and the devnet call it directly.
//!
//! A node loads its models, joins the network, publishes a signed capacity
//! advert (on start, when its load changes, and on a heartbeat), serves job
//! streams token by token, and signs a receipt for every job, which it
//! stores before sending so a provider can audit what it served.
//!
//! Architecture invariants: nothing a peer sends can panic the node or make
//! it queue without bound (a full queue refuses with `saturated`); the
//! receipt a node sends is already durable in its own store.

mod admin;
pub mod bench;
pub mod config;
pub mod gpu;
mod jobs;
pub mod load;
mod metrics;
pub mod reconcile;
mod recount;
mod service;
mod state;
mod tally;
mod upstream;

pub use config::{DeviceChoice, ModelConfig, ModelSource, NodeConfig, UpstreamConfig};
pub use service::{NodeHandle, Reload, start};

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
