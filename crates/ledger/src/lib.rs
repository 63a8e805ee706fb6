//! Durable money records for sharenet, on sled (embedded) or PostgreSQL
//! (a deployment of coordinator replicas, [`pg`]).
//!
//! - The node's receipt store: the [`ReceiptStore`] trait and its embedded
//!   default, [`SledReceiptStore`]. A node records the receipts it signed
//!   and upgrades each to the countersigned copy when it arrives.
//! - The coordinator's [`Books`]: apps, hashed API keys, top-ups, one
//!   [`LedgerEntry`] per job (a replayed job id is refused), and settled
//!   statements (see `books.rs`), with the types stored inside them
//!   (`stored.rs`: budgets, rate limits, routing rules, a job's
//!   [`GenerationFacts`]; no HTTP type).
//! - The names of the shared books' spend rows, [`SpendKey`] (`spend.rs`):
//!   encoded and parsed in one place.
//!
//! Pricing and settlement themselves are pure functions in
//! `sharenet-market`; this crate only stores.
//!
//! Architecture invariants: a record is durable (flushed to disk) when a
//! write returns, so nothing acknowledged is lost on a crash; only this
//! crate touches sled, so another backend can replace it.

mod admit;
mod books;
mod db;
mod error;
pub mod pg;
mod spend;
mod stored;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod tls;

pub use books::{AppRecord, Books, KeyRecord, LedgerEntry, StatementRecord, TopUp};
pub use db::BACKGROUND_FLUSH_MS;
pub use error::StoreError;
pub use spend::{SpendKey, SpendScope, SpendWindow};
pub use stored::{AppRouting, Budgets, CostFacts, GenerationFacts, RateLimits};

use std::path::Path;

use sharenet_proto::{CountersignedReceipt, JobId, Receipt, SignedReceipt};

/// A receipt as kept in a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredReceipt {
    /// Signed by the node; not (yet) countersigned.
    NodeSigned(SignedReceipt),
    /// Signed by the node and countersigned by the coordinator.
    Countersigned(CountersignedReceipt),
}

impl StoredReceipt {
    pub fn receipt(&self) -> &Receipt {
        match self {
            Self::NodeSigned(s) => s.receipt(),
            Self::Countersigned(c) => c.receipt(),
        }
    }

    pub fn job_id(&self) -> JobId {
        self.receipt().job_id
    }

    fn to_bytes(&self) -> Vec<u8> {
        let (kind, body) = match self {
            Self::NodeSigned(s) => (1u8, s.to_bytes()),
            Self::Countersigned(c) => (2u8, c.to_bytes()),
        };
        let mut out = Vec::with_capacity(body.len() + 1);
        out.push(kind);
        out.extend_from_slice(&body);
        out
    }

    /// Decodes and re-verifies the signatures: a store is not trusted either.
    fn from_bytes(key: &[u8], bytes: &[u8]) -> Result<Self, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            id: hex::encode(key),
            reason,
        };
        match bytes.split_first() {
            Some((1, body)) => SignedReceipt::from_bytes(body)
                .map(Self::NodeSigned)
                .map_err(|e| corrupt(e.to_string())),
            Some((2, body)) => CountersignedReceipt::from_bytes(body)
                .map(Self::Countersigned)
                .map_err(|e| corrupt(e.to_string())),
            _ => Err(corrupt("unknown record kind".into())),
        }
    }
}

/// Where receipts live. Every write is durable when it returns.
pub trait ReceiptStore: Send + Sync + 'static {
    /// Records a receipt for a job id never seen before.
    fn insert_new(&self, receipt: &StoredReceipt) -> Result<(), StoreError>;
    /// Records a receipt, replacing any earlier one for the same job.
    fn upsert(&self, receipt: &StoredReceipt) -> Result<(), StoreError>;
    /// Like [`ReceiptStore::upsert`], but durable only once the store's
    /// next flush (another write's, or the background flush within
    /// [`BACKGROUND_FLUSH_MS`]) has run: for upgrades whose loss in a crash
    /// costs nothing that cannot be recovered (a node's countersigned copy
    /// of a receipt it already holds node-signed). Cheap enough to call
    /// from async code.
    fn upsert_soon(&self, receipt: &StoredReceipt) -> Result<(), StoreError>;
    fn get(&self, id: &JobId) -> Result<Option<StoredReceipt>, StoreError>;
    /// Up to `limit` receipts in job id order.
    fn list(&self, limit: usize) -> Result<Vec<StoredReceipt>, StoreError>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The embedded default: one sled database per process.
///
/// Writes are group-committed: a writer inserts, then waits for a flush
/// that started after its insert; concurrent writers share one flush (the
/// first to take the flush lock flushes for everyone written so far). Each
/// write is still durable when its call returns.
pub struct SledReceiptStore {
    db: sled::Db,
    receipts: sled::Tree,
    /// Inserts done (numbered from 1).
    written: std::sync::atomic::AtomicU64,
    /// Held while flushing; the highest insert number known to be on disk.
    flushed: std::sync::Mutex<u64>,
    flushes: std::sync::atomic::AtomicU64,
}

impl SledReceiptStore {
    /// Opens (or creates) the store in the folder `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = db::open_db(path)?;
        let receipts = db.open_tree("receipts")?;
        Ok(Self {
            db,
            receipts,
            written: std::sync::atomic::AtomicU64::new(0),
            flushed: std::sync::Mutex::new(0),
            flushes: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Returns once every insert made before this call is on disk.
    fn durable(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        let mine = self.written.fetch_add(1, Ordering::SeqCst) + 1;
        let mut flushed = self
            .flushed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *flushed >= mine {
            // Another writer's flush started after our insert.
            return Ok(());
        }
        // Everyone numbered up to `upto` inserted before this flush starts.
        let upto = self.written.load(Ordering::SeqCst);
        self.db.flush()?;
        self.flushes.fetch_add(1, Ordering::Relaxed);
        *flushed = upto;
        Ok(())
    }

    /// How many flushes writes have made so far (the group commit makes
    /// fewer than there were writes when writers overlap).
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl ReceiptStore for SledReceiptStore {
    fn insert_new(&self, receipt: &StoredReceipt) -> Result<(), StoreError> {
        let id = receipt.job_id();
        let swapped = self.receipts.compare_and_swap(
            id.0,
            None as Option<&[u8]>,
            Some(receipt.to_bytes()),
        )?;
        if swapped.is_err() {
            return Err(StoreError::Duplicate(id));
        }
        self.durable()
    }

    fn upsert(&self, receipt: &StoredReceipt) -> Result<(), StoreError> {
        self.receipts
            .insert(receipt.job_id().0, receipt.to_bytes())?;
        self.durable()
    }

    fn upsert_soon(&self, receipt: &StoredReceipt) -> Result<(), StoreError> {
        self.receipts
            .insert(receipt.job_id().0, receipt.to_bytes())?;
        Ok(())
    }

    fn get(&self, id: &JobId) -> Result<Option<StoredReceipt>, StoreError> {
        self.receipts
            .get(id.0)?
            .map(|v| StoredReceipt::from_bytes(&id.0, &v))
            .transpose()
    }

    fn list(&self, limit: usize) -> Result<Vec<StoredReceipt>, StoreError> {
        self.receipts
            .iter()
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                StoredReceipt::from_bytes(&k, &v)
            })
            .collect()
    }

    fn len(&self) -> usize {
        self.receipts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sharenet_proto::{SigningKey, public_key_of};

    fn countersigned(id: u8) -> StoredReceipt {
        countersigned_as(JobId([id; 16]))
    }

    fn countersigned_as(job_id: JobId) -> StoredReceipt {
        let node = SigningKey::from_bytes(&[1; 32]);
        let coord = SigningKey::from_bytes(&[2; 32]);
        let receipt = Receipt {
            job_id,
            node: [0; 32],
            coordinator: public_key_of(&coord),
            model: "m".into(),
            input_tokens: 3,
            output_tokens: 4,
            price_in: 10,
            price_out: 20,
            amount: 110,
            started_at_ms: 1,
            finished_at_ms: 2,
            request_digest: [0; 32],
            response_digest: [0; 32],
        };
        let signed = SignedReceipt::sign(receipt, &node).unwrap();
        StoredReceipt::Countersigned(CountersignedReceipt::countersign(signed, &coord).unwrap())
    }

    #[test]
    fn insert_once_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledReceiptStore::open(dir.path()).unwrap();
            store.insert_new(&countersigned(1)).unwrap();
            assert!(matches!(
                store.insert_new(&countersigned(1)),
                Err(StoreError::Duplicate(_))
            ));
            store.insert_new(&countersigned(2)).unwrap();
        }
        let store = SledReceiptStore::open(dir.path()).unwrap();
        assert_eq!(store.len(), 2);
        assert_eq!(store.get(&JobId([1; 16])).unwrap(), Some(countersigned(1)));
        assert_eq!(store.get(&JobId([3; 16])).unwrap(), None);
        assert_eq!(store.list(10).unwrap().len(), 2);
    }

    #[test]
    fn node_signed_upgrades_to_countersigned() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledReceiptStore::open(dir.path()).unwrap();
        let StoredReceipt::Countersigned(c) = countersigned(5) else {
            unreachable!()
        };
        store
            .insert_new(&StoredReceipt::NodeSigned(c.signed().clone()))
            .unwrap();
        store
            .upsert(&StoredReceipt::Countersigned(c.clone()))
            .unwrap();
        assert_eq!(
            store.get(&JobId([5; 16])).unwrap(),
            Some(StoredReceipt::Countersigned(c))
        );
    }

    #[test]
    fn concurrent_writers_group_commit_and_every_write_survives() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SledReceiptStore::open(dir.path()).unwrap());
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..25u8 {
                        let mut id = [t; 16];
                        id[1] = i;
                        store.insert_new(&countersigned_as(JobId(id))).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(store.len(), 200);
        // One flush per write at most; fewer when writers overlapped.
        assert!((1..=200).contains(&store.flush_count()));
        drop(store);
        let reopened = SledReceiptStore::open(dir.path()).unwrap();
        assert_eq!(reopened.len(), 200);
    }
}
