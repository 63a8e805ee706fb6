//! A request's money path after authentication: [`Accounts::admit`] takes
//! a [`Hold`] for the worst case, and [`Hold::commit_async`] swaps it for
//! the real charge once the receipt is durable (or the hold is released
//! when it drops). The books backend decides how (`backend.rs`).

use std::sync::Arc;

use sharenet_ledger::LedgerEntry;
use sharenet_market::{Charge, CountedBy};
use sharenet_proto::CountersignedReceipt;

use super::service::Accounts;
use super::types::{AccountsError, Admission, CommitError, Held, Principal};

/// A worst-case amount reserved for one request; released on drop.
pub struct Hold {
    accounts: Arc<Accounts>,
    held: Held,
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.held.committed {
            self.accounts
                .backend
                .release(&self.accounts.state, &self.held);
        }
    }
}

impl Accounts {
    /// Rate limits, then a hold for the worst case (see the module docs).
    /// Embedded: all under the accounts lock, so concurrent admissions see
    /// each other's holds. Shared: the check and the hold are one
    /// database transaction under the app row's lock.
    pub async fn admit(self: &Arc<Self>, a: &Admission<'_>) -> Result<Hold, AccountsError> {
        let taken = self
            .backend
            .hold(&self.state, self.network_fee_bps, a)
            .await?;
        Ok(Hold {
            accounts: self.clone(),
            held: Held {
                principal: a.principal.clone(),
                end_customer: a.end_customer.map(str::to_string),
                amount: taken.amount,
                shared_id: taken.shared_id,
                at_ms: a.now_ms,
                committed: false,
            },
        })
    }
}

impl Hold {
    pub fn principal(&self) -> &Principal {
        &self.held.principal
    }

    pub fn end_customer(&self) -> Option<&str> {
        self.held.end_customer.as_deref()
    }

    /// The most this hold lets [`Hold::commit_async`] book.
    pub fn amount(&self) -> u128 {
        self.held.amount
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
        self,
        receipt: CountersignedReceipt,
        now_ms: u64,
    ) -> Result<LedgerEntry, CommitError> {
        self.commit_counted_async(receipt, None, now_ms).await
    }

    /// [`Hold::commit_async`], keeping who counted the tokens with the
    /// entry (for the receipt view; not part of the signed receipt).
    pub async fn commit_counted_async(
        mut self,
        receipt: CountersignedReceipt,
        counted_by: Option<CountedBy>,
        now_ms: u64,
    ) -> Result<LedgerEntry, CommitError> {
        let mut entry = self.entry(receipt, now_ms)?;
        entry.counted_by = counted_by;
        let accounts = self.accounts.clone();
        accounts
            .backend
            .commit(&accounts.books, &accounts.state, &mut self.held, entry)
            .await
    }

    /// The ledger entry for `receipt`, priced; refused above the hold.
    fn entry(
        &self,
        receipt: CountersignedReceipt,
        now_ms: u64,
    ) -> Result<LedgerEntry, CommitError> {
        let accounts = &self.accounts;
        let held = &self.held;
        let margin = accounts
            .lock()
            .apps
            .get(&held.principal.app)
            .map(|a| a.margin)
            .unwrap_or_default();
        let charge: Charge = sharenet_market::pricing::charge_receipt(
            receipt.receipt(),
            accounts.network_fee_bps,
            &margin,
        )
        .map_err(|e| CommitError::Price(e.to_string()))?;
        if u128::from(charge.total) > held.amount {
            return Err(CommitError::OverHold {
                charge: charge.total,
                hold: held.amount,
            });
        }
        Ok(LedgerEntry {
            receipt,
            app: held.principal.app.clone(),
            key_id: held.principal.key_id.clone(),
            end_customer: held.end_customer.clone(),
            charge,
            recorded_at_ms: now_ms.max(held.at_ms),
            counted_by: None,
        })
    }
}
