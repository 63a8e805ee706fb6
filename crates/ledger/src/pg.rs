//! The coordinator's books in PostgreSQL, for a deployment of several
//! coordinator replicas behind one load balancer.
//!
//! PostgreSQL is the source of truth for money; each replica keeps an
//! embedded [`crate::Books`] as a *mirror* it reads from (dashboards,
//! usage, settlement) and brings up to date with [`PgLedger::changes`].
//!
//! What the database guarantees, whichever replica asks:
//! - **no overspend**: [`PgLedger::hold`] takes the app row's lock
//!   (`SELECT … FOR UPDATE`), so two replicas admitting for the same app
//!   take turns, then reads the app's top-ups, live holds and booked spend
//!   in *one* statement (one snapshot: a commit is seen whole, charge added
//!   and hold gone, or not at all, hold still there) and inserts the hold
//!   (a replica's waiting admissions for one app do all this together, in
//!   one transaction, each checked against the holds accepted before it);
//! - **a job is booked once**: the job id is the `entries` primary key;
//! - **an acknowledged entry is durable**: [`PgLedger::commit`] returns
//!   after the database's commit (batched: concurrent commits of one
//!   replica share one transaction and one WAL flush), and the same
//!   transaction releases the hold and adds the charge to the spend rows
//!   (the app's total and each budget window); it never locks the app row,
//!   so admissions do not wait for its flush;
//! - **holds are cheap**: a hold's transaction does not wait for the WAL
//!   flush (`synchronous_commit = off`), so an app's admissions are
//!   serialized only for their round trips; the entries that book money
//!   always wait for it;
//! - **one app's burst cannot hold the pool**: a replica's waiting
//!   admissions for one app share one transaction and one connection
//!   (`admit.rs`), and admissions of all apps together leave
//!   `RESERVED_CONNECTIONS` free, so the group-commit writer always finds
//!   a connection; a wait past its limit (the pool's, or the admission's)
//!   is [`StoreError::Busy`];
//! - **a dead replica's holds do not stick**: each hold has an expiry after
//!   which it stops counting, and [`PgLedger::sweep_holds`] deletes it;
//! - **a live job's hold does not lapse**: its replica pushes the expiries
//!   of all its live holds on, in one statement per tick
//!   ([`PgLedger::renew_holds`], which never revives a hold that already
//!   stopped counting), and a commit books only if its hold is still there
//!   and unexpired, deleted in the same transaction (else
//!   [`StoreError::HoldLapsed`], nothing written): a charge is booked only
//!   against a hold every admission counted;
//! - **a period is settled once**: statements are keyed by period label,
//!   and [`PgLedger::settle_lock`] is a database-wide advisory lock.
//!
//! Following without missing a commit: every followed row carries `xid`,
//! the id of the transaction that last wrote it. A reader takes a snapshot,
//! reads the snapshot's `xmin` (every transaction below it has finished),
//! and reads rows with `from <= xid < xmin`. A transaction that started
//! earlier but commits later has an xid below the next `xmin` and at or
//! above this one, so the next read sees it: nothing is skipped, whatever
//! order transactions commit in.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::{mpsc, oneshot};

/// A parsed `database_url`.
pub use tokio_postgres::Config as PgConfig;

/// `database_url` with its TLS keys (`sslmode`, `sslrootcert`).
pub use crate::tls::{DatabaseUrl, SslMode};

use crate::admit::{self, Admissions, to_i64, to_u64};
/// What an admission's check reads.
pub use crate::admit::{Funds, LiveHold};
use crate::books::{AppRecord, KeyRecord, LedgerEntry, StatementRecord, TopUp};
use crate::error::StoreError;
use crate::spend::{SpendKey, SpendScope, SpendWindow};
use crate::stored::GenerationFacts;
use sharenet_proto::{JobId, PublicKey};

/// Schema versions, applied in order, each once (under an advisory lock,
/// so replicas starting together do not race).
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/0001_books.sql")),
    (2, include_str!("../migrations/0002_generations.sql")),
];

/// Advisory lock ids (arbitrary, fixed).
const MIGRATE_LOCK: i64 = 0x5348_4e45_5401;
const SETTLE_LOCK: i64 = 0x5348_4e45_5402;

/// Commits waiting at most this many to share one transaction.
const MAX_GROUP: usize = 1024;
/// Entries read per [`PgLedger::changes`] call at most (more than one
/// commit group, so one transaction's rows always fit).
const MAX_CHANGES: i64 = 8192;
/// A deadlock or serialization failure is retried this many times.
const RETRIES: usize = 5;
/// How long a request waits for a pooled connection before it is told the
/// books are busy ([`StoreError::Busy`]): far above a healthy wait (a few
/// round trips), so only an overloaded database or replica hits it.
const POOL_WAIT: Duration = Duration::from_secs(10);

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The Display of a server error is only "db error"; its details
        // say what happened.
        match e.as_db_error() {
            Some(db) => Self::Backend(format!("postgres: {} ({})", db.message(), db.code().code())),
            None => {
                // Its Display leaves out the cause (a TLS handshake's
                // "invalid peer certificate: UnknownIssuer", say): add the
                // chain.
                let mut message = format!("postgres: {e}");
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    message.push_str(&format!(": {c}"));
                    cause = c.source();
                }
                Self::Backend(message)
            }
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            // No connection in time (every one in use for the pool's
            // wait, or a new one not made within its own): overloaded or
            // unreachable for now, so a retry may succeed.
            e @ deadpool_postgres::PoolError::Timeout(_) => {
                Self::Busy(format!("no database connection in time ({e})"))
            }
            e => Self::Backend(format!("postgres pool: {e}")),
        }
    }
}

fn encode<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(format!("encode: {e}")))
}

fn decode<T: for<'de> serde::Deserialize<'de>>(id: &str, v: &str) -> Result<T, StoreError> {
    serde_json::from_str(v).map_err(|e| StoreError::Corrupt {
        id: id.to_string(),
        reason: e.to_string(),
    })
}

/// Whether a failed transaction may simply be run again.
fn retryable(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

/// A hold to take: who, how much, until when, and which spend rows the
/// check reads (every scope in every window).
#[derive(Debug, Clone)]
pub struct HoldRequest<'a> {
    pub app: &'a str,
    pub key_id: &'a str,
    pub end_customer: Option<&'a str>,
    pub amount: u64,
    pub now_ms: u64,
    pub expires_at_ms: u64,
    pub scopes: &'a [SpendScope],
    pub windows: &'a [SpendWindow],
}

/// A booked job for [`PgLedger::commit`]: the entry, the hold it replaces,
/// and the spend rows its charge goes to (every scope in every window).
#[derive(Debug, Clone)]
pub struct Booking {
    pub entry: LedgerEntry,
    pub hold_id: Option<i64>,
    pub scopes: Vec<SpendScope>,
    pub windows: Vec<SpendWindow>,
}

struct Pending {
    job: [u8; 16],
    app: String,
    recorded_at_ms: i64,
    total: i64,
    json: String,
    hold_id: Option<i64>,
    /// The spend rows, encoded ([`SpendKey::encode`]).
    spend: Vec<(String, String)>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// Rows committed since a cursor ([`PgLedger::changes`]).
#[derive(Debug, Default)]
pub struct Changes {
    pub apps: Vec<AppRecord>,
    pub keys: Vec<KeyRecord>,
    /// (the database's id, the top-up).
    pub topups: Vec<(u64, TopUp)>,
    /// Decoded with both signatures checked.
    pub entries: Vec<LedgerEntry>,
    pub statements: Vec<StatementRecord>,
    /// Where the next call starts.
    pub next: u64,
    /// Whether rows are left (call again at once).
    pub more: bool,
}

/// The shared books.
pub struct PgLedger {
    pool: Pool,
    commits: mpsc::Sender<Pending>,
    /// Generation facts waiting for [`write_generations`].
    generations: mpsc::Sender<([u8; 16], String)>,
    /// Waiting admissions, batched per app (`admit.rs`).
    admissions: std::sync::Arc<Admissions>,
}

/// A held settlement lock: released by [`SettleLock::release`], or by the
/// database when the connection closes (a dead replica holds nothing).
pub struct SettleLock {
    conn: Option<deadpool_postgres::Object>,
}

impl SettleLock {
    pub async fn release(mut self) {
        if let Some(conn) = self.conn.take()
            && conn
                .execute("SELECT pg_advisory_unlock($1)", &[&SETTLE_LOCK])
                .await
                .is_err()
        {
            // Closing the session releases the lock.
            drop(deadpool_postgres::Object::take(conn));
        }
    }
}

impl Drop for SettleLock {
    fn drop(&mut self) {
        // Not released: close the session rather than return a locked
        // connection to the pool.
        if let Some(conn) = self.conn.take() {
            drop(deadpool_postgres::Object::take(conn));
        }
    }
}

impl PgLedger {
    /// Connects to `url` (a libpq URL or key=value string), with at most
    /// `pool_size` connections, and brings the schema up to date. Spawns
    /// the group-commit task: call from a Tokio runtime. TLS follows the
    /// URL's `sslmode` and `sslrootcert` as libpq does (see `tls.rs`).
    pub async fn connect(url: &str, pool_size: usize) -> Result<Self, StoreError> {
        let url = DatabaseUrl::parse(url)?;
        let tls = url.connector()?;
        let mut config = url.config;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("sharenet-coordinator");
        }
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(2))
            .wait_timeout(Some(POOL_WAIT))
            // A new connection is a new server process: slow on a loaded
            // machine, so allowed as long as a wait for a free one.
            .create_timeout(Some(POOL_WAIT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Backend(format!("postgres pool: {e}")))?;
        migrate(&pool).await?;
        // Connections made now, not in the first burst (a new one is a new
        // server process): enough for the writer, the renewal, the
        // follower and an app's admissions. They stay in the pool.
        let mut warm = Vec::new();
        for _ in 0..pool_size.clamp(2, admit::RESERVED_CONNECTIONS + 2) {
            warm.push(pool.get().await?);
        }
        drop(warm);
        let (commits, rx) = mpsc::channel(MAX_GROUP);
        tokio::spawn(group_commit(pool.clone(), rx));
        let (generations, rx) = mpsc::channel(MAX_GROUP);
        tokio::spawn(write_generations(pool.clone(), rx));
        Ok(Self {
            pool: pool.clone(),
            commits,
            generations,
            admissions: Admissions::new(pool.clone(), pool_size.max(2)),
        })
    }

    async fn conn(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.pool.get().await?)
    }

    /// Registers a coordinator key as one of this deployment's.
    pub async fn add_coordinator(&self, key: &PublicKey, now_ms: u64) -> Result<(), StoreError> {
        self.conn()
            .await?
            .execute(
                "INSERT INTO coordinators (public_key, first_seen_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&key.as_slice(), &to_i64(now_ms, "time")?],
            )
            .await?;
        Ok(())
    }

    /// The deployment's coordinator keys, in key order.
    pub async fn coordinators(&self) -> Result<Vec<PublicKey>, StoreError> {
        let rows = self
            .conn()
            .await?
            .query(
                "SELECT public_key FROM coordinators ORDER BY public_key",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let b: &[u8] = r.get(0);
                <PublicKey>::try_from(b).map_err(|_| StoreError::Corrupt {
                    id: "coordinators".into(),
                    reason: "a key is not 32 bytes".into(),
                })
            })
            .collect()
    }

    /// Creates an app; false if one with its id exists.
    pub async fn create_app(&self, app: &AppRecord) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .await?
            .execute(
                "INSERT INTO apps (id, record) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
                &[&app.id, &encode(app)?],
            )
            .await?;
        Ok(n == 1)
    }

    /// Replaces an existing app's record (its sums are untouched).
    pub async fn update_app(&self, app: &AppRecord) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .await?
            .execute(
                "UPDATE apps SET record = $2, xid = pg_current_xact_id() WHERE id = $1",
                &[&app.id, &encode(app)?],
            )
            .await?;
        Ok(n == 1)
    }

    /// Inserts a key, or returns the stored one with the same hash.
    pub async fn install_key(&self, key: &KeyRecord) -> Result<KeyRecord, StoreError> {
        let conn = self.conn().await?;
        conn.execute(
            "INSERT INTO keys (id, app, sha256, record) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            &[&key.id, &key.app, &key.sha256.as_slice(), &encode(key)?],
        )
        .await?;
        let row = conn
            .query_one(
                "SELECT record FROM keys WHERE sha256 = $1",
                &[&key.sha256.as_slice()],
            )
            .await?;
        decode(&key.id, row.get(0))
    }

    /// Marks a key revoked (the first revocation time stays); None if
    /// there is no such key.
    pub async fn revoke_key(
        &self,
        key_id: &str,
        now_ms: u64,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let Some(row) = tx
            .query_opt(
                &tx.prepare_cached("SELECT record FROM keys WHERE id = $1 FOR UPDATE")
                    .await?,
                &[&key_id],
            )
            .await?
        else {
            return Ok(None);
        };
        let mut key: KeyRecord = decode(key_id, row.get(0))?;
        if key.revoked_at_ms.is_none() {
            key.revoked_at_ms = Some(now_ms);
            tx.execute(
                &tx.prepare_cached(
                    "UPDATE keys SET record = $2, xid = pg_current_xact_id() WHERE id = $1",
                )
                .await?,
                &[&key_id, &encode(&key)?],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Some(key))
    }

    /// Adds to an app's balance; returns the top-up's id and the app's new
    /// balance before holds (None: no such app).
    pub async fn add_topup(&self, t: &TopUp) -> Result<Option<(u64, i128)>, StoreError> {
        let amount = to_i64(t.amount, "top-up")?;
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let (total_scope, total_win) = SpendKey::APP_TOTAL.encode();
        let Some(row) = tx.query_opt(
&tx.prepare_cached("UPDATE apps SET topped_up = topped_up + $2, xid = pg_current_xact_id() WHERE id = $1 \
                 RETURNING topped_up, (SELECT coalesce(max(amount), 0) FROM spend WHERE app = $1 AND scope = $3 AND win = $4)").await?,
                &[&t.app, &amount, &total_scope, &total_win],
            )
            .await?
        else {
            return Ok(None);
        };
        let (topped, charged): (i64, i64) = (row.get(0), row.get(1));
        let id: i64 = tx
            .query_one(
                &tx.prepare_cached(
                    "INSERT INTO topups (app, amount, at_ms) VALUES ($1, $2, $3) RETURNING id",
                )
                .await?,
                &[&t.app, &amount, &to_i64(t.at_ms, "time")?],
            )
            .await?
            .get(0);
        tx.commit().await?;
        Ok(Some((
            to_u64(id, "topup")?,
            i128::from(topped) - i128::from(charged),
        )))
    }

    /// Takes a hold if `check` accepts the app's funds as they stand: the
    /// read, the check and the insert are one transaction under the app
    /// row's lock. Returns the hold's id, or `check`'s refusal (then
    /// nothing was written); no such app is `Ok(None)`.
    ///
    /// The replica's waiting admissions for one app share that
    /// transaction (`admit.rs`): one connection and one row lock for a
    /// burst, each check run in arrival order against the funds plus the
    /// holds accepted before it. `now_ms` and `expires_at_ms` are the
    /// caller's clock when it called; the time it waited since is added
    /// to both, so live holds are judged at the real now and this hold
    /// counts for its whole TTL from when it is taken. An admission not
    /// answered within [`admit::WAIT`] is [`StoreError::Busy`] (a 503).
    pub async fn hold<E: Send + 'static>(
        &self,
        req: &HoldRequest<'_>,
        check: impl FnOnce(&Funds) -> Result<(), E> + Send + 'static,
    ) -> Result<Option<Result<i64, E>>, StoreError> {
        let refusal: std::sync::Arc<std::sync::Mutex<Option<E>>> = Default::default();
        let slot = refusal.clone();
        let check: admit::Check = Box::new(move |funds| match check(funds) {
            Ok(()) => true,
            Err(e) => {
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                false
            }
        });
        let (done, answer) = oneshot::channel();
        self.admissions.enqueue(
            req.app,
            admit::Waiting {
                key_id: req.key_id.to_string(),
                end_customer: req.end_customer.map(str::to_string),
                amount: to_i64(req.amount, "hold")?,
                now_ms: req.now_ms,
                expires_at_ms: req.expires_at_ms,
                called: std::time::Instant::now(),
                scopes: req.scopes.iter().map(SpendScope::encode).collect(),
                windows: req.windows.iter().map(SpendWindow::encode).collect(),
                check,
            },
            done,
        );
        let answer = tokio::time::timeout(admit::WAIT, answer)
            .await
            .map_err(|_| {
                StoreError::Busy(format!(
                    "app {}'s admissions on this replica waited over {:?}",
                    req.app,
                    admit::WAIT
                ))
            })?
            .map_err(|_| StoreError::Backend("the admission runner stopped".into()))??;
        Ok(match answer {
            None => None,
            Some(Some(id)) => Some(Ok(id)),
            Some(None) => {
                let refused = refusal.lock().unwrap_or_else(|p| p.into_inner()).take();
                Some(Err(refused.ok_or_else(|| {
                    StoreError::Backend("an admission refused without its reason".into())
                })?))
            }
        })
    }

    /// Releases a hold (a job that ended without a receipt). Not waited
    /// for on disk: a release lost in a crash is a hold that expires.
    pub async fn release(&self, hold_id: i64) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        tx.batch_execute("SET LOCAL synchronous_commit = off")
            .await?;
        tx.execute(
            &tx.prepare_cached("DELETE FROM holds WHERE id = $1").await?,
            &[&hold_id],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Pushes the expiry of every hold of `ids` that still counts at
    /// `now_ms` to `expires_at_ms` (their jobs still run), in one
    /// statement; returns the ids renewed. A hold gone or expired is left
    /// alone, never revived: admissions may already have spent what it
    /// held (its commit will be refused). Not waited for on disk, like the
    /// hold: a renewal lost in a crash lets a hold lapse sooner, and its
    /// commit is refused rather than booked twice. Rows are locked in id
    /// order, as the commit's delete locks them, so the two never deadlock.
    pub async fn renew_holds(
        &self,
        ids: &[i64],
        now_ms: u64,
        expires_at_ms: u64,
    ) -> Result<Vec<i64>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        tx.batch_execute("SET LOCAL synchronous_commit = off")
            .await?;
        // Locked first, in a statement of its own (one `UPDATE … WHERE id
        // IN (SELECT … FOR UPDATE)` lost rows a concurrent transaction had
        // changed: its outer scan rechecks against the old snapshot). A
        // row locked now is being deleted (its commit, a release, a sweep)
        // and is skipped rather than waited for: a renewal never waits
        // behind a booking's flush, so the other holds are renewed on time.
        let renewed: Vec<i64> = tx
            .query(
                &tx.prepare_cached(
                    "SELECT id FROM holds WHERE id = ANY($1) AND expires_at_ms > $2 \
                     ORDER BY id FOR UPDATE SKIP LOCKED",
                )
                .await?,
                &[&ids, &to_i64(now_ms, "time")?],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !renewed.is_empty() {
            tx.execute(
                &tx.prepare_cached(
                    "UPDATE holds SET expires_at_ms = greatest(expires_at_ms, $2) WHERE id = ANY($1)",
                )
                .await?,
                &[&renewed, &to_i64(expires_at_ms, "time")?],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(renewed)
    }

    /// Deletes holds that expired before `now_ms`; returns how many.
    pub async fn sweep_holds(&self, now_ms: u64) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        // Locked in id order, as commits and renewals lock them (and
        // rechecked once locked: a hold renewed meanwhile stays).
        let expired: Vec<i64> = tx
            .query(
                "SELECT id FROM holds WHERE expires_at_ms <= $1 ORDER BY id FOR UPDATE",
                &[&to_i64(now_ms, "time")?],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !expired.is_empty() {
            tx.execute("DELETE FROM holds WHERE id = ANY($1)", &[&expired])
                .await?;
        }
        tx.commit().await?;
        Ok(expired.len() as u64)
    }

    /// An app's (top-ups, charges, live holds), read together; None if
    /// there is no such app.
    pub async fn funds(
        &self,
        app: &str,
        now_ms: u64,
    ) -> Result<Option<(u64, u64, u64)>, StoreError> {
        let (total_scope, total_win) = SpendKey::APP_TOTAL.encode();
        let row = self
            .conn()
            .await?
            .query_opt(
                "SELECT topped_up, \
                 (SELECT coalesce(max(amount), 0) FROM spend WHERE app = $1 AND scope = $3 AND win = $4), \
                 (SELECT coalesce(sum(amount), 0)::bigint FROM holds WHERE app = $1 AND expires_at_ms > $2) \
                 FROM apps WHERE id = $1",
                &[&app, &to_i64(now_ms, "time")?, &total_scope, &total_win],
            )
            .await?;
        row.map(|r| {
            Ok((
                to_u64(r.get(0), app)?,
                to_u64(r.get(1), app)?,
                to_u64(r.get(2), app)?,
            ))
        })
        .transpose()
    }

    /// Live holds of every app: (count, sum), for tests and the operator.
    pub async fn live_holds(&self, now_ms: u64) -> Result<(u64, u64), StoreError> {
        let row = self
            .conn()
            .await?
            .query_one(
                "SELECT count(*), coalesce(sum(amount), 0)::bigint FROM holds WHERE expires_at_ms > $1",
                &[&to_i64(now_ms, "time")?],
            )
            .await?;
        Ok((to_u64(row.get(0), "holds")?, to_u64(row.get(1), "holds")?))
    }

    /// Books a job: the entry, its charge in the app's sums and the spend
    /// windows, and its hold released, in one transaction shared with the
    /// replica's other concurrent commits. Durable when it returns; a job
    /// id already booked (by any replica) is [`StoreError::Duplicate`] and
    /// only releases the hold. A hold gone, or expired at the entry's
    /// `recorded_at_ms`, is [`StoreError::HoldLapsed`]: nothing is booked
    /// (admissions stopped counting it, so its money may be spent).
    pub async fn commit(&self, b: Booking) -> Result<(), StoreError> {
        let job = b.entry.job_id().0;
        let mut spend = Vec::with_capacity(b.scopes.len() * b.windows.len());
        for s in &b.scopes {
            for w in &b.windows {
                spend.push(SpendKey::new(s.clone(), *w).encode());
            }
        }
        let (done, wait) = oneshot::channel();
        let pending = Pending {
            job,
            app: b.entry.app.clone(),
            recorded_at_ms: to_i64(b.entry.recorded_at_ms, "time")?,
            total: to_i64(b.entry.charge.total, "charge")?,
            json: String::from_utf8(b.entry.to_bytes()?)
                .map_err(|e| StoreError::Backend(format!("entry json: {e}")))?,
            hold_id: b.hold_id,
            spend,
            done,
        };
        self.commits
            .send(pending)
            .await
            .map_err(|_| StoreError::Backend("the commit task stopped".into()))?;
        wait.await
            .map_err(|_| StoreError::Backend("the commit task stopped".into()))?
    }

    /// (entries, sum of their charges) of one app, or of all apps.
    pub async fn entry_totals(&self, app: Option<&str>) -> Result<(u64, u64), StoreError> {
        let row = self
            .conn()
            .await?
            .query_one(
                "SELECT count(*), coalesce(sum(total), 0)::bigint FROM entries WHERE $1::text IS NULL OR app = $1",
                &[&app],
            )
            .await?;
        Ok((
            to_u64(row.get(0), "entries")?,
            to_u64(row.get(1), "entries")?,
        ))
    }

    /// Everything committed at or after `from` (a value of
    /// [`Changes::next`]; 0 for everything), see the module docs.
    pub async fn changes(&self, from: u64) -> Result<Changes, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        // The first statement takes the snapshot the others read.
        let xmin: i64 = tx
            .query_one(
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
                &[],
            )
            .await?
            .get(0);
        let from_s = from.to_string();
        let to_s = xmin.to_string();
        let range: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&from_s, &to_s];
        let mut out = Changes {
            next: to_u64(xmin, "xmin")?,
            ..Changes::default()
        };
        for r in tx
            .query(
                "SELECT id, record FROM apps WHERE xid >= $1::text::xid8 AND xid < $2::text::xid8",
                &range,
            )
            .await?
        {
            out.apps.push(decode(r.get(0), r.get(1))?);
        }
        for r in tx
            .query(
                "SELECT id, record FROM keys WHERE xid >= $1::text::xid8 AND xid < $2::text::xid8",
                &range,
            )
            .await?
        {
            out.keys.push(decode(r.get(0), r.get(1))?);
        }
        for r in tx
            .query(
                "SELECT id, app, amount, at_ms FROM topups WHERE xid >= $1::text::xid8 AND xid < $2::text::xid8",
                &range,
            )
            .await?
        {
            out.topups.push((
                to_u64(r.get(0), "topup")?,
                TopUp {
                    app: r.get(1),
                    amount: to_u64(r.get(2), "topup")?,
                    at_ms: to_u64(r.get(3), "topup")?,
                },
            ));
        }
        for r in tx
            .query(
                "SELECT label, record FROM statements WHERE xid >= $1::text::xid8 AND xid < $2::text::xid8",
                &range,
            )
            .await?
        {
            out.statements
                .push(StatementRecord::from_bytes(r.get(0), r.get(1))?);
        }
        let rows = tx
            .query(
                "SELECT job_id, entry, xid::text::bigint FROM entries WHERE xid >= $1::text::xid8 AND xid < $2::text::xid8 ORDER BY xid, job_id LIMIT $3",
                &[&from_s, &to_s, &MAX_CHANGES],
            )
            .await?;
        tx.commit().await?;
        if rows.len() as i64 == MAX_CHANGES
            && let Some(last) = rows.last()
        {
            // More rows may share the last transaction id: start there
            // next time (rows read twice are duplicates to the mirror).
            out.next = to_u64(last.get(2), "xid")?;
            out.more = true;
        }
        for r in rows {
            let job: &[u8] = r.get(0);
            let json: &str = r.get(1);
            out.entries
                .push(LedgerEntry::from_bytes(job, json.as_bytes())?);
        }
        Ok(out)
    }

    /// Queues a booked job's facts for `generation` lookups on any
    /// replica; one task writes what is queued in batches, without waiting
    /// for the WAL flush (the money is in the entry). Never waits: with
    /// [`MAX_GROUP`] already queued it refuses, and the facts stay local.
    pub fn put_generation(&self, job: &JobId, g: &GenerationFacts) -> Result<(), StoreError> {
        self.generations
            .try_send((job.0, encode(g)?))
            .map_err(|e| StoreError::Backend(format!("generation facts not shared: {e}")))
    }

    /// A job's facts, whichever replica served it.
    pub async fn generation(&self, job: &JobId) -> Result<Option<GenerationFacts>, StoreError> {
        self.conn()
            .await?
            .query_opt(
                "SELECT facts FROM generations WHERE job_id = $1",
                &[&job.0.as_slice()],
            )
            .await?
            .map(|r| decode(&job.to_hex(), r.get(0)))
            .transpose()
    }

    /// Takes the deployment-wide settlement lock (waits for it).
    pub async fn settle_lock(&self) -> Result<SettleLock, StoreError> {
        let conn = self.conn().await?;
        conn.execute("SELECT pg_advisory_lock($1)", &[&SETTLE_LOCK])
            .await?;
        Ok(SettleLock { conn: Some(conn) })
    }

    pub async fn statement(&self, label: &str) -> Result<Option<StatementRecord>, StoreError> {
        self.conn()
            .await?
            .query_opt("SELECT record FROM statements WHERE label = $1", &[&label])
            .await?
            .map(|r| StatementRecord::from_bytes(label, r.get(0)))
            .transpose()
    }

    /// Stores a statement once; false if its period was already stored.
    pub async fn put_statement(&self, record: &StatementRecord) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .await?
            .execute(
                "INSERT INTO statements (label, record) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&record.label, &record.to_bytes()?],
            )
            .await?;
        Ok(n == 1)
    }
}

async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS sharenet_migrations (version INT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM sharenet_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if let Some(newer) = applied
        .iter()
        .max()
        .filter(|v| **v > MIGRATIONS.len() as i32)
    {
        return Err(StoreError::Backend(format!(
            "the database's schema is version {newer}, newer than this coordinator knows ({}): upgrade the coordinator",
            MIGRATIONS.len()
        )));
    }
    for (version, sql) in MIGRATIONS {
        if !applied.contains(version) {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO sharenet_migrations (version) VALUES ($1)",
                &[version],
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// The commit task: takes what is waiting (up to [`MAX_GROUP`]) and books
/// it in one transaction.
async fn group_commit(pool: Pool, mut rx: mpsc::Receiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        let mut outcome = Err(StoreError::Backend("not tried".into()));
        for _ in 0..RETRIES {
            match book_group(&pool, &group).await {
                Err(Retry::Again(e)) => {
                    outcome = Err(e.into());
                    continue;
                }
                // No connection in time (a loaded machine, the database
                // restarting): these jobs have streamed, so booking them
                // is worth another wait.
                Err(Retry::Fail(e @ StoreError::Busy(_))) => {
                    outcome = Err(e);
                    continue;
                }
                Err(Retry::Fail(e)) => {
                    outcome = Err(e);
                    break;
                }
                Ok(booked) => {
                    outcome = Ok(booked);
                    break;
                }
            }
        }
        match outcome {
            Ok(Booked {
                mut inserted,
                lapsed,
            }) => {
                for p in group {
                    // A job given twice in one group was inserted once.
                    let r = if inserted.remove(&p.job) {
                        Ok(())
                    } else if let (true, Some(hold)) = (lapsed.contains(&p.job), p.hold_id) {
                        Err(StoreError::HoldLapsed {
                            job: JobId(p.job),
                            hold,
                        })
                    } else {
                        Err(StoreError::Duplicate(JobId(p.job)))
                    };
                    let _ = p.done.send(r);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for p in group {
                    let _ = p.done.send(Err(StoreError::Backend(msg.clone())));
                }
            }
        }
    }
}

/// Writes queued generation facts, all that is waiting in one statement.
/// A batch that fails (the database is down) is dropped: the serving
/// replica still answers for those jobs from its own books, the others
/// say 404.
async fn write_generations(pool: Pool, mut rx: mpsc::Receiver<([u8; 16], String)>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(g) => batch.push(g),
                Err(_) => break,
            }
        }
        let jobs: Vec<&[u8]> = batch.iter().map(|(j, _)| j.as_slice()).collect();
        let facts: Vec<&str> = batch.iter().map(|(_, f)| f.as_str()).collect();
        let written = async {
            let mut conn = pool.get().await.map_err(StoreError::from)?;
            let tx = conn.transaction().await?;
            tx.batch_execute("SET LOCAL synchronous_commit = off")
                .await?;
            tx.execute(
                "INSERT INTO generations (job_id, facts) SELECT * FROM unnest($1::bytea[], $2::text[]) ON CONFLICT DO NOTHING",
                &[&jobs, &facts],
            )
            .await?;
            tx.commit().await?;
            Ok::<_, StoreError>(())
        };
        let _ = written.await;
    }
}

enum Retry {
    Again(tokio_postgres::Error),
    Fail(StoreError),
}

impl From<tokio_postgres::Error> for Retry {
    fn from(e: tokio_postgres::Error) -> Self {
        if retryable(&e) {
            Self::Again(e)
        } else {
            Self::Fail(e.into())
        }
    }
}

impl From<StoreError> for Retry {
    fn from(e: StoreError) -> Self {
        Self::Fail(e)
    }
}

/// What [`book_group`] did: the jobs it inserted, and those it refused
/// because their hold had lapsed.
struct Booked {
    inserted: HashSet<[u8; 16]>,
    lapsed: HashSet<[u8; 16]>,
}

async fn book_group(pool: &Pool, group: &[Pending]) -> Result<Booked, Retry> {
    let mut conn = pool.get().await.map_err(StoreError::from)?;
    let tx = conn.transaction().await?;
    // The holds first: each is consumed here, and a booking whose hold is
    // gone or expired books nothing (its caller hears `HoldLapsed`).
    let lapsed = take_holds(&tx, group).await?;
    let group: Vec<&Pending> = group.iter().filter(|p| !lapsed.contains(&p.job)).collect();
    let jobs: Vec<&[u8]> = group.iter().map(|p| p.job.as_slice()).collect();
    let app_col: Vec<&str> = group.iter().map(|p| p.app.as_str()).collect();
    let at: Vec<i64> = group.iter().map(|p| p.recorded_at_ms).collect();
    let total: Vec<i64> = group.iter().map(|p| p.total).collect();
    let json: Vec<&str> = group.iter().map(|p| p.json.as_str()).collect();
    let inserted: HashSet<[u8; 16]> = tx
        .query(
            &tx.prepare_cached(
                "INSERT INTO entries (job_id, app, recorded_at_ms, total, entry) \
             SELECT * FROM unnest($1::bytea[], $2::text[], $3::bigint[], $4::bigint[], $5::text[]) \
             ON CONFLICT (job_id) DO NOTHING RETURNING job_id",
            )
            .await?,
            &[&jobs, &app_col, &at, &total, &json],
        )
        .await?
        .iter()
        .filter_map(|r| <[u8; 16]>::try_from(r.get::<_, &[u8]>(0)).ok())
        .collect();
    // A job repeated inside the group is inserted once: the later copies
    // are duplicates.
    let mut first = HashSet::new();
    let mut charged: BTreeMap<&str, i64> = BTreeMap::new();
    let mut spend: BTreeMap<(&str, &str, &str), i64> = BTreeMap::new();
    for p in group {
        if !inserted.contains(&p.job) || !first.insert(p.job) {
            continue;
        }
        let c = charged.entry(p.app.as_str()).or_default();
        *c = c
            .checked_add(p.total)
            .ok_or_else(|| StoreError::Backend("charges over 2^63".into()))?;
        for (s, w) in &p.spend {
            let v = spend
                .entry((p.app.as_str(), s.as_str(), w.as_str()))
                .or_default();
            *v = v
                .checked_add(p.total)
                .ok_or_else(|| StoreError::Backend("spend over 2^63".into()))?;
        }
    }
    if !spend.is_empty() {
        let mut a = Vec::with_capacity(spend.len());
        let mut s = Vec::with_capacity(spend.len());
        let mut w = Vec::with_capacity(spend.len());
        let mut v = Vec::with_capacity(spend.len());
        for ((app, scope, win), amount) in spend {
            a.push(app);
            s.push(scope);
            w.push(win);
            v.push(amount);
        }
        tx.execute(
            &tx.prepare_cached(
                "INSERT INTO spend (app, scope, win, amount) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) \
             ON CONFLICT (app, scope, win) DO UPDATE SET amount = spend.amount + EXCLUDED.amount",
            )
            .await?,
            &[&a, &s, &w, &v],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Booked { inserted, lapsed })
}

/// Deletes the group's holds (locked in id order, as
/// [`PgLedger::renew_holds`] locks them); returns the jobs whose hold was
/// already gone, or expired at the entry's `recorded_at_ms`, and that are
/// not booked already (a job booked before is a replay, whatever its
/// hold).
async fn take_holds(
    tx: &deadpool_postgres::Transaction<'_>,
    group: &[Pending],
) -> Result<HashSet<[u8; 16]>, Retry> {
    let holds: Vec<i64> = group.iter().filter_map(|p| p.hold_id).collect();
    if holds.is_empty() {
        return Ok(HashSet::new());
    }
    // Locked first, in id order, in a statement of its own (see
    // `renew_holds`), reading each hold's expiry as the last renewal left
    // it; then deleted.
    let live: HashMap<i64, i64> = tx
        .query(
            &tx.prepare_cached(
                "SELECT id, expires_at_ms FROM holds WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            )
            .await?,
            &[&holds],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if !live.is_empty() {
        let ids: Vec<i64> = live.keys().copied().collect();
        tx.execute(
            &tx.prepare_cached("DELETE FROM holds WHERE id = ANY($1)")
                .await?,
            &[&ids],
        )
        .await?;
    }
    let mut lapsed: HashSet<[u8; 16]> = group
        .iter()
        .filter(|p| {
            p.hold_id.is_some_and(|id| {
                live.get(&id)
                    .is_none_or(|expires| *expires <= p.recorded_at_ms)
            })
        })
        .map(|p| p.job)
        .collect();
    if !lapsed.is_empty() {
        let jobs: Vec<&[u8]> = lapsed.iter().map(|j| j.as_slice()).collect();
        for row in tx
            .query(
                &tx.prepare_cached("SELECT job_id FROM entries WHERE job_id = ANY($1)")
                    .await?,
                &[&jobs],
            )
            .await?
        {
            if let Ok(job) = <[u8; 16]>::try_from(row.get::<_, &[u8]>(0)) {
                lapsed.remove(&job);
            }
        }
    }
    Ok(lapsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::books::tests::entry;
    use crate::testing::TestPostgres;

    fn app(id: &str) -> AppRecord {
        AppRecord::new(id, "b", Default::default(), 0)
    }

    fn booking(id: u32, app: &str, hold_id: Option<i64>) -> Booking {
        Booking {
            entry: entry(id, app, 1_000),
            hold_id,
            scopes: vec![SpendScope::App],
            windows: vec![SpendWindow::Total],
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn holds_commits_replays_and_following_agree_with_the_database() {
        let pg = TestPostgres::start().unwrap();
        let a = PgLedger::connect(&pg.url(), 4).await.unwrap();
        // A second replica migrates nothing twice.
        let b = PgLedger::connect(&pg.url(), 4).await.unwrap();
        assert!(a.create_app(&app("x")).await.unwrap());
        assert!(!b.create_app(&app("x")).await.unwrap());
        let (id, balance) = a
            .add_topup(&TopUp {
                app: "x".into(),
                amount: 1_000_000,
                at_ms: 1,
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(balance, 1_000_000);
        let req = HoldRequest {
            app: "x",
            key_id: "k",
            end_customer: None,
            amount: 500,
            now_ms: 10,
            expires_at_ms: 1_000_000,
            scopes: &[SpendScope::App],
            windows: &[SpendWindow::Total],
        };
        let hold = b
            .hold(&req, |f| {
                assert_eq!(f.topped_up, 1_000_000);
                Ok::<(), ()>(())
            })
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(a.live_holds(10).await.unwrap(), (1, 500));
        let booked = booking(7, "x", Some(hold));
        let total = booked.entry.charge.total;
        a.commit(booked.clone()).await.unwrap();
        // The replay is refused, wherever it comes from.
        assert!(matches!(
            b.commit(booked).await,
            Err(StoreError::Duplicate(_))
        ));
        assert_eq!(a.live_holds(10).await.unwrap(), (0, 0));
        assert_eq!(a.entry_totals(Some("x")).await.unwrap(), (1, total));
        // The next hold sees the charge and the spend row.
        let seen = b
            .hold(&req, move |f| {
                assert_eq!(f.charged, total);
                assert_eq!(f.spent.get(&SpendKey::APP_TOTAL), Some(&total));
                Err::<(), _>("refused")
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen, Err("refused"));
        assert_eq!(
            a.live_holds(10).await.unwrap(),
            (0, 0),
            "a refusal holds nothing"
        );

        let all = b.changes(0).await.unwrap();
        assert_eq!(all.apps.len(), 1);
        assert_eq!(
            all.topups,
            vec![(
                id,
                TopUp {
                    app: "x".into(),
                    amount: 1_000_000,
                    at_ms: 1
                }
            )]
        );
        assert_eq!(all.entries.len(), 1);
        let again = b.changes(all.next).await.unwrap();
        assert!(again.entries.is_empty() && again.apps.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transaction_that_commits_late_is_still_followed() {
        let pg = TestPostgres::start().unwrap();
        let a = PgLedger::connect(&pg.url(), 4).await.unwrap();
        a.create_app(&app("x")).await.unwrap();
        // A transaction takes an xid, then waits while a later one commits.
        let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client.batch_execute("BEGIN").await.unwrap();
        client
            .execute(
                "INSERT INTO topups (app, amount, at_ms) VALUES ('x', 5, 1)",
                &[],
            )
            .await
            .unwrap();
        a.add_topup(&TopUp {
            app: "x".into(),
            amount: 7,
            at_ms: 2,
        })
        .await
        .unwrap();
        let first = a.changes(0).await.unwrap();
        // The later commit is not shown past the open transaction yet...
        assert!(first.topups.is_empty(), "{:?}", first.topups);
        client.batch_execute("COMMIT").await.unwrap();
        // ...and both are, in the next read, with nothing skipped.
        let next = a.changes(first.next).await.unwrap();
        let mut amounts: Vec<u64> = next.topups.iter().map(|(_, t)| t.amount).collect();
        amounts.sort();
        assert_eq!(amounts, vec![5, 7]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_statement_is_stored_once_and_the_settle_lock_excludes() {
        let pg = TestPostgres::start().unwrap();
        let a = PgLedger::connect(&pg.url(), 4).await.unwrap();
        let record = StatementRecord {
            label: "2026-11".into(),
            statement: vec![1, 2],
            builder_lines: vec![3],
            settled_at_ms: 9,
            job_ids: vec![JobId([4; 16])],
        };
        assert!(a.put_statement(&record).await.unwrap());
        assert!(!a.put_statement(&record).await.unwrap());
        assert_eq!(a.statement("2026-11").await.unwrap(), Some(record));
        let lock = a.settle_lock().await.unwrap();
        let b = PgLedger::connect(&pg.url(), 4).await.unwrap();
        let waiting = tokio::spawn(async move { b.settle_lock().await.map(|_| ()) });
        // A negative check, so it has to look for a while: "still waiting
        // after 300 ms" is what a held lock looks like. A slow machine can
        // only make it pass more easily, never fail it wrongly (the lock is
        // released below, not by time).
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "the lock is held");
        lock.release().await;
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    /// A hold request for app `x` of `amount`, taken at `now_ms`, counting
    /// until `expires_at_ms`.
    fn hold_req(amount: u64, now_ms: u64, expires_at_ms: u64) -> HoldRequest<'static> {
        HoldRequest {
            app: "x",
            key_id: "k",
            end_customer: None,
            amount,
            now_ms,
            expires_at_ms,
            scopes: &[SpendScope::App],
            windows: &[SpendWindow::Total],
        }
    }

    /// The funds check every admission makes: the balance less the live
    /// holds covers the amount.
    fn covers(amount: u64) -> impl FnOnce(&Funds) -> Result<(), u64> {
        move |f: &Funds| {
            let held: u64 = f.holds.iter().map(|h| h.amount).sum();
            let free = f.topped_up.saturating_sub(f.charged + held);
            if free >= amount { Ok(()) } else { Err(free) }
        }
    }

    fn real_now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    /// Issue 26, item 8: a hold renews while it counts, never once it
    /// stopped counting, and a commit whose hold is gone or expired books
    /// nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hold_renews_while_it_counts_and_a_lapsed_one_books_nothing() {
        let pg = TestPostgres::start().unwrap();
        let ledger = PgLedger::connect(&pg.url(), 4).await.unwrap();
        let a = &ledger;
        a.create_app(&app("x")).await.unwrap();
        a.add_topup(&TopUp {
            app: "x".into(),
            amount: 1_000_000,
            at_ms: 1,
        })
        .await
        .unwrap();
        let take = move |expires| async move {
            a.hold(&hold_req(500, 10, expires), covers(500))
                .await
                .unwrap()
                .unwrap()
                .unwrap()
        };
        let live = take(1_000_000).await;
        let other = take(1_000_000).await;
        assert_eq!(
            a.renew_holds(&[live, other, -1], 10, 2_000_000)
                .await
                .unwrap()
                .len(),
            2,
            "both live holds renewed in one statement, the unknown id not"
        );
        assert_eq!(a.funds("x", 1_500_000).await.unwrap().unwrap().2, 1_000);
        assert!(
            a.renew_holds(&[live], 2_000_000, 3_000_000)
                .await
                .unwrap()
                .is_empty(),
            "an expired hold is not revived"
        );
        let mut late = booking(8, "x", Some(live));
        late.entry.recorded_at_ms = 2_000_000;
        assert!(matches!(
            a.commit(late).await,
            Err(StoreError::HoldLapsed { hold, .. }) if hold == live
        ));
        assert_eq!(a.entry_totals(Some("x")).await.unwrap(), (0, 0));
        // A hold swept (or released) before its commit: refused too.
        assert_eq!(a.sweep_holds(u64::MAX >> 2).await.unwrap(), 1, "swept");
        assert!(matches!(
            a.commit(booking(9, "x", Some(other))).await,
            Err(StoreError::HoldLapsed { .. })
        ));
        assert_eq!(a.entry_totals(Some("x")).await.unwrap(), (0, 0));
        assert_eq!(a.live_holds(0).await.unwrap(), (0, 0), "consumed");
        // A replay of a booked job is a duplicate, whatever its hold.
        let booked = booking(10, "x", Some(take(1_000_000).await));
        a.commit(booked.clone()).await.unwrap();
        assert!(matches!(
            a.commit(booked).await,
            Err(StoreError::Duplicate(_))
        ));
    }

    /// Issue 26, item 8 (the attack, a greedy builder): a job outlives its
    /// hold's TTL; a second job is admitted against the money the lapsed
    /// hold no longer counts. The late commit must not book the balance a
    /// second time. And with renewal, the second job is not admitted at
    /// all.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_that_outlives_its_hold_ttl_cannot_spend_the_balance_twice() {
        const TTL: Duration = Duration::from_millis(300);
        let ttl_ms = TTL.as_millis() as u64;
        let pg = TestPostgres::start().unwrap();
        let ledger = PgLedger::connect(&pg.url(), 4).await.unwrap();
        let a = &ledger;
        a.create_app(&app("x")).await.unwrap();
        // Exactly one job's charge.
        let cost = booking(0, "x", None).entry.charge.total;
        a.add_topup(&TopUp {
            app: "x".into(),
            amount: cost,
            at_ms: 1,
        })
        .await
        .unwrap();
        let admit = move || async move {
            let now = real_now_ms();
            a.hold(&hold_req(cost, now, now + ttl_ms), covers(cost))
                .await
                .unwrap()
                .unwrap()
        };
        let commit = move |job, hold| {
            let mut b = booking(job, "x", Some(hold));
            b.entry.recorded_at_ms = real_now_ms();
            a.commit(b)
        };

        // Not renewed: the slow job's hold lapses, and the second job is
        // admitted against the same money.
        let slow = admit().await.unwrap();
        tokio::time::sleep(TTL + Duration::from_millis(100)).await;
        let second = admit().await.expect("the lapsed hold stopped counting");
        commit(2, second).await.unwrap();
        let late = commit(1, slow).await;
        assert!(
            matches!(late, Err(StoreError::HoldLapsed { hold, .. }) if hold == slow),
            "the lapsed hold's job was booked: {late:?}"
        );
        let (entries, charged) = a.entry_totals(Some("x")).await.unwrap();
        assert_eq!((entries, charged), (1, cost), "the balance is spent once");

        // Renewed while it runs: the hold keeps counting past its TTL, so
        // the next job is refused and the slow one books.
        a.add_topup(&TopUp {
            app: "x".into(),
            amount: cost,
            at_ms: 2,
        })
        .await
        .unwrap();
        let slow = admit().await.unwrap();
        for _ in 0..4 {
            tokio::time::sleep(TTL / 3).await;
            let now = real_now_ms();
            assert_eq!(
                a.renew_holds(&[slow], now, now + ttl_ms).await.unwrap(),
                vec![slow]
            );
        }
        assert!(admit().await.is_err(), "the renewed hold still counts");
        commit(3, slow).await.unwrap();
        assert_eq!(a.entry_totals(Some("x")).await.unwrap(), (2, 2 * cost));
    }

    /// Issue 25: a burst of one app's admissions, all waiting on the app's
    /// row lock (held here by another replica's transaction), takes one
    /// pooled connection, not all of them: a booking meanwhile is not kept
    /// waiting for a connection (before, it timed out after 10 s, after
    /// its job had streamed). And a hold that waited counts for its whole
    /// TTL from when it was taken, not from when its request came (a
    /// renewal every fifth of the TTL would otherwise come too late).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_apps_burst_cannot_hold_every_pooled_connection() {
        let pg = TestPostgres::start().unwrap();
        let a = std::sync::Arc::new(PgLedger::connect(&pg.url(), 2).await.unwrap());
        a.create_app(&app("x")).await.unwrap();
        a.add_topup(&TopUp {
            app: "x".into(),
            amount: 1_000_000,
            at_ms: 1,
        })
        .await
        .unwrap();
        let (other, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        other
            .batch_execute("BEGIN; SELECT 1 FROM apps WHERE id = 'x' FOR UPDATE")
            .await
            .unwrap();
        const TTL_MS: u64 = 1_000;
        let asked_at = real_now_ms();
        let burst: Vec<_> = (0..20)
            .map(|_| {
                let a = a.clone();
                tokio::spawn(async move {
                    a.hold(&hold_req(10, asked_at, asked_at + TTL_MS), covers(10))
                        .await
                })
            })
            .collect();
        // An admission waits on the row lock (a condition, not a time).
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let waiting: i64 = other
                .query_one("SELECT count(*) FROM pg_locks WHERE NOT granted", &[])
                .await
                .unwrap()
                .get(0);
            if waiting > 0 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no admission waits");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Well under the pool's wait: a booking finds a connection at once.
        let booked = tokio::time::timeout(POOL_WAIT / 2, a.commit(booking(1, "x", None))).await;
        assert!(
            matches!(booked, Ok(Ok(()))),
            "the booking waited behind the burst: {booked:?}"
        );
        // The burst waits longer than its holds' TTL.
        tokio::time::sleep(Duration::from_millis(2 * TTL_MS)).await;
        let released_at = real_now_ms();
        other.batch_execute("COMMIT").await.unwrap();
        for b in burst {
            assert!(matches!(b.await.unwrap(), Ok(Some(Ok(_)))));
        }
        assert_eq!(
            a.live_holds(released_at).await.unwrap(),
            (20, 200),
            "each hold counts from when it was taken"
        );
    }

    /// Issue 16: PostgreSQL killed (`-m immediate`: no checkpoint, WAL
    /// replay on start) while commits stream in: every commit that was
    /// acknowledged is there after the restart, and commits resume.
    /// How long a test waits for something it expects to happen: far
    /// longer than it takes even on a loaded machine, so a condition that
    /// holds at all holds well within it, and one that never does still
    /// fails (naming what it awaited) instead of hanging.
    const PATIENCE: Duration = Duration::from_secs(30);

    /// Waits for a condition, never for a time: polls `check` every 50 ms
    /// until it returns `Ok`; while it does not, `check` returns what it
    /// saw, and after [`PATIENCE`] the test fails naming `what` and that.
    async fn wait_for<S: std::fmt::Debug>(what: &str, mut check: impl FnMut() -> Result<(), S>) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let seen = match check() {
                Ok(()) => return,
                Err(seen) => seen,
            };
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {PATIENCE:?} waiting for {what}; last seen: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_database_crash_under_load_loses_no_acknowledged_entry() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let pg = TestPostgres::start().unwrap();
        let ledger = Arc::new(PgLedger::connect(&pg.url(), 8).await.unwrap());
        ledger.create_app(&app("x")).await.unwrap();
        let acked = Arc::new(Mutex::new(Vec::new()));
        let crashed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Commits acknowledged after the restart, shared so that the test
        // can wait for them instead of for a time.
        let resumed = Arc::new(AtomicUsize::new(0));
        let writers: Vec<_> = (0..4u32)
            .map(|w| {
                let (ledger, acked, crashed, stop, resumed) = (
                    ledger.clone(),
                    acked.clone(),
                    crashed.clone(),
                    stop.clone(),
                    resumed.clone(),
                );
                tokio::spawn(async move {
                    let mut failed = 0;
                    for n in 0.. {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        let b = booking(w * 1_000_000 + n, "x", None);
                        let id = b.entry.job_id();
                        match ledger.commit(b).await {
                            Ok(()) => {
                                acked.lock().unwrap().push(id);
                                if crashed.load(std::sync::atomic::Ordering::Relaxed) {
                                    resumed.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Err(_) => {
                                failed += 1;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                    failed
                })
            })
            .collect();
        // The crash comes while commits stream in: once some are
        // acknowledged, not after a time that a loaded machine may need
        // just to start the writers.
        wait_for("a commit acknowledged before the crash", || {
            match acked.lock().unwrap().len() {
                0 => Err("none acknowledged yet"),
                _ => Ok(()),
            }
        })
        .await;
        let before = acked.lock().unwrap().len();
        pg.crash_and_restart().unwrap();
        crashed.store(true, std::sync::atomic::Ordering::Relaxed);
        wait_for(
            "a commit acknowledged after the restart",
            || match resumed.load(Ordering::Relaxed) {
                0 => Err(format!(
                    "none since the restart; {} acknowledged in all",
                    acked.lock().unwrap().len()
                )),
                _ => Ok(()),
            },
        )
        .await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        let after = resumed.load(Ordering::Relaxed);
        assert!(before > 0, "commits were acknowledged before the crash");
        assert!(after > 0, "commits resumed after the restart");
        let mut stored = std::collections::HashSet::new();
        let mut from = 0;
        loop {
            let c = ledger.changes(from).await.unwrap();
            stored.extend(c.entries.iter().map(LedgerEntry::job_id));
            from = c.next;
            if !c.more {
                break;
            }
        }
        let acked = acked.lock().unwrap();
        let lost: Vec<_> = acked.iter().filter(|id| !stored.contains(id)).collect();
        assert!(
            lost.is_empty(),
            "{} of {} acknowledged commits lost",
            lost.len(),
            acked.len()
        );
    }
}
