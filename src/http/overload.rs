//! Load shedding: a cap on requests in flight beyond which the API answers
//! 503 at once instead of queueing, and a deadline for a request body, so a
//! client that trickles (or stops sending) its body cannot hold a handler,
//! its memory and its connection for long. See `docs/security.md`, "Load
//! shedding", and `docs/architecture.md`, "Overload".

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};

use crate::http::error::ApiError;

/// Routes a load balancer or a scraper calls to learn the process's state:
/// they must answer precisely when it is overloaded, and cost next to nothing.
const EXEMPT: &[&str] = &["/health", "/ready", "/metrics"];

/// The in-flight budget shared by every route of one router.
#[derive(Clone)]
pub struct InFlight {
    slots: Arc<Semaphore>,
}

impl InFlight {
    pub fn new(max: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))),
        }
    }
}

/// Admits a request while fewer than the cap are in flight; beyond, answers
/// 503 `UNAVAILABLE` with `Retry-After` at once. A slot is held until the
/// answer's head is ready: a streamed body (SSE, NDJSON, a WebSocket after
/// its upgrade) runs on its own budget (stream slots, feeds per user), not
/// on this one, or a few long streams would starve every short request.
pub async fn shed_beyond_in_flight_cap(
    State(in_flight): State<InFlight>,
    request: Request,
    next: Next,
) -> Response {
    if EXEMPT.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let Ok(_slot) = in_flight.slots.clone().try_acquire_owned() else {
        metrics::counter!("chronicle_http_requests_shed_total").increment(1);
        return ApiError::Unavailable("the server is overloaded; try again shortly".into())
            .into_response();
    };
    next.run(request).await
}

/// Gives a request's body `limit` from now to arrive in full. When it has
/// not, the body fails (so the handler's extractor gives up), and the answer
/// is 503 `UNAVAILABLE` with `Connection: close`: hyper does not wait for
/// the rest of an unread body, it closes the connection. (408 would say it
/// better, but API.md's list of error codes has none for it; the request
/// timeout has always answered a slow request with 503.)
pub async fn body_read_deadline(
    State(limit): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let timed_out = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + limit;
    let flag = timed_out.clone();
    let request = request.map(|inner| {
        Body::new(DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            timed_out: flag,
        })
    });
    let response = next.run(request).await;
    if !timed_out.load(Ordering::Relaxed) {
        return response;
    }
    metrics::counter!("chronicle_http_body_timeouts_total").increment(1);
    tracing::debug!(
        limit_ms = limit.as_millis() as u64,
        "request body did not arrive in time"
    );
    let mut response =
        ApiError::Unavailable("the request body did not arrive in time".into()).into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A request body that fails once its deadline passes.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
    timed_out: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within the body read timeout")]
struct BodyTimedOut;

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if this.timed_out.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))));
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.timed_out.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
