//! Pure money logic for sharenet: what a job costs the builder, which
//! period a moment belongs to, and the signed statement that settles a
//! period (provider rewards, builder payouts, the network fee) with a
//! Merkle root over its receipts.
//!
//! - [`pricing`]: the charge for one job (provider cost + network fee +
//!   builder margin, exactly) and the hold placed before dispatch;
//! - [`period`]: settlement periods in UTC from Unix milliseconds;
//! - [`merkle`]: an RFC 6962 Merkle tree, so a provider can prove that a
//!   receipt is in a statement with a standard audit path;
//! - [`statement`]: settlement itself, its canonical bytes and signature,
//!   JSON and CSV.
//!
//! Architecture invariants:
//! - PURE: no I/O, no clocks, no randomness, no threads. Time, keys and
//!   entries are arguments, so the coordinator and a simulator run the same
//!   code and get the same bytes;
//! - money is integer nano-USD ([`sharenet_proto::NanoUsd`]); no floating
//!   point anywhere; every sum is checked and an overflow is an error;
//! - settlement is a function of the *set* of entries: input order does not
//!   change a byte of the statement;
//! - nothing here panics on input; statement bytes are decoded like every
//!   signed object of `sharenet-proto` (domain tag, protocol version, bounded
//!   lengths, the signature verified before a value exists).

mod error;
pub mod merkle;
pub mod period;
pub mod pricing;
pub mod statement;

pub use error::MarketError;
pub use merkle::InclusionProof;
pub use period::{Period, PeriodRule};
pub use pricing::{Charge, CountedBy, JobBounds, Margin, charge, charge_receipt, hold};
pub use statement::{
    BuilderLine, BuilderProof, Entry, ProviderLine, SaltedLine, Settlement, SignedStatement,
    Statement, inclusion_proof, settle, settle_preverified,
};
