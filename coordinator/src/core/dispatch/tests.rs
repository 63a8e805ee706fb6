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
}

impl Transport for FakeTransport {
    fn open_job_stream(&self, peer: PeerId) -> BoxFuture<'_, Result<JobStream, TransportError>> {
        let node = self.nodes.get(&peer).cloned();
        self.opens.fetch_add(1, Ordering::Relaxed);
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
    pub principal: Principal,
    /// The nodes' public keys, in the order given.
    nodes: Vec<[u8; 32]>,
    _dir: tempfile::TempDir,
}

/// A live advert for `MODEL` at these prices, signed by `identity`.
pub(crate) fn signed_advert(identity: &Identity, price_in: u64, price_out: u64) -> Vec<u8> {
    let now = now_ms();
    let advert = Advert {
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
    };
    SignedAdvert::sign(advert, identity.signing_key())
        .unwrap()
        .to_bytes()
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
    let mut nodes = HashMap::new();
    let mut keys = Vec::new();
    let mut adverts = Vec::new();
    for (i, script) in scripts.into_iter().enumerate() {
        let identity = Identity::generate();
        let (price_in, price_out) = (10 + i as u64, 20 + i as u64);
        let bytes = signed_advert(&identity, price_in, price_out);
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
        database: None,
    }
}

/// A real core (books in a temp dir, one funded app) over
/// [`fake_network`], with every advert heard.
pub(crate) fn setup(scripts: Vec<Script>) -> Setup {
    setup_with(scripts, |_| {})
}

/// As [`setup`], with the config adjusted first.
fn setup_with(scripts: Vec<Script>, adjust: impl FnOnce(&mut CoordinatorConfig)) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let net = fake_network(scripts);
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

#[tokio::test]
async fn a_job_is_served_checked_countersigned_and_charged() {
    let s = setup(vec![Script::Serve(vec!["Hello", " world"])]);
    let mut active = start_job(&s.core, job(&[]), &s.principal, Some("cust-1"))
        .await
        .unwrap();
    let mut pieces = Vec::new();
    let finished = loop {
        match active.next(&s.core).await.unwrap() {
            Step::Delta(text, _) => pieces.push(text),
            Step::ToolCalls(_) => panic!("no tools were offered"),
            Step::Done(f) => break f,
        }
    };
    assert_eq!(pieces, ["Hello", " world"]);
    assert_eq!(finished.text, "Hello world");
    assert_eq!(
        (finished.usage.input_tokens, finished.usage.output_tokens),
        (5, 2)
    );
    let r = finished.receipt.receipt();
    assert_eq!(r.node, s.nodes[0]);
    assert_eq!(r.amount, 5 * 10 + 2 * 20);
    let c = finished.charge;
    assert_eq!(c.provider_cost, 90);
    assert_eq!(c.total, c.provider_cost + c.network_fee + c.margin);
    // Durable, countersigned by us, and charged exactly once.
    assert_eq!(s.entries(), 1);
    assert_eq!(s.core.metrics.receipts_accepted.get(), 1);
    assert_eq!(s.balance(), i128::from(BALANCE) - i128::from(c.total));
    let booked = s.core.accounts.books().entry(&r.job_id).unwrap().unwrap();
    assert_eq!(booked.end_customer.as_deref(), Some("cust-1"));
    assert_eq!(
        booked.receipt.to_bytes(),
        finished.receipt.to_bytes(),
        "the stored receipt is the countersigned one"
    );
}

#[tokio::test]
async fn a_refusal_falls_back_to_the_next_node() {
    let s = setup(vec![Script::Refuse, Script::Serve(vec!["ok"])]);
    let (text, charge, node) = s.run(&[s.nodes[0], s.nodes[1]]).await.unwrap();
    assert_eq!(text, "ok");
    assert_eq!(node, s.nodes[1]);
    assert_eq!(s.core.metrics.fallbacks.get(), 1);
    assert!(
        s.trust(0) < s.trust(1),
        "the refusal counts against the node"
    );
    assert_eq!(s.balance(), i128::from(BALANCE) - i128::from(charge));
}

#[tokio::test]
async fn a_node_that_dies_before_its_first_token_is_skipped() {
    let s = setup(vec![Script::DieBeforeFirstToken, Script::Serve(vec!["ok"])]);
    let (text, _, node) = s.run(&[s.nodes[0], s.nodes[1]]).await.unwrap();
    assert_eq!((text.as_str(), node), ("ok", s.nodes[1]));
    assert!(s.trust(0) < s.trust(1));

    // With no other node, the builder gets a 503-class error naming why,
    // and nothing is held or charged.
    let s = setup(vec![Script::DieBeforeFirstToken]);
    let err = s.run(&[]).await.unwrap_err();
    assert!(
        matches!(&err, Error::NoCapacity(m) if m.contains("failed before the first token")),
        "{err:?}"
    );
    assert_eq!(s.balance(), i128::from(BALANCE));
    assert_eq!(s.entries(), 0);
}

#[tokio::test]
async fn death_mid_stream_is_an_error_never_a_switch_and_charges_what_was_received() {
    let s = setup(vec![
        Script::DieMidStream(vec!["one", " two"]),
        Script::Serve(vec!["never used"]),
    ]);
    let mut active = start_job(&s.core, job(&[s.nodes[0], s.nodes[1]]), &s.principal, None)
        .await
        .unwrap();
    let mut received = String::new();
    let err = loop {
        match active.next(&s.core).await {
            Ok(Step::Delta(text, _)) => received.push_str(&text),
            Ok(Step::ToolCalls(_)) => panic!("no tools were offered"),
            Ok(Step::Done(_)) => panic!("a broken stream cannot finish"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, Error::BadGateway(_)), "{err:?}");
    assert_eq!(received, "one two");
    assert_eq!(active.node(), s.nodes[0], "no switch after the first token");
    let partial = active
        .book_partial(&s.core)
        .await
        .expect("a partial charge");
    assert_eq!(partial.text, "one two");
    assert_eq!(partial.usage.output_tokens, 2);
    assert_eq!(partial.receipt.receipt().amount, 5 * 10 + 2 * 20);
    assert_eq!(
        s.balance(),
        i128::from(BALANCE) - i128::from(partial.charge.total)
    );
    assert_eq!(s.entries(), 1);
    assert!(
        s.trust(0) < s.trust(1),
        "the broken stream counts against the node"
    );
}

#[tokio::test]
async fn a_lying_receipt_is_rejected_and_nothing_is_charged() {
    // More output tokens than were streamed.
    let s = setup(vec![Script::LyingReceipt {
        pieces: vec!["a", "b"],
        extra_out: 3,
        input: INPUT_TOKENS,
    }]);
    let err = s.run(&[]).await.unwrap_err();
    assert!(
        matches!(&err, Error::BadGateway(m) if m.contains("receipt was rejected")),
        "{err:?}"
    );
    assert_eq!(s.entries(), 0);
    assert_eq!(s.balance(), i128::from(BALANCE), "the hold is released");
    assert_eq!(s.core.metrics.receipts_rejected_total(), 1);
    let page = s.core.metrics.render(Vec::new());
    assert!(
        page.contains(r#"sharenet_receipts_rejected_total{reason="output_tokens"} 1"#),
        "{page}"
    );
    let health = s.core.routing.health(&s.nodes[0]).unwrap();
    assert!(health.trust.score(now_ms(), &Default::default()) < 0.5);

    // Billions of input tokens: past the job's bound (every prompt byte a
    // token), so never booked, and the balance never goes below zero.
    let s = setup(vec![Script::LyingReceipt {
        pieces: vec!["a"],
        extra_out: 0,
        input: 4_000_000_000,
    }]);
    let err = s.run(&[]).await.unwrap_err();
    assert!(
        matches!(&err, Error::BadGateway(m) if m.contains("input tokens")),
        "{err:?}"
    );
    assert_eq!(s.entries(), 0);
    assert_eq!(s.balance(), i128::from(BALANCE));
}

fn weather_call(name: &str, id: &str) -> ToolCall {
    ToolCall {
        id: id.into(),
        name: name.into(),
        arguments: r#"{"city": "Paris"}"#.into(),
    }
}

/// A chat job offering one function, `get_weather`.
fn job_with_tools() -> Arc<Job> {
    let mut j = (*job(&[])).clone();
    j.tools = Some(Tools {
        specs: vec![ToolSpec {
            name: "get_weather".into(),
            description: String::new(),
            parameters: serde_json::Value::Null,
            strict: false,
        }],
        choice: ToolChoice::Auto,
        parallel: false,
    });
    Arc::new(j)
}

async fn run_job(s: &Setup, job: Arc<Job>) -> Result<Box<Finished>, Error> {
    let mut active = start_job(&s.core, job, &s.principal, None).await?;
    loop {
        if let Step::Done(f) = active.next(&s.core).await? {
            return Ok(f);
        }
    }
}

/// A rogue node's tool calls: calls nobody offered, functions the job did
/// not offer, more calls than allowed, duplicate ids, and calls left out
/// of the receipt's digest are all refused, charge nothing and count
/// against the node. An honest node's call is booked with its receipt.
#[tokio::test]
async fn a_node_cannot_invent_or_hide_tool_calls() {
    let rogue = [
        (
            job(&[]),
            vec![weather_call("get_weather", "call_1")],
            true,
            "offered no tools",
        ),
        (
            job_with_tools(),
            vec![weather_call("rm_rf", "call_1")],
            true,
            "did not offer",
        ),
        (
            job_with_tools(),
            vec![
                weather_call("get_weather", "call_1"),
                weather_call("get_weather", "call_2"),
            ],
            true,
            "more tool calls",
        ),
        (
            job_with_tools(),
            vec![weather_call("get_weather", "")],
            true,
            "unique id",
        ),
        (
            job_with_tools(),
            vec![weather_call("get_weather", "call_1")],
            false,
            "receipt was rejected",
        ),
    ];
    for (job, calls, honest_digest, why) in rogue {
        let s = setup(vec![Script::Calls {
            calls,
            honest_digest,
        }]);
        let err = run_job(&s, job).await.err().expect("refused");
        assert!(
            matches!(&err, Error::BadGateway(m) if m.contains(why)),
            "{why}: {err:?}"
        );
        assert_eq!(s.entries(), 0, "{why}");
        assert_eq!(s.balance(), i128::from(BALANCE), "{why}: nothing charged");
        let health = s.core.routing.health(&s.nodes[0]).unwrap();
        let held = health.breaker.consecutive_failures > 0
            || health.trust.score(now_ms(), &Default::default()) < 0.5;
        assert!(held, "{why}: held against the node");
    }

    let call = weather_call("get_weather", "call_1");
    let s = setup(vec![Script::Calls {
        calls: vec![call.clone()],
        honest_digest: true,
    }]);
    let f = run_job(&s, job_with_tools()).await.unwrap();
    assert_eq!(f.tool_calls, vec![call.clone()]);
    assert_eq!(f.finish_reason, FinishReason::ToolCalls);
    assert_eq!(s.entries(), 1);
    assert_eq!(
        f.receipt.receipt().response_digest,
        response_digest("", &[call])
    );
}

#[tokio::test]
async fn a_slow_first_token_times_out_and_falls_back() {
    let slow = Script::SlowFirstToken(FIRST_TOKEN * 5, vec!["late"]);
    let s = setup(vec![slow.clone(), Script::Serve(vec!["fast"])]);
    let started = std::time::Instant::now();
    let (text, _, node) = s.run(&[s.nodes[0], s.nodes[1]]).await.unwrap();
    assert_eq!((text.as_str(), node), ("fast", s.nodes[1]));
    assert!(
        started.elapsed() < FIRST_TOKEN * 5,
        "the coordinator gave up on the slow node before it would have answered"
    );
    assert!(s.trust(0) < s.trust(1));

    let s = setup(vec![slow]);
    assert!(matches!(s.run(&[]).await, Err(Error::NoCapacity(_))));
    assert_eq!(s.balance(), i128::from(BALANCE));
}

#[tokio::test]
async fn a_flooding_node_is_cut_off_and_paid_nothing() {
    // Token-less deltas of 512 KiB each: the coordinator would keep all of
    // that text until the end (issue 12, item 7).
    for flood in [
        Script::Flood {
            n: 1000,
            bytes: 512 * 1024,
        },
        Script::Flood {
            n: 100_000,
            bytes: 0,
        },
    ] {
        let s = setup(vec![flood, Script::Serve(vec!["ok"])]);
        let err = s.run(&[s.nodes[0], s.nodes[1]]).await.unwrap_err();
        assert!(
            matches!(&err, Error::BadGateway(m) if m.contains("more text") || m.contains("more events")),
            "{err:?}"
        );
        assert!(s.trust(0) < s.trust(1), "the flood counts against the node");
        assert_eq!(s.entries(), 0);
        assert_eq!(s.balance(), i128::from(BALANCE));
    }
}

#[tokio::test]
async fn a_request_too_big_for_a_frame_is_refused_before_any_node_is_dialled() {
    // Issue 12, item 14: it used to reach a node, fail there, and count as
    // that honest node's failure.
    let s = setup(vec![Script::Serve(vec!["ok"])]);
    let mut job = (*job(&[])).clone();
    job.input = JobInput::Chat {
        messages: vec![ChatMessage::new("user", "x".repeat(MAX_FRAME_BYTES))],
    };
    let err = start_job(&s.core, Arc::new(job), &s.principal, None)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::BadRequest { param: Some(p), .. } if p == "messages"),
        "{err:?}"
    );
    assert_eq!(s.opens.load(Ordering::Relaxed), 0, "no node was dialled");
    assert_eq!(s.balance(), i128::from(BALANCE), "nothing held");
}

#[tokio::test]
async fn private_jobs_are_never_spot_checked_elsewhere() {
    // Issue 12, item 17: a sampled sensitive job used to be re-run on
    // public nodes with the same weights.
    let s = setup(vec![Script::Serve(vec!["a"]), Script::Serve(vec!["a"])]);
    let (tx, shutdown, sampler) = s.sampler();
    let notice = |private| CompletedJob {
        job: job(&[]),
        app: "default".into(),
        private,
        node: s.nodes[0],
        model: MODEL.into(),
    };
    tx.send(notice(true)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.opens.load(Ordering::Relaxed),
        0,
        "a private job stays put"
    );
    // The same job, not private, is checked on both nodes (the check runs
    // as a task on the core's tracker).
    tx.send(notice(false)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while s.core.metrics.spot_checks.get() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the public job was checked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(s.opens.load(Ordering::Relaxed) >= 2);
    shutdown.cancel();
    sampler.await.unwrap();
}

#[tokio::test]
async fn an_absurd_price_is_not_routable_and_cannot_inflate_holds() {
    // Issue 12, item 5: one node advertising 10^12 nano-USD per token made
    // the hold of every request that might try it absurd (402 for all).
    let s = setup(vec![Script::Serve(vec!["ok"])]);
    let greedy = Identity::generate();
    s.core.on_advert(
        greedy.peer_id(),
        &signed_advert(&greedy, 1_000_000_000_000, 1_000_000_000_000),
        now_ms(),
    );
    assert_eq!(
        s.core
            .registry
            .stats
            .over_price_ceiling
            .load(Ordering::Relaxed),
        1
    );
    let (text, charge, node) = s.run(&[greedy.public_key(), s.nodes[0]]).await.unwrap();
    assert_eq!((text.as_str(), node), ("ok", s.nodes[0]));
    assert_eq!(s.balance(), i128::from(BALANCE) - i128::from(charge));
    assert!(
        s.core
            .registry
            .models(now_ms())
            .iter()
            .all(|m| m.price_out.1 < 1_000_000),
        "nor is it listed"
    );
}

#[tokio::test]
async fn a_nodes_words_reach_logs_and_builders_escaped_and_short() {
    // Issue 12, item 19: a node's refusal text went verbatim (any size,
    // newlines, terminal escapes) into logs and the builder's error.
    let forged = format!(
        "busy\n2026-01-01 INFO forged line \u{1b}[31m{}",
        "x".repeat(100_000)
    );
    let s = setup(vec![Script::RefuseWith(forged)]);
    let err = s.run(&[]).await.unwrap_err();
    let shown = err.to_string();
    assert!(shown.len() < 2_000, "{} bytes", shown.len());
    assert!(
        !shown.contains('\n') && !shown.contains('\u{1b}'),
        "{shown}"
    );
    assert!(
        shown.contains("busy\\n2026"),
        "escaped, not dropped: {shown}"
    );
}

#[tokio::test]
async fn parallel_settlements_never_pay_an_entry_twice() {
    // Issue 12, item 3: two settlements of different periods at once
    // could both sweep the same unsettled entries (providers paid twice).
    let rule = sharenet_market::PeriodRule::Fixed {
        length_ms: 400,
        origin_ms: 0,
    };
    let s = setup_with(vec![Script::Serve(vec!["ok"])], |c| c.period_rule = rule);
    let first = rule.period_of(now_ms()).unwrap();
    for _ in 0..6 {
        s.run(&[]).await.unwrap();
    }
    // Both the jobs' period and the next one have ended.
    let next = rule.period_of(first.end_ms).unwrap();
    while now_ms() <= next.end_ms + 400 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let later = rule.period_of(next.end_ms).unwrap();
    let (a, b, c) = tokio::join!(
        s.core.settle(Some(first.start_ms)),
        s.core.settle(Some(next.start_ms)),
        s.core.settle(Some(later.start_ms)),
    );
    let total: u64 = [a, b, c]
        .into_iter()
        .map(|r| r.unwrap().0.statement().receipts)
        .sum();
    assert_eq!(total, 6, "every entry in exactly one statement");
    let mut seen = std::collections::HashSet::new();
    for record in s.core.accounts.books().statements().unwrap() {
        for id in record.job_ids {
            assert!(seen.insert(id), "job {id} settled twice");
        }
    }
    assert_eq!(seen.len(), 6);

    // Issue 12, item 11: the public bundle is built once per period (the
    // second call is the same allocation, no re-read of the period), and
    // proofs come from it.
    let label = first.label();
    let a = s.core.bundle(&label).await.unwrap();
    let b = s.core.bundle(&label).await.unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    let statement = sharenet_market::SignedStatement::from_bytes(&a.signed_statement).unwrap();
    for leaf in &a.leaves {
        let proof = s
            .core
            .proof_of(&s.principal.app, sharenet_proto::JobId(leaf.job_id))
            .await
            .unwrap();
        let entry = s
            .core
            .receipt_of(&s.principal.app, sharenet_proto::JobId(leaf.job_id))
            .await
            .unwrap();
        assert!(
            statement
                .statement()
                .includes(&entry.receipt.to_bytes(), &proof.proof)
        );
    }
}

#[tokio::test]
async fn a_node_inflating_its_input_counts_is_caught_by_a_spot_check() {
    // Issue 12, item 6: a node that bills 60 input tokens for a 5-token
    // prompt stays under the hold's bound (every prompt byte a token), so
    // its receipts pass; the spot check compares its count with the
    // reference's, and the arbiter decides.
    let inflator = Script::LyingReceipt {
        pieces: vec!["ok"],
        extra_out: 0,
        input: 60,
    };
    let s = setup(vec![
        inflator,
        Script::Serve(vec!["ok"]),
        Script::Serve(vec!["ok"]),
    ]);
    let (_, charge, node) = s.run(&[s.nodes[0]]).await.unwrap();
    assert_eq!(node, s.nodes[0]);
    assert!(charge > 0, "within the bound, the receipt itself passes");
    let (tx, shutdown, sampler) = s.sampler();
    tx.send(CompletedJob {
        job: job(&[]),
        app: "default".into(),
        private: false,
        node: s.nodes[0],
        model: MODEL.into(),
    })
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while s.core.metrics.spot_checks_failed.get() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the inflating node was caught"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.core.metrics.spot_checks_failed.get(), 1);
    // Under the trust floor: it gets no traffic, even when asked for first.
    let (_, _, node) = s.run(&[s.nodes[0], s.nodes[1]]).await.unwrap();
    assert_ne!(node, s.nodes[0]);
    shutdown.cancel();
    sampler.await.unwrap();
}

#[tokio::test]
async fn a_request_no_node_can_fit_is_a_400_not_a_503() {
    // Prompt + max_tokens beyond every node's context window (4096 here):
    // the request is at fault, as OpenAI answers it.
    let s = setup(vec![Script::Serve(vec!["ok"])]);
    let mut big = (*job(&[])).clone();
    big.params.max_tokens = 8_000;
    let err = start_job(&s.core, Arc::new(big), &s.principal, None)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::BadRequest { param: Some(p), message } if p == "messages" && message.contains("max_tokens 8000")),
        "{err:?}"
    );
    assert_eq!(s.opens.load(Ordering::Relaxed), 0);
}
