//! Dispatch over a scripted transport: each fake node is a task on the far
//! end of an in-memory pipe that plays one behaviour (serve, refuse, die
//! before or after the first token, lie in its receipt, stall). The core
//! under test is the real one (real books on disk, real accounts, real
//! routing); only the network and the inference engine are replaced.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use sharenet_p2p::{Identity, PeerId, read_frame, write_frame};
use sharenet_proto::{
    Advert, ChatMessage, FinishReason, JobErrorCode, JobEvent, JobInput, JobRequest,
    MAX_FRAME_BYTES, ModelKind, ModelOffer, Receipt, SamplingParams, SignedAdvert, SignedReceipt,
    ToolCall, ToolChoice, ToolSpec, Tools, Usage, job_cost, response_digest, sha256,
};
use tokio_util::compat::TokioAsyncReadCompatExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Finished, Step, Timeouts, start_job};
use crate::config::CoordinatorConfig;
use crate::core::accounts::Principal;
use crate::core::error::Error;
use crate::core::job::{CompletedJob, Job, JobKind, ProviderPrefs};
use crate::core::transport::{JobStream, Transport, TransportError};
use crate::core::{Core, now_ms};

pub(crate) const MODEL: &str = "m";
pub(crate) const KEY: &str = "sk-dispatch-test-0000";
pub(crate) const BALANCE: u64 = 1_000_000_000;
/// The first-token limit the tests run with.
const FIRST_TOKEN: Duration = Duration::from_millis(300);

/// What a fake node does with a job.
#[derive(Clone, Debug)]
pub(crate) enum Script {
    /// Streams these pieces (one token each) with running receipts, then
    /// an honest receipt.
    Serve(Vec<&'static str>),
    /// Answers `saturated`.
    Refuse,
    /// Answers `saturated` with this message.
    RefuseWith(String),
    /// Reads the request and hangs up.
    DieBeforeFirstToken,
    /// Streams these pieces with running receipts, then hangs up.
    DieMidStream(Vec<&'static str>),
    /// Streams these pieces, then signs a receipt for `extra_out` more
    /// output tokens and `input` input tokens than it should.
    LyingReceipt {
        pieces: Vec<&'static str>,
        extra_out: u32,
        input: u32,
    },
    /// Waits this long before its first event, then serves.
    SlowFirstToken(Duration, Vec<&'static str>),
    /// Streams `n` one-token pieces, one every `every`, then finishes.
    Trickle(u32, Duration),
    /// Sends `n` token-less deltas of `bytes` bytes of text each.
    Flood { n: u32, bytes: usize },
    /// Answers with this request-level refusal (`invalid_request`,
    /// `unsupported_input`, `context_length_exceeded`).
    RefuseAs(JobErrorCode),
    /// Streams `n` one-token deltas of text `x`, each with one logprob
    /// entry whose strings are `token_len` bytes and which has `top`
    /// alternatives like it, then finishes honestly.
    Logprobs {
        n: u32,
        top: usize,
        token_len: usize,
    },
    /// Sends these vectors in an embeddings frame, then finishes with a
    /// receipt over them.
    Embeddings(Vec<Vec<f32>>),
    /// Streams these deltas, each with its text and the ids it claims
    /// (`tokens` is the number of ids unless `tokens` overrides it), then
    /// signs a receipt for `input` and `output` tokens over the text.
    Counted {
        deltas: Vec<(&'static str, Vec<u32>)>,
        tokens: Option<u32>,
        input: u32,
        output: u32,
    },
    /// Makes these tool calls (one token each), then signs a receipt whose
    /// response digest covers them, or (`honest_digest: false`) only the
    /// text, as a node hiding what it sent would.
    Calls {
        calls: Vec<ToolCall>,
        honest_digest: bool,
    },
}

struct FakeNode {
    identity: Identity,
    script: Script,
    price_in: u64,
    price_out: u64,
}

/// Input tokens an honest fake node reports.
const INPUT_TOKENS: u32 = 5;

/// A delta event (the one place the tests spell its fields).
fn delta(
    text: &str,
    tokens: u32,
    logprobs: Vec<sharenet_proto::TokenLogprob>,
    receipt: Option<Vec<u8>>,
) -> JobEvent {
    JobEvent::Delta {
        text: text.to_owned(),
        tokens,
        ids: Vec::new(),
        logprobs,
        tool_calls: Vec::new(),
        receipt,
    }
}

/// A logprob entry whose strings are `len` bytes, with `top` alike.
fn logprob_entry(len: usize, top: usize) -> sharenet_proto::TokenLogprob {
    let token = "t".repeat(len);
    sharenet_proto::TokenLogprob {
        id: 1,
        token: token.clone(),
        bytes: token.clone().into_bytes(),
        logprob: -0.1,
        top: (0..top)
            .map(|i| sharenet_proto::TopLogprob {
                id: i as u32 + 2,
                token: token.clone(),
                bytes: token.clone().into_bytes(),
                logprob: -2.0,
            })
            .collect(),
    }
}

impl FakeNode {
    fn receipt(
        &self,
        req: &JobRequest,
        digest: [u8; 32],
        input: u32,
        out: u32,
        text: &str,
    ) -> Vec<u8> {
        let r = Receipt {
            job_id: req.job_id,
            node: self.identity.public_key(),
            coordinator: req.coordinator,
            model: req.model.clone(),
            input_tokens: input,
            output_tokens: out,
            price_in: self.price_in,
            price_out: self.price_out,
            amount: job_cost(input, out, self.price_in, self.price_out).unwrap(),
            started_at_ms: 1,
            finished_at_ms: 2,
            request_digest: digest,
            response_digest: sha256(text.as_bytes()),
        };
        SignedReceipt::sign(r, self.identity.signing_key())
            .unwrap()
            .to_bytes()
    }

    async fn send(stream: &mut JobStream, event: &JobEvent) -> bool {
        write_frame(stream, &serde_json::to_vec(event).unwrap())
            .await
            .is_ok()
    }

    /// Streams `pieces` as deltas with running receipts; the text so far.
    async fn stream(
        &self,
        s: &mut JobStream,
        req: &JobRequest,
        digest: [u8; 32],
        pieces: &[&str],
    ) -> String {
        let mut text = String::new();
        for (i, piece) in pieces.iter().enumerate() {
            text.push_str(piece);
            let running = self.receipt(req, digest, INPUT_TOKENS, i as u32 + 1, &text);
            let delta = JobEvent::Delta {
                text: (*piece).to_owned(),
                tokens: 1,
                ids: Vec::new(),
                logprobs: Vec::new(),
                tool_calls: Vec::new(),
                receipt: Some(running),
            };
            if !Self::send(s, &delta).await {
                break;
            }
        }
        text
    }

    async fn finish(
        &self,
        s: &mut JobStream,
        req: &JobRequest,
        digest: [u8; 32],
        text: &str,
        input: u32,
        out: u32,
    ) {
        let done = JobEvent::Done {
            finish_reason: FinishReason::Stop,
            usage: Usage {
                input_tokens: input,
                output_tokens: out,
            },
            receipt: self.receipt(req, digest, input, out, text),
        };
        Self::send(s, &done).await;
        // The coordinator's countersignature (or the end of the stream).
        let _ = tokio::time::timeout(Duration::from_secs(2), read_frame(s, MAX_FRAME_BYTES)).await;
    }

    fn receipt_for(
        &self,
        req: &JobRequest,
        digest: [u8; 32],
        out: u32,
        response_digest: [u8; 32],
    ) -> Vec<u8> {
        let r = Receipt {
            job_id: req.job_id,
            node: self.identity.public_key(),
            coordinator: req.coordinator,
            model: req.model.clone(),
            input_tokens: INPUT_TOKENS,
            output_tokens: out,
            price_in: self.price_in,
            price_out: self.price_out,
            amount: job_cost(INPUT_TOKENS, out, self.price_in, self.price_out).unwrap(),
            started_at_ms: 1,
            finished_at_ms: 2,
            request_digest: digest,
            response_digest,
        };
        SignedReceipt::sign(r, self.identity.signing_key())
            .unwrap()
            .to_bytes()
    }

    async fn play(self: Arc<Self>, mut s: JobStream) {
        let Ok(frame) = read_frame(&mut s, MAX_FRAME_BYTES).await else {
            return;
        };
        let digest = sha256(&frame);
        let req: JobRequest = serde_json::from_slice(&frame).unwrap();
        match self.script.clone() {
            Script::Serve(pieces) => {
                let text = self.stream(&mut s, &req, digest, &pieces).await;
                let n = pieces.len() as u32;
                self.finish(&mut s, &req, digest, &text, INPUT_TOKENS, n)
                    .await;
            }
            Script::Refuse => {
                let refusal = JobEvent::Error {
                    code: JobErrorCode::Saturated,
                    message: "every slot is taken".into(),
                };
                Self::send(&mut s, &refusal).await;
            }
            Script::RefuseWith(message) => {
                let refusal = JobEvent::Error {
                    code: JobErrorCode::Saturated,
                    message,
                };
                Self::send(&mut s, &refusal).await;
            }
            Script::RefuseAs(code) => {
                let refusal = JobEvent::Error {
                    code,
                    message: format!("refused as {code:?}"),
                };
                Self::send(&mut s, &refusal).await;
            }
            Script::Logprobs { n, top, token_len } => {
                let mut text = String::new();
                for i in 0..n {
                    text.push('x');
                    let running = self.receipt(&req, digest, INPUT_TOKENS, i + 1, &text);
                    let ev = delta("x", 1, vec![logprob_entry(token_len, top)], Some(running));
                    if !Self::send(&mut s, &ev).await {
                        return;
                    }
                }
                self.finish(&mut s, &req, digest, &text, INPUT_TOKENS, n)
                    .await;
            }
            Script::Embeddings(data) => {
                let response = sharenet_proto::embeddings_digest(&data);
                Self::send(&mut s, &JobEvent::Embeddings { data }).await;
                let done = JobEvent::Done {
                    finish_reason: FinishReason::Stop,
                    usage: Usage {
                        input_tokens: INPUT_TOKENS,
                        output_tokens: 0,
                    },
                    receipt: self.receipt_for(&req, digest, 0, response),
                };
                Self::send(&mut s, &done).await;
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    read_frame(&mut s, MAX_FRAME_BYTES),
                )
                .await;
            }
            Script::DieBeforeFirstToken => {}
            Script::DieMidStream(pieces) => {
                self.stream(&mut s, &req, digest, &pieces).await;
            }
            Script::LyingReceipt {
                pieces,
                extra_out,
                input,
            } => {
                let text = self.stream(&mut s, &req, digest, &pieces).await;
                let n = pieces.len() as u32 + extra_out;
                self.finish(&mut s, &req, digest, &text, input, n).await;
            }
            Script::Trickle(n, every) => {
                let mut text = String::new();
                for i in 0..n {
                    text.push('x');
                    let running = self.receipt(&req, digest, INPUT_TOKENS, i + 1, &text);
                    let delta = JobEvent::Delta {
                        text: "x".into(),
                        tokens: 1,
                        ids: Vec::new(),
                        logprobs: Vec::new(),
                        tool_calls: Vec::new(),
                        receipt: Some(running),
                    };
                    if !Self::send(&mut s, &delta).await {
                        return;
                    }
                    tokio::time::sleep(every).await;
                }
                self.finish(&mut s, &req, digest, &text, INPUT_TOKENS, n)
                    .await;
            }
            Script::Flood { n, bytes } => {
                let text = "x".repeat(bytes);
                for _ in 0..n {
                    let delta = JobEvent::Delta {
                        text: text.clone(),
                        tokens: 0,
                        ids: Vec::new(),
                        logprobs: Vec::new(),
                        tool_calls: Vec::new(),
                        receipt: None,
                    };
                    if !Self::send(&mut s, &delta).await {
                        return;
                    }
                }
            }
            Script::Calls {
                calls,
                honest_digest,
            } => {
                let n = calls.len() as u32;
                let covered: &[ToolCall] = if honest_digest { &calls } else { &[] };
                let delta = JobEvent::Delta {
                    text: String::new(),
                    tokens: n,
                    ids: Vec::new(),
                    logprobs: Vec::new(),
                    tool_calls: calls.clone(),
                    receipt: None,
                };
                Self::send(&mut s, &delta).await;
                let done = JobEvent::Done {
                    finish_reason: FinishReason::ToolCalls,
                    usage: Usage {
                        input_tokens: INPUT_TOKENS,
                        output_tokens: n,
                    },
                    receipt: self.receipt_for(&req, digest, n, response_digest("", covered)),
                };
                Self::send(&mut s, &done).await;
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    read_frame(&mut s, MAX_FRAME_BYTES),
                )
                .await;
            }
            Script::Counted {
                deltas,
                tokens,
                input,
                output,
            } => {
                let mut text = String::new();
                for (piece, ids) in deltas {
                    text.push_str(piece);
                    let ev = JobEvent::Delta {
                        text: piece.to_owned(),
                        tokens: tokens.unwrap_or(ids.len() as u32),
                        ids,
                        logprobs: Vec::new(),
                        tool_calls: Vec::new(),
                        receipt: None,
                    };
                    if !Self::send(&mut s, &ev).await {
                        return;
                    }
                }
                self.finish(&mut s, &req, digest, &text, input, output)
                    .await;
            }
            Script::SlowFirstToken(wait, pieces) => {
                tokio::time::sleep(wait).await;
                let text = self.stream(&mut s, &req, digest, &pieces).await;
                let n = pieces.len() as u32;
                self.finish(&mut s, &req, digest, &text, INPUT_TOKENS, n)
                    .await;
            }
        }
    }
}

/// Opens in-memory pipes to scripted nodes, counting the streams opened.
pub(crate) struct FakeTransport {
    nodes: HashMap<PeerId, Arc<FakeNode>>,
    opens: Arc<AtomicUsize>,
    /// Streams opened to each node.
    opens_to: Arc<std::sync::Mutex<HashMap<PeerId, usize>>>,
}

impl Transport for FakeTransport {
    fn open_job_stream(&self, peer: PeerId) -> BoxFuture<'_, Result<JobStream, TransportError>> {
        let node = self.nodes.get(&peer).cloned();
        self.opens.fetch_add(1, Ordering::Relaxed);
        *self.opens_to.lock().unwrap().entry(peer).or_default() += 1;
        Box::pin(async move {
            let node = node.ok_or_else(|| TransportError(format!("no route to {peer}")))?;
            let (ours, theirs) = tokio::io::duplex(1 << 20);
            tokio::spawn(node.play(Box::new(theirs.compat())));
            Ok(Box::new(ours.compat()) as JobStream)
        })
    }
}

pub(crate) struct Setup {
    pub core: Arc<Core>,
    opens: Arc<AtomicUsize>,
    opens_to: Arc<std::sync::Mutex<HashMap<PeerId, usize>>>,
    /// The nodes' peer ids, in the order given.
    peers: Vec<PeerId>,
    pub principal: Principal,
    /// The nodes' public keys, in the order given.
    nodes: Vec<[u8; 32]>,
    _dir: tempfile::TempDir,
}

/// A live advert for `MODEL` at these prices, signed by `identity`.
pub(crate) fn signed_advert(identity: &Identity, price_in: u64, price_out: u64) -> Vec<u8> {
    sign_advert(identity, advert(identity, price_in, price_out))
}

fn sign_advert(identity: &Identity, advert: Advert) -> Vec<u8> {
    SignedAdvert::sign(advert, identity.signing_key())
        .unwrap()
        .to_bytes()
}

/// A live advert for `MODEL` at these prices.
fn advert(identity: &Identity, price_in: u64, price_out: u64) -> Advert {
    let now = now_ms();
    Advert {
        node: identity.public_key(),
        models: vec![ModelOffer {
            id: MODEL.into(),
            price_in,
            price_out,
            context_length: 4096,
            kind: ModelKind::Text,
            quantization: String::new(),
            tokens_per_sec: 0,
            weights_sha256: Some([7; 32]),
            capabilities: sharenet_proto::Capabilities {
                tools: true,
                structured_outputs: true,
            },
            license: String::new(),
            canonical: String::new(),
        }],
        gpus: Vec::new(),
        region: String::new(),
        relayed: false,
        keeps_prompts: false,
        max_concurrency: 4,
        queue_depth: 0,
        seq: 1,
        issued_at_ms: now,
        expires_at_ms: now + 60_000,
    }
}

/// Scripted nodes, one per entry, each advertising `MODEL` (node `i` at
/// `10 + i` / `20 + i` nano-USD per token): the transport that reaches
/// them, their signed adverts as gossip would bring them, and their keys.
pub(crate) struct FakeNetwork {
    pub transport: FakeTransport,
    /// Job streams opened so far, to any node.
    pub opens: Arc<AtomicUsize>,
    pub adverts: Vec<(PeerId, Vec<u8>)>,
    pub keys: Vec<[u8; 32]>,
}

pub(crate) fn fake_network(scripts: Vec<Script>) -> FakeNetwork {
    fake_network_with(scripts, &|_, _| {})
}

/// As [`fake_network`], with node `i`'s advert adjusted by `adjust(i, _)`
/// before it is signed (its first model's prices are the ones it bills).
pub(crate) fn fake_network_with(
    scripts: Vec<Script>,
    adjust: &dyn Fn(usize, &mut Advert),
) -> FakeNetwork {
    let mut nodes = HashMap::new();
    let mut keys = Vec::new();
    let mut adverts = Vec::new();
    for (i, script) in scripts.into_iter().enumerate() {
        let identity = Identity::generate();
        let mut ad = advert(&identity, 10 + i as u64, 20 + i as u64);
        adjust(i, &mut ad);
        let (price_in, price_out) = (ad.models[0].price_in, ad.models[0].price_out);
        let bytes = sign_advert(&identity, ad);
        adverts.push((identity.peer_id(), bytes));
        keys.push(identity.public_key());
        nodes.insert(
            identity.peer_id(),
            Arc::new(FakeNode {
                identity,
                script,
                price_in,
                price_out,
            }),
        );
    }
    let opens = Arc::new(AtomicUsize::new(0));
    FakeNetwork {
        transport: FakeTransport {
            nodes,
            opens: opens.clone(),
            opens_to: Default::default(),
        },
        opens,
        adverts,
        keys,
    }
}

/// The config the scripted tests run with: one key with [`BALANCE`].
pub(crate) fn config(dir: &std::path::Path) -> CoordinatorConfig {
    CoordinatorConfig {
        identity: Identity::generate(),
        data_dir: dir.join("coordinator"),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        p2p_listen: Vec::new(),
        bootstrap: Vec::new(),
        api_keys: vec![KEY.into()],
        max_attempts: 3,
        timeouts: Timeouts {
            connect: Duration::from_secs(1),
            first_token: FIRST_TOKEN,
            idle: Duration::from_secs(1),
        },
        network_fee_bps: 500,
        operator_key: None,
        bootstrap_balance: BALANCE,
        period_rule: sharenet_market::PeriodRule::CalendarMonth,
        spot_check_rate: 0.0,
        relay_server: false,
        spot_check_funding: 0,
        price_ceiling: Default::default(),
        spill_queue_factor: 5,
        aliases: Default::default(),
        // Models outside the (empty) catalog are routable here.
        catalog: crate::config::CatalogConfig {
            file: None,
            allow_uncatalogued: true,
        },
        database: None,
        metrics_listen: None,
        builder_reads_per_minute: crate::config::DEFAULT_BUILDER_READS_PER_MINUTE,
    }
}

/// A real core (books in a temp dir, one funded app) over
/// [`fake_network`], with every advert heard.
pub(crate) fn setup(scripts: Vec<Script>) -> Setup {
    setup_with(scripts, |_| {})
}

/// As [`setup`], with the config adjusted first.
fn setup_with(scripts: Vec<Script>, adjust: impl FnOnce(&mut CoordinatorConfig)) -> Setup {
    setup_full(scripts, adjust, &|_, _| {})
}

/// As [`setup`], with node `i`'s advert adjusted by `adverts(i, _)`.
fn setup_adverts(scripts: Vec<Script>, adverts: &dyn Fn(usize, &mut Advert)) -> Setup {
    setup_full(scripts, |_| {}, adverts)
}

fn setup_full(
    scripts: Vec<Script>,
    adjust: impl FnOnce(&mut CoordinatorConfig),
    adverts: &dyn Fn(usize, &mut Advert),
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let net = fake_network_with(scripts, adverts);
    let opens_to = net.transport.opens_to.clone();
    let peers: Vec<PeerId> = net.adverts.iter().map(|(p, _)| *p).collect();
    let mut config = config(dir.path());
    adjust(&mut config);
    // Embedded books: opening awaits nothing that needs the runtime.
    let (core, _) = futures::executor::block_on(Core::open(
        &config,
        Arc::new(net.transport),
        TaskTracker::new(),
        CancellationToken::new(),
    ))
    .unwrap();
    for (peer, bytes) in net.adverts {
        core.on_advert(peer, &bytes, now_ms());
    }
    let principal = core.accounts.authenticate(KEY).unwrap();
    Setup {
        core,
        opens: net.opens,
        opens_to,
        peers,
        principal,
        nodes: net.keys,
        _dir: dir,
    }
}

/// A chat job that tries the nodes in exactly this order.
fn job(order: &[[u8; 32]]) -> Arc<Job> {
    Arc::new(Job {
        kind: JobKind::Chat,
        models: vec![MODEL.into()],
        input: JobInput::Chat {
            messages: vec![ChatMessage::new("user", "hello there")],
        },
        params: SamplingParams {
            max_tokens: 8,
            ..SamplingParams::default()
        },
        prefs: ProviderPrefs {
            order: order.to_vec(),
            ..ProviderPrefs::any()
        },
        tools: None,
        response_format: None,
        input_tokens: Default::default(),
    })
}

impl Setup {
    /// A funded spot-checks app and the sampler at rate 1 over a channel
    /// the test feeds: the sender, the sampler's stop, its task.
    fn sampler(
        &self,
    ) -> (
        tokio::sync::mpsc::Sender<CompletedJob>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        futures::executor::block_on(crate::core::accounts::ensure_operator_app(
            &self.core.accounts,
            crate::core::accounts::SPOT_CHECK_APP,
            "spot checks",
            BALANCE,
            now_ms(),
        ))
        .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let shutdown = CancellationToken::new();
        let sampler = tokio::spawn(crate::core::spotcheck::run(
            self.core.clone(),
            rx,
            1.0,
            shutdown.clone(),
        ));
        (tx, shutdown, sampler)
    }

    /// Streams opened to node `i`.
    fn opened_to(&self, i: usize) -> usize {
        let counts = self.opens_to.lock().unwrap();
        counts.get(&self.peers[i]).copied().unwrap_or(0)
    }

    fn balance(&self) -> i128 {
        self.core.accounts.balance(&self.principal.app)
    }

    fn trust(&self, node: usize) -> f64 {
        self.core.routing.trust_of(&[self.nodes[node]], now_ms())[0]
    }

    fn entries(&self) -> u64 {
        self.core.accounts.books().entry_count() as u64
    }

    /// Runs a job to its end: the text and what it was charged.
    async fn run(&self, order: &[[u8; 32]]) -> Result<(String, u64, [u8; 32]), Error> {
        let mut active = start_job(&self.core, job(order), &self.principal, None).await?;
        let node = active.node();
        loop {
            if let Step::Done(f) = active.next(&self.core).await? {
                return Ok((f.text, f.charge.total, node));
            }
        }
    }
}

/// The node failed the job: a 502 naming `why`, nothing booked or
/// charged, and it counts against the node.
pub(super) fn assert_node_failed(s: &Setup, r: Result<Box<Finished>, Error>, why: &str) {
    let err = r.err().expect("the job fails");
    assert!(
        matches!(&err, Error::BadGateway(m) if m.contains(why)),
        "{why}: {err:?}"
    );
    assert_eq!(s.entries(), 0, "{why}: nothing booked");
    assert_eq!(s.balance(), i128::from(BALANCE), "{why}: nothing charged");
    let health = s.core.routing.health(&s.nodes[0]).unwrap();
    assert!(
        health.breaker.consecutive_failures > 0,
        "{why}: held against the node"
    );
}

mod books_and_checks;
mod count;
mod fanout;
mod guards;
mod node_limits;
mod serving;
