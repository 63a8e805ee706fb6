//! Keeping a live job's hold counted on shared books (issue 26, item 8).
//!
//! A hold on PostgreSQL stops counting at its expiry (`hold_ttl`), so a
//! replica that dies leaves none stuck. A job may run longer than that:
//! while its [`Hold`](super::Hold) lives, a [`Renewal`] task owned by the
//! hold pushes the expiry on every `ttl / RENEWALS_PER_TTL`
//! (`PgLedger::renew_hold`, which never revives a hold that already
//! stopped counting). The task is aborted when the hold is committed,
//! released or dropped, so there is one task per live hold and none
//! after it. Should the hold lapse anyway (the database unreachable for
//! two renewals, a sweep racing a stalled replica), the commit is refused
//! by the database and nothing is booked (`CommitError::HoldLapsed`).
//! A leaf: it imports no other file of the module.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use sharenet_ledger::pg::PgLedger;

use crate::core::clock::now_ms;

/// Renewals per TTL: the expiry is pushed every third of the TTL, so a
/// hold survives two failed renewals in a row (a database hiccup) before
/// it lapses.
pub(super) const RENEWALS_PER_TTL: u64 = 3;

/// The renewal task of one hold on shared books; aborted when dropped.
pub(super) struct Renewal {
    task: tokio::task::AbortHandle,
    /// Set when the hold is about to end (commit, release): a renewal that
    /// then finds the row gone is expected, not a lapse worth a warning.
    ending: Arc<AtomicBool>,
}

impl Renewal {
    /// Starts renewing hold `hold` (TTL `ttl_ms`); `live` counts the
    /// renewal tasks running.
    pub(super) fn start(pg: Arc<PgLedger>, hold: i64, ttl_ms: u64, live: Arc<AtomicUsize>) -> Self {
        let ending = Arc::new(AtomicBool::new(false));
        let every = Duration::from_millis((ttl_ms / RENEWALS_PER_TTL).max(1));
        let counted = Counted::new(live);
        let quiet = ending.clone();
        let task = tokio::spawn(async move {
            let _counted = counted;
            loop {
                tokio::time::sleep(every).await;
                let now = now_ms();
                match pg.renew_hold(hold, now, now.saturating_add(ttl_ms)).await {
                    Ok(true) => {}
                    Ok(false) => {
                        if !quiet.load(Ordering::Acquire) {
                            tracing::warn!(
                                hold,
                                "a live job's hold lapsed (expired or swept): its commit will be refused"
                            );
                        }
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(hold, error = %e, "renew a hold (tried again next time)");
                    }
                }
            }
        })
        .abort_handle();
        Self { task, ending }
    }

    /// The hold is about to end: a renewal finding it gone is expected.
    pub(super) fn ending(&self) {
        self.ending.store(true, Ordering::Release);
    }
}

impl Drop for Renewal {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One running renewal task in the replica's count; uncounted when the
/// task ends or is aborted (its future is dropped either way).
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(live: Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::AcqRel);
        Self(live)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
