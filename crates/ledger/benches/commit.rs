//! Durable ledger commits per second: `Books::record` returns only after
//! the entry is flushed; concurrent writers share flushes (group commit).
//!
//!     cargo bench -p sharenet-ledger --bench commit
//!
//! Reports 1 writer (one flush per entry, the baseline) and 64 writers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use sharenet_ledger::{Books, LedgerEntry};
use sharenet_market::Margin;
use sharenet_proto::{
    CountersignedReceipt, JobId, Receipt, SignedReceipt, SigningKey, public_key_of,
};

fn entries(n: u32, base: u32) -> Vec<LedgerEntry> {
    let node = SigningKey::from_bytes(&[1; 32]);
    let coord = SigningKey::from_bytes(&[2; 32]);
    (0..n)
        .map(|i| {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&(base + i).to_be_bytes());
            let r = Receipt {
                job_id: JobId(id),
                node: public_key_of(&node),
                coordinator: public_key_of(&coord),
                model: "tiny-llama".into(),
                input_tokens: 20,
                output_tokens: 100,
                price_in: 100,
                price_out: 200,
                amount: 22_000,
                started_at_ms: 1,
                finished_at_ms: 2,
                request_digest: [3; 32],
                response_digest: [4; 32],
            };
            let receipt =
                CountersignedReceipt::countersign(SignedReceipt::sign(r, &node).unwrap(), &coord)
                    .unwrap();
            let charge = sharenet_market::pricing::charge_receipt(
                receipt.receipt(),
                500,
                &Margin::default(),
            )
            .unwrap();
            LedgerEntry {
                receipt,
                app: "acme".into(),
                key_id: "key_0123456789ab".into(),
                end_customer: Some(format!("customer-{}", i % 100)),
                charge,
                recorded_at_ms: 1_795_000_000_000,
                counted_by: None,
            }
        })
        .collect()
}

fn run(writers: usize, per_writer: u32) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let books = Arc::new(Books::open_keyed(dir.path(), [7; 32]).unwrap());
    let batches: Vec<Vec<LedgerEntry>> = (0..writers)
        .map(|w| entries(per_writer, w as u32 * per_writer))
        .collect();
    let start = Instant::now();
    std::thread::scope(|s| {
        for batch in &batches {
            let books = books.clone();
            s.spawn(move || {
                for e in batch {
                    books.record(e).unwrap();
                }
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(books.entry_count(), writers * per_writer as usize);
    (writers * per_writer as usize) as f64 / secs
}

/// The coordinator's settlement path over its books: read every entry back
/// (batch-verified) and settle them.
fn read_and_settle(n: u32) -> (f64, f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let books = Arc::new(Books::open_keyed(dir.path(), [7; 32]).unwrap());
    let writers = 64u32;
    let per = n / writers;
    let batches: Vec<Vec<LedgerEntry>> = (0..writers).map(|w| entries(per, w * per)).collect();
    std::thread::scope(|s| {
        for batch in &batches {
            let books = books.clone();
            s.spawn(move || {
                for e in batch {
                    books.record(e).unwrap();
                }
            });
        }
    });
    // Baseline, same run: both signatures of every receipt, one core.
    let start = Instant::now();
    let both = books.all_entries().unwrap();
    let read_both = start.elapsed().as_secs_f64();
    drop(both);
    // What the coordinator does: each entry's MAC, every core.
    let own = sharenet_proto::public_key_of(&SigningKey::from_bytes(&[2; 32]));
    let start = Instant::now();
    let all = books.all_entries_of(&own).unwrap();
    let read = start.elapsed().as_secs_f64();
    let market: Vec<sharenet_market::Entry> = all
        .iter()
        .map(|e| sharenet_market::Entry {
            receipt: e.receipt.to_bytes(),
            job_id: e.job_id(),
            node: e.receipt.receipt().node,
            app: e.app.clone(),
            end_customer: e.end_customer.clone(),
            charge: e.charge,
        })
        .collect();
    let key = SigningKey::from_bytes(&[2; 32]);
    let period = sharenet_market::Period {
        start_ms: 0,
        end_ms: u64::MAX,
    };
    let s = sharenet_market::statement::settle_preverified(period, &key, &market).unwrap();
    assert_eq!(s.statement().receipts, u64::from(writers * per));
    (read_both, read, start.elapsed().as_secs_f64())
}

fn main() {
    let (read_both, read, total) = read_and_settle(1_000_000);
    let one = run(1, 500);
    let many = run(64, 500);
    println!("| writers | durable commits/s |");
    println!("|---|---|");
    println!("| 1 (one flush per entry) | {one:.0} |");
    println!("| 64 (group commit) | {many:.0} |");
    println!(
        "\ngroup commit / single writer: {:.1}x (target >= 10,000 commits/s)",
        many / one
    );
    println!(
        "\nsettling 1,000,000 entries from the books: read back checking both signatures (baseline) {read_both:.2} s; \
         checking each entry's MAC on every core {read:.2} s ({:.1}x); total with settlement {total:.2} s ({:.0} entries/s; target < 10 s)",
        read_both / read,
        1_000_000.0 / total
    );
}
