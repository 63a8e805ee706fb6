//! The sharenet coordinator as a library: the builder-facing
//! OpenAI-compatible API, the registry of live nodes, dispatch with
//! fallback, and receipt checking, countersigning and storage. The binary
//! in `main.rs` is a thin CLI over [`start`] and [`devnet`].
//!
//! Architecture invariants: only this crate speaks HTTP/JSON to builders;
//! every error leaves through [`error::ApiError`]; a receipt is countersigned
//! only after it matches what the coordinator streamed, and is durable before
//! the builder sees the response that names it.

pub mod accounts;
pub mod config;
pub mod devnet;
pub mod dispatch;
pub mod error;
mod http;
pub mod openai;
mod operator;
pub mod prefs;
pub mod receipts;
pub mod registry;
pub mod routing;
pub mod settle;
pub mod spotcheck;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context;
use sharenet_ledger::Books;
use sharenet_p2p::{Client, Event, Identity, Multiaddr, NetworkConfig, PeerId};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::CoordinatorConfig;
pub use dispatch::Timeouts;
pub use http::app;

/// How often expired adverts are swept out of the registry.
const PRUNE_INTERVAL: Duration = Duration::from_secs(1);

/// Request counters, exported on `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub fallbacks: AtomicU64,
    pub receipts_accepted: AtomicU64,
    pub receipts_rejected: AtomicU64,
    /// Spot checks completed, and nodes found failing one.
    pub spot_checks: AtomicU64,
    pub spot_checks_failed: AtomicU64,
}

/// State shared by every request handler.
pub struct Shared {
    pub identity: Identity,
    pub client: Client,
    pub registry: registry::Registry,
    /// Apps, keys, balances and the ledger of jobs.
    pub accounts: Arc<accounts::Accounts>,
    pub operator_key: Option<String>,
    /// How time is cut into settlement periods.
    pub period_rule: sharenet_market::PeriodRule,
    /// Per-node routing state: measurements, trust, circuit breaker.
    pub health: std::sync::Mutex<std::collections::HashMap<[u8; 32], sharenet_router::NodeHealth>>,
    /// What routing reads: a candidate table per model, kept in step with
    /// the registry and `health` (lock `health` first when both are held).
    pub routing: routing::RoutingIndex,
    /// The routing decision's randomness (power of two choices, probation).
    pub rng: std::sync::Mutex<rand::rngs::StdRng>,
    pub timeouts: Timeouts,
    /// Nodes tried per request before giving up.
    pub max_attempts: usize,
    /// Share of text jobs re-run as spot checks (0 to 1).
    pub spot_check_rate: f64,
    pub metrics: Metrics,
}

/// A running coordinator.
pub struct CoordinatorHandle {
    pub http_addr: SocketAddr,
    pub peer_id: PeerId,
    /// libp2p addresses nodes can bootstrap from (with `/p2p/<id>`).
    pub p2p_addrs: Vec<Multiaddr>,
    pub state: Arc<Shared>,
    tasks: JoinSet<()>,
}

impl CoordinatorHandle {
    /// `http://ADDR/v1`, what OpenAI clients take as their base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.http_addr)
    }

    /// Waits for every task to finish (after cancellation).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Shared {
    /// Applies time to every node's routing row (trust and measurement
    /// decay, breaker cool-downs); once a second.
    pub fn refresh_routing(&self, now_ms: u64) {
        let tp = sharenet_router::TrustParams::default();
        if let Ok(mut health) = self.health.lock() {
            for (node, h) in health.iter_mut() {
                h.decay(now_ms);
                self.routing.update(node, h, now_ms, &tp);
            }
        }
    }

    /// Forgets every node's routing history (trust, measurements,
    /// breakers), as for a fresh coordinator; for tests and operators.
    pub fn reset_health(&self, now_ms: u64) {
        let tp = sharenet_router::TrustParams::default();
        if let Ok(mut health) = self.health.lock() {
            health.clear();
            for node in self.routing.nodes() {
                let h = health.entry(node).or_insert_with(|| {
                    sharenet_router::NodeHealth::new(now_ms, Default::default())
                });
                self.routing.update(&node, h, now_ms, &tp);
            }
        }
    }
}

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Opens the ledger, joins the network, binds the HTTP listener and starts
/// serving. Stops when `cancel` is cancelled.
pub async fn start(
    config: CoordinatorConfig,
    cancel: CancellationToken,
) -> anyhow::Result<CoordinatorHandle> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("create data_dir {}", config.data_dir.display()))?;
    let books_path = config.data_dir.join("books");
    // The books' MAC key is derived from the coordinator's secret key, so
    // only the holder of that key can write entries bulk reads trust.
    let mac_key = {
        let mut material = b"sharenet/books-mac/v1\0".to_vec();
        material.extend_from_slice(&config.identity.signing_key().to_bytes());
        sharenet_proto::sha256(&material)
    };
    let books = Books::open_keyed(&books_path, mac_key)
        .with_context(|| format!("open the books {}", books_path.display()))?;
    let accounts = accounts::Accounts::load(
        Arc::new(books),
        config.network_fee_bps,
        &config.identity.public_key(),
    )
    .map_err(|e| anyhow::anyhow!("load accounts: {e}"))?;
    accounts::bootstrap(
        &accounts,
        &config.api_keys,
        &accounts::Bootstrap {
            app: "default".into(),
            balance: config.bootstrap_balance,
        },
        now_ms(),
    )
    .map_err(|e| anyhow::anyhow!("install the configured api_keys: {e}"))?;
    if config.spot_check_rate > 0.0 {
        accounts::ensure_operator_app(
            &accounts,
            spotcheck::SPOT_CHECK_APP,
            "spot checks (paid by the operator)",
            config.spot_check_funding,
            now_ms(),
        )
        .map_err(|e| anyhow::anyhow!("create the spot-checks app: {e}"))?;
    }
    let network = sharenet_p2p::start(
        NetworkConfig {
            identity: config.identity.clone(),
            listen: config.p2p_listen.clone(),
            bootstrap: config.bootstrap.clone(),
            event_capacity: 4096,
            relay_server: config.relay_server,
            relays: Vec::new(),
        },
        cancel.clone(),
    )
    .await
    .context("start the libp2p network")?;
    let listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("bind HTTP listener on {}", config.http_listen))?;
    let http_addr = listener
        .local_addr()
        .context("read HTTP listener address")?;

    let state = Arc::new(Shared {
        identity: config.identity.clone(),
        client: network.client.clone(),
        registry: registry::Registry::default(),
        accounts: Arc::new(accounts),
        operator_key: config.operator_key.clone(),
        period_rule: config.period_rule,
        health: std::sync::Mutex::new(std::collections::HashMap::new()),
        routing: routing::RoutingIndex::default(),
        rng: std::sync::Mutex::new(<rand::rngs::StdRng as rand::SeedableRng>::from_os_rng()),
        timeouts: config.timeouts,
        max_attempts: config.max_attempts,
        spot_check_rate: config.spot_check_rate,
        metrics: Metrics::default(),
    });

    let mut tasks = JoinSet::new();
    let net_task = network.task;
    tasks.spawn(async move {
        let _ = net_task.await;
    });
    tasks.spawn(watch_network(state.clone(), network.events, cancel.clone()));
    let router = app(state.clone());
    let shutdown = cancel.clone();
    tasks.spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    let p2p_addrs = network.client.listen_addrs().to_vec();
    tracing::info!(peer = %network.client.peer_id(), %http_addr, ?p2p_addrs, "coordinator started");
    Ok(CoordinatorHandle {
        http_addr,
        peer_id: network.client.peer_id(),
        p2p_addrs,
        state,
        tasks,
    })
}

/// Feeds adverts and RTTs into the registry and sweeps expired adverts.
async fn watch_network(
    state: Arc<Shared>,
    mut events: tokio::sync::mpsc::Receiver<Event>,
    cancel: CancellationToken,
) {
    let mut prune = tokio::time::interval(PRUNE_INTERVAL);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = prune.tick() => {
                let now = now_ms();
                for node in state.registry.prune(now) {
                    state.routing.remove(&node);
                }
                state.refresh_routing(now);
            }
            event = events.recv() => match event {
                None => return,
                Some(Event::Advert { source, data }) => {
                    let now = now_ms();
                    match state.registry.ingest(source, &data, now) {
                        Ok(()) => {
                            if let Some(advert) = state.registry.advert(&source)
                                && let Ok(mut health) = state.health.lock()
                            {
                                let h = health.entry(advert.node).or_insert_with(|| {
                                    sharenet_router::NodeHealth::new(now, Default::default())
                                });
                                h.decay(now);
                                state.routing.upsert(&advert, h, now, &Default::default());
                            }
                        }
                        Err(reason) => {
                            tracing::debug!(peer = %source, %reason, "advert refused");
                        }
                    }
                }
                Some(Event::Rtt { peer, rtt }) => {
                    state.registry.set_rtt(peer, rtt);
                    if let Some(key) = state.registry.node_key(&peer)
                        && let Ok(mut health) = state.health.lock()
                    {
                        let now = now_ms();
                        let h = health.entry(key).or_insert_with(|| {
                            sharenet_router::NodeHealth::new(now, Default::default())
                        });
                        h.observed.record_rtt(rtt.as_secs_f64() * 1000.0);
                        state.routing.update(&key, h, now, &Default::default());
                    }
                }
                Some(_) => {}
            },
        }
    }
}
