//! Durable money records for sharenet, on sled.
//!
//! - The node's receipt store: the [`ReceiptStore`] trait and its embedded
//!   default, [`SledReceiptStore`]. A node records the receipts it signed
//!   and upgrades each to the countersigned copy when it arrives.
//! - The coordinator's [`Books`]: apps, hashed API keys, top-ups, one
//!   [`LedgerEntry`] per job (a replayed job id is refused), and settled
//!   statements (see `books.rs`).
//!
//! Pricing and settlement themselves are pure functions in
//! `sharenet-market`; this crate only stores.
//!
//! Architecture invariants: a record is durable (flushed to disk) when a
//! write returns, so nothing acknowledged is lost on a crash; only this
//! crate touches sled, so another backend can replace it.

mod books;

pub use books::{
    AppRecord, AppRouting, Books, Budgets, KeyRecord, LedgerEntry, RateLimits, StatementRecord,
    TopUp,
};

use std::path::Path;

use sharenet_proto::{CountersignedReceipt, JobId, Receipt, SignedReceipt};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("receipt {0} is already recorded")]
    Duplicate(JobId),
    #[error("stored receipt {id} is corrupt: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("receipt store: {0}")]
    Backend(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        Self::Backend(e.to_string())
    }
}

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
    fn get(&self, id: &JobId) -> Result<Option<StoredReceipt>, StoreError>;
    /// Up to `limit` receipts in job id order.
    fn list(&self, limit: usize) -> Result<Vec<StoredReceipt>, StoreError>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The embedded default: one sled database per process.
pub struct SledReceiptStore {
    db: sled::Db,
    receipts: sled::Tree,
}

/// Opens a sled database, waiting up to two seconds for its file lock:
/// a store closed a moment ago in this process (a restart in place) may
/// still be releasing it from sled's background flusher. Any other error,
/// or a lock still held after that (another process has the store), is
/// returned at once.
pub(crate) fn open_db(path: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match sled::open(path) {
            Ok(db) => return Ok(db),
            // sled reports a held lock as an `Other` I/O error whose text
            // names it.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            Err(e) => {
                return Err(StoreError::Backend(format!("open {}: {e}", path.display())));
            }
        }
    }
}

impl SledReceiptStore {
    /// Opens (or creates) the store in the folder `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = open_db(path)?;
        let receipts = db.open_tree("receipts")?;
        Ok(Self { db, receipts })
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
        self.db.flush()?;
        Ok(())
    }

    fn upsert(&self, receipt: &StoredReceipt) -> Result<(), StoreError> {
        self.receipts
            .insert(receipt.job_id().0, receipt.to_bytes())?;
        self.db.flush()?;
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
        let node = SigningKey::from_bytes(&[1; 32]);
        let coord = SigningKey::from_bytes(&[2; 32]);
        let receipt = Receipt {
            job_id: JobId([id; 16]),
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
}
