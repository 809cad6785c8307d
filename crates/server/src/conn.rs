//! The connection layer under the router: accepts TCP connections, caps how many are open,
//! and closes those that hold a slot without using it.
//!
//! Every connection is in one phase at a time, and each phase but one has a deadline:
//!
//! * **fresh** (accepted, nothing received yet) and **headers** (the first bytes of a request
//!   arrived, not all its headers): the headers must be complete within `header_timeout` of
//!   the accept or of the request's first byte;
//! * **busy** (a request is being handled, from its complete headers to the last byte of its
//!   response): no connection deadline, but its body must arrive within `body_timeout` of the
//!   headers ([`TimedBody`]; the handler answers 408), and a client that stops reading the
//!   response (a write blocked for `idle_timeout`) is closed;
//! * **idle** (between requests on a kept-alive connection): closed after `idle_timeout`.
//!
//! A connection over `max_connections` is answered with a 503 `server_busy` (with
//! `Retry-After`) and closed; past a few such answers in flight, it is closed at once. An
//! accept that fails (out of file descriptors) is retried after a short pause instead of
//! spinning.

use crate::error::ApiError;
use crate::metrics::Metrics;
use axum::body::{Body, Bytes};
use axum::Router;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{sleep_until, Instant, Sleep};
use tower_service::Service;

/// How long a connection may take at each step, and how many may be open.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// A request's headers must be complete within this of its first byte (or, on a new
    /// connection, of the accept).
    pub header_timeout: Duration,
    /// A request's body must be complete within this of its headers (else 408 and close).
    pub body_timeout: Duration,
    /// A kept-alive connection with no request closes after this; so does one whose client
    /// has not read its response for this long.
    pub idle_timeout: Duration,
    /// Open connections; more get a 503 and are closed.
    pub max_connections: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
        }
    }
}

/// Over-cap connections being answered at once; beyond this they are closed unanswered, so
/// that a flood cannot use more file descriptors than these.
const MAX_REJECTING: usize = 16;

/// Serves `router` on `listener` under `limits` until `shutdown` resolves; then stops
/// accepting, lets each connection finish its request, and returns once all are closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let max = limits
        .max_connections
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let slots = Arc::new(Semaphore::new(max));
    let rejecting = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Most likely out of file descriptors: wait for some to close.
                    tracing::warn!("accepting a connection failed: {e}; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(connection(
                    stream,
                    permit,
                    router.clone(),
                    limits.clone(),
                    Arc::clone(&metrics),
                    stop_rx.clone(),
                ));
            }
            Err(_) => {
                metrics.rejected_connections.fetch_add(1, Relaxed);
                if rejecting.fetch_add(1, Relaxed) < MAX_REJECTING {
                    let rejecting = Arc::clone(&rejecting);
                    tokio::spawn(async move {
                        reject(stream, max).await;
                        rejecting.fetch_sub(1, Relaxed);
                    });
                } else {
                    rejecting.fetch_sub(1, Relaxed);
                    drop(stream);
                }
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a slot until it closes.
    let _ = slots.acquire_many(max as u32).await;
    Ok(())
}

/// Errors of one connection (reset before it was accepted...), not of the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Answers a connection over the cap with a 503 and closes it, within a quarter second.
async fn reject(mut stream: TcpStream, max: usize) {
    let response = over_capacity_response(max);
    let _ = tokio::time::timeout(Duration::from_millis(250), async {
        stream.write_all(&response).await?;
        stream.shutdown().await?;
        // Read the request the client sent, so that closing does not reset the connection
        // (which would discard the answer before the client reads it).
        let mut buf = [0u8; 4096];
        let mut left = 64usize << 10;
        while left > 0 {
            match stream.read(&mut buf).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        Ok::<_, io::Error>(())
    })
    .await;
}

/// The raw HTTP/1.1 503 sent to a connection over the cap.
fn over_capacity_response(max: usize) -> Vec<u8> {
    let body = ApiError::busy_connections(max).body().to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        crate::error::RETRY_AFTER_SECS,
        body.len()
    )
    .into_bytes()
}

/// One connection: hyper's HTTP/1.1 state machine plus a watchdog for the phase deadlines.
async fn connection(
    stream: TcpStream,
    permit: OwnedSemaphorePermit,
    router: Router,
    limits: ConnLimits,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    metrics.open_connections.fetch_add(1, Relaxed);
    let track = Arc::new(Track::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        track: Arc::clone(&track),
    });
    let service = {
        let track = Arc::clone(&track);
        let body_timeout = limits.body_timeout;
        let metrics = Arc::clone(&metrics);
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let guard = Track::begin(&track);
            let req = req.map(|b| TimedBody::new(b, body_timeout, Arc::clone(&metrics)));
            let mut router = router.clone();
            async move {
                let response = router.call(req).await?;
                Ok::<_, Infallible>(response.map(|inner| GuardedBody {
                    inner,
                    _guard: guard,
                }))
            }
        })
    };
    let mut builder = http1::Builder::new();
    // The watchdog below replaces hyper's header timer, which would also cut idle time.
    builder.header_read_timeout(None).keep_alive(true);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        let deadline = track.deadline(&limits);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("connection closed: {e}");
                }
                break;
            }
            () = track.changed.notified() => {}
            () = sleep_until_some(deadline.map(|(at, _)| at)) => {
                if let Some((at, late)) = track.deadline(&limits) {
                    if at <= Instant::now() {
                        let counter = match late {
                            Late::Header => &metrics.header_timeouts,
                            Late::Idle => &metrics.idle_timeouts,
                            Late::Send => &metrics.send_timeouts,
                        };
                        counter.fetch_add(1, Relaxed);
                        tracing::debug!("closing a connection: {late:?} timeout");
                        break;
                    }
                }
            }
            _ = stop.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    metrics.open_connections.fetch_sub(1, Relaxed);
    drop(permit);
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Which deadline ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Late {
    Header,
    Idle,
    Send,
}

/// Where a connection is, for its deadlines (see the module's doc).
#[derive(Clone, Copy, Debug)]
enum Phase {
    Fresh(Instant),
    Headers(Instant),
    Busy,
    Idle(Instant),
}

struct TrackState {
    phase: Phase,
    /// Requests between their complete headers and the end of their response.
    in_flight: usize,
    /// Since when a write has been waiting for the client to read.
    send_blocked: Option<Instant>,
}

/// A connection's phase, updated by its socket ([`Watched`]) and its requests ([`Guard`]);
/// `changed` wakes the watchdog when a deadline may have moved earlier.
struct Track {
    state: Mutex<TrackState>,
    changed: Notify,
}

impl Track {
    fn new() -> Self {
        Track {
            state: Mutex::new(TrackState {
                phase: Phase::Fresh(Instant::now()),
                in_flight: 0,
                send_blocked: None,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TrackState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The earliest deadline now in force, and what it is for.
    fn deadline(&self, limits: &ConnLimits) -> Option<(Instant, Late)> {
        let s = self.lock();
        let phase = match s.phase {
            Phase::Fresh(t) | Phase::Headers(t) => Some((t + limits.header_timeout, Late::Header)),
            Phase::Idle(t) => Some((t + limits.idle_timeout, Late::Idle)),
            Phase::Busy => None,
        };
        let send = s
            .send_blocked
            .map(|t| (t + limits.idle_timeout, Late::Send));
        match (phase, send) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// Bytes arrived: on a fresh or idle connection, a request has begun.
    fn received(&self) {
        let mut s = self.lock();
        if let Phase::Fresh(_) | Phase::Idle(_) = s.phase {
            s.phase = Phase::Headers(Instant::now());
            drop(s);
            self.changed.notify_one();
        }
    }

    fn send_blocked(&self, blocked: bool) {
        let mut s = self.lock();
        match (blocked, s.send_blocked) {
            (true, None) => {
                s.send_blocked = Some(Instant::now());
                drop(s);
                self.changed.notify_one();
            }
            (false, Some(_)) => s.send_blocked = None,
            _ => {}
        }
    }

    /// A request's headers are complete: the connection is busy until the guard drops.
    fn begin(track: &Arc<Track>) -> Guard {
        let mut s = track.lock();
        s.in_flight += 1;
        s.phase = Phase::Busy;
        drop(s);
        track.changed.notify_one();
        Guard(Arc::clone(track))
    }
}

/// Held by a request from its headers to the end of its response (dropped with the
/// response body, or with the handler's future if the connection dies first).
struct Guard(Arc<Track>);

impl Drop for Guard {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.in_flight -= 1;
        if s.in_flight == 0 {
            s.phase = Phase::Idle(Instant::now());
            drop(s);
            self.0.changed.notify_one();
        }
    }
}

/// The socket, reporting arrivals and blocked writes to the connection's [`Track`].
struct Watched {
    inner: TcpStream,
    track: Arc<Track>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.track.received();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.track.send_blocked(r.is_pending());
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.track.send_blocked(r.is_pending());
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that keeps its request's [`Guard`] until the body is done.
struct GuardedBody {
    inner: Body,
    _guard: Guard,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The request body did not arrive within `body_timeout` of the headers.
#[derive(Debug)]
pub struct BodyTimeout(pub Duration);

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not arrive within {} s",
            self.0.as_secs_f64()
        )
    }
}

impl std::error::Error for BodyTimeout {}

/// A request body that fails with [`BodyTimeout`] once its deadline has passed.
struct TimedBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
    limit: Duration,
    metrics: Arc<Metrics>,
    expired: bool,
}

impl TimedBody {
    fn new(inner: Incoming, limit: Duration, metrics: Arc<Metrics>) -> Self {
        TimedBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(limit)),
            limit,
            metrics,
            expired: false,
        }
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.expired {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.expired = true;
            self.metrics.body_timeouts.fetch_add(1, Relaxed);
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(self.limit)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `e` (or what caused it) is a [`BodyTimeout`].
pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(e) = current {
        if e.is::<BodyTimeout>() {
            return true;
        }
        current = e.source();
    }
    false
}
