//! Holds on shared books that outlive `hold_ttl` (issue 26, item 8): a
//! live job's hold is renewed (all of a replica's in one statement per
//! tick), so its balance is never spent twice; a commit whose hold is gone
//! books nothing; a hold leaves the renewed set when it commits or drops.
//! Real PostgreSQL (a throwaway cluster), with the helpers of `mod.rs`.

use std::sync::Arc;
use std::time::Duration;

use sharenet_ledger::Books;
use sharenet_ledger::pg::PgLedger;

use super::{
    Database, Replica, balance, coordinator_key, funded, receipt, replica_on, runtime, worst_200,
};
use crate::core::accounts::{
    Accounts, AccountsError, Admission, CommitError, Principal, SharedOptions,
};
use crate::core::clock::now_ms;

/// A replica on shared books whose holds count for `ttl_ms`.
async fn replica_with_ttl(url: &str, ttl_ms: u64) -> Replica {
    let dir = tempfile::tempdir().unwrap();
    let books = Arc::new(Books::open(dir.path()).unwrap());
    let pg = Arc::new(PgLedger::connect(url, 8).await.unwrap());
    let accounts = Accounts::load_shared(
        books,
        pg,
        SharedOptions {
            replicas: 1,
            hold_ttl_ms: ttl_ms,
        },
        0,
        &coordinator_key(),
    )
    .await
    .unwrap();
    Replica {
        accounts,
        _dir: dir,
    }
}

/// [`worst_200`] at the real clock's now (the clock renewal uses).
fn worst_200_now(principal: &Principal) -> Admission<'_> {
    Admission {
        now_ms: now_ms(),
        ..worst_200(principal)
    }
}

/// Short enough for a test; renewals come every third of it, so a
/// renewal late by up to two periods (a loaded machine) still lands.
const SHORT_TTL_MS: u64 = 3_000;

/// Issue 26, item 8 (the attack, a greedy builder): a slow job outlives
/// `hold_ttl` on PostgreSQL. Its hold must still count, so a second
/// request the balance cannot also cover is refused, and the balance is
/// spent once. (Before: the hold stopped counting at its expiry, the
/// second request was admitted, and both jobs were booked.)
#[test]
fn a_job_that_outlives_the_hold_ttl_cannot_spend_the_balance_twice() {
    let db = Database::start();
    runtime().block_on(async {
        let url = db.fresh();
        let r = replica_with_ttl(&url, SHORT_TTL_MS).await;
        let accounts = &r.accounts;
        let stop = tokio_util::sync::CancellationToken::new();
        let worker = tokio::spawn(accounts.clone().run_shared(stop.clone()));
        // Room for one worst case (200), not two.
        let principal = funded(&[accounts], "a", 300).await;
        let slow = accounts.admit(&worst_200_now(&principal)).await.unwrap();
        assert_eq!(accounts.live_holds(), 1);
        // The job streams for more than two TTLs.
        tokio::time::sleep(Duration::from_millis(SHORT_TTL_MS * 2 + 500)).await;
        let second = accounts.admit(&worst_200_now(&principal)).await;
        assert!(
            matches!(second, Err(AccountsError::OverBudget(_))),
            "the slow job's hold lapsed: {:?}",
            second.as_ref().map(|h| h.amount())
        );
        drop(second);
        let entry = tokio::spawn(slow.commit_async(receipt(1, 100, 100, 1, 1), now_ms()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(entry.charge.total, 200);
        assert_eq!(balance(accounts, "a").await, 100, "spent once");
        assert_eq!(accounts.live_holds(), 0, "renewed no longer");
        assert_eq!(accounts.lapsed_holds(), 0);
        stop.cancel();
        worker.await.unwrap();
    });
}

/// Issue 26, item 8: a commit whose hold was deleted (swept, released) is
/// refused, logged and counted, and books nothing anywhere. (Before: it
/// was booked, against money admissions no longer counted as held.)
#[test]
fn a_commit_whose_hold_is_gone_books_nothing() {
    let db = Database::start();
    runtime().block_on(async {
        let url = db.fresh();
        let r = replica_on(Some(&url), 0).await;
        let accounts = &r.accounts;
        let principal = funded(&[accounts], "a", 10_000).await;
        let hold = accounts.admit(&worst_200(&principal)).await.unwrap();
        let pg = accounts.shared().unwrap().clone();
        assert_eq!(pg.sweep_holds(u64::MAX >> 2).await.unwrap(), 1, "swept");
        let refused = tokio::spawn(hold.commit_async(receipt(1, 60, 40, 1, 1), 1))
            .await
            .unwrap();
        assert!(
            matches!(refused, Err(CommitError::HoldLapsed { .. })),
            "{refused:?}"
        );
        assert_eq!(pg.entry_totals(Some("a")).await.unwrap(), (0, 0));
        assert_eq!(
            accounts.books().entry_count(),
            0,
            "the mirror books nothing"
        );
        assert_eq!(balance(accounts, "a").await, 10_000);
        assert_eq!(accounts.balance("a"), 10_000, "the view charges nothing");
        assert_eq!(accounts.lapsed_holds(), 1);
        // The same job with a live hold is booked once, as any other.
        let hold = accounts.admit(&worst_200(&principal)).await.unwrap();
        let entry = tokio::spawn(hold.commit_async(receipt(1, 60, 40, 1, 1), 1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            balance(accounts, "a").await,
            10_000 - i128::from(entry.charge.total)
        );
    });
}

/// Issue 26, item 8: a hold is renewed only while it lives: it leaves the
/// replica's set when it commits or drops (so a dropped hold whose
/// release is lost still expires), and embedded books renew nothing.
#[test]
fn a_hold_is_renewed_only_until_it_commits_or_drops() {
    let db = Database::start();
    runtime().block_on(async {
        let url = db.fresh();
        let r = replica_with_ttl(&url, SHORT_TTL_MS).await;
        let accounts = &r.accounts;
        let principal = funded(&[accounts], "a", 10_000).await;
        let committed = accounts.admit(&worst_200_now(&principal)).await.unwrap();
        let dropped = accounts.admit(&worst_200_now(&principal)).await.unwrap();
        assert_eq!(accounts.live_holds(), 2);
        tokio::spawn(committed.commit_async(receipt(1, 60, 40, 1, 1), now_ms()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(accounts.live_holds(), 1);
        drop(dropped);
        assert_eq!(accounts.live_holds(), 0);
        // Embedded books never renew.
        let e = replica_on(None, 0).await;
        let p = funded(&[&e.accounts], "a", 10_000).await;
        let _hold = e.accounts.admit(&worst_200(&p)).await.unwrap();
        assert_eq!(e.accounts.live_holds(), 0);
    });
}
