//! The accounts' tests: every money property on both books backends
//! (sled, and PostgreSQL as replicas).

use std::sync::Arc;

mod renew;

use super::limits::MAX_CUSTOMER_LIMITERS_PER_APP;
use super::types::Scope;
use super::{
    Accounts, AccountsError, Admission, CommitError, FOLLOW_INTERVAL, Principal, SharedOptions,
};
use crate::tests::support::{PATIENCE, wait_for, wait_for_state};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use sharenet_ledger::pg::PgLedger;
use sharenet_ledger::testing::TestPostgres;
use sharenet_ledger::{AppRecord, Books, Budgets, RateLimits};
use sharenet_market::Margin;
use sharenet_proto::CountersignedReceipt;
use sharenet_proto::{JobId, Receipt, SignedReceipt, SigningKey, job_cost, public_key_of};

fn app(id: &str, margin_bps: u32, per_mtok: u64) -> AppRecord {
    let margin = Margin {
        percent_bps: margin_bps,
        per_mtok,
    };
    AppRecord::new(id, "b", margin, 0)
}

fn receipt(job: u32, input: u32, output: u32, pin: u64, pout: u64) -> CountersignedReceipt {
    let node = SigningKey::from_bytes(&[1; 32]);
    let coord = SigningKey::from_bytes(&[2; 32]);
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&job.to_be_bytes());
    let r = Receipt {
        job_id: JobId(id),
        node: public_key_of(&node),
        coordinator: public_key_of(&coord),
        model: "m".into(),
        input_tokens: input,
        output_tokens: output,
        price_in: pin,
        price_out: pout,
        amount: job_cost(input, output, pin, pout).unwrap(),
        started_at_ms: 1,
        finished_at_ms: 2,
        request_digest: [0; 32],
        response_digest: [0; 32],
    };
    CountersignedReceipt::countersign(SignedReceipt::sign(r, &node).unwrap(), &coord).unwrap()
}

fn coordinator_key() -> sharenet_proto::PublicKey {
    public_key_of(&SigningKey::from_bytes(&[2; 32]))
}

/// Where the accounts under test keep their books: every test here
/// runs on both.
#[derive(Debug, Clone, Copy)]
enum Backend {
    /// sled, in memory under one lock.
    Embedded,
    /// PostgreSQL (a throwaway cluster), as one replica of several.
    Shared,
}

const BACKENDS: [Backend; 2] = [Backend::Embedded, Backend::Shared];

/// A database for one test's replicas (one cluster per test; each
/// proptest case gets a database of its own).
struct Database {
    pg: TestPostgres,
    next: std::sync::atomic::AtomicU32,
}

impl Database {
    fn start() -> Self {
        Self {
            pg: TestPostgres::start().unwrap(),
            next: 0.into(),
        }
    }

    fn fresh(&self) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.pg.create_database(&format!("case{n}")).unwrap()
    }
}

/// A replica (or the embedded books) with its mirror's folder.
struct Replica {
    accounts: Arc<Accounts>,
    _dir: tempfile::TempDir,
}

async fn replica_on(url: Option<&str>, fee_bps: u32) -> Replica {
    replica_of(url, fee_bps, 1).await
}

/// As [`replica_on`], one of `replicas`.
async fn replica_of(url: Option<&str>, fee_bps: u32, replicas: u32) -> Replica {
    let dir = tempfile::tempdir().unwrap();
    let books = Arc::new(Books::open(dir.path()).unwrap());
    let accounts = match url {
        None => Arc::new(Accounts::load(books, fee_bps, &coordinator_key()).unwrap()),
        Some(url) => {
            let pg = Arc::new(PgLedger::connect(url, 8).await.unwrap());
            Accounts::load_shared(
                books,
                pg,
                SharedOptions {
                    replicas,
                    hold_ttl_ms: 600_000,
                },
                fee_bps,
                &coordinator_key(),
            )
            .await
            .unwrap()
        }
    };
    Replica {
        accounts,
        _dir: dir,
    }
}

/// What is held for `app` now: in memory, or in the shared books.
async fn held(accounts: &Accounts, app: &str) -> u128 {
    match accounts.shared() {
        None => accounts
            .lock()
            .held
            .get(&Scope::App(app.into()))
            .copied()
            .unwrap_or(0),
        Some(pg) => u128::from(pg.funds(app, 1).await.unwrap().unwrap().2),
    }
}

/// The app's balance as the money check sees it (shared: the
/// database's, with every replica's holds).
async fn balance(accounts: &Accounts, app: &str) -> i128 {
    match accounts.shared() {
        None => accounts.balance(app),
        Some(pg) => {
            let (t, c, h) = pg.funds(app, 1).await.unwrap().unwrap();
            i128::from(t) - i128::from(c) - i128::from(h)
        }
    }
}

/// Dropped holds are released by the replica's worker: wait (with a
/// deadline) until nothing is held for `app`, failing with what still is.
async fn settled_holds(accounts: &Arc<Accounts>, app: &str) {
    if accounts.shared().is_some() {
        let worker = tokio::spawn(
            accounts
                .clone()
                .run_shared(tokio_util::sync::CancellationToken::new()),
        );
        let what = format!("the dropped holds of {app:?} to be released");
        wait_for(&what, PATIENCE, || async move {
            match held(accounts, app).await {
                0 => Ok(()),
                still => Err(format!("{still} nano-USD still held")),
            }
        })
        .await;
        worker.abort();
    }
}

/// Runs `test` on each backend (shared: on a fresh database), in a
/// runtime of its own.
fn on_both<F: std::future::Future<Output = ()>>(test: impl Fn(Backend, Option<String>) -> F) {
    for backend in BACKENDS {
        let db = matches!(backend, Backend::Shared).then(Database::start);
        runtime().block_on(test(backend, db.as_ref().map(Database::fresh)));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// One request: its bounds, what it really used, and how it ended.
#[derive(Debug, Clone)]
struct Req {
    max_in: u32,
    max_out: u32,
    price_in: u64,
    price_out: u64,
    used_in: u32,
    used_out: u32,
    finishes: bool,
    customer: Option<u8>,
}

fn req() -> impl Strategy<Value = Req> {
    (
        1u32..400,
        1u32..400,
        1u64..1000,
        1u64..2000,
        0.0f64..=1.0,
        0.0f64..=1.0,
        any::<bool>(),
        proptest::option::of(0u8..3),
    )
        .prop_map(
            |(max_in, max_out, price_in, price_out, fi, fo, finishes, customer)| Req {
                max_in,
                max_out,
                price_in,
                price_out,
                used_in: ((f64::from(max_in) * fi) as u32).max(1),
                used_out: (f64::from(max_out) * fo) as u32,
                finishes,
                customer,
            },
        )
}

/// Runs `cases` of `strategy` through `body` on each backend.
fn check_on_both<S: Strategy>(
    cases: u32,
    strategy: S,
    body: impl Fn(Option<String>, S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    for backend in BACKENDS {
        let db = matches!(backend, Backend::Shared).then(Database::start);
        let mut runner = TestRunner::new(ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        runner
            .run(&strategy, |v| body(db.as_ref().map(Database::fresh), v))
            .unwrap_or_else(|e| panic!("{backend:?}: {e}"));
    }
}

/// Over random streams of requests (finished, failed before a
/// receipt, held concurrently): the balance never goes below zero,
/// every charge is provider cost + fee + margin exactly, and the
/// balance is top-ups minus charges once every hold is gone.
#[test]
fn money_is_conserved_and_never_overspent() {
    let strategy = (
        proptest::collection::vec(req(), 1..24),
        1_000u64..3_000_000,
        0u32..3000,
        0u64..50_000,
        0u32..2000,
    );
    check_on_both(
        12,
        strategy,
        |url, (reqs, topup, margin_bps, per_mtok, fee_bps)| {
            runtime().block_on(async {
                let r = replica_on(url.as_deref(), fee_bps).await;
                let accounts = &r.accounts;
                let principal = fund(&[accounts], app("a", margin_bps, per_mtok), topup).await;
                let mut kept = Vec::new();
                let mut charged = 0u128;
                for (i, r) in reqs.iter().enumerate() {
                    let customer = r.customer.map(|c| format!("c{c}"));
                    let admitted = accounts
                        .admit(&Admission {
                            principal: &principal,
                            end_customer: customer.as_deref(),
                            max_input_tokens: u64::from(r.max_in),
                            max_output_tokens: u64::from(r.max_out),
                            max_price_in: r.price_in,
                            max_price_out: r.price_out,
                            now_ms: 1,
                        })
                        .await;
                    prop_assert!(balance(accounts, "a").await >= 0);
                    let Ok(hold) = admitted else { continue };
                    if !r.finishes {
                        // Keep some holds alive across later admissions.
                        kept.push(hold);
                        continue;
                    }
                    let entry = hold
                        .commit_async(
                            receipt(i as u32, r.used_in, r.used_out, r.price_in, r.price_out),
                            1,
                        )
                        .await
                        .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                    let c = entry.charge;
                    prop_assert_eq!(c.total, c.provider_cost + c.network_fee + c.margin);
                    charged += u128::from(c.total);
                    prop_assert!(balance(accounts, "a").await >= 0);
                }
                drop(kept);
                settled_holds(accounts, "a").await;
                prop_assert_eq!(
                    balance(accounts, "a").await,
                    i128::from(topup) - charged as i128
                );
                prop_assert_eq!(accounts.balance("a"), i128::from(topup) - charged as i128);
                // And the books say the same after a restart (shared: a new
                // replica with an empty mirror).
                let reloaded = match &url {
                    None => Accounts::load(accounts.books().clone(), fee_bps, &coordinator_key())
                        .unwrap()
                        .balance("a"),
                    Some(url) => replica_on(Some(url), fee_bps).await.accounts.balance("a"),
                };
                prop_assert_eq!(reloaded, i128::from(topup) - charged as i128);
                Ok(())
            })
        },
    );
}

/// Whatever a node signs (any token counts, any prices up to the
/// advert's), a commit never books more than its hold, and no
/// balance ever goes below zero. (Issue 12, item 1: before the
/// bound, a receipt for 4e9 input tokens drained the balance.)
#[test]
fn a_commit_never_books_more_than_its_hold() {
    let strategy = (
        proptest::collection::vec((0u32..=u32::MAX, 0u32..5000), 1..16),
        1_000_000u64..100_000_000,
    );
    check_on_both(12, strategy, |url, (claims, topup)| {
        runtime().block_on(async {
            let r = replica_on(url.as_deref(), 500).await;
            let accounts = &r.accounts;
            let principal = fund(&[accounts], app("a", 1000, 0), topup).await;
            for (i, (input, output)) in claims.into_iter().enumerate() {
                let Ok(hold) = accounts
                    .admit(&Admission {
                        principal: &principal,
                        end_customer: None,
                        max_input_tokens: 100,
                        max_output_tokens: 50,
                        max_price_in: 3,
                        max_price_out: 7,
                        now_ms: 1,
                    })
                    .await
                else {
                    continue;
                };
                let bound = hold.amount();
                match hold
                    .commit_async(receipt(i as u32, input, output, 3, 7), 1)
                    .await
                {
                    Ok(entry) => prop_assert!(u128::from(entry.charge.total) <= bound),
                    Err(CommitError::OverHold { charge, hold }) => {
                        prop_assert!(u128::from(charge) > hold)
                    }
                    Err(e) => prop_assert!(matches!(e, CommitError::Price(_)), "{e:?}"),
                }
                prop_assert!(balance(accounts, "a").await >= 0);
            }
            Ok(())
        })
    });
}

/// An admission whose worst case is 200 nano-USD (100 tokens in and
/// 100 out at 1 each).
fn worst_200(principal: &Principal) -> Admission<'_> {
    Admission {
        principal,
        end_customer: None,
        max_input_tokens: 100,
        max_output_tokens: 100,
        max_price_in: 1,
        max_price_out: 1,
        now_ms: 1,
    }
}

/// App `id` (no margin) topped up with `topup`, and one key, on the
/// first replica; the others follow it.
async fn funded(replicas: &[&Arc<Accounts>], id: &str, topup: u64) -> Principal {
    fund(replicas, app(id, 0, 0), topup).await
}

/// [`funded`] for any app record.
async fn fund(replicas: &[&Arc<Accounts>], record: AppRecord, topup: u64) -> Principal {
    let first = replicas[0];
    let id = record.id.clone();
    first.create_app(record).await.unwrap();
    first.top_up(&id, topup, 0).await.unwrap();
    let key = first
        .install_key(&id, "sk-test-0123456789abcdef", Budgets::default(), 0)
        .await
        .unwrap();
    for r in &replicas[1..] {
        r.follow().await.unwrap();
    }
    Principal {
        app: id,
        key_id: key.id,
    }
}

/// Commits and admissions from many tasks at once (issue 12, item 2),
/// and on shared books from two replicas at once (issue 16): the hold
/// is released and the charge booked in one step, so at every moment
/// top-ups >= charges + holds, and the app never spends more than it
/// topped up.
#[test]
fn concurrent_commits_and_admissions_never_overspend() {
    on_both(|backend, url| async move {
        let a = replica_on(url.as_deref(), 0).await;
        let b = replica_on(url.as_deref(), 0).await;
        let replicas: Vec<&Arc<Accounts>> = match backend {
            Backend::Embedded => vec![&a.accounts],
            Backend::Shared => vec![&a.accounts, &b.accounts],
        };
        // Room for 40 worst cases (100 in + 100 out at 1 each).
        let topup = 40 * 200;
        let principal = funded(&replicas, "a", topup).await;
        let next_job = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // A watcher reads the money over and over.
        let watcher = {
            let (accounts, stop) = (replicas[0].clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    assert!(balance(&accounts, "a").await >= 0);
                    tokio::task::yield_now().await;
                }
            })
        };
        let workers: Vec<_> = (0..8)
            .map(|w| {
                let accounts = replicas[w % replicas.len()].clone();
                let (principal, next_job) = (principal.clone(), next_job.clone());
                tokio::spawn(async move {
                    let mut refused = 0;
                    for _ in 0..20 {
                        match accounts.admit(&worst_200(&principal)).await {
                            Ok(hold) => {
                                let id =
                                    next_job.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                hold.commit_async(receipt(id, 100, 100, 1, 1), 1)
                                    .await
                                    .unwrap();
                            }
                            Err(AccountsError::OverBudget(_)) => refused += 1,
                            Err(e) => panic!("{e}"),
                        }
                    }
                    refused
                })
            })
            .collect();
        let mut refused = 0;
        for w in workers {
            refused += w.await.unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        watcher.await.unwrap();
        assert_eq!(
            refused, 120,
            "{backend:?}: 160 tries, 40 admitted, every refusal over budget"
        );
        assert_eq!(
            balance(replicas[0], "a").await,
            0,
            "{backend:?}: exactly the 40 jobs the balance covered"
        );
        for r in &replicas {
            r.follow().await.unwrap();
            assert_eq!(
                r.books().entry_count(),
                40,
                "{backend:?}: each mirror has every entry"
            );
            assert_eq!(r.balance("a"), 0, "{backend:?}: each view agrees");
        }
    });
}

#[test]
fn a_commit_books_once_durable_and_a_replay_is_refused() {
    on_both(|backend, url| async move {
        let r = replica_on(url.as_deref(), 0).await;
        let accounts = &r.accounts;
        let principal = funded(&[accounts], "a", 10_000).await;
        let admission = worst_200(&principal);
        let hold = accounts.admit(&admission).await.unwrap();
        assert_eq!(held(accounts, "a").await, 200);
        let entry = tokio::spawn(hold.commit_async(receipt(1, 60, 40, 1, 1), 1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(held(accounts, "a").await, 0);
        let after = balance(accounts, "a").await;
        assert_eq!(after, 10_000 - i128::from(entry.charge.total));
        assert_eq!(accounts.books().entry_count(), 1);
        // The same job again: the books refuse it, nothing is charged and
        // the hold is released.
        let hold = accounts.admit(&admission).await.unwrap();
        let replay = tokio::spawn(hold.commit_async(receipt(1, 60, 40, 1, 1), 1))
            .await
            .unwrap();
        assert!(
            matches!(
                replay,
                Err(CommitError::Store(sharenet_ledger::StoreError::Duplicate(
                    _
                )))
            ),
            "{backend:?}: {replay:?}"
        );
        assert_eq!(held(accounts, "a").await, 0, "{backend:?}");
        assert_eq!(balance(accounts, "a").await, after, "{backend:?}");
    });
}

/// Issue 12, item 15: a builder churning end-customer ids used to
/// clear every app's customer limiters at the cap (resetting other
/// builders' limits) and left a held entry per customer forever.
#[test]
fn churning_customer_ids_resets_no_other_app_and_leaves_no_holds() {
    on_both(|backend, url| async move {
        let r = replica_on(url.as_deref(), 0).await;
        let accounts = &r.accounts;
        let limited = |id: &str| AppRecord {
            customer_limits: RateLimits {
                requests_per_minute: Some(1),
                tokens_per_minute: None,
            },
            ..app(id, 0, 0)
        };
        let mut principals = Vec::new();
        for (id, key) in [
            ("greedy", "sk-test-greedy-000000"),
            ("victim", "sk-test-victim-000000"),
        ] {
            accounts.create_app(limited(id)).await.unwrap();
            accounts.top_up(id, 1_000_000_000, 0).await.unwrap();
            let k = accounts
                .install_key(id, key, Budgets::default(), 0)
                .await
                .unwrap();
            principals.push(Principal {
                app: id.into(),
                key_id: k.id,
            });
        }
        fn admission<'a>(p: &'a Principal, customer: &'a str) -> Admission<'a> {
            Admission {
                principal: p,
                end_customer: Some(customer),
                max_input_tokens: 10,
                max_output_tokens: 10,
                max_price_in: 1,
                max_price_out: 1,
                now_ms: 1,
            }
        }
        drop(
            accounts
                .admit(&admission(&principals[1], "alice"))
                .await
                .unwrap(),
        );
        assert!(matches!(
            accounts.admit(&admission(&principals[1], "alice")).await,
            Err(AccountsError::RateLimited { .. })
        ));
        // Fewer customers on the database: each admission is a
        // transaction there.
        let churn = match backend {
            Backend::Embedded => MAX_CUSTOMER_LIMITERS_PER_APP + 10,
            Backend::Shared => 300,
        };
        for i in 0..churn {
            let c = format!("throwaway-{i}");
            drop(
                accounts
                    .admit(&admission(&principals[0], &c))
                    .await
                    .unwrap(),
            );
        }
        assert!(
            matches!(
                accounts.admit(&admission(&principals[1], "alice")).await,
                Err(AccountsError::RateLimited { .. })
            ),
            "{backend:?}: another app's churn did not reset this app's limit"
        );
        settled_holds(accounts, "greedy").await;
        assert_eq!(
            held(accounts, "greedy").await,
            0,
            "{backend:?}: released holds leave nothing held"
        );
        let state = accounts.lock();
        assert!(
            state.held.is_empty(),
            "{backend:?}: released holds leave no entries"
        );
        assert!(
            state.customer_limiters["greedy"].len() <= MAX_CUSTOMER_LIMITERS_PER_APP,
            "{backend:?}: the churning app's limiters stay capped"
        );
    });
}

/// Issue 16: a replica that dies mid-job leaves its hold behind; it
/// stops counting at its expiry and the sweep deletes it.
#[test]
fn a_dead_replicas_hold_expires() {
    let db = Database::start();
    runtime().block_on(async {
        let url = db.fresh();
        let a = replica_on(Some(&url), 0).await;
        let principal = funded(&[&a.accounts], "a", 200).await;
        let hold = a.accounts.admit(&worst_200(&principal)).await.unwrap();
        // The replica dies: its hold is never released.
        std::mem::forget(hold);
        assert!(matches!(
            a.accounts.admit(&worst_200(&principal)).await,
            Err(AccountsError::OverBudget(_))
        ));
        let pg = a.accounts.shared().unwrap();
        // Its TTL counts from when it was taken: the request's time plus
        // what the admission waited (milliseconds here; a minute's slack).
        let later = 1 + 600_000 + 60_000;
        assert_eq!(pg.funds("a", later).await.unwrap().unwrap().2, 0, "expired");
        assert_eq!(pg.sweep_holds(later).await.unwrap(), 1);
        let admitted = a
            .accounts
            .admit(&Admission {
                now_ms: later,
                ..worst_200(&principal)
            })
            .await;
        assert!(admitted.is_ok(), "{:?}", admitted.err());
    });
}

/// Issue 16: a key revoked through one replica is refused by the
/// other once it has followed (every FOLLOW_INTERVAL when running).
#[test]
fn a_key_revoked_on_one_replica_is_refused_by_the_other() {
    let db = Database::start();
    runtime().block_on(async {
        let url = db.fresh();
        let a = replica_on(Some(&url), 0).await;
        let b = replica_on(Some(&url), 0).await;
        funded(&[&a.accounts, &b.accounts], "a", 1_000).await;
        let key = "sk-test-0123456789abcdef";
        let id = b.accounts.authenticate(key).unwrap().key_id;
        let stop = tokio_util::sync::CancellationToken::new();
        let follower = tokio::spawn(b.accounts.clone().run_shared(stop.clone()));
        a.accounts.revoke_key(&id, 5).await.unwrap();
        // What makes the refusal come soon is the follower, which reads
        // the shared books every FOLLOW_INTERVAL (250 ms): unloaded it
        // takes about one interval. The bound is forty of them, so that a
        // loaded machine delaying a few rounds does not fail the test,
        // while a replica that never followed (or followed only on some
        // slower schedule) still does.
        let bound = FOLLOW_INTERVAL * 40;
        wait_for_state(
            "the revoked key to be refused by the other replica",
            bound,
            || match b.accounts.authenticate(key) {
                Ok(_) => Err("still accepted"),
                Err(_) => Ok(()),
            },
        )
        .await;
        stop.cancel();
        follower.await.unwrap();
    });
}

/// Issue 16: rate limits hold across replicas as shares: with two
/// replicas, each admits half of a key's requests per minute, so the
/// deployment admits the limit and no more.
#[test]
fn each_replica_enforces_its_share_of_a_rate_limit() {
    let db = Database::start();
    runtime().block_on(async {
        let url = db.fresh();
        let a = replica_of(Some(&url), 0, 2).await;
        let b = replica_of(Some(&url), 0, 2).await;
        let limited = AppRecord {
            key_limits: RateLimits {
                requests_per_minute: Some(4),
                tokens_per_minute: None,
            },
            ..app("a", 0, 0)
        };
        let principal = fund(&[&a.accounts, &b.accounts], limited, 1_000_000).await;
        let mut admitted = 0;
        for replica in [&a.accounts, &b.accounts] {
            for _ in 0..3 {
                match replica.admit(&worst_200(&principal)).await {
                    Ok(_) => admitted += 1,
                    Err(AccountsError::RateLimited { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
        }
        assert_eq!(admitted, 4, "two per replica: the key's limit across both");
    });
}
