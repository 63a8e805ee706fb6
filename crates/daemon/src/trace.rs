//! OpenTelemetry traces, exported over OTLP/HTTP when the standard
//! variables ask for it, and the trace context a coordinator passes to a
//! node inside a job request, so one trace spans both processes.
//!
//! The one rule: export is on when `OTEL_EXPORTER_OTLP_ENDPOINT` (a base
//! URL; `/v1/traces` is appended) or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//! (the full URL) is set and `OTEL_SDK_DISABLED` is not `true`. The other
//! standard variables apply as the OpenTelemetry SDK reads them:
//! `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the default here, or
//! `http/json`), `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`,
//! `OTEL_SERVICE_NAME` (default: the binary's name),
//! `OTEL_RESOURCE_ATTRIBUTES`, and the batch settings `OTEL_BSP_*`.
//!
//! The context travels as a W3C `traceparent` string. A node takes it from
//! an untrusted peer, so it is only ever a parent for the node's own span:
//! a malformed one is ignored, and it carries no baggage.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::error::DaemonError;

/// The longest `traceparent` taken from a peer (version 00 is 55 bytes;
/// later versions may append fields).
pub const MAX_TRACEPARENT_LEN: usize = 256;

const TRACEPARENT: &str = "traceparent";

fn set(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| !v.trim().is_empty())
}

/// The tracer provider the environment asks for, or `None` when no OTLP
/// endpoint is set.
pub(crate) fn provider(service: &'static str) -> Result<Option<SdkTracerProvider>, DaemonError> {
    let wanted = set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    if !wanted || disabled {
        return Ok(None);
    }
    let builder = opentelemetry_otlp::SpanExporter::builder();
    // The SDK reads the protocol from the environment; without one it
    // would pick JSON (a feature both ways), where collectors expect
    // protobuf by default.
    let exporter =
        if set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") || set("OTEL_EXPORTER_OTLP_PROTOCOL") {
            builder.build()
        } else {
            builder
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .build()
        }
        .map_err(|e| DaemonError::Otlp(e.to_string()))?;
    let resource = if set("OTEL_SERVICE_NAME") {
        opentelemetry_sdk::Resource::builder().build()
    } else {
        opentelemetry_sdk::Resource::builder()
            .with_service_name(service)
            .build()
    };
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    ))
}

/// The W3C `traceparent` of `span`, or `None` when it is not being
/// traced (no exporter, or not sampled).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `traceparent` (from a peer) the parent of `span`. A malformed or
/// oversized value leaves the span a root of its own trace.
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    if traceparent.len() > MAX_TRACEPARENT_LEN {
        return;
    }
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    use opentelemetry::trace::TraceContextExt as _;
    if cx.span().span_context().is_valid() {
        // Fails only when the span is already closed or has a parent.
        let _ = span.set_parent(cx);
    }
}
