use sharenet_proto::{JobId, ProtoError};
use thiserror::Error;

/// Why a money computation, a settlement or a statement was refused.
///
/// Every variant is a case a caller acts on: an overflow or an invalid
/// input is a bug or an attack upstream (refuse the request / the entry),
/// a duplicate or a mismatching entry means the ledger is inconsistent,
/// and a statement that fails to decode or verify must not be trusted.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MarketError {
    /// An amount does not fit in 64 bits of nano-USD (about 18.4 billion USD).
    #[error("amount overflows 64 bits computing {0}")]
    Overflow(&'static str),
    /// A leaf index outside the tree.
    #[error("leaf index {index} out of range for a tree of {size} leaves")]
    IndexOutOfRange { index: u64, size: u64 },
    /// The same job id twice in one settlement: a receipt is paid once.
    #[error("job {0} appears more than once")]
    DuplicateJob(JobId),
    /// A job id that is not among the settled entries.
    #[error("job {0} is not in the settled set")]
    UnknownJob(JobId),
    /// An entry's receipt bytes do not decode or a signature fails.
    #[error("receipt of job {job}: {source}")]
    Receipt {
        job: JobId,
        #[source]
        source: ProtoError,
    },
    /// An entry disagrees with its own receipt or its charge is not a sum.
    #[error("entry for job {job}: {reason}")]
    Entry { job: JobId, reason: String },
    /// A value outside what the rules allow (a zero-length period, a
    /// timestamp the calendar cannot place, an over-long app id, ...).
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// Statement bytes that do not decode, or whose signature fails.
    #[error("statement: {0}")]
    Statement(#[from] ProtoError),
}
