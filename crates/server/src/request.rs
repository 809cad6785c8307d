//! Request bodies of `/v1/chat/completions` and `/v1/completions`: typed parsing (a wrong
//! type or an unknown field is a 400 naming the field) and range checks, ending in a
//! [`GenSpec`] the scheduler can run.

use crate::error::ApiError;
use moestream_engine::sampling::SamplingParams;
use serde::Deserialize;
use serde_json::{Map, Value};

/// The fields of both endpoints. Unknown fields are rejected (a misspelt `max_token` would
/// otherwise silently generate up to the whole context); fields OpenAI defines that do not
/// change generation here are accepted and ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionBody {
    pub model: Option<String>,
    pub messages: Option<Vec<Value>>,
    pub prompt: Option<Value>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub stop: Option<Value>,
    pub seed: Option<i64>,
    /// Chat: a boolean; completions: the number of top log-probabilities (0-5).
    pub logprobs: Option<Value>,
    pub top_logprobs: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub tools: Option<Vec<Value>>,
    pub n: Option<i64>,
    pub logit_bias: Option<Map<String, Value>>,
    pub response_format: Option<Value>,
    /// Extra chat template variables (e.g. `enable_thinking`), as vLLM accepts them.
    pub chat_template_kwargs: Option<Map<String, Value>>,
    // Accepted, no effect here.
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<Value>,
    pub user: Option<Value>,
    pub metadata: Option<Value>,
    pub store: Option<Value>,
    pub service_tier: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// Which endpoint a body came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completion,
}

/// What to feed the model.
#[derive(Clone, Debug)]
pub enum PromptSpec {
    Chat {
        messages: Vec<Value>,
        tools: Option<Vec<Value>>,
        template_args: Map<String, Value>,
    },
    Text(String),
    Ids(Vec<u32>),
}

/// A validated request.
#[derive(Clone, Debug)]
pub struct GenSpec {
    pub model: Option<String>,
    pub prompt: PromptSpec,
    pub sampling: SamplingParams,
    /// `None`: up to the end of the context.
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    /// `Some(k)`: report log-probabilities with `k` alternatives per token.
    pub logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
}

/// Parses a body: malformed JSON, wrong types and unknown fields are 400s naming the field.
pub fn parse(bytes: &[u8], endpoint: Endpoint) -> Result<GenSpec, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let body: CompletionBody = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::invalid(format!("the body is not valid JSON: {inner}"))
        } else if path == "." {
            ApiError::invalid(format!("invalid request: {inner}"))
        } else {
            ApiError::invalid_param(&path, format!("invalid value for '{path}': {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}")))?;
    validate(body, endpoint)
}

fn validate(b: CompletionBody, endpoint: Endpoint) -> Result<GenSpec, ApiError> {
    if let Some(n) = b.n {
        if n != 1 {
            return Err(ApiError::invalid_param("n", "only n = 1 is supported"));
        }
    }
    if b.logit_bias.as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(ApiError::invalid_param(
            "logit_bias",
            "logit_bias is not supported",
        ));
    }
    if let Some(rf) = &b.response_format {
        if rf.get("type").and_then(Value::as_str) != Some("text") {
            return Err(ApiError::invalid_param(
                "response_format",
                "only response_format {\"type\": \"text\"} is supported",
            ));
        }
    }
    let prompt = match endpoint {
        Endpoint::Chat => {
            if b.prompt.is_some() {
                return Err(ApiError::invalid_param(
                    "prompt",
                    "chat completions take 'messages', not 'prompt'",
                ));
            }
            let messages = b
                .messages
                .ok_or_else(|| ApiError::invalid_param("messages", "'messages' is required"))?;
            PromptSpec::Chat {
                messages: chat_messages(messages)?,
                tools: b.tools,
                template_args: b.chat_template_kwargs.unwrap_or_default(),
            }
        }
        Endpoint::Completion => {
            if b.messages.is_some() {
                return Err(ApiError::invalid_param(
                    "messages",
                    "completions take 'prompt'; use /v1/chat/completions for messages",
                ));
            }
            if b.tools.is_some() {
                return Err(ApiError::invalid_param(
                    "tools",
                    "tools need /v1/chat/completions",
                ));
            }
            completion_prompt(b.prompt)?
        }
    };
    let logprobs = match endpoint {
        Endpoint::Chat => {
            let on = match &b.logprobs {
                None | Some(Value::Null) => false,
                Some(Value::Bool(on)) => *on,
                Some(_) => {
                    return Err(ApiError::invalid_param(
                        "logprobs",
                        "'logprobs' must be a boolean",
                    ))
                }
            };
            let k = int_in("top_logprobs", b.top_logprobs, 0, 20)?;
            if k.is_some() && !on {
                return Err(ApiError::invalid_param(
                    "top_logprobs",
                    "'top_logprobs' needs 'logprobs': true",
                ));
            }
            on.then_some(k.unwrap_or(0))
        }
        Endpoint::Completion => match &b.logprobs {
            None | Some(Value::Null) => None,
            Some(v) => Some(int_in("logprobs", v.as_i64(), 0, 5)?.ok_or_else(|| {
                ApiError::invalid_param("logprobs", "'logprobs' must be an integer in 0..=5")
            })?),
        },
    };
    let max_tokens = match (b.max_completion_tokens, b.max_tokens) {
        (Some(v), _) => int_in("max_completion_tokens", Some(v), 1, i64::MAX)?,
        (None, v) => int_in("max_tokens", v, 1, i64::MAX)?,
    };
    let sampling = SamplingParams {
        temperature: b.temperature.unwrap_or(1.0),
        top_p: b.top_p.unwrap_or(1.0),
        top_k: int_in("top_k", b.top_k, 0, i64::from(u32::MAX))?.unwrap_or(0),
        min_p: b.min_p.unwrap_or(0.0),
        repetition_penalty: b.repetition_penalty.unwrap_or(1.0),
        presence_penalty: b.presence_penalty.unwrap_or(0.0),
        frequency_penalty: b.frequency_penalty.unwrap_or(0.0),
        seed: b.seed.map(|s| s as u64),
        ..Default::default()
    };
    if let Err(msg) = sampling.validate() {
        let param = msg.split_whitespace().next().unwrap_or("").to_string();
        return Err(ApiError::invalid_param(&param, msg));
    }
    if sampling.temperature > 2.0 {
        return Err(ApiError::invalid_param(
            "temperature",
            format!(
                "temperature = {} is out of range: must be in [0, 2]",
                sampling.temperature
            ),
        ));
    }
    let include_usage = match b.stream_options {
        Some(o) if b.stream != Some(true) && o.include_usage.is_some() => {
            return Err(ApiError::invalid_param(
                "stream_options",
                "'stream_options' is only allowed with 'stream': true",
            ))
        }
        Some(o) => o.include_usage.unwrap_or(false),
        None => false,
    };
    Ok(GenSpec {
        model: b.model,
        prompt,
        sampling,
        max_tokens,
        stop: stop_list(b.stop)?,
        logprobs,
        stream: b.stream.unwrap_or(false),
        include_usage,
    })
}

fn int_in(name: &str, v: Option<i64>, lo: i64, hi: i64) -> Result<Option<usize>, ApiError> {
    match v {
        None => Ok(None),
        Some(v) if (lo..=hi).contains(&v) => Ok(Some(v as usize)),
        Some(v) => Err(ApiError::invalid_param(
            name,
            if hi == i64::MAX {
                format!("'{name}' = {v} is out of range: must be >= {lo}")
            } else {
                format!("'{name}' = {v} is out of range: must be in {lo}..={hi}")
            },
        )),
    }
}

const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];

/// Checks each message and flattens text-part arrays to a string (what the templates of the
/// supported models expect).
fn chat_messages(messages: Vec<Value>) -> Result<Vec<Value>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "'messages' must contain at least one message",
        ));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let param = format!("messages[{i}]");
            let Value::Object(mut m) = m else {
                return Err(ApiError::invalid_param(
                    &param,
                    format!("{param} must be an object"),
                ));
            };
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if !ROLES.contains(&role.as_str()) {
                return Err(ApiError::invalid_param(
                    &format!("{param}.role"),
                    format!("{param}.role must be one of {}", ROLES.join(", ")),
                ));
            }
            let has_tool_calls = m.get("tool_calls").is_some_and(|t| !t.is_null());
            let content = match m.remove("content") {
                Some(Value::String(s)) => Value::String(s),
                Some(Value::Array(parts)) => Value::String(text_parts(&parts, &param)?),
                None | Some(Value::Null) if role == "assistant" && has_tool_calls => Value::Null,
                None | Some(Value::Null) => {
                    return Err(ApiError::invalid_param(
                        &format!("{param}.content"),
                        format!("{param}.content is required"),
                    ))
                }
                Some(_) => {
                    return Err(ApiError::invalid_param(
                        &format!("{param}.content"),
                        format!("{param}.content must be a string or an array of text parts"),
                    ))
                }
            };
            m.insert("content".into(), content);
            Ok(Value::Object(m))
        })
        .collect()
}

fn text_parts(parts: &[Value], param: &str) -> Result<String, ApiError> {
    let mut text = String::new();
    for p in parts {
        match (
            p.get("type").and_then(Value::as_str),
            p.get("text").and_then(Value::as_str),
        ) {
            (Some("text"), Some(t)) => text.push_str(t),
            _ => {
                return Err(ApiError::invalid_param(
                    &format!("{param}.content"),
                    "only text content parts are supported",
                ))
            }
        }
    }
    Ok(text)
}

fn completion_prompt(p: Option<Value>) -> Result<PromptSpec, ApiError> {
    let bad = || {
        ApiError::invalid_param(
            "prompt",
            "'prompt' must be a string, an array of one string, or an array of token ids",
        )
    };
    match p {
        None => Err(ApiError::invalid_param("prompt", "'prompt' is required")),
        Some(Value::String(s)) => Ok(PromptSpec::Text(s)),
        Some(Value::Array(items)) => match items.as_slice() {
            [Value::String(s)] => Ok(PromptSpec::Text(s.clone())),
            [] => Err(bad()),
            _ => items
                .iter()
                .map(|v| {
                    v.as_u64()
                        .and_then(|i| u32::try_from(i).ok())
                        .ok_or_else(bad)
                })
                .collect::<Result<Vec<u32>, _>>()
                .map(PromptSpec::Ids),
        },
        Some(_) => Err(bad()),
    }
}

/// Stop strings a request may give, and the longest one, in bytes of UTF-8. OpenAI allows 4;
/// these leave room for templates with many end markers. Matching costs the same per token
/// whatever the stop strings (see `StopMatcher`); the bound keeps what a request holds, and
/// the text held back while it might begin a stop string, small.
pub const MAX_STOP_STRINGS: usize = 16;
pub const MAX_STOP_BYTES: usize = 1024;

fn stop_list(stop: Option<Value>) -> Result<Vec<String>, ApiError> {
    let bad = || ApiError::invalid_param("stop", "'stop' must be a string or an array of strings");
    let list = match stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(bad()),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad()),
    };
    if list.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid_param(
            "stop",
            format!(
                "'stop' has {} strings; at most {MAX_STOP_STRINGS} are allowed",
                list.len()
            ),
        ));
    }
    if let Some((i, s)) = list
        .iter()
        .enumerate()
        .find(|(_, s)| s.len() > MAX_STOP_BYTES)
    {
        return Err(ApiError::invalid_param(
            "stop",
            format!(
                "stop[{i}] is {} bytes long; a stop string may have at most {MAX_STOP_BYTES} bytes",
                s.len()
            ),
        ));
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<GenSpec, ApiError> {
        parse(body.as_bytes(), Endpoint::Chat)
    }

    #[test]
    fn a_full_chat_request_parses() {
        let s = chat(
            r#"{"model":"m","messages":[{"role":"system","content":"s"},
            {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],
            "max_completion_tokens":5,"temperature":0.5,"top_p":0.9,"top_k":3,"min_p":0.1,
            "presence_penalty":0.5,"frequency_penalty":0.2,"repetition_penalty":1.1,
            "stop":["x","y"],"seed":7,"logprobs":true,"top_logprobs":2,"stream":true,
            "stream_options":{"include_usage":true}}"#,
        )
        .unwrap();
        assert_eq!(s.max_tokens, Some(5));
        assert_eq!(s.logprobs, Some(2));
        assert_eq!(s.stop, ["x", "y"]);
        assert!(s.stream && s.include_usage);
        assert_eq!(s.sampling.seed, Some(7));
        assert_eq!(s.sampling.top_k, 3);
        let PromptSpec::Chat { messages, .. } = s.prompt else {
            panic!("chat prompt")
        };
        assert_eq!(messages[1]["content"], "ab");
    }

    #[test]
    fn errors_name_the_field() {
        for (body, param) in [
            (
                r#"{"messages":[{"role":"user","content":"a"}],"max_tokens":"5"}"#,
                "max_tokens",
            ),
            (
                r#"{"messages":[{"role":"user","content":"a"}],"max_tokens":0}"#,
                "max_tokens",
            ),
            (
                r#"{"messages":[{"role":"user","content":"a"}],"temperature":3}"#,
                "temperature",
            ),
            (
                r#"{"messages":[{"role":"user","content":"a"}],"top_p":0}"#,
                "top_p",
            ),
            (
                r#"{"messages":[{"role":"user","content":"a"}],"max_token":5}"#,
                ".",
            ),
            (r#"{"messages":[]}"#, "messages"),
            (
                r#"{"messages":[{"role":"wizard","content":"a"}]}"#,
                "messages[0].role",
            ),
            (r#"{"messages":[{"role":"user"}]}"#, "messages[0].content"),
            (r#"{"messages":[{"role":"user","content":"a"}],"n":2}"#, "n"),
            (
                r#"{"messages":[{"role":"user","content":"a"}],"stop":[1]}"#,
                "stop",
            ),
            (
                r#"{"messages":[{"role":"user","content":"a"}],"logprobs":3}"#,
                "logprobs",
            ),
            (
                r#"{"messages":[{"role":"user","content":"a"}],"top_logprobs":2}"#,
                "top_logprobs",
            ),
        ] {
            let e = chat(body).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            if param == "." {
                assert!(e.message.contains("max_token"), "{}", e.message);
            } else {
                assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
            }
        }
        let e = chat("{not json").unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
    }

    #[test]
    fn completion_prompts() {
        let p = |b: &str| parse(b.as_bytes(), Endpoint::Completion).map(|s| s.prompt);
        assert!(matches!(p(r#"{"prompt":"hi"}"#), Ok(PromptSpec::Text(t)) if t == "hi"));
        assert!(matches!(p(r#"{"prompt":["hi"]}"#), Ok(PromptSpec::Text(_))));
        assert!(matches!(p(r#"{"prompt":[1,2,3]}"#), Ok(PromptSpec::Ids(v)) if v == [1, 2, 3]));
        assert!(p(r#"{"prompt":[-1]}"#).is_err());
        assert!(p(r#"{"prompt":7}"#).is_err());
        assert!(p(r#"{}"#).is_err());
        let s = parse(br#"{"prompt":"a","logprobs":2}"#, Endpoint::Completion).unwrap();
        assert_eq!(s.logprobs, Some(2));
        assert!(parse(br#"{"prompt":"a","logprobs":9}"#, Endpoint::Completion).is_err());
    }

    #[test]
    fn stop_strings_are_bounded_in_count_and_length() {
        let body = |stop: Value| {
            serde_json::json!({"messages": [{"role": "user", "content": "a"}], "stop": stop})
                .to_string()
        };
        let at_limit: Vec<String> = (0..MAX_STOP_STRINGS)
            .map(|i| format!("{i:0width$}", width = MAX_STOP_BYTES))
            .collect();
        assert_eq!(chat(&body(at_limit.clone().into())).unwrap().stop, at_limit);
        let mut too_many = at_limit.clone();
        too_many.push("x".into());
        let e = chat(&body(too_many.into())).unwrap_err();
        assert_eq!((e.status.as_u16(), e.param.as_deref()), (400, Some("stop")));
        assert!(
            e.message.contains(&MAX_STOP_STRINGS.to_string()),
            "{}",
            e.message
        );
        // Bytes, not characters: 342 three-byte characters are 1026 bytes.
        let e = chat(&body(serde_json::json!(["a", "\u{4e16}".repeat(342)]))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("stop"));
        assert!(
            e.message.contains("stop[1]") && e.message.contains(&MAX_STOP_BYTES.to_string()),
            "{}",
            e.message
        );
    }
}
