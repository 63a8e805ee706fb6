//! The end-to-end suite: real coordinators and nodes on loopback, one module
//! per capability.
//!
//! One test binary, not one per file: each binary links the whole stack
//! (libp2p, candle, axum, sled), so fourteen of them cost fourteen links and
//! about 3 GB of disk for the same tests. Filter by module as before, e.g.
//! `scripts/test -E 'test(/^chat::/)'`.

mod access_log;
mod accounts;
mod chat;
mod counting;
mod dashboard;
mod deploy;
mod gpu_check;
mod inference;
mod lifecycle;
mod nat;
mod openai_python;
mod real_model;
mod receipts;
mod replicas;
mod routing;
mod scheduling;
mod settlement;
mod streams;
mod tools;
mod trust;
