//! A builder's own books: receipts, inclusion proofs, statement lines and
//! usage. A key sees only its own app's data (another app's receipt is
//! "not found"). Every read here is bounded by its page and rate limited
//! per key ([`limit_reads`]).

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::{Extension, Json};
use serde::Serialize;
use sharenet_api::receipts::{InclusionProofObject, ReceiptFilter, ReceiptObject};
use sharenet_api::statements::{BuilderStatement, UsageLine, UsageReport};
use sharenet_api::{Cost, List};
use sharenet_ledger::LedgerEntry;
use sharenet_proto::JobId;

use super::error::ApiError;
use crate::core::Core;
use crate::core::accounts::Principal;
use crate::core::error::Error;

/// The per-key limit on a builder's reads (`core::read_limit`): over it,
/// 429 with `Retry-After`. Runs after the key check, which names the key.
pub(super) async fn limit_reads(
    State(core): State<Arc<Core>>,
    Extension(principal): Extension<Principal>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    core.reads.check(&principal.key_id)?;
    Ok(next.run(request).await)
}

/// A page of a list, as OpenAI pages its lists: `{"object": "list",
/// "data", "has_more", "last_id"}`; pass `last_id` as `after` for the next
/// page. (Clients that read only `object` and `data` read it as before.)
#[derive(Serialize)]
pub(super) struct Page<T> {
    #[serde(flatten)]
    list: List<T>,
    has_more: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_id: Option<String>,
}

/// The query of `GET /v1/receipts`: [`ReceiptFilter`] and the cursor.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReceiptsQuery {
    end_customer: Option<String>,
    since_ms: Option<u64>,
    until_ms: Option<u64>,
    /// At most this many (default 100, at most 1000).
    limit: Option<usize>,
    /// The id of the last receipt of the previous page.
    after: Option<String>,
}

/// `?after=&limit=` of `GET /v1/statements`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StatementsQuery {
    /// The label of the last statement of the previous page.
    after: Option<String>,
    /// At most this many (default and most: 100).
    limit: Option<usize>,
}

/// A ledger entry as builders read it.
pub(super) fn receipt_object(e: &LedgerEntry) -> ReceiptObject {
    let c = &e.receipt;
    ReceiptObject {
        id: c.receipt().job_id.to_hex(),
        object: "receipt".into(),
        receipt: c.receipt().clone(),
        end_customer: e.end_customer.clone(),
        key_id: e.key_id.clone(),
        cost: Cost::from(&e.charge),
        recorded_at_ms: e.recorded_at_ms,
        counted_by: e.counted_by,
        node_signature: hex::encode(c.signed().node_signature()),
        coordinator_signature: hex::encode(c.coordinator_signature()),
        countersigned_bytes: hex::encode(c.to_bytes()),
    }
}

fn job_id(id: &str) -> Result<JobId, Error> {
    id.parse()
        .map_err(|e: sharenet_proto::ProtoError| Error::bad_request(e.to_string(), Some("id")))
}

/// `?id=`: the response's own id (`chatcmpl-…`, `cmpl-…`, `msg_…`) or the
/// receipt id.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GenerationQuery {
    id: String,
}

/// `GET /v1/generation?id=` (also `/api/v1/generation`, OpenRouter's
/// path): the facts of one of the caller's generations, in `{"data": …}`.
pub(super) async fn generation(
    State(core): State<Arc<Core>>,
    Extension(principal): Extension<Principal>,
    Query(q): Query<GenerationQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let bare = ["chatcmpl-", "cmpl-", "msg_", "gen-"]
        .iter()
        .find_map(|p| q.id.strip_prefix(p))
        .unwrap_or(&q.id);
    let id = job_id(bare)?;
    let books = core.accounts.books().clone();
    let mut found = tokio::task::spawn_blocking(move || books.generation(&id))
        .await
        .map_err(|e| Error::Internal(format!("generation lookup: {e}")))?
        .map_err(|e| Error::Internal(format!("generation lookup: {e}")))?;
    // Replicas: another one may have served it.
    if let (None, Some(pg)) = (&found, core.accounts.shared()) {
        found = pg
            .generation(&id)
            .await
            .map_err(|e| Error::Internal(format!("generation lookup: {e}")))?;
    }
    match found {
        // Another app's generation is "not found", as its receipts are.
        Some(g) if g.app_id == principal.app => {
            Ok(Json(serde_json::json!({ "data": generation_object(g) })))
        }
        _ => Err(Error::NotFound(format!("no generation {:?} for this app", q.id)).into()),
    }
}

/// The stored facts as the API's `Generation` (the same fields: the
/// ledger keeps its own type, knowing no HTTP type).
fn generation_object(g: sharenet_ledger::GenerationFacts) -> sharenet_api::openai::Generation {
    let sharenet_ledger::GenerationFacts {
        id,
        model,
        provider_name,
        app_id,
        created_at_ms,
        tokens_prompt,
        tokens_completion,
        total_cost,
        cost_details,
        latency,
        time_to_first_token,
        generation_time,
        finish_reason,
        cancelled,
        counted_by,
    } = g;
    let sharenet_ledger::CostFacts {
        charge_nano_usd,
        provider_nano_usd,
        network_fee_nano_usd,
        margin_nano_usd,
        unit,
    } = cost_details;
    sharenet_api::openai::Generation {
        id,
        model,
        provider_name,
        app_id,
        created_at_ms,
        tokens_prompt,
        tokens_completion,
        total_cost,
        cost_details: sharenet_api::Cost {
            charge_nano_usd,
            provider_nano_usd,
            network_fee_nano_usd,
            margin_nano_usd,
            unit,
        },
        latency,
        time_to_first_token,
        generation_time,
        finish_reason,
        cancelled,
        counted_by,
    }
}

pub(super) async fn get_receipt(
    State(core): State<Arc<Core>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<ReceiptObject>, ApiError> {
    let entry = core.receipt_of(&principal.app, job_id(&id)?).await?;
    Ok(Json(receipt_object(&entry)))
}

/// The caller's app's receipts, oldest first, filtered; a page of at
/// most `limit` (`has_more` when it is full: pass `last_id` as `after`
/// for the next page).
pub(super) async fn list_receipts(
    State(core): State<Arc<Core>>,
    Extension(principal): Extension<Principal>,
    Query(q): Query<ReceiptsQuery>,
) -> Result<Json<Page<ReceiptObject>>, ApiError> {
    let limit = q
        .limit
        .unwrap_or(100)
        .clamp(1, crate::core::queries::MAX_RECEIPTS_PER_PAGE);
    let after = q
        .after
        .as_deref()
        .map(|a| {
            a.parse::<JobId>()
                .map_err(|e| Error::bad_request(e.to_string(), Some("after")))
        })
        .transpose()?;
    let f = ReceiptFilter {
        end_customer: q.end_customer,
        since_ms: q.since_ms,
        until_ms: q.until_ms,
        limit: q.limit,
    };
    let entries = core.receipts_of(&principal.app, f, after).await?;
    let data: Vec<ReceiptObject> = entries.iter().map(receipt_object).collect();
    Ok(Json(Page {
        has_more: data.len() == limit,
        last_id: data.last().map(|r| r.id.clone()),
        list: List::new(data),
    }))
}

/// The inclusion proof of one of the caller's receipts in the statement
/// that settled it (404 while it is unsettled).
pub(super) async fn receipt_proof(
    State(core): State<Arc<Core>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<InclusionProofObject>, ApiError> {
    Ok(Json(core.proof_of(&principal.app, job_id(&id)?).await?))
}

/// Settled statements, with the caller's app's line in each, oldest
/// first, a page at a time (`?after=<label>&limit=`).
pub(super) async fn statements(
    State(core): State<Arc<Core>>,
    Extension(principal): Extension<Principal>,
    Query(q): Query<StatementsQuery>,
) -> Result<Json<Page<BuilderStatement>>, ApiError> {
    let page = core
        .statements_for(&principal.app, q.after, q.limit)
        .await?;
    Ok(Json(Page {
        has_more: page.has_more,
        last_id: page.data.last().map(|s| s.label.clone()),
        list: List::new(page.data),
    }))
}

/// The caller's app's usage per end customer and month, and its balance.
pub(super) async fn usage(
    State(core): State<Arc<Core>>,
    Extension(principal): Extension<Principal>,
) -> Json<UsageReport> {
    let data = core
        .accounts
        .usage(&principal.app)
        .into_iter()
        .map(|(customer, month_start_ms, u)| UsageLine {
            end_customer: (!customer.is_empty()).then_some(customer),
            period: sharenet_market::PeriodRule::CalendarMonth
                .period_of(month_start_ms)
                .map(|p| p.label())
                .unwrap_or_default(),
            requests: u.requests,
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            charged_nano_usd: u.charged,
            provider_nano_usd: u.provider_cost,
            network_fee_nano_usd: u.network_fee,
            margin_nano_usd: u.margin,
        })
        .collect();
    Json(UsageReport {
        object: "usage".into(),
        balance_nano_usd: core.accounts.balance(&principal.app).max(0).to_string(),
        app: principal.app,
        data,
    })
}
