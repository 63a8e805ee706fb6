//! Wire types shared by sharenet nodes and coordinators.
//!
//! Everything two parties must agree on byte for byte lives here: capacity
//! adverts, job requests and the job event stream, and usage receipts.
//!
//! Signed objects ([`SignedAdvert`], [`SignedReceipt`],
//! [`CountersignedReceipt`]) travel as their *canonical bytes*: a fixed
//! big-endian binary encoding that starts with a domain-separation tag and
//! the protocol version, followed by the ed25519 signature(s). Decoding a
//! signed object always verifies it, so a value of one of these types in
//! memory has a valid signature.
//!
//! Job requests and events are JSON inside length-prefixed frames (the
//! framing is the `p2p` crate's job); they are not signed, but the receipt
//! carries SHA-256 digests of the exact request bytes and of the response
//! text, so both sides commit to what was exchanged.
//!
//! Architecture invariant: this crate depends on no network, HTTP or storage
//! crate, and nothing in it panics on bytes that came from a peer.

mod advert;
mod batch;
pub mod canon;
mod error;
pub mod hex_keys;
mod job;
pub mod job_budget;
mod keys;
mod money;
mod receipt;
pub mod schema_limits;
mod tools;

pub use advert::{
    Advert, GpuInfo, MAX_ADVERT_GPUS, MAX_ADVERT_MODELS, MAX_ADVERT_TTL_MS, ModelKind, ModelOffer,
    SignedAdvert, model_slug,
};
pub use batch::{verify_countersigned_batch, verify_own_countersigned_batch};
pub use error::ProtoError;
pub use job::{
    ChatMessage, FinishReason, JobErrorCode, JobEvent, JobInput, JobRequest, MAX_EMBED_INPUTS,
    MAX_FRAME_BYTES, MAX_JOB_TOKENS, MAX_LOGIT_BIAS, MAX_TOP_LOGPROBS, MAX_TRACEPARENT_BYTES,
    SamplingParams, TokenLogprob, TopLogprob, Usage,
};
pub use job_budget::{JOB_SLACK_BYTES, LOGPROB_ENTRY_BYTES, MAX_TOKEN_BYTES, job_byte_budget};
pub use keys::{
    JobId, PublicKey, SigningKey, embeddings_digest, public_key_of, sha256, sign_canonical,
    verify_canonical,
};
pub use money::{NanoUsd, job_cost};
pub use receipt::{CountersignedReceipt, Receipt, SignedReceipt};
pub use schema_limits::{MAX_GRAMMAR_BYTES, MAX_OBJECT_PROPERTIES, MAX_SCHEMA_PROPERTIES};
pub use tools::{
    Capabilities, MAX_TOOL_NAME, MAX_TOOL_SCHEMA_BYTES, MAX_TOOLS, ResponseFormat, ResponseHasher,
    ToolCall, ToolChoice, ToolSpec, Tools, response_digest, valid_tool_name,
};

/// The protocol version written after every domain tag. A peer that sends
/// another version is refused with [`ProtoError::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u16 = 1;
