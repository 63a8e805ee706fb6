//! Starting a node: models, store, network, advert loop and job acceptor.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Context;
use sharenet_engine::TextModel;
use sharenet_ledger::{ReceiptStore, SledReceiptStore};
use sharenet_p2p::{Client, Event, Identity, Multiaddr, NetworkConfig, PeerId};
use sharenet_proto::{Advert, ModelOffer, SignedAdvert};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{ModelConfig, NodeConfig, jobs, now_ms};

/// Shortest gap between two adverts (changes in load are coalesced).
const MIN_ADVERT_GAP: Duration = Duration::from_millis(250);
/// Retry delay while no peer is subscribed to the advert topic yet.
const ADVERT_RETRY: Duration = Duration::from_millis(500);

/// A model being served, with its admission state.
pub(crate) struct ServedModel {
    pub(crate) config: ModelConfig,
    pub(crate) model: Arc<TextModel>,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) running: AtomicU32,
    pub(crate) waiting: AtomicU32,
}

/// What every job handler shares.
pub(crate) struct NodeCtx {
    pub(crate) identity: Identity,
    pub(crate) models: Vec<Arc<ServedModel>>,
    pub(crate) store: Arc<dyn ReceiptStore>,
    /// Poked when load changes, so the advert goes out promptly.
    pub(crate) load_changed: Notify,
}

impl NodeCtx {
    pub(crate) fn model(&self, id: &str) -> Option<&Arc<ServedModel>> {
        self.models.iter().find(|m| m.config.id == id)
    }
}

/// A running node.
pub struct NodeHandle {
    pub peer_id: PeerId,
    pub listen_addrs: Vec<Multiaddr>,
    pub client: Client,
    /// The node's own receipt store (for audits and tests).
    pub store: Arc<dyn ReceiptStore>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl NodeHandle {
    /// Stops this node alone (its parent token stops it too).
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }

    /// Waits for every task of the node to finish (after cancellation).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Loads the models, opens the receipt store, joins the network and starts
/// serving. Stops when `cancel` is cancelled.
pub async fn start(config: NodeConfig, cancel: CancellationToken) -> anyhow::Result<NodeHandle> {
    config.validate()?;
    let cancel = cancel.child_token();
    let mut models = Vec::new();
    for m in &config.models {
        let path = m.path.clone();
        let started = std::time::Instant::now();
        let model = tokio::task::spawn_blocking(move || TextModel::load(&path))
            .await
            .context("join model loader")?
            .with_context(|| format!("load model {:?} from {}", m.id, m.path.display()))?;
        tracing::info!(model = %m.id, elapsed_ms = started.elapsed().as_millis() as u64, "model loaded");
        models.push(Arc::new(ServedModel {
            config: m.clone(),
            model: Arc::new(model),
            slots: Arc::new(Semaphore::new(m.max_concurrency as usize)),
            running: AtomicU32::new(0),
            waiting: AtomicU32::new(0),
        }));
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("create data_dir {}", config.data_dir.display()))?;
    let store_path = config.data_dir.join("receipts");
    let store = SledReceiptStore::open(&store_path)
        .with_context(|| format!("open receipt store {}", store_path.display()))?;

    let network = sharenet_p2p::start(
        NetworkConfig {
            identity: config.identity.clone(),
            listen: config.listen.clone(),
            bootstrap: config.bootstrap.clone(),
            event_capacity: 256,
        },
        cancel.clone(),
    )
    .await
    .context("start the libp2p network")?;
    let client = network.client.clone();
    let incoming = client.accept_jobs().context("accept job streams")?;

    let ctx = Arc::new(NodeCtx {
        identity: config.identity.clone(),
        models,
        store: Arc::new(store),
        load_changed: Notify::new(),
    });
    tracing::info!(peer = %client.peer_id(), addrs = ?client.listen_addrs(), "node started");

    let mut tasks = JoinSet::new();
    let net_task = network.task;
    tasks.spawn(async move {
        let _ = net_task.await;
    });
    tasks.spawn(advertise(
        ctx.clone(),
        client.clone(),
        network.events,
        config.advert_interval,
        config.advert_ttl,
        cancel.clone(),
    ));
    let store = ctx.store.clone();
    tasks.spawn(jobs::accept(ctx, incoming, cancel.clone()));
    Ok(NodeHandle {
        peer_id: client.peer_id(),
        listen_addrs: client.listen_addrs().to_vec(),
        client,
        store,
        cancel,
        tasks,
    })
}

fn build_advert(ctx: &NodeCtx, seq: u64, ttl: Duration) -> Advert {
    let now = now_ms();
    let mut queue_depth = 0u32;
    let mut max_concurrency = 0u32;
    let models = ctx
        .models
        .iter()
        .map(|m| {
            queue_depth = queue_depth
                .saturating_add(m.running.load(Ordering::Relaxed))
                .saturating_add(m.waiting.load(Ordering::Relaxed));
            max_concurrency = max_concurrency.saturating_add(m.config.max_concurrency);
            ModelOffer {
                id: m.config.id.clone(),
                price_in: m.config.price_in,
                price_out: m.config.price_out,
                context_length: u32::try_from(m.model.context_length()).unwrap_or(u32::MAX),
            }
        })
        .collect();
    Advert {
        node: ctx.identity.public_key(),
        models,
        max_concurrency,
        queue_depth,
        seq,
        issued_at_ms: now,
        expires_at_ms: now + ttl.as_millis() as u64,
    }
}

/// Publishes the advert on start, on every load change (at most every
/// [`MIN_ADVERT_GAP`]), whenever a new peer subscribes, and on a heartbeat.
async fn advertise(
    ctx: Arc<NodeCtx>,
    client: Client,
    mut events: tokio::sync::mpsc::Receiver<Event>,
    interval: Duration,
    ttl: Duration,
    cancel: CancellationToken,
) {
    // Sequence numbers start at the clock so a restarted node's adverts are newer.
    let mut seq = now_ms();
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = ctx.load_changed.notified() => tokio::time::sleep(MIN_ADVERT_GAP).await,
            event = events.recv() => match event {
                Some(Event::AdvertSubscriber { peer }) => {
                    tracing::debug!(%peer, "new advert subscriber; re-advertising");
                    tokio::time::sleep(MIN_ADVERT_GAP).await;
                }
                Some(_) => continue,
                None => return,
            },
        }
        seq += 1;
        let advert = build_advert(&ctx, seq, ttl);
        let signed = match SignedAdvert::sign(advert, ctx.identity.signing_key()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "sign advert");
                wait = interval;
                continue;
            }
        };
        wait = match client.publish_advert(signed.to_bytes()).await {
            Ok(()) => {
                tracing::debug!(seq, "advert published");
                interval
            }
            Err(e) => {
                tracing::debug!(error = %e, "advert not published yet");
                ADVERT_RETRY
            }
        };
    }
}
