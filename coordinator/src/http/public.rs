//! Endpoints without a key: health, Prometheus metrics, and the bundles of
//! settled periods providers reconcile against.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use sharenet_api::statements::StatementBundle;

use super::error::ApiError;
use crate::core::metrics::Snapshot;
use crate::core::{Core, now_ms};

/// Liveness: the process answers (200 whatever the network looks like),
/// with the coordinator's peer id (public: nodes bootstrap to
/// `…/p2p/<peer id>`, and containers read it here).
pub(super) async fn health(State(core): State<Arc<Core>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "live_nodes": core.registry.live_nodes(now_ms()),
        "peer_id": core.identity.peer_id().to_string(),
    }))
}

/// Readiness, for load balancers and orchestrators: 200 when the books
/// are open and at least one node is live, 503 otherwise (no request
/// could be served), and 503 once shutdown has begun (a draining
/// coordinator takes no new connections at all).
pub(super) async fn ready(State(core): State<Arc<Core>>) -> (StatusCode, Json<Value>) {
    let live = core.registry.live_nodes(now_ms());
    let (status, reason) = if core.shutdown().is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, Some("shutting down"))
    } else if live == 0 {
        (StatusCode::SERVICE_UNAVAILABLE, Some("no live nodes"))
    } else {
        (StatusCode::OK, None)
    };
    (
        status,
        Json(json!({
            "status": if status == StatusCode::OK { "ready" } else { "not_ready" },
            "reason": reason,
            "live_nodes": live,
        })),
    )
}

/// A settled period for providers to reconcile against.
pub(super) async fn statement_bundle(
    State(core): State<Arc<Core>>,
    Path(label): Path<String>,
) -> Result<Json<Arc<StatementBundle>>, ApiError> {
    Ok(Json(core.bundle(&label).await?))
}

/// `GET /metrics`: Prometheus text format (`core::metrics`), plus what is
/// read at scrape time: adverts by outcome, live nodes per model, open
/// breakers, nodes by trust band, jobs in flight.
pub(super) async fn metrics(State(core): State<Arc<Core>>) -> impl IntoResponse {
    let a = &core.registry.stats;
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let counters: [(&str, &str, u64); 11] = [
        (
            "sharenet_adverts_accepted_total",
            "Adverts verified and recorded.",
            get(&a.accepted),
        ),
        (
            "sharenet_adverts_invalid_total",
            "Adverts that did not decode or verify.",
            get(&a.invalid),
        ),
        (
            "sharenet_adverts_wrong_signer_total",
            "Adverts signed by a key other than the publisher's.",
            get(&a.wrong_signer),
        ),
        (
            "sharenet_adverts_expired_total",
            "Adverts that arrived expired.",
            get(&a.expired),
        ),
        (
            "sharenet_adverts_from_the_future_total",
            "Adverts issued too far in the future.",
            get(&a.from_the_future),
        ),
        (
            "sharenet_adverts_stale_total",
            "Adverts not newer than the last one seen.",
            get(&a.stale),
        ),
        (
            "sharenet_adverts_pruned_total",
            "Adverts dropped from routing when they expired.",
            get(&a.pruned),
        ),
        (
            "sharenet_adverts_over_price_ceiling_total",
            "Adverts with offers above the price ceiling (those offers are not routable).",
            get(&a.over_price_ceiling),
        ),
        (
            "sharenet_adverts_evicted_total",
            "Nodes without history evicted from a full registry for a node with history.",
            get(&a.evicted),
        ),
        (
            "sharenet_adverts_full_total",
            "Adverts refused because the registry was full.",
            get(&a.full),
        ),
        (
            "sharenet_p2p_events_dropped_total",
            "Network events dropped because the channel was full.",
            core.transport.dropped_events(),
        ),
    ];
    let snap = Snapshot::default();
    for (name, help, value) in counters {
        snap.counter(name, help, value);
    }
    let now = now_ms();
    let models = core.registry.models(now);
    let live: Vec<(&str, i64)> = models
        .iter()
        .map(|m| (m.id.as_str(), i64::try_from(m.nodes).unwrap_or(i64::MAX)))
        .collect();
    snap.gauge_vec(
        "sharenet_live_nodes",
        "Nodes with a live advert, by model (node id or canonical name).",
        "model",
        &live,
    );
    let (open, bands, in_flight) = core.routing.summary(now);
    snap.gauge(
        "sharenet_open_breakers",
        "Nodes whose circuit breaker is open.",
        open,
    );
    snap.gauge_vec(
        "sharenet_nodes_by_trust",
        "Live nodes by trust score band.",
        "band",
        &[("low", bands[0]), ("medium", bands[1]), ("high", bands[2])],
    );
    snap.gauge(
        "sharenet_jobs_in_flight",
        "This coordinator's jobs running on nodes.",
        in_flight,
    );
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        core.metrics.render(snap.families()),
    )
}
