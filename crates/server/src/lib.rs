//! `moestream serve`: an OpenAI-compatible HTTP server.
//!
//! Handlers (async, on tokio) parse and check requests, tokenize, and hand a [`scheduler::Job`]
//! to the scheduler thread, which owns the model and batches every active sequence into one
//! forward pass per step; tokens come back to the handler over a channel and go out as JSON or
//! server-sent events.

pub mod conn;
pub mod error;
pub mod metrics;
pub mod prompt_cache;
pub mod redact;
pub mod request;
pub mod response;
mod routes;
pub mod scheduler;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
pub use conn::ConnLimits;
use metrics::Metrics;
use moestream_engine::Engine;
use request::Endpoint;
pub use scheduler::Placement;
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
    /// Connection timeouts and cap.
    pub conn: ConnLimits,
}

pub struct AppState {
    pub engine: Arc<Engine>,
    pub cfg: ServeConfig,
    pub metrics: Arc<Metrics>,
    scheduler: SchedulerHandle,
    /// Keeps the model directories out of what clients see.
    pub redactor: redact::Redactor,
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

/// The router with its state (starts the scheduler thread), the model on the CPU.
pub fn app(engine: Arc<Engine>, cfg: ServeConfig) -> (Router, Arc<AppState>) {
    app_on(engine, Placement::Cpu, cfg)
}

/// [`app`] with the forward passes where `placement` says.
pub fn app_on(
    engine: Arc<Engine>,
    placement: Placement,
    cfg: ServeConfig,
) -> (Router, Arc<AppState>) {
    let metrics = Arc::new(Metrics::default());
    let scheduler = scheduler::start(
        Arc::clone(&engine),
        placement,
        cfg.scheduler.clone(),
        Arc::clone(&metrics),
    );
    let mut dirs = vec![(engine.model_dir.as_path(), cfg.model_name.as_str())];
    if let Some(d) = &engine.draft_dir {
        dirs.push((d.as_path(), "draft-model"));
    }
    let redactor = redact::Redactor::new(dirs);
    let state = Arc::new(AppState {
        redactor,
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

/// Serves on `listener` until Ctrl-C (then lets requests in flight finish), the forward
/// passes where `placement` says.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    placement: Placement,
    cfg: ServeConfig,
) -> std::io::Result<()> {
    let (router, state) = app_on(engine, placement, cfg);
    serve_router(listener, router, &state, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}

/// Serves a router made by [`app`] on `listener` with the connection limits of its
/// configuration, until `shutdown` resolves.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    state: &AppState,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    conn::serve(
        listener,
        router,
        state.cfg.conn.clone(),
        Arc::clone(&state.metrics),
        shutdown,
    )
    .await
}
