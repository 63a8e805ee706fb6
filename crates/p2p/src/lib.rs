//! The sharenet libp2p swarm.
//!
//! Every node and coordinator is a libp2p peer: QUIC first (TCP + noise +
//! yamux as fallback), gossipsub for capacity adverts, identify, ping (RTT),
//! and a stream protocol ([`JOB_PROTOCOL`]) carrying one job per stream.
//!
//! The [`Swarm`](libp2p::Swarm) lives in one event-loop task; the rest of the
//! program holds a cloneable [`Client`] that talks to it through a bounded
//! command channel, and reads [`Event`]s from a bounded channel (events that
//! do not fit are dropped and counted, never queued without limit).
//!
//! The PeerId is derived from the same ed25519 key that signs adverts and
//! receipts ([`Identity`]), so the peer on the other end of a stream is the
//! signer we expect.

mod frame;
mod identity;
mod swarm;

pub use frame::{FrameError, read_frame, write_frame};
pub use identity::{Identity, IdentityError, peer_id_of};
pub use libp2p::multiaddr::Protocol;
pub use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
pub use libp2p_stream::IncomingStreams;
pub use swarm::{
    Client, Event, GossipStats, MAX_STREAMS_PER_CONNECTION, Network, NetworkConfig, P2pError,
    RELAY_MAX_CIRCUIT_BYTES, Traversal, parse_multiaddrs, start,
};

/// The gossipsub topic nodes publish their signed adverts on.
pub const ADVERT_TOPIC: &str = "sharenet/adverts/1";
/// The stream protocol for jobs: one request frame, then event frames.
pub const JOB_PROTOCOL: StreamProtocol = StreamProtocol::new("/sharenet/job/1");
