//! Why a scenario could not be loaded or run: the crate's one error type,
//! in its own leaf module so every other module can use it without
//! importing the crate root that declares them.

use thiserror::Error;

/// Why a scenario could not be loaded or run.
#[derive(Debug, Error)]
pub enum SimError {
    /// The file is not valid TOML or has an unknown key or a wrong type;
    /// the message names the key and the line (from the TOML parser).
    #[error("{0}")]
    Parse(String),
    /// A value serde accepted but the simulator cannot use.
    #[error("scenario key `{key}`{}: {reason}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Invalid {
        key: String,
        line: Option<usize>,
        reason: String,
    },
    /// A `--set key=value` override that does not apply.
    #[error("--set {set}: {reason}")]
    Set { set: String, reason: String },
    #[error("money: {0}")]
    Market(#[from] sharenet_market::MarketError),
    #[error("receipt: {0}")]
    Proto(#[from] sharenet_proto::ProtoError),
    #[error("amount overflows 64 bits: {0}")]
    Overflow(&'static str),
    /// The simulation's money and the market crate's disagree (a bug).
    #[error("settlement does not balance: {0}")]
    Unbalanced(String),
    #[error("write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("encode: {0}")]
    Encode(String),
    #[error("chart {path}: {reason}")]
    Chart { path: String, reason: String },
}
