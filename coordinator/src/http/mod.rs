//! The builder-facing HTTP layer (axum), thin over the core: it
//! authenticates, parses requests into core jobs, shapes answers as
//! OpenAI JSON or SSE, and maps every core error to a status and an OpenAI
//! error body in one place (`error.rs`).
//!
//! - `openai.rs`: chat, completions, embeddings, models; `request.rs`:
//!   request bodies → `core::job::Job`; `sse.rs`: streaming;
//! - `anthropic.rs`: Anthropic's Messages API over the same jobs;
//! - `builder.rs`: a builder's receipts, proofs, statements and usage;
//! - `operator.rs`: `/operator/*` (apps, keys, top-ups, settlement);
//! - `public.rs`: health, metrics, published statement bundles.

mod access;
mod anthropic;
mod builder;
mod dashboard;
pub mod error;
mod openai;
mod operator;
mod public;
pub mod request;
mod sse;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use sharenet_proto::sha256;

use crate::core::Core;
use crate::core::error::Error;
use error::ApiError;

/// Header naming the builder's end customer (when the body has no `user`).
pub const END_CUSTOMER_HEADER: &str = "x-sharenet-end-customer";
/// Header carrying the receipt id (= job id) on completion responses.
pub const RECEIPT_HEADER: &str = "x-sharenet-receipt-id";
/// Largest request body accepted (axum's default, stated).
const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// The HTTP routes over `core` (what [`crate::spawn`] serves).
pub fn app(core: Arc<Core>) -> Router {
    let authed = Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/messages", post(anthropic::messages_endpoint))
        .route("/v1/models", get(openai::list_models))
        .route("/v1/models/{*id}", get(openai::get_model))
        .route("/v1/receipts/{id}", get(builder::get_receipt))
        .route("/v1/receipts", get(builder::list_receipts))
        .route("/v1/receipts/{id}/proof", get(builder::receipt_proof))
        .route("/v1/statements", get(builder::statements))
        .route("/v1/usage", get(builder::usage))
        .route("/v1/generation", get(builder::generation))
        .route("/api/v1/generation", get(builder::generation))
        .route("/v1/dashboard", get(dashboard::builder_view))
        .route_layer(middleware::from_fn_with_state(core.clone(), authenticate));
    let operator =
        operator::routes().route_layer(middleware::from_fn_with_state(core.clone(), operator_auth));
    Router::new()
        .merge(authed)
        .merge(operator)
        .route("/health", get(public::health))
        .route("/ready", get(public::ready))
        .route("/statements/{label}", get(public::statement_bundle))
        .route("/metrics", get(public::metrics))
        .route("/dashboard", get(dashboard::page))
        .route("/dashboard/", get(dashboard::page))
        .route("/dashboard/{file}", get(dashboard::asset))
        .fallback(|| async { ApiError(Error::NotFound("no such endpoint".into())) })
        .layer(middleware::map_response(error::json_rejections))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(core.clone(), access::log))
        .with_state(core)
}

/// The API key: `Authorization: Bearer <key>` (OpenAI's clients), else
/// `x-api-key: <key>` (Anthropic's).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

/// Builder endpoints: the API key names the principal.
async fn authenticate(
    State(core): State<Arc<Core>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(key) = bearer(request.headers()) else {
        return Err(Error::Unauthorized(
            "missing API key: send `Authorization: Bearer <key>` (or `x-api-key: <key>`)".into(),
        )
        .into());
    };
    let principal = core.accounts.authenticate(key)?;
    request.extensions_mut().insert(principal.clone());
    let mut response = next.run(request).await;
    // For the access log.
    response.extensions_mut().insert(principal);
    Ok(response)
}

/// `/operator/*`: the operator key only.
async fn operator_auth(
    State(core): State<Arc<Core>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(expected) = core.operator_key.as_deref() else {
        return Err(
            Error::NotFound("the operator API is off (no operator_key configured)".into()).into(),
        );
    };
    match bearer(request.headers()) {
        // Compared as hashes, so the comparison takes the same time
        // whatever prefix matches.
        Some(k) if sha256(k.as_bytes()) == sha256(expected.as_bytes()) => {
            Ok(next.run(request).await)
        }
        _ => Err(Error::Forbidden("the operator key is required".into()).into()),
    }
}

/// The end customer a request is for: the OpenAI `user` field, else the
/// `x-sharenet-end-customer` header.
fn end_customer(headers: &HeaderMap, user: Option<&str>) -> Result<Option<String>, Error> {
    let from_header = headers
        .get(END_CUSTOMER_HEADER)
        .map(|v| v.to_str().map(str::to_string))
        .transpose()
        .map_err(|_| Error::bad_request("x-sharenet-end-customer must be ASCII", None))?;
    let customer = user.map(str::to_string).or(from_header);
    if customer
        .as_ref()
        .is_some_and(|c| c.is_empty() || c.len() > 256)
    {
        return Err(Error::bad_request(
            "the end customer id must be 1 to 256 bytes",
            Some("user"),
        ));
    }
    Ok(customer)
}
