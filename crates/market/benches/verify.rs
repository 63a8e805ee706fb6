//! Receipt verification throughput on one core: decode + verify
//! `CountersignedReceipt::from_bytes` one by one, then the batch path
//! `sharenet_proto::verify_countersigned_batch`.
//!
//! `cargo bench -p sharenet-market --bench verify` (release; the process is
//! single-threaded, so the figures are per core). `VERIFY_N` sets how many
//! receipts (default 20,000).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use sharenet_proto::{
    CountersignedReceipt, JobId, Receipt, SignedReceipt, SigningKey, public_key_of,
    verify_countersigned_batch,
};

fn key(i: u32, salt: u8) -> SigningKey {
    let mut seed = [salt; 32];
    seed[..4].copy_from_slice(&i.to_be_bytes());
    SigningKey::from_bytes(&seed)
}

fn main() {
    let n: u32 = std::env::var("VERIFY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let coordinator = key(0, 0xc0);
    let nodes: Vec<SigningKey> = (0..50).map(|i| key(i, 0x0d)).collect();
    let t = Instant::now();
    let owned: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let mut job = [0u8; 16];
            job[..4].copy_from_slice(&i.to_be_bytes());
            let (input, output) = (100 + i % 900, 1 + i % 500);
            let receipt = Receipt {
                job_id: JobId(job),
                node: [0; 32],
                coordinator: public_key_of(&coordinator),
                model: "meta-llama/Llama-3.1-8B-Instruct".into(),
                input_tokens: input,
                output_tokens: output,
                price_in: 50,
                price_out: 150,
                amount: u64::from(input) * 50 + u64::from(output) * 150,
                started_at_ms: 1_790_000_000_000,
                finished_at_ms: 1_790_000_001_000,
                request_digest: [7; 32],
                response_digest: [8; 32],
            };
            let signed = SignedReceipt::sign(receipt, &nodes[i as usize % nodes.len()]).unwrap();
            CountersignedReceipt::countersign(signed, &coordinator)
                .unwrap()
                .to_bytes()
        })
        .collect();
    println!(
        "made {n} countersigned receipts ({} bytes each) in {:.2} s",
        owned[0].len(),
        t.elapsed().as_secs_f64()
    );
    let all: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();

    let t = Instant::now();
    for bytes in &all {
        black_box(CountersignedReceipt::from_bytes(black_box(bytes)).unwrap());
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "from_bytes one by one: {:>8.0} receipts/s ({:.1} us/receipt, 2 signatures each)",
        f64::from(n) / secs,
        secs * 1e6 / f64::from(n)
    );

    // `verify_countersigned_batch` verifies up to 1024 receipts per multi-scalar
    // multiplication internally; "all" hands it the whole set in one call.
    for batch in [64usize, 256, usize::MAX] {
        let t = Instant::now();
        for chunk in all.chunks(batch.min(all.len())) {
            let out = verify_countersigned_batch(black_box(chunk)).unwrap();
            assert_eq!(out.len(), chunk.len());
            black_box(out);
        }
        let secs = t.elapsed().as_secs_f64();
        let label = if batch == usize::MAX {
            "all".to_string()
        } else {
            batch.to_string()
        };
        println!(
            "verify_countersigned_batch, {label:>4} per call: {:>8.0} receipts/s ({:.1} us/receipt)",
            f64::from(n) / secs,
            secs * 1e6 / f64::from(n)
        );
    }
}
