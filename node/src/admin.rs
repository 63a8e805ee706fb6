//! The node's local API on loopback (`admin_listen`): `/health`,
//! `/ready`, `/status` (JSON: models, load, peers, receipts and earnings
//! this period) and `/metrics` (Prometheus text: load per model, jobs,
//! tokens and earnings since start), `/receipts` and `/earnings` (what
//! the CLI's `receipts` and `earnings` print, for while the daemon holds
//! the store) and `POST /reload` (`sharenet-node reload`: what SIGHUP
//! does). `sharenet-node status` reads `/status`. Loopback only: it
//! has no authentication.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};
use sharenet_ledger::StoredReceipt;
use sharenet_p2p::Client;
use tokio_util::sync::CancellationToken;

use crate::metrics::ModelLoad;
use crate::now_ms;
use crate::reconcile::{Earnings, ReceiptList, ReceiptRow, period_rule};
use crate::state::{Backend, NodeCtx, ServedModel};

#[derive(Clone)]
struct Admin {
    ctx: Arc<NodeCtx>,
    client: Client,
}

/// Binds `addr` now (so a taken port is an error at start) and serves
/// until `cancel`.
pub(crate) async fn serve(
    ctx: Arc<NodeCtx>,
    client: Client,
    addr: SocketAddr,
    cancel: CancellationToken,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind admin_listen {addr}"))?;
    tracing::info!(%addr, "local API listening");
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/receipts", get(receipts))
        .route("/earnings", get(earnings))
        .route("/reload", axum::routing::post(reload))
        .with_state(Admin { ctx, client });
    Ok(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "local API stopped");
        }
    })
}

/// 200 while the node takes jobs; 503 with the reason while draining.
async fn ready(State(a): State<Admin>) -> impl IntoResponse {
    if a.ctx.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining: no new jobs");
    }
    if a.ctx.coordinators.is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no coordinators configured: every job is refused",
        );
    }
    (StatusCode::OK, "ready")
}

fn model_status(m: &ServedModel) -> Value {
    let (price_in, price_out) = m.advertised_prices();
    let load = match &m.backend {
        Backend::Text(s) => {
            let l = s.load();
            json!({"running": l.running, "waiting": l.waiting, "kv_used_bytes": l.kv_used_bytes,
                   "kv_budget_bytes": l.kv_budget_bytes, "tokens_per_sec": l.tokens_per_sec})
        }
        _ => json!({"running": m.running.load(std::sync::atomic::Ordering::Relaxed),
                    "waiting": m.waiting.load(std::sync::atomic::Ordering::Relaxed)}),
    };
    json!({
        "id": m.config.id,
        "canonical": m.canonical,
        "kind": m.kind,
        "price_in": price_in,
        "price_out": price_out,
        "context_length": m.context_length,
        "quantization": m.quantization,
        "license": m.license,
        "capabilities": m.capabilities,
        "slots": m.config.max_concurrency,
        "max_queue": m.config.max_queue,
        "load": load,
    })
}

async fn status(State(a): State<Admin>) -> impl IntoResponse {
    let peers = a.client.connected_peers().await.map(|p| p.len()).ok();
    let store = a.ctx.store.clone();
    let receipts = tokio::task::spawn_blocking(move || store.list(usize::MAX))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let period = sharenet_market::PeriodRule::CalendarMonth;
    let this_period = period.period_of(now_ms()).ok().map(|p| p.label());
    let earnings = crate::reconcile::earnings(&receipts, &period)
        .into_iter()
        .find(|e| Some(&e.period) == this_period.as_ref());
    let countersigned = receipts
        .iter()
        .filter(|r| matches!(r, StoredReceipt::Countersigned(_)))
        .count();
    axum::Json(json!({
        "peer_id": a.client.peer_id().to_string(),
        "draining": a.ctx.draining.load(std::sync::atomic::Ordering::SeqCst),
        "jobs_open": a.ctx.serving.load(std::sync::atomic::Ordering::SeqCst),
        "connected_peers": peers,
        "coordinators": a.ctx.coordinators.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "region": a.ctx.region,
        "keeps_prompts": a.ctx.keeps_prompts,
        "gpus": a.ctx.gpus,
        "models": a.ctx.models().iter().map(|m| model_status(m)).collect::<Vec<_>>(),
        "receipts": {"stored": receipts.len(), "countersigned": countersigned},
        "this_period": earnings.map(|e| json!({
            "period": e.period, "jobs": e.jobs, "input_tokens": e.input_tokens,
            "output_tokens": e.output_tokens, "earned_nano_usd": e.earned, "pending": e.pending,
        })),
    }))
}

/// `POST /reload`: the daemon re-reads its config file (as on SIGHUP)
/// and logs what it applied.
async fn reload(State(a): State<Admin>) -> impl IntoResponse {
    a.ctx.reload_requested.notify_one();
    (
        StatusCode::ACCEPTED,
        "reload requested: the daemon re-reads its config and logs what it applied",
    )
}

/// Most rows `/receipts` lists.
const MAX_RECEIPT_ROWS: usize = 10_000;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiptsQuery {
    limit: Option<usize>,
}

/// `GET /receipts?limit=N`: what `sharenet-node receipts` prints, for when
/// the daemon holds the store.
async fn receipts(
    State(a): State<Admin>,
    Query(q): Query<ReceiptsQuery>,
) -> Result<axum::Json<ReceiptList>, (StatusCode, String)> {
    let limit = q.limit.unwrap_or(20).min(MAX_RECEIPT_ROWS);
    let store = a.ctx.store.clone();
    let (stored, rows) =
        tokio::task::spawn_blocking(move || store.list(limit).map(|l| (store.len(), l)))
            .await
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(axum::Json(ReceiptList {
        stored,
        data: rows.iter().map(ReceiptRow::from).collect(),
    }))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EarningsQuery {
    period_secs: Option<u64>,
}

/// `GET /earnings?period_secs=S`: what `sharenet-node earnings` prints.
async fn earnings(
    State(a): State<Admin>,
    Query(q): Query<EarningsQuery>,
) -> Result<axum::Json<Vec<Earnings>>, (StatusCode, String)> {
    let rule = period_rule(q.period_secs).map_err(|e| (StatusCode::BAD_REQUEST, e.to_owned()))?;
    let store = a.ctx.store.clone();
    let all = tokio::task::spawn_blocking(move || store.list(usize::MAX))
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(axum::Json(crate::reconcile::earnings(&all, &rule)))
}

/// `GET /metrics`: what the node served since it started and each
/// model's load now, as Prometheus text.
async fn metrics(State(a): State<Admin>) -> impl IntoResponse {
    let loads: Vec<ModelLoad> = a.ctx.models().iter().map(|m| m.load_now()).collect();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        a.ctx.metrics.render(&loads),
    )
}
