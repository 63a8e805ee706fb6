//! Settlement throughput.
//!
//! (a) `settle_preverified` over 1,000,000 synthetic entries (1,000 nodes,
//!     100 apps), Merkle root and signature included: the entries' receipt
//!     bytes are real countersigned-receipt bytes with the job id patched in
//!     (so the signatures no longer verify: this measures settlement alone,
//!     as for entries a ledger verified on the way in);
//! (b) the full `settle` path (every receipt decoded and both signatures
//!     batch-verified) over real receipts, to show where its time goes.
//!
//! `cargo bench -p sharenet-market --bench settle` (release, one thread).
//! `SETTLE_N` / `SETTLE_VERIFIED_N` change the two sizes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use sharenet_market::merkle;
use sharenet_market::pricing::charge;
use sharenet_market::statement::{inclusion_proof, settle, settle_preverified};
use sharenet_market::{Entry, Margin, PeriodRule};
use sharenet_proto::{
    CountersignedReceipt, JobId, Receipt, SignedReceipt, SigningKey, public_key_of,
};

/// Where the job id sits in countersigned receipt bytes: the countersign
/// tag and version, then the receipt tag and version.
const JOB_ID_AT: usize = b"sharenet/countersign\0".len() + 2 + b"sharenet/receipt\0".len() + 2;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn key(i: u32, salt: u8) -> SigningKey {
    let mut seed = [salt; 32];
    seed[..4].copy_from_slice(&i.to_be_bytes());
    SigningKey::from_bytes(&seed)
}

fn job_id(i: u64) -> JobId {
    // Spread ids like random ones (the settlement sorts them).
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
    id[8..].copy_from_slice(&i.to_be_bytes());
    JobId(id)
}

fn receipt(i: u64, node: &SigningKey, coordinator: &SigningKey) -> CountersignedReceipt {
    let (input, output) = (100 + (i % 900) as u32, 1 + (i % 500) as u32);
    let r = Receipt {
        job_id: job_id(i),
        node: [0; 32],
        coordinator: public_key_of(coordinator),
        model: "meta-llama/Llama-3.1-8B-Instruct".into(),
        input_tokens: input,
        output_tokens: output,
        price_in: 50,
        price_out: 150,
        amount: u64::from(input) * 50 + u64::from(output) * 150,
        started_at_ms: 1_793_491_200_000 + i,
        finished_at_ms: 1_793_491_201_000 + i,
        request_digest: [7; 32],
        response_digest: [8; 32],
    };
    let signed = SignedReceipt::sign(r, node).unwrap();
    CountersignedReceipt::countersign(signed, coordinator).unwrap()
}

fn margin(app: usize) -> Margin {
    Margin {
        percent_bps: (app as u32 % 7) * 250,
        per_mtok: (app as u64 % 5) * 100_000,
    }
}

fn main() {
    let n = env("SETTLE_N", 1_000_000);
    let verified_n = env("SETTLE_VERIFIED_N", 20_000);
    let coordinator = key(0, 0xc0);
    let period = PeriodRule::CalendarMonth
        .period_of(1_793_491_200_000)
        .unwrap();
    let nodes: Vec<SigningKey> = (0..1_000).map(|i| key(i, 0x0d)).collect();
    let node_keys: Vec<[u8; 32]> = nodes.iter().map(public_key_of).collect();
    let apps: Vec<String> = (0..100).map(|i| format!("app-{i:03}")).collect();

    // (a) one million pre-verified entries.
    let t = Instant::now();
    let template = receipt(0, &nodes[0], &coordinator);
    let template_bytes = template.to_bytes();
    let entries: Vec<Entry> = (0..n as u64)
        .map(|i| {
            let id = job_id(i);
            let mut bytes = template_bytes.clone();
            bytes[JOB_ID_AT..JOB_ID_AT + 16].copy_from_slice(&id.0);
            let app = (i as usize * 7) % apps.len();
            let provider_cost = 1_000 + (i % 100_000) * 37;
            let tokens = 100 + i % 2_000;
            Entry {
                receipt: bytes,
                job_id: id,
                node: node_keys[(i as usize * 13) % node_keys.len()],
                app: apps[app].clone(),
                end_customer: None,
                charge: charge(provider_cost, tokens, 500, &margin(app)).unwrap(),
            }
        })
        .collect();
    println!(
        "built {n} entries ({} receipt bytes each) in {:.2} s",
        template_bytes.len(),
        t.elapsed().as_secs_f64()
    );

    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..3 {
        let t = Instant::now();
        let signed = settle_preverified(period, &coordinator, black_box(&entries)).unwrap();
        times.push(t.elapsed().as_secs_f64());
        last = Some(signed);
    }
    times.sort_by(f64::total_cmp);
    let signed = last.unwrap();
    let s = signed.statement();
    println!(
        "settle_preverified, {n} entries: best {:.3} s, median {:.3} s ({:.0} entries/s); \
         {} providers, {} builders, {} statement bytes, period {}",
        times[0],
        times[1],
        n as f64 / times[1],
        s.providers.len(),
        signed.lines().len(),
        signed.signed().to_bytes().len(),
        s.period.label()
    );
    assert_eq!(
        s.total_charged,
        s.total_provider + s.total_network_fee + s.total_margin
    );

    // The Merkle part alone, on the same leaves.
    let t = Instant::now();
    let mut leaves: Vec<(JobId, [u8; 32])> = entries
        .iter()
        .map(|e| (e.job_id, merkle::leaf_hash(&e.receipt)))
        .collect();
    leaves.sort_unstable_by_key(|l| l.0);
    let leaf_secs = t.elapsed().as_secs_f64();
    let hashes: Vec<[u8; 32]> = leaves.iter().map(|l| l.1).collect();
    let t = Instant::now();
    let root = merkle::root(&hashes);
    let root_secs = t.elapsed().as_secs_f64();
    assert_eq!(root, s.merkle_root);
    println!(
        "  of which: leaf hashing + sort {leaf_secs:.3} s, Merkle root over {n} leaves {root_secs:.3} s"
    );

    let t = Instant::now();
    let probe = &entries[n / 3];
    let proof = inclusion_proof(&entries, probe.job_id).unwrap();
    println!(
        "inclusion_proof (rebuilds order and tree): {:.3} s, {} siblings, verifies: {}",
        t.elapsed().as_secs_f64(),
        proof.siblings.len(),
        s.includes(&probe.receipt, &proof)
    );
    drop(entries);

    // (b) the verifying path over real receipts.
    let t = Instant::now();
    let real: Vec<Entry> = (0..verified_n as u64)
        .map(|i| {
            let r = receipt(i, &nodes[(i as usize * 13) % nodes.len()], &coordinator);
            let app = (i as usize * 7) % apps.len();
            Entry::new(&r, apps[app].clone(), None, 500, &margin(app)).unwrap()
        })
        .collect();
    println!(
        "built {verified_n} signed entries in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let full = settle(period, &coordinator, &real).unwrap();
    let full_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let fast = settle_preverified(period, &coordinator, &real).unwrap();
    let fast_secs = t.elapsed().as_secs_f64();
    assert_eq!(full, fast);
    println!(
        "settle (batch-verifies every receipt), {verified_n} entries: {full_secs:.3} s \
         ({:.0} entries/s); settle_preverified on the same: {fast_secs:.3} s",
        verified_n as f64 / full_secs
    );
}
