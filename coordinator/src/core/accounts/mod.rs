//! Builder accounts on the coordinator: API keys (hashed), prepaid
//! balances, holds, budgets, rate limits and per-end-customer usage.
//!
//! Money path for one request:
//! 1. [`Accounts::authenticate`]: the Bearer key's SHA-256 names an app and a
//!    key; unknown or revoked → 401.
//! 2. [`Accounts::admit`]: rate limits (requests and tokens per minute, per
//!    key and per end customer; `governor`) → 429 with `Retry-After`; then a
//!    **hold** for the worst-case charge (the most tokens the job may use at
//!    the highest price among the candidate nodes, plus fee and margin),
//!    taken from the app's balance and counted against every budget (app,
//!    key, end customer; day, month, total) → 402 naming what ran out.
//!    Holds are taken under one lock, so concurrent requests can never
//!    overspend.
//! 3. [`Hold::commit_async`] after the receipt: the real charge is computed
//!    (`sharenet_market::charge`) and refused if it exceeds the hold; the
//!    ledger entry is made durable; then, under the same lock admissions
//!    take, the hold is released and the charge booked in one step. A job
//!    that ends without a receipt drops its hold: nothing is charged.
//!
//! Errors are [`AccountsError`]; the core maps them to its own `Error`.
//!
//! Balances, spend and usage are derived from the durable top-ups and
//! ledger entries at start-up ([`Accounts::load`]), so a crash cannot leave
//! them out of step with what was acknowledged.
//!
//! **Replicas** ([`Accounts::load_shared`]): with a PostgreSQL
//! `database_url`, the money decisions move into the database. A hold is
//! read, checked and inserted in one transaction under the app row's lock
//! (`PgLedger::hold`), with the same check as the embedded books
//! (`check_funds` over a `FundsView`, `funds.rs`); a commit books the entry,
//! releases the hold and adds the charge in one transaction; holds expire
//! (`hold_ttl`) so a replica that dies leaves none stuck, while the holds
//! of live jobs are renewed, all of a replica's in one statement per tick
//! (`renew.rs`), and a commit whose hold is gone or expired books nothing
//! ([`CommitError::HoldLapsed`], logged). A replica's waiting admissions
//! for one app share one database transaction and connection, so one
//! app's burst cannot hold the pool (`PgLedger::hold`). The in-memory
//! state becomes a view of the shared books that [`Accounts::follow`] keeps
//! up to date (apps, keys and revocations within one
//! [`FOLLOW_INTERVAL`]), through the replica's local mirror (the embedded
//! books, which every read path uses unchanged). Rate limits stay local to
//! each replica, each enforcing its share (`limit / replicas`, rounded
//! up) of every limit.

//!
//! Where each part lives (each file imports only those listed before it):
//! - `types.rs`: errors, [`Principal`], [`Admission`], budget scopes and
//!   windows, what a hold reserved, key helpers;
//! - `usage.rs`: dashboard usage ([`UsageLine`]);
//! - `state.rs`: the in-memory view (the embedded books' state, a
//!   replica's view of the shared ones);
//! - `limits.rs`: rate limits; `funds.rs`: the one funds check;
//!   `renew.rs`: the set of live holds on shared books and their renewal;
//! - `backend.rs`: the books backend, embedded or shared, with the hold,
//!   its release and the commit;
//! - `service.rs`: [`Accounts`] and its reads; `hold.rs`: admission and
//!   [`Hold`]; `keys.rs`, `apps.rs`: keys and operator actions;
//!   `follow.rs`: replica following; `bootstrap.rs`: start-up apps.

mod apps;
mod backend;
mod bootstrap;
mod follow;
mod funds;
mod hold;
mod keys;
mod limits;
mod renew;
mod service;
mod state;
mod types;
mod usage;

#[cfg(test)]
mod tests;

pub use backend::{FOLLOW_INTERVAL, SharedOptions};
pub use bootstrap::{Bootstrap, bootstrap, ensure_operator_app};
pub use hold::Hold;
pub use service::Accounts;
pub use types::{
    AccountsError, Admission, CommitError, Principal, SPOT_CHECK_APP, key_hash, new_key,
};
pub(crate) use types::{DAY_MS, month_start};
pub use usage::UsageLine;
