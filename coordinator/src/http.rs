//! The builder-facing HTTP API (axum).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use sharenet_ledger::LedgerEntry;
use sharenet_market::Charge;
use sharenet_proto::JobId;
use tokio_stream::wrappers::ReceiverStream;

use crate::dispatch::{Finished, Step, start_job};
use crate::error::ApiError;
use base64::Engine as _;
use sharenet_proto::{TokenLogprob, sha256};

use crate::accounts::Principal;
use crate::openai::{
    ChatCompletionRequest, Chunk, Completed, CompletionRequest, EmbeddingRequest, Job, JobKind,
    chunk_json, completion_json, usage_json,
};
use crate::{Shared, now_ms};

/// Header naming the builder's end customer (when the body has no `user`).
pub const END_CUSTOMER_HEADER: &str = "x-sharenet-end-customer";
/// Header carrying the receipt id (= job id) on completion responses.
pub const RECEIPT_HEADER: &str = "x-sharenet-receipt-id";
/// SSE events buffered per streaming response.
const SSE_BUFFER: usize = 64;

/// The HTTP routes over `state`; tests can drive it without a socket.
pub fn app(state: Arc<Shared>) -> Router {
    let authed = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(list_models))
        .route("/v1/receipts/{id}", get(get_receipt))
        .route("/v1/receipts", get(list_receipts))
        .route("/v1/receipts/{id}/proof", get(receipt_proof))
        .route("/v1/statements", get(builder_statements))
        .route("/v1/usage", get(usage))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    let operator = crate::operator::routes()
        .route_layer(middleware::from_fn_with_state(state.clone(), operator_auth));
    Router::new()
        .merge(authed)
        .merge(operator)
        .route("/health", get(health))
        .route("/statements/{label}", get(statement_bundle))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .with_state(state)
}

async fn authenticate(
    State(state): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let key = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(key) = key else {
        return Err(ApiError::Unauthorized(
            "missing API key: send `Authorization: Bearer <key>`".into(),
        ));
    };
    let principal = state.accounts.authenticate(key)?;
    let mut request = request;
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

/// `/operator/*`: the operator key only.
async fn operator_auth(
    State(state): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(expected) = state.operator_key.as_deref() else {
        return Err(ApiError::NotFound(
            "the operator API is off (no operator_key configured)".into(),
        ));
    };
    let key = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match key {
        Some(k) if sha256(k.as_bytes()) == sha256(expected.as_bytes()) => {
            Ok(next.run(request).await)
        }
        _ => Err(ApiError::Forbidden("the operator key is required".into())),
    }
}

/// The end customer a request is for: the OpenAI `user` field, else the
/// `x-sharenet-end-customer` header.
fn end_customer(headers: &HeaderMap, user: Option<&str>) -> Result<Option<String>, ApiError> {
    let from_header = headers
        .get(END_CUSTOMER_HEADER)
        .map(|v| v.to_str().map(str::to_string))
        .transpose()
        .map_err(|_| ApiError::bad_request("x-sharenet-end-customer must be ASCII", None))?;
    let customer = user.map(str::to_string).or(from_header);
    if customer
        .as_ref()
        .is_some_and(|c| c.is_empty() || c.len() > 256)
    {
        return Err(ApiError::bad_request(
            "the end customer id must be 1 to 256 bytes",
            Some("user"),
        ));
    }
    Ok(customer)
}

async fn chat_completions(
    State(state): State<Arc<Shared>>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    state.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let request = ChatCompletionRequest::parse(&body)?;
    let customer = end_customer(&headers, request.user.as_deref())?;
    let job = request.into_job()?;
    generate(state, job, principal, customer).await
}

async fn completions(
    State(state): State<Arc<Shared>>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    state.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let request = CompletionRequest::parse(&body)?;
    let customer = end_customer(&headers, request.user.as_deref())?;
    let job = request.into_job()?;
    generate(state, job, principal, customer).await
}

async fn embeddings(
    State(state): State<Arc<Shared>>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    state.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let request = EmbeddingRequest::parse(&body)?;
    let customer = end_customer(&headers, request.user.as_deref())?;
    let job = request.into_job()?;
    let mut active = start_job(&state, &job, &principal, customer.as_deref()).await?;
    let receipt_id = active.job_id.to_hex();
    let finished = loop {
        if let Step::Done(f) = active.next(&state).await? {
            break f;
        }
    };
    let Some(vectors) = finished.embeddings else {
        return Err(ApiError::BadGateway(
            "the node finished without embeddings".into(),
        ));
    };
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if job.base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let usage = &finished.usage;
    let body = json!({
        "object": "list",
        "data": data,
        "model": job.model,
        "usage": {
            "prompt_tokens": usage.input_tokens,
            "total_tokens": usage.input_tokens,
            "cost": cost_json(&finished.charge),
        },
        "receipt_id": receipt_id,
    });
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&receipt_id) {
        headers.insert(RECEIPT_HEADER, v);
    }
    Ok((headers, Json(body)).into_response())
}

/// Chat and text completions: one job on a node, answered as JSON or SSE.
async fn generate(
    state: Arc<Shared>,
    job: Job,
    principal: Principal,
    customer: Option<String>,
) -> Result<Response, ApiError> {
    let mut active = start_job(&state, &job, &principal, customer.as_deref()).await?;
    let prefix = match job.kind {
        JobKind::Completion => "cmpl",
        _ => "chatcmpl",
    };
    let id = format!("{prefix}-{}", active.job_id);
    let receipt_id = active.job_id.to_hex();
    let created = now_ms() / 1000;
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&receipt_id) {
        headers.insert(RECEIPT_HEADER, v);
    }
    let want_logprobs = job.params.logprobs;

    if !job.stream {
        let finished = loop {
            if let Step::Done(f) = active.next(&state).await? {
                break f;
            }
        };
        crate::spotcheck::maybe_check(&state, &job, active.node(), &active.model);
        let body = completion_json(&Completed {
            kind: job.kind,
            id: &id,
            created,
            model: &active.model,
            text: &finished.text,
            logprobs: want_logprobs.then_some(finished.logprobs.as_slice()),
            finish_reason: finished.finish_reason,
            usage: &finished.usage,
            charge: &finished.charge,
            receipt_id: &receipt_id,
            node: &active.peer.to_string(),
        });
        return Ok((headers, Json(body)).into_response());
    }

    // Streaming: the job has produced its first event on a node, so from
    // here on failures are reported in-band as an OpenAI error event.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(SSE_BUFFER);
    let model = active.model.clone();
    let include_usage = job.include_usage;
    let kind = job.kind;
    tokio::spawn(async move {
        let send = |v: Value| {
            let tx = tx.clone();
            async move {
                tx.send(Ok(Event::default().data(v.to_string())))
                    .await
                    .is_ok()
            }
        };
        let chunk =
            |text: Option<&str>, logprobs: Option<&[TokenLogprob]>, offset: usize, finish| {
                chunk_json(&Chunk {
                    kind,
                    id: &id,
                    created,
                    model: &model,
                    text,
                    logprobs,
                    text_offset: offset,
                    finish_reason: finish,
                })
            };
        if kind == JobKind::Chat && !send(chunk(None, None, 0, None)).await {
            return;
        }
        let mut offset = 0usize;
        loop {
            match active.next(&state).await {
                Ok(Step::Delta(text, logprobs)) => {
                    if text.is_empty() && logprobs.is_empty() {
                        continue;
                    }
                    let lps = want_logprobs.then_some(logprobs.as_slice());
                    if !send(chunk(Some(&text), lps, offset, None)).await {
                        // The client went away: dropping the job closes the
                        // node's stream, which stops generation there. What
                        // was generated until then is charged (the node's
                        // last running receipt), as hosted APIs do.
                        let _ = active.book_partial(&state).await;
                        return;
                    }
                    offset += text.len();
                }
                Ok(Step::Done(finished)) => {
                    let Finished {
                        usage,
                        finish_reason,
                        receipt,
                        charge,
                        ..
                    } = *finished;
                    crate::spotcheck::maybe_check(&state, &job, active.node(), &active.model);
                    let _ = send(chunk(None, None, offset, Some(finish_reason))).await;
                    if include_usage {
                        let object = match kind {
                            JobKind::Completion => "text_completion",
                            _ => "chat.completion.chunk",
                        };
                        let _ = send(json!({
                            "id": id, "object": object, "created": created,
                            "model": model, "choices": [],
                            "usage": usage_json(&usage, &charge),
                            "receipt_id": receipt.receipt().job_id.to_hex(),
                        }))
                        .await;
                    }
                    let _ = tx.send(Ok(Event::default().data("[DONE]"))).await;
                    return;
                }
                Err(e) => {
                    // Never a silent switch to another node: the builder
                    // gets an error event, and pays for what it received
                    // (the node's last running receipt), nothing more.
                    tracing::warn!(job = %active.job_id, error = %e, "stream failed after the first token");
                    let mut body = e.body();
                    if let Some(partial) = active.book_partial(&state).await {
                        body["usage"] = usage_json(&partial.usage, &partial.charge);
                        body["receipt_id"] = json!(partial.receipt.receipt().job_id.to_hex());
                    }
                    let _ = send(body).await;
                    return;
                }
            }
        }
    });
    let sse = Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default());
    Ok((headers, sse).into_response())
}

async fn list_models(State(state): State<Arc<Shared>>) -> Json<Value> {
    let data: Vec<Value> = state
        .registry
        .models(now_ms())
        .into_iter()
        .map(|(id, nodes, price_in, price_out)| {
            json!({
                "id": id, "object": "model", "created": 0, "owned_by": "sharenet",
                "nodes": nodes,
                "pricing": {"prompt_nano_usd_per_token": price_in,
                            "completion_nano_usd_per_token": price_out},
            })
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}

fn receipt_json(e: &LedgerEntry) -> Value {
    let c = &e.receipt;
    json!({
        "id": c.receipt().job_id.to_hex(),
        "object": "receipt",
        "receipt": c.receipt(),
        "end_customer": e.end_customer,
        "key_id": e.key_id,
        "cost": cost_json(&e.charge),
        "recorded_at_ms": e.recorded_at_ms,
        "node_signature": hex::encode(c.signed().node_signature()),
        "coordinator_signature": hex::encode(c.coordinator_signature()),
        "countersigned_bytes": hex::encode(c.to_bytes()),
    })
}

/// A receipt of the caller's app (another app's is "not found").
async fn get_receipt(
    State(state): State<Arc<Shared>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job_id: JobId = id.parse().map_err(|e: sharenet_proto::ProtoError| {
        ApiError::bad_request(e.to_string(), Some("id"))
    })?;
    let books = state.accounts.books().clone();
    let found = tokio::task::spawn_blocking(move || books.entry(&job_id))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    match found {
        Some(e) if e.app == principal.app => Ok(Json(receipt_json(&e))),
        _ => Err(ApiError::NotFound(format!("no receipt with id {id}"))),
    }
}

/// The inclusion proof of one of the caller's receipts in the statement
/// that settled it (404 while it is unsettled).
async fn receipt_proof(
    State(state): State<Arc<Shared>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job_id: JobId = id.parse().map_err(|e: sharenet_proto::ProtoError| {
        ApiError::bad_request(e.to_string(), Some("id"))
    })?;
    let books = state.accounts.books().clone();
    tokio::task::spawn_blocking(move || -> Result<Json<Value>, ApiError> {
        let internal = |e: sharenet_ledger::StoreError| ApiError::Internal(e.to_string());
        match books.entry(&job_id).map_err(internal)? {
            Some(e) if e.app == principal.app => {}
            _ => return Err(ApiError::NotFound(format!("no receipt with id {id}"))),
        }
        let record = books
            .statements()
            .map_err(internal)?
            .into_iter()
            .find(|r| r.job_ids.contains(&job_id))
            .ok_or_else(|| ApiError::NotFound(format!("receipt {id} is not settled yet")))?;
        let mut ids = record.job_ids.clone();
        ids.sort_unstable();
        let mut leaves = Vec::with_capacity(ids.len());
        for j in &ids {
            let e = books
                .entry(j)
                .map_err(internal)?
                .ok_or_else(|| ApiError::Internal(format!("settled receipt {j} is missing")))?;
            leaves.push(sharenet_market::merkle::leaf_hash(&e.receipt.to_bytes()));
        }
        let index = ids
            .binary_search(&job_id)
            .map_err(|_| ApiError::Internal("receipt not in its statement's list".into()))?;
        let proof = sharenet_market::merkle::prove(&leaves, index as u64)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(Json(json!({
            "object": "inclusion_proof",
            "receipt_id": job_id.to_hex(),
            "statement": record.label,
            "proof": proof,
        })))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
}

/// Settled statements, with the caller's app's line in each.
async fn builder_statements(
    State(state): State<Arc<Shared>>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Value>, ApiError> {
    let records = state
        .accounts
        .books()
        .statements()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut data = Vec::new();
    for r in records {
        let s = sharenet_market::SignedStatement::from_bytes(&r.statement)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let st = s.statement();
        let line = st.builders.iter().find(|b| b.app == principal.app);
        data.push(json!({
            "object": "statement",
            "label": r.label,
            "period": {"start_ms": st.period.start_ms, "end_ms": st.period.end_ms},
            "merkle_root": hex::encode(st.merkle_root),
            "app": principal.app,
            "jobs": line.map_or(0, |l| l.jobs),
            "charged_nano_usd": line.map_or(0, |l| l.charged),
            "payout_nano_usd": line.map_or(0, |l| l.payout),
            "signed_bytes": hex::encode(s.to_bytes()),
        }));
    }
    Ok(Json(json!({"object": "list", "data": data})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiptFilter {
    end_customer: Option<String>,
    since_ms: Option<u64>,
    until_ms: Option<u64>,
    limit: Option<usize>,
}

/// The caller's app's receipts, newest last, filtered.
async fn list_receipts(
    State(state): State<Arc<Shared>>,
    Extension(principal): Extension<Principal>,
    Query(f): Query<ReceiptFilter>,
) -> Result<Json<Value>, ApiError> {
    let books = state.accounts.books().clone();
    let limit = f.limit.unwrap_or(100).min(1000);
    let data = tokio::task::spawn_blocking(move || -> Result<Vec<Value>, ApiError> {
        let mut out = Vec::new();
        for e in books.entries() {
            let e = e.map_err(|e| ApiError::Internal(e.to_string()))?;
            let keep = e.app == principal.app
                && f.end_customer
                    .as_ref()
                    .is_none_or(|c| e.end_customer.as_ref() == Some(c))
                && f.since_ms.is_none_or(|t| e.recorded_at_ms >= t)
                && f.until_ms.is_none_or(|t| e.recorded_at_ms < t);
            if keep {
                out.push(receipt_json(&e));
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(Json(json!({"object": "list", "data": data})))
}

/// The caller's app's usage per end customer and month, and its balance.
async fn usage(
    State(state): State<Arc<Shared>>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Value>, ApiError> {
    let lines: Vec<Value> = state
        .accounts
        .usage(&principal.app)?
        .into_iter()
        .map(|(customer, month_start_ms, u)| {
            json!({
                "end_customer": if customer.is_empty() { Value::Null } else { json!(customer) },
                "period": sharenet_market::PeriodRule::CalendarMonth
                    .period_of(month_start_ms)
                    .map(|p| p.label())
                    .unwrap_or_default(),
                "requests": u.requests,
                "input_tokens": u.input_tokens,
                "output_tokens": u.output_tokens,
                "charged_nano_usd": u.charged,
                "provider_nano_usd": u.provider_cost,
                "network_fee_nano_usd": u.network_fee,
                "margin_nano_usd": u.margin,
            })
        })
        .collect();
    Ok(Json(json!({
        "object": "usage",
        "app": principal.app,
        "balance_nano_usd": state.accounts.balance(&principal.app)?.max(0).to_string(),
        "data": lines,
    })))
}

/// A settled period for providers to reconcile against (public): the
/// signed statement and, per receipt in Merkle order, its job id, node,
/// amount and leaf hash, so anyone can recompute the root and each node
/// can check its own receipts (`sharenet-node reconcile`).
async fn statement_bundle(
    State(state): State<Arc<Shared>>,
    Path(label): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let books = state.accounts.books().clone();
    tokio::task::spawn_blocking(move || -> Result<Json<Value>, ApiError> {
        let internal = |e: sharenet_ledger::StoreError| ApiError::Internal(e.to_string());
        let record = books
            .statement(&label)
            .map_err(internal)?
            .ok_or_else(|| ApiError::NotFound(format!("period {label} is not settled")))?;
        let mut ids = record.job_ids.clone();
        ids.sort_unstable();
        let mut leaves = Vec::with_capacity(ids.len());
        for j in &ids {
            let e = books
                .entry(j)
                .map_err(internal)?
                .ok_or_else(|| ApiError::Internal(format!("settled receipt {j} is missing")))?;
            let r = e.receipt.receipt();
            leaves.push(json!({
                "job_id": j.to_hex(),
                "node": hex::encode(r.node),
                "amount": r.amount,
                "leaf": hex::encode(sharenet_market::merkle::leaf_hash(&e.receipt.to_bytes())),
            }));
        }
        Ok(Json(json!({
            "object": "statement_bundle",
            "label": record.label,
            "signed_statement": hex::encode(&record.statement),
            "leaves": leaves,
        })))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
}

async fn health(State(state): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({"status": "ok", "live_nodes": state.registry.live_nodes(now_ms())}))
}

async fn metrics(State(state): State<Arc<Shared>>) -> String {
    let m = &state.metrics;
    let a = &state.registry.stats;
    let mut out = String::new();
    let mut line = |name: &str, help: &str, value: u64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
        ));
    };
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    line(
        "sharenet_requests_total",
        "Chat, completion and embedding requests received.",
        get(&m.requests),
    );
    line(
        "sharenet_fallbacks_total",
        "Times a request moved to another node before its first token.",
        get(&m.fallbacks),
    );
    line(
        "sharenet_receipts_accepted_total",
        "Receipts verified, countersigned and stored.",
        get(&m.receipts_accepted),
    );
    line(
        "sharenet_receipts_rejected_total",
        "Receipts refused (bad signature, wrong signer, counts, replay).",
        get(&m.receipts_rejected),
    );
    line(
        "sharenet_spot_checks_total",
        "Spot checks completed (both runs finished).",
        get(&m.spot_checks),
    );
    line(
        "sharenet_spot_checks_failed_total",
        "Nodes found serving something other than their advertised weights.",
        get(&m.spot_checks_failed),
    );
    line(
        "sharenet_adverts_accepted_total",
        "Adverts verified and recorded.",
        get(&a.accepted),
    );
    line(
        "sharenet_adverts_invalid_total",
        "Adverts that did not decode or verify.",
        get(&a.invalid),
    );
    line(
        "sharenet_adverts_wrong_signer_total",
        "Adverts signed by a key other than the publisher's.",
        get(&a.wrong_signer),
    );
    line(
        "sharenet_adverts_expired_total",
        "Adverts that arrived expired.",
        get(&a.expired),
    );
    line(
        "sharenet_adverts_stale_total",
        "Adverts not newer than the last one seen.",
        get(&a.stale),
    );
    line(
        "sharenet_adverts_pruned_total",
        "Adverts dropped from routing when they expired.",
        get(&a.pruned),
    );
    line(
        "sharenet_p2p_events_dropped_total",
        "Network events dropped because the channel was full.",
        state.client.dropped_events(),
    );
    out
}

/// The `cost` object: what the builder was charged and its parts.
pub(crate) fn cost_json(c: &Charge) -> Value {
    json!({
        "charge_nano_usd": c.total,
        "provider_nano_usd": c.provider_cost,
        "network_fee_nano_usd": c.network_fee,
        "margin_nano_usd": c.margin,
        "unit": "nano-USD",
    })
}
