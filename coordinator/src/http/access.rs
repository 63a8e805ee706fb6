//! One access-log line per API request, target `sharenet::access` (with
//! `--log-format json`, one JSON object): method, path, status, duration,
//! the app, and for inference the model, serving node, receipt id, tokens,
//! cost and time to first token. A streamed response's line is written by
//! its relay when the stream ends (tokens and cost are known only then).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::core::Core;
use crate::core::accounts::Principal;
use crate::core::dispatch::{ActiveJob, Finished as FinishedJob};
use crate::core::metrics::{Finished, Inference, Metrics};

/// What the handler knows about an inference request, put into the
/// response's extensions.
#[derive(Debug, Clone, Default)]
pub(super) struct Access {
    pub model: String,
    pub node: String,
    pub receipt_id: String,
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub charge_nano_usd: u64,
    /// From the request reaching the node to its first token.
    pub ttft_ms: Option<f64>,
}

/// The access-log facts of a finished (or partly booked) job.
pub(super) fn access_of(active: &ActiveJob, f: &FinishedJob) -> Access {
    Access {
        model: active.model().to_owned(),
        node: active.peer().to_string(),
        receipt_id: active.job_id().to_hex(),
        input_tokens: f.usage.input_tokens,
        output_tokens: f.usage.output_tokens,
        charge_nano_usd: f.charge.total,
        ttft_ms: Some(active.ttft_ms()),
    }
}

/// In a streamed response's extensions: its relay writes the line.
#[derive(Debug, Clone)]
pub(super) struct Deferred;

/// The request's start and shape, handed to a stream's relay.
#[derive(Debug, Clone)]
pub(super) struct Started {
    pub at: Instant,
    pub method: Method,
    pub path: String,
    pub app: Option<String>,
    /// Where the line's numbers also go.
    pub metrics: Arc<Metrics>,
}

/// Logs (and counts) every request that passes through it (outermost
/// layer).
pub(super) async fn log(
    State(core): State<Arc<Core>>,
    mut request: Request,
    next: Next,
) -> Response {
    let at = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    request.extensions_mut().insert(Started {
        at,
        method: method.clone(),
        path: path.clone(),
        app: None,
        metrics: core.metrics.clone(),
    });
    // The request's span: the root of its trace when traces are exported.
    let span = tracing::info_span!(
        "request",
        "otel.name" = %format_args!("{method} {path}"),
        "otel.kind" = "server",
        "http.request.method" = %method,
        "url.path" = %path,
        "http.response.status_code" = tracing::field::Empty,
    );
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    if response.extensions().get::<Deferred>().is_some() {
        return response;
    }
    let started = Started {
        at,
        method,
        path,
        app: response
            .extensions()
            .get::<Principal>()
            .map(|p| p.app.clone()),
        metrics: core.metrics.clone(),
    };
    line(
        &started,
        response.status(),
        response.extensions().get::<Access>(),
        None,
    );
    response
}

/// Writes one line and records the request in the metrics; `ttft_ms`
/// for streams (the time to their first event), else the job's own.
pub(super) fn line(s: &Started, status: StatusCode, a: Option<&Access>, ttft_ms: Option<f64>) {
    let duration_ms = s.at.elapsed().as_secs_f64() * 1e3;
    let app = s.app.as_deref().unwrap_or("-");
    let ttft_ms = ttft_ms.or(a.and_then(|a| a.ttft_ms));
    s.metrics.finished(&Finished {
        path: &s.path,
        status: status.as_u16(),
        app,
        duration_s: duration_ms / 1e3,
        inference: a.map(|a| Inference {
            model: &a.model,
            input_tokens: a.input_tokens,
            output_tokens: a.output_tokens,
            charge_nano_usd: a.charge_nano_usd,
            ttft_s: ttft_ms.map(|t| t / 1e3),
        }),
    });
    match a {
        Some(a) => tracing::info!(
            target: "sharenet::access",
            method = %s.method,
            path = %s.path,
            status = status.as_u16(),
            duration_ms,
            ttft_ms,
            app,
            model = %a.model,
            node = %a.node,
            receipt_id = %a.receipt_id,
            input_tokens = a.input_tokens,
            output_tokens = a.output_tokens,
            cost_nano_usd = a.charge_nano_usd,
            "request"
        ),
        None => tracing::info!(
            target: "sharenet::access",
            method = %s.method,
            path = %s.path,
            status = status.as_u16(),
            duration_ms,
            app,
            "request"
        ),
    }
}
