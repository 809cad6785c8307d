//! Response bodies and stream chunks in OpenAI's shapes, for both endpoints.

use crate::request::Endpoint;
use crate::scheduler::Usage;
use moestream_engine::generate::{FinishReason, TokenEvent};
use moestream_text::Tokenizer;
use serde_json::{json, Value};

/// Identity of one response: every chunk of a stream repeats it.
pub struct Envelope {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Envelope {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completion, _) => "text_completion",
        }
    }

    fn wrap(&self, chunk: bool, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        })
    }

    /// A complete (non-streaming) response.
    pub fn full(
        &self,
        text: &str,
        logprobs: Option<Value>,
        finish: FinishReason,
        usage: Usage,
    ) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs,
                "finish_reason": finish_str(finish),
            }),
            Endpoint::Completion => json!({
                "index": 0,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": finish_str(finish),
            }),
        };
        let mut v = self.wrap(false, json!([choice]));
        v["usage"] = usage_json(usage);
        v
    }

    /// A stream chunk carrying `text` (the chat stream's first chunk also sets the role).
    pub fn chunk(
        &self,
        text: &str,
        first: bool,
        logprobs: Option<Value>,
        finish: Option<FinishReason>,
    ) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let mut delta = json!({});
                if first {
                    delta["role"] = json!("assistant");
                }
                if !text.is_empty() || first {
                    delta["content"] = json!(text);
                }
                json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish.map(finish_str)})
            }
            Endpoint::Completion => json!({
                "index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish.map(finish_str),
            }),
        };
        self.wrap(true, json!([choice]))
    }

    /// The final usage chunk of a stream (`stream_options.include_usage`).
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        let mut v = self.wrap(true, json!([]));
        v["usage"] = usage_json(usage);
        v
    }
}

fn finish_str(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Length => "length",
        // A cancelled generation has no reader; "stop" keeps the field valid.
        FinishReason::Stop | FinishReason::Cancelled => "stop",
    }
}

fn usage_json(u: Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

/// Log-probabilities of generated tokens in the endpoint's format, accumulated token by token.
pub struct Logprobs {
    endpoint: Endpoint,
    entries: Vec<Value>,
    /// Completions: text offset of the next token.
    offset: usize,
}

impl Logprobs {
    pub fn new(endpoint: Endpoint) -> Self {
        Logprobs {
            endpoint,
            entries: Vec::new(),
            offset: 0,
        }
    }

    /// Adds one token (its visible `text` advances the completions' `text_offset`).
    pub fn push(&mut self, tok: &Tokenizer, ev: &TokenEvent, text: &str) {
        let piece = |id: u32| tok.decode(&[id], false).unwrap_or_default();
        let entry = match self.endpoint {
            Endpoint::Chat => {
                let top: Vec<Value> = ev
                    .top_logprobs
                    .iter()
                    .map(|&(id, lp)| {
                        let t = piece(id);
                        json!({"token": t, "logprob": lp, "bytes": t.as_bytes()})
                    })
                    .collect();
                let t = piece(ev.id);
                json!({"token": t, "logprob": ev.logprob, "bytes": t.as_bytes(), "top_logprobs": top})
            }
            Endpoint::Completion => {
                let top: serde_json::Map<String, Value> = ev
                    .top_logprobs
                    .iter()
                    .map(|&(id, lp)| (piece(id), json!(lp)))
                    .collect();
                json!({"token": piece(ev.id), "logprob": ev.logprob, "top": top, "offset": self.offset})
            }
        };
        self.offset += text.len();
        self.entries.push(entry);
    }

    /// Takes what was pushed since the last call, formatted.
    pub fn take(&mut self) -> Value {
        let entries = std::mem::take(&mut self.entries);
        match self.endpoint {
            Endpoint::Chat => json!({"content": entries}),
            Endpoint::Completion => json!({
                "tokens": entries.iter().map(|e| e["token"].clone()).collect::<Vec<_>>(),
                "token_logprobs": entries.iter().map(|e| e["logprob"].clone()).collect::<Vec<_>>(),
                "top_logprobs": entries.iter().map(|e| e["top"].clone()).collect::<Vec<_>>(),
                "text_offset": entries.iter().map(|e| e["offset"].clone()).collect::<Vec<_>>(),
            }),
        }
    }
}
