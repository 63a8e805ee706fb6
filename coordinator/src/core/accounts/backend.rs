//! Where the money decisions are made: [`BooksBackend::Embedded`] (the
//! sled books, checked under the accounts lock) or
//! [`BooksBackend::Shared`] (PostgreSQL, one replica of several: checked
//! and booked in the database's transactions). The hold, its release and
//! the commit are methods here, one `match` each; everything else reads
//! the in-memory view, the same on both.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use sharenet_ledger::pg::{Booking, HoldRequest, PgLedger};
use sharenet_ledger::{AppRecord, Books, Budgets, LedgerEntry, StoreError};
use sharenet_proto::PublicKey;

use super::funds::{Admitted, admit_before_funds, check_funds};
use super::renew::LiveHolds;
use super::state::State;
use super::types::{AccountsError, Admission, CommitError, Held, Scope, windows};
use crate::core::sync::lock;

/// How often a replica reads what the others committed (apps, keys,
/// revocations, top-ups, entries, statements).
pub const FOLLOW_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);
/// How often expired holds are deleted from the shared books.
pub(super) const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
/// Hold releases waiting for the database; past this a hold simply
/// expires.
pub(super) const RELEASE_QUEUE: usize = 4096;
/// The mirror's record of how far it has followed the shared books.
pub(super) const CURSOR_META: &str = "pg_cursor";

/// Settings of a replica on shared books.
#[derive(Debug, Clone, Copy)]
pub struct SharedOptions {
    /// Replicas in the deployment: each enforces `1/replicas` of every
    /// rate limit.
    pub replicas: u32,
    /// How long a hold counts if its job never ends (a replica died); a
    /// live job's hold is renewed before then (`renew.rs`).
    pub hold_ttl_ms: u64,
}

/// The books the money decisions are made in.
pub(super) enum BooksBackend {
    /// The embedded books alone: holds and charges under the accounts
    /// lock.
    Embedded,
    /// PostgreSQL, shared by every replica; the embedded books are this
    /// replica's mirror.
    Shared(Shared),
}

/// A replica's handle on the shared books.
pub(super) struct Shared {
    pub(super) pg: Arc<PgLedger>,
    pub(super) options: SharedOptions,
    pub(super) releases: tokio::sync::mpsc::Sender<i64>,
    pub(super) release_rx: Mutex<Option<tokio::sync::mpsc::Receiver<i64>>>,
    /// Where the next follow reads from.
    pub(super) cursor: AtomicU64,
    /// One follow at a time.
    pub(super) following: tokio::sync::Mutex<()>,
    /// The deployment's coordinator keys, as last followed.
    pub(super) coordinators: Mutex<Vec<PublicKey>>,
    /// This replica's holds whose jobs still run: renewed together
    /// (`renew.rs`).
    pub(super) live: LiveHolds,
}

/// A hold taken: its amount, and its row on shared books.
pub(super) struct Taken {
    pub(super) amount: u128,
    pub(super) shared_id: Option<i64>,
}

impl BooksBackend {
    /// The shared books, when this coordinator is one replica of several.
    pub(super) fn pg(&self) -> Option<&Arc<PgLedger>> {
        match self {
            Self::Embedded => None,
            Self::Shared(s) => Some(&s.pg),
        }
    }

    /// The coordinator keys whose countersignatures are this books': `own`,
    /// and on shared books every replica's.
    pub(super) fn countersigners(&self, own: &PublicKey) -> Vec<PublicKey> {
        let mut keys = match self {
            Self::Shared(s) => lock(&s.coordinators).clone(),
            Self::Embedded => Vec::new(),
        };
        if !keys.contains(own) {
            keys.push(*own);
        }
        keys
    }

    /// Rate limits, then a hold for the worst case. Embedded: all under
    /// the accounts lock, so concurrent admissions see each other's
    /// holds. Shared: the check and the hold are one database transaction
    /// under the app row's lock.
    pub(super) async fn hold(
        &self,
        state: &Mutex<State>,
        network_fee_bps: u32,
        a: &Admission<'_>,
    ) -> Result<Taken, AccountsError> {
        match self {
            Self::Embedded => {
                let mut state = lock(state);
                let Admitted {
                    app,
                    amount,
                    key_budgets,
                } = admit_before_funds(&mut state, a, 1, network_fee_bps)?;
                let all = check_funds(&*state, &app, key_budgets, a, amount)?;
                state.hold(all, amount);
                Ok(Taken {
                    amount,
                    shared_id: None,
                })
            }
            Self::Shared(shared) => {
                let admitted = admit_before_funds(
                    &mut lock(state),
                    a,
                    shared.options.replicas,
                    network_fee_bps,
                )?;
                shared.hold(admitted, a).await
            }
        }
    }

    /// Gives back a hold whose job ended without a receipt. Shared: the
    /// release is queued for the database (a full queue or a stopped
    /// worker: the hold expires instead).
    pub(super) fn release(&self, state: &Mutex<State>, held: &Held) {
        match (self, held.shared_id) {
            (Self::Shared(shared), Some(id)) => {
                // Not renewed from now on, whether or not the release
                // reaches the database (if not, the hold expires).
                shared.live.remove(id);
                let _ = shared.releases.try_send(id);
            }
            _ => lock(state).release(held.scopes(), held.amount),
        }
    }

    /// Makes `entry` durable, then releases the hold and books the charge
    /// in one step (see `Hold::commit_async`). Marks `held` committed once
    /// nothing is left to release.
    pub(super) async fn commit(
        &self,
        books: &Books,
        state: &Mutex<State>,
        held: &mut Held,
        entry: LedgerEntry,
    ) -> Result<LedgerEntry, CommitError> {
        let shared = match self {
            Self::Embedded => {
                record_locally(books, &entry)
                    .await?
                    .then_some(())
                    .ok_or(CommitError::Store(StoreError::Duplicate(entry.job_id())))?;
                // Durable: swap the hold for the real charge in one step.
                let mut state = lock(state);
                state.release(held.scopes(), held.amount);
                state.book(&entry, &held.principal.key_id);
                held.committed = true;
                return Ok(entry);
            }
            Self::Shared(shared) => shared,
        };
        // Renewed until the database has answered: a slow group commit
        // does not let the hold lapse under it.
        if let Some(id) = held.shared_id {
            shared.live.committing(id);
        }
        let booked = shared
            .pg
            .commit(Booking {
                entry: entry.clone(),
                hold_id: held.shared_id,
                scopes: held.scopes().iter().map(Scope::spend).collect(),
                windows: windows(entry.recorded_at_ms).to_vec(),
            })
            .await;
        // The database released the hold in the same transaction (or, on
        // an error, the drop releases it, or it expires): nothing to
        // release here, nothing to renew from now on.
        if let Some(id) = held.shared_id {
            shared.live.remove(id);
        }
        held.committed = matches!(
            booked,
            Ok(()) | Err(StoreError::Duplicate(_) | StoreError::HoldLapsed { .. })
        );
        match booked {
            Ok(()) => {}
            Err(StoreError::HoldLapsed { job, hold }) => {
                // Admissions stopped counting the hold, so its money may
                // have been spent since: booking the charge now could spend
                // the balance twice. Refused: nothing is charged.
                shared.live.refused();
                tracing::warn!(
                    %job, hold, app = %held.principal.app,
                    "refused to book a job whose hold lapsed: nothing charged"
                );
                return Err(CommitError::HoldLapsed { hold });
            }
            Err(e) => return Err(CommitError::Store(e)),
        }
        // Acknowledged: the mirror and the view take it now (or the
        // follower does, if the mirror refuses it here).
        match record_locally(books, &entry).await {
            Ok(true) => {
                let key_id = entry.key_id.clone();
                lock(state).book(&entry, &key_id);
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "mirror a booked entry (the follower will)"),
        }
        Ok(entry)
    }
}

impl Shared {
    /// The shared books' hold: [`check_funds`] over the app's rows, read
    /// and held in one transaction.
    async fn hold(&self, admitted: Admitted, a: &Admission<'_>) -> Result<Taken, AccountsError> {
        let Admitted {
            app,
            amount,
            key_budgets,
        } = admitted;
        let scopes: Vec<_> = super::types::scopes(&app.id, &a.principal.key_id, a.end_customer)
            .iter()
            .map(Scope::spend)
            .collect();
        let windows = windows(a.now_ms);
        let amount64 = u64::try_from(amount).map_err(|_| {
            AccountsError::invalid("this request's worst case is too large", "max_tokens")
        })?;
        let taken = self
            .pg
            .hold(
                &HoldRequest {
                    app: &app.id,
                    key_id: &a.principal.key_id,
                    end_customer: a.end_customer,
                    amount: amount64,
                    now_ms: a.now_ms,
                    expires_at_ms: a.now_ms.saturating_add(self.options.hold_ttl_ms),
                    scopes: &scopes,
                    windows: &windows,
                },
                // The check may run in the replica's admission task for
                // the app (batched with others), so it owns what it reads.
                {
                    let app = app.clone();
                    let principal = a.principal.clone();
                    let end_customer = a.end_customer.map(str::to_string);
                    let (max_input_tokens, max_output_tokens) =
                        (a.max_input_tokens, a.max_output_tokens);
                    let (max_price_in, max_price_out, now_ms) =
                        (a.max_price_in, a.max_price_out, a.now_ms);
                    move |funds: &sharenet_ledger::pg::Funds| {
                        let a = Admission {
                            principal: &principal,
                            end_customer: end_customer.as_deref(),
                            max_input_tokens,
                            max_output_tokens,
                            max_price_in,
                            max_price_out,
                            now_ms,
                        };
                        check(funds, &app, key_budgets, &a, amount)
                    }
                },
            )
            .await?;
        match taken {
            None => Err(AccountsError::Unauthorized(
                "this key's app no longer exists".into(),
            )),
            Some(Err(refused)) => Err(refused),
            Some(Ok(id)) => {
                self.live.insert(id);
                Ok(Taken {
                    amount,
                    shared_id: Some(id),
                })
            }
        }
    }
}

/// [`check_funds`] as the shared books' hold calls it.
fn check(
    funds: &sharenet_ledger::pg::Funds,
    app: &AppRecord,
    key_budgets: Budgets,
    a: &Admission<'_>,
    amount: u128,
) -> Result<(), AccountsError> {
    check_funds(funds, app, key_budgets, a, amount).map(|_| ())
}

/// Records `entry` in the local books through their commit thread; false
/// when they already hold it.
async fn record_locally(books: &Books, entry: &LedgerEntry) -> Result<bool, CommitError> {
    let (done, durable) = tokio::sync::oneshot::channel();
    books
        .record_then(
            entry,
            Box::new(move |r| {
                let _ = done.send(r);
            }),
        )
        .map_err(CommitError::Store)?;
    match durable
        .await
        .map_err(|_| CommitError::Store(StoreError::Backend("the commit thread stopped".into())))?
    {
        Ok(()) => Ok(true),
        Err(StoreError::Duplicate(_)) => Ok(false),
        Err(e) => Err(CommitError::Store(e)),
    }
}
