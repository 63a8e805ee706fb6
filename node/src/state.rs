//! The node's shared state: the models it serves (each behind its
//! backend, with its admission counters and prices) and [`NodeCtx`], what
//! every job handler, the advert loop and the local API share. A leaf:
//! starting the node (`service`), serving jobs (`jobs`) and the local API
//! (`admin`) all read it, and it imports none of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use sharenet_engine::{Embedder, Scheduler};
use sharenet_ledger::ReceiptStore;
use sharenet_p2p::{Identity, PeerId};
use sharenet_proto::{Capabilities, GpuInfo, ModelKind};
use tokio::sync::{Notify, Semaphore};

use crate::metrics::{ModelLoad, NodeMetrics, TextLoad};
use crate::upstream::Upstream;
use crate::{ModelConfig, now_ms};

/// How a model's jobs run.
pub(crate) enum Backend {
    /// Local text model: the engine's batching scheduler admits and queues.
    Text(Scheduler),
    /// Local embedding model: jobs run one per slot on blocking threads.
    Embed(Arc<Embedder>),
    /// Forwarded to an OpenAI-compatible server, one request per slot.
    Upstream(Upstream),
}

/// A model being served, with its admission state.
pub(crate) struct ServedModel {
    pub(crate) config: ModelConfig,
    pub(crate) backend: Backend,
    pub(crate) kind: ModelKind,
    pub(crate) context_length: u32,
    pub(crate) quantization: String,
    pub(crate) weights_sha256: Option<[u8; 32]>,
    /// Tools and structured outputs, as advertised.
    pub(crate) capabilities: Capabilities,
    /// The weights' license (config, else the model files); empty: unknown.
    pub(crate) license: String,
    /// The weights' network-wide name; empty: unknown.
    pub(crate) canonical: String,
    /// Admission for the embed and upstream backends (the scheduler has its
    /// own); for a text model, one permit per grammar compile (`jobs.rs`).
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) running: AtomicU32,
    pub(crate) waiting: AtomicU32,
    /// What it charges now, and what it charged before a reload.
    pub(crate) prices: std::sync::Mutex<PriceState>,
}

/// A model's prices, nano-USD per token (in, out).
pub(crate) type Prices = (u64, u64);

/// Prices across a reload: coordinators may still route on the old advert
/// until it expires, so for that long a job is charged the lower of the
/// old and the new price (a receipt may never exceed the advert it was
/// routed on; below it is the node's own loss).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PriceState {
    pub(crate) current: Prices,
    pub(crate) previous: Option<(Prices, u64)>,
}

impl PriceState {
    /// The prices a job starting at `now_ms` is charged.
    pub(crate) fn for_job(&self, now_ms: u64) -> Prices {
        match self.previous {
            Some((old, until)) if now_ms < until => {
                (old.0.min(self.current.0), old.1.min(self.current.1))
            }
            _ => self.current,
        }
    }
}

impl ServedModel {
    /// The prices adverts offer now.
    pub(crate) fn advertised_prices(&self) -> Prices {
        self.prices
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .current
    }

    /// The prices a job starting now is charged (see [`PriceState`]).
    pub(crate) fn job_prices(&self) -> Prices {
        self.prices
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .for_job(now_ms())
    }

    /// Its load now, for the metrics.
    pub(crate) fn load_now(&self) -> ModelLoad {
        let id = self.config.id.clone();
        match &self.backend {
            Backend::Text(s) => {
                let l = s.load();
                ModelLoad {
                    id,
                    running: l.running,
                    waiting: l.waiting,
                    text: Some(TextLoad {
                        kv_used_bytes: l.kv_used_bytes,
                        kv_budget_bytes: l.kv_budget_bytes,
                        tokens_per_sec: l.tokens_per_sec as usize,
                    }),
                }
            }
            _ => ModelLoad {
                id,
                running: self.running.load(Ordering::Relaxed) as usize,
                waiting: self.waiting.load(Ordering::Relaxed) as usize,
                text: None,
            },
        }
    }

    /// Jobs running or waiting.
    pub(crate) fn queue_depth(&self) -> u32 {
        match &self.backend {
            Backend::Text(s) => {
                let l = s.load();
                u32::try_from(l.running + l.waiting).unwrap_or(u32::MAX)
            }
            _ => self
                .running
                .load(Ordering::Relaxed)
                .saturating_add(self.waiting.load(Ordering::Relaxed)),
        }
    }
}

/// What every job handler shares.
pub(crate) struct NodeCtx {
    pub(crate) identity: Identity,
    /// The models served now; a reload adds and removes (a job holds its
    /// model's `Arc`, so a removed model finishes the jobs it has). Read
    /// through [`NodeCtx::models`] and [`NodeCtx::model`].
    pub(crate) models: std::sync::RwLock<Vec<Arc<ServedModel>>>,
    pub(crate) store: Arc<dyn ReceiptStore>,
    pub(crate) gpus: Vec<GpuInfo>,
    pub(crate) region: String,
    /// Poked when load changes, so the advert goes out promptly.
    pub(crate) load_changed: Arc<Notify>,
    /// Reached through a relay: configured with relays and either without
    /// a direct listen address or found unreachable by AutoNAT.
    pub(crate) relayed: std::sync::atomic::AtomicBool,
    /// Relays are configured (AutoNAT's verdict only matters then).
    pub(crate) has_relays: bool,
    /// The peers whose job streams are served.
    pub(crate) coordinators: Vec<PeerId>,
    /// Shutting down: new jobs are refused and adverts offer no models.
    pub(crate) draining: std::sync::atomic::AtomicBool,
    /// Job streams being served now.
    pub(crate) serving: std::sync::atomic::AtomicUsize,
    /// The stated data policy (advertised).
    pub(crate) keeps_prompts: bool,
    /// Served since start, for the local API's `/metrics`.
    pub(crate) metrics: NodeMetrics,
    /// `POST /reload` on the local API (what SIGHUP does).
    pub(crate) reload_requested: Notify,
}

impl NodeCtx {
    /// The models served now.
    pub(crate) fn models(&self) -> Vec<Arc<ServedModel>> {
        self.models
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The model a job names: by this node's own id, else by the
    /// canonical name it advertises (coordinators route a market by it).
    pub(crate) fn model(&self, id: &str) -> Option<Arc<ServedModel>> {
        let models = self
            .models
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        models
            .iter()
            .find(|m| m.config.id == id)
            .or_else(|| {
                models
                    .iter()
                    .find(|m| !m.canonical.is_empty() && m.canonical == id)
            })
            .cloned()
    }

    /// The models served, to change (a reload).
    pub(crate) fn models_mut(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<ServedModel>>> {
        self.models
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_reprice_jobs_pay_the_lower_price_until_the_old_advert_expires() {
        let up = PriceState {
            current: (150, 1500),
            previous: Some(((100, 1000), 10_000)),
        };
        assert_eq!(up.for_job(9_999), (100, 1000));
        assert_eq!(up.for_job(10_000), (150, 1500));
        let mixed = PriceState {
            current: (50, 2000),
            previous: Some(((100, 1000), 10_000)),
        };
        assert_eq!(mixed.for_job(0), (50, 1000));
        let fresh = PriceState {
            current: (7, 9),
            previous: None,
        };
        assert_eq!(fresh.for_job(0), (7, 9));
    }
}
