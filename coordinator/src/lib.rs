//! The sharenet coordinator as a library: the builder-facing
//! OpenAI-compatible API over a core that routes jobs to nodes, checks and
//! countersigns their receipts, and keeps the books.
//!
//! - [`core`]: every decision, no HTTP (jobs, dispatch, routing, accounts,
//!   spot checks, settlement, ledger queries, the transport seam);
//! - [`http`]: the axum layer over the core, and the one place core errors
//!   become HTTP statuses and OpenAI error bodies;
//! - [`config`]: the TOML file, validated.
//!
//! Entry points: [`start`] joins the libp2p network and serves;
//! [`spawn`] serves on a given listener and [`Network`] (tests pass a
//! scripted transport); [`run`] is [`spawn`] until shutdown. Every task
//! any of them starts is tracked and ends on shutdown.
//!
//! Architecture invariants: `http` depends on `core`, never the reverse;
//! only this crate speaks HTTP/JSON to builders; a receipt is countersigned
//! only after it matches what the coordinator streamed, and is durable
//! before the builder sees the response that names it.

pub mod config;
pub mod core;
pub mod http;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use sharenet_p2p::{Multiaddr, NetworkConfig, PeerId};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::config::CoordinatorConfig;
pub use crate::core::Core;
pub use crate::core::dispatch::Timeouts;
pub use crate::core::transport::{Network, Transport};
pub use crate::http::app;

/// A running coordinator.
pub struct CoordinatorHandle {
    pub http_addr: SocketAddr,
    /// The private metrics listener's address (`metrics_listen`), if any.
    pub metrics_addr: Option<SocketAddr>,
    pub peer_id: PeerId,
    /// libp2p addresses nodes can bootstrap from (with `/p2p/<id>`); empty
    /// when the transport is not libp2p.
    pub p2p_addrs: Vec<Multiaddr>,
    /// The libp2p client, when [`start`] joined the network.
    pub p2p: Option<sharenet_p2p::Client>,
    pub core: Arc<Core>,
    tasks: TaskTracker,
    /// Stops the HTTP server from taking new connections (a drain).
    stop_http: CancellationToken,
    /// Cancelled once the HTTP server has finished every response.
    http_done: CancellationToken,
}

impl CoordinatorHandle {
    /// `http://ADDR/v1`, what OpenAI clients take as their base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.http_addr)
    }

    /// Drains before a shutdown: the HTTP server takes no new connections
    /// and closes idle ones, and this returns once every response in
    /// progress (streams included, with their receipts booked) has
    /// finished, or after `timeout`. True when everything finished.
    pub async fn drain(&self, timeout: std::time::Duration) -> bool {
        self.stop_http.cancel();
        tokio::time::timeout(timeout, self.http_done.cancelled())
            .await
            .is_ok()
    }

    /// Waits for every task to finish (after the shutdown token is
    /// cancelled).
    pub async fn wait(self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Serves the API on `listener` over `network` until `shutdown` is
/// cancelled, then waits for every task it started.
pub async fn run(
    listener: TcpListener,
    network: Network,
    config: CoordinatorConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    spawn(listener, network, config, shutdown)
        .await?
        .wait()
        .await;
    Ok(())
}

/// Opens the books and starts serving the API on `listener` over
/// `network`: the HTTP server, the network watcher (adverts, RTTs, the
/// once-a-second tick) and, when spot checks are on, their sampler. All
/// run on one task tracker and stop when `shutdown` is cancelled.
pub async fn spawn(
    listener: TcpListener,
    network: Network,
    config: CoordinatorConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<CoordinatorHandle> {
    let http_addr = listener
        .local_addr()
        .context("read the HTTP listener's address")?;
    let tasks = TaskTracker::new();
    let (core, completed) =
        Core::open(&config, network.transport, tasks.clone(), shutdown.clone()).await?;
    tasks.spawn(core::watch_network(
        core.clone(),
        network.events,
        shutdown.clone(),
    ));
    if let Some(completed) = completed {
        tasks.spawn(core::spotcheck::run(
            core.clone(),
            completed,
            config.spot_check_rate,
            shutdown.clone(),
        ));
    }
    let metrics_addr = match config.metrics_listen {
        Some(addr) => Some(serve_private_metrics(addr, &core, &tasks, &shutdown).await?),
        None => None,
    };
    let router = app(core.clone());
    // The server stops on a drain or on shutdown, whichever comes first.
    let stop_http = shutdown.child_token();
    let stop = stop_http.clone();
    let http_done = CancellationToken::new();
    let done = http_done.clone();
    // No Nagle: a streamed token must leave at once, not wait for the
    // client's delayed ACK of the previous write (40 ms on Linux).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "set TCP_NODELAY");
        }
    });
    tasks.spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP server stopped");
        }
        done.cancel();
    });
    Ok(CoordinatorHandle {
        http_addr,
        metrics_addr,
        peer_id: config.identity.peer_id(),
        p2p_addrs: Vec::new(),
        p2p: None,
        core,
        tasks,
        stop_http,
        http_done,
    })
}

/// Binds `addr` and serves the private metrics page there (per-app series;
/// [`http::metrics_app`]) until shutdown. Returns the bound address.
async fn serve_private_metrics(
    addr: SocketAddr,
    core: &Arc<Core>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind the metrics listener on {addr} (metrics_listen)"))?;
    let bound = listener
        .local_addr()
        .context("read the metrics listener's address")?;
    if !bound.ip().is_loopback() {
        tracing::warn!(%bound, "the private metrics page (per-app series) listens beyond loopback: keep that port off the public network");
    }
    let router = http::metrics_app(core.clone());
    let stop = shutdown.clone();
    tasks.spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}

/// Joins the libp2p network with `config`'s addresses, binds the HTTP
/// listener and serves (see [`spawn`]) until `cancel` is cancelled.
pub async fn start(
    config: CoordinatorConfig,
    cancel: CancellationToken,
) -> anyhow::Result<CoordinatorHandle> {
    let network = sharenet_p2p::start(
        NetworkConfig {
            identity: config.identity.clone(),
            listen: config.p2p_listen.clone(),
            bootstrap: config.bootstrap.clone(),
            event_capacity: 4096,
            relay_server: config.relay_server,
            relays: Vec::new(),
            relay_max_circuit_bytes: sharenet_p2p::RELAY_MAX_CIRCUIT_BYTES,
        },
        cancel.clone(),
    )
    .await
    .context("start the libp2p network")?;
    let listener = TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("bind the HTTP listener on {}", config.http_listen))?;
    let client = network.client.clone();
    let mut handle = spawn(
        listener,
        Network {
            transport: Arc::new(client.clone()),
            events: network.events,
        },
        config,
        cancel,
    )
    .await?;
    let swarm = network.task;
    handle.tasks.spawn(async move {
        let _ = swarm.await;
    });
    handle.peer_id = client.peer_id();
    handle.p2p_addrs = client.listen_addrs().to_vec();
    handle.p2p = Some(client);
    tracing::info!(peer = %handle.peer_id, http_addr = %handle.http_addr,
        p2p_addrs = ?handle.p2p_addrs, "coordinator started");
    Ok(handle)
}
