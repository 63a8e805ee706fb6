//! `sharenet-verify`: checks sharenet money artefacts from files, offline.
//!
//! - `receipt FILE`: a countersigned receipt (the JSON of
//!   `GET /v1/receipts/{id}`, or its `countersigned_bytes` hex): both
//!   signatures, and that the amount is exactly tokens × prices.
//! - `statement FILE`: a settlement statement (the bundle of
//!   `GET /statements/{label}`, the JSON of `/operator/statements`, or the
//!   signed bytes as hex): the coordinator's signature and that the totals
//!   balance; with a bundle, also that its leaves rebuild the Merkle root;
//!   with a builder's statement (an element of `GET /v1/statements`), also
//!   that the app's line is in the statement's `builders_root`.
//! - `proof --statement S --receipt R --proof P`: that the receipt is in the
//!   statement (the proof JSON of `GET /v1/receipts/{id}/proof`).
//!
//! Exit status 0 when everything checks out, 1 with the reason otherwise.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::Value;
use sharenet_api::statements::{BuilderStatement, StatementBundle};
use sharenet_market::{InclusionProof, SignedStatement};
use sharenet_proto::CountersignedReceipt;

#[derive(Parser)]
#[command(
    name = "sharenet-verify",
    version,
    about = "Verify sharenet receipts and statements offline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Verify a countersigned receipt.
    Receipt { file: PathBuf },
    /// Verify a signed settlement statement (and a bundle's Merkle leaves).
    Statement { file: PathBuf },
    /// Verify that a receipt is included in a statement.
    Proof {
        #[arg(long)]
        statement: PathBuf,
        #[arg(long)]
        receipt: PathBuf,
        #[arg(long)]
        proof: PathBuf,
    },
}

fn main() {
    match run(Cli::parse().command) {
        Ok(summary) => println!("OK  {summary}"),
        Err(e) => {
            eprintln!("FAILED  {e:#}");
            std::process::exit(1);
        }
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
}

/// Hex bytes from a file holding either bare hex or JSON with one of `fields`.
fn bytes_from(path: &Path, fields: &[&str]) -> anyhow::Result<(Vec<u8>, Option<Value>)> {
    let text = read(path)?;
    let trimmed = text.trim();
    if let Ok(v) = serde_json::from_str::<Value>(trimmed) {
        for f in fields {
            if let Some(h) = v.get(*f).and_then(Value::as_str) {
                let bytes = hex::decode(h)
                    .with_context(|| format!("decode `{f}` in {}", path.display()))?;
                return Ok((bytes, Some(v)));
            }
        }
        bail!("{}: no {} field", path.display(), fields.join(" or "));
    }
    let bytes = hex::decode(trimmed)
        .with_context(|| format!("{}: neither JSON nor hex", path.display()))?;
    Ok((bytes, None))
}

fn receipt(path: &Path) -> anyhow::Result<CountersignedReceipt> {
    let (bytes, _) = bytes_from(path, &["countersigned_bytes", "receipt"])?;
    CountersignedReceipt::from_bytes(&bytes)
        .with_context(|| format!("verify receipt {}", path.display()))
}

fn statement(path: &Path) -> anyhow::Result<(SignedStatement, Option<Value>)> {
    let (bytes, json) = bytes_from(path, &["signed_statement", "signed_bytes"])?;
    let s = SignedStatement::from_bytes(&bytes)
        .with_context(|| format!("verify statement {}", path.display()))?;
    Ok((s, json))
}

fn run(command: Command) -> anyhow::Result<String> {
    match command {
        Command::Receipt { file } => {
            let c = receipt(&file)?;
            let r = c.receipt();
            Ok(format!(
                "receipt {}: node {} served {} in + {} out tokens of {:?} for {} nano-USD; node and coordinator signatures valid",
                r.job_id,
                hex::encode(r.node),
                r.input_tokens,
                r.output_tokens,
                r.model,
                r.amount
            ))
        }
        Command::Statement { file } => {
            let (s, json) = statement(&file)?;
            let st = s.statement();
            let mut summary = format!(
                "statement {}: {} receipts, charged {} = providers {} + fee {} + margins {} nano-USD; signed by {}",
                st.period.label(),
                st.receipts,
                st.total_charged,
                st.total_provider,
                st.total_network_fee,
                st.total_margin,
                hex::encode(st.coordinator)
            );
            if !st.deployment.is_empty() {
                summary.push_str(&format!(
                    " for a deployment with {}",
                    st.deployment
                        .iter()
                        .map(hex::encode)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            // A bundle (it has leaves): its leaves must rebuild the root.
            if let Some(v) = json.clone().filter(|v| v.get("leaves").is_some()) {
                let bundle: StatementBundle =
                    serde_json::from_value(v).context("parse the statement bundle")?;
                let hashes: Vec<[u8; 32]> = bundle.leaves.iter().map(|l| l.leaf).collect();
                if hashes.len() as u64 != st.receipts
                    || sharenet_market::merkle::root(&hashes) != st.merkle_root
                {
                    bail!(
                        "the bundle's {} leaves do not rebuild the statement's Merkle root",
                        hashes.len()
                    );
                }
                summary.push_str("; the bundle's leaves rebuild its Merkle root");
            } else if let Some(v) = json.filter(|v| v.get("line_proof").is_some()) {
                // A builder's statement: its line must be in builders_root.
                let b: BuilderStatement =
                    serde_json::from_value(v).context("parse the builder statement")?;
                let proof = b
                    .builder_proof()
                    .context("no line_proof, or line_salt is not 32 bytes of hex")?;
                if !st.includes_builder(&proof) {
                    bail!(
                        "app {}'s line ({} jobs, charged {}, payout {}) is not in the statement's builders root",
                        b.app,
                        b.jobs,
                        b.charged_nano_usd,
                        b.payout_nano_usd
                    );
                }
                summary.push_str(&format!(
                    "; app {}'s line ({} jobs, charged {}, payout {} nano-USD) is in its builders root",
                    b.app, b.jobs, b.charged_nano_usd, b.payout_nano_usd
                ));
            }
            Ok(summary)
        }
        Command::Proof {
            statement: s,
            receipt: r,
            proof,
        } => {
            let (s, _) = statement(&s)?;
            let c = receipt(&r)?;
            let text = read(&proof)?;
            let v: Value = serde_json::from_str(&text)
                .with_context(|| format!("parse {}", proof.display()))?;
            // The answer of `GET /v1/receipts/{id}/proof`
            // (`InclusionProofObject`), or a bare proof.
            let p: InclusionProof = serde_json::from_value(v.get("proof").cloned().unwrap_or(v))
                .with_context(|| format!("parse the proof in {}", proof.display()))?;
            if !s.statement().includes(&c.to_bytes(), &p) {
                bail!(
                    "receipt {} is not included in statement {} with this proof",
                    c.receipt().job_id,
                    s.statement().period.label()
                );
            }
            Ok(format!(
                "receipt {} is included in statement {} (leaf {} of {})",
                c.receipt().job_id,
                s.statement().period.label(),
                p.index,
                p.tree_size
            ))
        }
    }
}
