//! The swarm event loop and the [`Client`] handle that drives it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Stream, gossipsub, identify, noise, ping, tcp, yamux};
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
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    gossipsub: gossipsub::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    stream: libp2p_stream::Behaviour,
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
}

/// A cloneable handle to the swarm task.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    control: libp2p_stream::Control,
    peer_id: PeerId,
    listen_addrs: Arc<Vec<Multiaddr>>,
    dropped_events: Arc<AtomicU64>,
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

fn build_swarm(identity: &Identity) -> Result<libp2p::Swarm<Behaviour>, P2pError> {
    let keypair = identity.libp2p_keypair();
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| P2pError::Transport(e.to_string()))?
        .with_quic()
        .with_behaviour(|key| {
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
                .max_transmit_size(MAX_GOSSIP_BYTES)
                .build()
                .map_err(|e| P2pError::Gossipsub(e.to_string()))?;
            let gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossip_config,
            )
            .map_err(|e| P2pError::Gossipsub(e.to_string()))?;
            Ok(Behaviour {
                gossipsub,
                identify: identify::Behaviour::new(identify::Config::new(
                    "/sharenet/1.0.0".into(),
                    key.public(),
                )),
                ping: ping::Behaviour::new(
                    ping::Config::new().with_interval(Duration::from_secs(5)),
                ),
                stream: libp2p_stream::Behaviour::new(),
            })
        })
        .map_err(|e| P2pError::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    Ok(swarm)
}

/// Starts a peer: listens, waits for its addresses, dials the bootstrap
/// peers, and spawns the event loop (stopped by `cancel`).
pub async fn start(config: NetworkConfig, cancel: CancellationToken) -> Result<Network, P2pError> {
    let mut swarm = build_swarm(&config.identity)?;
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

    for addr in &config.bootstrap {
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, error = %e, "dial bootstrap peer");
        }
    }

    let control = swarm.behaviour().stream.new_control();
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_CAPACITY);
    let (event_tx, event_rx) = mpsc::channel(config.event_capacity.max(1));
    let dropped_events = Arc::new(AtomicU64::new(0));
    let client = Client {
        commands: cmd_tx,
        control,
        peer_id,
        listen_addrs: Arc::new(listen_addrs),
        dropped_events: dropped_events.clone(),
    };
    let event_loop = EventLoop {
        swarm,
        topic,
        commands: cmd_rx,
        events: event_tx,
        dropped_events,
        bootstrap: config.bootstrap,
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
    bootstrap: Vec<Multiaddr>,
}

impl EventLoop {
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
        }
    }

    fn handle_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                message,
                ..
            })) => {
                if message.topic != self.topic.hash() {
                    return;
                }
                // Strict validation guarantees a signed source; be defensive anyway.
                if let Some(source) = message.source {
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
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                tracing::debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connected");
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => self.emit(Event::Disconnected { peer: peer_id }),
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, %error, "outgoing connection failed");
            }
            _ => {}
        }
    }
}
