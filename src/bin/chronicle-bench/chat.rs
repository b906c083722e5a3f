//! The chat scenarios: `/v1/chat/completions` through Chronicle next to the
//! same requests sent straight to the fake upstream, exchanges recorded in
//! sessions, a check that a stream relays each chunk as it arrives, and
//! many open `GET /v1/sessions/{id}/events` streams on one process.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::header::{ACCEPT, AUTHORIZATION, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::env::User;
use crate::fake_upstream::{PacedLog, PACED_CHUNKS, PACED_GAP, UPSTREAM_MODEL};
use crate::load::{closed_loop, once, Plan, Req, Stats};
use crate::scenarios::Bench;

/// The model id the bench server is configured with (`CHRONICLE_MODELS`).
pub const MODEL: &str = "bench";
/// Clients of the chat scenarios.
pub const CLIENTS: usize = 16;

/// The same completion request, to Chronicle (with a user's token) or
/// straight to the upstream (with the upstream's model name).
struct CompletionPlan {
    tokens: Vec<Arc<str>>,
    model: &'static str,
    stream: bool,
}

impl Plan for CompletionPlan {
    fn next(&self, worker: usize, iteration: u64) -> Req {
        let token = &self.tokens[worker % self.tokens.len()];
        Req::new(Method::POST, "/v1/chat/completions", token).json(json!({
            "model": self.model,
            "messages": [{"role": "user", "content": format!("bench question {worker}-{iteration}")}],
            "stream": self.stream,
        }))
    }

    fn first_byte(&self) -> bool {
        self.stream
    }
}

/// Direct and through-Chronicle figures at one concurrency.
pub struct CompletionRun {
    pub clients: usize,
    pub direct: Stats,
    pub chronicle: Stats,
    pub direct_stream: Stats,
    pub chronicle_stream: Stats,
}

/// Direct, then through Chronicle, alternating so both see similar load.
pub async fn completions(b: &Bench, upstream: SocketAddr, clients: usize) -> CompletionRun {
    let tokens: Vec<Arc<str>> = b.users.iter().map(|u| u.auth.clone()).collect();
    let upstream_key: Vec<Arc<str>> = vec![Arc::from("Bearer sk-bench-not-a-secret")];
    let run = |addr, tokens: Vec<Arc<str>>, model, stream| async move {
        let plan = Arc::new(CompletionPlan {
            tokens,
            model,
            stream,
        });
        closed_loop(addr, clients, b.sizes.timed(), 1, plan)
            .await
            .pop()
            .expect("one group")
    };
    let direct = run(upstream, upstream_key.clone(), UPSTREAM_MODEL, false).await;
    let chronicle = run(b.addr, tokens.clone(), MODEL, false).await;
    let direct_stream = run(upstream, upstream_key, UPSTREAM_MODEL, true).await;
    let chronicle_stream = run(b.addr, tokens, MODEL, true).await;
    CompletionRun {
        clients,
        direct,
        chronicle,
        direct_stream,
        chronicle_stream,
    }
}

/// One streamed completion whose upstream sends a chunk every
/// [`PACED_GAP`]: when each reached the client, after the upstream sent it.
pub struct RelayCheck {
    pub received: usize,
    /// Largest (arrival at the client − hand-over by the upstream).
    pub max_delay: Duration,
}

impl RelayCheck {
    /// Every chunk came, each before the upstream sent the next one.
    pub fn ok(&self) -> bool {
        self.received == PACED_CHUNKS && self.max_delay < PACED_GAP
    }
}

pub async fn relay_check(
    addr: SocketAddr,
    user: &User,
    paced: &PacedLog,
) -> anyhow::Result<RelayCheck> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    let connection = tokio::spawn(connection);
    let body = json!({"model": MODEL, "stream": true,
        "messages": [{"role": "user", "content": "PACED please"}]});
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/chat/completions")
        .header(HOST, addr.to_string())
        .header(AUTHORIZATION, user.auth.as_ref())
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from(body.to_string())))?;
    let response = sender.send_request(request).await?;
    if !response.status().is_success() {
        bail!("the paced stream answered {}", response.status());
    }
    let mut body = response.into_body();
    let mut text = String::new();
    let mut arrived: Vec<Option<Instant>> = vec![None; PACED_CHUNKS];
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Ok(Some(frame)) = tokio::time::timeout_at(deadline.into(), body.frame()).await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        let now = Instant::now();
        text.push_str(&String::from_utf8_lossy(&data));
        for (i, at) in arrived.iter_mut().enumerate() {
            if at.is_none() && text.contains(&format!("tok{i} ")) {
                *at = Some(now);
            }
        }
    }
    connection.abort();
    let sent = paced.lock().map(|log| log.clone()).unwrap_or_default();
    let mut received = 0;
    let mut max_delay = Duration::ZERO;
    for (i, at) in arrived.iter().enumerate() {
        let (Some(at), Some((_, sent_at))) = (at, sent.iter().find(|(n, _)| *n == i)) else {
            continue;
        };
        received += 1;
        max_delay = max_delay.max(at.saturating_duration_since(*sent_at));
    }
    Ok(RelayCheck {
        received,
        max_delay,
    })
}

// ----------------------------------------------------------------- sessions --

/// Creates `n` sessions, owned by the users in turn: `(owner index, id)`.
async fn create_sessions(b: &Bench, n: usize) -> anyhow::Result<Vec<(usize, String)>> {
    let mut sessions = Vec::with_capacity(n);
    for i in 0..n {
        let owner = i % b.users.len();
        let req = Req::new(Method::POST, "/v1/sessions", &b.users[owner].auth)
            .json(json!({"title": format!("bench session {i}"), "model": MODEL}));
        let reply = once(b.addr, &req).await?;
        if reply.status.as_u16() != 201 {
            bail!(
                "creating a session answered {}: {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            );
        }
        let body: Value = serde_json::from_slice(&reply.body)?;
        let id = body["id"].as_str().context("no session id")?;
        sessions.push((owner, id.to_string()));
    }
    Ok(sessions)
}

/// `POST /v1/sessions/{id}/messages`, worker `w` on its own sessions
/// (`per_worker` of them, in turn), so no two workers write one session.
struct ExchangePlan {
    users: Vec<User>,
    sessions: Vec<(usize, String)>,
    per_worker: usize,
}

impl Plan for ExchangePlan {
    fn next(&self, worker: usize, iteration: u64) -> Req {
        let n =
            (worker * self.per_worker + iteration as usize % self.per_worker) % self.sessions.len();
        let (owner, id) = &self.sessions[n];
        Req::new(
            Method::POST,
            format!("/v1/sessions/{id}/messages"),
            &self.users[*owner].auth,
        )
        .json(json!({"content": format!("bench message {worker}-{iteration}")}))
    }
}

/// Non-streamed exchanges at [`CLIENTS`], four sessions per client.
pub async fn exchanges(b: &Bench) -> anyhow::Result<Stats> {
    let per_worker = 4;
    let sessions = create_sessions(b, CLIENTS * per_worker).await?;
    let plan = Arc::new(ExchangePlan {
        users: b.users.clone(),
        sessions,
        per_worker,
    });
    Ok(closed_loop(b.addr, CLIENTS, b.sizes.timed(), 1, plan)
        .await
        .pop()
        .expect("one group"))
}

// ---------------------------------------------------------------------- sse --

pub struct SseRun {
    pub wanted: usize,
    pub opened: usize,
    /// Why streams failed to open, with counts.
    pub open_errors: Vec<String>,
    pub open_seconds: f64,
    /// Server resident set with every stream open, before and after the events.
    pub rss_open_mb: f64,
    pub rss_after_mb: f64,
    /// Resident set just before the streams were opened.
    pub rss_before_mb: f64,
    pub sessions: usize,
    /// Events each stream of a session should have received, summed.
    pub expected: u64,
    pub received: u64,
    /// Streams that missed at least one event.
    pub incomplete: usize,
    /// From the first exchange posted to the last event received (or the deadline).
    pub deliver_seconds: f64,
}

impl SseRun {
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.received)
    }
}

struct OpenStream {
    session: usize,
    events: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

/// `streams` open `GET /v1/sessions/{id}/events` over `sessions` sessions;
/// then two exchanges in each session; every stream must see every event.
pub async fn sse(
    b: &Bench,
    server_pid: u32,
    streams: usize,
    sessions: usize,
) -> anyhow::Result<SseRun> {
    let ids = create_sessions(b, sessions).await?;
    // Sequences before the streams open: what follows is what each must see.
    let mut before = Vec::with_capacity(ids.len());
    for (_, id) in &ids {
        before.push(last_sequence(b, id).await?);
    }
    let rss_before_mb = rss_mb(server_pid);
    let received_total = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    // Opened a few at a time: each open creates a JetStream consumer.
    let mut open = Vec::with_capacity(streams);
    let mut errors: std::collections::BTreeMap<String, usize> = Default::default();
    let mut pending = futures::stream::iter((0..streams).map(|i| {
        let session = i % ids.len();
        let (owner, id) = ids[session].clone();
        let auth = b.users[owner].auth.clone();
        let total = received_total.clone();
        let addr = b.addr;
        async move {
            open_events(addr, &id, &auth, total)
                .await
                .map(|(events, task)| OpenStream {
                    session,
                    events,
                    task,
                })
        }
    }))
    .buffer_unordered(32);
    while let Some(result) = pending.next().await {
        match result {
            Ok(stream) => open.push(stream),
            Err(err) => *errors.entry(format!("{err:#}")).or_default() += 1,
        }
    }
    drop(pending);
    let open_seconds = started.elapsed().as_secs_f64();
    // Let the server settle before reading its memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_open_mb = rss_mb(server_pid);

    // Two exchanges per session, sessions in parallel.
    let posted = Instant::now();
    let mut posts = Vec::new();
    for (owner, id) in &ids {
        let req = Req::new(
            Method::POST,
            format!("/v1/sessions/{id}/messages"),
            &b.users[*owner].auth,
        )
        .json(json!({"content": "bench fan-out"}));
        let addr = b.addr;
        posts.push(tokio::spawn(async move {
            for _ in 0..2 {
                match once(addr, &req).await {
                    Ok(reply) if reply.status.is_success() => {}
                    Ok(reply) => return Err(format!("exchange answered {}", reply.status)),
                    Err(err) => return Err(format!("{err:#}")),
                }
            }
            Ok(())
        }));
    }
    for post in posts {
        if let Ok(Err(err)) = post.await {
            *errors.entry(format!("posting: {err}")).or_default() += 1;
        }
    }
    let mut per_session = Vec::with_capacity(ids.len());
    for ((_, id), before) in ids.iter().zip(&before) {
        per_session.push((last_sequence(b, id).await? - before).max(0) as u64);
    }
    let expected: u64 = open.iter().map(|s| per_session[s.session]).sum();
    let deadline = Instant::now() + Duration::from_secs(30);
    while received_total.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deliver_seconds = posted.elapsed().as_secs_f64();
    let rss_after_mb = rss_mb(server_pid);
    let incomplete = open
        .iter()
        .filter(|s| s.events.load(Ordering::Relaxed) < per_session[s.session])
        .count();
    let received = open
        .iter()
        .map(|s| s.events.load(Ordering::Relaxed).min(per_session[s.session]))
        .sum();
    let opened = open.len();
    for stream in open {
        stream.task.abort();
    }
    Ok(SseRun {
        wanted: streams,
        opened,
        open_errors: errors
            .into_iter()
            .map(|(e, n)| format!("{n} × {e}"))
            .collect(),
        open_seconds,
        rss_open_mb,
        rss_after_mb,
        rss_before_mb,
        sessions: ids.len(),
        expected,
        received,
        incomplete,
        deliver_seconds,
    })
}

async fn last_sequence(b: &Bench, id: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "select coalesce(max(sequence), 0) from events \
         where aggregate_type = 'ChatSession' and aggregate_id = $1",
    )
    .bind(id)
    .fetch_one(&b.pool)
    .await?)
}

/// Resident set of `pid` in MB (10^6 bytes), from `/proc/<pid>/status`.
pub fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or(0.0, |kib| kib * 1024.0 / 1e6)
}

/// Opens one events stream; once its head is in (the server's consumer
/// exists), a task counts the events (blocks with an `id:`) it receives.
async fn open_events(
    addr: SocketAddr,
    id: &str,
    auth: &Arc<str>,
    total: Arc<AtomicU64>,
) -> anyhow::Result<(Arc<AtomicU64>, JoinHandle<()>)> {
    let stream = TcpStream::connect(addr).await.context("connecting")?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    let request = Request::builder()
        .method(Method::GET)
        .uri(format!("/v1/sessions/{id}/events"))
        .header(HOST, addr.to_string())
        .header(AUTHORIZATION, auth.as_ref())
        .header(ACCEPT, "text/event-stream")
        .body(Empty::<Bytes>::new())?;
    let connection = tokio::spawn(connection);
    let response = tokio::time::timeout(Duration::from_secs(30), sender.send_request(request))
        .await
        .context("no answer in 30 s")??;
    if !response.status().is_success() {
        connection.abort();
        bail!("answered {}", response.status());
    }
    let events = Arc::new(AtomicU64::new(0));
    let counter = events.clone();
    let task = tokio::spawn(async move {
        let _sender = sender;
        let mut body = response.into_body();
        let mut buffer = String::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buffer.push_str(&String::from_utf8_lossy(&data));
            // Complete blocks end with a blank line; comments carry no `id:`.
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                if block.lines().any(|line| line.starts_with("id:")) {
                    counter.fetch_add(1, Ordering::Relaxed);
                    total.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        connection.abort();
    });
    Ok((events, task))
}
