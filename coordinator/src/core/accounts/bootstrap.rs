//! Start-up: the default app that the config's plain keys belong to, and
//! operator-owned apps (such as the spot-check payer) created once with a
//! starting balance, whichever replica gets there first.

use std::sync::Arc;

use sharenet_ledger::{AppRecord, Budgets};
use sharenet_market::Margin;
use sharenet_proto::NanoUsd;

use super::service::Accounts;
use super::types::AccountsError;

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
