//! The load generator: one HTTP/1.1 connection per worker (hyper's
//! low-level client, no pool to contend on), closed-loop and paced runs, and
//! latency histograms per request group.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One keep-alive connection to the server.
pub struct Conn {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
}

/// A response, fully read.
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
    /// When the first byte of the body arrived (the head, for an empty body).
    pub first_byte: Instant,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, sender: None }
    }

    async fn connect(&mut self) -> anyhow::Result<&mut SendRequest<Full<Bytes>>> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("connecting to {}", self.addr))?;
            stream.set_nodelay(true)?;
            let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            self.sender = Some(sender);
        }
        Ok(self.sender.as_mut().expect("just connected"))
    }

    /// Sends one request, once: a request that fails in transit is an
    /// error for the caller to count, never sent again (a POST could be
    /// applied twice). The connection is reopened for the next request.
    pub async fn send(&mut self, req: &Req) -> anyhow::Result<Reply> {
        let result = self.try_send(req).await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn try_send(&mut self, req: &Req) -> anyhow::Result<Reply> {
        let host = self.addr.to_string();
        let sender = self.connect().await?;
        let mut builder = Request::builder()
            .method(req.method.clone())
            .uri(req.path.as_str())
            .header(HOST, host);
        if let Some(token) = &req.token {
            builder = builder.header(AUTHORIZATION, token.as_ref());
        }
        let body = match &req.body {
            Some(body) => {
                builder =
                    builder.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Full::new(body.clone())
            }
            None => Full::new(Bytes::new()),
        };
        let request = builder.body(body)?;
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let (parts, mut body) = response.into_parts();
        // Frame by frame, to know when the first one came (streamed answers).
        let mut first_byte = None;
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                if !data.is_empty() {
                    first_byte.get_or_insert_with(Instant::now);
                    bytes.extend_from_slice(&data);
                }
            }
        }
        Ok(Reply {
            status: parts.status,
            body: Bytes::from(bytes),
            first_byte: first_byte.unwrap_or_else(Instant::now),
        })
    }
}

/// A request to send, and the group its latency is recorded under.
#[derive(Clone)]
pub struct Req {
    pub method: Method,
    pub path: String,
    /// The whole `Authorization` value (`Bearer …`).
    pub token: Option<Arc<str>>,
    pub body: Option<Bytes>,
    pub group: usize,
}

impl Req {
    pub fn new(method: Method, path: impl Into<String>, token: &Arc<str>) -> Self {
        Self {
            method,
            path: path.into(),
            token: Some(token.clone()),
            body: None,
            group: 0,
        }
    }

    pub fn json(mut self, body: serde_json::Value) -> Self {
        self.body = Some(Bytes::from(body.to_string()));
        self
    }

    pub fn group(mut self, group: usize) -> Self {
        self.group = group;
        self
    }
}

/// What a scenario sends; called from every worker.
pub trait Plan: Send + Sync + 'static {
    /// The `iteration`th request of `worker`.
    fn next(&self, worker: usize, iteration: u64) -> Req;
    /// Sees each answer (e.g. to collect created ids).
    fn done(&self, _req: &Req, _reply: &Reply, _at: Instant) {}
    /// Record the time to the first byte of the body instead of the whole
    /// answer (streamed answers).
    fn first_byte(&self) -> bool {
        false
    }
}

/// Latencies and outcomes of one group of requests.
#[derive(Clone)]
pub struct Stats {
    pub latency_us: Histogram<u64>,
    pub ok: u64,
    /// Non-2xx answers and transport errors, by status (0 = transport error).
    pub errors: BTreeMap<u16, u64>,
    pub elapsed: Duration,
}

impl Stats {
    pub fn new() -> Self {
        Self {
            latency_us: Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
            ok: 0,
            errors: BTreeMap::new(),
            elapsed: Duration::ZERO,
        }
    }

    fn merge(&mut self, other: &Stats) {
        self.latency_us.add(&other.latency_us).expect("same bounds");
        self.ok += other.ok;
        for (status, count) in &other.errors {
            *self.errors.entry(*status).or_default() += count;
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn total(&self) -> u64 {
        self.ok + self.error_count()
    }

    pub fn error_rate(&self) -> f64 {
        self.error_count() as f64 / (self.total().max(1)) as f64
    }

    /// Successful requests per second.
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency at `quantile` (0–1) in milliseconds.
    pub fn ms(&self, quantile: f64) -> f64 {
        self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "requests": self.total(),
            "ok": self.ok,
            "errors": self.error_count(),
            "errors_by_status": self.errors.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
            "error_rate": self.error_rate(),
            "seconds": self.elapsed.as_secs_f64(),
            "throughput_rps": self.throughput(),
            "p50_ms": self.ms(0.5),
            "p90_ms": self.ms(0.9),
            "p99_ms": self.ms(0.99),
            "p999_ms": self.ms(0.999),
            "max_ms": self.latency_us.max() as f64 / 1000.0,
            "mean_ms": self.latency_us.mean() / 1000.0,
        })
    }
}

/// How long a run lasts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Answers before this are not recorded.
    pub warmup: Duration,
    /// Measured time after the warm-up.
    pub measure: Duration,
    /// Stop a worker after this many requests (setup runs), if given.
    pub per_worker: Option<u64>,
}

impl Limits {
    pub fn timed(warmup: Duration, measure: Duration) -> Self {
        Self {
            warmup,
            measure,
            per_worker: None,
        }
    }

    /// A fixed amount of work, bounded by `max` all the same.
    pub fn count(per_worker: u64, max: Duration) -> Self {
        Self {
            warmup: Duration::ZERO,
            measure: max,
            per_worker: Some(per_worker),
        }
    }
}

/// `concurrency` workers, each sending its next request as soon as the
/// previous one is answered. Returns one [`Stats`] per group (`groups` of them).
pub async fn closed_loop(
    addr: SocketAddr,
    concurrency: usize,
    limits: Limits,
    groups: usize,
    plan: Arc<dyn Plan>,
) -> Vec<Stats> {
    let start = Instant::now();
    let measure_from = start + limits.warmup;
    let deadline = measure_from + limits.measure;
    let mut handles = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let plan = plan.clone();
        handles.push(tokio::spawn(async move {
            let mut conn = Conn::new(addr);
            let mut stats = vec![Stats::new(); groups];
            let first_byte = plan.first_byte();
            let mut iteration = 0u64;
            loop {
                let now = Instant::now();
                if now >= deadline || limits.per_worker.is_some_and(|n| iteration >= n) {
                    break;
                }
                let req = plan.next(worker, iteration);
                iteration += 1;
                let sent = Instant::now();
                let result = tokio::time::timeout(Duration::from_secs(30), conn.send(&req)).await;
                let answered = Instant::now();
                let (status, measured) = match &result {
                    Ok(Ok(reply)) => {
                        plan.done(&req, reply, answered);
                        let until = if first_byte {
                            reply.first_byte
                        } else {
                            answered
                        };
                        (reply.status.as_u16(), until - sent)
                    }
                    _ => (0, answered - sent),
                };
                if sent < measure_from || answered > deadline && limits.per_worker.is_none() {
                    continue;
                }
                let group = &mut stats[req.group.min(groups - 1)];
                if (200..300).contains(&status) {
                    let us = measured.as_micros().max(1) as u64;
                    group.latency_us.saturating_record(us);
                    group.ok += 1;
                } else {
                    *group.errors.entry(status).or_default() += 1;
                }
            }
            stats
        }));
    }
    let mut merged = vec![Stats::new(); groups];
    for handle in handles {
        if let Ok(stats) = handle.await {
            for (total, part) in merged.iter_mut().zip(&stats) {
                total.merge(part);
            }
        }
    }
    let elapsed = match limits.per_worker {
        Some(_) => start.elapsed(),
        None => limits.measure,
    };
    for stats in &mut merged {
        stats.elapsed = elapsed;
    }
    merged
}

/// `workers` connections sending `rate` requests per second in total, each on
/// its own fixed schedule (a late answer delays only its own worker).
///
/// Latency is measured from when a request was due on that schedule, not
/// from when it was sent: a request held back because the previous answer
/// came late has waited too, and leaving that wait out (coordinated
/// omission) would hide exactly the stalls a paced run is meant to show.
pub async fn paced(
    addr: SocketAddr,
    workers: usize,
    rate: f64,
    duration: Duration,
    plan: Arc<dyn Plan>,
) -> Stats {
    let start = Instant::now();
    let deadline = start + duration;
    let interval = Duration::from_secs_f64(workers as f64 / rate.max(1.0));
    let mut handles = Vec::with_capacity(workers);
    for worker in 0..workers {
        let plan = plan.clone();
        handles.push(tokio::spawn(async move {
            let mut conn = Conn::new(addr);
            let mut stats = Stats::new();
            let offset = interval.mul_f64(worker as f64 / workers as f64);
            let mut due = start + offset;
            let mut iteration = 0u64;
            while due < deadline {
                tokio::time::sleep_until(due.into()).await;
                let req = plan.next(worker, iteration);
                iteration += 1;
                match tokio::time::timeout(Duration::from_secs(30), conn.send(&req)).await {
                    Ok(Ok(reply)) if reply.status.is_success() => {
                        let answered = Instant::now();
                        plan.done(&req, &reply, answered);
                        stats.latency_us.saturating_record(
                            answered.saturating_duration_since(due).as_micros().max(1) as u64,
                        );
                        stats.ok += 1;
                    }
                    Ok(Ok(reply)) => *stats.errors.entry(reply.status.as_u16()).or_default() += 1,
                    _ => *stats.errors.entry(0).or_default() += 1,
                }
                due += interval;
            }
            stats
        }));
    }
    let mut merged = Stats::new();
    for handle in handles {
        if let Ok(stats) = handle.await {
            merged.merge(&stats);
        }
    }
    merged.elapsed = duration;
    merged
}

/// One request, outside any measurement (setup, registration).
pub async fn once(addr: SocketAddr, req: &Req) -> anyhow::Result<Reply> {
    Conn::new(addr).send(req).await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Reads one request head (the tests send no bodies); false at EOF.
    async fn read_head(stream: &mut TcpStream) -> bool {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return false,
            }
        }
        true
    }

    struct Get;

    impl Plan for Get {
        fn next(&self, _worker: usize, _iteration: u64) -> Req {
            Req::new(Method::GET, "/", &Arc::from("Bearer x"))
        }
    }

    #[tokio::test]
    async fn a_request_whose_connection_breaks_is_an_error_and_is_not_sent_again() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(AtomicUsize::new(0));
        let counter = received.clone();
        tokio::spawn(async move {
            // Reads each request, then hangs up without answering.
            while let Ok((mut stream, _)) = listener.accept().await {
                if read_head(&mut stream).await {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        let mut conn = Conn::new(addr);
        let req = Req::new(Method::POST, "/v1/tasks", &Arc::from("Bearer x"));
        assert!(
            conn.send(&req).await.is_err(),
            "a broken answer is an error"
        );
        assert_eq!(received.load(Ordering::SeqCst), 1, "sent exactly once");
        // The next request gets a fresh connection.
        assert!(conn.send(&req).await.is_err());
        assert_eq!(received.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_paced_request_held_back_by_a_slow_answer_counts_its_wait_from_when_it_was_due() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            // Every answer takes 40 ms.
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    while read_head(&mut stream).await {
                        tokio::time::sleep(Duration::from_millis(40)).await;
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                        if stream.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        // One worker due every 10 ms for 300 ms: each request is sent ~30 ms
        // later than the last, so the last ones waited ~200 ms before they
        // could even be sent. Timed from sending, every latency is ~40 ms.
        let stats = paced(addr, 1, 100.0, Duration::from_millis(300), Arc::new(Get)).await;
        assert!(stats.ok >= 5, "{} answers", stats.ok);
        assert_eq!(stats.error_count(), 0);
        assert!(
            stats.latency_us.max() >= 150_000,
            "max {} us: the wait before sending is left out",
            stats.latency_us.max()
        );
        assert!(
            stats.latency_us.min() < 80_000,
            "the first was sent on time"
        );
    }
}
