//! Settling a period: every ledger entry recorded before the period's end
//! and not in an earlier statement goes into this period's signed
//! statement (so receipts that arrive after their period was settled land
//! in the next one, and a signed statement never changes). Settling the
//! same period again returns the stored statement byte for byte.
//!
//! Entries come from the books' bulk read, which checks every entry's MAC
//! (or, for entries from before MACs, our countersignature), so the
//! statement is built with `settle_preverified`.
//!
//! Settling is blocking and must not run twice at once (two periods could
//! sweep the same unsettled entries): `Core::settle` holds
//! one lock around it; with replicas, the database's settlement lock, and
//! it first follows the shared books so the mirror it reads holds every
//! replica's entries and statements.

use std::collections::HashSet;

use sharenet_ledger::{Books, StatementRecord};
use sharenet_market::{Entry, Period, Settlement};
use sharenet_proto::SigningKey;

use crate::core::error::Error;

fn internal(e: impl std::fmt::Display) -> Error {
    Error::Internal(e.to_string())
}

/// The period containing `at_ms`, or by default the last period that has
/// ended by `now_ms`.
pub fn period_to_settle(
    rule: sharenet_market::PeriodRule,
    at_ms: Option<u64>,
    now_ms: u64,
) -> Result<Period, Error> {
    let bad = |e: sharenet_market::MarketError| Error::bad_request(e.to_string(), Some("at_ms"));
    match at_ms {
        Some(at) => rule.period_of(at).map_err(bad),
        None => {
            let current = rule.period_of(now_ms).map_err(bad)?;
            rule.period_of(current.start_ms.saturating_sub(1))
                .map_err(bad)
        }
    }
}

/// Settles `period` (which must have ended by `now_ms`). Blocking.
pub fn settle(
    books: &Books,
    key: &SigningKey,
    period: Period,
    label: &str,
    now_ms: u64,
) -> Result<(Settlement, bool), Error> {
    settle_then(books, key, &[], period, label, now_ms, |_| Ok(()))
}

/// [`settle`] for a deployment whose other coordinator keys are
/// `deployment` (replicas: their receipts are settled too, and the
/// statement lists them), with `store` called on a new statement's record
/// before the books keep it (shared books: the database's copy comes
/// first, so a mirror never holds a statement the deployment does not).
/// Blocking.
pub fn settle_then(
    books: &Books,
    key: &SigningKey,
    deployment: &[sharenet_proto::PublicKey],
    period: Period,
    label: &str,
    now_ms: u64,
    store: impl FnOnce(&StatementRecord) -> Result<(), Error>,
) -> Result<(Settlement, bool), Error> {
    if let Some(existing) = books.statement(label).map_err(internal)? {
        let statement = Settlement::from_parts(&existing.statement, &existing.builder_lines)
            .map_err(internal)?;
        return Ok((statement, false));
    }
    if period.end_ms > now_ms {
        return Err(Error::bad_request(
            format!("period {label} has not ended yet"),
            Some("period"),
        ));
    }
    let mut settled = HashSet::new();
    for s in books.statements().map_err(internal)? {
        settled.extend(s.job_ids.into_iter().map(|j| j.0));
    }
    let mut entries = Vec::new();
    for e in books
        .all_entries_of(&sharenet_proto::public_key_of(key))
        .map_err(internal)?
    {
        if e.recorded_at_ms < period.end_ms && !settled.contains(&e.job_id().0) {
            entries.push(Entry {
                receipt: e.receipt.to_bytes(),
                job_id: e.job_id(),
                node: e.receipt.receipt().node,
                app: e.app,
                end_customer: e.end_customer,
                charge: e.charge,
            });
        }
    }
    let statement =
        sharenet_market::statement::settle_preverified_for(period, key, deployment, &entries)
            .map_err(internal)?;
    let record = StatementRecord {
        label: label.to_string(),
        statement: statement.signed().to_bytes(),
        builder_lines: statement.lines_bytes(),
        settled_at_ms: now_ms,
        job_ids: entries.iter().map(|e| e.job_id).collect(),
    };
    store(&record)?;
    books.put_statement(&record).map_err(internal)?;
    Ok((statement, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sharenet_ledger::LedgerEntry;
    use sharenet_market::{Margin, PeriodRule};
    use sharenet_proto::{CountersignedReceipt, JobId, Receipt, SignedReceipt, public_key_of};

    fn entry(id: u8, node_seed: u8, at: u64) -> LedgerEntry {
        let node = SigningKey::from_bytes(&[node_seed; 32]);
        let coord = SigningKey::from_bytes(&[2; 32]);
        let receipt = Receipt {
            job_id: JobId([id; 16]),
            node: public_key_of(&node),
            coordinator: public_key_of(&coord),
            model: "m".into(),
            input_tokens: 3,
            output_tokens: u32::from(id),
            price_in: 10,
            price_out: 20,
            amount: 30 + 20 * u64::from(id),
            started_at_ms: 1,
            finished_at_ms: 2,
            request_digest: [0; 32],
            response_digest: [0; 32],
        };
        let signed = SignedReceipt::sign(receipt, &node).unwrap();
        let receipt = CountersignedReceipt::countersign(signed, &coord).unwrap();
        let margin = Margin {
            percent_bps: 1000,
            per_mtok: 0,
        };
        let charge =
            sharenet_market::pricing::charge_receipt(receipt.receipt(), 500, &margin).unwrap();
        LedgerEntry {
            receipt,
            app: if id.is_multiple_of(2) {
                "a".into()
            } else {
                "b".into()
            },
            key_id: "k".into(),
            end_customer: None,
            charge,
            recorded_at_ms: at,
            counted_by: None,
        }
    }

    #[test]
    fn late_receipts_go_to_the_next_period_and_statements_never_change() {
        let dir = tempfile::tempdir().unwrap();
        let books = Books::open(dir.path()).unwrap();
        let key = SigningKey::from_bytes(&[2; 32]);
        let rule = PeriodRule::Fixed {
            length_ms: 1000,
            origin_ms: 0,
        };
        let p1 = rule.period_of(500).unwrap();
        let p2 = rule.period_of(1500).unwrap();
        books.record(&entry(1, 7, 100)).unwrap();
        books.record(&entry(2, 8, 900)).unwrap();
        books.record(&entry(3, 7, 1200)).unwrap();

        let (s1, fresh) = settle(&books, &key, p1, "p1", 1001).unwrap();
        assert!(fresh);
        assert_eq!(s1.statement().receipts, 2);
        // A receipt recorded with a time inside p1 after p1 was settled.
        books.record(&entry(4, 8, 999)).unwrap();
        let (again, fresh) = settle(&books, &key, p1, "p1", 3000).unwrap();
        assert!(!fresh);
        assert_eq!(
            again.signed().to_bytes(),
            s1.signed().to_bytes(),
            "a signed statement never changes"
        );

        // Not over yet: refused.
        assert!(settle(&books, &key, p2, "p2", 1999).is_err());
        let (s2, _) = settle(&books, &key, p2, "p2", 2000).unwrap();
        assert_eq!(s2.statement().receipts, 2, "job 3 and the late job 4");
        let st = s2.statement();
        assert_eq!(
            st.total_charged,
            st.total_provider + st.total_network_fee + st.total_margin
        );
        let all: u64 = [1, 2, 3, 4]
            .iter()
            .map(|&i| entry(i, 7, 0).charge.total)
            .sum();
        assert_eq!(s1.statement().total_charged + st.total_charged, all);
    }
}
