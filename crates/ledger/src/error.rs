//! Why a store operation failed: one error type for the receipt store,
//! the embedded books and the shared books (a leaf: it imports no other
//! file of the crate).

use sharenet_proto::JobId;

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
