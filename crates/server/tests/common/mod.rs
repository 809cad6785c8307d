//! A server on an ephemeral loopback port over the embedded tiny model, and a minimal
//! HTTP/1.1 client (raw sockets: the error tests need to send what a library would refuse).

#![allow(dead_code)]

use moestream_engine::generate::PREFILL_CHUNK;
use moestream_engine::{Engine, LoadOptions};
use moestream_server::scheduler::SchedulerConfig;
use moestream_server::{AppState, ConnLimits, ServeConfig};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The embedded model, loaded once per test binary.
pub fn engine() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    Arc::clone(ENGINE.get_or_init(|| {
        let opts = LoadOptions {
            threads: Some(2),
            warm: false,
            ..Default::default()
        };
        let dir = repo_root().join("models/tiny-qwen3-moe");
        Arc::new(Engine::load(&dir, &opts, &mut |_| {}).expect("the tiny model loads"))
    }))
}

pub fn config() -> ServeConfig {
    ServeConfig {
        model_name: "tiny".into(),
        api_key: None,
        max_prompt_tokens: 4096,
        max_body_bytes: 64 << 10,
        scheduler: SchedulerConfig {
            max_batch: 8,
            max_queue: 32,
            prefill_chunk: PREFILL_CHUNK,
            prompt_cache_entries: 4,
            prompt_cache_bytes: 256 << 20,
        },
        conn: ConnLimits::default(),
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    _runtime: tokio::runtime::Runtime,
}

pub fn start(cfg: ServeConfig) -> TestServer {
    start_with(engine(), cfg)
}

/// A server over another model.
pub fn start_with(engine: Arc<Engine>, cfg: ServeConfig) -> TestServer {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let (router, state) = moestream_server::app(engine, cfg);
    let served = Arc::clone(&state);
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        moestream_server::serve_router(listener, router, &served, std::future::pending())
            .await
            .unwrap();
    });
    TestServer {
        addr,
        state,
        _runtime: runtime,
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The `data:` payloads of a server-sent event stream.
    pub fn events(&self) -> Vec<String> {
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }
}

/// Sends one request and reads the whole reply (`Connection: close`).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) before reading everything; a reset then is fine.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_reply(&raw)
}

pub fn post(addr: SocketAddr, path: &str, body: &str) -> Reply {
    request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

pub fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, &[], b"")
}

fn parse_reply(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Reply {
        status,
        headers: head.to_string(),
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Opens a streaming request and returns a reader positioned at the body.
pub fn open_stream(addr: SocketAddr, path: &str, body: &str) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    r
}

/// Reads lines until `n` SSE `data:` lines have arrived.
pub fn read_events(r: &mut BufReader<TcpStream>, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    let mut line = String::new();
    while got.len() < n {
        line.clear();
        if r.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(d) = line.trim_end().strip_prefix("data: ") {
            got.push(d.to_string());
        }
    }
    got
}
