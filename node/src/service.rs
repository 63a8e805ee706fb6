//! Starting a node: models, store, network, advert loop and job acceptor.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use anyhow::Context;
use sharenet_engine::{Scheduler, SchedulerConfig};
use sharenet_ledger::{ReceiptStore, SledReceiptStore};
use sharenet_p2p::{Client, Event, Multiaddr, NetworkConfig, PeerId};
use sharenet_proto::{Advert, Capabilities, ModelKind, ModelOffer, SignedAdvert};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::ModelSource;
use crate::load::Loaded;
use crate::metrics::NodeMetrics;
use crate::state::{Backend, NodeCtx, PriceState, ServedModel};
use crate::upstream::Upstream;
use crate::{ModelConfig, NodeConfig, jobs, now_ms};

/// Shortest gap between two adverts (changes in load are coalesced).
const MIN_ADVERT_GAP: Duration = Duration::from_millis(250);
/// Retry delay while no peer is subscribed to the advert topic yet.
const ADVERT_RETRY: Duration = Duration::from_millis(500);

/// What [`NodeHandle::reload`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reload {
    /// Models whose prices changed, with the new prices.
    pub repriced: Vec<String>,
    /// Models loaded and now advertised.
    pub added: Vec<String>,
    /// Models no longer advertised (their running jobs finish).
    pub removed: Vec<String>,
    /// Models that could not be added, with the reason.
    pub failed: Vec<String>,
    /// Changes that were not applied (they need a restart).
    pub needs_restart: Vec<String>,
}

/// A running node.
pub struct NodeHandle {
    pub peer_id: PeerId,
    pub listen_addrs: Vec<Multiaddr>,
    pub client: Client,
    /// The node's own receipt store (for audits and tests).
    pub store: Arc<dyn ReceiptStore>,
    ctx: Arc<NodeCtx>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    config: NodeConfig,
}

impl NodeHandle {
    /// The node's ed25519 public key (the signer of its receipts).
    pub fn public_key(&self) -> sharenet_proto::PublicKey {
        self.ctx.identity.public_key()
    }

    /// Jobs of `model` running or waiting on this node right now.
    pub fn queue_depth(&self, model: &str) -> Option<u32> {
        self.ctx.model(model).map(|m| m.queue_depth())
    }

    /// Stops this node alone (its parent token stops it too).
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }

    /// Applies a changed config without dropping jobs (SIGHUP):
    /// - new prices go into the next advert at once; jobs already running
    ///   keep the prices they started at, and until the old advert has
    ///   expired everywhere (`advert_ttl`) new jobs are charged the lower
    ///   of the old and new price;
    /// - a model added to `[[models]]` is loaded (the others keep serving
    ///   meanwhile) and advertised; one that fails to load is reported and
    ///   the rest of the reload still applies;
    /// - a model removed is advertised no more and refuses new jobs; the
    ///   jobs it is running finish (they hold it), then it is unloaded.
    ///
    /// A model whose source, kind or limits changed, and changes to
    /// addresses or identity, need a restart and are listed, not applied.
    pub async fn reload(&self, config: &NodeConfig) -> Reload {
        let mut out = Reload::default();
        let until = now_ms().saturating_add(config.advert_ttl.as_millis() as u64);
        for m in self.ctx.models() {
            let Some(new) = config.models.iter().find(|n| n.id == m.config.id) else {
                self.ctx.models_mut().retain(|x| !Arc::ptr_eq(x, &m));
                out.removed.push(m.config.id.clone());
                continue;
            };
            let unchanged_but_prices = ModelConfig {
                price_in: m.config.price_in,
                price_out: m.config.price_out,
                ..new.clone()
            };
            if unchanged_but_prices != m.config {
                out.needs_restart
                    .push(format!("model {} changed beyond its prices", m.config.id));
            }
            let mut p = m
                .prices
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let wanted = (new.price_in, new.price_out);
            if wanted != p.current {
                *p = PriceState {
                    previous: Some((p.current, until)),
                    current: wanted,
                };
                out.repriced.push(format!(
                    "{}: {}/{} nano-USD per token",
                    m.config.id, wanted.0, wanted.1
                ));
            }
        }
        for n in &config.models {
            if self.ctx.models().iter().any(|m| m.config.id == n.id) {
                continue;
            }
            match load_and_serve(n, &self.ctx.load_changed).await {
                Ok(served) => {
                    self.ctx.models_mut().push(Arc::new(served));
                    out.added.push(n.id.clone());
                }
                Err(e) => out.failed.push(format!("{}: {e:#}", n.id)),
            }
        }
        self.ctx.load_changed.notify_one();
        out
    }

    /// Resolves when the local API's `POST /reload` asks for a reload (the
    /// binary then re-reads its config file and calls [`Self::reload`]).
    pub async fn reload_requested(&self) {
        self.ctx.reload_requested.notified().await;
    }

    /// The config the node started with.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Job streams being served right now.
    pub fn jobs_in_flight(&self) -> usize {
        self.ctx.serving.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Drains before a shutdown: new jobs are refused (the coordinator
    /// tries another node), the next advert offers no models, and this
    /// returns once the jobs in flight have finished and sent their
    /// receipts, or after `timeout`. Returns how many were still running.
    pub async fn drain(&self, timeout: Duration) -> usize {
        use std::sync::atomic::Ordering;
        self.ctx.draining.store(true, Ordering::SeqCst);
        self.ctx.load_changed.notify_one();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = self.ctx.serving.load(Ordering::SeqCst);
            if left == 0 || tokio::time::Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
    let load_changed = Arc::new(Notify::new());
    let gpus = tokio::task::spawn_blocking(crate::gpu::detect)
        .await
        .context("join GPU detection")?;
    let mut models = Vec::new();
    for m in &config.models {
        models.push(Arc::new(load_and_serve(m, &load_changed).await?));
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
            relay_server: false,
            relays: config.relays.clone(),
            relay_max_circuit_bytes: sharenet_p2p::RELAY_MAX_CIRCUIT_BYTES,
        },
        cancel.clone(),
    )
    .await
    .context("start the libp2p network")?;
    let client = network.client.clone();
    let incoming = client.accept_jobs().context("accept job streams")?;

    let ctx = Arc::new(NodeCtx {
        identity: config.identity.clone(),
        models: std::sync::RwLock::new(models),
        store: Arc::new(store),
        gpus,
        region: config.region.clone().unwrap_or_default(),
        relayed: std::sync::atomic::AtomicBool::new(
            !config.relays.is_empty() && config.listen.is_empty(),
        ),
        has_relays: !config.relays.is_empty(),
        load_changed,
        coordinators: config.coordinators.clone(),
        draining: std::sync::atomic::AtomicBool::new(false),
        serving: std::sync::atomic::AtomicUsize::new(0),
        keeps_prompts: config.keeps_prompts,
        metrics: NodeMetrics::new().context("set up the node's metrics")?,
        reload_requested: Notify::new(),
    });
    if config.coordinators.is_empty() {
        tracing::warn!(
            "no coordinators configured (`coordinators`, or a /p2p/ id in `bootstrap`): every job will be refused"
        );
    }
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
    if let Some(addr) = config.admin_listen {
        let admin = crate::admin::serve(ctx.clone(), client.clone(), addr, cancel.clone()).await?;
        tasks.spawn(admin);
    }
    let store = ctx.store.clone();
    tasks.spawn(jobs::accept(ctx.clone(), incoming, cancel.clone()));
    Ok(NodeHandle {
        peer_id: client.peer_id(),
        listen_addrs: client.listen_addrs().to_vec(),
        client,
        store,
        ctx,
        cancel,
        tasks,
        config,
    })
}

/// Loads a model (off the async threads) and puts it behind its backend.
async fn load_and_serve(
    m: &ModelConfig,
    load_changed: &Arc<Notify>,
) -> anyhow::Result<ServedModel> {
    let mc = m.clone();
    let report = tokio::task::spawn_blocking(move || crate::load::load(&mc))
        .await
        .context("join model loader")??;
    serve_model(m, report.loaded, load_changed)
}

/// Puts a loaded model behind its backend.
fn serve_model(
    m: &ModelConfig,
    loaded: Loaded,
    load_changed: &Arc<Notify>,
) -> anyhow::Result<ServedModel> {
    let mut capabilities = Capabilities::default();
    let mut license = m.license.clone();
    let mut canonical = m
        .canonical
        .as_deref()
        .map(sharenet_proto::model_slug)
        .filter(|c| !c.is_empty());
    let (backend, kind, context_length, weights_sha256, quantization) = match (loaded, &m.source) {
        (Loaded::Text(model), _) => {
            capabilities = text_capabilities(&m.id, &model);
            license = license.or_else(|| model.license().map(str::to_owned));
            canonical = canonical.or_else(|| {
                model.weights_name().map(|n| {
                    let quant = match model.format() {
                        sharenet_engine::WeightsFormat::Gguf { dtype } => {
                            dtype.to_ascii_lowercase()
                        }
                        sharenet_engine::WeightsFormat::Safetensors => "f32".into(),
                    };
                    format!("{}:{quant}", sharenet_proto::model_slug(n))
                })
            });
            let context = u32::try_from(model.context_length()).unwrap_or(u32::MAX);
            let hash = model.weights_sha256();
            let quantization = match model.format() {
                sharenet_engine::WeightsFormat::Gguf { dtype } => dtype.clone(),
                sharenet_engine::WeightsFormat::Safetensors => "F32".to_string(),
            };
            let notify = load_changed.clone();
            let scheduler = Scheduler::start(
                model,
                SchedulerConfig {
                    max_concurrency: m.max_concurrency as usize,
                    max_queue: m.max_queue as usize,
                    kv_cache_bytes: m.kv_cache_bytes,
                },
                Box::new(move || notify.notify_one()),
            )
            .with_context(|| format!("start the scheduler for {:?}", m.id))?;
            (
                Backend::Text(scheduler),
                ModelKind::Text,
                context,
                Some(hash),
                quantization,
            )
        }
        (Loaded::Embed(e), _) => {
            let context = u32::try_from(e.max_tokens()).unwrap_or(u32::MAX);
            let hash = e.weights_sha256();
            (
                Backend::Embed(e),
                ModelKind::Embedding,
                context,
                Some(hash),
                "F32".to_string(),
            )
        }
        (Loaded::Upstream, ModelSource::Upstream(u)) => (
            {
                capabilities = u.capabilities;
                Backend::Upstream(
                    Upstream::new(u.clone()).context("build the upstream HTTP client")?,
                )
            },
            ModelKind::Text,
            u.context_length,
            None,
            String::new(),
        ),
        (Loaded::Upstream, ModelSource::Local(_)) => {
            anyhow::bail!("model {:?}: a local model loaded as upstream", m.id)
        }
    };
    Ok(ServedModel {
        config: m.clone(),
        backend,
        kind,
        context_length,
        capabilities,
        license: license.unwrap_or_default(),
        canonical: canonical.unwrap_or_default(),
        quantization,
        weights_sha256: m.claimed_weights_sha256.or(weights_sha256),
        slots: Arc::new(Semaphore::new(m.max_concurrency as usize)),
        running: AtomicU32::new(0),
        waiting: AtomicU32::new(0),
        prices: std::sync::Mutex::new(PriceState {
            current: (m.price_in, m.price_out),
            previous: None,
        }),
    })
}

/// What a local model can do: tools where its chat template takes them
/// (and the family's call format is known), structured outputs where its
/// vocabulary compiles into a constraint (checked now, which also builds
/// the token trie before the first job needs it).
fn text_capabilities(id: &str, model: &sharenet_engine::TextModel) -> Capabilities {
    let structured_outputs = match model.constraint(&sharenet_engine::Grammar::JsonSchema(
        serde_json::json!({"type": "object"}),
    )) {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(model = %id, error = %e, "structured outputs are off for this model");
            false
        }
    };
    Capabilities {
        tools: model.tool_format().is_some(),
        structured_outputs,
    }
}

fn build_advert(ctx: &NodeCtx, seq: u64, ttl: Duration) -> Advert {
    let now = now_ms();
    let mut queue_depth = 0u32;
    let mut max_concurrency = 0u32;
    // A draining node offers nothing: coordinators stop routing to it.
    let draining = ctx.draining.load(std::sync::atomic::Ordering::SeqCst);
    let models = ctx
        .models()
        .iter()
        .filter(|_| !draining)
        .map(|m| {
            queue_depth = queue_depth.saturating_add(m.queue_depth());
            max_concurrency = max_concurrency.saturating_add(m.config.max_concurrency);
            let (price_in, price_out) = m.advertised_prices();
            ModelOffer {
                id: m.config.id.clone(),
                price_in,
                price_out,
                context_length: m.context_length,
                kind: m.kind,
                quantization: m.quantization.clone(),
                tokens_per_sec: match &m.backend {
                    Backend::Text(s) => s.load().tokens_per_sec,
                    _ => 0,
                },
                weights_sha256: m.weights_sha256,
                capabilities: m.capabilities,
                license: m.license.clone(),
                canonical: m.canonical.clone(),
            }
        })
        .collect();
    Advert {
        node: ctx.identity.public_key(),
        models,
        gpus: ctx.gpus.clone(),
        region: ctx.region.clone(),
        relayed: ctx.relayed.load(std::sync::atomic::Ordering::Relaxed),
        keeps_prompts: ctx.keeps_prompts,
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
        // A deadline, not a fresh sleep per iteration: other events (other
        // nodes' adverts arrive every interval) must not keep pushing the
        // heartbeat back, or this node's advert expires while it is healthy.
        let next = tokio::time::Instant::now() + wait;
        let fired = loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(next) => break true,
                _ = ctx.load_changed.notified() => {
                    tokio::time::sleep(MIN_ADVERT_GAP).await;
                    break true;
                }
                event = events.recv() => match event {
                    Some(Event::AdvertSubscriber { peer }) => {
                        tracing::debug!(%peer, "new advert subscriber; re-advertising");
                        tokio::time::sleep(MIN_ADVERT_GAP).await;
                        break true;
                    }
                    Some(Event::Reachability { public: Some(public) }) if ctx.has_relays => {
                        ctx.relayed.store(!public, std::sync::atomic::Ordering::Relaxed);
                        break true;
                    }
                    Some(_) => continue,
                    None => break false,
                },
            }
        };
        if !fired {
            return;
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
