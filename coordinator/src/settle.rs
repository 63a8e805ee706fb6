//! Settling a period: every ledger entry recorded before the period's end
//! and not in an earlier statement goes into this period's signed
//! statement (so receipts that arrive after their period was settled land
//! in the next one, and a signed statement never changes). Settling the
//! same period again returns the stored statement byte for byte.
//!
//! Entries come from the books, which re-verify both signatures of every
//! receipt on read, so the statement is built with `settle_preverified`.

use std::collections::HashSet;

use sharenet_ledger::{Books, StatementRecord};
use sharenet_market::{Entry, Period, SignedStatement};
use sharenet_proto::SigningKey;

use crate::error::ApiError;

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// Settles `period` (which must have ended by `now_ms`). Blocking.
pub fn settle(
    books: &Books,
    key: &SigningKey,
    period: Period,
    label: &str,
    now_ms: u64,
) -> Result<(SignedStatement, bool), ApiError> {
    if let Some(existing) = books.statement(label).map_err(internal)? {
        let statement = SignedStatement::from_bytes(&existing.statement).map_err(internal)?;
        return Ok((statement, false));
    }
    if period.end_ms > now_ms {
        return Err(ApiError::bad_request(
            format!("period {label} has not ended yet"),
            Some("period"),
        ));
    }
    let mut settled = HashSet::new();
    for s in books.statements().map_err(internal)? {
        settled.extend(s.job_ids.into_iter().map(|j| j.0));
    }
    let mut entries = Vec::new();
    for e in books.entries() {
        let e = e.map_err(internal)?;
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
        sharenet_market::statement::settle_preverified(period, key, &entries).map_err(internal)?;
    books
        .put_statement(&StatementRecord {
            label: label.to_string(),
            statement: statement.to_bytes(),
            settled_at_ms: now_ms,
            job_ids: entries.iter().map(|e| e.job_id).collect(),
        })
        .map_err(internal)?;
    Ok((statement, true))
}
