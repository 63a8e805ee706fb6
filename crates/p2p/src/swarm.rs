//! The swarm event loop and the [`Client`] handle that drives it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Stream, StreamProtocol, autonat, dcutr, gossipsub, identify, kad, noise,
    ping, relay, tcp, yamux,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{ADVERT_TOPIC, Identity, JOB_PROTOCOL};

/// Commands queued to the swarm task at most; senders wait beyond that.
const COMMAND_CAPACITY: usize = 64;
/// How often we re-dial bootstrap peers while connected to nobody.
const REDIAL_INTERVAL: Duration = Duration::from_secs(3);
/// Largest gossip message (adverts are a few hundred bytes).
const MAX_GOSSIP_BYTES: usize = 64 * 1024;
/// Our Kademlia protocol (a private DHT, not the public IPFS one).
const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/sharenet/kad/1.0.0");
/// Kademlia lookups for unreachable advertisers in flight at most.
const MAX_LOOKUPS: usize = 64;
/// Adverts one publisher may have accepted in a burst, and per second
/// after it (an honest node advertises on a heartbeat and on load changes
/// coalesced to at most four a second).
const ADVERT_BURST: f64 = 20.0;
const ADVERTS_PER_SEC: f64 = 5.0;
/// Publishers whose rate is tracked at most; beyond it the idle ones are
/// forgotten.
const MAX_RATE_ENTRIES: usize = 100_000;
/// An advert issued further than this ahead of our clock is ignored.
const MAX_ADVERT_SKEW_MS: u64 = 60_000;
/// Relay limits that fit job streams (a long generation is a few MiB and
/// minutes) and nothing like general-purpose transit.
pub const RELAY_MAX_CIRCUIT_BYTES: u64 = 256 << 20;
const RELAY_MAX_CIRCUIT_DURATION: Duration = Duration::from_secs(3600);
const RELAY_MAX_RESERVATIONS_PER_PEER: usize = 2;
/// Streams open at once on one connection (QUIC's and yamux's limit): a
/// coordinator runs every concurrent job to a node as one stream on one
/// connection, so this bounds a node's concurrent jobs from one
/// coordinator. libp2p's defaults (256 for QUIC, 512 for yamux) are below
/// what one upstream-backed node serves. 4,096 is also yamux's most with
/// its default 1 GiB connection window (it needs 256 KiB per stream and
/// panics at start-up beyond that).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 4096;
/// Inbound streams negotiating their protocol at once on one connection;
/// beyond this libp2p resets new ones (default 128: a burst of new jobs
/// would be reset).
const MAX_NEGOTIATING_INBOUND_STREAMS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum P2pError {
    #[error("build the libp2p transport: {0}")]
    Transport(String),
    #[error("configure gossipsub: {0}")]
    Gossipsub(String),
    #[error("listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("timed out waiting for listen addresses")]
    ListenTimeout,
    #[error("dial {addr}: {reason}")]
    Dial { addr: Multiaddr, reason: String },
    #[error("publish advert: {0}")]
    Publish(String),
    #[error("open job stream to {peer}: {reason}")]
    OpenStream { peer: PeerId, reason: String },
    #[error("job streams are already being accepted")]
    AlreadyAccepting,
    #[error("the network task has stopped")]
    Stopped,
    #[error("parse {field} = {value:?} as a multiaddr: {reason}")]
    BadAddress {
        field: String,
        value: String,
        reason: String,
    },
}

/// Parses config values as multiaddrs; an error names `key[i]` and the value.
pub fn parse_multiaddrs(key: &str, values: &[String]) -> Result<Vec<Multiaddr>, P2pError> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.parse()
                .map_err(|e: libp2p::multiaddr::Error| P2pError::BadAddress {
                    field: format!("{key}[{i}]"),
                    value: v.clone(),
                    reason: e.to_string(),
                })
        })
        .collect()
}

/// How to start a peer.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    pub identity: Identity,
    /// e.g. `/ip4/127.0.0.1/udp/0/quic-v1` and `/ip4/127.0.0.1/tcp/0`.
    pub listen: Vec<Multiaddr>,
    /// Peers dialled at start, and again whenever we are connected to nobody.
    pub bootstrap: Vec<Multiaddr>,
    /// Capacity of the event channel; events beyond it are dropped and counted.
    pub event_capacity: usize,
    /// Serve as a circuit relay (v2) for peers that cannot be dialled
    /// directly (a coordinator or any publicly reachable peer).
    pub relay_server: bool,
    /// Relays to reserve a slot on and listen through (each with
    /// `/p2p/<relay id>`): for a peer behind NAT, which then needs no
    /// direct listen address at all. Connections through a relay are
    /// upgraded to direct ones by hole punching (DCUtR) where the NATs
    /// allow.
    pub relays: Vec<Multiaddr>,
    /// As a relay: the most bytes one circuit carries before the relay
    /// closes it (default [`RELAY_MAX_CIRCUIT_BYTES`]).
    pub relay_max_circuit_bytes: u64,
}

impl NetworkConfig {
    /// Loopback QUIC + TCP on ephemeral ports.
    pub fn loopback(identity: Identity) -> Self {
        Self {
            identity,
            listen: vec![
                "/ip4/127.0.0.1/udp/0/quic-v1"
                    .parse()
                    .unwrap_or_else(|_| Multiaddr::empty()),
                "/ip4/127.0.0.1/tcp/0"
                    .parse()
                    .unwrap_or_else(|_| Multiaddr::empty()),
            ],
            bootstrap: Vec::new(),
            event_capacity: 1024,
            relay_server: false,
            relays: Vec::new(),
            relay_max_circuit_bytes: RELAY_MAX_CIRCUIT_BYTES,
        }
    }
}

/// What the swarm tells the rest of the program.
#[derive(Debug, Clone)]
pub enum Event {
    /// A gossip message on the advert topic, published by `source`.
    Advert { source: PeerId, data: Vec<u8> },
    /// A peer subscribed to the advert topic (a node may want to re-advertise).
    AdvertSubscriber { peer: PeerId },
    /// A ping round trip.
    Rtt { peer: PeerId, rtt: Duration },
    /// The last connection to a peer closed.
    Disconnected { peer: PeerId },
    /// AutoNAT's verdict on whether others can dial us changed.
    Reachability { public: Option<bool> },
    /// A connection to `peer` was upgraded from relayed to direct (DCUtR).
    HolePunched { peer: PeerId },
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    gossipsub: gossipsub::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    stream: libp2p_stream::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    relay_client: relay::client::Behaviour,
    relay_server: Toggle<relay::Behaviour>,
    dcutr: dcutr::Behaviour,
    autonat: autonat::v1::Behaviour,
}

enum Command {
    Publish {
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), P2pError>>,
    },
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), P2pError>>,
    },
    ConnectedPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    /// Whether every connection to the peer goes through a relay.
    Relayed {
        peer: PeerId,
        reply: oneshot::Sender<Option<bool>>,
    },
}

/// A cloneable handle to the swarm task.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    control: libp2p_stream::Control,
    peer_id: PeerId,
    listen_addrs: Arc<Vec<Multiaddr>>,
    dropped_events: Arc<AtomicU64>,
    traversal: Arc<Traversal>,
    gossip: Arc<GossipStats>,
}

/// What the advert check did with gossip (for metrics and tests).
#[derive(Debug, Default)]
pub struct GossipStats {
    /// Adverts that did not decode or verify, or were signed by a key other
    /// than the publisher's: rejected (the forwarder's score pays).
    pub rejected: AtomicU64,
    /// Adverts over their publisher's rate: ignored, not forwarded.
    pub rate_limited: AtomicU64,
    /// Expired or from the future: ignored.
    pub stale: AtomicU64,
}

/// Publishers whose adverts were accepted (bounded by `MAX_RATE_ENTRIES`):
/// the peers that serve, the only ones a relay reserves slots for.
type Advertisers = Arc<std::sync::Mutex<std::collections::HashSet<PeerId>>>;

/// NAT traversal counters (for metrics and tests).
#[derive(Debug, Default)]
pub struct Traversal {
    /// Connections established through a relay circuit.
    pub relayed_connections: AtomicU64,
    /// As a relay: reservations granted, and refused (the peer does not
    /// serve, or is over a limit).
    pub reservations_accepted: AtomicU64,
    pub reservations_denied: AtomicU64,
    /// Relayed connections upgraded to direct ones by hole punching.
    pub hole_punches: AtomicU64,
}

/// A started peer: its client, its events, and the task to await on exit.
pub struct Network {
    pub client: Client,
    pub events: mpsc::Receiver<Event>,
    pub task: JoinHandle<()>,
}

impl Client {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The addresses we listen on, each ending in `/p2p/<peer id>`.
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    /// NAT traversal counters.
    pub fn traversal(&self) -> &Traversal {
        &self.traversal
    }

    /// What the advert check refused.
    pub fn gossip_stats(&self) -> &GossipStats {
        &self.gossip
    }

    /// Events dropped because the event channel was full.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events.load(Ordering::Relaxed)
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, P2pError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| P2pError::Stopped)?;
        rx.await.map_err(|_| P2pError::Stopped)
    }

    /// Publishes bytes on the advert topic.
    pub async fn publish_advert(&self, data: Vec<u8>) -> Result<(), P2pError> {
        self.request(|reply| Command::Publish { data, reply })
            .await?
    }

    pub async fn dial(&self, addr: Multiaddr) -> Result<(), P2pError> {
        self.request(|reply| Command::Dial { addr, reply }).await?
    }

    /// Whether we reach `peer` only through a relay (`None`: not connected).
    pub async fn is_relayed(&self, peer: PeerId) -> Result<Option<bool>, P2pError> {
        self.request(|reply| Command::Relayed { peer, reply }).await
    }

    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, P2pError> {
        self.request(|reply| Command::ConnectedPeers { reply })
            .await
    }

    /// Opens a job stream to `peer` (dialling it if needed).
    pub async fn open_job_stream(&self, peer: PeerId) -> Result<Stream, P2pError> {
        self.control
            .clone()
            .open_stream(peer, JOB_PROTOCOL)
            .await
            .map_err(|e| P2pError::OpenStream {
                peer,
                reason: e.to_string(),
            })
    }

    /// Starts accepting job streams; can be called once per peer.
    pub fn accept_jobs(&self) -> Result<libp2p_stream::IncomingStreams, P2pError> {
        self.control
            .clone()
            .accept(JOB_PROTOCOL)
            .map_err(|_| P2pError::AlreadyAccepting)
    }
}

fn build_swarm(
    identity: &Identity,
    relay_server: bool,
    max_circuit_bytes: u64,
    advertisers: Advertisers,
) -> Result<libp2p::Swarm<Behaviour>, P2pError> {
    let keypair = identity.libp2p_keypair();
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux_config,
        )
        .map_err(|e| P2pError::Transport(e.to_string()))?
        .with_quic_config(|mut c| {
            c.max_concurrent_stream_limit = MAX_STREAMS_PER_CONNECTION;
            c
        })
        .with_relay_client(noise::Config::new, yamux_config)
        .map_err(|e| P2pError::Transport(e.to_string()))?
        .with_behaviour(|key, relay_client| {
            // Nodes mostly connect to a coordinator (a star), so peers
            // outside its mesh learn of adverts through gossip: announce to
            // every non-mesh peer each heartbeat and keep ids long enough
            // for them to ask.
            let gossip_config = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_millis(500))
                .gossip_factor(1.0)
                .gossip_lazy(64)
                .history_gossip(6)
                .history_length(8)
                .validation_mode(gossipsub::ValidationMode::Strict)
                // Nothing is forwarded before the event loop has checked it
                // (`check_advert`): a peer cannot use us to spread floods.
                .validate_messages()
                .max_transmit_size(MAX_GOSSIP_BYTES)
                .build()
                .map_err(|e| P2pError::Gossipsub(e.to_string()))?;
            let mut gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossip_config,
            )
            .map_err(|e| P2pError::Gossipsub(e.to_string()))?;
            gossipsub
                .with_peer_score(score_params(), gossipsub::PeerScoreThresholds::default())
                .map_err(P2pError::Gossipsub)?;
            Ok(Behaviour {
                gossipsub,
                // Listen address changes (a relay reservation coming up)
                // are pushed to peers, so the DHT learns circuit addresses.
                identify: identify::Behaviour::new(
                    identify::Config::new("/sharenet/1.0.0".into(), key.public())
                        .with_push_listen_addr_updates(true),
                ),
                ping: ping::Behaviour::new(
                    ping::Config::new().with_interval(Duration::from_secs(5)),
                ),
                stream: libp2p_stream::Behaviour::new(),
                kad: {
                    let id = key.public().to_peer_id();
                    let mut kad = kad::Behaviour::with_config(
                        id,
                        kad::store::MemoryStore::new(id),
                        kad::Config::new(KAD_PROTOCOL),
                    );
                    // Every peer serves the DHT, also one behind NAT (over
                    // its relay circuit, so others can find it), and on a
                    // LAN or loopback, where no address is ever confirmed as
                    // external and the automatic mode would pick client.
                    kad.set_mode(Some(kad::Mode::Server));
                    kad
                },
                relay_client,
                relay_server: Toggle::from(relay_server.then(|| {
                    let id = key.public().to_peer_id();
                    let mut config = relay::Config {
                        max_reservations: 4096,
                        max_reservations_per_peer: RELAY_MAX_RESERVATIONS_PER_PEER,
                        max_circuits: 4096,
                        max_circuits_per_peer: 64,
                        max_circuit_duration: RELAY_MAX_CIRCUIT_DURATION,
                        max_circuit_bytes,
                        ..relay::Config::default()
                    };
                    // Reservations only for peers that serve: ones whose
                    // adverts this peer has checked and accepted. (A node
                    // behind NAT advertises over its own outbound
                    // connection first; a refused reservation is retried.)
                    let serving = advertisers.clone();
                    config.reservation_rate_limiters.push(Box::new(
                        move |peer: PeerId, _: &Multiaddr, _| {
                            serving.lock().map(|s| s.contains(&peer)).unwrap_or(false)
                        },
                    ));
                    relay::Behaviour::new(id, config)
                })),
                dcutr: dcutr::Behaviour::new(key.public().to_peer_id()),
                autonat: autonat::v1::Behaviour::new(
                    key.public().to_peer_id(),
                    autonat::v1::Config {
                        only_global_ips: false,
                        ..autonat::v1::Config::default()
                    },
                ),
            })
        })
        .map_err(|e| P2pError::Transport(e.to_string()))?
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(Duration::from_secs(3600))
                .with_max_negotiating_inbound_streams(MAX_NEGOTIATING_INBOUND_STREAMS)
        })
        .build();
    Ok(swarm)
}

fn yamux_config() -> yamux::Config {
    let mut c = yamux::Config::default();
    c.set_max_num_streams(MAX_STREAMS_PER_CONNECTION as usize);
    c
}

/// Starts a peer: listens, waits for its addresses, dials the bootstrap
/// peers, and spawns the event loop (stopped by `cancel`).
pub async fn start(config: NetworkConfig, cancel: CancellationToken) -> Result<Network, P2pError> {
    let advertisers: Advertisers = Arc::default();
    let mut swarm = build_swarm(
        &config.identity,
        config.relay_server,
        config.relay_max_circuit_bytes,
        advertisers.clone(),
    )?;
    let topic = gossipsub::IdentTopic::new(ADVERT_TOPIC);
    swarm
        .behaviour_mut()
        .gossipsub
        .subscribe(&topic)
        .map_err(|e| P2pError::Gossipsub(e.to_string()))?;

    let mut pending = HashMap::new();
    for addr in &config.listen {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| P2pError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        pending.insert(id, addr.clone());
    }
    let peer_id = *swarm.local_peer_id();
    let mut listen_addrs = Vec::new();
    let wait = async {
        while !pending.is_empty() {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr {
                    listener_id,
                    address,
                } => {
                    pending.remove(&listener_id);
                    listen_addrs.push(address.with_p2p(peer_id).unwrap_or_else(|a| a));
                }
                SwarmEvent::ListenerError { listener_id, error }
                | SwarmEvent::ListenerClosed {
                    listener_id,
                    reason: Err(error),
                    ..
                } => {
                    let addr = pending
                        .remove(&listener_id)
                        .unwrap_or_else(Multiaddr::empty);
                    return Err(P2pError::Listen {
                        addr,
                        reason: error.to_string(),
                    });
                }
                _ => {}
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .map_err(|_| P2pError::ListenTimeout)??;

    // A relay serves only once it believes itself reachable; a peer told
    // to relay is a public one (a coordinator), so its listen addresses
    // are its external addresses (AutoNAT would confirm them only after
    // its first probes, and never on a LAN or loopback).
    if config.relay_server {
        for addr in &listen_addrs {
            swarm.add_external_address(addr.clone());
        }
    }
    for addr in &config.bootstrap {
        if let Some(Protocol::P2p(peer)) = addr.iter().last() {
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
        }
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, error = %e, "dial bootstrap peer");
        }
    }
    // Behind NAT: listen through each relay (the relay client dials it and
    // reserves a slot; the circuit address appears as a listen address).
    let mut relay_listeners = HashMap::new();
    for relay in &config.relays {
        match swarm.listen_on(relay.clone().with(Protocol::P2pCircuit)) {
            Ok(id) => {
                relay_listeners.insert(id, relay.clone());
            }
            Err(e) => tracing::warn!(%relay, error = %e, "listen through relay"),
        }
    }

    let control = swarm.behaviour().stream.new_control();
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_CAPACITY);
    let (event_tx, event_rx) = mpsc::channel(config.event_capacity.max(1));
    let dropped_events = Arc::new(AtomicU64::new(0));
    let traversal = Arc::new(Traversal::default());
    let gossip = Arc::new(GossipStats::default());
    let client = Client {
        commands: cmd_tx,
        control,
        peer_id,
        listen_addrs: Arc::new(listen_addrs),
        dropped_events: dropped_events.clone(),
        traversal: traversal.clone(),
        gossip: gossip.clone(),
    };
    let event_loop = EventLoop {
        swarm,
        topic,
        commands: cmd_rx,
        events: event_tx,
        dropped_events,
        gossip,
        advertisers,
        rates: HashMap::new(),
        bootstrap: config.bootstrap,
        lookups: HashMap::new(),
        relayed: HashMap::new(),
        traversal,
        relay_listeners,
        relays_to_retry: Vec::new(),
    };
    let task = tokio::spawn(event_loop.run(cancel));
    Ok(Network {
        client,
        events: event_rx,
        task,
    })
}

struct EventLoop {
    swarm: libp2p::Swarm<Behaviour>,
    topic: gossipsub::IdentTopic,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    dropped_events: Arc<AtomicU64>,
    gossip: Arc<GossipStats>,
    advertisers: Advertisers,
    /// Each publisher's advert budget: (tokens, last refill).
    rates: HashMap<PeerId, (f64, std::time::Instant)>,
    bootstrap: Vec<Multiaddr>,
    /// Kademlia lookups of advertisers we have no address for.
    lookups: HashMap<kad::QueryId, PeerId>,
    /// Open connections per peer: (through a relay, direct).
    relayed: HashMap<PeerId, (u32, u32)>,
    traversal: Arc<Traversal>,
    /// Listeners through a relay, and relays whose listener closed (the
    /// reservation was refused or lost), retried on the redial tick.
    relay_listeners: HashMap<libp2p::core::transport::ListenerId, Multiaddr>,
    relays_to_retry: Vec<Multiaddr>,
}

impl EventLoop {
    /// An advert came (through gossip) from a peer we are not connected to
    /// and cannot dial: ask the DHT where it is (e.g. its relay circuit).
    fn locate(&mut self, peer: PeerId) {
        if self.swarm.is_connected(&peer)
            || self.lookups.values().any(|p| *p == peer)
            || self.lookups.len() >= MAX_LOOKUPS
        {
            return;
        }
        let id = self.swarm.behaviour_mut().kad.get_closest_peers(peer);
        self.lookups.insert(id, peer);
    }

    async fn run(mut self, cancel: CancellationToken) {
        let mut redial = tokio::time::interval(REDIAL_INTERVAL);
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.handle_command(cmd),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.handle_swarm_event(event),
                _ = redial.tick() => {
                    for relay in std::mem::take(&mut self.relays_to_retry) {
                        match self.swarm.listen_on(relay.clone().with(Protocol::P2pCircuit)) {
                            Ok(id) => {
                                self.relay_listeners.insert(id, relay);
                            }
                            Err(e) => tracing::debug!(%relay, error = %e, "listen through relay"),
                        }
                    }
                    if self.swarm.connected_peers().next().is_none() {
                        for addr in &self.bootstrap {
                            if let Err(e) = self.swarm.dial(addr.clone()) {
                                tracing::debug!(%addr, error = %e, "re-dial bootstrap peer");
                            }
                        }
                    }
                }
            }
        }
        tracing::debug!(peer = %self.swarm.local_peer_id(), "network task stopped");
    }

    /// What to do with a gossiped message before anyone else sees it: an
    /// advert that does not decode or verify, or is signed by someone other
    /// than its publisher, is rejected (the peer that forwarded it loses
    /// score); one over its publisher's rate, expired or from the future is
    /// ignored (not forwarded, not passed on).
    fn check_advert(&mut self, message: &gossipsub::Message) -> gossipsub::MessageAcceptance {
        use gossipsub::MessageAcceptance::{Accept, Ignore, Reject};
        let Some(source) = message.source else {
            return Reject;
        };
        if message.topic != self.topic.hash() {
            return Ignore;
        }
        if !self.take_rate(source) {
            self.gossip.rate_limited.fetch_add(1, Ordering::Relaxed);
            return Ignore;
        }
        let advert = match sharenet_proto::SignedAdvert::from_bytes(&message.data) {
            Ok(a) => a.into_advert(),
            Err(_) => {
                self.gossip.rejected.fetch_add(1, Ordering::Relaxed);
                return Reject;
            }
        };
        if crate::peer_id_of(&advert.node).ok() != Some(source) {
            self.gossip.rejected.fetch_add(1, Ordering::Relaxed);
            return Reject;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        if !advert.is_live(now) || advert.issued_at_ms > now.saturating_add(MAX_ADVERT_SKEW_MS) {
            self.gossip.stale.fetch_add(1, Ordering::Relaxed);
            return Ignore;
        }
        if let Ok(mut serving) = self.advertisers.lock()
            && (serving.len() < MAX_RATE_ENTRIES || serving.contains(&source))
        {
            serving.insert(source);
        }
        Accept
    }

    /// Takes one advert from `source`'s budget (a token bucket); false when
    /// it is spent.
    fn take_rate(&mut self, source: PeerId) -> bool {
        let now = std::time::Instant::now();
        if self.rates.len() >= MAX_RATE_ENTRIES && !self.rates.contains_key(&source) {
            self.rates
                .retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(60));
            if self.rates.len() >= MAX_RATE_ENTRIES {
                return false;
            }
        }
        let (tokens, at) = self.rates.entry(source).or_insert((ADVERT_BURST, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * ADVERTS_PER_SEC).min(ADVERT_BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn emit(&self, event: Event) {
        if self.events.try_send(event).is_err() {
            self.dropped_events.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("network event channel full; event dropped");
        }
    }

    fn handle_command(&mut self, cmd: Command) {
        match cmd {
            Command::Publish { data, reply } => {
                let res = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(self.topic.clone(), data)
                    .map(|_| ())
                    .map_err(|e| P2pError::Publish(e.to_string()));
                let _ = reply.send(res);
            }
            Command::Dial { addr, reply } => {
                let res = self.swarm.dial(addr.clone()).map_err(|e| P2pError::Dial {
                    addr,
                    reason: e.to_string(),
                });
                let _ = reply.send(res);
            }
            Command::ConnectedPeers { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Relayed { peer, reply } => {
                let _ = reply.send(
                    self.relayed
                        .get(&peer)
                        .map(|(relayed, direct)| *relayed > 0 && *direct == 0),
                );
            }
        }
    }

    fn handle_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                let verdict = self.check_advert(&message);
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, verdict);
                // Strict validation guarantees a signed source.
                if let (gossipsub::MessageAcceptance::Accept, Some(source)) =
                    (verdict, message.source)
                {
                    self.locate(source);
                    self.emit(Event::Advert {
                        source,
                        data: message.data,
                    });
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed {
                peer_id,
                topic,
                ..
            })) if topic == self.topic.hash() => {
                self.emit(Event::AdvertSubscriber { peer: peer_id });
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => self.emit(Event::Rtt { peer, rtt }),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                tracing::debug!(peer = %peer_id, agent = %info.agent_version, "identified peer");
                // Peers that speak our DHT go into it with the addresses
                // they listen on (for a peer behind NAT: its relay circuit).
                if info.protocols.contains(&KAD_PROTOCOL) {
                    for addr in info.listen_addrs {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetClosestPeers(result),
                step,
                ..
            })) => {
                let Some(target) = self.lookups.get(&id).copied() else {
                    return;
                };
                let peers = match result {
                    Ok(ok) => ok.peers,
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                let found: Vec<Multiaddr> = peers
                    .into_iter()
                    .filter(|p| p.peer_id == target)
                    .flat_map(|p| p.addrs)
                    .collect();
                if !found.is_empty() {
                    tracing::debug!(peer = %target, addrs = ?found, "located advertiser through the DHT");
                    for addr in &found {
                        self.swarm.add_peer_address(target, addr.clone());
                    }
                    let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(target)
                        .addresses(found)
                        .build();
                    if let Err(e) = self.swarm.dial(opts) {
                        tracing::debug!(peer = %target, error = %e, "dial located advertiser");
                    }
                }
                if step.last {
                    self.lookups.remove(&id);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(autonat::v1::Event::StatusChanged {
                new,
                ..
            })) => {
                let public = match new {
                    autonat::v1::NatStatus::Public(_) => Some(true),
                    autonat::v1::NatStatus::Private => Some(false),
                    autonat::v1::NatStatus::Unknown => None,
                };
                tracing::info!(?new, "reachability changed (AutoNAT)");
                self.emit(Event::Reachability { public });
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            })) => match result {
                Ok(_) => {
                    self.traversal.hole_punches.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(peer = %remote_peer_id, "hole punched: direct connection");
                    self.emit(Event::HolePunched {
                        peer: remote_peer_id,
                    });
                }
                Err(e) => {
                    tracing::debug!(peer = %remote_peer_id, error = %e, "hole punching failed; staying relayed");
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
                relay::client::Event::ReservationReqAccepted { relay_peer_id, .. },
            )) => {
                tracing::info!(relay = %relay_peer_id, "reachable through relay");
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayServer(
                relay::Event::ReservationReqAccepted { src_peer_id, .. },
            )) => {
                self.traversal
                    .reservations_accepted
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %src_peer_id, "relay reservation granted");
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayServer(
                relay::Event::ReservationReqDenied { src_peer_id, .. },
            )) => {
                self.traversal
                    .reservations_denied
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %src_peer_id, "relay reservation refused: the peer does not serve");
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::debug!(%address, "listening");
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason,
            } => {
                if let Some(relay) = self.relay_listeners.remove(&listener_id) {
                    tracing::debug!(%relay, ?reason, "relay listener closed; retrying");
                    self.relays_to_retry.push(relay);
                } else {
                    tracing::warn!(?addresses, ?reason, "listener closed");
                }
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(%error, "listener error");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                let through_relay = endpoint.is_relayed();
                let c = self.relayed.entry(peer_id).or_default();
                if through_relay {
                    self.traversal
                        .relayed_connections
                        .fetch_add(1, Ordering::Relaxed);
                    c.0 += 1;
                } else {
                    c.1 += 1;
                }
                tracing::debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), through_relay, "connected");
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                if let Some(c) = self.relayed.get_mut(&peer_id) {
                    if endpoint.is_relayed() {
                        c.0 = c.0.saturating_sub(1);
                    } else {
                        c.1 = c.1.saturating_sub(1);
                    }
                }
                if num_established == 0 {
                    self.relayed.remove(&peer_id);
                    self.emit(Event::Disconnected { peer: peer_id });
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, %error, "outgoing connection failed");
            }
            _ => {}
        }
    }
}

/// Peer scores for the advert topic: only invalid messages count (a
/// forwarder of a forged or malformed advert drops below the graylist
/// threshold at once); delivery-rate terms are off because honest nodes
/// advertise rarely, and IP colocation is off because an operator may run
/// many nodes (or a whole devnet) on one address.
fn score_params() -> gossipsub::PeerScoreParams {
    let topic = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.0,
        first_message_deliveries_weight: 0.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -100.0,
        invalid_message_deliveries_decay: 0.5,
        ..gossipsub::TopicScoreParams::default()
    };
    let mut params = gossipsub::PeerScoreParams {
        ip_colocation_factor_weight: 0.0,
        ..gossipsub::PeerScoreParams::default()
    };
    params
        .topics
        .insert(gossipsub::IdentTopic::new(ADVERT_TOPIC).hash(), topic);
    params
}
