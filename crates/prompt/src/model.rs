//! [`PromptModel`]: what turns a request into the exact token ids a model
//! is fed — the tokenizer, the chat template, the BOS rule — and
//! [`PromptSpec`], its stored form (plain data, serde), e.g. in a catalog.
//!
//! The native engine feeds its model [`PromptModel::encode_request`]'s ids
//! and nothing else, so a coordinator holding the same [`PromptSpec`]
//! counts exactly the prompt tokens the node computes on.

use serde::{Deserialize, Serialize};
use sharenet_proto::{JobInput, JobRequest, ToolChoice, Tools};
use tokenizers::Tokenizer;

use crate::error::PromptError;
use crate::template::ChatTemplate;
use crate::tool_calls::{ToolFormat, template_tools};

/// The text the template gets as `eos_token` when the model names none.
pub const DEFAULT_EOS: &str = "</s>";

/// Whether a model that does not say (`add_bos_token` in
/// `tokenizer_config.json`, `tokenizer.ggml.add_bos_token` in GGUF) gets
/// its BOS id put before the prompt: when it has one, except Qwen2, which
/// is trained without.
pub fn default_add_bos(bos_token_id: Option<u32>, architecture: &str) -> bool {
    bos_token_id.is_some() && architecture != "qwen2"
}

/// Everything that decides a model's prompt tokens, as plain data: store
/// it (it is `Serialize`), then [`PromptSpec::compile`] it into a
/// [`PromptModel`]. [`crate::ModelSource::read`] fills one from a model's
/// files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptSpec {
    /// The tokenizer as `tokenizer.json` text (for a GGUF without one
    /// beside it: the byte-level BPE rebuilt from its metadata).
    pub tokenizer_json: String,
    /// The model's Jinja chat template; `None`: the documented fallback
    /// (see [`ChatTemplate`]).
    pub chat_template: Option<String>,
    /// The BOS token's text (`bos_token` in the template; empty if none).
    pub bos_token: Option<String>,
    /// The EOS token's text (`eos_token` in the template; [`DEFAULT_EOS`]
    /// if none).
    pub eos_token: Option<String>,
    /// The BOS id put before the prompt when `add_bos`.
    pub bos_token_id: Option<u32>,
    /// Whether the BOS id is put before the prompt (unless the rendered
    /// text already starts with the BOS text).
    pub add_bos: bool,
}

impl PromptSpec {
    /// Parses the tokenizer and compiles the template: a tokenizer that
    /// does not parse is [`PromptError::Tokenizer`], a template that does
    /// not compile [`PromptError::InvalidInput`]. Milliseconds to a few
    /// hundred (a 128k vocabulary): compile once per model, not per request.
    pub fn compile(&self) -> Result<PromptModel, PromptError> {
        let tokenizer = self
            .tokenizer_json
            .parse::<Tokenizer>()
            .map_err(|e| PromptError::Tokenizer(format!("tokenizer.json: {e}")))?;
        let template = self
            .template()
            .map_err(|e| PromptError::InvalidInput(e.to_string()))?;
        Ok(PromptModel::new(
            tokenizer,
            template,
            self.bos_token_id,
            self.add_bos,
        ))
    }

    /// The template with its BOS/EOS texts (defaults applied).
    pub(crate) fn template(&self) -> Result<ChatTemplate, String> {
        ChatTemplate::new(
            self.chat_template.clone(),
            self.bos_token.clone().unwrap_or_default(),
            self.eos_token
                .clone()
                .unwrap_or_else(|| DEFAULT_EOS.to_owned()),
        )
    }
}

/// A model's prompt side: renders requests with its chat template and
/// counts and encodes them with its tokenizer, exactly as the native
/// engine does. Cheap to share (`Arc` it); all methods take `&self`.
///
/// ```no_run
/// # use sharenet_prompt::{ModelSource, PromptError};
/// # use sharenet_proto::{ChatMessage, JobInput};
/// let source = ModelSource::read(std::path::Path::new("model.gguf"))?;
/// let prompt = source.prompt_model()?;
/// let input = JobInput::Chat { messages: vec![ChatMessage::new("user", "hi")] };
/// let text = prompt.render(&input, None)?;
/// let n = prompt.count_prompt(&input, None)?; // the engine's prompt length
/// # Ok::<(), PromptError>(())
/// ```
pub struct PromptModel {
    tokenizer: Tokenizer,
    template: ChatTemplate,
    bos_token_id: Option<u32>,
    add_bos: bool,
}

impl std::fmt::Debug for PromptModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptModel")
            .field("template", &self.template)
            .field("bos_token_id", &self.bos_token_id)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

impl PromptModel {
    /// From its parts (see [`PromptSpec::compile`] for the usual way).
    pub fn new(
        tokenizer: Tokenizer,
        template: ChatTemplate,
        bos_token_id: Option<u32>,
        add_bos: bool,
    ) -> Self {
        Self {
            tokenizer,
            template,
            bos_token_id,
            add_bos,
        }
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// How the model writes tool calls; `None` when its template does not
    /// take tools (a request with tools is then `Unsupported`).
    pub fn tool_format(&self) -> Option<ToolFormat> {
        self.template.tool_format()
    }

    /// The BOS id and whether it is put before prompts.
    pub fn bos(&self) -> (Option<u32>, bool) {
        (self.bos_token_id, self.add_bos)
    }

    /// The prompt text of a request: a chat rendered with the template
    /// (with the tools unless `tool_choice` is `none`), a raw prompt as
    /// is. Embedding inputs are `Unsupported` (this is a text model).
    ///
    /// `response_format` does not change the prompt: the engine holds the
    /// output to the schema with a grammar, it does not describe it to the
    /// model, so there is no argument for it (see [`Self::render_request`]).
    pub fn render(&self, input: &JobInput, tools: Option<&Tools>) -> Result<String, PromptError> {
        match input {
            JobInput::Chat { messages } => match tools {
                Some(t) if t.choice != ToolChoice::None => {
                    if self.tool_format().is_none() {
                        return Err(PromptError::Unsupported(
                            "this model's chat template does not take tools".into(),
                        ));
                    }
                    let tools = template_tools(t);
                    self.template.render_with_tools(messages, Some(&tools))
                }
                _ => self.template.render(messages),
            },
            JobInput::Prompt { prompt } => Ok(prompt.clone()),
            JobInput::Embed { .. } => Err(PromptError::Unsupported(
                "this is a text generation model; it does not embed".into(),
            )),
        }
    }

    /// [`Self::render`] of a whole job request (its input and tools; its
    /// `response_format` does not change the prompt).
    pub fn render_request(&self, request: &JobRequest) -> Result<String, PromptError> {
        self.render(&request.input, request.tools.as_ref())
    }

    /// The ids the engine feeds the model for a request: the rendered text
    /// tokenized without added special tokens, after the BOS id when the
    /// model adds one and the text does not already start with its BOS
    /// text. An empty result is `InvalidInput`.
    pub fn encode_request(
        &self,
        input: &JobInput,
        tools: Option<&Tools>,
    ) -> Result<Vec<u32>, PromptError> {
        let text = self.render(input, tools)?;
        self.encode_prompt(&text)
    }

    /// The ids the engine feeds for an already rendered prompt text (BOS
    /// rule included; see [`Self::encode_request`]).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, PromptError> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| PromptError::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(encoding.get_ids().len() + 1);
        let bos_text = self.template.bos();
        let bos_in_text = !bos_text.is_empty() && text.starts_with(bos_text);
        if self.add_bos
            && !bos_in_text
            && let Some(bos) = self.bos_token_id
        {
            ids.push(bos);
        }
        ids.extend_from_slice(encoding.get_ids());
        if ids.is_empty() {
            return Err(PromptError::InvalidInput("the prompt is empty".into()));
        }
        Ok(ids)
    }

    /// The number of prompt tokens the engine feeds for a request (BOS
    /// included when it adds one): `encode_request(..).len()`.
    pub fn count_prompt(
        &self,
        input: &JobInput,
        tools: Option<&Tools>,
    ) -> Result<u32, PromptError> {
        let ids = self.encode_request(input, tools)?;
        Ok(u32::try_from(ids.len()).unwrap_or(u32::MAX))
    }

    /// [`Self::count_prompt`] of a whole job request.
    pub fn count_request(&self, request: &JobRequest) -> Result<u32, PromptError> {
        self.count_prompt(&request.input, request.tools.as_ref())
    }

    /// Plain tokenization: the ids of `text`, no special tokens added, no
    /// BOS (special tokens written in the text are still recognised).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, PromptError> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| PromptError::Tokenizer(e.to_string()))
    }

    /// `encode(text).len()`: a text's own token count.
    pub fn count_text(&self, text: &str) -> Result<u32, PromptError> {
        let n = self.encode(text)?.len();
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Ids to text; `skip_special` leaves special tokens out (as the
    /// engine's output does).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, PromptError> {
        self.tokenizer
            .decode(ids, skip_special)
            .map_err(|e| PromptError::Tokenizer(e.to_string()))
    }
}

#[cfg(test)]
mod tests;
