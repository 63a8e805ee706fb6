//! Settlement: the signed statement of one period.
//!
//! The coordinator's ledger records one [`Entry`] per countersigned job:
//! the receipt's canonical bytes, who served it, which app (and end
//! customer) it was for, and its [`Charge`]. [`settle`] turns a period's
//! entries into a [`Statement`] — what each provider earned, what each
//! builder was charged and is paid back (its margin), the network fee —
//! plus a Merkle root over the receipts, and signs it.
//!
//! Builders' business stays private. The signed [`Statement`] is public
//! (providers reconcile against it) and names no builder: it carries the
//! number of builder lines and `builders_root`, an RFC 6962 root over the
//! lines' salted leaf hashes ([`BuilderLine::leaf`]). The lines themselves
//! live in the [`Settlement`] the coordinator keeps; each builder gets its
//! own line, its salt and an inclusion proof ([`Settlement::builder_proof`],
//! checked with [`Statement::includes_builder`]). The salt is derived from
//! the coordinator's key, so the root can't be brute-forced from a guessed
//! app id and amounts. Anyone can still check from the signed statement that
//! `total_charged = total_provider + total_network_fee + total_margin` and
//! that the provider lines add up; the operator (or an auditor given the
//! lines) checks that the builder lines add up to the totals and rebuild the
//! root ([`Settlement::from_parts`]).
//!
//! Rules:
//! - the statement is a function of the *set* of entries: they are ordered
//!   by job id (a job id is the receipt id and is unique), lines are
//!   sorted by key, so any input order gives the same bytes; a job id seen
//!   twice is an error (a receipt is paid once);
//! - money balances, checked with overflow checks at every sum:
//!   `total_charged = total_provider + total_network_fee + total_margin`,
//!   provider rewards sum to `total_provider`, builder charges to
//!   `total_charged`, payouts to `total_margin`, and jobs to `receipts`;
//!   a statement that does not balance cannot be signed or decoded, nor
//!   can a settlement whose builder lines do not;
//! - the Merkle leaves are `leaf_hash(receipt bytes)` in job-id order, so a
//!   provider holding its countersigned receipt and an [`inclusion_proof`]
//!   can check that it was counted.
//!
//! Which receipts belong to which period is the ledger's decision (by when
//! the coordinator accepted them; the node's `finished_at_ms` comes from
//! the node's clock), and a job id is accepted into the ledger once, so no
//! receipt is settled in two periods. Settlement does not look at clocks.
//!
//! Two ways in:
//! - [`settle`] decodes every receipt and verifies both signatures (batched:
//!   [`sharenet_proto::verify_countersigned_batch`]), and checks each entry
//!   against its receipt: job id, node, coordinator = the signer of the
//!   statement, `charge.provider_cost` = the receipt's `amount`;
//! - [`settle_preverified`] skips the receipt decoding and signatures, for
//!   entries read back from a ledger that verified them on the way in and
//!   again on read (`sharenet-ledger` stores only verified receipts and
//!   re-verifies them when read back). Everything else is
//!   checked the same way; the result is the same bytes as [`settle`] for
//!   entries that would pass it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sharenet_proto::{
    CountersignedReceipt, JobId, NanoUsd, PROTOCOL_VERSION, PublicKey, SigningKey, public_key_of,
    sign_canonical, verify_canonical, verify_countersigned_batch,
};

use crate::merkle::{self, InclusionProof, leaf_hash};
use crate::pricing::{Charge, Margin, charge_receipt};
use crate::{MarketError, Period};
use sharenet_proto::canon::{Reader, Writer};

/// Statements with builder lines in the clear (before builder privacy)
/// carried this tag; they are refused with a clear error.
const TAG_V1: &[u8] = b"sharenet/statement\0";
const TAG: &[u8] = b"sharenet/statement-v2\0";
const LINES_TAG: &[u8] = b"sharenet/builder-lines\0";
const LINE_TAG: &[u8] = b"sharenet/builder-line\0";
const SALT_TAG: &[u8] = b"sharenet/builder-salt\0";
/// Longest app id, in bytes (ids are chosen by the coordinator).
pub const MAX_APP_ID: usize = 128;
/// Longest end-customer id, in bytes (the OpenAI `user` field).
pub const MAX_END_CUSTOMER: usize = 256;

/// One settled job as the coordinator's ledger records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The countersigned receipt's canonical bytes
    /// ([`CountersignedReceipt::to_bytes`]); hex in JSON.
    #[serde(with = "hex::serde")]
    pub receipt: Vec<u8>,
    /// The receipt's job id.
    pub job_id: JobId,
    /// The node that served the job (the receipt's signer).
    #[serde(with = "hex::serde")]
    pub node: PublicKey,
    /// The builder's app the job was charged to.
    pub app: String,
    /// The builder's end customer, when the request named one (metering
    /// only: settlement pays the builder, not its customers).
    pub end_customer: Option<String>,
    /// What the job cost the app; `charge.provider_cost` is the receipt's
    /// amount.
    pub charge: Charge,
}

impl Entry {
    /// The entry for a verified receipt, with the charge computed from the
    /// app's margin and the network fee in force ([`charge_receipt`]).
    pub fn new(
        receipt: &CountersignedReceipt,
        app: impl Into<String>,
        end_customer: Option<String>,
        network_fee_bps: u32,
        margin: &Margin,
    ) -> Result<Self, MarketError> {
        let r = receipt.receipt();
        let entry = Self {
            receipt: receipt.to_bytes(),
            job_id: r.job_id,
            node: r.node,
            app: app.into(),
            end_customer,
            charge: charge_receipt(r, network_fee_bps, margin)?,
        };
        entry.check_shape()?;
        Ok(entry)
    }

    /// Checks what can be checked without the receipt: id lengths and that
    /// the charge is an exact sum.
    fn check_shape(&self) -> Result<(), MarketError> {
        let bad = |reason: String| MarketError::Entry {
            job: self.job_id,
            reason,
        };
        if self.app.is_empty() || self.app.len() > MAX_APP_ID {
            return Err(bad(format!("app id must be 1..={MAX_APP_ID} bytes")));
        }
        if self
            .end_customer
            .as_ref()
            .is_some_and(|c| c.len() > MAX_END_CUSTOMER)
        {
            return Err(bad(format!(
                "end customer id longer than {MAX_END_CUSTOMER} bytes"
            )));
        }
        if !self.charge.balances() {
            return Err(bad(format!(
                "charge total {} is not provider cost + network fee + margin",
                self.charge.total
            )));
        }
        Ok(())
    }

    /// Checks the entry against its decoded, verified receipt.
    fn check_against(
        &self,
        receipt: &CountersignedReceipt,
        coordinator: &PublicKey,
    ) -> Result<(), MarketError> {
        let r = receipt.receipt();
        let bad = |reason: &str| MarketError::Entry {
            job: self.job_id,
            reason: reason.into(),
        };
        if r.job_id != self.job_id {
            return Err(bad("job id differs from the receipt's"));
        }
        if r.node != self.node {
            return Err(bad("node differs from the receipt's signer"));
        }
        if r.coordinator != *coordinator {
            return Err(bad("receipt countersigned by another coordinator"));
        }
        if r.amount != self.charge.provider_cost {
            return Err(MarketError::Entry {
                job: self.job_id,
                reason: format!(
                    "provider cost {} != receipt amount {}",
                    self.charge.provider_cost, r.amount
                ),
            });
        }
        Ok(())
    }
}

/// One provider's earnings in the period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProviderLine {
    #[serde(with = "hex::serde")]
    pub node: PublicKey,
    pub jobs: u64,
    /// Sum of its provider costs.
    pub reward: NanoUsd,
}

/// One app's bill and payout in the period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuilderLine {
    pub app: String,
    pub jobs: u64,
    /// Sum of its charges' totals (what its balance was charged).
    pub charged: NanoUsd,
    /// Sum of its margins (what it is paid back).
    pub payout: NanoUsd,
}

impl BuilderLine {
    /// The line's leaf hash in `builders_root`: `leaf_hash` of its
    /// canonical bytes followed by its 32-byte salt.
    pub fn leaf(&self, salt: &[u8; 32]) -> [u8; 32] {
        let mut w = Writer::new(LINE_TAG);
        w.str(&self.app);
        w.u64(self.jobs);
        w.u64(self.charged);
        w.u64(self.payout);
        w.raw(salt);
        leaf_hash(&w.finish())
    }
}

/// A builder line with its salt, as the coordinator keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaltedLine {
    pub line: BuilderLine,
    pub salt: [u8; 32],
}

/// What a builder is given to check its own line: the line, its salt and
/// its audit path to the statement's `builders_root`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuilderProof {
    pub app: String,
    pub jobs: u64,
    pub charged: NanoUsd,
    pub payout: NanoUsd,
    #[serde(with = "hex::serde")]
    pub salt: [u8; 32],
    pub proof: InclusionProof,
}

impl BuilderProof {
    pub fn line(&self) -> BuilderLine {
        BuilderLine {
            app: self.app.clone(),
            jobs: self.jobs,
            charged: self.charged,
            payout: self.payout,
        }
    }
}

/// A settled period. Lines are sorted by key (node key bytes, app id
/// bytes); all amounts are nano-USD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Statement {
    pub period: Period,
    /// The coordinator that settled and signed it.
    #[serde(with = "hex::serde")]
    pub coordinator: PublicKey,
    /// How many receipts (jobs) were settled.
    pub receipts: u64,
    pub total_charged: NanoUsd,
    pub total_provider: NanoUsd,
    pub total_network_fee: NanoUsd,
    pub total_margin: NanoUsd,
    pub providers: Vec<ProviderLine>,
    /// How many builder lines (apps) the period has.
    pub builder_lines: u64,
    /// RFC 6962 root over the builder lines' salted leaves
    /// ([`BuilderLine::leaf`]) in app-id order.
    #[serde(with = "hex::serde")]
    pub builders_root: [u8; 32],
    /// RFC 6962 root over `leaf_hash(receipt bytes)` in job-id order.
    #[serde(with = "hex::serde")]
    pub merkle_root: [u8; 32],
    /// The other coordinator keys of the same deployment (replicas on
    /// shared books), sorted: receipts countersigned by any of them, or by
    /// `coordinator`, are settled here. Empty for a lone coordinator (and
    /// then absent from the signed bytes, which stay as before).
    #[serde(serialize_with = "hex_keys")]
    pub deployment: Vec<PublicKey>,
}

fn hex_keys<S: serde::Serializer>(keys: &[PublicKey], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(keys.iter().map(hex::encode))
}

/// Most keys a deployment lists.
pub const MAX_DEPLOYMENT_KEYS: usize = 256;

/// Bytes of one provider line, the least one salted builder line can take:
/// bounds for the decoders.
const PROVIDER_LINE_BYTES: usize = 32 + 8 + 8;
const MIN_BUILDER_LINE_BYTES: usize = 4 + 1 + 8 + 8 + 8 + 32;

impl Statement {
    /// The canonical bytes that are signed: tag, protocol version, then the
    /// fields in declaration order (big-endian; counts and strings with a
    /// u32 length).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(TAG);
        w.u64(self.period.start_ms);
        w.u64(self.period.end_ms);
        w.raw(&self.coordinator);
        w.u64(self.receipts);
        w.u64(self.total_charged);
        w.u64(self.total_provider);
        w.u64(self.total_network_fee);
        w.u64(self.total_margin);
        w.len(self.providers.len());
        for p in &self.providers {
            w.raw(&p.node);
            w.u64(p.jobs);
            w.u64(p.reward);
        }
        w.u64(self.builder_lines);
        w.raw(&self.builders_root);
        w.raw(&self.merkle_root);
        if !self.deployment.is_empty() {
            w.len(self.deployment.len());
            for k in &self.deployment {
                w.raw(k);
            }
        }
        w.finish()
    }

    /// Whether a receipt countersigned by `key` belongs to this statement's
    /// deployment (its signer or one of its replicas).
    pub fn settles_for(&self, key: &PublicKey) -> bool {
        self.coordinator == *key || self.deployment.binary_search(key).is_ok()
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, MarketError> {
        let period = Period {
            start_ms: r.u64("period start")?,
            end_ms: r.u64("period end")?,
        };
        let coordinator = r.array::<32>("coordinator key")?;
        let receipts = r.u64("receipts")?;
        let total_charged = r.u64("total charged")?;
        let total_provider = r.u64("total provider")?;
        let total_network_fee = r.u64("total network fee")?;
        let total_margin = r.u64("total margin")?;
        let n = r.count("provider lines", PROVIDER_LINE_BYTES)?;
        let mut providers = Vec::with_capacity(n);
        for _ in 0..n {
            providers.push(ProviderLine {
                node: r.array::<32>("provider node")?,
                jobs: r.u64("provider jobs")?,
                reward: r.u64("provider reward")?,
            });
        }
        let builder_lines = r.u64("builder lines")?;
        let builders_root = r.array::<32>("builders root")?;
        Ok(Self {
            period,
            coordinator,
            receipts,
            total_charged,
            total_provider,
            total_network_fee,
            total_margin,
            providers,
            builder_lines,
            builders_root,
            merkle_root: r.array::<32>("merkle root")?,
            // A deployment section, when more than the signature follows.
            deployment: if r.remaining() > 64 {
                let n = r.count("deployment keys", 32)?;
                (0..n)
                    .map(|_| r.array::<32>("deployment key"))
                    .collect::<Result<_, _>>()?
            } else {
                Vec::new()
            },
        })
    }

    /// The rules every statement keeps, whoever made it: a non-empty
    /// period, strictly sorted provider lines with at least one job each,
    /// every total equal to the sum it names (no overflow), and between 1
    /// and `receipts` builder lines when there are receipts (none when
    /// there are none). The builder lines' sums are checked where the lines
    /// are ([`Settlement::from_parts`]).
    pub fn validate(&self) -> Result<(), MarketError> {
        let invalid = |field: &'static str, reason: String| MarketError::Invalid { field, reason };
        if self.period.start_ms >= self.period.end_ms {
            return Err(invalid("statement period", "must not be empty".into()));
        }
        if !self.providers.windows(2).all(|w| w[0].node < w[1].node) {
            return Err(invalid(
                "provider lines",
                "must be sorted by node key, once each".into(),
            ));
        }
        if self.providers.iter().any(|p| p.jobs == 0) {
            return Err(invalid("statement lines", "a line has no jobs".into()));
        }
        if self.deployment.len() > MAX_DEPLOYMENT_KEYS
            || !self.deployment.windows(2).all(|w| w[0] < w[1])
            || self.deployment.contains(&self.coordinator)
        {
            return Err(invalid(
                "deployment",
                format!(
                    "at most {MAX_DEPLOYMENT_KEYS} keys, sorted, once each, without the signer"
                ),
            ));
        }
        if (self.receipts == 0) != (self.builder_lines == 0) || self.builder_lines > self.receipts {
            return Err(invalid(
                "builder lines",
                format!(
                    "{} lines for {} receipts (each line has at least one)",
                    self.builder_lines, self.receipts
                ),
            ));
        }
        let balanced = self
            .total_provider
            .checked_add(self.total_network_fee)
            .and_then(|s| s.checked_add(self.total_margin));
        let checks: [(&'static str, u64, u64); 3] = [
            (
                "total charged",
                self.total_charged,
                balanced.ok_or(MarketError::Overflow("statement totals"))?,
            ),
            (
                "provider jobs",
                self.receipts,
                checked_sum(self.providers.iter().map(|p| p.jobs), "provider jobs")?,
            ),
            (
                "provider rewards",
                self.total_provider,
                checked_sum(self.providers.iter().map(|p| p.reward), "provider rewards")?,
            ),
        ];
        check_sums(&checks)
    }

    /// Whether `receipt` (countersigned receipt bytes) is in this
    /// statement, by `proof` (from [`inclusion_proof`]).
    pub fn includes(&self, receipt: &[u8], proof: &InclusionProof) -> bool {
        proof.tree_size == self.receipts
            && merkle::verify(&self.merkle_root, &leaf_hash(receipt), proof)
    }

    /// Whether the builder line in `proof` (from
    /// [`Settlement::builder_proof`]) is in this statement.
    pub fn includes_builder(&self, proof: &BuilderProof) -> bool {
        proof.proof.tree_size == self.builder_lines
            && merkle::verify(
                &self.builders_root,
                &proof.line().leaf(&proof.salt),
                &proof.proof,
            )
    }
}

fn check_sums(checks: &[(&'static str, u64, u64)]) -> Result<(), MarketError> {
    for &(field, stated, computed) in checks {
        if stated != computed {
            return Err(MarketError::Invalid {
                field,
                reason: format!("stated {stated}, lines sum to {computed}"),
            });
        }
    }
    Ok(())
}

/// A statement with the coordinator's signature. Only [`settle`],
/// [`settle_preverified`], [`SignedStatement::sign`] and
/// [`SignedStatement::from_bytes`] (which verifies) make one, so a value
/// in memory is balanced and validly signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedStatement {
    statement: Statement,
    signature: [u8; 64],
}

impl SignedStatement {
    /// Signs `statement` after validating it; its `coordinator` is set to
    /// `key`'s public key.
    pub fn sign(mut statement: Statement, key: &SigningKey) -> Result<Self, MarketError> {
        statement.coordinator = public_key_of(key);
        statement.validate()?;
        let signature = sign_canonical(key, &statement.canonical_bytes());
        Ok(Self {
            statement,
            signature,
        })
    }

    pub fn statement(&self) -> &Statement {
        &self.statement
    }

    pub fn into_statement(self) -> Statement {
        self.statement
    }

    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }

    /// Canonical bytes followed by the 64-byte signature.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.statement.canonical_bytes();
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes, validates and verifies the coordinator's signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MarketError> {
        if bytes.starts_with(TAG_V1) {
            return Err(MarketError::Invalid {
                field: "statement format",
                reason: "format 1 (builder lines in the clear) is no longer read".into(),
            });
        }
        let mut r = Reader::new(bytes, TAG, "statement")?;
        let statement = Statement::read(&mut r)?;
        let signed_len = r.consumed_from(bytes);
        let signature = r.array::<64>("statement signature")?;
        if r.remaining() != 0 {
            return Err(sharenet_proto::ProtoError::TrailingBytes(r.remaining()).into());
        }
        statement.validate()?;
        verify_canonical(
            &statement.coordinator,
            &bytes[..signed_len],
            &signature,
            "statement",
        )?;
        Ok(Self {
            statement,
            signature,
        })
    }

    /// The public statement as JSON (keys and hashes in hex, amounts as
    /// integers of nano-USD), with the period's label and the signature.
    /// It names no builder ([`Settlement::to_json`] adds the lines).
    pub fn to_json(&self) -> serde_json::Value {
        let s = &self.statement;
        json!({
            "protocol_version": PROTOCOL_VERSION,
            "period": {
                "start_ms": s.period.start_ms,
                "end_ms": s.period.end_ms,
                "label": s.period.label(),
            },
            "coordinator": hex::encode(s.coordinator),
            "receipts": s.receipts,
            "total_charged": s.total_charged,
            "total_provider": s.total_provider,
            "total_network_fee": s.total_network_fee,
            "total_margin": s.total_margin,
            "providers": s.providers.iter().map(|p| json!({
                "node": hex::encode(p.node),
                "jobs": p.jobs,
                "reward": p.reward,
            })).collect::<Vec<_>>(),
            "builder_lines": s.builder_lines,
            "builders_root": hex::encode(s.builders_root),
            "merkle_root": hex::encode(s.merkle_root),
            "deployment": s.deployment.iter().map(hex::encode).collect::<Vec<_>>(),
            "signature": hex::encode(self.signature),
        })
    }
}

/// A signed statement with its builder lines: what the coordinator keeps.
/// Only [`settle`], [`settle_preverified`] and [`Settlement::from_parts`]
/// (which checks) make one, so the lines in a value are sorted, add up to
/// the statement's totals and rebuild its `builders_root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    signed: SignedStatement,
    lines: Vec<SaltedLine>,
}

impl Settlement {
    /// Joins a signed statement (its bytes are verified) with its lines
    /// (from [`Settlement::lines_bytes`]), checking that the lines are
    /// sorted by app id, once each, with at least one job, sum to the
    /// statement's receipts, charges and margins, and rebuild its
    /// `builders_root`.
    pub fn from_parts(signed: &[u8], lines: &[u8]) -> Result<Self, MarketError> {
        let signed = SignedStatement::from_bytes(signed)?;
        let mut r = Reader::new(lines, LINES_TAG, "builder lines")?;
        let n = r.count("builder lines", MIN_BUILDER_LINE_BYTES)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(SaltedLine {
                line: BuilderLine {
                    app: r.str("builder app", MAX_APP_ID)?,
                    jobs: r.u64("builder jobs")?,
                    charged: r.u64("builder charged")?,
                    payout: r.u64("builder payout")?,
                },
                salt: r.array::<32>("builder salt")?,
            });
        }
        if r.remaining() != 0 {
            return Err(sharenet_proto::ProtoError::TrailingBytes(r.remaining()).into());
        }
        let settlement = Self { signed, lines: out };
        settlement.check_lines()?;
        Ok(settlement)
    }

    fn check_lines(&self) -> Result<(), MarketError> {
        let invalid = |field: &'static str, reason: String| MarketError::Invalid { field, reason };
        let s = self.signed.statement();
        let lines = || self.lines.iter().map(|l| &l.line);
        if !self.lines.windows(2).all(|w| w[0].line.app < w[1].line.app) {
            return Err(invalid(
                "builder lines",
                "must be sorted by app id, once each".into(),
            ));
        }
        if lines().any(|b| b.jobs == 0) {
            return Err(invalid("builder lines", "a line has no jobs".into()));
        }
        if lines().any(|b| b.app.is_empty() || b.app.len() > MAX_APP_ID) {
            return Err(invalid(
                "builder app",
                format!("must be 1..={MAX_APP_ID} bytes"),
            ));
        }
        check_sums(&[
            ("builder lines", s.builder_lines, self.lines.len() as u64),
            (
                "builder jobs",
                s.receipts,
                checked_sum(lines().map(|b| b.jobs), "builder jobs")?,
            ),
            (
                "builder charges",
                s.total_charged,
                checked_sum(lines().map(|b| b.charged), "builder charges")?,
            ),
            (
                "builder payouts",
                s.total_margin,
                checked_sum(lines().map(|b| b.payout), "builder payouts")?,
            ),
        ])?;
        if merkle::root(&self.leaves()) != s.builders_root {
            return Err(invalid(
                "builders root",
                "the builder lines do not rebuild it".into(),
            ));
        }
        Ok(())
    }

    fn leaves(&self) -> Vec<[u8; 32]> {
        self.lines.iter().map(|l| l.line.leaf(&l.salt)).collect()
    }

    /// The public, signed statement.
    pub fn signed(&self) -> &SignedStatement {
        &self.signed
    }

    pub fn statement(&self) -> &Statement {
        self.signed.statement()
    }

    /// The builder lines with their salts, in app-id order (private: the
    /// operator's).
    pub fn lines(&self) -> &[SaltedLine] {
        &self.lines
    }

    /// The lines' canonical bytes, stored beside the signed statement.
    pub fn lines_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(LINES_TAG);
        w.len(self.lines.len());
        for SaltedLine { line, salt } in &self.lines {
            w.str(&line.app);
            w.u64(line.jobs);
            w.u64(line.charged);
            w.u64(line.payout);
            w.raw(salt);
        }
        w.finish()
    }

    /// `app`'s line with its salt and proof against `builders_root`;
    /// `None` when the app had no jobs in the period.
    pub fn builder_proof(&self, app: &str) -> Option<BuilderProof> {
        let index = self
            .lines
            .binary_search_by(|l| l.line.app.as_str().cmp(app))
            .ok()?;
        let SaltedLine { line, salt } = &self.lines[index];
        let proof = merkle::prove(&self.leaves(), index as u64).ok()?;
        Some(BuilderProof {
            app: line.app.clone(),
            jobs: line.jobs,
            charged: line.charged,
            payout: line.payout,
            salt: *salt,
            proof,
        })
    }

    /// The operator's JSON: the public statement plus a `builders` list
    /// (app, jobs, charged, payout).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = self.signed.to_json();
        v["builders"] = self
            .lines
            .iter()
            .map(|SaltedLine { line: b, .. }| {
                json!({
                    "app": b.app,
                    "jobs": b.jobs,
                    "charged": b.charged,
                    "payout": b.payout,
                })
            })
            .collect();
        v
    }

    /// The payouts as CSV: a header `kind,party,jobs,amount_nano_usd`, then
    /// one `provider` row per node (hex key, reward), one `builder` row per
    /// app (its payout) and one `network_fee` row (the coordinator's key,
    /// all receipts, the total fee). The amounts sum to `total_charged`
    /// (rewards + payouts + fee). Fields are
    /// quoted per RFC 4180 where needed (app ids may hold commas or
    /// quotes); no other escaping is applied.
    pub fn to_csv(&self) -> String {
        let s = self.signed.statement();
        let mut out = String::from("kind,party,jobs,amount_nano_usd\n");
        for p in &s.providers {
            out.push_str(&format!(
                "provider,{},{},{}\n",
                hex::encode(p.node),
                p.jobs,
                p.reward
            ));
        }
        for SaltedLine { line: b, .. } in &self.lines {
            out.push_str(&format!(
                "builder,{},{},{}\n",
                csv_field(&b.app),
                b.jobs,
                b.payout
            ));
        }
        out.push_str(&format!(
            "network_fee,{},{},{}\n",
            hex::encode(s.coordinator),
            s.receipts,
            s.total_network_fee
        ));
        out
    }
}

fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}

/// Settles `entries` for `period` as the coordinator `key`: verifies every
/// receipt (both signatures, batched) and checks each entry against it,
/// then does what [`settle_preverified`] does. See the module docs.
pub fn settle(
    period: Period,
    key: &SigningKey,
    entries: &[Entry],
) -> Result<Settlement, MarketError> {
    settle_for(period, key, &[], entries)
}

/// [`settle`] for a deployment of replicas: receipts countersigned by
/// `key` or by any key in `deployment` are settled, and the statement
/// lists `deployment`.
pub fn settle_for(
    period: Period,
    key: &SigningKey,
    deployment: &[PublicKey],
    entries: &[Entry],
) -> Result<Settlement, MarketError> {
    let deployment = deployment_keys(key, deployment);
    let bytes: Vec<&[u8]> = entries.iter().map(|e| e.receipt.as_slice()).collect();
    let receipts = match verify_countersigned_batch(&bytes) {
        Ok(receipts) => receipts,
        Err(_) => {
            // Name the entry: the first one that fails on its own.
            for e in entries {
                if let Err(source) = CountersignedReceipt::from_bytes(&e.receipt) {
                    return Err(MarketError::Receipt {
                        job: e.job_id,
                        source,
                    });
                }
            }
            return Err(MarketError::Invalid {
                field: "receipts",
                reason: "batch verification failed but every receipt verifies alone".into(),
            });
        }
    };
    let own = public_key_of(key);
    for (entry, receipt) in entries.iter().zip(&receipts) {
        let countersigner = receipt.receipt().coordinator;
        let ours = if countersigner == own || deployment.binary_search(&countersigner).is_ok() {
            countersigner
        } else {
            own
        };
        entry.check_against(receipt, &ours)?;
    }
    settle_preverified_for(period, key, &deployment, entries)
}

/// The deployment list a statement carries: sorted, once each, without
/// the signer.
fn deployment_keys(key: &SigningKey, deployment: &[PublicKey]) -> Vec<PublicKey> {
    let own = public_key_of(key);
    let mut keys: Vec<PublicKey> = deployment.iter().copied().filter(|k| *k != own).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Settles entries whose receipts the caller has already verified (see the
/// module docs): no receipt is decoded, everything else is checked.
pub fn settle_preverified(
    period: Period,
    key: &SigningKey,
    entries: &[Entry],
) -> Result<Settlement, MarketError> {
    settle_preverified_for(period, key, &[], entries)
}

/// [`settle_preverified`] for a deployment of replicas (see
/// [`settle_for`]).
pub fn settle_preverified_for(
    period: Period,
    key: &SigningKey,
    deployment: &[PublicKey],
    entries: &[Entry],
) -> Result<Settlement, MarketError> {
    let deployment = deployment_keys(key, deployment);
    let order = job_order(entries)?;
    let mut totals = Totals::default();
    let mut providers: BTreeMap<PublicKey, (u64, NanoUsd)> = BTreeMap::new();
    let mut builders: BTreeMap<&str, (u64, NanoUsd, NanoUsd)> = BTreeMap::new();
    // Sums do not depend on the order (and checked u64 sums of
    // non-negative values overflow in every order or in none), so walk
    // the entries as they lie in memory.
    for e in entries {
        let c = &e.charge;
        totals.add(c)?;
        let p = providers.entry(e.node).or_default();
        p.0 += 1;
        p.1 = add(p.1, c.provider_cost, "provider reward")?;
        let b = builders.entry(e.app.as_str()).or_default();
        b.0 += 1;
        b.1 = add(b.1, c.total, "builder charges")?;
        b.2 = add(b.2, c.margin, "builder payout")?;
    }
    let leaves = sorted_leaves(entries, &order);
    let lines: Vec<SaltedLine> = builders
        .into_iter()
        .map(|(app, (jobs, charged, payout))| SaltedLine {
            salt: line_salt(key, &period, app),
            line: BuilderLine {
                app: app.to_string(),
                jobs,
                charged,
                payout,
            },
        })
        .collect();
    let builder_leaves: Vec<[u8; 32]> = lines.iter().map(|l| l.line.leaf(&l.salt)).collect();
    let statement = Statement {
        period,
        coordinator: public_key_of(key),
        receipts: order.len() as u64,
        total_charged: totals.charged,
        total_provider: totals.provider,
        total_network_fee: totals.network_fee,
        total_margin: totals.margin,
        providers: providers
            .into_iter()
            .map(|(node, (jobs, reward))| ProviderLine { node, jobs, reward })
            .collect(),
        builder_lines: lines.len() as u64,
        builders_root: merkle::root(&builder_leaves),
        merkle_root: merkle::root(&leaves),
        deployment,
    };
    // `sign` validates the totals and provider lines, `check_lines` the
    // builder lines.
    let settlement = Settlement {
        signed: SignedStatement::sign(statement, key)?,
        lines,
    };
    settlement.check_lines()?;
    Ok(settlement)
}

/// A builder line's salt: secret to anyone without the coordinator's key
/// (so `builders_root` reveals nothing about guessed lines), and the same
/// for the same period and app, so settling is deterministic.
fn line_salt(key: &SigningKey, period: &Period, app: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(SALT_TAG);
    h.update(key.to_bytes());
    h.update(period.start_ms.to_be_bytes());
    h.update(period.end_ms.to_be_bytes());
    h.update(app.as_bytes());
    h.finalize().into()
}

/// The proof that `job_id`'s receipt is in the statement settled from
/// `entries` (the same entries, in any order): its leaf is at its position
/// in job-id order. Verify with [`Statement::includes`].
pub fn inclusion_proof(entries: &[Entry], job_id: JobId) -> Result<InclusionProof, MarketError> {
    let order = job_order(entries)?;
    let index = order
        .binary_search_by_key(&job_id, |&(id, _)| id)
        .map_err(|_| MarketError::UnknownJob(job_id))?;
    let leaves = sorted_leaves(entries, &order);
    merkle::prove(&leaves, index as u64)
}

/// The Merkle leaves in job-id order. Receipts are hashed in memory order
/// and the 32-byte hashes permuted afterwards: hashing in job-id order
/// would jump between a million separate allocations (3x slower).
fn sorted_leaves(entries: &[Entry], order: &[(JobId, usize)]) -> Vec<[u8; 32]> {
    let hashes: Vec<[u8; 32]> = entries.iter().map(|e| leaf_hash(&e.receipt)).collect();
    order.iter().map(|&(_, i)| hashes[i]).collect()
}

/// The entries' positions sorted by job id, after the shape checks; a
/// repeated job id is an error.
fn job_order(entries: &[Entry]) -> Result<Vec<(JobId, usize)>, MarketError> {
    for e in entries {
        e.check_shape()?;
    }
    let mut order: Vec<(JobId, usize)> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.job_id, i))
        .collect();
    order.sort_unstable();
    if let Some(w) = order.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(MarketError::DuplicateJob(w[0].0));
    }
    Ok(order)
}

#[derive(Default)]
struct Totals {
    charged: NanoUsd,
    provider: NanoUsd,
    network_fee: NanoUsd,
    margin: NanoUsd,
}

impl Totals {
    fn add(&mut self, c: &Charge) -> Result<(), MarketError> {
        self.charged = add(self.charged, c.total, "total charged")?;
        self.provider = add(self.provider, c.provider_cost, "total provider")?;
        self.network_fee = add(self.network_fee, c.network_fee, "total network fee")?;
        self.margin = add(self.margin, c.margin, "total margin")?;
        Ok(())
    }
}

fn checked_sum(
    values: impl Iterator<Item = NanoUsd>,
    what: &'static str,
) -> Result<NanoUsd, MarketError> {
    values.into_iter().try_fold(0, |acc, v| add(acc, v, what))
}

fn add(a: NanoUsd, b: NanoUsd, what: &'static str) -> Result<NanoUsd, MarketError> {
    a.checked_add(b).ok_or(MarketError::Overflow(what))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sharenet_proto::{Receipt, SignedReceipt};

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }
    fn coordinator() -> SigningKey {
        key(100)
    }
    const PERIOD: Period = Period {
        start_ms: 1_793_491_200_000,
        end_ms: 1_796_083_200_000,
    };
    const FEE_BPS: u32 = 500;

    fn receipt(job: u8, node: &SigningKey, coord: &SigningKey) -> CountersignedReceipt {
        let (input, output) = (100 + u32::from(job), 10 * u32::from(job));
        let r = Receipt {
            job_id: JobId([job; 16]),
            node: [0; 32],
            coordinator: public_key_of(coord),
            model: "tiny-llama".into(),
            input_tokens: input,
            output_tokens: output,
            price_in: 7,
            price_out: 21,
            amount: u64::from(input) * 7 + u64::from(output) * 21,
            started_at_ms: PERIOD.start_ms + 1_000,
            finished_at_ms: PERIOD.start_ms + 2_000,
            request_digest: [job; 32],
            response_digest: [job ^ 0xff; 32],
        };
        CountersignedReceipt::countersign(SignedReceipt::sign(r, node).unwrap(), coord).unwrap()
    }

    /// 12 jobs, 3 nodes, 2 apps with different margins.
    fn entries() -> Vec<Entry> {
        let nodes = [key(1), key(2), key(3)];
        (0..12u8)
            .map(|j| {
                let r = receipt(j, &nodes[usize::from(j) % 3], &coordinator());
                let (app, margin) = if j % 2 == 0 {
                    (
                        "chat-app",
                        Margin {
                            percent_bps: 1_000,
                            per_mtok: 50_000,
                        },
                    )
                } else {
                    ("b,\"quoted\" app", Margin::default())
                };
                Entry::new(&r, app, Some(format!("user-{j}")), FEE_BPS, &margin).unwrap()
            })
            .collect()
    }

    /// Issue 16: replicas of one deployment countersign with their own
    /// keys; the deployment's statement settles both and names the other
    /// key in its signed bytes; a lone coordinator's statement refuses a
    /// receipt countersigned elsewhere, and keeps its old bytes.
    #[test]
    fn a_deployment_statement_settles_every_replicas_receipts() {
        let (a, b) = (coordinator(), key(101));
        let nodes = [key(1), key(2)];
        let e: Vec<Entry> = (0..6u8)
            .map(|j| {
                let by = if j % 2 == 0 { &a } else { &b };
                let r = receipt(j, &nodes[usize::from(j) % 2], by);
                Entry::new(&r, "app", None, FEE_BPS, &Margin::default()).unwrap()
            })
            .collect();
        assert!(matches!(
            settle(PERIOD, &a, &e),
            Err(MarketError::Entry { .. })
        ));
        let settled = settle_for(PERIOD, &a, &[public_key_of(&b), public_key_of(&a)], &e).unwrap();
        let s = settled.statement();
        assert_eq!(s.receipts, 6);
        assert_eq!(
            s.deployment,
            vec![public_key_of(&b)],
            "the signer is not listed"
        );
        assert!(s.settles_for(&public_key_of(&a)) && s.settles_for(&public_key_of(&b)));
        assert!(!s.settles_for(&public_key_of(&key(102))));
        let bytes = settled.signed().to_bytes();
        let back = SignedStatement::from_bytes(&bytes).unwrap();
        assert_eq!(back.statement(), s);
        // The list is signed: dropping it breaks the signature.
        let mut forged = s.clone();
        forged.deployment.clear();
        let mut tampered = forged.canonical_bytes();
        tampered.extend_from_slice(settled.signed().signature());
        assert!(SignedStatement::from_bytes(&tampered).is_err());
        // Without replicas the bytes carry no deployment section.
        let alone: Vec<Entry> = e.iter().step_by(2).cloned().collect();
        let lone = settle(PERIOD, &a, &alone).unwrap();
        assert!(lone.statement().deployment.is_empty());
        assert_eq!(
            lone.signed().to_bytes().len(),
            SignedStatement::from_bytes(&lone.signed().to_bytes())
                .unwrap()
                .statement()
                .canonical_bytes()
                .len()
                + 64
        );
    }

    #[test]
    fn totals_balance_and_lines_add_up() {
        let e = entries();
        let settlement = settle(PERIOD, &coordinator(), &e).unwrap();
        let s = settlement.statement();
        let b: Vec<&BuilderLine> = settlement.lines().iter().map(|l| &l.line).collect();
        assert_eq!(s.receipts, 12);
        assert_eq!(s.coordinator, public_key_of(&coordinator()));
        let sum = |f: fn(&Charge) -> u64| e.iter().map(|x| f(&x.charge)).sum::<u64>();
        assert_eq!(s.total_charged, sum(|c| c.total));
        assert_eq!(s.total_provider, sum(|c| c.provider_cost));
        assert_eq!(s.total_network_fee, sum(|c| c.network_fee));
        assert_eq!(s.total_margin, sum(|c| c.margin));
        assert_eq!(
            s.total_charged,
            s.total_provider + s.total_network_fee + s.total_margin
        );
        assert!(s.total_margin > 0 && s.total_network_fee > 0);
        assert_eq!(s.providers.len(), 3);
        assert!(s.providers.windows(2).all(|w| w[0].node < w[1].node));
        assert!(s.providers.iter().all(|p| p.jobs == 4));
        let node1 = public_key_of(&key(1));
        let line = s.providers.iter().find(|p| p.node == node1).unwrap();
        let expected: u64 = e
            .iter()
            .filter(|x| x.node == node1)
            .map(|x| x.charge.provider_cost)
            .sum();
        assert_eq!(line.reward, expected);
        assert_eq!(
            b.iter().map(|b| b.app.as_str()).collect::<Vec<_>>(),
            ["b,\"quoted\" app", "chat-app"]
        );
        assert_eq!(s.builder_lines, 2);
        // The app without a margin is paid nothing back.
        assert_eq!(b[0].payout, 0);
        assert_eq!(b[1].payout, s.total_margin);
        let leaves: Vec<[u8; 32]> = {
            let mut sorted = e.clone();
            sorted.sort_by_key(|x| x.job_id);
            sorted.iter().map(|x| leaf_hash(&x.receipt)).collect()
        };
        assert_eq!(s.merkle_root, merkle::root(&leaves));
    }

    #[test]
    fn any_order_gives_identical_bytes() {
        let e = entries();
        let reference = settle(PERIOD, &coordinator(), &e)
            .unwrap()
            .signed()
            .to_bytes();
        let mut reversed = e.clone();
        reversed.reverse();
        assert_eq!(
            settle(PERIOD, &coordinator(), &reversed)
                .unwrap()
                .signed()
                .to_bytes(),
            reference
        );
        for k in 1..e.len() {
            let mut rotated = e.clone();
            rotated.rotate_left(k);
            assert_eq!(
                settle_preverified(PERIOD, &coordinator(), &rotated)
                    .unwrap()
                    .signed()
                    .to_bytes(),
                reference,
                "rotation {k}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn shuffled_entries_settle_to_the_same_bytes(
            perm in Just((0..12usize).collect::<Vec<_>>()).prop_shuffle()
        ) {
            let e = entries();
            let shuffled: Vec<Entry> = perm.iter().map(|&i| e[i].clone()).collect();
            prop_assert_eq!(
                settle_preverified(PERIOD, &coordinator(), &shuffled).unwrap().signed().to_bytes(),
                settle_preverified(PERIOD, &coordinator(), &e).unwrap().signed().to_bytes()
            );
        }
    }

    #[test]
    fn round_trip_and_every_changed_byte_fails() {
        let settlement = settle(PERIOD, &coordinator(), &entries()).unwrap();
        let signed = settlement.signed();
        let bytes = signed.to_bytes();
        assert_eq!(&SignedStatement::from_bytes(&bytes).unwrap(), signed);
        assert!(bytes.starts_with(b"sharenet/statement-v2\0\x00\x01"));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(SignedStatement::from_bytes(&bad).is_err(), "byte {i}");
        }
        for len in 0..bytes.len() {
            assert!(
                SignedStatement::from_bytes(&bytes[..len]).is_err(),
                "len {len}"
            );
        }
        // A byte more is read as the start of a deployment section,
        // which it cannot be.
        let mut long = bytes.clone();
        long.push(0);
        assert!(SignedStatement::from_bytes(&long).is_err());
        long.extend_from_slice(&[0; 3]);
        assert!(SignedStatement::from_bytes(&long).is_err());
    }

    #[test]
    fn a_statement_signed_by_someone_else_fails() {
        let settlement = settle(PERIOD, &coordinator(), &entries()).unwrap();
        let signed = settlement.signed();
        let forged = SignedStatement::sign(signed.statement().clone(), &key(9)).unwrap();
        // Valid as key 9's statement, but it names key 9, not the coordinator.
        assert_ne!(
            forged.statement().coordinator,
            signed.statement().coordinator
        );
        // Splicing key 9's signature onto the coordinator's statement fails.
        let mut spliced = signed.to_bytes();
        let n = spliced.len();
        spliced[n - 64..].copy_from_slice(forged.signature());
        assert!(matches!(
            SignedStatement::from_bytes(&spliced),
            Err(MarketError::Statement(
                sharenet_proto::ProtoError::BadSignature(_)
            ))
        ));
    }

    #[test]
    fn unbalanced_statements_cannot_be_signed() {
        let base = settle(PERIOD, &coordinator(), &entries())
            .unwrap()
            .signed()
            .clone()
            .into_statement();
        let mut s = base.clone();
        s.total_network_fee += 1;
        assert!(SignedStatement::sign(s, &coordinator()).is_err());
        let mut s = base.clone();
        s.providers[0].reward += 1;
        s.providers[1].reward -= 1; // totals still match, but...
        assert!(SignedStatement::sign(s, &coordinator()).is_ok()); // ...a shift between lines balances
        let mut s = base.clone();
        s.providers.swap(0, 1);
        assert!(SignedStatement::sign(s, &coordinator()).is_err());
        let mut s = base.clone();
        s.builder_lines = s.receipts + 1;
        assert!(SignedStatement::sign(s, &coordinator()).is_err());
        let mut s = base.clone();
        s.builder_lines = 0;
        assert!(SignedStatement::sign(s, &coordinator()).is_err());
        let mut s = base;
        s.period.end_ms = s.period.start_ms;
        assert!(SignedStatement::sign(s, &coordinator()).is_err());
    }

    #[test]
    fn every_receipt_has_a_proof_and_a_stranger_has_none() {
        let e = entries();
        let settlement = settle(PERIOD, &coordinator(), &e).unwrap();
        let s = settlement.statement();
        let mut shuffled = e.clone();
        shuffled.reverse();
        for entry in &e {
            let proof = inclusion_proof(&shuffled, entry.job_id).unwrap();
            assert!(s.includes(&entry.receipt, &proof), "job {}", entry.job_id);
            assert!(merkle::verify(
                &s.merkle_root,
                &leaf_hash(&entry.receipt),
                &proof
            ));
        }
        // The proof must name the statement's tree size.
        let mut proof = inclusion_proof(&e, e[0].job_id).unwrap();
        proof.tree_size += 1;
        assert!(!s.includes(&e[0].receipt, &proof));
        // A receipt that was not settled: no proof, and no borrowed proof works.
        let stranger = receipt(200, &key(1), &coordinator());
        assert_eq!(
            inclusion_proof(&e, stranger.receipt().job_id),
            Err(MarketError::UnknownJob(stranger.receipt().job_id))
        );
        let bytes = stranger.to_bytes();
        for entry in &e {
            let proof = inclusion_proof(&e, entry.job_id).unwrap();
            assert!(!s.includes(&bytes, &proof));
        }
    }

    #[test]
    fn duplicates_and_mismatches_are_refused() {
        let e = entries();
        let c = coordinator();
        let mut dup = e.clone();
        dup.push(e[3].clone());
        assert_eq!(
            settle(PERIOD, &c, &dup),
            Err(MarketError::DuplicateJob(e[3].job_id))
        );
        assert_eq!(
            inclusion_proof(&dup, e[0].job_id),
            Err(MarketError::DuplicateJob(e[3].job_id))
        );

        // Provider cost that is not the receipt's amount (and charge
        // adjusted so it still balances).
        let mut bad = e.clone();
        bad[5].charge.provider_cost += 1;
        bad[5].charge.total += 1;
        assert!(matches!(
            settle(PERIOD, &c, &bad),
            Err(MarketError::Entry { job, .. }) if job == e[5].job_id
        ));
        // The fast path trusts the receipt, but still refuses an unbalanced charge.
        assert!(settle_preverified(PERIOD, &c, &bad).is_ok());
        bad[5].charge.total += 1;
        assert!(matches!(
            settle_preverified(PERIOD, &c, &bad),
            Err(MarketError::Entry { job, .. }) if job == e[5].job_id
        ));

        // Another node claimed.
        let mut bad = e.clone();
        bad[2].node = public_key_of(&key(50));
        assert!(matches!(
            settle(PERIOD, &c, &bad),
            Err(MarketError::Entry { .. })
        ));
        // Another job id claimed.
        let mut bad = e.clone();
        bad[2].job_id = JobId([99; 16]);
        assert!(matches!(
            settle(PERIOD, &c, &bad),
            Err(MarketError::Entry { .. })
        ));
        // A receipt countersigned by another coordinator.
        let mut bad = e.clone();
        let other = receipt(77, &key(1), &key(101));
        bad.push(Entry::new(&other, "chat-app", None, FEE_BPS, &Margin::default()).unwrap());
        assert!(matches!(
            settle(PERIOD, &c, &bad),
            Err(MarketError::Entry { .. })
        ));
        // A tampered receipt: named by job, with the proto reason.
        let mut bad = e.clone();
        let n = bad[7].receipt.len();
        bad[7].receipt[n - 1] ^= 1;
        assert!(matches!(
            settle(PERIOD, &c, &bad),
            Err(MarketError::Receipt { job, source: sharenet_proto::ProtoError::BadSignature(_) })
                if job == e[7].job_id
        ));
        // Over-long or empty app ids.
        let mut bad = e.clone();
        bad[0].app = "x".repeat(MAX_APP_ID + 1);
        assert!(settle_preverified(PERIOD, &c, &bad).is_err());
        bad[0].app.clear();
        assert!(settle_preverified(PERIOD, &c, &bad).is_err());
    }

    #[test]
    fn preverified_gives_the_same_bytes() {
        let e = entries();
        assert_eq!(
            settle(PERIOD, &coordinator(), &e).unwrap(),
            settle_preverified(PERIOD, &coordinator(), &e).unwrap()
        );
    }

    #[test]
    fn an_empty_period_settles_to_zero() {
        let settlement = settle(PERIOD, &coordinator(), &[]).unwrap();
        let s = settlement.statement();
        assert_eq!((s.receipts, s.total_charged), (0, 0));
        assert!(s.providers.is_empty() && settlement.lines().is_empty());
        assert_eq!(s.merkle_root, merkle::root(&[]));
        assert_eq!(
            Settlement::from_parts(&settlement.signed().to_bytes(), &settlement.lines_bytes())
                .unwrap(),
            settlement
        );
    }

    #[test]
    fn json_and_csv() {
        let settlement = settle(PERIOD, &coordinator(), &entries()).unwrap();
        let signed = settlement.signed();
        let s = signed.statement();
        let j = signed.to_json();
        // The public JSON names no builder; the operator's does.
        assert!(j.get("builders").is_none());
        assert_eq!(j["builder_lines"], 2);
        assert_eq!(j["builders_root"], hex::encode(s.builders_root));
        let text = j.to_string();
        assert!(!text.contains("chat-app") && !text.contains("quoted"));
        let private = settlement.to_json();
        assert_eq!(private["builders"][1]["app"], "chat-app");
        assert_eq!(j["period"]["label"], "2026-11");
        assert_eq!(j["coordinator"], hex::encode(public_key_of(&coordinator())));
        assert_eq!(j["total_charged"], s.total_charged);
        assert_eq!(j["providers"].as_array().unwrap().len(), 3);
        assert_eq!(j["providers"][0]["node"], hex::encode(s.providers[0].node));
        assert_eq!(j["merkle_root"], hex::encode(s.merkle_root));
        assert_eq!(j["signature"], hex::encode(signed.signature()));

        let csv = settlement.to_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "kind,party,jobs,amount_nano_usd");
        assert_eq!(lines.len(), 1 + 3 + 2 + 1);
        assert_eq!(
            lines[4],
            format!(
                "builder,\"b,\"\"quoted\"\" app\",6,{}",
                settlement.lines()[0].line.payout
            )
        );
        assert_eq!(
            lines[6],
            format!(
                "network_fee,{},12,{}",
                hex::encode(s.coordinator),
                s.total_network_fee
            )
        );
        // The amounts add up to what builders were charged.
        let amounts: u64 = lines[1..]
            .iter()
            .map(|l| l.rsplit(',').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(amounts, s.total_charged);
    }

    #[test]
    fn a_huge_line_count_is_refused_before_allocating() {
        let settlement = settle(PERIOD, &coordinator(), &entries()).unwrap();
        let mut bytes = settlement.signed().to_bytes();
        // The provider count sits after tag, version, period, key, 5 u64s.
        let at = TAG.len() + 2 + 16 + 32 + 40;
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            SignedStatement::from_bytes(&bytes),
            Err(MarketError::Statement(
                sharenet_proto::ProtoError::TooLong { .. }
            ))
        ));
    }

    #[test]
    fn each_builder_proves_its_own_line_and_nothing_else() {
        let settlement = settle(PERIOD, &coordinator(), &entries()).unwrap();
        let s = settlement.statement();
        for l in settlement.lines() {
            let proof = settlement.builder_proof(&l.line.app).unwrap();
            assert_eq!(proof.line(), l.line);
            assert!(s.includes_builder(&proof));
            // A builder claiming more jobs, a bigger payout, or another
            // app's name fails.
            let mut p = proof.clone();
            p.payout += 1;
            assert!(!s.includes_builder(&p));
            let mut p = proof.clone();
            p.jobs += 1;
            assert!(!s.includes_builder(&p));
            let mut p = proof.clone();
            p.app.push('x');
            assert!(!s.includes_builder(&p));
            let mut p = proof.clone();
            p.salt[0] ^= 1;
            assert!(!s.includes_builder(&p));
            let mut p = proof;
            p.proof.tree_size += 1;
            assert!(!s.includes_builder(&p));
        }
        assert!(settlement.builder_proof("no-such-app").is_none());
        // The salt is secret: without the coordinator's key the root is not
        // the root of the unsalted (guessable) lines.
        let guessed: Vec<[u8; 32]> = settlement
            .lines()
            .iter()
            .map(|l| l.line.leaf(&[0; 32]))
            .collect();
        assert_ne!(merkle::root(&guessed), s.builders_root);
    }

    #[test]
    fn stored_lines_must_add_up_and_rebuild_the_root() {
        let settlement = settle(PERIOD, &coordinator(), &entries()).unwrap();
        let signed = settlement.signed().to_bytes();
        let lines = settlement.lines_bytes();
        assert_eq!(Settlement::from_parts(&signed, &lines).unwrap(), settlement);
        // Every changed byte of the lines is caught (order, sums, salts,
        // root, lengths).
        for i in 0..lines.len() {
            let mut bad = lines.clone();
            bad[i] ^= 0x01;
            assert!(Settlement::from_parts(&signed, &bad).is_err(), "byte {i}");
        }
        // Another settlement's lines do not fit this statement.
        let other = settle(PERIOD, &coordinator(), &entries()[..6]).unwrap();
        assert!(Settlement::from_parts(&signed, &other.lines_bytes()).is_err());
    }

    #[test]
    fn a_format_1_statement_is_refused_by_name() {
        let mut old = TAG_V1.to_vec();
        old.extend_from_slice(&[0, 1, 0, 0]);
        assert!(matches!(
            SignedStatement::from_bytes(&old),
            Err(MarketError::Invalid {
                field: "statement format",
                ..
            })
        ));
    }
}
