//! Why setting up a daemon's logs, traces or signals failed. A leaf:
//! `lib.rs` and `trace` both return it.

/// Why a daemon could not set up its logs, traces or signals.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("SHARENET_LOG_FORMAT={0:?}: expected text or json")]
    LogFormat(String),
    #[error("listen for {0}: {1}")]
    Signal(&'static str, std::io::Error),
    #[error("set up the OTLP trace exporter: {0}")]
    Otlp(String),
}
