//! Trying the planned nodes in order until one produces its first event.

use std::time::{Duration, Instant};

use sharenet_p2p::{PeerId, read_frame, write_frame};
use sharenet_proto::{JobErrorCode, JobEvent, MAX_FRAME_BYTES};

use crate::core::error::Error;
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
    /// The request itself is at fault; every node would say the same.
    Client(Error),
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
/// refusal, a dead stream or a timeout before the first event moves on (and
/// counts against that node); a request-level error ends the job at once.
pub(super) async fn first_answer(
    core: &Core,
    model: &str,
    candidates: Vec<Offer>,
    request: &[u8],
) -> Result<(Offer, Started), Error> {
    let mut failures = Vec::new();
    for candidate in candidates {
        let (peer, node) = (candidate.peer, candidate.advert.node);
        if !failures.is_empty() {
            core.metrics.fallbacks.inc();
        }
        core.routing.begin_probe(node, crate::core::now_ms());
        match try_node(core, peer, node, request).await {
            Ok(started) => return Ok((candidate, started)),
            Err(AttemptError::Client(e)) => return Err(e),
            Err(AttemptError::Retry(reason) | AttemptError::Dropped(reason)) => {
                core.routing
                    .record(node, Outcome::Failed, crate::core::now_ms());
                tracing::warn!(node = %peer, %reason, "node failed before the first token");
                failures.push(format!("{peer}: {reason}"));
            }
        }
    }
    Err(Error::NoCapacity(format!(
        "every node tried for `{model}` failed before the first token ({})",
        failures.join("; ")
    )))
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
            code: JobErrorCode::ContextLengthExceeded,
            message,
        } => Err(AttemptError::Client(Error::BadRequest {
            message: untrusted(&message),
            param: Some("messages".into()),
        })),
        JobEvent::Error {
            code: JobErrorCode::InvalidRequest | JobErrorCode::UnsupportedInput,
            message,
        } => Err(AttemptError::Client(Error::bad_request(
            untrusted(&message),
            None,
        ))),
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
