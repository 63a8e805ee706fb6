use thiserror::Error;

/// Why bytes from a peer were refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProtoError {
    #[error("truncated {0}")]
    Truncated(&'static str),
    #[error("wrong domain tag: expected {expected}")]
    WrongTag { expected: &'static str },
    #[error("unsupported protocol version {0} (this build speaks {v})", v = crate::PROTOCOL_VERSION)]
    UnsupportedVersion(u16),
    #[error("{field} too long: {len} > {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("invalid UTF-8 in {0}")]
    InvalidUtf8(&'static str),
    #[error("{0} trailing bytes after the signed object")]
    TrailingBytes(usize),
    #[error("signature on {0} does not verify")]
    BadSignature(&'static str),
    #[error("invalid ed25519 public key in {0}")]
    BadPublicKey(&'static str),
    #[error("amount overflows 64 bits computing {0}")]
    Overflow(&'static str),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}
