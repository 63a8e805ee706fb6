//! The coordinator's own count of a job's tokens, for catalogued models:
//! the prompt rendered and tokenized with the catalog's renderer (the
//! node's engine uses the same code), and the output counted from the ids
//! the node streams, checked as they come against the text relayed.
//!
//! The rule billed (`sharenet_prompt::count`): output tokens are
//! `min(ids, canonical count of what the ids decode to + two markers per
//! call)`. A node's receipt must carry exactly these counts;
//! one that claims others is rejected as the node's (trust evidence).

use std::sync::Arc;

use sharenet_prompt::{Mismatch, OutputCount, PromptModel, Served, check_prefix, check_served};
use sharenet_proto::{JobRequest, ToolCall};

use crate::core::error::Error;

/// The prompt tokens of `request` as the serving engine feeds them.
pub(super) fn count_input(prompt: &PromptModel, request: &JobRequest) -> Result<u32, Error> {
    prompt.count_request(request).map_err(|e| match e {
        // The request's messages, as the model's template takes them (a
        // template may refuse, e.g. roles that do not alternate): every
        // node would refuse it alike.
        sharenet_prompt::PromptError::InvalidInput(m)
        | sharenet_prompt::PromptError::Unsupported(m) => Error::bad_request(m, None),
        other => Error::Internal(format!("count the prompt's tokens: {other}")),
    })
}

/// A streaming job's output count (see the module docs).
pub(super) struct OutputCounter {
    prompt: Arc<PromptModel>,
    count: OutputCount,
    /// Bytes of the relayed text already held against the ids.
    checked: usize,
    /// The job offered tools: its text may leave out call markup, so it
    /// is held against the ids at the end only.
    tools: bool,
}

impl OutputCounter {
    pub(super) fn new(prompt: Arc<PromptModel>, tools: bool) -> Self {
        let count = OutputCount::new(prompt.tokenizer());
        Self {
            prompt,
            count,
            checked: 0,
            tools,
        }
    }

    /// A delta's ids, with the text relayed so far (this delta's
    /// included). Why the node is at fault, if it is.
    pub(super) fn push(&mut self, ids: &[u32], tokens: u32, text: &str) -> Result<(), String> {
        if usize::try_from(tokens).ok() != Some(ids.len()) {
            return Err(format!(
                "the node counted {tokens} tokens but sent {} ids",
                ids.len()
            ));
        }
        self.count
            .push(self.prompt.tokenizer(), ids)
            .map_err(|e| format!("the node's ids do not decode: {e}"))?;
        if !self.tools {
            self.checked =
                check_prefix(self.count.decoded(), text, self.checked).map_err(|m| mismatch(&m))?;
        }
        Ok(())
    }

    /// At the end: the ids held against everything served, and the output
    /// tokens billed.
    pub(super) fn finish(
        &mut self,
        text: &str,
        calls: &[ToolCall],
        stops: &[String],
        stopped: bool,
    ) -> Result<u32, String> {
        self.count
            .finish(self.prompt.tokenizer())
            .map_err(|e| format!("the node's ids do not decode: {e}"))?;
        let served = Served {
            text,
            stops,
            stopped,
            call_bytes: calls.iter().map(|c| c.name.len() + c.arguments.len()).sum(),
            calls: calls.len(),
            tools: self.tools,
        };
        check_served(self.count.decoded(), &served).map_err(|m| mismatch(&m))?;
        self.count
            .billable(self.prompt.tokenizer(), calls.len())
            .map_err(|e| format!("count the output's tokens: {e}"))
    }

    /// The output tokens billed for the first `ids` ids with `calls`
    /// calls (a broken job booked from a running receipt).
    pub(super) fn billable_prefix(&self, ids: usize, calls: usize) -> Result<u32, String> {
        let tokenizer = self.prompt.tokenizer();
        let mut count = OutputCount::new(tokenizer);
        let prefix = self.count.ids().get(..ids).unwrap_or(self.count.ids());
        count
            .push(tokenizer, prefix)
            .and_then(|()| count.billable(tokenizer, calls))
            .map_err(|e| format!("count the output's tokens: {e}"))
    }

    /// Ids received so far.
    pub(super) fn ids(&self) -> usize {
        self.count.ids().len()
    }
}

fn mismatch(m: &Mismatch) -> String {
    format!("the node's token ids do not match its text: {m}")
}
