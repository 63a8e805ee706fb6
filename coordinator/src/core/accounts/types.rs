//! The accounts' vocabulary, shared by every file of the module (a leaf:
//! it imports none of them): errors, who is calling, what a request is
//! about to do, the budget scopes and windows a charge counts in, what one
//! hold reserved, and the key helpers.

use sharenet_ledger::{SpendScope, SpendWindow};
use sharenet_proto::{NanoUsd, sha256};

use crate::core::error::Error;

/// Why an accounts operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    /// Unknown or revoked key, or a key whose app is gone.
    #[error("{0}")]
    Unauthorized(String),
    /// A bad value from the caller; `param` names it.
    #[error("{message}")]
    Invalid {
        message: String,
        param: Option<String>,
    },
    /// The balance or a budget does not cover the worst case.
    #[error("{0}")]
    OverBudget(String),
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: std::time::Duration,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("books: {0}")]
    Store(#[from] sharenet_ledger::StoreError),
    #[error("{0}")]
    Internal(String),
}

impl AccountsError {
    pub(super) fn invalid(message: impl Into<String>, param: &str) -> Self {
        Self::Invalid {
            message: message.into(),
            param: Some(param.to_string()),
        }
    }
}

impl From<AccountsError> for Error {
    fn from(e: AccountsError) -> Self {
        match e {
            AccountsError::Unauthorized(m) => Self::Unauthorized(m),
            AccountsError::Invalid { message, param } => Self::BadRequest { message, param },
            AccountsError::OverBudget(m) => Self::PaymentRequired(m),
            AccountsError::RateLimited {
                message,
                retry_after,
            } => Self::RateLimited {
                message,
                retry_after,
            },
            AccountsError::NotFound(m) => Self::NotFound(m),
            AccountsError::Store(e) => e.into(),
            AccountsError::Internal(m) => Self::Internal(m),
        }
    }
}

/// Why a commit failed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("store the entry: {0}")]
    Store(sharenet_ledger::StoreError),
    #[error("price the job: {0}")]
    Price(String),
    /// The receipt prices above the hold: never booked.
    #[error(
        "the receipt's charge of {charge} nano-USD exceeds the {hold} nano-USD held for the job"
    )]
    OverHold { charge: u64, hold: u128 },
    /// Shared books: the job's hold was gone or expired when its commit
    /// came (admissions had stopped counting it), so the charge was not
    /// booked: the builder is not charged for this job, and the node is
    /// not paid for it (logged at warn and counted).
    #[error(
        "the job's hold {hold} lapsed before its charge was booked: nothing was charged for it"
    )]
    HoldLapsed { hold: i64 },
}

impl From<CommitError> for Error {
    /// A commit's failure as the core reports it: busy books are a 503 the
    /// builder may retry; a lapsed hold, a pricing failure or a broken
    /// store are the coordinator's own fault. (A replay and a charge over
    /// the hold are the node's: `dispatch/book.rs` rejects those first.)
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Store(e) => e.into(),
            e @ (CommitError::Price(_) | CommitError::HoldLapsed { .. }) => {
                Self::Internal(e.to_string())
            }
            e @ CommitError::OverHold { .. } => Self::BadGateway(e.to_string()),
        }
    }
}

/// The operator's app that pays for spot checks; the operator funds it
/// (defined once, beside the verdict the simulator shares).
pub use sharenet_router::verdict::SPOT_CHECK_APP;

pub(crate) const DAY_MS: u64 = 86_400_000;

/// Who is calling: resolved from the API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub app: String,
    pub key_id: String,
}

/// What a request is about to do, for admission.
pub struct Admission<'a> {
    pub principal: &'a Principal,
    pub end_customer: Option<&'a str>,
    pub max_input_tokens: u64,
    pub max_output_tokens: u64,
    pub max_price_in: NanoUsd,
    pub max_price_out: NanoUsd,
    pub now_ms: u64,
}

/// A budget scope: the app, one of its keys, or one of its end customers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Scope {
    App(String),
    Key(String),
    Customer(String, String),
}

impl Scope {
    /// Its row in the shared books' `spend` table (within one app).
    pub(super) fn spend(&self) -> SpendScope {
        match self {
            Self::App(_) => SpendScope::App,
            Self::Key(k) => SpendScope::Key(k.clone()),
            Self::Customer(_, c) => SpendScope::Customer(c.clone()),
        }
    }

    pub(super) fn describe(&self) -> String {
        match self {
            Self::App(a) => format!("app {a}"),
            Self::Key(k) => format!("key {k}"),
            Self::Customer(_, c) => format!("end customer {c:?}"),
        }
    }
}

/// A budget window (the shared books' names for them are the windows'
/// own: one type).
pub(super) type Window = SpendWindow;

/// Every scope a request of `key_id` for `customer` counts in.
pub(super) fn scopes(app: &str, key_id: &str, customer: Option<&str>) -> Vec<Scope> {
    let mut v = vec![Scope::App(app.into()), Scope::Key(key_id.into())];
    if let Some(c) = customer {
        v.push(Scope::Customer(app.into(), c.into()));
    }
    v
}

pub(crate) fn month_start(ms: u64) -> u64 {
    sharenet_market::PeriodRule::CalendarMonth
        .period_of(ms)
        .map(|p| p.start_ms)
        .unwrap_or(0)
}

/// The windows a charge at `ms` counts in: its day, its month, all time.
pub(super) fn windows(ms: u64) -> [Window; 3] {
    [
        Window::Day(ms / DAY_MS),
        Window::Month(month_start(ms)),
        Window::Total,
    ]
}

/// What one hold reserved, and where: the part of a `Hold` (`hold.rs`) the
/// books backend reads and settles.
pub(super) struct Held {
    pub(super) principal: Principal,
    pub(super) end_customer: Option<String>,
    pub(super) amount: u128,
    /// The hold's row in the shared books.
    pub(super) shared_id: Option<i64>,
    /// When it was taken (its budget windows).
    pub(super) at_ms: u64,
    /// Booked (or released by the shared books): nothing to release on
    /// drop.
    pub(super) committed: bool,
}

impl Held {
    /// The scopes the hold counts in.
    pub(super) fn scopes(&self) -> Vec<Scope> {
        scopes(
            &self.principal.app,
            &self.principal.key_id,
            self.end_customer.as_deref(),
        )
    }
}

/// The hashed form of an API key.
pub fn key_hash(key: &str) -> [u8; 32] {
    sha256(key.as_bytes())
}

/// A new API key: `sk-sn-` and 32 random hex characters.
pub fn new_key() -> String {
    format!("sk-sn-{}", hex::encode(rand::random::<[u8; 16]>()))
}

pub(super) fn key_id_of(hash: &[u8; 32]) -> String {
    format!("key_{}", hex::encode(&hash[..6]))
}
