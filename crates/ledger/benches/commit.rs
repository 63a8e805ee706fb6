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
            }
        })
        .collect()
}

fn run(writers: usize, per_writer: u32) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let books = Arc::new(Books::open(dir.path()).unwrap());
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

fn main() {
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
}
