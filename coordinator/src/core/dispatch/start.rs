//! [`start_job`]: a job from its request to its first event on a node, in
//! the numbered steps the module docs of `dispatch` list.

use std::sync::Arc;

use sharenet_proto::{JobId, JobRequest, MAX_FRAME_BYTES, ProtoError, sha256};
use tracing::Instrument;

use crate::core::Core;
use crate::core::accounts::Principal;
use crate::core::error::Error;
use crate::core::job::{Job, JobKind, Notice};

use super::active::ActiveJob;
use super::attempt;
use super::book;
use super::count;
use super::plan;

/// Plans `job`, holds its worst case, and starts it on the first node
/// that answers (see the module docs).
pub async fn start_job(
    core: &Arc<Core>,
    job: Arc<Job>,
    principal: &Principal,
    end_customer: Option<&str>,
) -> Result<ActiveJob, Error> {
    let model = plan::resolve_model(core, &job)?;
    let job_id = JobId(rand::random());
    // The job's span; its context goes to the node, whose span joins the
    // same trace (when traces are exported at all).
    let span = tracing::info_span!(
        "job",
        "otel.kind" = "client",
        model = %model,
        job_id = %job_id,
        node = tracing::field::Empty,
    );
    let request = JobRequest {
        job_id,
        coordinator: core.identity.public_key(),
        model,
        input: job.input.clone(),
        params: job.params.clone(),
        tools: job.tools.clone(),
        response_format: job.response_format.clone(),
        traceparent: sharenet_daemon::trace::traceparent(&span),
    };
    let bytes = encode_request(&job, &request)?;
    let plan = plan::plan_candidates(core, &job, request.model.clone(), principal)?;
    // After routing (a request no node can serve is its 503 naming what is
    // missing), before the hold (priced on the count).
    let prompt = count_prompt(core, &job, &request)?;
    let hold = plan::admit(core, &job, &plan, principal, end_customer).await?;
    let (sensitive, pool, prefs) = (plan.sensitive, plan.pool, plan.prefs);
    let (offer, started) = attempt::first_answer(core, &job, &plan.model, plan.candidates, &bytes)
        .instrument(span.clone())
        .await?;
    span.record("node", tracing::field::display(&offer.peer));
    let terms = book::Terms {
        job_id: request.job_id,
        peer: offer.peer,
        node: offer.advert.node,
        model: plan.model,
        price_in: offer.offer.price_in,
        price_out: offer.offer.price_out,
        request_digest: sha256(&bytes),
        max_input_tokens: job.max_input_tokens(),
        input_tokens: job.input_tokens.get().copied(),
        prompt,
    };
    Ok(ActiveJob::new(
        started,
        terms,
        job,
        Notice {
            app: principal.app.clone(),
            private: sensitive || pool.contains(&offer.advert.node),
            prefs,
        },
        hold,
    ))
}

/// The coordinator's own count of the prompt, for a catalogued text
/// model: rendered and tokenized as the serving engine will, set on the
/// job (routing and the hold use it), and a prompt that does not fit the
/// model's context is the builder's 400 before any node is dialled.
/// Returns the model's renderer, to count the output with; `None` for an
/// embeddings job or a model the catalog cannot count (its usage is the
/// node's word, marked so).
fn count_prompt(
    core: &Core,
    job: &Job,
    request: &JobRequest,
) -> Result<Option<Arc<sharenet_prompt::PromptModel>>, Error> {
    if job.kind == JobKind::Embedding {
        return Ok(None);
    }
    let Some(prompt) = core.catalog.prompt_model(&request.model) else {
        return Ok(None);
    };
    let n = count::count_input(&prompt, request)?;
    let context = core
        .catalog
        .get(&request.model)
        .map_or(u32::MAX, |e| e.context_length);
    if n >= context {
        let param = if job.kind == JobKind::Chat {
            "messages"
        } else {
            "prompt"
        };
        return Err(Error::ContextLength {
            message: format!(
                "this model's context is {context} tokens, and the prompt alone is {n}; shorten `{param}`"
            ),
            param,
        });
    }
    let _ = job.input_tokens.set(n);
    Ok(Some(prompt))
}

/// The request's bytes, refused (400 naming the parameter) when a node's
/// own check of a request (`JobRequest::validate`: ranges, sizes, the
/// schema limits of its constraint compiler) would refuse it, or when they
/// do not fit one frame: every node would fail it, and since a refusal
/// the coordinator cannot explain counts against the refuser
/// (`attempt::first_answer`), the coordinator checks all of it first.
fn encode_request(job: &Job, request: &JobRequest) -> Result<Vec<u8>, Error> {
    request.validate().map_err(|e| {
        let param = match &e {
            ProtoError::Invalid { field, .. } => *field,
            _ => "messages",
        };
        Error::bad_request(e.to_string(), Some(param))
    })?;
    let bytes = serde_json::to_vec(request)
        .map_err(|e| Error::Internal(format!("encode job request: {e}")))?;
    if bytes.len() > MAX_FRAME_BYTES {
        let param = match job.kind {
            JobKind::Chat => "messages",
            JobKind::Completion => "prompt",
            JobKind::Embedding => "input",
        };
        return Err(Error::bad_request(
            format!(
                "the request is {} bytes once encoded for a node, more than the {} a job may carry; shorten `{param}`",
                bytes.len(),
                MAX_FRAME_BYTES
            ),
            Some(param),
        ));
    }
    Ok(bytes)
}
