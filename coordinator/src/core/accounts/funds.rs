//! The funds check, in one place for both books backends: the app's
//! balance and every budget (app, key, end customer; day, month, total)
//! must cover a request's worst case on top of what is spent and held.
//! [`check_funds`] reads a [`FundsView`]: the embedded state, or the rows
//! of one app the shared books read under its lock.

use sharenet_ledger::pg::{Funds, LiveHold};
use sharenet_ledger::{AppRecord, Budgets, SpendKey};
use sharenet_market::{Charge, JobBounds};

use super::limits::check_rate_limits;
use super::state::State;
use super::types::{AccountsError, Admission, Scope, Window, scopes, windows};

/// What the funds check reads: the embedded state, or the shared books'
/// rows of one app read under its lock.
pub(super) trait FundsView {
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

impl FundsView for Funds {
    fn balance(&self, _app: &str) -> i128 {
        let held: u128 = self.holds.iter().map(|h| u128::from(h.amount)).sum();
        i128::from(self.topped_up) - i128::from(self.charged) - held as i128
    }

    fn spent(&self, scope: &Scope, window: Window) -> u128 {
        self.spent
            .get(&SpendKey::new(scope.spend(), window))
            .map_or(0, |v| u128::from(*v))
    }

    fn held(&self, scope: &Scope) -> u128 {
        self.holds
            .iter()
            .filter(|h: &&LiveHold| match scope {
                Scope::App(_) => true,
                Scope::Key(k) => h.key_id == *k,
                Scope::Customer(_, c) => h.end_customer.as_deref() == Some(c.as_str()),
            })
            .map(|h| u128::from(h.amount))
            .sum()
    }
}

/// The app's balance and every budget (app, key, end customer; day,
/// month, total) must cover `amount` on top of what is spent and held.
/// Returns the scopes the hold is counted in.
pub(super) fn check_funds(
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

/// What an admission checks before the funds: the key's app still
/// exists, the rate limits (this replica's share), and the worst case.
pub(super) struct Admitted {
    pub(super) app: AppRecord,
    /// The worst case, nano-USD.
    pub(super) amount: u128,
    pub(super) key_budgets: Budgets,
}

/// The checks before the funds, read from `state` (see [`Admitted`]).
pub(super) fn admit_before_funds(
    state: &mut State,
    a: &Admission<'_>,
    replicas: u32,
    network_fee_bps: u32,
) -> Result<Admitted, AccountsError> {
    let app = state
        .apps
        .get(&a.principal.app)
        .cloned()
        .ok_or_else(|| AccountsError::Unauthorized("this key's app no longer exists".into()))?;
    check_rate_limits(state, &app, a, replicas)?;
    let amount = u128::from(worst_case(&app, a, network_fee_bps)?.total);
    let key_budgets = state.key_budgets(&a.principal.key_id);
    Ok(Admitted {
        app,
        amount,
        key_budgets,
    })
}

/// The most the job can cost: its bounds at the highest candidate
/// prices, plus fee and margin.
fn worst_case(
    app: &AppRecord,
    a: &Admission<'_>,
    network_fee_bps: u32,
) -> Result<Charge, AccountsError> {
    let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    sharenet_market::pricing::hold(
        &JobBounds {
            max_input_tokens: clamp(a.max_input_tokens),
            max_output_tokens: clamp(a.max_output_tokens),
            max_price_in: a.max_price_in,
            max_price_out: a.max_price_out,
        },
        network_fee_bps,
        &app.margin,
    )
    .map_err(|e| AccountsError::Invalid {
        message: format!("this request cannot be priced: {e}"),
        param: None,
    })
}
