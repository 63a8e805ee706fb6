//! Issue 16: what the shared books cost, in one run on one machine.
//!
//! 1. Durable commits per second: the embedded books (sled, group commit)
//!    against PostgreSQL (`PgLedger::commit`, one transaction per group),
//!    with 1 and 64 concurrent writers.
//! 2. The money path of one request (`Accounts::admit`, then
//!    `Hold::commit_async`): its latency alone (p50, p99) on the embedded
//!    books and on PostgreSQL — the database's added latency on the request
//!    path — and requests per second with 64 in flight through one replica
//!    and through two replicas on the same database.
//!
//! PostgreSQL is a throwaway cluster from Debian's packages on loopback
//! (fsync on, synchronous_commit on: every acknowledged commit is on disk).
//!
//! `cargo bench -p sharenet-coordinator --bench replicas`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sharenet_coordinator::core::accounts::{Accounts, Admission, Principal, SharedOptions};
use sharenet_ledger::pg::{Booking, PgLedger};
use sharenet_ledger::testing::TestPostgres;
use sharenet_ledger::{AppRecord, Books, Budgets, LedgerEntry, SpendScope, SpendWindow};
use sharenet_market::Margin;
use sharenet_proto::{
    CountersignedReceipt, JobId, PublicKey, Receipt, SignedReceipt, SigningKey, public_key_of,
};

const COORDINATOR: [u8; 32] = [2; 32];

fn receipt(job: u32) -> CountersignedReceipt {
    let node = SigningKey::from_bytes(&[1; 32]);
    let coord = SigningKey::from_bytes(&COORDINATOR);
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&job.to_be_bytes());
    let r = Receipt {
        job_id: JobId(id),
        node: public_key_of(&node),
        coordinator: public_key_of(&coord),
        model: "tiny-llama".into(),
        input_tokens: 20,
        output_tokens: 100,
        price_in: 1,
        price_out: 2,
        amount: 220,
        started_at_ms: 1,
        finished_at_ms: 2,
        request_digest: [3; 32],
        response_digest: [4; 32],
    };
    CountersignedReceipt::countersign(SignedReceipt::sign(r, &node).unwrap(), &coord).unwrap()
}

fn entry(job: u32) -> LedgerEntry {
    let receipt = receipt(job);
    let charge =
        sharenet_market::pricing::charge_receipt(receipt.receipt(), 500, &Margin::default())
            .unwrap();
    LedgerEntry {
        receipt,
        app: "acme".into(),
        key_id: "key_0123456789ab".into(),
        end_customer: Some(format!("customer-{}", job % 100)),
        charge,
        recorded_at_ms: 1_795_000_000_000,
        counted_by: None,
    }
}

fn app() -> AppRecord {
    AppRecord::new("acme", "b", Margin::default(), 0)
}

fn own() -> PublicKey {
    public_key_of(&SigningKey::from_bytes(&COORDINATOR))
}

/// Durable commits per second into sled through `Books::record_then`.
async fn sled_commits(writers: u32, per: u32) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let books = Arc::new(Books::open_keyed(dir.path(), [7; 32]).unwrap());
    let batches: Vec<Vec<LedgerEntry>> = (0..writers)
        .map(|w| (0..per).map(|i| entry(w * per + i)).collect())
        .collect();
    let start = Instant::now();
    let tasks: Vec<_> = batches
        .into_iter()
        .map(|batch| {
            let books = books.clone();
            tokio::spawn(async move {
                for e in batch {
                    let (done, wait) = tokio::sync::oneshot::channel();
                    books
                        .record_then(
                            &e,
                            Box::new(move |r| {
                                let _ = done.send(r);
                            }),
                        )
                        .unwrap();
                    wait.await.unwrap().unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    f64::from(writers * per) / start.elapsed().as_secs_f64()
}

/// Durable commits per second into PostgreSQL through `PgLedger::commit`.
async fn pg_commits(url: &str, writers: u32, per: u32, base: u32) -> f64 {
    let pg = Arc::new(PgLedger::connect(url, 16).await.unwrap());
    let _ = pg.create_app(&app()).await.unwrap();
    let batches: Vec<Vec<LedgerEntry>> = (0..writers)
        .map(|w| (0..per).map(|i| entry(base + w * per + i)).collect())
        .collect();
    let start = Instant::now();
    let tasks: Vec<_> = batches
        .into_iter()
        .map(|batch| {
            let pg = pg.clone();
            tokio::spawn(async move {
                for e in batch {
                    pg.commit(Booking {
                        entry: e,
                        hold_id: None,
                        scopes: vec![SpendScope::App, SpendScope::Key("key_0123456789ab".into())],
                        windows: vec![
                            SpendWindow::Day(0),
                            SpendWindow::Month(0),
                            SpendWindow::Total,
                        ],
                    })
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    f64::from(writers * per) / start.elapsed().as_secs_f64()
}

/// Apps in the many-apps rows.
const APPS: usize = 16;

fn app_named(id: &str) -> AppRecord {
    AppRecord {
        id: id.into(),
        name: id.into(),
        ..app()
    }
}

/// A replica (or the embedded books) with app `acme` and [`APPS`] more,
/// funded, and their keys (the first is acme's).
async fn replica(
    url: Option<&str>,
    dir: &std::path::Path,
    first: bool,
) -> (Arc<Accounts>, Vec<Principal>) {
    let books = Arc::new(Books::open_keyed(dir, [7; 32]).unwrap());
    let accounts = match url {
        None => Arc::new(Accounts::load(books, 500, &own()).unwrap()),
        Some(url) => {
            let pg = Arc::new(PgLedger::connect(url, 32).await.unwrap());
            Accounts::load_shared(
                books,
                pg,
                SharedOptions {
                    replicas: 2,
                    hold_ttl_ms: 600_000,
                },
                500,
                &own(),
            )
            .await
            .unwrap()
        }
    };
    let ids: Vec<String> = std::iter::once("acme".to_string())
        .chain((0..APPS).map(|i| format!("app-{i}")))
        .collect();
    if first {
        for id in &ids {
            accounts.create_app(app_named(id)).await.unwrap();
            accounts.top_up(id, u64::MAX / 64, 0).await.unwrap();
        }
    }
    accounts.follow().await.unwrap();
    let mut principals = Vec::new();
    for id in &ids {
        let key = accounts
            .install_key(
                id,
                &format!("sk-bench-{id}-0123456789"),
                Budgets::default(),
                0,
            )
            .await
            .unwrap();
        principals.push(Principal {
            app: id.clone(),
            key_id: key.id,
        });
    }
    (accounts, principals)
}

fn admission(principal: &Principal) -> Admission<'_> {
    Admission {
        principal,
        end_customer: Some("customer-1"),
        max_input_tokens: 100,
        max_output_tokens: 200,
        max_price_in: 1,
        max_price_out: 2,
        now_ms: 1_795_000_000_000,
    }
}

/// One request's money path: hold, then commit.
async fn one_request(accounts: &Arc<Accounts>, principal: &Principal, job: u32) {
    let hold = accounts.admit(&admission(principal)).await.unwrap();
    hold.commit_async(receipt(job), 1_795_000_000_000)
        .await
        .unwrap();
}

/// p50 and p99 of `n` requests one after another, in ms.
async fn latency(
    accounts: &Arc<Accounts>,
    principal: &Principal,
    jobs: &AtomicU32,
    n: usize,
) -> (f64, f64) {
    let mut ms = Vec::with_capacity(n);
    for _ in 0..n {
        let job = jobs.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        one_request(accounts, principal, job).await;
        ms.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    (ms[n / 2], ms[n * 99 / 100])
}

/// Requests per second with `in_flight` at once, spread over `replicas`,
/// for one app (`many`: false) or spread over [`APPS`] apps.
async fn throughput(
    replicas: &[(Arc<Accounts>, Vec<Principal>)],
    jobs: &Arc<AtomicU32>,
    in_flight: usize,
    per: usize,
    many: bool,
) -> f64 {
    let start = Instant::now();
    let tasks: Vec<_> = (0..in_flight)
        .map(|i| {
            let (accounts, principals) = &replicas[i % replicas.len()];
            let principal = if many {
                principals[1 + i % APPS].clone()
            } else {
                principals[0].clone()
            };
            let accounts = accounts.clone();
            let jobs = jobs.clone();
            tokio::spawn(async move {
                for _ in 0..per {
                    let job = jobs.fetch_add(1, Ordering::Relaxed);
                    one_request(&accounts, &principal, job).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (in_flight * per) as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let pg = TestPostgres::start().expect("start PostgreSQL (scripts/setup-test-deps installs it)");
    let commits_db = pg.create_database("commits").unwrap();

    println!("## Durable commits per second\n");
    println!("| writers | sled (embedded) | PostgreSQL | PostgreSQL / sled |");
    println!("|---|---|---|---|");
    for (writers, per) in [(1u32, 300u32), (64, 100)] {
        let sled = sled_commits(writers, per).await;
        let base = writers * 1_000_000;
        let postgres = pg_commits(&commits_db, writers, per, base).await;
        println!(
            "| {writers} | {sled:.0} | {postgres:.0} | {:.2}x |",
            postgres / sled
        );
    }

    println!("\n## One request's money path (admit + commit)\n");
    let money_db = pg.create_database("money").unwrap();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let embedded = replica(None, dirs[0].path(), true).await;
    let first = replica(Some(&money_db), dirs[1].path(), true).await;
    let second = replica(Some(&money_db), dirs[2].path(), false).await;
    let jobs = Arc::new(AtomicU32::new(0));
    // Warm up (connections, caches).
    latency(&embedded.0, &embedded.1[0], &jobs, 50).await;
    latency(&first.0, &first.1[0], &jobs, 50).await;
    let (e50, e99) = latency(&embedded.0, &embedded.1[0], &jobs, 500).await;
    let (p50, p99) = latency(&first.0, &first.1[0], &jobs, 500).await;
    println!("| books | p50 ms | p99 ms |");
    println!("|---|---|---|");
    println!("| embedded (sled) | {e50:.2} | {e99:.2} |");
    println!("| PostgreSQL | {p50:.2} | {p99:.2} |");
    println!(
        "\nadded by the database on the request path: {:.2} ms at p50, {:.2} ms at p99",
        p50 - e50,
        p99 - e99
    );
    println!("\n| 64 requests in flight | one app: requests/s | {APPS} apps: requests/s |");
    println!("|---|---|---|");
    let both = [first.clone(), second.clone()];
    let mut rows = Vec::new();
    for (name, set) in [
        (
            "embedded books, one coordinator",
            std::slice::from_ref(&embedded),
        ),
        ("PostgreSQL, one replica", std::slice::from_ref(&first)),
        ("PostgreSQL, two replicas", &both[..]),
    ] {
        let one_app = throughput(set, &jobs, 64, 40, false).await;
        let many = throughput(set, &jobs, 64, 40, true).await;
        println!("| {name} | {one_app:.0} | {many:.0} |");
        rows.push((one_app, many));
    }
    println!(
        "\ntwo replicas / one replica: {:.2}x (one app), {:.2}x ({APPS} apps)",
        rows[2].0 / rows[1].0,
        rows[2].1 / rows[1].1
    );
    // Both replicas see every entry.
    tokio::time::sleep(Duration::from_millis(100)).await;
    second.0.follow().await.unwrap();
    println!(
        "\n(second replica's mirror after following: {} entries)",
        second.0.books().entry_count()
    );
}
