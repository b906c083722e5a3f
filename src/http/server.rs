//! Serves the router over HTTP/1.1 with the limits `axum::serve` does not
//! have: a deadline for the request head, an idle timeout, a cap on open
//! connections and a deadline for graceful shutdown (see `docs/security.md`,
//! "Connections"). The per-request limits (in-flight cap, body read
//! deadline) are layers in `src/http/overload.rs`.

use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};

use crate::config::HttpSettings;

/// The limits a connection is served with.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
}

impl From<&HttpSettings> for ServerLimits {
    fn from(http: &HttpSettings) -> Self {
        Self {
            header_read_timeout: http.header_read_timeout,
            idle_timeout: http.idle_timeout,
            max_connections: http.max_connections.max(1),
            shutdown_grace: http.shutdown_grace,
        }
    }
}

/// Accepts connections on `listener` and serves `router` on each (handlers
/// see the peer as `ConnectInfo<SocketAddr>`) until `shutdown` is cancelled;
/// then lets open connections finish for `shutdown_grace` and drops the rest.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
) {
    let mut make_service = router.into_make_service_with_connect_info::<SocketAddr>();
    // Each open connection holds a permit; at the cap the loop stops
    // accepting, so further clients wait in the kernel's listen backlog
    // instead of costing a task and a socket each.
    let permits = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let slots = Arc::new(Semaphore::new(permits as usize));
    let force_close = CancellationToken::new();
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // never closed
            },
            _ = shutdown.cancelled() => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    accept_failed(err).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        // Streamed answers (SSE) write small pieces after the head: without
        // this, Nagle's algorithm holds each one back until the client's
        // delayed ACK (~40 ms) arrives.
        let _ = stream.set_nodelay(true);
        let service = match make_service.call(remote).await {
            Ok(service) => service,
            Err(never) => match never {},
        };
        tokio::spawn(serve_connection(
            stream,
            service,
            limits,
            shutdown.clone(),
            force_close.clone(),
            permit,
        ));
    }
    drop(listener);

    // Every permit back means every connection is closed.
    let all_closed = slots.acquire_many(permits);
    let mut all_closed = pin!(all_closed);
    if tokio::time::timeout(limits.shutdown_grace, all_closed.as_mut())
        .await
        .is_err()
    {
        let open = permits as usize - slots.available_permits();
        tracing::warn!(
            connections = open,
            grace_ms = limits.shutdown_grace.as_millis() as u64,
            "connections still open after the shutdown grace period; dropping them"
        );
        force_close.cancel();
        let _ = all_closed.await;
    }
}

/// Out of file descriptors and the like: wait a moment rather than spin.
async fn accept_failed(err: io::Error) {
    if matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %err, "accepting a connection failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

async fn serve_connection<S>(
    stream: TcpStream,
    service: S,
    limits: ServerLimits,
    shutdown: CancellationToken,
    force_close: CancellationToken,
    _permit: OwnedSemaphorePermit,
) where
    S: Service<Request, Response = axum::response::Response, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let service = TowerToHyperService::new(
        service.map_request(|req: hyper::Request<Incoming>| req.map(Body::new)),
    );
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut connection = pin!(builder.serve_connection(io, service).with_upgrades());
    let mut draining = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.cancelled(), if !draining => {
                // Finish the request in flight, then close.
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = activity.idle_for(limits.idle_timeout) => {
                tracing::debug!(idle_ms = limits.idle_timeout.as_millis() as u64, "closing an idle connection");
                return;
            }
            _ = force_close.cancelled() => return,
        }
    }
}

/// When a byte last moved on a connection.
struct Activity {
    since: Instant,
    /// Milliseconds after `since`.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            since: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = self.since.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// Completes once nothing has moved for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = self.last_ms.load(Ordering::Relaxed);
            tokio::time::sleep_until(self.since + Duration::from_millis(last) + limit).await;
            if self.last_ms.load(Ordering::Relaxed) == last {
                return;
            }
        }
    }
}

/// A TCP stream that records when bytes move.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.touch();
        }
        poll
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(written)) if written > 0) {
            this.activity.touch();
        }
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(written)) if written > 0) {
            this.activity.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
