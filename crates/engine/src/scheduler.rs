//! A scheduler per model: bounded admission, a KV-cache memory budget, and
//! continuous batching on one dedicated thread.
//!
//! Jobs wait in a bounded FIFO queue (a full queue refuses at once with
//! [`SubmitError::Saturated`]). Between decode steps the thread admits
//! queued jobs while there is a free slot and KV budget for the job's whole
//! prompt + `max_tokens`, prefills each, and then runs one batched decode
//! step for every active sequence. Sequences leave the batch as soon as they
//! finish or their receiver is dropped (client gone, job cancelled), which
//! frees their slot and KV budget before the next step.
//!
//! Events go back through a bounded channel per job; a slow reader never
//! blocks the batch (its events wait in that job's own backlog, which is
//! bounded by its `max_tokens`).

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rayon::prelude::*;
use sharenet_proto::SamplingParams;
use tokio::sync::mpsc;

use crate::EngineError;
use crate::constraint::Constraint;
use crate::model::TextModel;
use crate::output::{Generation, Piece};
use crate::sequence::{PREFILL_CHUNK, Sequence};
use crate::transformer::Transformer;

/// Events per job buffered in its channel before the job's own backlog.
const EVENT_CAPACITY: usize = 64;

/// Limits for one model's scheduler.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// Sequences decoded together at most.
    pub max_concurrency: usize,
    /// Jobs waiting for a slot at most; beyond that, refused.
    pub max_queue: usize,
    /// Bytes of KV cache all sequences together may reserve.
    pub kv_cache_bytes: usize,
}

/// What a job produces, in order: pieces, then `Done` or `Failed`.
#[derive(Debug)]
pub enum SeqEvent {
    Piece(Piece),
    Done(Generation),
    Failed(EngineError),
}

/// Why a job was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("all {slots} slots and {queue} queue places are taken")]
    Saturated { slots: usize, queue: usize },
    #[error(
        "the job needs {need} bytes of KV cache but the model's budget is {budget}; lower max_tokens"
    )]
    TooLarge { need: usize, budget: usize },
    #[error(transparent)]
    Invalid(#[from] EngineError),
}

/// A submitted job: its events, and cancellation on drop.
pub struct JobHandle {
    pub events: mpsc::Receiver<SeqEvent>,
    cancel: Arc<AtomicBool>,
}

impl JobHandle {
    /// Stops the job at the next step (dropping the handle does the same).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

impl Drop for JobHandle {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// Current load, for adverts and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    pub running: usize,
    pub waiting: usize,
    pub kv_used_bytes: usize,
    pub kv_budget_bytes: usize,
    /// Decode tokens per second of all sequences together, smoothed over
    /// recent steps (0 before the first step).
    pub tokens_per_sec: u32,
}

struct Queued {
    prompt: Vec<u32>,
    params: SamplingParams,
    constraint: Option<Constraint>,
    kv_bytes: usize,
    tx: mpsc::Sender<SeqEvent>,
    cancel: Arc<AtomicBool>,
}

struct Shared {
    queue: Mutex<VecDeque<Queued>>,
    wake: Condvar,
    shutdown: AtomicBool,
    running: AtomicUsize,
    kv_used: AtomicUsize,
    tokens_per_sec: std::sync::atomic::AtomicU32,
    on_load_change: Box<dyn Fn() + Send + Sync>,
}

/// The per-model scheduler. Dropping it stops its thread; queued and
/// running jobs then end (their event channels close).
pub struct Scheduler {
    model: Arc<TextModel>,
    config: SchedulerConfig,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Scheduler {
    /// Starts the scheduler thread. `on_load_change` is called (from that
    /// thread or the submitter) whenever running/waiting counts change.
    pub fn start(
        model: Arc<TextModel>,
        config: SchedulerConfig,
        on_load_change: Box<dyn Fn() + Send + Sync>,
    ) -> Result<Self, EngineError> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
            running: AtomicUsize::new(0),
            kv_used: AtomicUsize::new(0),
            tokens_per_sec: std::sync::atomic::AtomicU32::new(0),
            on_load_change,
        });
        let worker = Worker {
            model: model.clone(),
            config,
            shared: shared.clone(),
            prefilling: VecDeque::new(),
            active: Vec::new(),
            draining: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("sharenet-scheduler".into())
            .spawn(move || worker.run())
            .map_err(|e| EngineError::InvalidInput(format!("spawn scheduler thread: {e}")))?;
        Ok(Self {
            model,
            config,
            shared,
            thread: Some(thread),
        })
    }

    pub fn model(&self) -> &Arc<TextModel> {
        &self.model
    }

    pub fn config(&self) -> SchedulerConfig {
        self.config
    }

    pub fn load(&self) -> Load {
        Load {
            running: self.shared.running.load(Ordering::Relaxed),
            waiting: self.shared.queue.lock().map(|q| q.len()).unwrap_or(0),
            kv_used_bytes: self.shared.kv_used.load(Ordering::Relaxed),
            kv_budget_bytes: self.config.kv_cache_bytes,
            tokens_per_sec: self.shared.tokens_per_sec.load(Ordering::Relaxed),
        }
    }

    /// Bytes a job reserves: its KV cache for the prompt and every token
    /// it may generate, plus the attention scores of one prefill chunk
    /// (`heads × chunk × context` floats), which live while its prompt goes
    /// in.
    pub fn kv_bytes_for(&self, prompt_len: usize, params: &SamplingParams) -> usize {
        let spec = self.model.spec();
        let tokens = (prompt_len + params.max_tokens as usize).min(self.model.context_length());
        let scores = spec.num_heads * prompt_len.min(PREFILL_CHUNK) * tokens * 4;
        self.model.kv_bytes_for_tokens(tokens) + scores
    }

    /// Queues a job, or refuses it at once if the queue is full or it can
    /// never fit the KV budget.
    pub fn submit(
        &self,
        prompt: Vec<u32>,
        params: SamplingParams,
    ) -> Result<JobHandle, SubmitError> {
        self.submit_constrained(prompt, params, None)
    }

    /// [`Self::submit`] with the output held to a grammar
    /// ([`TextModel::constraint`]).
    pub fn submit_constrained(
        &self,
        prompt: Vec<u32>,
        params: SamplingParams,
        constraint: Option<Constraint>,
    ) -> Result<JobHandle, SubmitError> {
        let context = self.model.context_length();
        if prompt.is_empty() || prompt.len() >= context {
            return Err(EngineError::ContextLengthExceeded {
                prompt: prompt.len(),
                context,
            }
            .into());
        }
        let kv_bytes = self.kv_bytes_for(prompt.len(), &params);
        if kv_bytes > self.config.kv_cache_bytes {
            return Err(SubmitError::TooLarge {
                need: kv_bytes,
                budget: self.config.kv_cache_bytes,
            });
        }
        let (tx, events) = mpsc::channel(EVENT_CAPACITY);
        let cancel = Arc::new(AtomicBool::new(false));
        {
            let mut queue = self
                .shared
                .queue
                .lock()
                .map_err(|_| EngineError::InvalidInput("scheduler is poisoned".into()))?;
            let running = self.shared.running.load(Ordering::Relaxed);
            let free_slots = self.config.max_concurrency.saturating_sub(running);
            if queue.len() >= self.config.max_queue + free_slots {
                return Err(SubmitError::Saturated {
                    slots: self.config.max_concurrency,
                    queue: self.config.max_queue,
                });
            }
            queue.push_back(Queued {
                prompt,
                params,
                constraint,
                kv_bytes,
                tx,
                cancel: cancel.clone(),
            });
        }
        self.shared.wake.notify_one();
        (self.shared.on_load_change)();
        Ok(JobHandle { events, cancel })
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Relaxed);
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A sequence in the batch, with its outbox.
struct Active {
    seq: Sequence,
    tx: mpsc::Sender<SeqEvent>,
    cancel: Arc<AtomicBool>,
    backlog: VecDeque<SeqEvent>,
    kv_bytes: usize,
    closed: bool,
}

impl Active {
    fn emit(&mut self, event: SeqEvent) {
        self.backlog.push_back(event);
        self.flush();
    }

    fn flush(&mut self) {
        while let Some(ev) = self.backlog.pop_front() {
            match self.tx.try_send(ev) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(ev)) => {
                    self.backlog.push_front(ev);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.closed = true;
                    self.backlog.clear();
                    return;
                }
            }
        }
    }

    fn gone(&self) -> bool {
        self.closed || self.tx.is_closed() || self.cancel.load(Ordering::Relaxed)
    }
}

struct Worker {
    model: Arc<TextModel>,
    config: SchedulerConfig,
    shared: Arc<Shared>,
    /// Admitted sequences whose prompts are still going in, one chunk per
    /// step, first come first served.
    prefilling: VecDeque<Active>,
    active: Vec<Active>,
    /// Finished sequences whose last events have not fit their channel yet.
    draining: Vec<Active>,
}

impl Worker {
    fn run(mut self) {
        while !self.shared.shutdown.load(Ordering::Relaxed) {
            let admitted = self.admit();
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                for job in admitted {
                    self.start(job);
                }
                // One prompt chunk, then one decode step for everyone else:
                // a long prompt never stalls the running sequences for more
                // than a chunk.
                self.prefill_step();
                self.step()
            }));
            let result = match outcome {
                Ok(r) => r,
                Err(_) => Err(EngineError::InvalidInput(
                    "the model panicked during a step".into(),
                )),
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "batch step failed; failing its sequences");
                let message = e.to_string();
                // A panic inside a prefill chunk leaves its sequence at the
                // front of the line: it fails with the batch.
                let culprit = self.prefilling.pop_front();
                for mut a in std::mem::take(&mut self.active).into_iter().chain(culprit) {
                    a.emit(SeqEvent::Failed(EngineError::InvalidInput(message.clone())));
                    self.retire(a);
                }
            }
            self.draining.iter_mut().for_each(Active::flush);
            self.draining.retain(|a| !a.backlog.is_empty() && !a.closed);
            self.publish_load();
        }
    }

    fn publish_load(&self) {
        let running = self.active.len() + self.prefilling.len();
        let before = self.shared.running.swap(running, Ordering::Relaxed);
        if before != running {
            (self.shared.on_load_change)();
        }
    }

    /// Waits for work if idle, then takes queued jobs that fit.
    fn admit(&mut self) -> Vec<Queued> {
        let mut out = Vec::new();
        let Ok(mut queue) = self.shared.queue.lock() else {
            return out;
        };
        while self.active.is_empty() && self.prefilling.is_empty() && queue.is_empty() {
            if self.shared.shutdown.load(Ordering::Relaxed) {
                return out;
            }
            let wait = if self.draining.is_empty() {
                Duration::from_secs(1)
            } else {
                Duration::from_millis(5)
            };
            queue = match self.shared.wake.wait_timeout(queue, wait) {
                Ok((q, _)) => q,
                Err(_) => return out,
            };
            if !self.draining.is_empty() {
                return out;
            }
        }
        let mut kv_used = self.shared.kv_used.load(Ordering::Relaxed);
        while self.active.len() + self.prefilling.len() + out.len() < self.config.max_concurrency {
            let Some(front) = queue.front() else { break };
            if front.cancel.load(Ordering::Relaxed) || front.tx.is_closed() {
                queue.pop_front();
                continue;
            }
            if kv_used + front.kv_bytes > self.config.kv_cache_bytes {
                break;
            }
            kv_used += front.kv_bytes;
            if let Some(job) = queue.pop_front() {
                out.push(job);
            }
        }
        self.shared.kv_used.store(kv_used, Ordering::Relaxed);
        out
    }

    fn retire(&mut self, a: Active) {
        self.shared.kv_used.fetch_sub(a.kv_bytes, Ordering::Relaxed);
        if !a.backlog.is_empty() && !a.closed {
            self.draining.push(a);
        }
    }

    /// Prefills a newly admitted job and samples its first token.
    fn start(&mut self, job: Queued) {
        let active = match Sequence::new(&self.model, job.prompt, &job.params, job.constraint) {
            Ok(seq) => Active {
                seq,
                tx: job.tx,
                cancel: job.cancel,
                backlog: VecDeque::new(),
                kv_bytes: job.kv_bytes,
                closed: false,
            },
            Err(e) => {
                self.shared
                    .kv_used
                    .fetch_sub(job.kv_bytes, Ordering::Relaxed);
                let _ = job.tx.try_send(SeqEvent::Failed(e));
                return;
            }
        };
        if active.gone() {
            self.retire(active);
            return;
        }
        self.prefilling.push_back(active);
    }

    /// Runs the next prompt chunk of the first prefilling sequence, which
    /// then goes to the back of the line (round robin: a short prompt is
    /// not held behind a long one); one whose prompt is in samples its
    /// first token and joins the batch.
    fn prefill_step(&mut self) {
        while self.prefilling.front().is_some_and(Active::gone) {
            if let Some(a) = self.prefilling.pop_front() {
                self.retire(a);
            }
        }
        let Some(front) = self.prefilling.front_mut() else {
            return;
        };
        let result = front.seq.prefill_chunk(&self.model);
        if matches!(result, Ok(None)) {
            self.prefilling.rotate_left(1);
            return;
        }
        let Some(mut active) = self.prefilling.pop_front() else {
            return;
        };
        let result = result.and_then(|logits| match logits {
            Some(mut logits) => active.seq.advance(&self.model, &mut logits),
            None => Ok(Vec::new()),
        });
        match result {
            Ok(pieces) => {
                for p in pieces {
                    active.emit(SeqEvent::Piece(p));
                }
                if let Some(g) = active.seq.finished() {
                    active.emit(SeqEvent::Done(g));
                    self.retire(active);
                } else {
                    self.active.push(active);
                }
            }
            Err(e) => {
                active.emit(SeqEvent::Failed(e));
                self.retire(active);
            }
        }
    }

    /// Folds one step's throughput into the smoothed figure adverts carry.
    fn record_speed(&self, tokens: usize, took: Duration) {
        let now = tokens as f64 / took.as_secs_f64().max(1e-6);
        let before = f64::from(self.shared.tokens_per_sec.load(Ordering::Relaxed));
        let smoothed = if before == 0.0 {
            now
        } else {
            0.9 * before + 0.1 * now
        };
        self.shared
            .tokens_per_sec
            .store(smoothed.min(f64::from(u32::MAX)) as u32, Ordering::Relaxed);
    }

    /// One batched decode step over every active sequence.
    fn step(&mut self) -> Result<(), EngineError> {
        let (gone, keep): (Vec<Active>, Vec<Active>) = std::mem::take(&mut self.active)
            .into_iter()
            .partition(Active::gone);
        self.active = keep;
        for a in gone {
            self.retire(a);
        }
        if self.active.is_empty() {
            return Ok(());
        }
        let tokens: Vec<u32> = self.active.iter().map(|a| a.seq.last_token()).collect();
        let mut caches: Vec<_> = self.active.iter_mut().map(|a| a.seq.cache_mut()).collect();
        let started = std::time::Instant::now();
        let logits = self.model.transformer.decode(&tokens, &mut caches)?;
        self.record_speed(tokens.len(), started.elapsed());
        let rows = Transformer::rows(&logits)?;
        // Sampling (and any grammar's mask) for each sequence in parallel:
        // over a 128k vocabulary at concurrency 32 it is milliseconds of
        // host work a step, while a GPU step is a few. Each sequence has
        // its own sampler and seed, so the tokens are the same as in order.
        let mut active = std::mem::take(&mut self.active);
        let model = &self.model;
        let advanced: Vec<Result<Vec<Piece>, EngineError>> = active
            .par_iter_mut()
            .zip(rows.into_par_iter())
            .map(|(a, mut row)| a.seq.advance(model, &mut row))
            .collect();
        let mut still = Vec::with_capacity(active.len());
        for (mut a, result) in active.into_iter().zip(advanced) {
            match result {
                Ok(pieces) => {
                    for p in pieces {
                        a.emit(SeqEvent::Piece(p));
                    }
                    if let Some(g) = a.seq.finished() {
                        a.emit(SeqEvent::Done(g));
                        self.retire(a);
                    } else {
                        still.push(a);
                    }
                }
                Err(e) => {
                    a.emit(SeqEvent::Failed(e));
                    self.retire(a);
                }
            }
        }
        self.active = still;
        Ok(())
    }
}
