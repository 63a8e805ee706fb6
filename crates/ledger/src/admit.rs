//! Group admission on the shared books (issue 25: the burst that held the
//! pool): a replica's waiting admissions for one app share one
//! transaction, as its commits share one (`pg.rs`, `group_commit`).
//!
//! An admission reads the app's funds under the app row's lock
//! (`SELECT … FOR UPDATE`). One connection per admission let a burst of
//! one app's requests take every pooled connection, each sitting on the
//! same row lock, so the group-commit writer waited for a connection until
//! the pool's timeout (bookings failed after their jobs had streamed); and
//! one admission per lock made the app's admissions as slow as a few round
//! trips each, seconds for a burst on a loaded machine. Here each app has
//! at most one runner task per replica, using one connection: it takes
//! every admission waiting for the app, locks the row once, reads the
//! funds once, runs each admission's check in arrival order against the
//! funds plus the holds accepted before it in the batch, inserts the
//! accepted holds in one statement and commits once. Runners of all apps
//! together leave [`RESERVED_CONNECTIONS`] of the pool free.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::{Semaphore, oneshot};

use crate::error::StoreError;
use crate::spend::SpendKey;

/// What an admission needs to see, read under the app row's lock.
#[derive(Debug, Clone, Default)]
pub struct Funds {
    pub topped_up: u64,
    pub charged: u64,
    /// Live holds of the app.
    pub holds: Vec<LiveHold>,
    /// Booked spend per row, for the scopes and windows asked (and
    /// [`SpendKey::APP_TOTAL`]).
    pub spent: HashMap<SpendKey, u64>,
}

/// One live hold of an app, as an admission's check sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveHold {
    pub key_id: String,
    pub end_customer: Option<String>,
    pub amount: u64,
}

pub(crate) fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Backend(format!("{what} {v} is over 2^63")))
}

pub(crate) fn to_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt {
        id: what.into(),
        reason: format!("negative value {v}"),
    })
}

/// Connections admission runners never take together (whatever the number
/// of apps): the group-commit writer, the renewal, the follower, releases.
pub(crate) const RESERVED_CONNECTIONS: usize = 4;
/// Admissions one transaction takes at most (a burst beyond it is the
/// next batch, at once).
const MAX_BATCH: usize = 512;

/// What a waiting admission hears: `None`, no such app; `Some(None)`, its
/// check refused (the refusal is in the caller's slot); `Some(Some(id))`,
/// its hold.
pub(crate) type Answer = Result<Option<Option<i64>>, StoreError>;

/// A check, type-erased: true when it accepts (its refusal, if any, is
/// kept by the caller).
pub(crate) type Check = Box<dyn FnOnce(&Funds) -> bool + Send>;

/// One admission waiting for its app's runner.
pub(crate) struct Waiting {
    pub key_id: String,
    pub end_customer: Option<String>,
    pub amount: i64,
    /// The caller's clock when it called, and its hold's expiry then;
    /// the time it waited is added to both (see `PgLedger::hold`).
    pub now_ms: u64,
    pub expires_at_ms: u64,
    pub called: Instant,
    /// Encoded spend rows its check reads.
    pub scopes: Vec<String>,
    pub windows: Vec<String>,
    pub check: Check,
}

/// A waiting admission and where its answer goes.
type Queued = (Waiting, oneshot::Sender<Answer>);

impl Waiting {
    /// `t` plus the time since the call, in ms.
    fn shifted(&self, t: u64) -> u64 {
        t.saturating_add(u64::try_from(self.called.elapsed().as_millis()).unwrap_or(u64::MAX))
    }
}

/// A replica's admission queues, one per app with a runner.
pub(crate) struct Admissions {
    pool: Pool,
    queues: Mutex<HashMap<String, Vec<Queued>>>,
    /// Runners transacting at once, all apps together.
    running: Semaphore,
}

impl Admissions {
    pub(crate) fn new(pool: Pool, pool_size: usize) -> Arc<Self> {
        Arc::new(Self {
            pool,
            queues: Mutex::default(),
            running: Semaphore::new(pool_size.saturating_sub(RESERVED_CONNECTIONS).max(1)),
        })
    }

    /// Queues `w` for `app`, starting the app's runner if none runs.
    pub(crate) fn enqueue(self: &Arc<Self>, app: &str, w: Waiting, done: oneshot::Sender<Answer>) {
        let w = (w, done);
        let start = {
            let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            match queues.get_mut(app) {
                Some(q) => {
                    q.push(w);
                    false
                }
                None => {
                    queues.insert(app.to_string(), vec![w]);
                    true
                }
            }
        };
        if start {
            tokio::spawn(self.clone().run(app.to_string()));
        }
    }

    /// The app's runner: batches until its queue is empty, then forgets
    /// the queue (the next admission starts a new runner).
    async fn run(self: Arc<Self>, app: String) {
        // Should a check panic, the queue goes with the runner (its
        // callers hear "stopped") instead of waiting for a runner forever.
        let _forget = Forget(&self, &app);
        loop {
            let batch: Vec<Queued> = {
                let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
                let Some(q) = queues.get_mut(&app) else {
                    return;
                };
                if q.is_empty() {
                    queues.remove(&app);
                    return;
                }
                let n = q.len().min(MAX_BATCH);
                q.drain(..n).collect()
            };
            // Callers that gave up (timed out, hung up) are left out.
            let batch: Vec<Queued> = batch
                .into_iter()
                .filter(|(_, done)| !done.is_closed())
                .collect();
            if batch.is_empty() {
                continue;
            }
            let Ok(_running) = self.running.acquire().await else {
                return;
            };
            admit_batch(&self.pool, &app, batch).await;
        }
    }
}

/// Forgets an app's queue when its runner unwinds.
struct Forget<'a>(&'a Admissions, &'a str);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut queues = self.0.queues.lock().unwrap_or_else(|p| p.into_inner());
            queues.remove(self.1);
        }
    }
}

/// One transaction for `batch`; answers every admission in it.
async fn admit_batch(pool: &Pool, app: &str, batch: Vec<Queued>) {
    let (rest, answers): (Vec<Waiting>, Vec<_>) = batch.into_iter().unzip();
    let mut answers: Vec<Option<oneshot::Sender<Answer>>> = answers.into_iter().map(Some).collect();
    match transact(pool, app, rest, &mut answers).await {
        Ok(()) => {}
        Err(e) => {
            let msg = e.to_string();
            let busy = matches!(e, StoreError::Busy(_));
            for done in answers.into_iter().flatten() {
                let e = if busy {
                    StoreError::Busy(msg.clone())
                } else {
                    StoreError::Backend(msg.clone())
                };
                let _ = done.send(Err(e));
            }
        }
    }
}

/// The batch's transaction. Answers refusals at once and holds after the
/// commit; what is left unanswered gets the error.
async fn transact(
    pool: &Pool,
    app: &str,
    batch: Vec<Waiting>,
    answers: &mut [Option<oneshot::Sender<Answer>>],
) -> Result<(), StoreError> {
    // No connection in time is tried again (the callers' own wait bounds
    // it): a connection being made is a server process starting.
    let mut conn = loop {
        match pool.get().await {
            Ok(c) => break c,
            Err(deadpool_postgres::PoolError::Timeout(_))
                if !answers.iter().flatten().all(|d| d.is_closed()) => {}
            Err(e) => return Err(e.into()),
        }
    };
    let tx = conn.transaction().await?;
    // A hold is a reservation, not money: its commit does not wait for the
    // WAL flush, so the app's lock is held for the round trips only. A
    // database crash may forget holds taken in its last few milliseconds;
    // their commits are then refused (`HoldLapsed`), never booked twice.
    tx.batch_execute("SET LOCAL synchronous_commit = off")
        .await?;
    // The lock first; then one statement, so one snapshot taken after the
    // lock, reads everything the checks need.
    if tx
        .query_opt(
            &tx.prepare_cached("SELECT 1 FROM apps WHERE id = $1 FOR UPDATE")
                .await?,
            &[&app],
        )
        .await?
        .is_none()
    {
        for done in answers.iter_mut().filter_map(Option::take) {
            let _ = done.send(Ok(None));
        }
        return Ok(());
    }
    // Live holds judged at the latest caller's now, shifted by its wait.
    let now = batch
        .iter()
        .map(|w| w.shifted(w.now_ms))
        .max()
        .unwrap_or_default();
    let scopes: Vec<&str> = batch
        .iter()
        .flat_map(|w| w.scopes.iter().map(String::as_str))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let windows: Vec<&str> = batch
        .iter()
        .flat_map(|w| w.windows.iter().map(String::as_str))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut funds = read_funds(&tx, app, to_i64(now, "time")?, &scopes, &windows).await?;
    // (index in the batch, the hold, its expiry)
    let mut accepted: Vec<(usize, LiveHold, i64)> = Vec::new();
    for (i, w) in batch.into_iter().enumerate() {
        let expires = to_i64(w.shifted(w.expires_at_ms), "time")?;
        let hold = LiveHold {
            key_id: w.key_id,
            end_customer: w.end_customer,
            amount: to_u64(w.amount, "hold")?,
        };
        if (w.check)(&funds) {
            // Later checks in the batch see it, as they would had it been
            // taken in a transaction of its own.
            funds.holds.push(hold.clone());
            accepted.push((i, hold, expires));
        } else if let Some(done) = answers[i].take() {
            let _ = done.send(Ok(Some(None)));
        }
    }
    if accepted.is_empty() {
        return Ok(());
    }
    // Ids first (one statement), so each hold's id is known whatever
    // order the insert's rows come back in.
    let ids: Vec<i64> = tx
        .query(
            &tx.prepare_cached(
                "SELECT nextval(pg_get_serial_sequence('holds', 'id')) FROM generate_series(1, $1::bigint)",
            )
            .await?,
            &[&(accepted.len() as i64)],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let apps: Vec<&str> = accepted.iter().map(|_| app).collect();
    let keys: Vec<&str> = accepted.iter().map(|(_, h, _)| h.key_id.as_str()).collect();
    let customers: Vec<Option<&str>> = accepted
        .iter()
        .map(|(_, h, _)| h.end_customer.as_deref())
        .collect();
    let amounts: Vec<i64> = accepted
        .iter()
        .map(|(_, h, _)| to_i64(h.amount, "hold"))
        .collect::<Result<_, _>>()?;
    let expiries: Vec<i64> = accepted.iter().map(|(_, _, e)| *e).collect();
    tx.execute(
        &tx.prepare_cached(
            "INSERT INTO holds (id, app, key_id, end_customer, amount, expires_at_ms) \
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[])",
        )
        .await?,
        &[&ids, &apps, &keys, &customers, &amounts, &expiries],
    )
    .await?;
    tx.commit().await?;
    let mut unclaimed = Vec::new();
    for ((i, _, _), id) in accepted.iter().zip(&ids) {
        if let Some(done) = answers[*i].take()
            && done.send(Ok(Some(Some(*id)))).is_err()
        {
            unclaimed.push(*id);
        }
    }
    if !unclaimed.is_empty() {
        // Their callers gave up meanwhile: nobody will commit or release
        // them, so they go now (or expire).
        let _ = conn
            .execute("DELETE FROM holds WHERE id = ANY($1)", &[&unclaimed])
            .await;
    }
    Ok(())
}

/// The app's top-ups, live holds at `now` and the spend rows of `scopes` ×
/// `windows` (and the app's total), in one statement.
async fn read_funds(
    tx: &deadpool_postgres::Transaction<'_>,
    app: &str,
    now: i64,
    scopes: &[&str],
    windows: &[&str],
) -> Result<Funds, StoreError> {
    let (total_scope, total_win) = SpendKey::APP_TOTAL.encode();
    let row = tx.query_one(
&tx.prepare_cached("SELECT a.topped_up, h.keys, h.customers, h.amounts, s.scopes, s.wins, s.amounts \
             FROM apps a, \
             LATERAL (SELECT array_agg(key_id ORDER BY id) AS keys, array_agg(end_customer ORDER BY id) AS customers, \
                      array_agg(amount ORDER BY id) AS amounts \
                      FROM holds WHERE app = a.id AND expires_at_ms > $2) h, \
             LATERAL (SELECT array_agg(scope) AS scopes, array_agg(win) AS wins, array_agg(amount) AS amounts \
                      FROM spend WHERE app = a.id AND ((scope = ANY($3) AND win = ANY($4)) OR (scope = $5 AND win = $6))) s \
             WHERE a.id = $1").await?,
            &[&app, &now, &scopes, &windows, &total_scope, &total_win],
        )
        .await?;
    let mut funds = Funds {
        topped_up: to_u64(row.get(0), app)?,
        ..Funds::default()
    };
    let keys: Vec<String> = row.get::<_, Option<Vec<String>>>(1).unwrap_or_default();
    let customers: Vec<Option<String>> = row
        .get::<_, Option<Vec<Option<String>>>>(2)
        .unwrap_or_default();
    let amounts: Vec<i64> = row.get::<_, Option<Vec<i64>>>(3).unwrap_or_default();
    for ((key_id, end_customer), a) in keys.into_iter().zip(customers).zip(amounts) {
        funds.holds.push(LiveHold {
            key_id,
            end_customer,
            amount: to_u64(a, "hold")?,
        });
    }
    let scopes: Vec<String> = row.get::<_, Option<Vec<String>>>(4).unwrap_or_default();
    let wins: Vec<String> = row.get::<_, Option<Vec<String>>>(5).unwrap_or_default();
    let amounts: Vec<i64> = row.get::<_, Option<Vec<i64>>>(6).unwrap_or_default();
    for ((scope, win), a) in scopes.into_iter().zip(wins).zip(amounts) {
        let a = to_u64(a, "spend")?;
        let key = SpendKey::parse(&scope, &win).ok_or_else(|| StoreError::Corrupt {
            id: format!("{app}/{scope}/{win}"),
            reason: "not a spend row's name".into(),
        })?;
        if key == SpendKey::APP_TOTAL {
            funds.charged = a;
        }
        funds.spent.insert(key, a);
    }
    Ok(funds)
}

/// How long a caller waits for its app's runner before the books are busy.
pub(crate) const WAIT: Duration = Duration::from_secs(30);
