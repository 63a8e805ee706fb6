//! Trying the planned nodes in order until one produces its first event.

use std::time::{Duration, Instant};

use sharenet_p2p::{PeerId, read_frame, write_frame};
use sharenet_proto::{JobErrorCode, JobEvent, MAX_FRAME_BYTES};

use crate::core::error::Error;
use crate::core::job::{Job, JobKind};
use crate::core::registry::Offer;
use crate::core::routing::{InFlight, Outcome};
use crate::core::transport::JobStream;
use crate::core::{Core, untrusted};

/// Times a node that dropped the stream unread is tried again.
const DROPPED_RETRIES: u32 = 4;

/// Why one candidate did not work out.
pub(super) enum AttemptError {
    /// Try the next node.
    Retry(String),
    /// The stream was dropped before the node read the request (libp2p-stream
    /// drops inbound streams when a burst outpaces the node's acceptor):
    /// the node never saw the job, so the same node may be tried again.
    Dropped(String),
    /// The node refused the request itself (`invalid_request`,
    /// `unsupported_input`, `context_length_exceeded`): see
    /// [`first_answer`] for what that costs whom.
    Refused { code: JobErrorCode, message: String },
}

/// A node's refusal of the request, kept until the job finds a node that
/// answers it.
struct Refusal {
    node: [u8; 32],
    peer: PeerId,
    code: JobErrorCode,
    message: String,
    /// The coordinator's own checks explain it (see [`explained`]).
    explained: bool,
}

/// Whether the coordinator's own checks explain a refusal. Everything a
/// node checks of a request (`JobRequest::validate`: ranges, sizes, the
/// schema limits of its constraint compiler) the coordinator checked
/// before dispatch and refused with a 400, and routing sent the job only to
/// nodes advertising the capabilities it needs; so two refusals remain
/// that the coordinator cannot rule out:
///
/// - `context_length_exceeded` while the coordinator does not count input
///   tokens itself: when the job's bound on its input tokens (every prompt
///   byte a token, plus the template's, [`Job::max_input_tokens`]) reaches
///   the node's advertised context length, the prompt may truly not fit.
///   Below it the refusal is the node's (a node whose KV budget cannot
///   hold the job refuses it so too: its own limit, behind the context it
///   advertised);
/// - `unsupported_input` for a job asking for logprobs: adverts do not say
///   whether a node returns them, and an upstream-backed node cannot.
///
/// Anything else is unexplained.
fn explained(job: &Job, offer: &Offer, code: JobErrorCode) -> bool {
    match code {
        JobErrorCode::ContextLengthExceeded => {
            job.max_input_tokens() >= u64::from(offer.offer.context_length)
        }
        JobErrorCode::UnsupportedInput => job.params.logprobs,
        _ => false,
    }
}

/// A node that answered: its stream, its first event, and when the
/// request went out.
pub(super) struct Started {
    pub stream: JobStream,
    pub first: JobEvent,
    pub sent_at: Instant,
    /// The job counts towards the node's load while this lives.
    pub in_flight: InFlight,
}

/// One node, with the same-node retries for streams dropped unread.
pub(super) async fn try_node(
    core: &Core,
    peer: PeerId,
    node: [u8; 32],
    request: &[u8],
) -> Result<Started, AttemptError> {
    let in_flight = core.routing.begin_job(node, crate::core::now_ms());
    let mut sent_at = Instant::now();
    let mut outcome = attempt(core, peer, request).await;
    for retry in 0..DROPPED_RETRIES {
        let Err(AttemptError::Dropped(reason)) = &outcome else {
            break;
        };
        tracing::debug!(node = %peer, %reason, retry, "stream dropped unread; retrying the same node");
        let backoff = 10u64 << retry;
        tokio::time::sleep(Duration::from_millis(
            backoff + rand::random::<u64>() % backoff,
        ))
        .await;
        sent_at = Instant::now();
        outcome = attempt(core, peer, request).await;
    }
    outcome.map(|(stream, first)| Started {
        stream,
        first,
        sent_at,
        in_flight,
    })
}

/// Tries `candidates` in order; the first that produces an event wins. A
/// dead stream or a timeout before the first event moves on and counts
/// against that node; so does any refusal other than the request-level
/// ones below.
///
/// A request-level refusal (`invalid_request`, `unsupported_input`,
/// `context_length_exceeded`) also moves on to the next node: one node
/// refusing every job of a model must not black-hole it. Whether it counts
/// against the refuser is decided once the job ends its search: when
/// another node answers the same request, the request was servable, and
/// each refusal the coordinator's checks do not explain ([`explained`]) is
/// recorded as that node's failure. When no node answers, nobody is
/// charged with a refusal (a builder cannot sink honest nodes' trust with a
/// request they all refuse) and the builder gets the last refusal as a
/// 400; with no refusal at all, a 503 naming every failure.
pub(super) async fn first_answer(
    core: &Core,
    job: &Job,
    model: &str,
    candidates: Vec<Offer>,
    request: &[u8],
) -> Result<(Offer, Started), Error> {
    let mut failures = Vec::new();
    let mut refusals: Vec<Refusal> = Vec::new();
    for candidate in candidates {
        let (peer, node) = (candidate.peer, candidate.advert.node);
        if !failures.is_empty() {
            core.metrics.fallbacks.inc();
        }
        core.routing.begin_probe(node, crate::core::now_ms());
        match try_node(core, peer, node, request).await {
            Ok(started) => {
                charge_refusers(core, &refusals, peer);
                return Ok((candidate, started));
            }
            Err(AttemptError::Refused { code, message }) => {
                let explained = explained(job, &candidate, code);
                let message = untrusted(&message);
                tracing::warn!(node = %peer, ?code, %message, explained, "node refused the request; trying the next");
                failures.push(format!("{peer}: refused ({code:?}): {message}"));
                refusals.push(Refusal {
                    node,
                    peer,
                    code,
                    message,
                    explained,
                });
            }
            Err(AttemptError::Retry(reason) | AttemptError::Dropped(reason)) => {
                core.routing
                    .record(node, Outcome::Failed, crate::core::now_ms());
                tracing::warn!(node = %peer, %reason, "node failed before the first token");
                failures.push(format!("{peer}: {reason}"));
            }
        }
    }
    if let Some(last) = refusals.pop() {
        return Err(refused(job, last));
    }
    Err(Error::NoCapacity(format!(
        "every node tried for `{model}` failed before the first token ({})",
        failures.join("; ")
    )))
}

/// Another node (`served_by`) answered a request these nodes refused: each
/// refusal the coordinator cannot explain is its node's failure.
fn charge_refusers(core: &Core, refusals: &[Refusal], served_by: PeerId) {
    for r in refusals.iter().filter(|r| !r.explained) {
        core.routing
            .record(r.node, Outcome::Failed, crate::core::now_ms());
        tracing::warn!(node = %r.peer, code = ?r.code, message = %r.message, %served_by,
            "node refused a request another node served: counted as its failure");
    }
}

/// The builder's 400 when every node tried refused the request: the last
/// refusal, naming the input when it was about the context length.
fn refused(job: &Job, last: Refusal) -> Error {
    let param = (last.code == JobErrorCode::ContextLengthExceeded).then_some(match job.kind {
        JobKind::Chat => "messages",
        JobKind::Completion => "prompt",
        JobKind::Embedding => "input",
    });
    Error::bad_request(last.message, param)
}

async fn attempt(
    core: &Core,
    peer: PeerId,
    request: &[u8],
) -> Result<(JobStream, JobEvent), AttemptError> {
    let t = core.timeouts;
    // A burst of new jobs opens its streams a bounded number at a time: a
    // node's libp2p-stream acceptor takes one inbound stream at a time and
    // drops what arrives meanwhile. Waiting here counts in the connect
    // timeout.
    let opened = tokio::time::timeout(t.connect, async {
        let _opening = core.opening.acquire().await;
        let mut stream = core
            .transport
            .open_job_stream(peer)
            .await
            .map_err(|e| AttemptError::Retry(e.to_string()))?;
        write_frame(&mut stream, request)
            .await
            .map_err(|e| AttemptError::Dropped(format!("send request: {e}")))?;
        Ok(stream)
    })
    .await
    .map_err(|_| AttemptError::Retry("timed out opening a stream".into()))?;
    let mut stream = opened?;
    let frame = tokio::time::timeout(t.first_token, read_frame(&mut stream, MAX_FRAME_BYTES))
        .await
        .map_err(|_| AttemptError::Retry("no first token in time".into()))?
        .map_err(|e| AttemptError::Retry(format!("read first event: {e}")))?;
    match decode_event(&frame).map_err(AttemptError::Retry)? {
        JobEvent::Error {
            code:
                code @ (JobErrorCode::ContextLengthExceeded
                | JobErrorCode::InvalidRequest
                | JobErrorCode::UnsupportedInput),
            message,
        } => Err(AttemptError::Refused { code, message }),
        JobEvent::Error { code, message } => Err(AttemptError::Retry(format!(
            "refused ({code:?}): {}",
            untrusted(&message)
        ))),
        JobEvent::Countersigned { .. } => Err(AttemptError::Retry("unexpected frame".into())),
        event => Ok((stream, event)),
    }
}

/// One frame from a node as a job event, or why it is not one.
pub(super) fn decode_event(frame: &[u8]) -> Result<JobEvent, String> {
    serde_json::from_slice(frame).map_err(|e| format!("undecodable event: {e}"))
}
