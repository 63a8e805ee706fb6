//! Forwarding jobs to an OpenAI-compatible server the provider already runs
//! (vLLM, SGLang, llama.cpp server, Ollama) or a hosted API.
//!
//! Chat jobs go to `POST {base_url}/chat/completions`, prompt jobs to
//! `POST {base_url}/completions`, always streamed with
//! `stream_options.include_usage`, so text is passed on as it comes.
//!
//! The output is counted by the node, never taken from the server's
//! `usage`: with the model's tokenizer (`tokenizer` in the upstream's
//! config) the streamed text is re-tokenized about a word at a time and every
//! piece carries the ids it counts (`recount.rs`); without one each
//! content chunk counts as one token. The receipt's output count is the
//! sum of the pieces' counts. A server whose `usage` claims more than that
//! (beyond [`usage_slack`]) is logged, and not believed: a provider running
//! the unmodified node in front of a server that overstates its usage
//! bills nothing for it. The prompt's count is still the server's (the
//! node would need the server's own chat template to count it; the
//! coordinator counts it itself). Dropping the event receiver drops the
//! HTTP response, which closes the upstream connection and stops its
//! generation.
//!
//! Tools and `response_format` are passed through in OpenAI's shapes
//! (the node advertises them only where its config says the server takes
//! them). Streamed `delta.tool_calls` fragments are put together by index
//! and handed on as whole calls when the stream ends.
//!
//! Some servers (llama-cpp-python 0.3) ignore `include_usage` in streams.
//! Then the output count is the number of streamed chunks (one token each)
//! and the prompt count comes from the upstream itself: the same request,
//! not streamed, with `max_tokens = 1` (cheap where the server caches the
//! prompt, as llama.cpp and vLLM do).

use std::collections::BTreeMap;

use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use sharenet_api::openai::{
    Content, FunctionCall, InMessage, OutToolCall, ResponseFormat, StreamOptions, Tool, ToolChoice,
};
use sharenet_proto::{
    ChatMessage, FinishReason, JobErrorCode, JobInput, JobRequest, ToolCall, Tools, Usage,
};
use tokio::sync::mpsc;

use crate::config::UpstreamConfig;
use crate::recount::{Counted, Recount};

/// What the forwarding task reports.
#[derive(Debug)]
pub(crate) enum UpstreamEvent {
    /// Text and the tokens the node counted for it (their ids when it has
    /// the model's tokenizer).
    Piece {
        text: String,
        tokens: u32,
        ids: Vec<u32>,
    },
    /// The calls the upstream made, whole, before `Done`, and the tokens
    /// the node counted for them.
    ToolCalls {
        calls: Vec<ToolCall>,
        tokens: u32,
        ids: Vec<u32>,
    },
    /// The prompt's token count, as soon as it is known (from the stream's
    /// usage or a probe), for running receipts.
    PromptTokens(u32),
    Done {
        usage: Usage,
        finish_reason: FinishReason,
    },
    Failed {
        code: JobErrorCode,
        message: String,
    },
}

/// Longest SSE line accepted from an upstream.
const MAX_LINE: usize = 1 << 20;

/// Completion tokens a server's `usage` may claim beyond the node's own
/// count before it is logged: servers count what the node does not see
/// (end of turn, a tool call's markup, reasoning) and the node's
/// re-tokenization may split text differently from the model's sampling.
/// The node bills its own count either way; this only decides the log.
pub(crate) fn usage_slack(counted: u32) -> u32 {
    8 + counted / 10
}

pub(crate) struct Upstream {
    http: reqwest::Client,
    config: UpstreamConfig,
    /// The model's tokenizer, to count the output with.
    tokenizer: Option<std::sync::Arc<tokenizers::Tokenizer>>,
    /// The model's prompt side, when `tokenizer` names its files (a
    /// `.gguf` or a Hugging Face folder): the node counts prompts with the
    /// coordinator's renderer.
    prompt: Option<Box<sharenet_prompt::PromptModel>>,
    /// Whether this server reports usage in its streams, as learned from
    /// the last stream: unknown, yes, no. When it does not, the prompt's
    /// size is probed before the stream (not after it), so running
    /// receipts can carry it.
    stream_usage: std::sync::atomic::AtomicU8,
}

const USAGE_UNKNOWN: u8 = 0;
const USAGE_IN_STREAM: u8 = 1;
const USAGE_PROBED: u8 = 2;

impl Upstream {
    pub(crate) fn new(config: UpstreamConfig) -> anyhow::Result<Self> {
        // Kept-alive connections (the pool) and no Nagle, so a streamed
        // chunk is read the moment the server writes it.
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(config.timeout)
            .build()?;
        let tokenizer = match &config.tokenizer {
            None => None,
            Some(path) => Some(crate::recount::load(path)?),
        };
        let prompt = match &config.tokenizer {
            Some(path) if !path.to_string_lossy().ends_with(".json") => Some(
                sharenet_prompt::ModelSource::inspect(path)
                    .and_then(|s| s.prompt_model())
                    .map(Box::new)
                    .map_err(anyhow::Error::from)
                    .map_err(|e| {
                        e.context(format!(
                            "read the upstream model's prompt side from {}",
                            path.display()
                        ))
                    })?,
            ),
            _ => None,
        };
        Ok(Self {
            http,
            config,
            tokenizer,
            prompt,
            stream_usage: std::sync::atomic::AtomicU8::new(USAGE_UNKNOWN),
        })
    }

    /// The model's tokenizer, when configured.
    pub(crate) fn tokenizer(&self) -> Option<&std::sync::Arc<tokenizers::Tokenizer>> {
        self.tokenizer.as_ref()
    }

    /// The prompt tokens of `job` as the coordinator counts them, when the
    /// node has the model's files (`None`: the server's count is used).
    pub(crate) fn count_prompt(&self, job: &JobRequest) -> Option<u32> {
        let prompt = self.prompt.as_ref()?;
        prompt
            .count_request(job)
            .inspect_err(|e| tracing::warn!(job = %job.job_id, error = %e, "count the prompt"))
            .ok()
    }

    /// The URL and body for `job`. The body is sent as a JSON value built
    /// from [`UpstreamRequest`] (the probe edits it).
    fn body(&self, job: &JobRequest) -> Result<(String, Value), String> {
        let p = &job.params;
        let (tools, tool_choice, parallel_tool_calls) = match &job.tools {
            Some(t) => {
                let (tools, choice, parallel) = tools_fields(t);
                (Some(tools), Some(choice), parallel)
            }
            None => (None, None, None),
        };
        let mut request = UpstreamRequest {
            model: &self.config.model,
            stream: true,
            stream_options: StreamOptions {
                include_usage: true,
            },
            max_tokens: p.max_tokens,
            temperature: p.temperature,
            top_p: p.top_p,
            seed: p.seed,
            stop: (!p.stop.is_empty()).then_some(p.stop.as_slice()),
            top_k: (p.top_k > 0).then_some(p.top_k),
            min_p: (p.min_p > 0.0).then_some(p.min_p),
            repeat_penalty: (p.repetition_penalty != 1.0).then_some(p.repetition_penalty),
            presence_penalty: (p.presence_penalty != 0.0).then_some(p.presence_penalty),
            frequency_penalty: (p.frequency_penalty != 0.0).then_some(p.frequency_penalty),
            logit_bias: (!p.logit_bias.is_empty()).then(|| {
                p.logit_bias
                    .iter()
                    .map(|(id, b)| (id.to_string(), *b))
                    .collect()
            }),
            tools,
            tool_choice,
            parallel_tool_calls,
            response_format: job.response_format.as_ref().map(ResponseFormat::from),
            messages: None,
            prompt: None,
        };
        let url = match &job.input {
            JobInput::Chat { messages } => {
                request.messages = Some(messages.iter().map(openai_message).collect());
                format!("{}/chat/completions", self.config.base_url)
            }
            JobInput::Prompt { prompt } => {
                request.prompt = Some(prompt.as_str());
                format!("{}/completions", self.config.base_url)
            }
            JobInput::Embed { .. } => {
                return Err("this model is served upstream for text only".into());
            }
        };
        let body = serde_json::to_value(&request)
            .map_err(|e| format!("the upstream request cannot be written: {e}"))?;
        Ok((url, body))
    }

    async fn post(
        &self,
        url: &str,
        body: &Value,
    ) -> Result<reqwest::Response, (JobErrorCode, String)> {
        let mut req = self.http.post(url).json(body);
        if let Some(key) = &self.config.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.map_err(|e| {
            (
                JobErrorCode::Upstream,
                format!("upstream {url} unreachable: {e}"),
            )
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| text.chars().take(300).collect());
        let code = if status.is_client_error() {
            JobErrorCode::InvalidRequest
        } else {
            JobErrorCode::Upstream
        };
        Err((code, format!("upstream answered {status}: {message}")))
    }

    /// The prompt's token count from the upstream itself, for servers that
    /// do not report usage in streams.
    async fn probe_prompt_tokens(
        &self,
        url: &str,
        body: &Value,
    ) -> Result<u32, (JobErrorCode, String)> {
        let mut probe = body.clone();
        probe["stream"] = json!(false);
        probe["max_tokens"] = json!(1);
        if let Some(o) = probe.as_object_mut() {
            o.remove("stream_options");
        }
        tracing::debug!(%url, "upstream sent no usage in its stream; probing the prompt size");
        let v: Value = self.post(url, &probe).await?.json().await.map_err(|e| {
            (
                JobErrorCode::Upstream,
                format!("read upstream usage probe: {e}"),
            )
        })?;
        v["usage"]["prompt_tokens"]
            .as_u64()
            .map(|n| n.min(u64::from(u32::MAX)) as u32)
            .ok_or_else(|| {
                (
                    JobErrorCode::Upstream,
                    "upstream reports no usage at all; it cannot be billed".into(),
                )
            })
    }

    /// Forwards `job`, sending events until `Done` or `Failed`; returns
    /// early (closing the upstream request) if the receiver is dropped.
    pub(crate) async fn run(&self, job: &JobRequest, tx: mpsc::Sender<UpstreamEvent>) {
        let event = match self.forward(job, &tx).await {
            Ok(Some((usage, finish_reason))) => UpstreamEvent::Done {
                usage,
                finish_reason,
            },
            Ok(None) => return,
            Err((code, message)) => UpstreamEvent::Failed { code, message },
        };
        let _ = tx.send(event).await;
    }

    async fn forward(
        &self,
        job: &JobRequest,
        tx: &mpsc::Sender<UpstreamEvent>,
    ) -> Result<Option<(Usage, FinishReason)>, (JobErrorCode, String)> {
        if job.params.logprobs {
            return Err((
                JobErrorCode::UnsupportedInput,
                "logprobs are not forwarded to this node's upstream server".into(),
            ));
        }
        let (url, body) = self
            .body(job)
            .map_err(|m| (JobErrorCode::UnsupportedInput, m))?;
        let body_json = body;
        // A server known to leave usage out of its streams is asked for the
        // prompt's size first (it was asked after the stream before: the
        // same work, now in time for running receipts).
        let learned = self.stream_usage.load(std::sync::atomic::Ordering::Relaxed);
        let mut prompt_tokens: Option<u32> = None;
        if learned == USAGE_PROBED {
            let n = self.probe_prompt_tokens(&url, &body_json).await?;
            prompt_tokens = Some(n);
            if tx.send(UpstreamEvent::PromptTokens(n)).await.is_err() {
                return Ok(None);
            }
        }
        let resp = self.post(&url, &body_json).await?;
        let mut body = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let mut counted = 0u32;
        let mut recount = Recount::new(self.tokenizer.clone());
        let mut fragments = 0u32;
        let mut usage: Option<Usage> = None;
        let mut finish = FinishReason::Stop;
        let mut calls = CallAssembler::new(job.job_id.to_hex());
        let protocol = |m: String| (JobErrorCode::Upstream, m);
        loop {
            let next = body.next().await;
            let Some(chunk) = next else {
                return Err(protocol("upstream stream ended without [DONE]".into()));
            };
            let chunk = chunk.map_err(|e| protocol(format!("read upstream stream: {e}")))?;
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim();
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim();
                if data == "[DONE]" {
                    if let Some(c) = recount.finish() {
                        counted = counted.saturating_add(c.tokens);
                        if tx.send(piece(c)).await.is_err() {
                            return Ok(None);
                        }
                    }
                    let calls = calls.finish();
                    if !calls.is_empty() {
                        finish = FinishReason::ToolCalls;
                        let (ids, tokens) = recount.calls(&calls, fragments);
                        counted = counted.saturating_add(tokens);
                        let event = UpstreamEvent::ToolCalls { calls, tokens, ids };
                        if tx.send(event).await.is_err() {
                            return Ok(None);
                        }
                    }
                    let usage = match usage {
                        Some(u) => {
                            self.stream_usage
                                .store(USAGE_IN_STREAM, std::sync::atomic::Ordering::Relaxed);
                            u
                        }
                        None => {
                            self.stream_usage
                                .store(USAGE_PROBED, std::sync::atomic::Ordering::Relaxed);
                            let input_tokens = match prompt_tokens {
                                Some(n) => n,
                                None => self.probe_prompt_tokens(&url, &body_json).await?,
                            };
                            Usage {
                                input_tokens,
                                output_tokens: counted,
                            }
                        }
                    };
                    self.check_claim(job, usage.output_tokens, counted, &recount);
                    let usage = Usage {
                        input_tokens: usage.input_tokens,
                        output_tokens: counted,
                    };
                    return Ok(Some((usage, finish)));
                }
                let v: Value = serde_json::from_str(data)
                    .map_err(|e| protocol(format!("upstream sent a bad chunk: {e}")))?;
                if let Some(err) = v.get("error") {
                    return Err(protocol(format!("upstream error: {err}")));
                }
                if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                    let n = |k: &str| u[k].as_u64().map(|x| x.min(u64::from(u32::MAX)) as u32);
                    let input_tokens = n("prompt_tokens").unwrap_or(0);
                    usage = Some(Usage {
                        input_tokens,
                        output_tokens: n("completion_tokens").unwrap_or(0),
                    });
                    // Servers with continuous usage stats tell it early.
                    if prompt_tokens.is_none() && input_tokens > 0 {
                        prompt_tokens = Some(input_tokens);
                        if tx
                            .send(UpstreamEvent::PromptTokens(input_tokens))
                            .await
                            .is_err()
                        {
                            return Ok(None);
                        }
                    }
                }
                let Some(choice) = v["choices"].get(0) else {
                    continue;
                };
                let text = choice["delta"]["content"]
                    .as_str()
                    .or_else(|| choice["text"].as_str())
                    .unwrap_or("");
                if let Some(r) = choice["finish_reason"].as_str() {
                    finish = match r {
                        "length" => FinishReason::Length,
                        "tool_calls" => FinishReason::ToolCalls,
                        _ => FinishReason::Stop,
                    };
                }
                if let Some(parts) = choice["delta"]["tool_calls"].as_array() {
                    calls.add(parts).map_err(protocol)?;
                    fragments = fragments.saturating_add(1);
                }
                if let Some(c) = recount.push(text) {
                    counted = counted.saturating_add(c.tokens);
                    if tx.send(piece(c)).await.is_err() {
                        return Ok(None);
                    }
                }
            }
            if buf.len() > MAX_LINE {
                return Err(protocol("upstream sent a line over 1 MiB".into()));
            }
        }
    }
}

impl Upstream {
    /// Logs a server whose `usage` claims more output than the node
    /// counted (beyond [`usage_slack`]); the node bills its own count.
    fn check_claim(&self, job: &JobRequest, claimed: u32, counted: u32, recount: &Recount) {
        if claimed > counted.saturating_add(usage_slack(counted)) {
            tracing::warn!(
                job = %job.job_id,
                upstream = %self.config.base_url,
                claimed,
                counted,
                by_chunks = !recount.has_tokenizer(),
                "the upstream's usage claims more output tokens than the node counted; \
                 billing the node's count"
            );
        }
        if recount.mismatches > 0 {
            tracing::warn!(
                job = %job.job_id,
                segments = recount.mismatches,
                "the upstream model's tokenizer does not round-trip some of its output; \
                 is `tokenizer` the served model's?"
            );
        }
    }
}

/// A counted piece of text as an event.
fn piece(c: Counted) -> UpstreamEvent {
    UpstreamEvent::Piece {
        text: c.text,
        tokens: c.tokens,
        ids: c.ids,
    }
}

/// The body of an upstream request: OpenAI's chat or completions
/// request, with the sampling knobs vLLM and llama.cpp take (`top_k`,
/// `min_p`, llama.cpp's `repeat_penalty`); a knob at its neutral value is
/// left out.
#[derive(Serialize)]
struct UpstreamRequest<'a> {
    model: &'a str,
    stream: bool,
    stream_options: StreamOptions,
    max_tokens: u32,
    temperature: f64,
    top_p: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    repeat_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    /// `{"token id": bias}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    logit_bias: Option<BTreeMap<String, f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<Tool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoice>,
    /// Only ever `false` (parallel calls are the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<ResponseFormat>,
    /// Chat jobs.
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<Vec<InMessage>>,
    /// Prompt jobs.
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<&'a str>,
}

/// A chat message in OpenAI's shape: an assistant turn's calls as
/// `tool_calls[].function` with string arguments, a tool result with its
/// `tool_call_id`.
fn openai_message(m: &ChatMessage) -> InMessage {
    InMessage {
        role: m.role.clone(),
        content: Some(Content::Text(m.content.clone())),
        tool_calls: (!m.tool_calls.is_empty()).then(|| {
            m.tool_calls
                .iter()
                .map(|c| OutToolCall {
                    id: c.id.clone(),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: c.name.clone(),
                        arguments: c.arguments.clone(),
                    },
                })
                .collect()
        }),
        tool_call_id: m.tool_call_id.clone(),
        name: None,
    }
}

/// `tools`, `tool_choice` and `parallel_tool_calls` (only when `false`).
fn tools_fields(t: &Tools) -> (Vec<Tool>, ToolChoice, Option<bool>) {
    (
        t.specs.iter().map(Tool::from).collect(),
        ToolChoice::from(&t.choice),
        (!t.parallel).then_some(false),
    )
}

/// Most tool calls one upstream reply may make.
const MAX_UPSTREAM_CALLS: usize = sharenet_proto::MAX_TOOLS;

/// Streamed `delta.tool_calls` fragments put together by index, as the
/// OpenAI SDKs do.
struct CallAssembler {
    job: String,
    calls: Vec<(String, String, String)>,
}

impl CallAssembler {
    fn new(job: String) -> Self {
        Self {
            job,
            calls: Vec::new(),
        }
    }

    fn add(&mut self, parts: &[Value]) -> Result<(), String> {
        for p in parts {
            let index = p["index"].as_u64().map_or(self.calls.len(), |i| i as usize);
            if index >= MAX_UPSTREAM_CALLS {
                return Err(format!(
                    "upstream made more than {MAX_UPSTREAM_CALLS} tool calls"
                ));
            }
            while self.calls.len() <= index {
                self.calls.push(Default::default());
            }
            let call = &mut self.calls[index];
            if let Some(id) = p["id"].as_str() {
                call.0 = id.to_owned();
            }
            // A name comes once (OpenAI, vLLM) or, from some servers
            // (llama-cpp-python), again with every fragment: a repeat of
            // the whole name so far is not more of it.
            if let Some(name) = p["function"]["name"].as_str()
                && name != call.1
            {
                call.1.push_str(name);
            }
            if let Some(args) = p["function"]["arguments"].as_str() {
                call.2.push_str(args);
            }
        }
        Ok(())
    }

    /// The whole calls; an id the upstream left out (or made unusable) is
    /// made up, unique within the job.
    fn finish(&mut self) -> Vec<ToolCall> {
        std::mem::take(&mut self.calls)
            .into_iter()
            .enumerate()
            .filter(|(_, (_, name, _))| !name.is_empty())
            .map(|(i, (id, name, arguments))| ToolCall {
                id: if id.is_empty() || id.len() > 64 {
                    format!("call_{}_{i}", self.job)
                } else {
                    id
                },
                name,
                arguments: if arguments.is_empty() {
                    "{}".into()
                } else {
                    arguments
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
