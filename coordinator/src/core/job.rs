//! A job as the core sees it: what kind, which models, the input and
//! sampling parameters, and the caller's routing preferences, already
//! validated (the HTTP layer parses requests into this). How the answer is
//! shaped (JSON or SSE, base64 embeddings) is not the core's business.

use std::sync::Arc;

use sharenet_proto::{Capabilities, JobInput, ModelKind, ResponseFormat, SamplingParams, Tools};

/// Which endpoint a job came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Chat,
    Completion,
    Embedding,
}

impl JobKind {
    /// The kind of model that can serve it.
    pub fn model_kind(self) -> ModelKind {
        match self {
            Self::Embedding => ModelKind::Embedding,
            Self::Chat | Self::Completion => ModelKind::Text,
        }
    }
}

/// What to optimise first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Price,
    Latency,
    Throughput,
}

/// Validated routing preferences (the `provider` object): node keys are
/// decoded, prices are nano-USD per token.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProviderPrefs {
    pub sort: Option<SortKey>,
    pub order: Vec<[u8; 32]>,
    pub only: Vec<[u8; 32]>,
    pub ignore: Vec<[u8; 32]>,
    pub allow_fallbacks: bool,
    pub max_price_in: Option<u64>,
    pub max_price_out: Option<u64>,
    pub min_trust: Option<f64>,
    pub region: Option<String>,
    pub quantizations: Vec<String>,
    pub sensitive: bool,
    pub weights_sha256: Option<[u8; 32]>,
    /// Only nodes that keep no prompts.
    pub deny_data_collection: bool,
    /// Only models under these licenses (empty: any).
    pub licenses: Vec<String>,
}

impl ProviderPrefs {
    /// No preferences: any node, fallbacks allowed.
    pub fn any() -> Self {
        Self {
            allow_fallbacks: true,
            ..Self::default()
        }
    }
}

/// A validated request, ready to dispatch.
#[derive(Debug, Clone)]
pub struct Job {
    pub kind: JobKind,
    /// The requested model first, then its `models` fallbacks (1 to 8).
    pub models: Vec<String>,
    pub input: JobInput,
    pub params: SamplingParams,
    pub prefs: ProviderPrefs,
    /// Functions the model may call (chat).
    pub tools: Option<Tools>,
    /// The JSON shape the answer must take.
    pub response_format: Option<ResponseFormat>,
    /// The prompt's tokens as the coordinator counted them (set once
    /// dispatch has rendered the request for a catalogued model; see
    /// `dispatch/count.rs`). When set it is the job's input, exactly.
    pub input_tokens: std::sync::OnceLock<u32>,
}

impl Job {
    /// The model the caller asked for.
    pub fn requested_model(&self) -> &str {
        self.models.first().map_or("", String::as_str)
    }

    /// What a node must be able to do to serve it.
    pub fn needs(&self) -> Capabilities {
        Capabilities {
            tools: self
                .tools
                .as_ref()
                .is_some_and(|t| t.choice != sharenet_proto::ToolChoice::None),
            structured_outputs: self.response_format.is_some(),
        }
    }

    /// Bytes the tools add to the rendered prompt: their definitions, and
    /// the calls and results already in the conversation.
    fn tool_bytes(&self) -> usize {
        let defs = self.tools.as_ref().map_or(0, |t| {
            t.specs
                .iter()
                .map(|s| s.name.len() + s.description.len() + s.parameters.to_string().len() + 64)
                .sum::<usize>()
                // The template's own preamble about tools.
                + 1024
        });
        let calls: usize = match &self.input {
            JobInput::Chat { messages } => messages
                .iter()
                .flat_map(|m| &m.tool_calls)
                .map(|c| c.id.len() + c.name.len() + c.arguments.len() + 32)
                .sum(),
            _ => 0,
        };
        defs + calls
    }

    /// The prompt's size for routing: the coordinator's count when it
    /// has one, else about four bytes per token.
    pub fn estimated_input_tokens(&self) -> u32 {
        if let Some(n) = self.input_tokens.get() {
            return *n;
        }
        let bytes: usize = self.tool_bytes()
            + match &self.input {
                JobInput::Chat { messages } => messages.iter().map(|m| m.content.len() + 8).sum(),
                JobInput::Prompt { prompt } => prompt.len(),
                JobInput::Embed { inputs } => inputs.iter().map(String::len).sum(),
            };
        u32::try_from(bytes / 4 + 1).unwrap_or(u32::MAX)
    }

    /// Most input tokens the job can have: the coordinator's count when it
    /// has one, else every byte a token plus room for the chat template's
    /// own tokens. The hold is priced on it, and a receipt claiming more
    /// is rejected.
    pub fn max_input_tokens(&self) -> u64 {
        if let Some(n) = self.input_tokens.get() {
            return u64::from(*n);
        }
        let (bytes, pieces) = match &self.input {
            JobInput::Chat { messages } => (
                messages
                    .iter()
                    .map(|m| m.content.len() + m.role.len())
                    .sum::<usize>(),
                messages.len(),
            ),
            JobInput::Prompt { prompt } => (prompt.len(), 1),
            JobInput::Embed { inputs } => (inputs.iter().map(String::len).sum(), inputs.len()),
        };
        (bytes as u64) + (self.tool_bytes() as u64) + 16 * (pieces as u64) + 256
    }

    /// Most output tokens the job can be charged for.
    pub fn max_output_tokens(&self) -> u64 {
        match self.kind {
            JobKind::Embedding => 0,
            _ => u64::from(self.params.max_tokens),
        }
    }
}

/// A job that finished and was booked: what dispatch's completion hook
/// announces (the spot-check sampler listens).
#[derive(Debug, Clone)]
pub struct CompletedJob {
    pub job: Arc<Job>,
    /// The app that paid for it.
    pub app: String,
    /// Sensitive, or served from the app's private pool: its prompt may
    /// not leave that pool, so it is never re-run elsewhere.
    pub private: bool,
    pub node: [u8; 32],
    pub model: String,
    /// Where the job was allowed to go: its preferences with its app's
    /// rules folded in (no data collection, licenses). A re-run of it goes
    /// only where these allow.
    pub prefs: ProviderPrefs,
}

/// What dispatch knows of a job's completion notice before it is served.
#[derive(Debug, Clone)]
pub struct Notice {
    pub app: String,
    pub private: bool,
    /// See [`CompletedJob::prefs`].
    pub prefs: ProviderPrefs,
}
