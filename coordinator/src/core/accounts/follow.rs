//! Replica following: on shared books, [`Accounts::follow`] reads what
//! every replica committed into the local mirror and the in-memory view,
//! and [`Accounts::run_shared`] runs it every
//! [`FOLLOW_INTERVAL`] beside the hold-release worker, the renewal of
//! live holds (`renew.rs`) and the sweep of expired holds. Both are
//! no-ops on embedded books.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use sharenet_ledger::StoreError;
use sharenet_ledger::pg::Changes;

use super::backend::{BooksBackend, CURSOR_META, FOLLOW_INTERVAL, SWEEP_INTERVAL};
use super::renew::LiveHolds;
use super::service::Accounts;
use super::types::AccountsError;
use crate::core::sync::lock;

impl Accounts {
    /// Reads what every replica committed since the last call into the
    /// mirror and the in-memory view, until caught up. Returns how many
    /// rows it applied. A no-op on embedded books.
    pub async fn follow(self: &Arc<Self>) -> Result<usize, AccountsError> {
        let BooksBackend::Shared(shared) = &self.backend else {
            return Ok(0);
        };
        let _one = shared.following.lock().await;
        let coordinators = shared.pg.coordinators().await?;
        *lock(&shared.coordinators) = coordinators;
        let mut applied = 0;
        loop {
            let from = shared.cursor.load(Ordering::Acquire);
            let changes = shared.pg.changes(from).await?;
            let more = changes.more;
            let next = changes.next;
            let this = self.clone();
            applied += tokio::task::spawn_blocking(move || this.apply(changes))
                .await
                .map_err(|e| AccountsError::Internal(format!("apply shared changes: {e}")))??;
            self.books.put_meta(CURSOR_META, &next.to_be_bytes())?;
            shared.cursor.store(next, Ordering::Release);
            if !more {
                return Ok(applied);
            }
        }
    }

    /// Applies followed rows to the mirror and the view. An entry is
    /// booked in the view only by whoever inserts it into the mirror (this
    /// replica's own commit, or this), so it counts once. Blocking.
    fn apply(&self, changes: Changes) -> Result<usize, AccountsError> {
        let mut applied = 0;
        for app in changes.apps {
            self.books.put_app(&app)?;
            self.lock().apps.insert(app.id.clone(), app);
            applied += 1;
        }
        for key in changes.keys {
            self.books.put_key(&key)?;
            self.lock().add_key(key);
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
                Err(StoreError::Duplicate(_)) => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(applied)
    }

    /// A replica's background work until `shutdown`: following the shared
    /// books every [`FOLLOW_INTERVAL`], releasing dropped holds, renewing
    /// live ones (`renew.rs`) and deleting expired ones. Returns at once
    /// on embedded books.
    pub async fn run_shared(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let BooksBackend::Shared(shared) = &self.backend else {
            return;
        };
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
        // A task of its own, so that nothing else here (a slow follow
        // writing the mirror, a sweep) delays it: one statement per tick
        // for all of this replica's live holds.
        let renewer = tokio::spawn({
            let (accounts, shutdown) = (self.clone(), shutdown.clone());
            async move {
                let BooksBackend::Shared(shared) = &accounts.backend else {
                    return;
                };
                let ttl_ms = shared.options.hold_ttl_ms;
                let mut renew = tokio::time::interval(LiveHolds::period(ttl_ms));
                renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = renew.tick() => {
                            let now = crate::core::clock::now_ms();
                            if let Err(e) = shared.live.renew(&shared.pg, now, ttl_ms).await {
                                tracing::warn!(error = %e, "renew live holds (tried again next tick)");
                            }
                        }
                    }
                }
            }
        });
        // Stopped with the rest (also when this future is dropped).
        let _stop_renewer = AbortOnDrop(renewer.abort_handle());
        tokio::join!(release_worker, follower);
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
