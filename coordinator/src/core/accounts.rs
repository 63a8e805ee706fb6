//! Builder accounts on the coordinator: API keys (hashed), prepaid
//! balances, holds, budgets, rate limits and per-end-customer usage.
//!
//! Money path for one request:
//! 1. [`Accounts::authenticate`]: the Bearer key's SHA-256 names an app and a
//!    key; unknown or revoked → 401.
//! 2. [`Accounts::admit`]: rate limits (requests and tokens per minute, per
//!    key and per end customer; `governor`) → 429 with `Retry-After`; then a
//!    **hold** for the worst-case charge (the most tokens the job may use at
//!    the highest price among the candidate nodes, plus fee and margin),
//!    taken from the app's balance and counted against every budget (app,
//!    key, end customer; day, month, total) → 402 naming what ran out.
//!    Holds are taken under one lock, so concurrent requests can never
//!    overspend.
//! 3. [`Hold::commit`] after the receipt: the real charge is computed
//!    (`sharenet_market::charge`) and refused if it exceeds the hold; the
//!    ledger entry is made durable; then, under the same lock admissions
//!    take, the hold is released and the charge booked in one step. A job
//!    that ends without a receipt drops its hold: nothing is charged.
//!
//! Errors are [`AccountsError`]; the core maps them to its own `Error`.
//!
//! Balances, spend and usage are derived from the durable top-ups and
//! ledger entries at start-up ([`Accounts::load`]), so a crash cannot leave
//! them out of step with what was acknowledged.
//!
//! **Replicas** ([`Accounts::load_shared`]): with a PostgreSQL
//! `database_url`, the money decisions move into the database. A hold is
//! read, checked and inserted in one transaction under the app row's lock
//! (`PgLedger::hold`), with the same check as the embedded books
//! ([`check_funds`] over a [`FundsView`]); a commit books the entry,
//! releases the hold and adds the charge in one transaction; holds expire
//! (`hold_ttl`) so a replica that dies leaves none stuck. The in-memory
//! state becomes a view of the shared books that [`Accounts::follow`] keeps
//! up to date (apps, keys and revocations within one
//! [`FOLLOW_INTERVAL`]), through the replica's local mirror (the embedded
//! books, which every read path uses unchanged). Rate limits stay local to
//! each replica, each enforcing its share (`limit / replicas`, rounded
//! up) of every limit.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use serde::Serialize;
use sharenet_ledger::pg::{Booking, HoldRequest, PgLedger};
use sharenet_ledger::{AppRecord, Books, Budgets, KeyRecord, LedgerEntry, TopUp};
use sharenet_market::{Charge, JobBounds, Margin};
use sharenet_proto::{CountersignedReceipt, NanoUsd, sha256};

use crate::core::error::Error;
use crate::core::sync::lock;

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
    fn invalid(message: impl Into<String>, param: &str) -> Self {
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

/// The operator's app that pays for spot checks; the operator funds it.
pub const SPOT_CHECK_APP: &str = "spot-checks";

pub(crate) const DAY_MS: u64 = 86_400_000;
/// End-customer rate limiters kept per app at most. Customer ids are the
/// builder's to choose, so a builder that churns them could otherwise grow
/// the map without bound; past the cap that app's customer limiters start
/// afresh, and no other app's are touched.
const MAX_CUSTOMER_LIMITERS_PER_APP: usize = 10_000;

/// Who is calling: resolved from the API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub app: String,
    pub key_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Scope {
    App(String),
    Key(String),
    Customer(String, String),
}

impl Scope {
    /// Its name in the shared books' `spend` table (within one app).
    fn key(&self) -> String {
        match self {
            Self::App(_) => "a".into(),
            Self::Key(k) => format!("k:{k}"),
            Self::Customer(_, c) => format!("c:{c}"),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::App(a) => format!("app {a}"),
            Self::Key(k) => format!("key {k}"),
            Self::Customer(_, c) => format!("end customer {c:?}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Window {
    Day(u64),
    Month(u64),
    Total,
}

impl Window {
    /// Its name in the shared books' `spend` table.
    fn key(&self) -> String {
        match self {
            Self::Day(d) => format!("d{d}"),
            Self::Month(m) => format!("m{m}"),
            Self::Total => "t".into(),
        }
    }
}

/// What the funds check reads: the embedded state, or the shared books'
/// rows of one app read under its lock.
trait FundsView {
    /// Top-ups minus charges minus live holds.
    fn balance(&self, app: &str) -> i128;
    fn spent(&self, scope: &Scope, window: Window) -> u128;
    fn held(&self, scope: &Scope) -> u128;
}

impl FundsView for State {
    fn balance(&self, app: &str) -> i128 {
        State::balance(self, app)
    }

    fn spent(&self, scope: &Scope, window: Window) -> u128 {
        self.spent
            .get(&(scope.clone(), window))
            .copied()
            .unwrap_or(0)
    }

    fn held(&self, scope: &Scope) -> u128 {
        self.held.get(scope).copied().unwrap_or(0)
    }
}

impl FundsView for sharenet_ledger::pg::Funds {
    fn balance(&self, _app: &str) -> i128 {
        let held: u128 = self.holds.iter().map(|h| u128::from(h.2)).sum();
        i128::from(self.topped_up) - i128::from(self.charged) - held as i128
    }

    fn spent(&self, scope: &Scope, window: Window) -> u128 {
        self.spent
            .get(&(scope.key(), window.key()))
            .map_or(0, |v| u128::from(*v))
    }

    fn held(&self, scope: &Scope) -> u128 {
        self.holds
            .iter()
            .filter(|(key, customer, _)| match scope {
                Scope::App(_) => true,
                Scope::Key(k) => key == k,
                Scope::Customer(_, c) => customer.as_deref() == Some(c.as_str()),
            })
            .map(|h| u128::from(h.2))
            .sum()
    }
}

/// Usage of one end customer (or of the app's own calls) in one period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UsageLine {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub charged: NanoUsd,
    pub provider_cost: NanoUsd,
    pub network_fee: NanoUsd,
    pub margin: NanoUsd,
}

impl UsageLine {
    fn add(&mut self, e: &LedgerEntry) {
        let r = e.receipt.receipt();
        self.requests += 1;
        self.input_tokens += u64::from(r.input_tokens);
        self.output_tokens += u64::from(r.output_tokens);
        self.charged = self.charged.saturating_add(e.charge.total);
        self.provider_cost = self.provider_cost.saturating_add(e.charge.provider_cost);
        self.network_fee = self.network_fee.saturating_add(e.charge.network_fee);
        self.margin = self.margin.saturating_add(e.charge.margin);
    }
}

#[derive(Default)]
struct State {
    apps: HashMap<String, AppRecord>,
    keys: HashMap<[u8; 32], KeyRecord>,
    key_hash_by_id: HashMap<String, [u8; 32]>,
    topped_up: HashMap<String, u128>,
    charged: HashMap<String, u128>,
    /// Booked charges per budget scope and window.
    spent: HashMap<(Scope, Window), u128>,
    /// Outstanding holds per scope (they count against every window).
    held: HashMap<Scope, u128>,
    /// (app, end customer or "", month start) → usage.
    usage: BTreeMap<(String, String, u64), UsageLine>,
    /// (app, model, month start) → usage.
    usage_by_model: BTreeMap<(String, String, u64), UsageLine>,
    /// (app, UTC day number) → usage.
    usage_by_day: BTreeMap<(String, u64), UsageLine>,
    /// Key limiters (bounded by the keys the operator issued).
    limiters: HashMap<(Scope, bool), Arc<DefaultDirectRateLimiter>>,
    /// End-customer limiters per app, each map capped.
    customer_limiters: HashMap<String, HashMap<(Scope, bool), Arc<DefaultDirectRateLimiter>>>,
}

impl State {
    fn key_budgets(&self, key_id: &str) -> Budgets {
        self.key_hash_by_id
            .get(key_id)
            .and_then(|h| self.keys.get(h))
            .map(|k| k.budgets)
            .unwrap_or_default()
    }

    fn balance(&self, app: &str) -> i128 {
        let get = |m: &HashMap<String, u128>| m.get(app).copied().unwrap_or(0) as i128;
        get(&self.topped_up)
            - get(&self.charged)
            - self.held.get(&Scope::App(app.into())).copied().unwrap_or(0) as i128
    }

    fn book(&mut self, e: &LedgerEntry, key_id: &str) {
        let amount = u128::from(e.charge.total);
        *self.charged.entry(e.app.clone()).or_default() += amount;
        let at = e.recorded_at_ms;
        for scope in scopes(&e.app, key_id, e.end_customer.as_deref()) {
            for w in windows(at) {
                *self.spent.entry((scope.clone(), w)).or_default() += amount;
            }
        }
        let customer = e.end_customer.clone().unwrap_or_default();
        self.usage
            .entry((e.app.clone(), customer, month_start(at)))
            .or_default()
            .add(e);
        let model = e.receipt.receipt().model.clone();
        self.usage_by_model
            .entry((e.app.clone(), model, month_start(at)))
            .or_default()
            .add(e);
        self.usage_by_day
            .entry((e.app.clone(), at / DAY_MS))
            .or_default()
            .add(e);
    }
}

fn scopes(app: &str, key_id: &str, customer: Option<&str>) -> Vec<Scope> {
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

fn windows(ms: u64) -> [Window; 3] {
    [
        Window::Day(ms / DAY_MS),
        Window::Month(month_start(ms)),
        Window::Total,
    ]
}

/// The hashed form of an API key.
pub fn key_hash(key: &str) -> [u8; 32] {
    sha256(key.as_bytes())
}

/// A new API key: `sk-sn-` and 32 random hex characters.
pub fn new_key() -> String {
    format!("sk-sn-{}", hex::encode(rand::random::<[u8; 16]>()))
}

fn key_id_of(hash: &[u8; 32]) -> String {
    format!("key_{}", hex::encode(&hash[..6]))
}

/// The accounts service (shared by every request).
pub struct Accounts {
    /// The embedded books; with shared books, this replica's mirror.
    books: Arc<Books>,
    state: Mutex<State>,
    network_fee_bps: u32,
    shared: Option<Shared>,
}

/// How often a replica reads what the others committed (apps, keys,
/// revocations, top-ups, entries, statements).
pub const FOLLOW_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);
/// How often expired holds are deleted from the shared books.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
/// Hold releases waiting for the database; past this a hold simply
/// expires.
const RELEASE_QUEUE: usize = 4096;
/// The mirror's record of how far it has followed the shared books.
const CURSOR_META: &str = "pg_cursor";

/// Settings of a replica on shared books.
#[derive(Debug, Clone, Copy)]
pub struct SharedOptions {
    /// Replicas in the deployment: each enforces `1/replicas` of every
    /// rate limit.
    pub replicas: u32,
    /// How long a hold counts if its job never ends (a replica died).
    pub hold_ttl_ms: u64,
}

struct Shared {
    pg: Arc<PgLedger>,
    options: SharedOptions,
    releases: tokio::sync::mpsc::Sender<i64>,
    release_rx: Mutex<Option<tokio::sync::mpsc::Receiver<i64>>>,
    /// Where the next [`Accounts::follow`] reads from.
    cursor: std::sync::atomic::AtomicU64,
    /// One follow at a time.
    following: tokio::sync::Mutex<()>,
    /// The deployment's coordinator keys, as last followed.
    coordinators: Mutex<Vec<sharenet_proto::PublicKey>>,
}

/// A worst-case amount reserved for one request; released on drop.
pub struct Hold {
    accounts: Arc<Accounts>,
    principal: Principal,
    end_customer: Option<String>,
    amount: u128,
    /// The hold's row in the shared books.
    shared_id: Option<i64>,
    /// When it was taken (its budget windows).
    at_ms: u64,
    committed: bool,
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.committed {
            self.accounts.release(self);
        }
    }
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

impl Accounts {
    /// Rebuilds balances, spend and usage from the books of the coordinator
    /// whose public key is `own_key` (each entry's countersignature is
    /// re-checked on read, batched on every core).
    pub fn load(
        books: Arc<Books>,
        network_fee_bps: u32,
        own_key: &sharenet_proto::PublicKey,
    ) -> Result<Self, AccountsError> {
        let mut state = State::default();
        for app in books.apps()? {
            state.apps.insert(app.id.clone(), app);
        }
        for key in books.keys()? {
            state.key_hash_by_id.insert(key.id.clone(), key.sha256);
            state.keys.insert(key.sha256, key);
        }
        for t in books.topups()? {
            *state.topped_up.entry(t.app.clone()).or_default() += u128::from(t.amount);
        }
        for e in books.all_entries_of(own_key)? {
            let key_id = e.key_id.clone();
            state.book(&e, &key_id);
        }
        Ok(Self {
            books,
            state: Mutex::new(state),
            network_fee_bps,
            shared: None,
        })
    }

    /// A replica on the shared books `pg`, with `mirror` as its local
    /// copy: loads what the mirror holds, then follows the shared books
    /// until it has caught up. Start [`Accounts::run_shared`] next.
    pub async fn load_shared(
        mirror: Arc<Books>,
        pg: Arc<PgLedger>,
        options: SharedOptions,
        network_fee_bps: u32,
        own_key: &sharenet_proto::PublicKey,
    ) -> Result<Arc<Self>, AccountsError> {
        let cursor = match mirror.meta(CURSOR_META)? {
            Some(v) => u64::from_be_bytes(v.as_slice().try_into().map_err(|_| {
                AccountsError::Internal("the mirror's follow cursor is corrupt".into())
            })?),
            None => 0,
        };
        let own = *own_key;
        let loaded = tokio::task::spawn_blocking(move || Self::load(mirror, network_fee_bps, &own))
            .await
            .map_err(|e| AccountsError::Internal(format!("load the mirror: {e}")))??;
        let (releases, release_rx) = tokio::sync::mpsc::channel(RELEASE_QUEUE);
        let accounts = Arc::new(Self {
            shared: Some(Shared {
                pg: pg.clone(),
                options,
                releases,
                release_rx: Mutex::new(Some(release_rx)),
                cursor: cursor.into(),
                following: tokio::sync::Mutex::new(()),
                coordinators: Mutex::new(vec![*own_key]),
            }),
            ..loaded
        });
        pg.add_coordinator(own_key, crate::core::clock::now_ms())
            .await?;
        accounts.follow().await?;
        Ok(accounts)
    }

    pub fn books(&self) -> &Arc<Books> {
        &self.books
    }

    /// The coordinator keys whose countersignatures are this books': `own`,
    /// and on shared books every replica's.
    pub fn countersigners(
        &self,
        own: &sharenet_proto::PublicKey,
    ) -> Vec<sharenet_proto::PublicKey> {
        let mut keys = match &self.shared {
            Some(s) => lock(&s.coordinators).clone(),
            None => Vec::new(),
        };
        if !keys.contains(own) {
            keys.push(*own);
        }
        keys
    }

    /// The shared books, when this coordinator is one replica of several.
    pub fn shared(&self) -> Option<&Arc<PgLedger>> {
        self.shared.as_ref().map(|s| &s.pg)
    }

    pub fn network_fee_bps(&self) -> u32 {
        self.network_fee_bps
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The app and key a Bearer key belongs to; 401 if unknown or revoked.
    pub fn authenticate(&self, key: &str) -> Result<Principal, AccountsError> {
        let state = self.lock();
        match state.keys.get(&key_hash(key)) {
            Some(k) if k.revoked_at_ms.is_none() => Ok(Principal {
                app: k.app.clone(),
                key_id: k.id.clone(),
            }),
            Some(_) => Err(AccountsError::Unauthorized(
                "this API key has been revoked".into(),
            )),
            None => Err(AccountsError::Unauthorized("invalid API key".into())),
        }
    }

    pub fn app(&self, id: &str) -> Option<AppRecord> {
        self.lock().apps.get(id).cloned()
    }

    fn limiter(
        state: &mut State,
        scope: &Scope,
        tokens: bool,
        per_minute: Option<u32>,
        replicas: u32,
    ) -> Option<Arc<DefaultDirectRateLimiter>> {
        // Each replica enforces its share of the limit.
        let n = NonZeroU32::new(per_minute?.div_ceil(replicas.max(1)))?;
        // Key limiters are never dropped (so churning customer ids cannot
        // reset a key's limit); customer limiters are capped per app.
        let map = match scope {
            Scope::Customer(app, _) => {
                let map = state.customer_limiters.entry(app.clone()).or_default();
                if map.len() >= MAX_CUSTOMER_LIMITERS_PER_APP
                    && !map.contains_key(&(scope.clone(), tokens))
                {
                    map.clear();
                }
                map
            }
            _ => &mut state.limiters,
        };
        Some(
            map.entry((scope.clone(), tokens))
                .or_insert_with(|| Arc::new(DefaultDirectRateLimiter::direct(Quota::per_minute(n))))
                .clone(),
        )
    }

    /// Rate limits, then a hold for the worst case (see the module docs).
    /// Embedded: all under the accounts lock, so concurrent admissions see
    /// each other's holds. Shared: the check and the hold are one
    /// database transaction under the app row's lock.
    pub async fn admit(self: &Arc<Self>, a: &Admission<'_>) -> Result<Hold, AccountsError> {
        let replicas = self.shared.as_ref().map_or(1, |s| s.options.replicas);
        let (app, amount, key_budgets) = {
            let mut state = self.lock();
            let app = state.apps.get(&a.principal.app).cloned().ok_or_else(|| {
                AccountsError::Unauthorized("this key's app no longer exists".into())
            })?;
            Self::check_rate_limits(&mut state, &app, a, replicas)?;
            let amount = u128::from(self.worst_case(&app, a)?.total);
            let key_budgets = state.key_budgets(&a.principal.key_id);
            let Some(_) = &self.shared else {
                let all = check_funds(&*state, &app, key_budgets, a, amount)?;
                for scope in all {
                    *state.held.entry(scope).or_default() += amount;
                }
                return Ok(self.hold(a, amount, None));
            };
            (app, amount, key_budgets)
        };
        let Some(shared) = &self.shared else {
            return Err(AccountsError::Internal("no shared books".into()));
        };
        let scopes: Vec<String> = scopes(&app.id, &a.principal.key_id, a.end_customer)
            .iter()
            .map(Scope::key)
            .collect();
        let windows: Vec<String> = windows(a.now_ms).iter().map(Window::key).collect();
        let amount64 = u64::try_from(amount).map_err(|_| {
            AccountsError::invalid("this request's worst case is too large", "max_tokens")
        })?;
        let taken = shared
            .pg
            .hold(
                &HoldRequest {
                    app: &app.id,
                    key_id: &a.principal.key_id,
                    end_customer: a.end_customer,
                    amount: amount64,
                    now_ms: a.now_ms,
                    expires_at_ms: a.now_ms.saturating_add(shared.options.hold_ttl_ms),
                    scopes: &scopes,
                    windows: &windows,
                },
                |funds| check_funds(funds, &app, key_budgets, a, amount).map(|_| ()),
            )
            .await?;
        match taken {
            None => Err(AccountsError::Unauthorized(
                "this key's app no longer exists".into(),
            )),
            Some(Err(refused)) => Err(refused),
            Some(Ok(id)) => Ok(self.hold(a, amount, Some(id))),
        }
    }

    fn hold(self: &Arc<Self>, a: &Admission<'_>, amount: u128, shared_id: Option<i64>) -> Hold {
        Hold {
            accounts: self.clone(),
            principal: a.principal.clone(),
            end_customer: a.end_customer.map(str::to_string),
            amount,
            shared_id,
            at_ms: a.now_ms,
            committed: false,
        }
    }

    /// Requests and worst-case tokens per minute, per key and per end
    /// customer.
    fn check_rate_limits(
        state: &mut State,
        app: &AppRecord,
        a: &Admission<'_>,
        replicas: u32,
    ) -> Result<(), AccountsError> {
        let tokens = a.max_input_tokens.saturating_add(a.max_output_tokens);
        let tokens32 = NonZeroU32::new(u32::try_from(tokens).unwrap_or(u32::MAX).max(1))
            .unwrap_or(NonZeroU32::MIN);
        let key_scope = Scope::Key(a.principal.key_id.clone());
        let mut checks = vec![(key_scope.clone(), app.key_limits)];
        if let Some(c) = a.end_customer {
            checks.push((
                Scope::Customer(app.id.clone(), c.into()),
                app.customer_limits,
            ));
        }
        // The clock is only read to say when to retry: building one (quanta
        // calibrates its TSC source) on every admission cost more than the
        // limit checks themselves.
        let now = || DefaultClock::default().now();
        for (scope, limits) in &checks {
            if let Some(l) =
                Self::limiter(state, scope, false, limits.requests_per_minute, replicas)
                && let Err(not_until) = l.check()
            {
                return Err(AccountsError::RateLimited {
                    message: format!(
                        "{} is over its limit of {} requests per minute",
                        scope.describe(),
                        limits.requests_per_minute.unwrap_or(0)
                    ),
                    retry_after: not_until.wait_time_from(now()),
                });
            }
            if let Some(l) = Self::limiter(state, scope, true, limits.tokens_per_minute, replicas) {
                match l.check_n(tokens32) {
                    Ok(Ok(())) => {}
                    Ok(Err(not_until)) => {
                        return Err(AccountsError::RateLimited {
                            message: format!(
                                "{} is over its limit of {} tokens per minute",
                                scope.describe(),
                                limits.tokens_per_minute.unwrap_or(0)
                            ),
                            retry_after: not_until.wait_time_from(now()),
                        });
                    }
                    Err(_) => {
                        return Err(AccountsError::invalid(
                            format!(
                                "this request may use {tokens} tokens, more than {}'s limit of {} tokens per minute; lower max_tokens",
                                scope.describe(),
                                limits.tokens_per_minute.unwrap_or(0)
                            ),
                            "max_tokens",
                        ));
                    }
                }
            }
        }

        Ok(())
    }

    /// The most the job can cost: its bounds at the highest candidate
    /// prices, plus fee and margin.
    fn worst_case(&self, app: &AppRecord, a: &Admission<'_>) -> Result<Charge, AccountsError> {
        let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        sharenet_market::pricing::hold(
            &JobBounds {
                max_input_tokens: clamp(a.max_input_tokens),
                max_output_tokens: clamp(a.max_output_tokens),
                max_price_in: a.max_price_in,
                max_price_out: a.max_price_out,
            },
            self.network_fee_bps,
            &app.margin,
        )
        .map_err(|e| AccountsError::Invalid {
            message: format!("this request cannot be priced: {e}"),
            param: None,
        })
    }

    fn release(&self, hold: &Hold) {
        match (&self.shared, hold.shared_id) {
            // A full queue or a stopped worker: the hold expires instead.
            (Some(shared), Some(id)) => {
                let _ = shared.releases.try_send(id);
            }
            _ => release_in(&mut self.lock(), hold),
        }
    }

    /// Usage lines of an app: (end customer, month start ms, usage).
    pub fn usage(&self, app: &str) -> Vec<(String, u64, UsageLine)> {
        self.lock()
            .usage
            .iter()
            .filter(|((a, _, _), _)| a == app)
            .map(|((_, c, m), u)| (c.clone(), *m, *u))
            .collect()
    }

    /// An app's usage per model in the month starting at `month_start_ms`.
    pub fn usage_by_model(&self, app: &str, month_start_ms: u64) -> Vec<(String, UsageLine)> {
        self.lock()
            .usage_by_model
            .iter()
            .filter(|((a, _, m), _)| a == app && *m == month_start_ms)
            .map(|((_, model, _), u)| (model.clone(), *u))
            .collect()
    }

    /// An app's usage per UTC day (day number: ms / 86 400 000) from
    /// `first_day` on.
    pub fn usage_by_day(&self, app: &str, first_day: u64) -> Vec<(u64, UsageLine)> {
        self.lock()
            .usage_by_day
            .range((app.to_owned(), first_day)..=(app.to_owned(), u64::MAX))
            .map(|((_, day), u)| (*day, *u))
            .collect()
    }

    /// The app's balance (top-ups minus charges minus holds). On shared
    /// books: as this replica has followed them, without other replicas'
    /// holds.
    pub fn balance(&self, app: &str) -> i128 {
        self.lock().balance(app)
    }

    // ---- operator actions ----

    /// Creates an app, after checking its id, builder and margin.
    pub async fn create_app(&self, app: AppRecord) -> Result<AppRecord, AccountsError> {
        let valid_id = !app.id.is_empty()
            && app.id.len() <= 64
            && app
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_id {
            return Err(AccountsError::invalid(
                "id: 1 to 64 characters of a-z, A-Z, 0-9, - and _",
                "id",
            ));
        }
        if app.builder.is_empty() {
            return Err(AccountsError::invalid(
                "builder must not be empty",
                "builder",
            ));
        }
        if app.margin.percent_bps > 100_000 {
            return Err(AccountsError::invalid(
                "margin_bps: at most 100000 (1000%)",
                "margin_bps",
            ));
        }
        let exists = || AccountsError::invalid(format!("app {} already exists", app.id), "id");
        if let Some(shared) = &self.shared
            && !shared.pg.create_app(&app).await?
        {
            return Err(exists());
        }
        let mut state = self.lock();
        if self.shared.is_none() && state.apps.contains_key(&app.id) {
            return Err(exists());
        }
        self.books.put_app(&app)?;
        state.apps.insert(app.id.clone(), app.clone());
        Ok(app)
    }

    /// Replaces an app's routing rules (private pool, sensitive, spill-over).
    pub async fn set_routing(
        &self,
        app: &str,
        routing: sharenet_ledger::AppRouting,
    ) -> Result<AppRecord, AccountsError> {
        let mut record = self
            .app(app)
            .ok_or_else(|| AccountsError::NotFound(format!("no app {app}")))?;
        record.routing = routing;
        if let Some(shared) = &self.shared
            && !shared.pg.update_app(&record).await?
        {
            return Err(AccountsError::NotFound(format!("no app {app}")));
        }
        let mut state = self.lock();
        self.books.put_app(&record)?;
        state.apps.insert(record.id.clone(), record.clone());
        Ok(record)
    }

    /// Issues a key for `app`; the plaintext is returned once and never stored.
    pub async fn create_key(
        &self,
        app: &str,
        budgets: Budgets,
        now_ms: u64,
    ) -> Result<(String, KeyRecord), AccountsError> {
        let plaintext = new_key();
        let record = self.install_key(app, &plaintext, budgets, now_ms).await?;
        Ok((plaintext, record))
    }

    /// Installs a known key (config bootstrap keys). Idempotent.
    pub async fn install_key(
        &self,
        app: &str,
        plaintext: &str,
        budgets: Budgets,
        now_ms: u64,
    ) -> Result<KeyRecord, AccountsError> {
        let hash = key_hash(plaintext);
        {
            let state = self.lock();
            if !state.apps.contains_key(app) {
                return Err(AccountsError::NotFound(format!("no app {app}")));
            }
            if let Some(existing) = state.keys.get(&hash) {
                return Ok(existing.clone());
            }
        }
        let mut record = KeyRecord {
            id: key_id_of(&hash),
            app: app.to_string(),
            sha256: hash,
            budgets,
            created_at_ms: now_ms,
            revoked_at_ms: None,
        };
        if let Some(shared) = &self.shared {
            // Another replica may have installed it first: theirs stands.
            record = shared.pg.install_key(&record).await?;
        }
        let mut state = self.lock();
        if let Some(existing) = state.keys.get(&hash) {
            return Ok(existing.clone());
        }
        self.books.put_key(&record)?;
        state.key_hash_by_id.insert(record.id.clone(), hash);
        state.keys.insert(hash, record.clone());
        Ok(record)
    }

    pub fn keys(&self, app: &str) -> Vec<KeyRecord> {
        let state = self.lock();
        let mut keys: Vec<KeyRecord> = state
            .keys
            .values()
            .filter(|k| k.app == app)
            .cloned()
            .collect();
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        keys
    }

    /// Revokes a key. On shared books every replica refuses it within
    /// [`FOLLOW_INTERVAL`] (plus the time of its follow query).
    pub async fn revoke_key(&self, key_id: &str, now_ms: u64) -> Result<KeyRecord, AccountsError> {
        let not_found = || AccountsError::NotFound(format!("no key {key_id}"));
        let shared_record = match &self.shared {
            Some(shared) => Some(
                shared
                    .pg
                    .revoke_key(key_id, now_ms)
                    .await?
                    .ok_or_else(not_found)?,
            ),
            None => None,
        };
        let mut state = self.lock();
        let hash = match &shared_record {
            Some(k) => k.sha256,
            None => *state.key_hash_by_id.get(key_id).ok_or_else(not_found)?,
        };
        let key = match shared_record {
            Some(k) => k,
            None => {
                let mut k = state.keys.get(&hash).cloned().ok_or_else(not_found)?;
                if k.revoked_at_ms.is_none() {
                    k.revoked_at_ms = Some(now_ms);
                }
                k
            }
        };
        self.books.put_key(&key)?;
        state.key_hash_by_id.insert(key.id.clone(), hash);
        state.keys.insert(hash, key.clone());
        Ok(key)
    }

    pub async fn top_up(
        &self,
        app: &str,
        amount: NanoUsd,
        now_ms: u64,
    ) -> Result<i128, AccountsError> {
        if self.app(app).is_none() {
            return Err(AccountsError::NotFound(format!("no app {app}")));
        }
        if amount == 0 {
            return Err(AccountsError::invalid(
                "amount must be positive",
                "amount_nano_usd",
            ));
        }
        let topup = TopUp {
            app: app.to_string(),
            amount,
            at_ms: now_ms,
        };
        match &self.shared {
            Some(shared) => {
                let (id, _) = shared
                    .pg
                    .add_topup(&topup)
                    .await?
                    .ok_or_else(|| AccountsError::NotFound(format!("no app {app}")))?;
                let mut state = self.lock();
                if self.books.put_topup(id, &topup)? {
                    *state.topped_up.entry(app.to_string()).or_default() += u128::from(amount);
                }
                Ok(state.balance(app))
            }
            None => {
                let mut state = self.lock();
                self.books.add_topup(&topup)?;
                *state.topped_up.entry(app.to_string()).or_default() += u128::from(amount);
                Ok(state.balance(app))
            }
        }
    }

    // ---- replicas ----

    /// Reads what every replica committed since the last call into the
    /// mirror and the in-memory view, until caught up. Returns how many
    /// rows it applied. A no-op on embedded books.
    pub async fn follow(self: &Arc<Self>) -> Result<usize, AccountsError> {
        let Some(shared) = &self.shared else {
            return Ok(0);
        };
        let _one = shared.following.lock().await;
        let coordinators = shared.pg.coordinators().await?;
        *lock(&shared.coordinators) = coordinators;
        let mut applied = 0;
        loop {
            let from = shared.cursor.load(std::sync::atomic::Ordering::Acquire);
            let changes = shared.pg.changes(from).await?;
            let more = changes.more;
            let next = changes.next;
            let this = self.clone();
            applied += tokio::task::spawn_blocking(move || this.apply(changes))
                .await
                .map_err(|e| AccountsError::Internal(format!("apply shared changes: {e}")))??;
            self.books.put_meta(CURSOR_META, &next.to_be_bytes())?;
            shared
                .cursor
                .store(next, std::sync::atomic::Ordering::Release);
            if !more {
                return Ok(applied);
            }
        }
    }

    /// Applies followed rows to the mirror and the view. An entry is
    /// booked in the view only by whoever inserts it into the mirror (this
    /// replica's own commit, or this), so it counts once. Blocking.
    fn apply(&self, changes: sharenet_ledger::pg::Changes) -> Result<usize, AccountsError> {
        let mut applied = 0;
        for app in changes.apps {
            self.books.put_app(&app)?;
            self.lock().apps.insert(app.id.clone(), app);
            applied += 1;
        }
        for key in changes.keys {
            self.books.put_key(&key)?;
            let mut state = self.lock();
            state.key_hash_by_id.insert(key.id.clone(), key.sha256);
            state.keys.insert(key.sha256, key);
            applied += 1;
        }
        for (id, t) in changes.topups {
            if self.books.put_topup(id, &t)? {
                *self.lock().topped_up.entry(t.app.clone()).or_default() += u128::from(t.amount);
                applied += 1;
            }
        }
        for s in changes.statements {
            if self.books.statement(&s.label)?.is_none() {
                self.books.put_statement(&s)?;
                applied += 1;
            }
        }
        for e in changes.entries {
            match self.books.record(&e) {
                Ok(()) => {
                    let key_id = e.key_id.clone();
                    self.lock().book(&e, &key_id);
                    applied += 1;
                }
                Err(sharenet_ledger::StoreError::Duplicate(_)) => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(applied)
    }

    /// A replica's background work until `shutdown`: following the shared
    /// books every [`FOLLOW_INTERVAL`], releasing dropped holds, and
    /// deleting expired ones. Returns at once on embedded books.
    pub async fn run_shared(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let Some(shared) = &self.shared else { return };
        let Some(mut releases) = lock(&shared.release_rx).take() else {
            return;
        };
        let pg = shared.pg.clone();
        let release_worker = {
            let shutdown = shutdown.clone();
            async move {
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        id = releases.recv() => match id {
                            None => return,
                            Some(id) => if let Err(e) = pg.release(id).await {
                                tracing::warn!(hold = id, error = %e, "release a hold (it will expire)");
                            },
                        },
                    }
                }
            }
        };
        let follower = async {
            let mut follow = tokio::time::interval(FOLLOW_INTERVAL);
            let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
            follow.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = follow.tick() => if let Err(e) = self.follow().await {
                        tracing::warn!(error = %e, "follow the shared books");
                    },
                    _ = sweep.tick() => if let Err(e) = shared.pg.sweep_holds(crate::core::clock::now_ms()).await {
                        tracing::warn!(error = %e, "sweep expired holds");
                    },
                }
            }
        };
        tokio::join!(release_worker, follower);
    }
}

/// The app's balance and every budget (app, key, end customer; day,
/// month, total) must cover `amount` on top of what is spent and held.
/// Returns the scopes the hold is counted in.
fn check_funds(
    view: &(impl FundsView + ?Sized),
    app: &AppRecord,
    key_budgets: Budgets,
    a: &Admission<'_>,
    amount: u128,
) -> Result<Vec<Scope>, AccountsError> {
    let balance = view.balance(&app.id);
    if balance < amount as i128 {
        return Err(AccountsError::OverBudget(format!(
            "app {}'s balance of {} nano-USD does not cover this request's worst case of {} nano-USD (max_tokens {} at up to {} nano-USD per output token); top up or lower max_tokens",
            app.id,
            balance.max(0),
            amount,
            a.max_output_tokens,
            a.max_price_out
        )));
    }
    let all = scopes(&app.id, &a.principal.key_id, a.end_customer);
    for scope in &all {
        let budgets = match scope {
            Scope::App(_) => app.budgets,
            Scope::Key(_) => key_budgets,
            Scope::Customer(..) => app.customer_budgets,
        };
        let held = view.held(scope);
        for (w, limit, name) in [
            (windows(a.now_ms)[0], budgets.daily, "daily"),
            (windows(a.now_ms)[1], budgets.monthly, "monthly"),
            (Window::Total, budgets.total, "total"),
        ] {
            let Some(limit) = limit else { continue };
            let spent = view.spent(scope, w);
            if spent + held + amount > u128::from(limit) {
                return Err(AccountsError::OverBudget(format!(
                    "{}'s {name} budget of {limit} nano-USD would be exceeded ({} spent, {} held, this request may cost up to {})",
                    scope.describe(),
                    spent,
                    held,
                    amount
                )));
            }
        }
    }
    Ok(all)
}

impl Hold {
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    pub fn end_customer(&self) -> Option<&str> {
        self.end_customer.as_deref()
    }

    /// The most this hold lets [`Hold::commit_async`] book.
    pub fn amount(&self) -> u128 {
        self.amount
    }

    /// Prices the job from its receipt, makes the ledger entry durable,
    /// then releases the hold and books the charge in one step, so no
    /// admission ever sees the money neither held nor charged. A charge
    /// above the hold is refused before anything is written (the hold is
    /// released on drop), and a replayed job id is refused by the books.
    ///
    /// Embedded: the ledger's commit thread makes the entry durable while
    /// no runtime thread waits for it; the hold is swapped for the charge
    /// under the accounts lock. Shared: the database's transaction does
    /// both, then the mirror and the view take the entry.
    ///
    /// Run it in a task of its own (`tokio::spawn`): once the entry is
    /// handed to the books it must be booked here too, whatever happens
    /// to the caller.
    pub async fn commit_async(
        mut self,
        receipt: CountersignedReceipt,
        now_ms: u64,
    ) -> Result<LedgerEntry, CommitError> {
        let entry = self.entry(receipt, now_ms)?;
        if let Some(shared) = &self.accounts.shared {
            let scopes = scopes(
                &self.principal.app,
                &self.principal.key_id,
                self.end_customer.as_deref(),
            );
            let booked = shared
                .pg
                .commit(Booking {
                    entry: entry.clone(),
                    hold_id: self.shared_id,
                    scopes: scopes.iter().map(Scope::key).collect(),
                    windows: windows(entry.recorded_at_ms)
                        .iter()
                        .map(Window::key)
                        .collect(),
                })
                .await;
            // The database released the hold in the same transaction (or,
            // on an error, it expires): nothing to release here.
            self.committed =
                booked.is_ok() || matches!(booked, Err(sharenet_ledger::StoreError::Duplicate(_)));
            booked.map_err(CommitError::Store)?;
            // Acknowledged: the mirror and the view take it now (or the
            // follower does, if the mirror refuses it here).
            match self.record_locally(&entry).await {
                Ok(true) => {
                    let key_id = entry.key_id.clone();
                    self.accounts.lock().book(&entry, &key_id);
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "mirror a booked entry (the follower will)"),
            }
            return Ok(entry);
        }
        self.record_locally(&entry)
            .await?
            .then_some(())
            .ok_or(CommitError::Store(sharenet_ledger::StoreError::Duplicate(
                entry.job_id(),
            )))?;
        Ok(self.booked(entry))
    }

    /// Records `entry` in the local books through their commit thread;
    /// false when they already hold it.
    async fn record_locally(&self, entry: &LedgerEntry) -> Result<bool, CommitError> {
        let (done, durable) = tokio::sync::oneshot::channel();
        self.accounts
            .books
            .record_then(
                entry,
                Box::new(move |r| {
                    let _ = done.send(r);
                }),
            )
            .map_err(CommitError::Store)?;
        match durable.await.map_err(|_| {
            CommitError::Store(sharenet_ledger::StoreError::Backend(
                "the commit thread stopped".into(),
            ))
        })? {
            Ok(()) => Ok(true),
            Err(sharenet_ledger::StoreError::Duplicate(_)) => Ok(false),
            Err(e) => Err(CommitError::Store(e)),
        }
    }

    /// The ledger entry for `receipt`, priced; refused above the hold.
    fn entry(
        &self,
        receipt: CountersignedReceipt,
        now_ms: u64,
    ) -> Result<LedgerEntry, CommitError> {
        let accounts = &self.accounts;
        let margin = accounts
            .lock()
            .apps
            .get(&self.principal.app)
            .map(|a| a.margin)
            .unwrap_or_default();
        let charge: Charge = sharenet_market::pricing::charge_receipt(
            receipt.receipt(),
            accounts.network_fee_bps,
            &margin,
        )
        .map_err(|e| CommitError::Price(e.to_string()))?;
        if u128::from(charge.total) > self.amount {
            return Err(CommitError::OverHold {
                charge: charge.total,
                hold: self.amount,
            });
        }
        Ok(LedgerEntry {
            receipt,
            app: self.principal.app.clone(),
            key_id: self.principal.key_id.clone(),
            end_customer: self.end_customer.clone(),
            charge,
            recorded_at_ms: now_ms.max(self.at_ms),
        })
    }

    /// The entry is durable: swaps the hold for the real charge in one step.
    fn booked(mut self, entry: LedgerEntry) -> LedgerEntry {
        let accounts = self.accounts.clone();
        let mut state = accounts.lock();
        release_in(&mut state, &self);
        state.book(&entry, &self.principal.key_id);
        self.committed = true;
        entry
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
}

/// Takes `hold`'s amount off every scope it was counted in.
fn release_in(state: &mut State, hold: &Hold) {
    for scope in scopes(
        &hold.principal.app,
        &hold.principal.key_id,
        hold.end_customer.as_deref(),
    ) {
        // An entry at zero goes, so holds of end customers long gone do
        // not pile up.
        if let Some(h) = state.held.get_mut(&scope) {
            *h = h.saturating_sub(hold.amount);
            if *h == 0 {
                state.held.remove(&scope);
            }
        }
    }
}

/// Bootstrap config: the default app the configured keys belong to.
pub struct Bootstrap {
    pub app: String,
    pub balance: NanoUsd,
}

/// For configs that list plain keys: make sure `bootstrap.app` exists with
/// those keys and, on first creation, the given balance.
pub async fn bootstrap(
    accounts: &Arc<Accounts>,
    keys: &[String],
    b: &Bootstrap,
    now_ms: u64,
) -> Result<(), AccountsError> {
    if keys.is_empty() {
        return Ok(());
    }
    ensure_operator_app(
        accounts,
        &b.app,
        "keys from the coordinator config",
        b.balance,
        now_ms,
    )
    .await?;
    for k in keys {
        accounts
            .install_key(&b.app, k, Budgets::default(), now_ms)
            .await?;
    }
    Ok(())
}

/// Creates an operator-owned app (no keys, no margin) with a starting
/// balance, unless it exists (on shared books: unless any replica made
/// it, even at the same moment).
pub async fn ensure_operator_app(
    accounts: &Arc<Accounts>,
    id: &str,
    name: &str,
    balance: NanoUsd,
    now_ms: u64,
) -> Result<(), AccountsError> {
    if accounts.app(id).is_some() {
        return Ok(());
    }
    let created = accounts
        .create_app(AppRecord {
            name: name.into(),
            ..AppRecord::new(id, "operator", Margin::default(), now_ms)
        })
        .await;
    match created {
        Ok(_) => {}
        // Another replica created it: take it from the shared books.
        Err(AccountsError::Invalid { param: Some(p), .. })
            if p == "id" && accounts.shared().is_some() =>
        {
            accounts.follow().await?;
            return Ok(());
        }
        Err(e) => return Err(e),
    }
    if balance > 0 {
        accounts.top_up(id, balance, now_ms).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
    use sharenet_ledger::RateLimits;
    use sharenet_ledger::testing::TestPostgres;
    use sharenet_proto::{JobId, Receipt, SignedReceipt, SigningKey, job_cost, public_key_of};

    fn app(id: &str, margin_bps: u32, per_mtok: u64) -> AppRecord {
        let margin = Margin {
            percent_bps: margin_bps,
            per_mtok,
        };
        AppRecord::new(id, "b", margin, 0)
    }

    fn receipt(job: u32, input: u32, output: u32, pin: u64, pout: u64) -> CountersignedReceipt {
        let node = SigningKey::from_bytes(&[1; 32]);
        let coord = SigningKey::from_bytes(&[2; 32]);
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&job.to_be_bytes());
        let r = Receipt {
            job_id: JobId(id),
            node: public_key_of(&node),
            coordinator: public_key_of(&coord),
            model: "m".into(),
            input_tokens: input,
            output_tokens: output,
            price_in: pin,
            price_out: pout,
            amount: job_cost(input, output, pin, pout).unwrap(),
            started_at_ms: 1,
            finished_at_ms: 2,
            request_digest: [0; 32],
            response_digest: [0; 32],
        };
        CountersignedReceipt::countersign(SignedReceipt::sign(r, &node).unwrap(), &coord).unwrap()
    }

    fn coordinator_key() -> sharenet_proto::PublicKey {
        public_key_of(&SigningKey::from_bytes(&[2; 32]))
    }

    /// Where the accounts under test keep their books: every test here
    /// runs on both.
    #[derive(Debug, Clone, Copy)]
    enum Backend {
        /// sled, in memory under one lock.
        Embedded,
        /// PostgreSQL (a throwaway cluster), as one replica of several.
        Shared,
    }

    const BACKENDS: [Backend; 2] = [Backend::Embedded, Backend::Shared];

    /// A database for one test's replicas (one cluster per test; each
    /// proptest case gets a database of its own).
    struct Database {
        pg: TestPostgres,
        next: std::sync::atomic::AtomicU32,
    }

    impl Database {
        fn start() -> Self {
            Self {
                pg: TestPostgres::start().unwrap(),
                next: 0.into(),
            }
        }

        fn fresh(&self) -> String {
            let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.pg.create_database(&format!("case{n}")).unwrap()
        }
    }

    /// A replica (or the embedded books) with its mirror's folder.
    struct Replica {
        accounts: Arc<Accounts>,
        _dir: tempfile::TempDir,
    }

    async fn replica_on(url: Option<&str>, fee_bps: u32) -> Replica {
        replica_of(url, fee_bps, 1).await
    }

    /// As [`replica_on`], one of `replicas`.
    async fn replica_of(url: Option<&str>, fee_bps: u32, replicas: u32) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let books = Arc::new(Books::open(dir.path()).unwrap());
        let accounts = match url {
            None => Arc::new(Accounts::load(books, fee_bps, &coordinator_key()).unwrap()),
            Some(url) => {
                let pg = Arc::new(PgLedger::connect(url, 8).await.unwrap());
                Accounts::load_shared(
                    books,
                    pg,
                    SharedOptions {
                        replicas,
                        hold_ttl_ms: 600_000,
                    },
                    fee_bps,
                    &coordinator_key(),
                )
                .await
                .unwrap()
            }
        };
        Replica {
            accounts,
            _dir: dir,
        }
    }

    /// What is held for `app` now: in memory, or in the shared books.
    async fn held(accounts: &Accounts, app: &str) -> u128 {
        match accounts.shared() {
            None => accounts
                .lock()
                .held
                .get(&Scope::App(app.into()))
                .copied()
                .unwrap_or(0),
            Some(pg) => u128::from(pg.funds(app, 1).await.unwrap().unwrap().2),
        }
    }

    /// The app's balance as the money check sees it (shared: the
    /// database's, with every replica's holds).
    async fn balance(accounts: &Accounts, app: &str) -> i128 {
        match accounts.shared() {
            None => accounts.balance(app),
            Some(pg) => {
                let (t, c, h) = pg.funds(app, 1).await.unwrap().unwrap();
                i128::from(t) - i128::from(c) - i128::from(h)
            }
        }
    }

    /// Dropped holds are released by the replica's worker: wait for it.
    async fn settled_holds(accounts: &Arc<Accounts>, app: &str) {
        if accounts.shared().is_some() {
            let worker = tokio::spawn(
                accounts
                    .clone()
                    .run_shared(tokio_util::sync::CancellationToken::new()),
            );
            for _ in 0..200 {
                if held(accounts, app).await == 0 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            worker.abort();
        }
    }

    /// Runs `test` on each backend (shared: on a fresh database), in a
    /// runtime of its own.
    fn on_both<F: std::future::Future<Output = ()>>(test: impl Fn(Backend, Option<String>) -> F) {
        for backend in BACKENDS {
            let db = matches!(backend, Backend::Shared).then(Database::start);
            runtime().block_on(test(backend, db.as_ref().map(Database::fresh)));
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    /// One request: its bounds, what it really used, and how it ended.
    #[derive(Debug, Clone)]
    struct Req {
        max_in: u32,
        max_out: u32,
        price_in: u64,
        price_out: u64,
        used_in: u32,
        used_out: u32,
        finishes: bool,
        customer: Option<u8>,
    }

    fn req() -> impl Strategy<Value = Req> {
        (
            1u32..400,
            1u32..400,
            1u64..1000,
            1u64..2000,
            0.0f64..=1.0,
            0.0f64..=1.0,
            any::<bool>(),
            proptest::option::of(0u8..3),
        )
            .prop_map(
                |(max_in, max_out, price_in, price_out, fi, fo, finishes, customer)| Req {
                    max_in,
                    max_out,
                    price_in,
                    price_out,
                    used_in: ((f64::from(max_in) * fi) as u32).max(1),
                    used_out: (f64::from(max_out) * fo) as u32,
                    finishes,
                    customer,
                },
            )
    }

    /// Runs `cases` of `strategy` through `body` on each backend.
    fn check_on_both<S: Strategy>(
        cases: u32,
        strategy: S,
        body: impl Fn(Option<String>, S::Value) -> Result<(), TestCaseError>,
    ) where
        S::Value: std::fmt::Debug,
    {
        for backend in BACKENDS {
            let db = matches!(backend, Backend::Shared).then(Database::start);
            let mut runner = TestRunner::new(ProptestConfig {
                cases,
                failure_persistence: None,
                ..ProptestConfig::default()
            });
            runner
                .run(&strategy, |v| body(db.as_ref().map(Database::fresh), v))
                .unwrap_or_else(|e| panic!("{backend:?}: {e}"));
        }
    }

    /// Over random streams of requests (finished, failed before a
    /// receipt, held concurrently): the balance never goes below zero,
    /// every charge is provider cost + fee + margin exactly, and the
    /// balance is top-ups minus charges once every hold is gone.
    #[test]
    fn money_is_conserved_and_never_overspent() {
        let strategy = (
            proptest::collection::vec(req(), 1..24),
            1_000u64..3_000_000,
            0u32..3000,
            0u64..50_000,
            0u32..2000,
        );
        check_on_both(
            12,
            strategy,
            |url, (reqs, topup, margin_bps, per_mtok, fee_bps)| {
                runtime().block_on(async {
                    let r = replica_on(url.as_deref(), fee_bps).await;
                    let accounts = &r.accounts;
                    let principal = fund(&[accounts], app("a", margin_bps, per_mtok), topup).await;
                    let mut kept = Vec::new();
                    let mut charged = 0u128;
                    for (i, r) in reqs.iter().enumerate() {
                        let customer = r.customer.map(|c| format!("c{c}"));
                        let admitted = accounts
                            .admit(&Admission {
                                principal: &principal,
                                end_customer: customer.as_deref(),
                                max_input_tokens: u64::from(r.max_in),
                                max_output_tokens: u64::from(r.max_out),
                                max_price_in: r.price_in,
                                max_price_out: r.price_out,
                                now_ms: 1,
                            })
                            .await;
                        prop_assert!(balance(accounts, "a").await >= 0);
                        let Ok(hold) = admitted else { continue };
                        if !r.finishes {
                            // Keep some holds alive across later admissions.
                            kept.push(hold);
                            continue;
                        }
                        let entry = hold
                            .commit_async(
                                receipt(i as u32, r.used_in, r.used_out, r.price_in, r.price_out),
                                1,
                            )
                            .await
                            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                        let c = entry.charge;
                        prop_assert_eq!(c.total, c.provider_cost + c.network_fee + c.margin);
                        charged += u128::from(c.total);
                        prop_assert!(balance(accounts, "a").await >= 0);
                    }
                    drop(kept);
                    settled_holds(accounts, "a").await;
                    prop_assert_eq!(
                        balance(accounts, "a").await,
                        i128::from(topup) - charged as i128
                    );
                    prop_assert_eq!(accounts.balance("a"), i128::from(topup) - charged as i128);
                    // And the books say the same after a restart (shared: a new
                    // replica with an empty mirror).
                    let reloaded = match &url {
                        None => {
                            Accounts::load(accounts.books().clone(), fee_bps, &coordinator_key())
                                .unwrap()
                                .balance("a")
                        }
                        Some(url) => replica_on(Some(url), fee_bps).await.accounts.balance("a"),
                    };
                    prop_assert_eq!(reloaded, i128::from(topup) - charged as i128);
                    Ok(())
                })
            },
        );
    }

    /// Whatever a node signs (any token counts, any prices up to the
    /// advert's), a commit never books more than its hold, and no
    /// balance ever goes below zero. (Issue 12, item 1: before the
    /// bound, a receipt for 4e9 input tokens drained the balance.)
    #[test]
    fn a_commit_never_books_more_than_its_hold() {
        let strategy = (
            proptest::collection::vec((0u32..=u32::MAX, 0u32..5000), 1..16),
            1_000_000u64..100_000_000,
        );
        check_on_both(12, strategy, |url, (claims, topup)| {
            runtime().block_on(async {
                let r = replica_on(url.as_deref(), 500).await;
                let accounts = &r.accounts;
                let principal = fund(&[accounts], app("a", 1000, 0), topup).await;
                for (i, (input, output)) in claims.into_iter().enumerate() {
                    let Ok(hold) = accounts
                        .admit(&Admission {
                            principal: &principal,
                            end_customer: None,
                            max_input_tokens: 100,
                            max_output_tokens: 50,
                            max_price_in: 3,
                            max_price_out: 7,
                            now_ms: 1,
                        })
                        .await
                    else {
                        continue;
                    };
                    let bound = hold.amount();
                    match hold
                        .commit_async(receipt(i as u32, input, output, 3, 7), 1)
                        .await
                    {
                        Ok(entry) => prop_assert!(u128::from(entry.charge.total) <= bound),
                        Err(CommitError::OverHold { charge, hold }) => {
                            prop_assert!(u128::from(charge) > hold)
                        }
                        Err(e) => prop_assert!(matches!(e, CommitError::Price(_)), "{e:?}"),
                    }
                    prop_assert!(balance(accounts, "a").await >= 0);
                }
                Ok(())
            })
        });
    }

    /// An admission whose worst case is 200 nano-USD (100 tokens in and
    /// 100 out at 1 each).
    fn worst_200(principal: &Principal) -> Admission<'_> {
        Admission {
            principal,
            end_customer: None,
            max_input_tokens: 100,
            max_output_tokens: 100,
            max_price_in: 1,
            max_price_out: 1,
            now_ms: 1,
        }
    }

    /// App `id` (no margin) topped up with `topup`, and one key, on the
    /// first replica; the others follow it.
    async fn funded(replicas: &[&Arc<Accounts>], id: &str, topup: u64) -> Principal {
        fund(replicas, app(id, 0, 0), topup).await
    }

    /// [`funded`] for any app record.
    async fn fund(replicas: &[&Arc<Accounts>], record: AppRecord, topup: u64) -> Principal {
        let first = replicas[0];
        let id = record.id.clone();
        first.create_app(record).await.unwrap();
        first.top_up(&id, topup, 0).await.unwrap();
        let key = first
            .install_key(&id, "sk-test-0123456789abcdef", Budgets::default(), 0)
            .await
            .unwrap();
        for r in &replicas[1..] {
            r.follow().await.unwrap();
        }
        Principal {
            app: id,
            key_id: key.id,
        }
    }

    /// Commits and admissions from many tasks at once (issue 12, item 2),
    /// and on shared books from two replicas at once (issue 16): the hold
    /// is released and the charge booked in one step, so at every moment
    /// top-ups >= charges + holds, and the app never spends more than it
    /// topped up.
    #[test]
    fn concurrent_commits_and_admissions_never_overspend() {
        on_both(|backend, url| async move {
            let a = replica_on(url.as_deref(), 0).await;
            let b = replica_on(url.as_deref(), 0).await;
            let replicas: Vec<&Arc<Accounts>> = match backend {
                Backend::Embedded => vec![&a.accounts],
                Backend::Shared => vec![&a.accounts, &b.accounts],
            };
            // Room for 40 worst cases (100 in + 100 out at 1 each).
            let topup = 40 * 200;
            let principal = funded(&replicas, "a", topup).await;
            let next_job = Arc::new(std::sync::atomic::AtomicU32::new(0));
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            // A watcher reads the money over and over.
            let watcher = {
                let (accounts, stop) = (replicas[0].clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        assert!(balance(&accounts, "a").await >= 0);
                        tokio::task::yield_now().await;
                    }
                })
            };
            let workers: Vec<_> = (0..8)
                .map(|w| {
                    let accounts = replicas[w % replicas.len()].clone();
                    let (principal, next_job) = (principal.clone(), next_job.clone());
                    tokio::spawn(async move {
                        let mut refused = 0;
                        for _ in 0..20 {
                            match accounts.admit(&worst_200(&principal)).await {
                                Ok(hold) => {
                                    let id =
                                        next_job.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    hold.commit_async(receipt(id, 100, 100, 1, 1), 1)
                                        .await
                                        .unwrap();
                                }
                                Err(AccountsError::OverBudget(_)) => refused += 1,
                                Err(e) => panic!("{e}"),
                            }
                        }
                        refused
                    })
                })
                .collect();
            let mut refused = 0;
            for w in workers {
                refused += w.await.unwrap();
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            watcher.await.unwrap();
            assert_eq!(
                refused, 120,
                "{backend:?}: 160 tries, 40 admitted, every refusal over budget"
            );
            assert_eq!(
                balance(replicas[0], "a").await,
                0,
                "{backend:?}: exactly the 40 jobs the balance covered"
            );
            for r in &replicas {
                r.follow().await.unwrap();
                assert_eq!(
                    r.books().entry_count(),
                    40,
                    "{backend:?}: each mirror has every entry"
                );
                assert_eq!(r.balance("a"), 0, "{backend:?}: each view agrees");
            }
        });
    }

    #[test]
    fn a_commit_books_once_durable_and_a_replay_is_refused() {
        on_both(|backend, url| async move {
            let r = replica_on(url.as_deref(), 0).await;
            let accounts = &r.accounts;
            let principal = funded(&[accounts], "a", 10_000).await;
            let admission = worst_200(&principal);
            let hold = accounts.admit(&admission).await.unwrap();
            assert_eq!(held(accounts, "a").await, 200);
            let entry = tokio::spawn(hold.commit_async(receipt(1, 60, 40, 1, 1), 1))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(held(accounts, "a").await, 0);
            let after = balance(accounts, "a").await;
            assert_eq!(after, 10_000 - i128::from(entry.charge.total));
            assert_eq!(accounts.books().entry_count(), 1);
            // The same job again: the books refuse it, nothing is charged and
            // the hold is released.
            let hold = accounts.admit(&admission).await.unwrap();
            let replay = tokio::spawn(hold.commit_async(receipt(1, 60, 40, 1, 1), 1))
                .await
                .unwrap();
            assert!(
                matches!(
                    replay,
                    Err(CommitError::Store(sharenet_ledger::StoreError::Duplicate(
                        _
                    )))
                ),
                "{backend:?}: {replay:?}"
            );
            assert_eq!(held(accounts, "a").await, 0, "{backend:?}");
            assert_eq!(balance(accounts, "a").await, after, "{backend:?}");
        });
    }

    /// Issue 12, item 15: a builder churning end-customer ids used to
    /// clear every app's customer limiters at the cap (resetting other
    /// builders' limits) and left a held entry per customer forever.
    #[test]
    fn churning_customer_ids_resets_no_other_app_and_leaves_no_holds() {
        on_both(|backend, url| async move {
            let r = replica_on(url.as_deref(), 0).await;
            let accounts = &r.accounts;
            let limited = |id: &str| AppRecord {
                customer_limits: RateLimits {
                    requests_per_minute: Some(1),
                    tokens_per_minute: None,
                },
                ..app(id, 0, 0)
            };
            let mut principals = Vec::new();
            for (id, key) in [
                ("greedy", "sk-test-greedy-000000"),
                ("victim", "sk-test-victim-000000"),
            ] {
                accounts.create_app(limited(id)).await.unwrap();
                accounts.top_up(id, 1_000_000_000, 0).await.unwrap();
                let k = accounts
                    .install_key(id, key, Budgets::default(), 0)
                    .await
                    .unwrap();
                principals.push(Principal {
                    app: id.into(),
                    key_id: k.id,
                });
            }
            fn admission<'a>(p: &'a Principal, customer: &'a str) -> Admission<'a> {
                Admission {
                    principal: p,
                    end_customer: Some(customer),
                    max_input_tokens: 10,
                    max_output_tokens: 10,
                    max_price_in: 1,
                    max_price_out: 1,
                    now_ms: 1,
                }
            }
            drop(
                accounts
                    .admit(&admission(&principals[1], "alice"))
                    .await
                    .unwrap(),
            );
            assert!(matches!(
                accounts.admit(&admission(&principals[1], "alice")).await,
                Err(AccountsError::RateLimited { .. })
            ));
            // Fewer customers on the database: each admission is a
            // transaction there.
            let churn = match backend {
                Backend::Embedded => MAX_CUSTOMER_LIMITERS_PER_APP + 10,
                Backend::Shared => 300,
            };
            for i in 0..churn {
                let c = format!("throwaway-{i}");
                drop(
                    accounts
                        .admit(&admission(&principals[0], &c))
                        .await
                        .unwrap(),
                );
            }
            assert!(
                matches!(
                    accounts.admit(&admission(&principals[1], "alice")).await,
                    Err(AccountsError::RateLimited { .. })
                ),
                "{backend:?}: another app's churn did not reset this app's limit"
            );
            settled_holds(accounts, "greedy").await;
            assert_eq!(
                held(accounts, "greedy").await,
                0,
                "{backend:?}: released holds leave nothing held"
            );
            let state = accounts.lock();
            assert!(
                state.held.is_empty(),
                "{backend:?}: released holds leave no entries"
            );
            assert!(
                state.customer_limiters["greedy"].len() <= MAX_CUSTOMER_LIMITERS_PER_APP,
                "{backend:?}: the churning app's limiters stay capped"
            );
        });
    }

    /// Issue 16: a replica that dies mid-job leaves its hold behind; it
    /// stops counting at its expiry and the sweep deletes it.
    #[test]
    fn a_dead_replicas_hold_expires() {
        let db = Database::start();
        runtime().block_on(async {
            let url = db.fresh();
            let a = replica_on(Some(&url), 0).await;
            let principal = funded(&[&a.accounts], "a", 200).await;
            let hold = a.accounts.admit(&worst_200(&principal)).await.unwrap();
            // The replica dies: its hold is never released.
            std::mem::forget(hold);
            assert!(matches!(
                a.accounts.admit(&worst_200(&principal)).await,
                Err(AccountsError::OverBudget(_))
            ));
            let pg = a.accounts.shared().unwrap();
            let later = 1 + 600_000;
            assert_eq!(pg.funds("a", later).await.unwrap().unwrap().2, 0, "expired");
            assert_eq!(pg.sweep_holds(later).await.unwrap(), 1);
            let admitted = a
                .accounts
                .admit(&Admission {
                    now_ms: later,
                    ..worst_200(&principal)
                })
                .await;
            assert!(admitted.is_ok(), "{:?}", admitted.err());
        });
    }

    /// Issue 16: a key revoked through one replica is refused by the
    /// other once it has followed (within FOLLOW_INTERVAL when running).
    #[test]
    fn a_key_revoked_on_one_replica_is_refused_by_the_other() {
        let db = Database::start();
        runtime().block_on(async {
            let url = db.fresh();
            let a = replica_on(Some(&url), 0).await;
            let b = replica_on(Some(&url), 0).await;
            funded(&[&a.accounts, &b.accounts], "a", 1_000).await;
            let key = "sk-test-0123456789abcdef";
            let id = b.accounts.authenticate(key).unwrap().key_id;
            let stop = tokio_util::sync::CancellationToken::new();
            let follower = tokio::spawn(b.accounts.clone().run_shared(stop.clone()));
            a.accounts.revoke_key(&id, 5).await.unwrap();
            let start = std::time::Instant::now();
            while b.accounts.authenticate(key).is_ok() {
                assert!(
                    start.elapsed() < std::time::Duration::from_secs(5),
                    "still accepted"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            assert!(
                start.elapsed() < FOLLOW_INTERVAL * 4,
                "{:?}",
                start.elapsed()
            );
            stop.cancel();
            follower.await.unwrap();
        });
    }

    /// Issue 16: rate limits hold across replicas as shares: with two
    /// replicas, each admits half of a key's requests per minute, so the
    /// deployment admits the limit and no more.
    #[test]
    fn each_replica_enforces_its_share_of_a_rate_limit() {
        let db = Database::start();
        runtime().block_on(async {
            let url = db.fresh();
            let a = replica_of(Some(&url), 0, 2).await;
            let b = replica_of(Some(&url), 0, 2).await;
            let limited = AppRecord {
                key_limits: RateLimits {
                    requests_per_minute: Some(4),
                    tokens_per_minute: None,
                },
                ..app("a", 0, 0)
            };
            let principal = fund(&[&a.accounts, &b.accounts], limited, 1_000_000).await;
            let mut admitted = 0;
            for replica in [&a.accounts, &b.accounts] {
                for _ in 0..3 {
                    match replica.admit(&worst_200(&principal)).await {
                        Ok(_) => admitted += 1,
                        Err(AccountsError::RateLimited { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            assert_eq!(admitted, 4, "two per replica: the key's limit across both");
        });
    }
}
