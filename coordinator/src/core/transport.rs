//! The seam between dispatch and the network: "open a job stream to this
//! peer". The libp2p client implements it for real; tests implement it
//! with scripted nodes over in-memory pipes, so dispatch is tested without
//! libp2p or an inference engine.
//!
//! A job stream carries length-prefixed frames (`sharenet_p2p::read_frame`
//! / `write_frame`): the JSON `JobRequest` one way, `JobEvent`s the other.

use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncWrite};
use sharenet_p2p::{Event, PeerId};

/// A bidirectional byte stream to one node for one job.
pub trait JobIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> JobIo for T {}

/// An open job stream.
pub type JobStream = Box<dyn JobIo>;

/// Why a stream could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub String);

/// Opens job streams to nodes.
pub trait Transport: Send + Sync + 'static {
    fn open_job_stream(&self, peer: PeerId) -> BoxFuture<'_, Result<JobStream, TransportError>>;

    /// Network events dropped because their channel was full (for metrics).
    fn dropped_events(&self) -> u64 {
        0
    }
}

impl Transport for sharenet_p2p::Client {
    fn open_job_stream(&self, peer: PeerId) -> BoxFuture<'_, Result<JobStream, TransportError>> {
        Box::pin(async move {
            sharenet_p2p::Client::open_job_stream(self, peer)
                .await
                .map(|s| Box::new(s) as JobStream)
                .map_err(|e| TransportError(e.to_string()))
        })
    }

    fn dropped_events(&self) -> u64 {
        sharenet_p2p::Client::dropped_events(self)
    }
}

/// What the coordinator needs from the network: a way to open job streams,
/// and the events (adverts, RTTs) it hears.
pub struct Network {
    pub transport: std::sync::Arc<dyn Transport>,
    /// Bounded: the sender drops (and counts) what does not fit.
    pub events: tokio::sync::mpsc::Receiver<Event>,
}
