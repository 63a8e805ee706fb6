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
    /// The shared books are overloaded: no database connection, or no turn
    /// at an app's admissions, within the wait. Nothing was written; the
    /// same call may succeed later (a 503 with `Retry-After`, never a 500).
    #[error("the books are busy: {0}")]
    Busy(String),
    /// The shared books refused to book a job whose hold was gone (swept,
    /// released, lost in a database crash) or expired when its commit
    /// came: admissions had stopped counting it, so booking the charge
    /// could spend the balance twice. Nothing was written.
    #[error("receipt {job}: its hold {hold} lapsed before the commit; nothing was booked")]
    HoldLapsed { job: JobId, hold: i64 },
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        Self::Backend(e.to_string())
    }
}
