//! `moestream serve`: the OpenAI-compatible HTTP server.

use crate::load::ModelArgs;
use crate::sys;
use anyhow::{Context, Result};
use clap::Args;
use moestream_engine::generate::PREFILL_CHUNK;
use moestream_server::scheduler::SchedulerConfig;
use moestream_server::{ConnLimits, Placement, ServeConfig};
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to bind (loopback by default: the API has no TLS).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/* (also read from MOESTREAM_API_KEY).
    #[arg(long, env = "MOESTREAM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The model's name in the API (default: the model directory's name).
    #[arg(long)]
    model_name: Option<String>,
    /// Sequences decoded together in one batched forward pass.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    max_concurrent: u32,
    /// Requests that may wait for a slot; beyond that new requests get 503.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Longest prompt accepted (default: the model's context minus one).
    #[arg(long)]
    max_prompt_tokens: Option<usize>,
    /// Prompt-cache entries kept (0 disables the prompt cache).
    #[arg(long, default_value_t = 8)]
    prompt_cache_entries: usize,
    /// Memory the prompt cache may hold, in MiB.
    #[arg(long, default_value_t = 2048)]
    prompt_cache_mib: usize,
    /// Largest request body, in bytes (larger ones get 413).
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Seconds a request's headers may take from its first byte (and a new connection may
    /// stay silent); slower connections are closed.
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    header_timeout: f64,
    /// Seconds a request's body may take after its headers (then 408 and close).
    #[arg(long, default_value_t = 30.0, value_parser = seconds)]
    body_timeout: f64,
    /// Seconds a kept-alive connection may sit between requests, or a client may leave its
    /// response unread, before it is closed.
    #[arg(long, default_value_t = 60.0, value_parser = seconds)]
    idle_timeout: f64,
    /// Open connections; more get 503 and are closed (default: 1024, or fewer to fit the
    /// open-file limit with room for the model's files).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: Option<u32>,
}

fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!("'{s}' is not a number of seconds in (0, 86400]")),
    }
}

/// Room left under the open-file limit for connections: 1024 at most, keeping 32
/// descriptors for the server's own use (files, the scheduler, over-cap answers).
fn default_max_connections() -> usize {
    let (Some(limit), Some(open)) = (sys::open_files_limit(), sys::open_files()) else {
        return 1024;
    };
    limit.saturating_sub(open + 32).clamp(1, 1024) as usize
}

pub fn run(args: ServeArgs) -> Result<()> {
    let dir = args.model.dir()?;
    let gpu = args.model.gpu()?;
    let engine = Arc::new(args.model.load()?);
    let placement = match gpu {
        None => Placement::Cpu,
        Some(gpu) => {
            if args.prompt_cache_entries > 0 {
                eprintln!("note: no prompt cache with --device cuda yet");
            }
            Placement::Cuda(Box::new(ModelArgs::to_gpu(&engine, gpu)?))
        }
    };
    let model_name = args.model_name.clone().unwrap_or_else(|| {
        dir.file_name()
            .map_or("model".into(), |n| n.to_string_lossy().into_owned())
    });
    let context = engine.model().info.max_context;
    let cfg = ServeConfig {
        model_name: model_name.clone(),
        api_key: args.api_key.filter(|k| !k.is_empty()),
        max_prompt_tokens: args.max_prompt_tokens.unwrap_or(context),
        max_body_bytes: args.max_body_bytes,
        scheduler: SchedulerConfig {
            max_batch: args.max_concurrent as usize,
            max_queue: args.max_queue,
            prefill_chunk: PREFILL_CHUNK,
            prompt_cache_entries: args.prompt_cache_entries,
            prompt_cache_bytes: args.prompt_cache_mib << 20,
        },
        conn: ConnLimits {
            header_timeout: Duration::from_secs_f64(args.header_timeout),
            body_timeout: Duration::from_secs_f64(args.body_timeout),
            idle_timeout: Duration::from_secs_f64(args.idle_timeout),
            max_connections: args
                .max_connections
                .map_or_else(default_max_connections, |n| n as usize),
        },
    };
    // Client errors are logged whole here (clients get them without the server's paths).
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .with_target(false)
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let addr = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        eprintln!(
            "serving '{model_name}' on http://{local} (batch {}, queue {}, context {context}, \
             connections {}, timeouts header {} s / body {} s / idle {} s{})",
            cfg.scheduler.max_batch,
            cfg.scheduler.max_queue,
            cfg.conn.max_connections,
            args.header_timeout,
            args.body_timeout,
            args.idle_timeout,
            if cfg.api_key.is_some() {
                ", API key required"
            } else {
                ""
            }
        );
        moestream_server::serve(listener, engine, placement, cfg)
            .await
            .context("serving")
    })
}
