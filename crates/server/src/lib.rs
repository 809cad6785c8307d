//! `moestream serve`: an OpenAI-compatible HTTP server.
//!
//! Handlers (async, on tokio) parse and check requests, tokenize, and hand a [`scheduler::Job`]
//! to the scheduler thread, which owns the model and batches every active sequence into one
//! forward pass per step; tokens come back to the handler over a channel and go out as JSON or
//! server-sent events.

pub mod error;
pub mod metrics;
pub mod prompt_cache;
pub mod request;
pub mod response;
mod routes;
pub mod scheduler;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use metrics::Metrics;
use moestream_engine::Engine;
use request::Endpoint;
use scheduler::{SchedulerConfig, SchedulerHandle};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The name clients use in `model` (requests naming another model get a 404).
    pub model_name: String,
    /// When set, `/v1/*` needs `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    pub max_prompt_tokens: usize,
    /// Larger request bodies get a 413.
    pub max_body_bytes: usize,
    pub scheduler: SchedulerConfig,
}

pub struct AppState {
    pub engine: Arc<Engine>,
    pub cfg: ServeConfig,
    pub metrics: Arc<Metrics>,
    scheduler: SchedulerHandle,
    started: u64,
    ids: AtomicU64,
}

impl AppState {
    fn next_id(&self, endpoint: Endpoint) -> String {
        let n = self.ids.fetch_add(1, Relaxed);
        let prefix = match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completion => "cmpl",
        };
        format!("{prefix}-{:x}{n:06x}", self.started)
    }
}

/// The router with its state (starts the scheduler thread).
pub fn app(engine: Arc<Engine>, cfg: ServeConfig) -> (Router, Arc<AppState>) {
    let metrics = Arc::new(Metrics::default());
    let scheduler = scheduler::start(
        Arc::clone(&engine),
        cfg.scheduler.clone(),
        Arc::clone(&metrics),
    );
    let state = Arc::new(AppState {
        engine,
        metrics,
        scheduler,
        started: routes::unix_now(),
        ids: AtomicU64::new(0),
        cfg: cfg.clone(),
    });
    let router = Router::new()
        .route("/v1/chat/completions", post(routes::chat))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/models", get(routes::models))
        .route("/v1/models/{model}", get(routes::model))
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(cfg.max_body_bytes))
        .with_state(Arc::clone(&state));
    (router, state)
}

/// Serves on `listener` until Ctrl-C.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    cfg: ServeConfig,
) -> std::io::Result<()> {
    let (router, _) = app(engine, cfg);
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
