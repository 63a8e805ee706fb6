//! The builder-facing HTTP layer (axum), thin over the core: it
//! authenticates, parses requests into core jobs, shapes answers as
//! OpenAI JSON or SSE, and maps every core error to a status and an OpenAI
//! error body in one place (`error.rs`).
//!
//! - `openai.rs`: chat, completions, embeddings, models; `request.rs`:
//!   request bodies → `core::job::Job`; `openai_parts.rs`: logprobs and
//!   usage as OpenAI shapes them; `openai_stream.rs`: OpenAI's chunks;
//! - `anthropic.rs`: Anthropic's Messages API over the same jobs;
//!   `anthropic_reply.rs`: its message and its event stream;
//! - `relay.rs`: the one streaming relay, generic over the wire format
//!   (OpenAI's chunks, Anthropic's events);
//! - `builder.rs`: a builder's receipts, proofs, statements and usage;
//! - `operator.rs`: `/operator/*` (apps, keys, top-ups, settlement);
//!   `catalog.rs`: its model catalog (`/operator/catalog`);
//! - `public.rs`: health, metrics, published statement bundles;
//! - `auth.rs`: API and operator keys; `headers.rs`: the headers the API
//!   adds; `access.rs`: the access log.
//!
//! Files here import each other one way only; this file only declares
//! them and puts the routes together.

mod access;
mod anthropic;
mod anthropic_reply;
mod auth;
mod builder;
mod catalog;
mod dashboard;
pub mod error;
mod headers;
mod openai;
mod openai_parts;
mod openai_stream;
mod operator;
mod public;
mod relay;
pub mod request;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};

use crate::core::Core;
use crate::core::error::Error;
use error::ApiError;

pub use headers::{END_CUSTOMER_HEADER, RECEIPT_HEADER};

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
        .route_layer(middleware::from_fn_with_state(
            core.clone(),
            auth::authenticate,
        ));
    let operator = operator::routes().route_layer(middleware::from_fn_with_state(
        core.clone(),
        auth::operator_auth,
    ));
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

#[cfg(test)]
mod tests;
