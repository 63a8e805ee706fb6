//! Read-only questions about the books, as builders, providers and the
//! operator ask them: one app's receipts, a receipt's inclusion proof, a
//! settled period's public bundle, statements. Each runs off the async
//! runtime (sled reads block) and never shows one app another app's data.
//!
//! Each costs what it returns, never every settled job: a receipt's
//! statement is one lookup in the books' job → statement index, and
//! statements are listed a page at a time from their heads (no job ids).

use sharenet_api::receipts::{InclusionProofObject, ReceiptFilter};
use sharenet_api::statements::{BuilderStatement, BundleLeaf, PeriodRange, StatementBundle};
use sharenet_ledger::{Books, LedgerEntry, StatementRecord};
use sharenet_market::Settlement;
use sharenet_market::merkle::leaf_hash;
use sharenet_proto::JobId;

use std::sync::Arc;

use crate::core::Core;
use crate::core::error::Error;
use crate::core::sync::lock;

/// Statement bundles kept in memory at most (each is built once).
const MAX_CACHED_BUNDLES: usize = 64;

/// Most receipts one listing returns.
pub const MAX_RECEIPTS_PER_PAGE: usize = 1000;

/// Most statements one listing returns, and the default page: a hundred
/// monthly periods is over eight years, so a monthly deployment's builders
/// still get every statement in one page; each costs its builder lines.
pub const MAX_STATEMENTS_PER_PAGE: usize = 100;

/// A page of `app`'s statement lines, and whether more follow it.
pub struct StatementPage {
    pub data: Vec<BuilderStatement>,
    pub has_more: bool,
}

impl Core {
    /// Runs a blocking read of the books on the blocking pool.
    pub(crate) async fn read_books<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Books) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let books = self.accounts.books().clone();
        tokio::task::spawn_blocking(move || read(&books)).await?
    }

    /// One of `app`'s receipts (another app's is "not found").
    pub async fn receipt_of(&self, app: &str, job_id: JobId) -> Result<LedgerEntry, Error> {
        let app = app.to_owned();
        self.read_books(move |books| match books.entry(&job_id)? {
            Some(e) if e.app == app => Ok(e),
            _ => Err(Error::NotFound(format!("no receipt with id {job_id}"))),
        })
        .await
    }

    /// `app`'s receipts, oldest first, filtered, at most
    /// [`MAX_RECEIPTS_PER_PAGE`], after the receipt `after` (one of
    /// `app`'s: the cursor of the previous page) if given, read through the
    /// books' per-app index (the cost is this app's entries in the time
    /// range, not the ledger).
    pub async fn receipts_of(
        &self,
        app: &str,
        f: ReceiptFilter,
        after: Option<JobId>,
    ) -> Result<Vec<LedgerEntry>, Error> {
        let app = app.to_owned();
        let limit = f.limit.unwrap_or(100).clamp(1, MAX_RECEIPTS_PER_PAGE);
        self.read_books(move |books| {
            // The index is in (recorded time, job id) order: a page after a
            // receipt starts at its time and skips up to and including it.
            let cursor = match after {
                None => None,
                Some(id) => match books.entry(&id)? {
                    Some(e) if e.app == app => Some((e.recorded_at_ms, id.0)),
                    _ => {
                        return Err(Error::bad_request(
                            format!("after: no receipt with id {id}"),
                            Some("after"),
                        ));
                    }
                },
            };
            let since = f.since_ms.unwrap_or(0).max(cursor.map_or(0, |(at, _)| at));
            let until = f.until_ms.unwrap_or(u64::MAX);
            let mut out = Vec::new();
            for e in books.entries_of_app(&app, since, until) {
                let e = e?;
                if cursor.is_some_and(|c| (e.recorded_at_ms, e.job_id().0) <= c) {
                    continue;
                }
                let keep = f
                    .end_customer
                    .as_ref()
                    .is_none_or(|c| e.end_customer.as_ref() == Some(c));
                if keep {
                    out.push(e);
                    if out.len() == limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    /// The inclusion proof of one of `app`'s receipts in the statement
    /// that settled it (not found while it is unsettled). The statement is
    /// found through the books' job → statement index, and the proof comes
    /// from that one period's bundle (built once, then kept).
    pub async fn proof_of(&self, app: &str, job_id: JobId) -> Result<InclusionProofObject, Error> {
        let owner = app.to_owned();
        let label = self
            .read_books(move |books| {
                match books.entry(&job_id)? {
                    Some(e) if e.app == owner => {}
                    _ => return Err(Error::NotFound(format!("no receipt with id {job_id}"))),
                }
                books
                    .settled_in(&job_id)?
                    .ok_or_else(|| Error::NotFound(format!("receipt {job_id} is not settled yet")))
            })
            .await?;
        let bundle = self.bundle(&label).await?;
        let index = bundle
            .leaves
            .binary_search_by(|l| l.job_id.cmp(&job_id.0))
            .map_err(|_| Error::Internal("receipt not in its statement's leaves".into()))?;
        let hashes: Vec<[u8; 32]> = bundle.leaves.iter().map(|l| l.leaf).collect();
        let proof =
            sharenet_market::merkle::prove(&hashes, index as u64).map_err(Error::internal)?;
        Ok(InclusionProofObject {
            object: "inclusion_proof".into(),
            receipt_id: job_id.to_hex(),
            statement: label,
            proof,
        })
    }

    /// A settled period for providers to reconcile against (public): the
    /// signed statement and, per receipt in Merkle order, its job id, node,
    /// amount and leaf hash. Built once per period and kept (a statement
    /// never changes), so a public caller cannot make the coordinator
    /// re-read and re-verify a whole period per request.
    pub async fn bundle(&self, label: &str) -> Result<Arc<StatementBundle>, Error> {
        if let Some(b) = lock(&self.bundles).get(label) {
            return Ok(b.clone());
        }
        let key = label.to_owned();
        let built = self
            .read_books(move |books| {
                let record = books
                    .statement(&key)?
                    .ok_or_else(|| Error::NotFound(format!("period {key} is not settled")))?;
                let leaves = settled_leaves(books, &record)?;
                Ok(StatementBundle {
                    object: "statement_bundle".into(),
                    label: record.label,
                    signed_statement: record.statement,
                    leaves: leaves
                        .iter()
                        .map(|l| {
                            let r = l.entry.receipt.receipt();
                            BundleLeaf {
                                job_id: l.job_id.0,
                                node: r.node,
                                amount: r.amount,
                                leaf: l.hash,
                            }
                        })
                        .collect(),
                })
            })
            .await?;
        let built = Arc::new(built);
        let mut cache = lock(&self.bundles);
        if cache.len() >= MAX_CACHED_BUNDLES {
            cache.clear();
        }
        cache.insert(label.to_owned(), built.clone());
        Ok(built)
    }

    /// Every settled statement with its builder lines (the operator's
    /// view), oldest first, read from their heads (no job ids).
    pub async fn statements(&self) -> Result<Vec<Settlement>, Error> {
        self.read_books(|books| {
            books
                .statement_heads(None, usize::MAX)?
                .iter()
                .map(settlement)
                .collect()
        })
        .await
    }

    /// One settled statement with its builder lines (the operator's view).
    pub async fn statement(&self, label: &str) -> Result<Settlement, Error> {
        let label = label.to_owned();
        self.read_books(move |books| {
            let record = books
                .statement(&label)?
                .ok_or_else(|| Error::NotFound(format!("period {label} is not settled")))?;
            settlement(&record)
        })
        .await
    }

    /// Settled statements with `app`'s line in each, and the proof of that
    /// line against the statement's `builders_root` (no other app's line):
    /// up to `limit` (at most [`MAX_STATEMENTS_PER_PAGE`]) after the label
    /// `after`, oldest first.
    pub async fn statements_for(
        &self,
        app: &str,
        after: Option<String>,
        limit: Option<usize>,
    ) -> Result<StatementPage, Error> {
        let app = app.to_owned();
        let limit = limit
            .unwrap_or(MAX_STATEMENTS_PER_PAGE)
            .clamp(1, MAX_STATEMENTS_PER_PAGE);
        self.read_books(move |books| {
            // One more than the page says whether another follows.
            let mut heads = books.statement_heads(after.as_deref(), limit + 1)?;
            let has_more = heads.len() > limit;
            heads.truncate(limit);
            let mut out = Vec::with_capacity(heads.len());
            for r in heads {
                let s = settlement(&r)?;
                let st = s.statement();
                let line = s.builder_proof(&app);
                out.push(BuilderStatement {
                    object: "statement".into(),
                    label: r.label,
                    period: PeriodRange {
                        start_ms: st.period.start_ms,
                        end_ms: st.period.end_ms,
                    },
                    merkle_root: hex::encode(st.merkle_root),
                    builders_root: hex::encode(st.builders_root),
                    app: app.clone(),
                    jobs: line.as_ref().map_or(0, |l| l.jobs),
                    charged_nano_usd: line.as_ref().map_or(0, |l| l.charged),
                    payout_nano_usd: line.as_ref().map_or(0, |l| l.payout),
                    line_salt: line.as_ref().map(|l| hex::encode(l.salt)),
                    line_proof: line.map(|l| l.proof),
                    signed_bytes: hex::encode(s.signed().to_bytes()),
                });
            }
            Ok(StatementPage {
                data: out,
                has_more,
            })
        })
        .await
    }
}

/// A stored statement with its lines, checked.
fn settlement(record: &StatementRecord) -> Result<Settlement, Error> {
    Settlement::from_parts(&record.statement, &record.builder_lines).map_err(Error::internal)
}

/// One settled receipt: its entry and Merkle leaf hash.
struct Leaf {
    job_id: JobId,
    entry: LedgerEntry,
    hash: [u8; 32],
}

/// A statement's receipts in Merkle (job id) order.
fn settled_leaves(books: &Books, record: &StatementRecord) -> Result<Vec<Leaf>, Error> {
    let mut ids = record.job_ids.clone();
    ids.sort_unstable();
    ids.into_iter()
        .map(|job_id| {
            let entry = books
                .entry(&job_id)?
                .ok_or_else(|| Error::Internal(format!("settled receipt {job_id} is missing")))?;
            let hash = leaf_hash(&entry.receipt.to_bytes());
            Ok(Leaf {
                job_id,
                entry,
                hash,
            })
        })
        .collect()
}
