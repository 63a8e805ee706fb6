//! A provider's own accounting: earnings per period from the receipts the
//! node signed, and reconciliation of those receipts against a
//! coordinator's settlement statement — offline, from files.
//!
//! A statement bundle (`GET /statements/{label}` on the coordinator) holds
//! the signed statement and, for each settled receipt in Merkle order, its
//! job id, node, amount and leaf hash. Reconciling checks the statement's
//! signature, recomputes its Merkle root from the leaves, proves every
//! local countersigned receipt of that coordinator and period into it, and
//! compares this node's reward with the sum of its included receipts.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use sharenet_ledger::StoredReceipt;
use sharenet_market::{PeriodRule, SignedStatement};
use sharenet_proto::{JobId, NanoUsd, PublicKey};

/// Earnings of one period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Earnings {
    pub period: String,
    pub jobs: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Sum of countersigned receipts' amounts.
    pub earned: NanoUsd,
    /// Receipts the coordinator has not countersigned (not payable yet).
    pub pending: u64,
}

/// One stored receipt as `sharenet-node receipts` lists it (and the local
/// API's `/receipts` sends it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ReceiptRow {
    pub job_id: String,
    pub model: String,
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub amount: NanoUsd,
    /// `signed` (by this node only) or `countersigned` (payable).
    pub state: String,
}

impl From<&StoredReceipt> for ReceiptRow {
    fn from(stored: &StoredReceipt) -> Self {
        let r = stored.receipt();
        Self {
            job_id: r.job_id.to_string(),
            model: r.model.clone(),
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            amount: r.amount,
            state: match stored {
                StoredReceipt::NodeSigned(_) => "signed",
                StoredReceipt::Countersigned(_) => "countersigned",
            }
            .into(),
        }
    }
}

/// The local API's `/receipts`: the newest rows and how many are stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ReceiptList {
    pub stored: usize,
    pub data: Vec<ReceiptRow>,
}

/// The earnings rule for `--period-secs` (none: calendar months).
pub fn period_rule(period_secs: Option<u64>) -> Result<PeriodRule, &'static str> {
    match period_secs {
        None => Ok(PeriodRule::CalendarMonth),
        Some(0) => Err("--period-secs: must be at least 1"),
        Some(s) => Ok(PeriodRule::Fixed {
            length_ms: s.saturating_mul(1000),
            origin_ms: 0,
        }),
    }
}

/// Earnings per period (by the receipts' finish time), oldest first.
pub fn earnings(receipts: &[StoredReceipt], rule: &PeriodRule) -> Vec<Earnings> {
    let mut by: BTreeMap<u64, Earnings> = BTreeMap::new();
    for s in receipts {
        let r = s.receipt();
        let Ok(p) = rule.period_of(r.finished_at_ms) else {
            continue;
        };
        let e = by.entry(p.start_ms).or_insert_with(|| Earnings {
            period: p.label(),
            ..Earnings::default()
        });
        match s {
            StoredReceipt::Countersigned(_) => {
                e.jobs += 1;
                e.input_tokens += u64::from(r.input_tokens);
                e.output_tokens += u64::from(r.output_tokens);
                e.earned = e.earned.saturating_add(r.amount);
            }
            StoredReceipt::NodeSigned(_) => e.pending += 1,
        }
    }
    by.into_values().collect()
}

/// What the coordinator publishes for a settled period
/// (`GET /statements/{label}`), and one leaf of it: the shared wire types.
pub use sharenet_api::statements::{BundleLeaf, StatementBundle as Bundle};

/// The outcome of reconciling one node against one statement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub period: String,
    /// Local receipts proven into the statement.
    pub included: u64,
    /// Their amounts summed.
    pub included_amount: NanoUsd,
    /// Of the included, jobs that broke after streaming began (the client
    /// hung up, or the connection died), settled from one of the running
    /// receipts this node signed along the way; the node keeps the last one
    /// it sent, which may cover more tokens than the one the coordinator
    /// had read when the stream broke.
    pub running: u64,
    /// This node's reward in the statement.
    pub statement_reward: NanoUsd,
    /// Every discrepancy, in words.
    pub discrepancies: Vec<String>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.discrepancies.is_empty()
    }
}

/// Why a bundle cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("the statement does not verify: {0}")]
    Statement(String),
    #[error(
        "the bundle's leaves do not rebuild the statement's Merkle root ({leaves} leaves, {receipts} receipts in the statement)"
    )]
    Root { leaves: usize, receipts: u64 },
}

/// Reconciles `node`'s local receipts against a statement bundle.
pub fn reconcile(
    bundle: &Bundle,
    node: &PublicKey,
    local: &[StoredReceipt],
) -> Result<Report, ReconcileError> {
    let signed = SignedStatement::from_bytes(&bundle.signed_statement)
        .map_err(|e| ReconcileError::Statement(e.to_string()))?;
    let st = signed.statement();
    let hashes: Vec<[u8; 32]> = bundle.leaves.iter().map(|l| l.leaf).collect();
    let ordered = bundle.leaves.windows(2).all(|w| w[0].job_id < w[1].job_id);
    if !ordered
        || hashes.len() as u64 != st.receipts
        || sharenet_market::merkle::root(&hashes) != st.merkle_root
    {
        return Err(ReconcileError::Root {
            leaves: hashes.len(),
            receipts: st.receipts,
        });
    }
    let index: HashMap<[u8; 16], usize> = bundle
        .leaves
        .iter()
        .enumerate()
        .map(|(i, l)| (l.job_id, i))
        .collect();
    let mut report = Report {
        period: st.period.label(),
        statement_reward: st
            .providers
            .iter()
            .find(|p| p.node == *node)
            .map_or(0, |p| p.reward),
        ..Report::default()
    };
    let mut seen = std::collections::HashSet::new();
    for s in local {
        let StoredReceipt::Countersigned(c) = s else {
            continue;
        };
        let r = c.receipt();
        if !st.settles_for(&r.coordinator) || r.node != *node {
            continue;
        }
        let bytes = c.to_bytes();
        match index.get(&r.job_id.0) {
            Some(&i) => {
                seen.insert(r.job_id.0);
                let proof = sharenet_market::merkle::prove(&hashes, i as u64);
                let proven = proof.is_ok_and(|p| st.includes(&bytes, &p));
                if proven {
                    report.included += 1;
                    report.included_amount = report.included_amount.saturating_add(r.amount);
                } else {
                    report.discrepancies.push(format!(
                        "receipt {} is in the statement with different contents (altered)",
                        r.job_id
                    ));
                }
            }
            // Receipts finished before the period's end should be in it
            // (a late one may legitimately be in the next statement).
            None if r.finished_at_ms < st.period.end_ms => report.discrepancies.push(format!(
                "receipt {} ({} nano-USD, finished {}) is not in the statement for {} (missing, or settled late in a later period)",
                r.job_id,
                r.amount,
                r.finished_at_ms,
                st.period.label()
            )),
            None => {}
        }
    }
    // Jobs whose stream broke: the node holds its last running receipt
    // (node-signed only; the countersignature never came back).
    let running: HashMap<[u8; 16], NanoUsd> = local
        .iter()
        .filter_map(|s| match s {
            StoredReceipt::NodeSigned(r) => Some(r.receipt()),
            StoredReceipt::Countersigned(_) => None,
        })
        .filter(|r| st.settles_for(&r.coordinator) && r.node == *node)
        .map(|r| (r.job_id.0, r.amount))
        .collect();
    for l in &bundle.leaves {
        if l.node != *node || seen.contains(&l.job_id) {
            continue;
        }
        match running.get(&l.job_id) {
            Some(&signed) if l.amount <= signed => {
                report.included += 1;
                report.running += 1;
                report.included_amount = report.included_amount.saturating_add(l.amount);
            }
            Some(&signed) => report.discrepancies.push(format!(
                "the statement credits broken job {} with {} nano-USD, more than the {} of the last running receipt this node kept",
                JobId(l.job_id),
                l.amount,
                signed
            )),
            None => report.discrepancies.push(format!(
                "the statement credits this node with receipt {} ({} nano-USD) that is not in its store",
                JobId(l.job_id),
                l.amount
            )),
        }
    }
    if report.discrepancies.is_empty() && report.included_amount != report.statement_reward {
        report.discrepancies.push(format!(
            "the statement rewards this node {} nano-USD but its included receipts sum to {}",
            report.statement_reward, report.included_amount
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sharenet_market::{Entry, Margin, Period};
    use sharenet_proto::{CountersignedReceipt, Receipt, SignedReceipt, SigningKey, public_key_of};

    fn receipt(
        id: u8,
        node: &SigningKey,
        coord: &SigningKey,
        finished: u64,
    ) -> CountersignedReceipt {
        let r = Receipt {
            job_id: JobId([id; 16]),
            node: public_key_of(node),
            coordinator: public_key_of(coord),
            model: "m".into(),
            input_tokens: 2,
            output_tokens: u32::from(id),
            price_in: 10,
            price_out: 20,
            amount: 20 + 20 * u64::from(id),
            started_at_ms: 1,
            finished_at_ms: finished,
            request_digest: [0; 32],
            response_digest: [0; 32],
        };
        CountersignedReceipt::countersign(SignedReceipt::sign(r, node).unwrap(), coord).unwrap()
    }

    fn bundle(receipts: &[CountersignedReceipt], coord: &SigningKey) -> Bundle {
        bundle_for(receipts, coord, &[])
    }

    /// A bundle from a coordinator whose deployment has other replicas.
    fn bundle_for(
        receipts: &[CountersignedReceipt],
        coord: &SigningKey,
        replicas: &[SigningKey],
    ) -> Bundle {
        let entries: Vec<Entry> = receipts
            .iter()
            .map(|c| Entry::new(c, "app", None, 0, &Margin::default()).unwrap())
            .collect();
        let period = Period {
            start_ms: 0,
            end_ms: 1000,
        };
        let deployment: Vec<_> = replicas.iter().map(public_key_of).collect();
        let signed =
            sharenet_market::statement::settle_for(period, coord, &deployment, &entries).unwrap();
        let mut sorted: Vec<&CountersignedReceipt> = receipts.iter().collect();
        sorted.sort_by_key(|c| c.receipt().job_id);
        Bundle {
            object: "statement_bundle".into(),
            label: period.label(),
            signed_statement: signed.signed().to_bytes(),
            leaves: sorted
                .iter()
                .map(|c| BundleLeaf {
                    job_id: c.receipt().job_id.0,
                    node: c.receipt().node,
                    amount: c.receipt().amount,
                    leaf: sharenet_market::merkle::leaf_hash(&c.to_bytes()),
                })
                .collect(),
        }
    }

    /// Issue 16: a node served two replicas of one deployment; the
    /// statement one of them signed lists the other, so receipts
    /// countersigned by either reconcile, and a missing one is still
    /// caught.
    #[test]
    fn receipts_countersigned_by_any_replica_of_the_deployment_reconcile() {
        let me = SigningKey::from_bytes(&[1; 32]);
        let (a, b) = (
            SigningKey::from_bytes(&[2; 32]),
            SigningKey::from_bytes(&[4; 32]),
        );
        let mine = vec![receipt(1, &me, &a, 100), receipt(2, &me, &b, 100)];
        let bundle = bundle_for(&mine, &a, std::slice::from_ref(&b));
        let local: Vec<StoredReceipt> = mine
            .iter()
            .cloned()
            .map(StoredReceipt::Countersigned)
            .collect();
        let report = reconcile(&bundle, &public_key_of(&me), &local).unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.included, 2);
        let mut more = local.clone();
        more.push(StoredReceipt::Countersigned(receipt(3, &me, &b, 100)));
        let report = reconcile(&bundle, &public_key_of(&me), &more).unwrap();
        assert_eq!(report.discrepancies.len(), 1, "{report:?}");
    }

    #[test]
    fn clean_missing_altered_and_unknown_receipts() {
        let me = SigningKey::from_bytes(&[1; 32]);
        let other = SigningKey::from_bytes(&[3; 32]);
        let coord = SigningKey::from_bytes(&[2; 32]);
        let mine: Vec<_> = (1..=3).map(|i| receipt(i, &me, &coord, 100)).collect();
        let theirs = receipt(9, &other, &coord, 100);
        let mut all = mine.clone();
        all.push(theirs);
        let b = bundle(&all, &coord);
        let local: Vec<StoredReceipt> = mine
            .iter()
            .cloned()
            .map(StoredReceipt::Countersigned)
            .collect();
        let me_pk = public_key_of(&me);

        let report = reconcile(&b, &me_pk, &local).unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.included, 3);
        assert_eq!(report.included_amount, report.statement_reward);

        // A local receipt the coordinator left out.
        let mut more = local.clone();
        more.push(StoredReceipt::Countersigned(receipt(4, &me, &coord, 200)));
        let report = reconcile(&b, &me_pk, &more).unwrap();
        assert!(
            report.discrepancies.iter().any(|d| d.contains("missing")),
            "{report:?}"
        );

        // The statement credits a receipt this node does not have.
        let report = reconcile(&b, &me_pk, &local[..2]).unwrap();
        assert!(
            report
                .discrepancies
                .iter()
                .any(|d| d.contains("not in its store")),
            "{report:?}"
        );

        // A broken job: the node kept the running receipt it sent last
        // (node-signed only); the statement settled that job for no more.
        let broken = receipt(3, &me, &coord, 100);
        let mut with_running = local[..2].to_vec();
        with_running.push(StoredReceipt::NodeSigned(broken.signed().clone()));
        let report = reconcile(&b, &me_pk, &with_running).unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!((report.included, report.running), (3, 1));
        // ... but never for more than the node signed.
        let smaller = receipt(2, &me, &coord, 100);
        let mut r2 = smaller.signed().clone();
        let mut cheap = local[..2].to_vec();
        let mut rr = r2.receipt().clone();
        rr.job_id = JobId([3; 16]);
        r2 = SignedReceipt::sign(rr, &me).unwrap();
        cheap.push(StoredReceipt::NodeSigned(r2));
        let report = reconcile(&b, &me_pk, &cheap).unwrap();
        assert!(
            report
                .discrepancies
                .iter()
                .any(|d| d.contains("more than the")),
            "{report:?}"
        );

        // A bundle whose leaf was altered no longer rebuilds the root.
        let mut bad = b.clone();
        bad.leaves[0].leaf[0] ^= 1;
        assert!(matches!(
            reconcile(&bad, &me_pk, &local),
            Err(ReconcileError::Root { .. })
        ));

        // A statement with a flipped byte does not verify.
        let mut forged = b.clone();
        let n = forged.signed_statement.len();
        forged.signed_statement[n - 70] ^= 1;
        assert!(matches!(
            reconcile(&forged, &me_pk, &local),
            Err(ReconcileError::Statement(_))
        ));
    }

    #[test]
    fn earnings_group_by_period_and_count_pending() {
        let me = SigningKey::from_bytes(&[1; 32]);
        let coord = SigningKey::from_bytes(&[2; 32]);
        let a = receipt(1, &me, &coord, 100);
        let b = receipt(2, &me, &coord, 1500);
        let pending = StoredReceipt::NodeSigned(receipt(3, &me, &coord, 1600).signed().clone());
        let rule = PeriodRule::Fixed {
            length_ms: 1000,
            origin_ms: 0,
        };
        let e = earnings(
            &[
                StoredReceipt::Countersigned(a.clone()),
                StoredReceipt::Countersigned(b.clone()),
                pending,
            ],
            &rule,
        );
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].earned, a.receipt().amount);
        assert_eq!(e[1].earned, b.receipt().amount);
        assert_eq!(e[1].pending, 1);
    }
}
