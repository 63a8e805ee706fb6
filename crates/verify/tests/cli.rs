//! The verifier binary on files it is handed: good ones pass, tampered ones
//! fail with a reason.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use sharenet_market::{Entry, Margin, Period};
use sharenet_proto::{
    CountersignedReceipt, JobId, Receipt, SignedReceipt, SigningKey, public_key_of,
};

fn receipt(id: u8) -> CountersignedReceipt {
    let node = SigningKey::from_bytes(&[1; 32]);
    let coord = SigningKey::from_bytes(&[2; 32]);
    let r = Receipt {
        job_id: JobId([id; 16]),
        node: public_key_of(&node),
        coordinator: public_key_of(&coord),
        model: "m".into(),
        input_tokens: 2,
        output_tokens: 3,
        price_in: 10,
        price_out: 20,
        amount: 80,
        started_at_ms: 1,
        finished_at_ms: 2,
        request_digest: [0; 32],
        response_digest: [0; 32],
    };
    CountersignedReceipt::countersign(SignedReceipt::sign(r, &node).unwrap(), &coord).unwrap()
}

fn verify(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sharenet-verify"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn receipts_statements_and_proofs_verify_and_tampering_fails() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let receipts: Vec<_> = (1..=5).map(receipt).collect();
    let entries: Vec<Entry> = receipts
        .iter()
        .map(|c| Entry::new(c, "acme", None, 500, &Margin::default()).unwrap())
        .collect();
    let coord = SigningKey::from_bytes(&[2; 32]);
    let statement = sharenet_market::settle(
        Period {
            start_ms: 0,
            end_ms: 10,
        },
        &coord,
        &entries,
    )
    .unwrap();
    let proof = sharenet_market::inclusion_proof(&entries, JobId([3; 16])).unwrap();

    std::fs::write(
        d.join("r.json"),
        serde_json::json!({"countersigned_bytes": hex::encode(receipts[2].to_bytes())}).to_string(),
    )
    .unwrap();
    std::fs::write(d.join("s.hex"), hex::encode(statement.signed().to_bytes())).unwrap();
    std::fs::write(
        d.join("p.json"),
        serde_json::json!({"proof": proof}).to_string(),
    )
    .unwrap();

    let (ok, out) = verify(&["receipt", "r.json"], d);
    assert!(ok && out.contains("signatures valid"), "{out}");
    let (ok, out) = verify(&["statement", "s.hex"], d);
    assert!(ok && out.contains("5 receipts"), "{out}");
    let (ok, out) = verify(
        &[
            "proof",
            "--statement",
            "s.hex",
            "--receipt",
            "r.json",
            "--proof",
            "p.json",
        ],
        d,
    );
    assert!(ok && out.contains("is included"), "{out}");

    // Another receipt with this proof: not included.
    std::fs::write(d.join("r4.hex"), hex::encode(receipts[3].to_bytes())).unwrap();
    let (ok, out) = verify(
        &[
            "proof",
            "--statement",
            "s.hex",
            "--receipt",
            "r4.hex",
            "--proof",
            "p.json",
        ],
        d,
    );
    assert!(!ok && out.contains("not included"), "{out}");

    // One flipped byte in a receipt or a statement: refused.
    let mut bad = receipts[2].to_bytes();
    bad[30] ^= 1;
    std::fs::write(d.join("bad.hex"), hex::encode(bad)).unwrap();
    let (ok, out) = verify(&["receipt", "bad.hex"], d);
    assert!(!ok && out.contains("FAILED"), "{out}");
    let mut bad = statement.signed().to_bytes();
    bad[40] ^= 1;
    std::fs::write(d.join("bad-s.hex"), hex::encode(bad)).unwrap();
    let (ok, _) = verify(&["statement", "bad-s.hex"], d);
    assert!(!ok);

    // A builder's statement: its line is in the builders root; a builder
    // that inflates its payout is refused.
    let line = statement.builder_proof("acme").unwrap();
    let st = statement.statement();
    let mut view = serde_json::json!({
        "object": "statement",
        "label": st.period.label(),
        "period": {"start_ms": st.period.start_ms, "end_ms": st.period.end_ms},
        "merkle_root": hex::encode(st.merkle_root),
        "builders_root": hex::encode(st.builders_root),
        "app": "acme",
        "jobs": line.jobs,
        "charged_nano_usd": line.charged,
        "payout_nano_usd": line.payout,
        "line_salt": hex::encode(line.salt),
        "line_proof": line.proof,
        "signed_bytes": hex::encode(statement.signed().to_bytes()),
    });
    std::fs::write(d.join("b.json"), view.to_string()).unwrap();
    let (ok, out) = verify(&["statement", "b.json"], d);
    assert!(ok && out.contains("app acme's line (5 jobs"), "{out}");
    view["charged_nano_usd"] = serde_json::json!(line.charged - 1);
    std::fs::write(d.join("b-bad.json"), view.to_string()).unwrap();
    let (ok, out) = verify(&["statement", "b-bad.json"], d);
    assert!(
        !ok && out.contains("not in the statement's builders root"),
        "{out}"
    );
}
