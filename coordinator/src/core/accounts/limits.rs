//! Rate limits: requests and worst-case tokens per minute, per key and per
//! end customer (`governor`), each replica enforcing its share of every
//! limit. Refusals are 429 with `Retry-After`.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use sharenet_ledger::AppRecord;

use super::state::State;
use super::types::{AccountsError, Admission, Scope};

/// End-customer rate limiters kept per app at most. Customer ids are the
/// builder's to choose, so a builder that churns them could otherwise grow
/// the map without bound; past the cap that app's customer limiters start
/// afresh, and no other app's are touched.
pub(super) const MAX_CUSTOMER_LIMITERS_PER_APP: usize = 10_000;

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

/// Requests and worst-case tokens per minute, per key and per end
/// customer.
pub(super) fn check_rate_limits(
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
        if let Some(l) = limiter(state, scope, false, limits.requests_per_minute, replicas)
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
        if let Some(l) = limiter(state, scope, true, limits.tokens_per_minute, replicas) {
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
