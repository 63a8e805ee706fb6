//! The HTTP wire types of sharenet, in one place: the OpenAI-compatible
//! requests and responses the coordinator speaks, the receipt, proof and
//! statement JSON builders and providers read, and the operator API's
//! bodies. The coordinator writes them, and `sharenet-node reconcile`,
//! `sharenet-verify` and the end-to-end tests read them, so every side
//! agrees on one definition.
//!
//! Architecture invariant: serde types only. This crate knows nothing of
//! HTTP servers, storage or networks (it depends on `serde` and the pure
//! `proto` and `market` crates), and holds no logic beyond constructors,
//! conversions to and from `proto`'s job types, and the reading of the
//! request fields that check themselves (`field.rs`: `tools`,
//! `tool_choice`, `response_format`, `provider`), every refusal naming
//! the field.

pub mod accounts;
pub mod anthropic;
pub mod anthropic_tools;
pub mod catalog;
mod common;
pub mod dashboard;
mod error;
pub mod field;
pub mod openai;
pub mod provider;
pub mod receipts;
pub mod statements;
pub mod tools;

pub use common::{Cost, List};
pub use error::{ErrorObject, ErrorResponse};
/// Re-exported: the books' stored routing rules use the same encoding.
pub use sharenet_proto::hex_keys;
