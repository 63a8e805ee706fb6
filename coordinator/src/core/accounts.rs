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

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use serde::Serialize;
use sharenet_ledger::{AppRecord, Books, Budgets, KeyRecord, LedgerEntry, RateLimits, TopUp};
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
    books: Arc<Books>,
    state: Mutex<State>,
    network_fee_bps: u32,
}

/// A worst-case amount reserved for one request; released on drop.
pub struct Hold {
    accounts: Arc<Accounts>,
    principal: Principal,
    end_customer: Option<String>,
    amount: u128,
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
        })
    }

    pub fn books(&self) -> &Arc<Books> {
        &self.books
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
    ) -> Option<Arc<DefaultDirectRateLimiter>> {
        let n = NonZeroU32::new(per_minute?)?;
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

    /// Rate limits, then a hold for the worst case (see the module docs):
    /// all under the accounts lock, so concurrent admissions see each
    /// other's holds.
    pub fn admit(self: &Arc<Self>, a: &Admission<'_>) -> Result<Hold, AccountsError> {
        let mut state = self.lock();
        let app =
            state.apps.get(&a.principal.app).cloned().ok_or_else(|| {
                AccountsError::Unauthorized("this key's app no longer exists".into())
            })?;
        Self::check_rate_limits(&mut state, &app, a)?;
        let worst = self.worst_case(&app, a)?;
        let amount = u128::from(worst.total);
        let all = Self::check_funds(&state, &app, a, amount)?;
        for scope in all {
            *state.held.entry(scope).or_default() += amount;
        }
        Ok(Hold {
            accounts: self.clone(),
            principal: a.principal.clone(),
            end_customer: a.end_customer.map(str::to_string),
            amount,
            committed: false,
        })
    }

    /// Requests and worst-case tokens per minute, per key and per end
    /// customer.
    fn check_rate_limits(
        state: &mut State,
        app: &AppRecord,
        a: &Admission<'_>,
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
            if let Some(l) = Self::limiter(state, scope, false, limits.requests_per_minute)
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
            if let Some(l) = Self::limiter(state, scope, true, limits.tokens_per_minute) {
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

    /// The app's balance and every budget (app, key, end customer; day,
    /// month, total) must cover `amount` on top of what is spent and held.
    /// Returns the scopes the hold is counted in.
    fn check_funds(
        state: &State,
        app: &AppRecord,
        a: &Admission<'_>,
        amount: u128,
    ) -> Result<Vec<Scope>, AccountsError> {
        let balance = state.balance(&app.id);
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
        let key_budgets = state
            .keys
            .get(
                state
                    .key_hash_by_id
                    .get(&a.principal.key_id)
                    .unwrap_or(&[0; 32]),
            )
            .map(|k| k.budgets)
            .unwrap_or_default();
        let all = scopes(&app.id, &a.principal.key_id, a.end_customer);
        for scope in &all {
            let budgets = match scope {
                Scope::App(_) => app.budgets,
                Scope::Key(_) => key_budgets,
                Scope::Customer(..) => app.customer_budgets,
            };
            let held = state.held.get(scope).copied().unwrap_or(0);
            for (w, limit, name) in [
                (windows(a.now_ms)[0], budgets.daily, "daily"),
                (windows(a.now_ms)[1], budgets.monthly, "monthly"),
                (Window::Total, budgets.total, "total"),
            ] {
                let Some(limit) = limit else { continue };
                let spent = state.spent.get(&(scope.clone(), w)).copied().unwrap_or(0);
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

    fn release(&self, hold: &Hold) {
        release_in(&mut self.lock(), hold);
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

    /// The app's balance (top-ups minus charges minus holds).
    pub fn balance(&self, app: &str) -> i128 {
        self.lock().balance(app)
    }

    // ---- operator actions ----

    /// Creates an app, after checking its id, builder and margin.
    pub fn create_app(&self, app: AppRecord) -> Result<AppRecord, AccountsError> {
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
        let mut state = self.lock();
        if state.apps.contains_key(&app.id) {
            return Err(AccountsError::invalid(
                format!("app {} already exists", app.id),
                "id",
            ));
        }
        self.books.put_app(&app)?;
        state.apps.insert(app.id.clone(), app.clone());
        Ok(app)
    }

    /// Replaces an app's routing rules (private pool, sensitive, spill-over).
    pub fn set_routing(
        &self,
        app: &str,
        routing: sharenet_ledger::AppRouting,
    ) -> Result<AppRecord, AccountsError> {
        let mut state = self.lock();
        let mut record = state
            .apps
            .get(app)
            .cloned()
            .ok_or_else(|| AccountsError::NotFound(format!("no app {app}")))?;
        record.routing = routing;
        self.books.put_app(&record)?;
        state.apps.insert(record.id.clone(), record.clone());
        Ok(record)
    }

    /// Issues a key for `app`; the plaintext is returned once and never stored.
    pub fn create_key(
        &self,
        app: &str,
        budgets: Budgets,
        now_ms: u64,
    ) -> Result<(String, KeyRecord), AccountsError> {
        let plaintext = new_key();
        let record = self.install_key(app, &plaintext, budgets, now_ms)?;
        Ok((plaintext, record))
    }

    /// Installs a known key (config bootstrap keys). Idempotent.
    pub fn install_key(
        &self,
        app: &str,
        plaintext: &str,
        budgets: Budgets,
        now_ms: u64,
    ) -> Result<KeyRecord, AccountsError> {
        let mut state = self.lock();
        if !state.apps.contains_key(app) {
            return Err(AccountsError::NotFound(format!("no app {app}")));
        }
        let hash = key_hash(plaintext);
        if let Some(existing) = state.keys.get(&hash) {
            return Ok(existing.clone());
        }
        let record = KeyRecord {
            id: key_id_of(&hash),
            app: app.to_string(),
            sha256: hash,
            budgets,
            created_at_ms: now_ms,
            revoked_at_ms: None,
        };
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

    pub fn revoke_key(&self, key_id: &str, now_ms: u64) -> Result<KeyRecord, AccountsError> {
        let mut state = self.lock();
        let hash = *state
            .key_hash_by_id
            .get(key_id)
            .ok_or_else(|| AccountsError::NotFound(format!("no key {key_id}")))?;
        let Some(key) = state.keys.get_mut(&hash) else {
            return Err(AccountsError::NotFound(format!("no key {key_id}")));
        };
        if key.revoked_at_ms.is_none() {
            key.revoked_at_ms = Some(now_ms);
        }
        let key = key.clone();
        self.books.put_key(&key)?;
        Ok(key)
    }

    pub fn top_up(&self, app: &str, amount: NanoUsd, now_ms: u64) -> Result<i128, AccountsError> {
        let mut state = self.lock();
        if !state.apps.contains_key(app) {
            return Err(AccountsError::NotFound(format!("no app {app}")));
        }
        if amount == 0 {
            return Err(AccountsError::invalid(
                "amount must be positive",
                "amount_nano_usd",
            ));
        }
        self.books.add_topup(&TopUp {
            app: app.to_string(),
            amount,
            at_ms: now_ms,
        })?;
        *state.topped_up.entry(app.to_string()).or_default() += u128::from(amount);
        Ok(state.balance(app))
    }
}

impl Hold {
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    pub fn end_customer(&self) -> Option<&str> {
        self.end_customer.as_deref()
    }

    /// The most this hold lets [`Hold::commit`] book.
    pub fn amount(&self) -> u128 {
        self.amount
    }

    /// Prices the job from its receipt, makes the ledger entry durable
    /// (blocking: call off the async runtime), then, under one lock,
    /// releases the hold and books the charge, so no admission ever sees
    /// the money neither held nor charged. A charge above the hold is
    /// refused before anything is written (the hold is released on drop),
    /// and a replayed job id is refused by the books.
    pub fn commit(
        self,
        receipt: CountersignedReceipt,
        now_ms: u64,
    ) -> Result<LedgerEntry, CommitError> {
        let entry = self.entry(receipt, now_ms)?;
        self.accounts
            .books
            .record(&entry)
            .map_err(CommitError::Store)?;
        Ok(self.booked(entry))
    }

    /// [`Hold::commit`] for async code: the ledger's commit thread makes
    /// the entry durable while no runtime thread waits for it. Run it in a
    /// task of its own (`tokio::spawn`): once the entry is handed to the
    /// books it must be booked here too, whatever happens to the caller.
    pub async fn commit_async(
        self,
        receipt: CountersignedReceipt,
        now_ms: u64,
    ) -> Result<LedgerEntry, CommitError> {
        let entry = self.entry(receipt, now_ms)?;
        let (done, durable) = tokio::sync::oneshot::channel();
        self.accounts
            .books
            .record_then(
                &entry,
                Box::new(move |r| {
                    let _ = done.send(r);
                }),
            )
            .map_err(CommitError::Store)?;
        durable
            .await
            .map_err(|_| {
                CommitError::Store(sharenet_ledger::StoreError::Backend(
                    "the commit thread stopped".into(),
                ))
            })?
            .map_err(CommitError::Store)?;
        Ok(self.booked(entry))
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
            recorded_at_ms: now_ms,
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
pub fn bootstrap(
    accounts: &Accounts,
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
    )?;
    for k in keys {
        accounts.install_key(&b.app, k, Budgets::default(), now_ms)?;
    }
    Ok(())
}

/// Creates an operator-owned app (no keys, no margin) with a starting
/// balance, unless it exists.
pub fn ensure_operator_app(
    accounts: &Accounts,
    id: &str,
    name: &str,
    balance: NanoUsd,
    now_ms: u64,
) -> Result<(), AccountsError> {
    if accounts.app(id).is_some() {
        return Ok(());
    }
    accounts.create_app(AppRecord {
        id: id.into(),
        builder: "operator".into(),
        name: name.into(),
        margin: Margin {
            percent_bps: 0,
            per_mtok: 0,
        },
        budgets: Budgets::default(),
        customer_budgets: Budgets::default(),
        key_limits: RateLimits::default(),
        customer_limits: RateLimits::default(),
        created_at_ms: now_ms,
        routing: Default::default(),
    })?;
    if balance > 0 {
        accounts.top_up(id, balance, now_ms)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sharenet_proto::{JobId, Receipt, SignedReceipt, SigningKey, job_cost, public_key_of};
    use std::sync::atomic::Ordering;

    fn app(id: &str, margin_bps: u32, per_mtok: u64) -> AppRecord {
        AppRecord {
            id: id.into(),
            builder: "b".into(),
            name: id.into(),
            margin: Margin {
                percent_bps: margin_bps,
                per_mtok,
            },
            budgets: Budgets::default(),
            customer_budgets: Budgets::default(),
            key_limits: RateLimits::default(),
            customer_limits: RateLimits::default(),
            created_at_ms: 0,
            routing: Default::default(),
        }
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

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

        /// Over random streams of requests (finished, failed before a
        /// receipt, held concurrently): the balance never goes below zero,
        /// every charge is provider cost + fee + margin exactly, and the
        /// balance is top-ups minus charges once every hold is gone.
        #[test]
        fn money_is_conserved_and_never_overspent(
            reqs in proptest::collection::vec(req(), 1..24),
            topup in 1_000u64..3_000_000,
            margin_bps in 0u32..3000,
            per_mtok in 0u64..50_000,
            fee_bps in 0u32..2000,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let books = Arc::new(Books::open(dir.path()).unwrap());
            let accounts = Arc::new(Accounts::load(books, fee_bps, &public_key_of(&SigningKey::from_bytes(&[2; 32]))).unwrap());
            accounts.create_app(app("a", margin_bps, per_mtok)).unwrap();
            accounts.top_up("a", topup, 0).unwrap();
            let key = accounts.install_key("a", "sk-test-0123456789abcdef", Budgets::default(), 0).unwrap();
            let principal = Principal { app: "a".into(), key_id: key.id };
            let mut held = Vec::new();
            let mut charged = 0u128;
            for (i, r) in reqs.iter().enumerate() {
                let customer = r.customer.map(|c| format!("c{c}"));
                let admitted = accounts.admit(&Admission {
                    principal: &principal,
                    end_customer: customer.as_deref(),
                    max_input_tokens: u64::from(r.max_in),
                    max_output_tokens: u64::from(r.max_out),
                    max_price_in: r.price_in,
                    max_price_out: r.price_out,
                    now_ms: 1,
                });
                prop_assert!(accounts.balance("a") >= 0);
                let Ok(hold) = admitted else { continue };
                if !r.finishes {
                    // Keep some holds alive across later admissions.
                    held.push(hold);
                    continue;
                }
                let entry = hold
                    .commit(receipt(i as u32, r.used_in, r.used_out, r.price_in, r.price_out), 1)
                    .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                let c = entry.charge;
                prop_assert_eq!(c.total, c.provider_cost + c.network_fee + c.margin);
                charged += u128::from(c.total);
                prop_assert!(accounts.balance("a") >= 0);
            }
            drop(held);
            prop_assert_eq!(accounts.balance("a"), i128::from(topup) - charged as i128);
            // And the books say the same after a restart.
            let reloaded = Accounts::load(
                accounts.books().clone(),
                fee_bps,
                &public_key_of(&SigningKey::from_bytes(&[2; 32])),
            )
            .unwrap();
            prop_assert_eq!(reloaded.balance("a"), i128::from(topup) - charged as i128);
        }

        /// Whatever a node signs (any token counts, any prices up to the
        /// advert's), a commit never books more than its hold, and no
        /// balance ever goes below zero. (Issue 12, item 1: before the
        /// bound, a receipt for 4e9 input tokens drained the balance.)
        #[test]
        fn a_commit_never_books_more_than_its_hold(
            claims in proptest::collection::vec((0u32..=u32::MAX, 0u32..5000), 1..16),
            topup in 1_000_000u64..100_000_000,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let books = Arc::new(Books::open(dir.path()).unwrap());
            let accounts = Arc::new(Accounts::load(books, 500, &public_key_of(&SigningKey::from_bytes(&[2; 32]))).unwrap());
            accounts.create_app(app("a", 1000, 0)).unwrap();
            accounts.top_up("a", topup, 0).unwrap();
            let key = accounts.install_key("a", "sk-test-0123456789abcdef", Budgets::default(), 0).unwrap();
            let principal = Principal { app: "a".into(), key_id: key.id };
            for (i, (input, output)) in claims.into_iter().enumerate() {
                let Ok(hold) = accounts.admit(&Admission {
                    principal: &principal,
                    end_customer: None,
                    max_input_tokens: 100,
                    max_output_tokens: 50,
                    max_price_in: 3,
                    max_price_out: 7,
                    now_ms: 1,
                }) else { continue };
                let bound = hold.amount();
                match hold.commit(receipt(i as u32, input, output, 3, 7), 1) {
                    Ok(entry) => prop_assert!(u128::from(entry.charge.total) <= bound),
                    Err(CommitError::OverHold { charge, hold }) => prop_assert!(u128::from(charge) > hold),
                    Err(e) => prop_assert!(matches!(e, CommitError::Price(_)), "{e:?}"),
                }
                prop_assert!(accounts.balance("a") >= 0);
            }
        }
    }

    /// Commits and admissions from many threads at once (issue 12, item
    /// 2): the hold is released and the charge booked in one step, so at
    /// every moment top-ups >= charges + holds, and the app never spends
    /// more than it topped up.
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

    /// Accounts in a fresh folder with app `id` (no margin) topped up with
    /// `topup` and one key.
    fn funded(id: &str, topup: u64) -> (tempfile::TempDir, Arc<Accounts>, Principal) {
        let dir = tempfile::tempdir().unwrap();
        let books = Arc::new(Books::open(dir.path()).unwrap());
        let accounts = Arc::new(
            Accounts::load(books, 0, &public_key_of(&SigningKey::from_bytes(&[2; 32]))).unwrap(),
        );
        accounts.create_app(app(id, 0, 0)).unwrap();
        accounts.top_up(id, topup, 0).unwrap();
        let key = accounts
            .install_key(id, "sk-test-0123456789abcdef", Budgets::default(), 0)
            .unwrap();
        let principal = Principal {
            app: id.into(),
            key_id: key.id,
        };
        (dir, accounts, principal)
    }

    #[test]
    fn concurrent_commits_and_admissions_never_overspend() {
        // Room for 40 worst cases (100 in + 100 out at 1 each).
        let topup = 40 * 200;
        let (_dir, accounts, principal) = funded("a", topup);
        let next_job = std::sync::atomic::AtomicU32::new(0);
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            // A watcher reads the books' view under the lock over and over.
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let state = accounts.lock();
                    let charged = state.charged.get("a").copied().unwrap_or(0);
                    let held = state
                        .held
                        .get(&Scope::App("a".into()))
                        .copied()
                        .unwrap_or(0);
                    assert!(
                        charged + held <= u128::from(topup),
                        "charged {charged} + held {held}"
                    );
                }
            });
            let workers: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        for _ in 0..20 {
                            let admitted = accounts.admit(&worst_200(&principal));
                            if let Ok(hold) = admitted {
                                let id = next_job.fetch_add(1, Ordering::Relaxed);
                                hold.commit(receipt(id, 100, 100, 1, 1), 1).unwrap();
                            }
                        }
                    })
                })
                .collect();
            for w in workers {
                w.join().unwrap();
            }
            stop.store(true, Ordering::Relaxed);
        });
        assert_eq!(
            accounts.balance("a"),
            0,
            "exactly the 40 jobs the balance covered"
        );
        assert_eq!(accounts.books().entry_count(), 40);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_async_commit_books_once_durable_and_a_replay_is_refused() {
        let (_dir, accounts, principal) = funded("a", 10_000);
        let admission = worst_200(&principal);
        let held = |a: &Accounts| {
            a.lock()
                .held
                .get(&Scope::App("a".into()))
                .copied()
                .unwrap_or(0)
        };
        let hold = accounts.admit(&admission).unwrap();
        assert_eq!(held(&accounts), 200);
        let entry = tokio::spawn(hold.commit_async(receipt(1, 60, 40, 1, 1), 1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(held(&accounts), 0);
        let after = accounts.balance("a");
        assert_eq!(after, 10_000 - i128::from(entry.charge.total));
        assert_eq!(accounts.books().entry_count(), 1);
        // The same job again: the books refuse it, nothing is charged and
        // the hold is released.
        let hold = accounts.admit(&admission).unwrap();
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
            "{replay:?}"
        );
        assert_eq!(held(&accounts), 0);
        assert_eq!(accounts.balance("a"), after);
    }

    /// Issue 12, item 15: a builder churning end-customer ids used to
    /// clear every app's customer limiters at the cap (resetting other
    /// builders' limits) and left a held entry per customer forever.
    #[test]
    fn churning_customer_ids_resets_no_other_app_and_leaves_no_holds() {
        let dir = tempfile::tempdir().unwrap();
        let books = Arc::new(Books::open(dir.path()).unwrap());
        let accounts = Arc::new(
            Accounts::load(books, 0, &public_key_of(&SigningKey::from_bytes(&[2; 32]))).unwrap(),
        );
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
            accounts.create_app(limited(id)).unwrap();
            accounts.top_up(id, 1_000_000_000, 0).unwrap();
            let k = accounts
                .install_key(id, key, Budgets::default(), 0)
                .unwrap();
            principals.push(Principal {
                app: id.into(),
                key_id: k.id,
            });
        }
        let admit = |p: &Principal, customer: &str| {
            accounts.admit(&Admission {
                principal: p,
                end_customer: Some(customer),
                max_input_tokens: 10,
                max_output_tokens: 10,
                max_price_in: 1,
                max_price_out: 1,
                now_ms: 1,
            })
        };
        drop(admit(&principals[1], "alice").unwrap());
        assert!(matches!(
            admit(&principals[1], "alice"),
            Err(AccountsError::RateLimited { .. })
        ));
        for i in 0..MAX_CUSTOMER_LIMITERS_PER_APP + 10 {
            drop(admit(&principals[0], &format!("throwaway-{i}")).unwrap());
        }
        assert!(
            matches!(
                admit(&principals[1], "alice"),
                Err(AccountsError::RateLimited { .. })
            ),
            "another app's churn did not reset this app's limit"
        );
        let state = accounts.lock();
        assert!(state.held.is_empty(), "released holds leave no entries");
        assert!(
            state.customer_limiters["greedy"].len() <= MAX_CUSTOMER_LIMITERS_PER_APP,
            "the churning app's limiters stay capped"
        );
    }
}
