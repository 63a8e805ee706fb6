//! What `sharenet-coordinator` and `sharenet-node` share as processes:
//! logs on stderr as text or JSON lines ([`init_logs`]), and the signals
//! that stop them ([`shutdown_signal`]: SIGINT or SIGTERM) or reload a
//! node ([`hangup`]: SIGHUP); their config files with environment
//! overrides ([`config`]); and OpenTelemetry traces over OTLP, with the
//! W3C trace context a coordinator hands a node in each job ([`trace`]).

pub mod config;
mod error;
pub mod trace;

pub use error::DaemonError;

use tracing_subscriber::fmt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Log line format (`--log-format`, or `SHARENET_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr in `format`, else SHARENET_LOG_FORMAT's, else text;
/// levels follow RUST_LOG (default `info,libp2p=warn`). With an OTLP
/// endpoint in the environment (see [`trace`]), spans are also exported
/// as traces under `service`'s name; keep the returned [`Telemetry`] alive
/// until the process ends, so the last spans are flushed.
pub fn init_logs(
    format: Option<LogFormat>,
    service: &'static str,
) -> Result<Telemetry, DaemonError> {
    let format = match format {
        Some(f) => f,
        None => match std::env::var("SHARENET_LOG_FORMAT").as_deref() {
            Err(_) | Ok("") | Ok("text") => LogFormat::Text,
            Ok("json") => LogFormat::Json,
            Ok(other) => return Err(DaemonError::LogFormat(other.to_owned())),
        },
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,libp2p=warn".into());
    let (text, json) = match format {
        LogFormat::Text => (Some(fmt::layer().with_writer(std::io::stderr)), None),
        LogFormat::Json => (
            None,
            Some(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            ),
        ),
    };
    let (provider, otel) = match trace::provider(service)? {
        Some(provider) => {
            use opentelemetry::trace::TracerProvider as _;
            let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));
            (Some(provider), Some(layer))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .with(otel)
        .init();
    if provider.is_some() {
        tracing::info!(service, "exporting traces over OTLP");
    }
    Ok(Telemetry { provider })
}

/// Holds the trace exporter; dropping it flushes the spans not yet sent.
#[must_use = "dropping the telemetry guard stops trace export"]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("flush traces: {e}");
        }
    }
}

/// Waits for Ctrl-C (SIGINT) or SIGTERM (systemd, `docker stop`); says
/// which.
pub async fn shutdown_signal() -> Result<&'static str, DaemonError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term =
            signal(SignalKind::terminate()).map_err(|e| DaemonError::Signal("SIGTERM", e))?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.map(|()| "SIGINT").map_err(|e| DaemonError::Signal("SIGINT", e)),
            _ = term.recv() => Ok("SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .map_err(|e| DaemonError::Signal("Ctrl-C", e))?;
        Ok("Ctrl-C")
    }
}

/// Resolves on the next SIGHUP (never where there are no signals).
pub async fn hangup() {
    #[cfg(unix)]
    if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        hup.recv().await;
        return;
    }
    std::future::pending::<()>().await
}
