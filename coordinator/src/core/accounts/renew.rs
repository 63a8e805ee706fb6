//! Keeping live jobs' holds counted on shared books (issue 26, item 8).
//!
//! A hold on PostgreSQL stops counting at its expiry (`hold_ttl`), so a
//! replica that dies leaves none stuck. A job may run longer than that, so
//! while its hold lives the replica keeps pushing the expiry on: every
//! live hold is in this replica's [`LiveHolds`], and one task
//! (`Accounts::run_shared`) renews them all every `ttl /
//! RENEWALS_PER_TTL` in **one** statement (`PgLedger::renew_holds`), on
//! one pooled connection, whatever the number of holds. Admissions cannot
//! starve it: one app's burst holds one connection per replica (the
//! ledger's group admission), and admissions of all apps together leave
//! some free, so the renewal, like the group commit, always finds one. A hold leaves the set when its commit returns or when
//! it is released or dropped: a dropped hold whose release is lost is not
//! renewed and expires. Should a hold lapse anyway (the database
//! unreachable for four renewals in a row, a sweep racing a stalled
//! replica), the database refuses its commit and nothing is booked
//! (`CommitError::HoldLapsed`, logged and counted). A leaf: it imports no
//! other file of the module.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sharenet_ledger::StoreError;
use sharenet_ledger::pg::PgLedger;

use crate::core::sync::lock;

/// Renewals per TTL: the expiries are pushed every fifth of the TTL, so a
/// hold survives four failed or late renewals in a row (a database
/// hiccup, a loaded machine) before it lapses; each is one statement.
pub(super) const RENEWALS_PER_TTL: u32 = 5;

/// The holds this replica took on shared books whose jobs still run.
#[derive(Default)]
pub(super) struct LiveHolds {
    /// Hold id → whether its commit has begun (then a renewal that finds
    /// the row gone is the commit's doing, not a lapse worth a warning).
    holds: Mutex<HashMap<i64, bool>>,
    /// Commits refused because their hold had lapsed.
    refused: AtomicU64,
}

impl LiveHolds {
    /// A hold just taken: renewed from now on.
    pub(super) fn insert(&self, id: i64) {
        lock(&self.holds).insert(id, false);
    }

    /// Its commit begins: still renewed until [`LiveHolds::remove`].
    pub(super) fn committing(&self, id: i64) {
        if let Some(c) = lock(&self.holds).get_mut(&id) {
            *c = true;
        }
    }

    /// The hold ended (committed, refused, released, dropped).
    pub(super) fn remove(&self, id: i64) {
        lock(&self.holds).remove(&id);
    }

    /// Live holds now.
    pub(super) fn len(&self) -> usize {
        lock(&self.holds).len()
    }

    /// A commit refused because its hold had lapsed.
    pub(super) fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Commits refused because their hold had lapsed, so far.
    pub(super) fn refused_count(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// How often [`LiveHolds::renew`] runs for holds of `ttl_ms`.
    pub(super) fn period(ttl_ms: u64) -> Duration {
        Duration::from_millis((ttl_ms / u64::from(RENEWALS_PER_TTL)).max(1))
    }

    /// One renewal of every live hold: their expiries pushed to `now_ms +
    /// ttl_ms` in one statement. A hold the database no longer counts is
    /// dropped from the set (logged at warn, unless its commit had begun):
    /// it is never revived, and its commit will be refused.
    pub(super) async fn renew(
        &self,
        pg: &PgLedger,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        let ids: Vec<i64> = lock(&self.holds).keys().copied().collect();
        if ids.is_empty() {
            return Ok(());
        }
        let renewed: std::collections::HashSet<i64> = pg
            .renew_holds(&ids, now_ms, now_ms.saturating_add(ttl_ms))
            .await?
            .into_iter()
            .collect();
        let mut holds = lock(&self.holds);
        for id in ids.iter().filter(|id| !renewed.contains(id)) {
            // Still in the set and not committing: its job still runs.
            if holds.get(id) == Some(&false) {
                holds.remove(id);
                tracing::warn!(
                    hold = id,
                    "a live job's hold lapsed (expired or swept): its commit will be refused"
                );
            }
        }
        Ok(())
    }
}
