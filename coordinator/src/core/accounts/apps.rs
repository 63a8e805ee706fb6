//! Operator actions on apps: creating one (its id, builder and margin
//! checked), replacing its routing rules, and topping up its balance. On
//! shared books the database is written first and decides; the mirror
//! and the view follow.

use sharenet_ledger::{AppRecord, AppRouting, TopUp};
use sharenet_proto::NanoUsd;

use super::backend::BooksBackend;
use super::service::Accounts;
use super::types::AccountsError;

impl Accounts {
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
        let embedded = match &self.backend {
            BooksBackend::Shared(shared) => {
                if !shared.pg.create_app(&app).await? {
                    return Err(exists());
                }
                false
            }
            BooksBackend::Embedded => true,
        };
        let mut state = self.lock();
        if embedded && state.apps.contains_key(&app.id) {
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
        routing: AppRouting,
    ) -> Result<AppRecord, AccountsError> {
        let mut record = self
            .app(app)
            .ok_or_else(|| AccountsError::NotFound(format!("no app {app}")))?;
        record.routing = routing;
        if let BooksBackend::Shared(shared) = &self.backend
            && !shared.pg.update_app(&record).await?
        {
            return Err(AccountsError::NotFound(format!("no app {app}")));
        }
        let mut state = self.lock();
        self.books.put_app(&record)?;
        state.apps.insert(record.id.clone(), record.clone());
        Ok(record)
    }

    /// Adds `amount` to the app's balance; returns the balance after it.
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
        match &self.backend {
            BooksBackend::Shared(shared) => {
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
            BooksBackend::Embedded => {
                let mut state = self.lock();
                self.books.add_topup(&topup)?;
                *state.topped_up.entry(app.to_string()).or_default() += u128::from(amount);
                Ok(state.balance(app))
            }
        }
    }
}
