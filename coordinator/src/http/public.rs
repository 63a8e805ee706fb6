//! Endpoints without a key: health, Prometheus metrics, and the bundles of
//! settled periods providers reconcile against.
//!
//! Metrics come as two pages: the public `/metrics` on the API port,
//! aggregated (no app id, no app's requests, tokens or spend), and the
//! private page with its per-app series, served only on the metrics
//! listener (`metrics_listen`, loopback by default; see
//! [`super::metrics_app`]) and at `/operator/metrics` behind the operator
//! key.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use sharenet_api::statements::StatementBundle;

use super::error::ApiError;
use crate::core::metrics::Scrape;
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

/// What the metrics pages read at scrape time.
fn scrape(core: &Core) -> Scrape<'_> {
    Scrape {
        registry: &core.registry,
        routing: &core.routing,
        dropped_events: core.transport.dropped_events(),
        now_ms: now_ms(),
    }
}

/// A page in Prometheus's text format.
fn exposition(page: String) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        page,
    )
}

/// `GET /metrics` on the API port: Prometheus text format, the public
/// page `core::metrics` renders (what it counts, summed over apps, and
/// what it reads at scrape time). No app id is on it.
pub(super) async fn metrics(State(core): State<Arc<Core>>) -> impl IntoResponse {
    exposition(core.metrics.page(&scrape(&core)))
}

/// `GET /metrics` on the private metrics listener, and `GET
/// /operator/metrics`: the whole page, per-app series included.
pub(super) async fn private_metrics(State(core): State<Arc<Core>>) -> impl IntoResponse {
    exposition(core.metrics.private_page(&scrape(&core)))
}
