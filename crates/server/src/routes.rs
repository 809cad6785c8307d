//! HTTP routes: the two generation endpoints (plain and SSE), models, health, metrics.

use crate::error::ApiError;
use crate::request::{self, Endpoint, GenSpec, PromptSpec};
use crate::response::{Envelope, Logprobs};
use crate::scheduler::{Event, Job};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, StreamExt};
use moestream_engine::RunError;
use moestream_text::TemplateError;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

type St = State<Arc<AppState>>;

pub async fn chat(
    State(st): St,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generation(st, headers, body, Endpoint::Chat).await
}

pub async fn completions(
    State(st): St,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generation(st, headers, body, Endpoint::Completion).await
}

async fn generation(
    st: Arc<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    endpoint: Endpoint,
) -> Response {
    let route = match endpoint {
        Endpoint::Chat => "/v1/chat/completions",
        Endpoint::Completion => "/v1/completions",
    };
    let response = match run(&st, &headers, body, endpoint).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    st.metrics.request(route, response.status().as_u16());
    response
}

async fn run(
    st: &Arc<AppState>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    authorize(st, headers)?;
    let bytes = body.map_err(|r| {
        if crate::conn::is_body_timeout(&r) {
            ApiError::body_timeout(format!(
                "the request body did not arrive within {} s of its headers",
                st.cfg.conn.body_timeout.as_secs_f64()
            ))
        } else {
            ApiError::invalid(r.body_text()).with_status(r.status())
        }
    })?;
    let spec = request::parse(&bytes, endpoint)?;
    if let Some(name) = &spec.model {
        if name != &st.cfg.model_name {
            return Err(ApiError::model_not_found(name, &st.cfg.model_name));
        }
    }
    // Templates and tokenizers are CPU work: keep them off the async workers.
    let state = Arc::clone(st);
    let prompt_spec = spec.prompt.clone();
    let prompt = tokio::task::spawn_blocking(move || tokenize(&state, prompt_spec))
        .await
        .map_err(|e| ApiError::internal(format!("tokenizer task failed: {e}")))??;
    let max_tokens = check_lengths(st, &spec, endpoint, prompt.len())?;
    let (tx, rx) = unbounded_channel();
    let job = Job {
        prompt,
        sampling: spec.sampling.clone(),
        max_tokens,
        stop: spec.stop.clone(),
        logprobs: spec.logprobs,
        events: tx,
    };
    st.scheduler.submit(job).map_err(ApiError::busy)?;
    let env = Envelope {
        endpoint,
        id: st.next_id(endpoint),
        created: unix_now(),
        model: st.cfg.model_name.clone(),
    };
    if spec.stream {
        Ok(stream_response(st, env, spec, rx))
    } else {
        collect(st, env, spec, rx).await
    }
}

fn authorize(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &st.cfg.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if g.trim() == key => Ok(()),
        _ => Err(ApiError::unauthorized()),
    }
}

fn tokenize(st: &AppState, prompt: PromptSpec) -> Result<Vec<u32>, ApiError> {
    let engine = &st.engine;
    let ids = match prompt {
        PromptSpec::Chat {
            messages,
            tools,
            template_args,
        } => engine
            .chat_prompt(&messages, tools.as_deref(), &template_args)
            .map_err(|e| match e {
                RunError::Template(e) => template_error(st, &e),
                e => text_error(st, "messages", &e),
            })?,
        PromptSpec::Text(text) => engine
            .raw_prompt(&text)
            .map_err(|e| text_error(st, "prompt", &e))?,
        PromptSpec::Ids(ids) => {
            let vocab = engine.model().info.vocab_size;
            if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
                return Err(ApiError::invalid_param(
                    "prompt",
                    format!("token id {bad} is outside the vocabulary (size {vocab})"),
                ));
            }
            ids
        }
    };
    Ok(ids)
}

/// A chat template that failed on the request's messages: the client learns which model's
/// template (and its file, relative to the model directory) refused them and why in
/// general terms; the template engine's own message, which quotes the server's paths and
/// the template's internals, goes to the log.
fn template_error(st: &AppState, e: &TemplateError) -> ApiError {
    let name = &st.cfg.model_name;
    tracing::warn!(model = %name, "chat template failed on a request: {e}");
    let r = &st.redactor;
    match e {
        // The template's own words (a `raise_exception`), meant for the user.
        TemplateError::Raised { origin, message } => ApiError::invalid_param(
            "messages",
            format!(
                "the chat template of model '{name}' ({}) rejected the conversation: {}",
                r.relative(origin),
                r.redact(message)
            ),
        ),
        TemplateError::Render { origin, source } => ApiError::invalid_param(
            "messages",
            format!(
                "the chat template of model '{name}' ({}) could not render these messages \
                 ({}); check that every field of each message has the type OpenAI's API \
                 gives it (for example, tool_calls is an array of objects)",
                r.relative(origin),
                source.kind()
            ),
        ),
        TemplateError::ReservedVariable { .. } => {
            ApiError::invalid_param("chat_template_kwargs", r.redact(&e.to_string()))
        }
        _ => ApiError::invalid_param(
            "messages",
            format!("model '{name}': {}", r.redact(&e.to_string())),
        ),
    }
}

/// Tokenizer failures: shown without the server's paths (logged whole).
fn text_error(st: &AppState, param: &str, e: &RunError) -> ApiError {
    let detail = e.to_string();
    let shown = st.redactor.redact(&detail);
    if shown != detail {
        tracing::warn!(model = %st.cfg.model_name, "tokenizing a request failed: {detail}");
    }
    ApiError::invalid_param(param, shown)
}

/// A generation that failed inside the engine (e.g. a failed expert read): the client sees
/// the model's name and file names relative to its directory; the log gets the whole message.
fn generation_failed(st: &AppState, detail: &str) -> ApiError {
    tracing::error!(model = %st.cfg.model_name, "generation failed: {detail}");
    ApiError::internal(format!("generation failed: {}", st.redactor.redact(detail)))
}

/// Checks the prompt against the limits; returns the generation budget.
fn check_lengths(
    st: &AppState,
    spec: &GenSpec,
    endpoint: Endpoint,
    prompt: usize,
) -> Result<usize, ApiError> {
    let param = match endpoint {
        Endpoint::Chat => "messages",
        Endpoint::Completion => "prompt",
    };
    let context = st.engine.model().info.max_context;
    if prompt == 0 {
        return Err(ApiError::invalid_param(param, "the prompt is empty"));
    }
    let limit = st.cfg.max_prompt_tokens.min(context.saturating_sub(1));
    if prompt > limit {
        return Err(ApiError::invalid_param(
            param,
            format!(
                "the prompt has {prompt} tokens; this server accepts at most {limit} (context {context})"
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let room = context - prompt;
    match spec.max_tokens {
        None => Ok(room),
        Some(n) if n <= room => Ok(n),
        Some(n) => Err(ApiError::invalid_param(
            "max_tokens",
            format!(
                "max_tokens = {n} plus the prompt's {prompt} tokens exceeds the context of {context} tokens"
            ),
        )
        .with_code("context_length_exceeded")),
    }
}

async fn collect(
    st: &AppState,
    env: Envelope,
    spec: GenSpec,
    mut rx: UnboundedReceiver<Event>,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    let mut logprobs = spec.logprobs.map(|_| Logprobs::new(env.endpoint));
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Token { token, text: t } => {
                if let Some(lp) = &mut logprobs {
                    lp.push(&st.engine.text.tokenizer, &token, &t);
                }
                text.push_str(&t);
            }
            Event::Done {
                tail,
                finish,
                usage,
            } => {
                text.push_str(&tail);
                let lp = logprobs.as_mut().map(Logprobs::take);
                return Ok(Json(env.full(&text, lp, finish, usage)).into_response());
            }
            Event::Failed(msg) => return Err(generation_failed(st, &msg)),
        }
    }
    Err(ApiError::internal("the generation ended without a result"))
}

/// Server-sent events: one chunk per token, a final chunk with the finish reason, the usage
/// chunk when asked for, then `[DONE]`. Dropping the response (client gone) drops `rx`,
/// which stops the sequence.
fn stream_response(
    st: &Arc<AppState>,
    env: Envelope,
    spec: GenSpec,
    rx: UnboundedReceiver<Event>,
) -> Response {
    struct Stream {
        st: Arc<AppState>,
        env: Envelope,
        rx: UnboundedReceiver<Event>,
        logprobs: Option<Logprobs>,
        include_usage: bool,
        done: bool,
    }
    let data = |v: Value| SseEvent::default().data(v.to_string());
    let done = || SseEvent::default().data("[DONE]");
    let mut opening = Vec::new();
    if env.endpoint == Endpoint::Chat {
        opening.push(data(env.chunk("", true, None, None)));
    }
    let state = Stream {
        st: Arc::clone(st),
        logprobs: spec.logprobs.map(|_| Logprobs::new(env.endpoint)),
        env,
        rx,
        include_usage: spec.include_usage,
        done: false,
    };
    let body = stream::unfold(state, move |mut s| async move {
        if s.done {
            return None;
        }
        let mut out = Vec::new();
        match s.rx.recv().await {
            Some(Event::Token { token, text }) => {
                let lp = s.logprobs.as_mut().map(|lp| {
                    lp.push(&s.st.engine.text.tokenizer, &token, &text);
                    lp.take()
                });
                if !text.is_empty() || lp.is_some() {
                    out.push(data(s.env.chunk(&text, false, lp, None)));
                }
            }
            Some(Event::Done {
                tail,
                finish,
                usage,
            }) => {
                if !tail.is_empty() {
                    out.push(data(s.env.chunk(&tail, false, None, None)));
                }
                out.push(data(s.env.chunk("", false, None, Some(finish))));
                if s.include_usage {
                    out.push(data(s.env.usage_chunk(usage)));
                }
                out.push(done());
                s.done = true;
            }
            Some(Event::Failed(msg)) => {
                let e = generation_failed(&s.st, &msg);
                out.push(data(e.body()));
                out.push(done());
                s.done = true;
            }
            None => {
                let e = ApiError::internal("the generation ended without a result");
                out.push(data(e.body()));
                out.push(done());
                s.done = true;
            }
        }
        Some((stream::iter(out), s))
    })
    .flatten();
    let events = stream::iter(opening).chain(body).map(Ok::<_, Infallible>);
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(5)))
        .into_response()
}

pub async fn models(State(st): St, headers: HeaderMap) -> Response {
    let r = match authorize(&st, &headers) {
        Ok(()) => Json(json!({"object": "list", "data": [model_card(&st)]})).into_response(),
        Err(e) => e.into_response(),
    };
    st.metrics.request("/v1/models", r.status().as_u16());
    r
}

pub async fn model(State(st): St, headers: HeaderMap, Path(name): Path<String>) -> Response {
    let r = match authorize(&st, &headers) {
        Err(e) => e.into_response(),
        Ok(()) if name == st.cfg.model_name => Json(model_card(&st)).into_response(),
        Ok(()) => ApiError::model_not_found(&name, &st.cfg.model_name).into_response(),
    };
    st.metrics
        .request("/v1/models/{model}", r.status().as_u16());
    r
}

fn model_card(st: &AppState) -> Value {
    json!({
        "id": st.cfg.model_name,
        "object": "model",
        "created": st.started,
        "owned_by": "moestream",
        "context_length": st.engine.model().info.max_context,
    })
}

pub async fn health(State(st): St) -> Response {
    Json(json!({
        "status": "ok",
        "model": st.cfg.model_name,
        "active_sequences": st.metrics.active_sequences.load(Relaxed),
        "queue_depth": st.metrics.queue_depth.load(Relaxed),
    }))
    .into_response()
}

pub async fn metrics(State(st): St) -> Response {
    let body = st.metrics.render(&st.engine.model().experts.stats());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

pub async fn not_found(uri: Uri) -> Response {
    ApiError::not_found(uri.path()).into_response()
}

pub async fn method_not_allowed(uri: Uri) -> Response {
    ApiError::invalid(format!("method not allowed for {}", uri.path()))
        .with_status(axum::http::StatusCode::METHOD_NOT_ALLOWED)
        .into_response()
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
