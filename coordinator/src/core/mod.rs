//! The coordinator's core: everything it decides, with no HTTP in it.
//!
//! Dependency rule: `http` → `core`, never back; `core` → the pure crates
//! (`router`, `market`), `ledger` (the books), `proto`/`api` (wire types)
//! and `p2p` only for peer ids, frames and its [`transport::Transport`]
//! implementation; within the crate, only the leaf `config` module. No
//! web framework and nothing of the HTTP layer is named here.
//!
//! - [`job`]: a validated job (kind, models, input, sampling, preferences)
//!   and its bounds;
//! - [`dispatch`]: planning, admission, the attempt loop, relaying and
//!   booking, in named steps;
//! - [`routing`]: node health and the routing index under one lock;
//! - [`registry`]: verified live adverts, gated by the [`catalog`];
//! - [`catalog`]: the models routed, by canonical id, with their
//!   tokenizers and accepted weights;
//! - [`accounts`]: apps, keys, balances, holds, budgets, rate limits;
//! - [`receipts`]: checking a node's receipt against what we saw;
//! - [`spotcheck`]: re-running sampled jobs, fed by dispatch's completion
//!   hook;
//! - [`settle`] and [`queries`]: settlement, and reads of the books;
//! - [`transport`]: the seam to the network (libp2p or a test double).

pub mod accounts;
pub mod catalog;
pub mod clock;
pub mod dashboard;
pub mod dispatch;
pub mod error;
pub mod job;
pub mod metrics;
pub mod queries;
pub mod receipts;
pub mod registry;
pub mod routing;
pub mod settle;
pub mod spotcheck;
pub mod sync;
pub mod transport;

pub use clock::now_ms;
pub use metrics::Metrics;

/// Job streams opened at once (stream and request), across all nodes: a
/// burst waits its turn instead of arriving at a node's libp2p acceptor
/// all together (which drops what it cannot take at once).
pub const MAX_OPENING: usize = 64;

use std::future::Future;
use std::sync::Arc;

use std::time::Duration;

use anyhow::Context;
use sharenet_ledger::Books;
use sharenet_market::Settlement;
use sharenet_p2p::{Event, Identity};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::CoordinatorConfig;
use crate::config::Timeouts;
use error::Error;
use job::CompletedJob;
use transport::Transport;

/// How often expired adverts are swept out and time is applied to routing.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Finished jobs waiting for the spot-check sampler; beyond this a
/// notice is dropped (and counted): checks are a sample anyway.
const COMPLETED_QUEUE: usize = 256;

/// The coordinator's shared state and the operations on it.
pub struct Core {
    pub identity: Identity,
    pub transport: Arc<dyn Transport>,
    /// Job streams being opened (stream, then request) at once, at most
    /// [`MAX_OPENING`]; dispatch waits for a permit.
    pub opening: tokio::sync::Semaphore,
    pub registry: registry::Registry,
    /// The model catalog (also the registry's gate).
    pub catalog: Arc<catalog::Catalog>,
    pub routing: Arc<routing::Routing>,
    /// See `CoordinatorConfig::spill_queue_factor`.
    pub spill_queue_factor: u32,
    /// See `CoordinatorConfig::aliases`.
    pub aliases: std::collections::BTreeMap<String, String>,
    pub accounts: Arc<accounts::Accounts>,
    pub operator_key: Option<String>,
    /// How time is cut into settlement periods.
    pub period_rule: sharenet_market::PeriodRule,
    pub timeouts: Timeouts,
    /// Nodes tried per request before giving up.
    pub max_attempts: usize,
    pub metrics: Arc<Metrics>,
    /// Dispatch's completion hook: finished jobs for the spot-check
    /// sampler (absent when spot checks are off).
    completed: Option<mpsc::Sender<CompletedJob>>,
    /// One settlement at a time.
    settling: tokio::sync::Mutex<()>,
    /// Bundles of settled periods, built once (`queries.rs`).
    bundles: std::sync::Mutex<
        std::collections::HashMap<String, Arc<sharenet_api::statements::StatementBundle>>,
    >,
    /// Every task the core spawns, so shutdown can wait for them.
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// Most characters of a node-controlled string shown in a log or error.
pub const MAX_SHOWN_CHARS: usize = 200;

/// A string a node sent, fit for a log line or a builder's error message:
/// control characters escaped (no forged log lines, no terminal escapes)
/// and at most [`MAX_SHOWN_CHARS`] characters.
pub fn untrusted(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(MAX_SHOWN_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if s.chars().nth(MAX_SHOWN_CHARS).is_some() {
        out.push('…');
    }
    out
}

impl Core {
    /// Opens the books and accounts in `config.data_dir`, installs the
    /// configured keys and the spot-checks app. Returns the core and, when
    /// spot checks are on, the receiving end of the completion hook.
    pub async fn open(
        config: &CoordinatorConfig,
        transport: Arc<dyn Transport>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> anyhow::Result<(Arc<Self>, Option<mpsc::Receiver<CompletedJob>>)> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("create data_dir {}", config.data_dir.display()))?;
        // The books' MAC key is derived from the coordinator's secret key, so
        // only the holder of that key can write entries bulk reads trust.
        let mac_key = {
            let mut material = b"sharenet/books-mac/v1\0".to_vec();
            material.extend_from_slice(&config.identity.signing_key().to_bytes());
            sharenet_proto::sha256(&material)
        };
        let accounts = match &config.database {
            None => {
                let books_path = config.data_dir.join("books");
                let books = Books::open_keyed(&books_path, mac_key)
                    .with_context(|| format!("open the books {}", books_path.display()))?;
                Arc::new(
                    accounts::Accounts::load(
                        Arc::new(books),
                        config.network_fee_bps,
                        &config.identity.public_key(),
                    )
                    .context("load accounts from the books")?,
                )
            }
            Some(db) => {
                // A separate folder: the embedded books of a coordinator
                // that ran alone are never taken for a mirror.
                let mirror_path = config.data_dir.join("books-mirror");
                let mirror = Books::open_keyed(&mirror_path, mac_key)
                    .with_context(|| format!("open the mirror {}", mirror_path.display()))?;
                let pg = sharenet_ledger::pg::PgLedger::connect(&db.url, db.pool_size)
                    .await
                    .context("connect to the database (database_url)")?;
                let accounts = accounts::Accounts::load_shared(
                    Arc::new(mirror),
                    Arc::new(pg),
                    accounts::SharedOptions {
                        replicas: db.replicas,
                        hold_ttl_ms: u64::try_from(db.hold_ttl.as_millis()).unwrap_or(u64::MAX),
                    },
                    config.network_fee_bps,
                    &config.identity.public_key(),
                )
                .await
                .context("follow the shared books")?;
                tasks.spawn(accounts.clone().run_shared(shutdown.clone()));
                accounts
            }
        };
        accounts::bootstrap(
            &accounts,
            &config.api_keys,
            &accounts::Bootstrap {
                app: "default".into(),
                balance: config.bootstrap_balance,
            },
            now_ms(),
        )
        .await
        .context("install the configured api_keys")?;
        let (completed, completed_rx) = if config.spot_check_rate > 0.0 {
            accounts::ensure_operator_app(
                &accounts,
                accounts::SPOT_CHECK_APP,
                "spot checks (paid by the operator)",
                config.spot_check_funding,
                now_ms(),
            )
            .await
            .context("create the spot-checks app")?;
            let (tx, rx) = mpsc::channel(COMPLETED_QUEUE);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let catalog = Arc::new(
            catalog::Catalog::open(&config.catalog_path(), config.catalog.allow_uncatalogued)
                .context("load the model catalog (catalog_file)")?,
        );
        // The catalog's aliases, unless `[aliases]` names them otherwise.
        let mut aliases = catalog.aliases();
        aliases.extend(config.aliases.clone());
        let core = Arc::new(Self {
            identity: config.identity.clone(),
            transport,
            registry: registry::Registry::new(config.price_ceiling).with_catalog(catalog.clone()),
            catalog,
            opening: tokio::sync::Semaphore::new(MAX_OPENING),
            spill_queue_factor: config.spill_queue_factor,
            aliases,
            routing: Arc::new(routing::Routing::new(
                rand::random(),
                config.timeouts.first_token.as_secs_f64() * 500.0,
            )),
            accounts,
            operator_key: config.operator_key.clone(),
            period_rule: config.period_rule,
            timeouts: config.timeouts,
            max_attempts: config.max_attempts,
            metrics: Arc::new(Metrics::new()),
            completed,
            settling: tokio::sync::Mutex::new(()),
            bundles: Default::default(),
            tasks,
            shutdown,
        });
        Ok((core, completed_rx))
    }

    /// Spawns `task` on the core's tracker, so shutdown waits for it.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Cancelled when the coordinator is shutting down.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Dispatch's completion hook.
    pub(crate) fn job_completed(&self, done: CompletedJob) {
        if let Some(tx) = &self.completed
            && tx.try_send(done).is_err()
        {
            self.metrics.spot_check_notices_dropped.inc();
        }
    }

    /// A gossiped advert: verified into the registry, then into routing.
    /// When the registry is full, a node with history takes the place of
    /// one without.
    pub fn on_advert(&self, source: sharenet_p2p::PeerId, data: &[u8], now_ms: u64) {
        let has_history = |node: &[u8; 32]| self.routing.has_history(node, now_ms);
        match self
            .registry
            .ingest_preferring(source, data, now_ms, &has_history)
        {
            Ok(evicted) => {
                if let Some(node) = evicted {
                    self.routing.remove(&node, now_ms);
                }
                if let Some(advert) = self.registry.advert(&source) {
                    self.routing.on_advert(&advert, now_ms);
                }
            }
            Err(reason) => tracing::debug!(peer = %source, %reason, "advert refused"),
        }
    }

    /// A ping round trip to a peer.
    pub fn on_rtt(&self, peer: sharenet_p2p::PeerId, rtt: Duration, now_ms: u64) {
        self.registry.set_rtt(peer, rtt);
        if let Some(node) = self.registry.node_key(&peer) {
            self.routing
                .on_rtt(node, rtt.as_secs_f64() * 1000.0, now_ms);
        }
    }

    /// Drops expired adverts from the registry and routing.
    pub fn prune_expired(&self, now_ms: u64) {
        for node in self.registry.prune(now_ms) {
            self.routing.remove(&node, now_ms);
        }
    }

    /// The once-a-second tick: expiries, then time applied to routing.
    pub fn tick(&self, now_ms: u64) {
        self.prune_expired(now_ms);
        self.routing.refresh(now_ms);
    }

    /// Settles the period containing `at_ms` (default: the last one that
    /// has ended). One settlement runs at a time, so two periods can never
    /// sweep the same entries. Returns the statement and whether this call
    /// made it.
    pub async fn settle(&self, at_ms: Option<u64>) -> Result<(Settlement, bool), Error> {
        let _one_at_a_time = self.settling.lock().await;
        let now = now_ms();
        let period = settle::period_to_settle(self.period_rule, at_ms, now)?;
        let label = period.label();
        let books = self.accounts.books().clone();
        let key = self.identity.signing_key().clone();
        let Some(pg) = self.accounts.shared().cloned() else {
            return tokio::task::spawn_blocking(move || {
                settle::settle(&books, &key, period, &label, now)
            })
            .await?;
        };
        // Replicas: one settlement in the whole deployment at a time.
        let lock = pg.settle_lock().await?;
        let settled = async {
            if let Some(existing) = pg.statement(&label).await? {
                let statement =
                    Settlement::from_parts(&existing.statement, &existing.builder_lines)
                        .map_err(|e| Error::Internal(e.to_string()))?;
                if books.statement(&label)?.is_none() {
                    books.put_statement(&existing)?;
                }
                return Ok((statement, false));
            }
            // Every replica's entries and statements committed so far.
            self.accounts.follow().await?;
            let deployment = pg.coordinators().await?;
            let runtime = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                settle::settle_then(&books, &key, &deployment, period, &label, now, |record| {
                    if runtime.block_on(pg.put_statement(record))? {
                        Ok(())
                    } else {
                        Err(Error::Internal(format!(
                            "period {} was settled by another replica meanwhile",
                            record.label
                        )))
                    }
                })
            })
            .await?
        }
        .await;
        lock.release().await;
        settled
    }
}

/// Feeds network events into the core and ticks it, until shutdown.
pub async fn watch_network(
    core: Arc<Core>,
    mut events: mpsc::Receiver<Event>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(REFRESH_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => core.tick(now_ms()),
            event = events.recv() => match event {
                None => return,
                Some(Event::Advert { source, data }) => core.on_advert(source, &data, now_ms()),
                Some(Event::Rtt { peer, rtt }) => core.on_rtt(peer, rtt, now_ms()),
                Some(_) => {}
            },
        }
    }
}
