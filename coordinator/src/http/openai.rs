//! The OpenAI endpoints: chat and text completions (JSON or SSE),
//! embeddings, and the model list. Parsing is in `request.rs`, streaming
//! in `openai_stream.rs` (over `relay.rs`); the work is the core's.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sharenet_api::openai::{
    AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionRequest, CompletionRequest,
    Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage, EmbeddingVector, FunctionCall,
    Model, ModelCapabilities, ModelPricing, OutToolCall, TextChoice, TextCompletion,
};
use sharenet_api::{Cost, List};

use super::access::{self, access_of};
use super::error::ApiError;
use super::headers::{cost_header, end_customer, receipt_header};
use super::openai_parts::{chat_logprobs, completion_logprobs, totals};
use super::openai_stream;
use super::request::{Shape, chat_job, completion_job, embedding_job, parse_body};
use crate::core::accounts::Principal;
use crate::core::dispatch::{Finished, run_choices, start_choices, start_job};
use crate::core::error::Error;
use crate::core::job::{Job, JobKind};
use crate::core::{Core, now_ms};

/// One OpenAI request body in, its job, shape and end customer out: the
/// same steps for every endpoint (count, parse, who for, validate).
fn accept<R: serde::de::DeserializeOwned>(
    core: &Core,
    headers: &HeaderMap,
    body: &[u8],
    user: impl Fn(&R) -> Option<&str>,
    into_job: impl Fn(R) -> Result<(Job, Shape), Error>,
) -> Result<(Job, Shape, Option<String>), Error> {
    core.metrics.requests.inc();
    let request: R = parse_body(body)?;
    let customer = end_customer(headers, user(&request))?;
    let (job, shape) = into_job(request)?;
    Ok((job, shape, customer))
}

pub(super) async fn chat_completions(
    State(core): State<Arc<Core>>,
    Extension(principal): Extension<Principal>,
    started: Option<Extension<access::Started>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (job, shape, customer) = accept(
        &core,
        &headers,
        &body,
        |r: &ChatCompletionRequest| r.user.as_deref(),
        chat_job,
    )?;
    generate(core, job, shape, principal, customer, started.map(|e| e.0)).await
}

pub(super) async fn completions(
    State(core): State<Arc<Core>>,
    Extension(principal): Extension<Principal>,
    started: Option<Extension<access::Started>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (job, shape, customer) = accept(
        &core,
        &headers,
        &body,
        |r: &CompletionRequest| r.user.as_deref(),
        completion_job,
    )?;
    generate(core, job, shape, principal, customer, started.map(|e| e.0)).await
}

pub(super) async fn embeddings(
    State(core): State<Arc<Core>>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (job, shape, customer) = accept(
        &core,
        &headers,
        &body,
        |r: &EmbeddingRequest| r.user.as_deref(),
        embedding_job,
    )?;
    let model = job.requested_model().to_owned();
    let mut active = start_job(&core, Arc::new(job), &principal, customer.as_deref()).await?;
    let receipt_id = active.job_id().to_hex();
    let finished = active.run_to_end(&core).await?;
    let access = access_of(&active, &finished);
    let Some(vectors) = finished.embeddings else {
        return Err(Error::BadGateway("the node finished without embeddings".into()).into());
    };
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| Embedding {
            object: "embedding".into(),
            index: i as u32,
            embedding: if shape.base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                EmbeddingVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                EmbeddingVector::Float(v)
            },
        })
        .collect();
    let body = EmbeddingList {
        object: "list".into(),
        data,
        model,
        usage: EmbeddingUsage {
            prompt_tokens: finished.usage.input_tokens,
            total_tokens: finished.usage.input_tokens,
            cost: Cost::from(&finished.charge).usd(),
            cost_details: Cost::from(&finished.charge),
            counted_by: Some(finished.counted_by),
        },
        receipt_id: receipt_id.clone(),
    };
    let mut response = (
        receipt_header(&receipt_id),
        cost_header(&finished.charge),
        Json(body),
    )
        .into_response();
    response.extensions_mut().insert(access);
    Ok(response)
}

/// Chat and text completions, answered as JSON or SSE. With `n` > 1 each
/// choice is its own job (`core::dispatch::start_choices`); `usage` sums
/// them.
async fn generate(
    core: Arc<Core>,
    job: Job,
    shape: Shape,
    principal: Principal,
    customer: Option<String>,
    started: Option<access::Started>,
) -> Result<Response, ApiError> {
    let kind = job.kind;
    let want_logprobs = job.params.logprobs;
    let mut actives = start_choices(&core, job, shape.n, &principal, customer.as_deref()).await?;
    let Some(first) = actives.first() else {
        return Err(Error::Internal("no choices".into()).into());
    };
    let prefix = match kind {
        JobKind::Completion => "cmpl",
        _ => "chatcmpl",
    };
    let id = format!("{prefix}-{}", first.job_id());
    let receipt_id = first.job_id().to_hex();
    let node = first.peer().to_string();
    let model = first.model().to_owned();
    let created = now_ms() / 1000;
    let headers = receipt_header(&receipt_id);
    if shape.stream {
        // The jobs have produced their first events on nodes: from here on
        // failures are reported in-band as an OpenAI error event.
        let sse = openai_stream::stream(
            core,
            actives,
            openai_stream::Meta {
                kind,
                id,
                created,
                include_usage: shape.include_usage,
                want_logprobs,
                provider: node,
                model,
            },
            started.map(|s| access::Started {
                app: Some(principal.app.clone()),
                ..s
            }),
        );
        let mut response = (headers, sse).into_response();
        response.extensions_mut().insert(access::Deferred);
        return Ok(response);
    }
    let finished = run_choices(&core, &mut actives).await?;
    // Says who counted: the coordinator only if it counted every choice.
    let (usage, charge) = totals(&finished);
    let access = access::Access {
        input_tokens: usage.prompt_tokens,
        output_tokens: usage.completion_tokens,
        charge_nano_usd: charge.total,
        ..access_of(&actives[0], &finished[0])
    };
    let receipt_ids: Vec<String> = finished
        .iter()
        .map(|f| f.receipt.receipt().job_id.to_hex())
        .collect();
    let body = match kind {
        JobKind::Completion => Json(TextCompletion {
            id,
            object: "text_completion".into(),
            created,
            model,
            system_fingerprint: node.clone(),
            provider: node,
            choices: finished
                .into_iter()
                .enumerate()
                .map(|(i, f)| TextChoice {
                    index: i as u32,
                    logprobs: want_logprobs.then(|| completion_logprobs(&f.logprobs, 0)),
                    finish_reason: Some(f.finish_reason.as_str().to_owned()),
                    text: f.text,
                })
                .collect(),
            usage,
            receipt_id,
            receipt_ids,
        })
        .into_response(),
        _ => Json(ChatCompletion {
            id,
            object: "chat.completion".into(),
            created,
            model,
            system_fingerprint: node.clone(),
            provider: node,
            choices: finished
                .into_iter()
                .enumerate()
                .map(|(i, f)| chat_choice(i as u32, *f, want_logprobs))
                .collect(),
            usage,
            receipt_id,
            receipt_ids,
        })
        .into_response(),
    };
    let mut response = (headers, cost_header(&charge), body).into_response();
    response.extensions_mut().insert(access);
    Ok(response)
}

/// One chat choice from a finished job.
fn chat_choice(index: u32, f: Finished, want_logprobs: bool) -> ChatChoice {
    ChatChoice {
        index,
        logprobs: want_logprobs.then(|| chat_logprobs(&f.logprobs)),
        finish_reason: f.finish_reason.as_str().to_owned(),
        message: AssistantMessage {
            role: "assistant".into(),
            // OpenAI: null content when the reply is only calls.
            content: (f.tool_calls.is_empty() || !f.text.is_empty()).then_some(f.text),
            tool_calls: f
                .tool_calls
                .into_iter()
                .map(|c| OutToolCall {
                    id: c.id,
                    kind: "function".into(),
                    function: FunctionCall {
                        name: c.name,
                        arguments: c.arguments,
                    },
                })
                .collect(),
        },
    }
}

/// `GET /v1/models`: every model on the network, with its node count,
/// price range, context window, capabilities and quantizations.
pub(super) async fn list_models(State(core): State<Arc<Core>>) -> Json<List<Model>> {
    let data = core
        .registry
        .models(now_ms())
        .into_iter()
        .map(model_entry)
        .collect();
    Json(List::new(data))
}

/// `GET /v1/models/{id}`: one model, or a 404.
pub(super) async fn get_model(
    State(core): State<Arc<Core>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<Model>, ApiError> {
    core.registry
        .models(now_ms())
        .into_iter()
        .find(|m| m.id == id)
        .map(|m| Json(model_entry(m)))
        .ok_or_else(|| Error::ModelNotFound(id).into())
}

fn model_entry(m: crate::core::registry::ModelSummary) -> Model {
    Model {
        id: m.id,
        object: "model".into(),
        created: 0,
        owned_by: "sharenet".into(),
        kind: match m.kind {
            sharenet_proto::ModelKind::Text => "text",
            sharenet_proto::ModelKind::Embedding => "embedding",
        }
        .into(),
        nodes: m.nodes,
        context_length: m.context_length,
        pricing: ModelPricing {
            prompt_nano_usd_per_token: m.price_in.0,
            completion_nano_usd_per_token: m.price_out.0,
        },
        max_pricing: ModelPricing {
            prompt_nano_usd_per_token: m.price_in.1,
            completion_nano_usd_per_token: m.price_out.1,
        },
        capabilities: ModelCapabilities {
            tools: m.capabilities.tools,
            structured_outputs: m.capabilities.structured_outputs,
        },
        quantizations: m.quantizations,
        licenses: m.licenses,
    }
}
