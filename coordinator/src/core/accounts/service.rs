//! The accounts service itself: [`Accounts`], built from the embedded
//! books ([`Accounts::load`]) or as one replica of shared books
//! ([`Accounts::load_shared`]), with the reads every other file of the
//! module builds on (the in-memory view, balances, dashboard usage).

use std::sync::{Arc, Mutex, MutexGuard};

use sharenet_ledger::pg::PgLedger;
use sharenet_ledger::{AppRecord, Books};
use sharenet_proto::PublicKey;

use super::backend::{BooksBackend, CURSOR_META, RELEASE_QUEUE, Shared, SharedOptions};
use super::state::State;
use super::types::AccountsError;
use super::usage::UsageLine;
use crate::core::sync::lock;

/// The accounts service (shared by every request).
pub struct Accounts {
    /// The embedded books; with shared books, this replica's mirror.
    pub(super) books: Arc<Books>,
    pub(super) state: Mutex<State>,
    pub(super) network_fee_bps: u32,
    /// Where holds are taken and charges booked.
    pub(super) backend: BooksBackend,
}

impl Accounts {
    /// Rebuilds balances, spend and usage from the books of the coordinator
    /// whose public key is `own_key` (each entry's countersignature is
    /// re-checked on read, batched on every core).
    pub fn load(
        books: Arc<Books>,
        network_fee_bps: u32,
        own_key: &PublicKey,
    ) -> Result<Self, AccountsError> {
        let mut state = State::default();
        for app in books.apps()? {
            state.apps.insert(app.id.clone(), app);
        }
        for key in books.keys()? {
            state.add_key(key);
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
            backend: BooksBackend::Embedded,
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
        own_key: &PublicKey,
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
            backend: BooksBackend::Shared(Shared {
                pg: pg.clone(),
                options,
                releases,
                release_rx: Mutex::new(Some(release_rx)),
                cursor: cursor.into(),
                following: tokio::sync::Mutex::new(()),
                coordinators: Mutex::new(vec![*own_key]),
                live: Default::default(),
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
    pub fn countersigners(&self, own: &PublicKey) -> Vec<PublicKey> {
        self.backend.countersigners(own)
    }

    /// The shared books, when this coordinator is one replica of several.
    pub fn shared(&self) -> Option<&Arc<PgLedger>> {
        self.backend.pg()
    }

    /// Holds this replica keeps renewing on shared books: one per job
    /// still running (for tests and the operator; 0 on embedded books).
    pub fn live_holds(&self) -> usize {
        match &self.backend {
            BooksBackend::Shared(s) => s.live.len(),
            BooksBackend::Embedded => 0,
        }
    }

    /// Commits refused on shared books because their hold had lapsed
    /// (nothing booked; each also logged at warn).
    pub fn lapsed_holds(&self) -> u64 {
        match &self.backend {
            BooksBackend::Shared(s) => s.live.refused_count(),
            BooksBackend::Embedded => 0,
        }
    }

    pub fn network_fee_bps(&self) -> u32 {
        self.network_fee_bps
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub fn app(&self, id: &str) -> Option<AppRecord> {
        self.lock().apps.get(id).cloned()
    }

    /// The app's balance (top-ups minus charges minus holds). On shared
    /// books: as this replica has followed them, without other replicas'
    /// holds.
    pub fn balance(&self, app: &str) -> i128 {
        self.lock().balance(app)
    }

    /// Usage lines of an app: (end customer, month start ms, usage).
    pub fn usage(&self, app: &str) -> Vec<(String, u64, UsageLine)> {
        self.lock().usage.of_app(app)
    }

    /// An app's usage per model in the month starting at `month_start_ms`.
    pub fn usage_by_model(&self, app: &str, month_start_ms: u64) -> Vec<(String, UsageLine)> {
        self.lock().usage.by_model(app, month_start_ms)
    }

    /// An app's usage per UTC day (day number: ms / 86 400 000) from
    /// `first_day` on.
    pub fn usage_by_day(&self, app: &str, first_day: u64) -> Vec<(u64, UsageLine)> {
        self.lock().usage.by_day(app, first_day)
    }
}
