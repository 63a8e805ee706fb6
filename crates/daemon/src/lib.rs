//! What `sharenet-coordinator` and `sharenet-node` share as processes:
//! logs on stderr as text or JSON lines ([`init_logs`]), and the signals
//! that stop them ([`shutdown_signal`]: SIGINT or SIGTERM) or reload a
//! node ([`hangup`]: SIGHUP); and their config files with environment
//! overrides ([`config`]).

pub mod config;

/// Log line format (`--log-format`, or `SHARENET_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("SHARENET_LOG_FORMAT={0:?}: expected text or json")]
    LogFormat(String),
    #[error("listen for {0}: {1}")]
    Signal(&'static str, std::io::Error),
}

/// Logs to stderr in `format`, else SHARENET_LOG_FORMAT's, else text;
/// levels follow RUST_LOG (default `info,libp2p=warn`).
pub fn init_logs(format: Option<LogFormat>) -> Result<(), DaemonError> {
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
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    Ok(())
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
