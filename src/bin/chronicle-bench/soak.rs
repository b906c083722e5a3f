//! `chronicle-bench --soak`: the soak behind `make soak` (not in CI).
//!
//! One server, as the benchmark starts it (own database, stream, fake chat
//! upstream), under steady mixed load at a fixed rate well below its peak for
//! `--minutes`: tasks (create, get, update, list), auth (refresh, login) and
//! chat exchanges in sessions. Every `--sample-secs` it samples the server's
//! resident set and open file descriptors, its Postgres connections, the
//! lags (one probe task timed from its 2xx to the read model and to the
//! audit trail, plus the relay's and projections' own lag gauges) and the
//! machine's load. After the load, the integrity check of the benchmark.
//! Then `report.md` (samples, verdicts) and `soak.svg` (one chart per
//! series); the run fails when a series trends upwards or integrity fails.
//! The trend rule and why: `docs/performance.md`, "Soak".

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hyper::Method;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::env::{Server, World};
use crate::fake_upstream::FakeUpstream;
use crate::load::{once, Conn, Reply, Req, Stats};
use crate::report::{self, Row};
use crate::{checks, env, say, Args};

/// Connections (one per worker) that share the offered rate.
const WORKERS: usize = 8;
/// The share of the run discarded before the trend is judged (at least).
const WARMUP_SHARE: f64 = 0.2;
/// Fewest samples after the warm-up for a verdict (two per third).
const MIN_SAMPLES: usize = 6;
/// Created tasks each worker keeps to read and update (bounded: the bench
/// itself must not grow).
const TASKS_KEPT: usize = 64;
/// Exchanges per chat session before a worker opens a new one: a session
/// that grew for 30 minutes would measure its history, not a steady state.
const EXCHANGES_PER_SESSION: u32 = 20;
/// How long a probe waits for its task to reach the read models.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// The bench's own connections, left out of the server's count.
const APPLICATION_NAME: &str = "chronicle-soak";
const PASSWORD: &str = "a long bench passphrase 42";

/// One series' trend limit: the last third's median may exceed the first
/// third's by at most `relative` of it, or by `absolute`, whichever is larger.
struct Limit {
    name: &'static str,
    unit: &'static str,
    relative: f64,
    absolute: f64,
    get: Series,
}

const LIMITS: [Limit; 5] = [
    Limit {
        name: "server RSS",
        unit: "MB",
        relative: 0.10,
        absolute: 8.0,
        get: |s| Some(s.rss_mb),
    },
    Limit {
        name: "server open file descriptors",
        unit: "fds",
        relative: 0.10,
        absolute: 8.0,
        get: |s| Some(s.fds as f64),
    },
    Limit {
        name: "Postgres connections of the server",
        unit: "connections",
        relative: 0.10,
        absolute: 2.0,
        get: |s| Some(s.pg_connections as f64),
    },
    Limit {
        name: "probe lag 2xx → read model (tasks)",
        unit: "ms",
        relative: 1.0,
        absolute: 25.0,
        get: |s| s.lag_tasks_ms,
    },
    Limit {
        name: "probe lag 2xx → audit trail",
        unit: "ms",
        relative: 1.0,
        absolute: 25.0,
        get: |s| s.lag_audit_ms,
    },
];

/// One sample of the server and the machine.
#[derive(Debug, Clone, Default)]
struct Sample {
    /// Seconds since the load started.
    at_s: f64,
    rss_mb: f64,
    fds: u64,
    pg_connections: i64,
    /// The probe: its create's 2xx → applied by `tasks` / by `audit`.
    lag_tasks_ms: Option<f64>,
    lag_audit_ms: Option<f64>,
    /// The server's gauges (`/metrics`): age of the newest event when
    /// published / applied.
    relay_lag_ms: Option<f64>,
    projection_lag_ms: Option<f64>,
    /// Requests answered 2xx per second since the previous sample, errors
    /// in that window, p99 of that window (from when each was due).
    rps: f64,
    errors: u64,
    p99_ms: f64,
    /// Server CPU since the previous sample, in % of one core.
    cpu_pct: f64,
    /// The machine's 1-minute load average.
    load1: f64,
}

/// Reads one series from a sample (`None`: not measured in that sample).
type Series = fn(&Sample) -> Option<f64>;

/// The series drawn in `soak.svg`, in order.
const CHARTS: [(&str, Series); 10] = [
    ("server RSS (MB)", |s| Some(s.rss_mb)),
    ("open file descriptors", |s| Some(s.fds as f64)),
    ("Postgres connections", |s| Some(s.pg_connections as f64)),
    ("probe lag → tasks (ms)", |s| s.lag_tasks_ms),
    ("probe lag → audit (ms)", |s| s.lag_audit_ms),
    ("relay lag gauge (ms)", |s| s.relay_lag_ms),
    ("2xx answers per second", |s| Some(s.rps)),
    ("window p99 (ms)", |s| Some(s.p99_ms)),
    ("server CPU (% of a core)", |s| Some(s.cpu_pct)),
    ("load average (1 min)", |s| Some(s.load1)),
];

/// What the workers record: every operation's figures, and the current window.
#[derive(Default)]
struct Tally {
    ops: BTreeMap<&'static str, Stats>,
    window: Option<Stats>,
}

impl Tally {
    fn record(&mut self, op: &'static str, status: u16, latency: Duration) {
        let us = latency.as_micros().max(1) as u64;
        let window = self.window.get_or_insert_with(Stats::new);
        let stats = self.ops.entry(op).or_insert_with(Stats::new);
        for s in [stats, window] {
            if (200..300).contains(&status) {
                s.latency_us.saturating_record(us);
                s.ok += 1;
            } else {
                *s.errors.entry(status).or_default() += 1;
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Create,
    Get,
    Update,
    List,
    Exchange,
    NewSession,
    Refresh,
    Login,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Create => "POST /v1/tasks",
            Op::Get => "GET /v1/tasks/{id}",
            Op::Update => "PATCH /v1/tasks/{id}",
            Op::List => "GET /v1/tasks?limit=20",
            Op::Exchange => "POST /v1/sessions/{id}/messages",
            Op::NewSession => "POST /v1/sessions",
            Op::Refresh => "POST /v1/auth/refresh",
            Op::Login => "POST /v1/auth/login",
        }
    }
}

/// The mix, per worker, repeated: tasks mostly, a chat exchange in ten.
const MIX: [Op; 10] = [
    Op::Create,
    Op::Get,
    Op::List,
    Op::Update,
    Op::Get,
    Op::Exchange,
    Op::Create,
    Op::Get,
    Op::List,
    Op::Update,
];
/// Every this many operations of a worker: a refresh, and a login.
const REFRESH_EVERY: u64 = 50;
const LOGIN_EVERY: u64 = 200;

/// One user's credentials, as register, login and refresh return them.
struct Account {
    email: String,
    auth: Arc<str>,
    refresh: String,
}

impl Account {
    /// Takes the tokens of an `AuthResponse`.
    fn absorb(&mut self, body: &[u8]) -> bool {
        let Ok(body) = serde_json::from_slice::<Value>(body) else {
            return false;
        };
        match (
            body["access_token"].as_str(),
            body["refresh_token"].as_str(),
        ) {
            (Some(access), Some(refresh)) => {
                self.auth = Arc::from(format!("Bearer {access}"));
                self.refresh = refresh.to_string();
                true
            }
            _ => false,
        }
    }
}

fn anonymous(method: Method, path: &str) -> Req {
    Req {
        method,
        path: path.into(),
        token: None,
        body: None,
        group: 0,
    }
}

async fn register(addr: SocketAddr, email: String) -> anyhow::Result<Account> {
    let req = anonymous(Method::POST, "/v1/auth/register")
        .json(json!({"email": email, "password": PASSWORD}));
    let reply = once(addr, &req).await?;
    let mut account = Account {
        email,
        auth: Arc::from(""),
        refresh: String::new(),
    };
    if reply.status.as_u16() != 201 || !account.absorb(&reply.body) {
        bail!(
            "register answered {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
    }
    Ok(account)
}

/// A worker's own state: its user, the tasks it created, its chat session.
struct Worker {
    account: Account,
    tasks: VecDeque<String>,
    session: Option<String>,
    exchanges: u32,
}

impl Worker {
    fn pick(&self, iteration: u64) -> Op {
        if iteration % LOGIN_EVERY == LOGIN_EVERY - 1 || self.account.refresh.is_empty() {
            return Op::Login;
        }
        if iteration % REFRESH_EVERY == REFRESH_EVERY / 2 {
            return Op::Refresh;
        }
        match MIX[(iteration % MIX.len() as u64) as usize] {
            Op::Get | Op::Update if self.tasks.is_empty() => Op::Create,
            Op::Exchange if self.session.is_none() || self.exchanges >= EXCHANGES_PER_SESSION => {
                Op::NewSession
            }
            op => op,
        }
    }

    fn request(&self, op: Op, worker: usize, iteration: u64) -> Req {
        let auth = &self.account.auth;
        // A spread-out pick among the tasks kept.
        let task = || {
            let n = (iteration as usize).wrapping_mul(7_919) % self.tasks.len().max(1);
            self.tasks.get(n).cloned().unwrap_or_default()
        };
        match op {
            Op::Create => Req::new(Method::POST, "/v1/tasks", auth).json(json!({
                "title": format!("soak task {worker}-{iteration}"),
                "description": "created by the soak",
            })),
            Op::Get => Req::new(Method::GET, format!("/v1/tasks/{}", task()), auth),
            Op::Update => Req::new(Method::PATCH, format!("/v1/tasks/{}", task()), auth)
                .json(json!({"title": format!("soak update {worker}-{iteration}")})),
            Op::List => Req::new(Method::GET, "/v1/tasks?limit=20", auth),
            Op::Exchange => Req::new(
                Method::POST,
                format!(
                    "/v1/sessions/{}/messages",
                    self.session.as_deref().unwrap_or_default()
                ),
                auth,
            )
            .json(json!({"content": format!("soak message {worker}-{iteration}")})),
            Op::NewSession => Req::new(Method::POST, "/v1/sessions", auth).json(json!({
                "title": format!("soak session {worker}-{iteration}"),
                "model": crate::chat::MODEL,
            })),
            Op::Refresh => anonymous(Method::POST, "/v1/auth/refresh")
                .json(json!({"refresh_token": self.account.refresh})),
            Op::Login => anonymous(Method::POST, "/v1/auth/login")
                .json(json!({"email": self.account.email, "password": PASSWORD})),
        }
    }

    /// Keeps what an answer gives: ids, tokens.
    fn absorb(&mut self, op: Op, reply: &Reply) {
        let ok = reply.status.is_success();
        match op {
            Op::Create | Op::NewSession if ok => {
                let id = serde_json::from_slice::<Value>(&reply.body)
                    .ok()
                    .and_then(|body| body["id"].as_str().map(str::to_string));
                if let Some(id) = id {
                    if op == Op::Create {
                        if self.tasks.len() == TASKS_KEPT {
                            self.tasks.pop_front();
                        }
                        self.tasks.push_back(id);
                    } else {
                        self.session = Some(id);
                        self.exchanges = 0;
                    }
                }
            }
            Op::Exchange => self.exchanges += 1,
            // A refresh token that failed is spent: log in next.
            Op::Refresh | Op::Login if !ok || !self.account.absorb(&reply.body) => {
                self.account.refresh.clear();
            }
            _ => {}
        }
    }
}

/// Sends `worker`'s operations on its own fixed schedule until `deadline`;
/// latency counts from when each was due (no coordinated omission, as in
/// `load::paced`).
async fn run_worker(
    addr: SocketAddr,
    index: usize,
    mut worker: Worker,
    interval: Duration,
    start: Instant,
    deadline: Instant,
    tally: Arc<Mutex<Tally>>,
) {
    let mut conn = Conn::new(addr);
    let mut due = start + interval.mul_f64(index as f64 / WORKERS as f64);
    let mut iteration = 0u64;
    while due < deadline {
        tokio::time::sleep_until(due.into()).await;
        let op = worker.pick(iteration);
        let req = worker.request(op, index, iteration);
        let result = tokio::time::timeout(Duration::from_secs(30), conn.send(&req)).await;
        let answered = Instant::now();
        let status = match &result {
            Ok(Ok(reply)) => {
                worker.absorb(op, reply);
                reply.status.as_u16()
            }
            _ => 0,
        };
        if let Ok(mut tally) = tally.lock() {
            tally.record(op.name(), status, answered.saturating_duration_since(due));
        }
        iteration += 1;
        due += interval;
    }
}

/// `chronicle-bench --soak`: errors when a trend check or integrity fails.
pub async fn run(args: &Args, chronicle: PathBuf) -> anyhow::Result<()> {
    let started = Instant::now();
    let out = if args.out == Path::new("target/bench") {
        PathBuf::from("target/soak")
    } else {
        args.out.clone()
    };
    if !(args.minutes > 0.0 && args.sample_secs > 0.0 && args.rate > 0.0) {
        bail!("--minutes, --sample-secs and --rate must be positive");
    }
    std::fs::create_dir_all(&out)?;
    let run_id = format!("soak_{}", chrono::Utc::now().format("%Y%m%d_%H%M%S"));
    let upstream = FakeUpstream::start()?;
    let mut world = World::new(chronicle, out.clone(), &run_id)?;
    world.upstream = Some(upstream.base_url());
    let mut machine = crate::machine_info(&world, args).await;
    machine["mode"] = json!(format!(
        "soak {} min at {} req/s, sampled every {} s",
        args.minutes, args.rate, args.sample_secs
    ));
    say(format!(
        "soak {run_id}: {} min at {} req/s ({}), database {}, stream {}",
        args.minutes,
        args.rate,
        world.chronicle.display(),
        world.database,
        world.stream
    ));
    env::create_database(&world, &world.database).await?;
    let options =
        PgConnectOptions::from_str(&world.database_url)?.application_name(APPLICATION_NAME);
    let pool = PgPoolOptions::new()
        .max_connections(3)
        .connect_with(options)
        .await
        .context("connecting to the soak database")?;
    let nats = async_nats::connect(&world.nats_url)
        .await
        .context("connecting to NATS")?;
    let jetstream = async_nats::jetstream::new(nats);
    let server = Server::start(&world).await?;
    say(format!("server pid {} on {}", server.pid, server.addr));

    let result = soak(args, &world, &server, &pool, &jetstream).await;
    server.stop().await.ok();
    if !args.keep {
        jetstream.delete_stream(&world.stream).await.ok();
    }
    pool.close().await;
    if !args.keep {
        env::drop_database(&world, &world.database).await.ok();
    }
    let (rows, samples, warmup) = result?;

    machine["load_after"] = json!(env::read_trimmed("/proc/loadavg"));
    machine["seconds"] = json!(started.elapsed().as_secs_f64());
    let mut markdown = report::markdown(&rows, &machine, &format!("Chronicle soak {run_id}"));
    markdown.push_str(&samples_table(&samples, warmup));
    report::write(&out, "report.md", &markdown)?;
    report::write(&out, "soak.svg", &svg(&samples, warmup))?;
    println!("{markdown}");
    say(format!(
        "wrote {0}/report.md and {0}/soak.svg in {1:.0} s",
        out.display(),
        started.elapsed().as_secs_f64()
    ));
    let misses: Vec<&str> = rows
        .iter()
        .filter(|r| r.pass == Some(false))
        .map(|r| r.figure.as_str())
        .collect();
    if !misses.is_empty() {
        bail!("soak failed: {}", misses.join("; "));
    }
    Ok(())
}

type Outcome = (Vec<Row>, Vec<Sample>, usize);

async fn soak(
    args: &Args,
    world: &World,
    server: &Server,
    pool: &PgPool,
    jetstream: &async_nats::jetstream::Context,
) -> anyhow::Result<Outcome> {
    let addr = server.addr;
    let mut workers = Vec::with_capacity(WORKERS);
    for n in 0..WORKERS {
        let account = register(addr, format!("soak{n}-{}@example.com", world.database)).await?;
        workers.push(Worker {
            account,
            tasks: VecDeque::new(),
            session: None,
            exchanges: 0,
        });
    }
    let mut probe = register(addr, format!("probe-{}@example.com", world.database)).await?;

    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    let interval = Duration::from_secs_f64(WORKERS as f64 / args.rate);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let start = Instant::now();
    let deadline = start + duration;
    let mut handles = Vec::new();
    for (index, worker) in workers.into_iter().enumerate() {
        handles.push(tokio::spawn(run_worker(
            addr,
            index,
            worker,
            interval,
            start,
            deadline,
            tally.clone(),
        )));
    }

    let every = Duration::from_secs_f64(args.sample_secs);
    let mut samples = Vec::new();
    let mut cpu_before = (cpu_ticks(server.pid), Instant::now());
    let mut next = start + every;
    // No sample at the deadline itself: the workers are closing their connections then.
    while next < deadline {
        tokio::time::sleep_until(next.into()).await;
        let window = tally
            .lock()
            .ok()
            .and_then(|mut t| t.window.take())
            .unwrap_or_else(Stats::new);
        let ticks = cpu_ticks(server.pid);
        let cpu_pct = match (cpu_before.0, ticks) {
            (Some(before), Some(now)) => {
                // Clock ticks are 1/100 s on Linux.
                (now - before) as f64 / cpu_before.1.elapsed().as_secs_f64().max(1e-9)
            }
            _ => 0.0,
        };
        cpu_before = (ticks, Instant::now());
        let (lag_tasks_ms, lag_audit_ms) = probe_lag(addr, pool, &mut probe).await;
        let metrics = metrics_text(addr).await;
        let sample = Sample {
            at_s: start.elapsed().as_secs_f64(),
            rss_mb: status_kib(server.pid, "VmRSS:") as f64 / 1024.0 * 1.048_576,
            fds: std::fs::read_dir(format!("/proc/{}/fd", server.pid))
                .map(|dir| dir.count() as u64)
                .unwrap_or(0),
            pg_connections: pg_connections(pool, &world.database).await,
            lag_tasks_ms,
            lag_audit_ms,
            relay_lag_ms: metric(&metrics, "chronicle_relay_lag_seconds", None).map(|s| s * 1e3),
            projection_lag_ms: metric(
                &metrics,
                "chronicle_projection_lag_seconds",
                Some("projection=\"tasks\""),
            )
            .map(|s| s * 1e3),
            rps: window.ok as f64 / every.as_secs_f64(),
            errors: window.error_count(),
            p99_ms: window.ms(0.99),
            cpu_pct,
            load1: env::read_trimmed("/proc/loadavg")
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0),
        };
        say(format!(
            "  {:>6.0} s  rss {:.1} MB  fds {}  pg {}  lag tasks {} / audit {} ms  {:.0} req/s  {} errors  p99 {:.1} ms  cpu {:.0} %  load {:.2}",
            sample.at_s,
            sample.rss_mb,
            sample.fds,
            sample.pg_connections,
            show(sample.lag_tasks_ms),
            show(sample.lag_audit_ms),
            sample.rps,
            sample.errors,
            sample.p99_ms,
            sample.cpu_pct,
            sample.load1
        ));
        samples.push(sample);
        next += every;
    }
    for handle in handles {
        handle.await.ok();
    }
    let load_seconds = start.elapsed().as_secs_f64();
    say("integrity: waiting for the pipeline to settle");
    let integrity = checks::check(
        pool,
        Some(jetstream),
        &world.stream,
        Duration::from_secs(60),
    )
    .await
    .unwrap_or_else(|err| checks::Integrity {
        divergent: -1,
        detail: vec![format!("check failed: {err:#}")],
        ..checks::Integrity::default()
    });

    let mut rows = Vec::new();
    let tally = tally.lock().map(|t| t.ops.clone()).unwrap_or_default();
    let total_ok: u64 = tally.values().map(|s| s.ok).sum();
    let total_errors: u64 = tally.values().map(Stats::error_count).sum();
    rows.push(Row::info(
        "load",
        "offered / achieved",
        format!(
            "{} req/s offered on {WORKERS} connections, {:.1} 2xx/s achieved over {:.0} s; {total_ok} answered 2xx, {total_errors} errors",
            args.rate,
            total_ok as f64 / load_seconds.max(1e-9),
            load_seconds
        ),
    ));
    for (op, stats) in &tally {
        rows.push(Row::info(
            "load",
            op,
            format!(
                "{} ok, p50 {:.2} / p99 {:.2} / max {:.1} ms, {} errors{}",
                stats.ok,
                stats.ms(0.5),
                stats.ms(0.99),
                stats.latency_us.max() as f64 / 1000.0,
                stats.error_count(),
                if stats.errors.is_empty() {
                    String::new()
                } else {
                    format!(" {:?}", stats.errors)
                }
            ),
        ));
    }
    // The warm-up lasts a fifth of the run, and at least until every worker
    // has logged in once (argon2's memory, kept by the allocator, is a step
    // up at the first login, not a trend) and one interval after.
    let warmup_secs = (duration.as_secs_f64() * WARMUP_SHARE)
        .max((LOGIN_EVERY + 1) as f64 * interval.as_secs_f64() + args.sample_secs);
    let warmup = samples
        .iter()
        .filter(|s| s.at_s <= warmup_secs)
        .count()
        .max(1);
    for limit in &LIMITS {
        rows.push(trend_row(limit, &samples, warmup));
    }
    rows.push(Row::target(
        "load",
        "errors (non-2xx answers and transport errors)",
        format!("{total_errors} of {}", total_ok + total_errors),
        "0",
        total_errors == 0 && total_ok > 0,
    ));
    rows.push(crate::integrity_row("integrity", &integrity));
    Ok((rows, samples, warmup))
}

/// The trend verdict of one series over the samples after the warm-up.
fn trend_row(limit: &Limit, samples: &[Sample], warmup: usize) -> Row {
    let target = format!(
        "last third ≤ first third + max({:.0} %, {} {})",
        limit.relative * 100.0,
        limit.absolute,
        limit.unit
    );
    let after: Vec<(f64, Option<f64>)> = samples
        .iter()
        .skip(warmup)
        .map(|s| (s.at_s, (limit.get)(s)))
        .collect();
    let missing = after.iter().filter(|(_, v)| v.is_none()).count();
    let points: Vec<(f64, f64)> = after
        .iter()
        .filter_map(|(t, v)| v.map(|v| (*t, v)))
        .collect();
    if points.len() < MIN_SAMPLES {
        return Row::target(
            "trend",
            limit.name,
            format!(
                "{} samples after the warm-up: too few for a verdict",
                points.len()
            ),
            &target,
            false,
        );
    }
    let third = points.len() / 3;
    let values: Vec<f64> = points.iter().map(|(_, v)| *v).collect();
    let first = median(&values[..third]);
    let last = median(&values[values.len() - third..]);
    let allowed = (first * limit.relative).max(limit.absolute);
    let slope_per_hour = slope(&points) * 3600.0;
    Row::target(
        "trend",
        limit.name,
        format!(
            "{first:.1} → {last:.1} {} ({:+.1} %; allowed +{allowed:.1}); least-squares slope {slope_per_hour:+.1} {}/h; range {:.1}–{:.1}{}",
            limit.unit,
            (last - first) / first.abs().max(1e-9) * 100.0,
            limit.unit,
            values.iter().copied().fold(f64::MAX, f64::min),
            values.iter().copied().fold(f64::MIN, f64::max),
            if missing > 0 {
                format!("; {missing} samples missing (probe timed out)")
            } else {
                String::new()
            }
        ),
        &target,
        last - first <= allowed && missing == 0,
    )
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// Least-squares slope of `(t, v)` (units of v per unit of t).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_v = points.iter().map(|p| p.1).sum::<f64>() / n;
    let num: f64 = points
        .iter()
        .map(|(t, v)| (t - mean_t) * (v - mean_v))
        .sum();
    let den: f64 = points.iter().map(|(t, _)| (t - mean_t).powi(2)).sum();
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

/// Creates a task as the probe user and times its 2xx → its version in
/// `read.aggregate_versions` for `tasks` and for `audit` (polled every 5 ms,
/// as the lag scenario does without the notification).
async fn probe_lag(
    addr: SocketAddr,
    pool: &PgPool,
    probe: &mut Account,
) -> (Option<f64>, Option<f64>) {
    let create = |auth: &Arc<str>| {
        Req::new(Method::POST, "/v1/tasks", auth)
            .json(json!({"title": "soak probe", "description": "times the lag"}))
    };
    let mut reply = once(addr, &create(&probe.auth)).await;
    if matches!(&reply, Ok(r) if r.status.as_u16() == 401) {
        // The access token expired (runs longer than its lifetime): log in again.
        let login = anonymous(Method::POST, "/v1/auth/login")
            .json(json!({"email": probe.email, "password": PASSWORD}));
        if let Ok(answer) = once(addr, &login).await {
            probe.absorb(&answer.body);
        }
        reply = once(addr, &create(&probe.auth)).await;
    }
    let answered = Instant::now();
    let Some(id) = reply
        .ok()
        .filter(|r| r.status.is_success())
        .and_then(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .and_then(|body| body["id"].as_str().map(str::to_string))
    else {
        return (None, None);
    };
    let (mut tasks, mut audit) = (None, None);
    while answered.elapsed() < PROBE_TIMEOUT && (tasks.is_none() || audit.is_none()) {
        let applied: Vec<String> = sqlx::query_scalar(
            "select projection from read.aggregate_versions \
             where aggregate_type = 'Task' and aggregate_id = $1 and projection in ('tasks', 'audit')",
        )
        .bind(&id)
        .fetch_all(pool)
        .await
        .unwrap_or_default();
        let ms = answered.elapsed().as_secs_f64() * 1000.0;
        for projection in applied {
            match projection.as_str() {
                "tasks" => tasks = tasks.or(Some(ms)),
                "audit" => audit = audit.or(Some(ms)),
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (tasks, audit)
}

async fn metrics_text(addr: SocketAddr) -> String {
    match once(addr, &anonymous(Method::GET, "/metrics")).await {
        Ok(reply) if reply.status.is_success() => String::from_utf8_lossy(&reply.body).into(),
        _ => String::new(),
    }
}

/// The value of `name` (with `label` among its labels, when given) in
/// Prometheus text.
fn metric(text: &str, name: &str, label: Option<&str>) -> Option<f64> {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .find(|line| label.is_none_or(|label| line.contains(label)))
        .and_then(|line| line.split_whitespace().last())
        .and_then(|value| value.parse().ok())
}

/// Connections to the soak database other than the bench's own.
async fn pg_connections(pool: &PgPool, database: &str) -> i64 {
    sqlx::query_scalar(
        "select count(*) from pg_stat_activity where datname = $1 and application_name <> $2",
    )
    .bind(database)
    .bind(APPLICATION_NAME)
    .fetch_one(pool)
    .await
    .unwrap_or(-1)
}

fn status_kib(pid: u32, key: &str) -> u64 {
    env::read_trimmed(format!("/proc/{pid}/status"))
        .lines()
        .find(|line| line.starts_with(key))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = env::read_trimmed(format!("/proc/{pid}/stat"));
    // The command name may hold spaces: count fields after its `)`.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn show(value: Option<f64>) -> String {
    value.map_or_else(|| "—".into(), |v| format!("{v:.1}"))
}

fn samples_table(samples: &[Sample], warmup: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Samples\n\nThe first {warmup} (warm-up, marked *) are left out of the trend verdicts. \
         Lags: the probe's 2xx → applied; gauges: the server's own (age of the newest event \
         when published / applied). Window: answers since the previous sample, latency from \
         when each request was due. CPU: the server's, in % of one core.\n\n![charts](soak.svg)\n"
    );
    let _ = writeln!(
        out,
        "| t (s) | RSS (MB) | fds | PG conns | lag tasks (ms) | lag audit (ms) | relay gauge (ms) | tasks gauge (ms) | 2xx/s | errors | p99 (ms) | CPU % | load 1m |"
    );
    let _ = writeln!(
        out,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (i, s) in samples.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {:.0}{} | {:.1} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {:.1} | {:.0} | {:.2} |",
            s.at_s,
            if i < warmup { "*" } else { "" },
            s.rss_mb,
            s.fds,
            s.pg_connections,
            show(s.lag_tasks_ms),
            show(s.lag_audit_ms),
            show(s.relay_lag_ms),
            show(s.projection_lag_ms),
            s.rps,
            s.errors,
            s.p99_ms,
            s.cpu_pct,
            s.load1
        );
    }
    out
}

/// One small line chart per series (three to a row), in the style of
/// `report::latency_svg`: the warm-up shaded, the first- and last-third
/// medians after it as dashed lines.
fn svg(samples: &[Sample], warmup: usize) -> String {
    const PANEL_W: f64 = 320.0;
    const PANEL_H: f64 = 180.0;
    const COLUMNS: usize = 3;
    const LEFT: f64 = 50.0;
    const RIGHT: f64 = 12.0;
    const TOP: f64 = 28.0;
    const BOTTOM: f64 = 30.0;
    let rows = CHARTS.len().div_ceil(COLUMNS);
    let width = PANEL_W * COLUMNS as f64;
    let height = 40.0 + PANEL_H * rows as f64;
    let t_max = samples.last().map_or(1.0, |s| s.at_s).max(1.0);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="24" font-size="15" text-anchor="middle">Chronicle soak: samples over time (minutes)</text>"#,
        width / 2.0
    );
    for (index, (title, get)) in CHARTS.iter().enumerate() {
        let x0 = PANEL_W * (index % COLUMNS) as f64;
        let y0 = 40.0 + PANEL_H * (index / COLUMNS) as f64;
        let plot_w = PANEL_W - LEFT - RIGHT;
        let plot_h = PANEL_H - TOP - BOTTOM;
        let points: Vec<(f64, f64)> = samples
            .iter()
            .filter_map(|s| get(s).map(|v| (s.at_s, v)))
            .collect();
        let lo = points.iter().map(|p| p.1).fold(f64::MAX, f64::min).min(0.0);
        let hi = points.iter().map(|p| p.1).fold(0.0, f64::max);
        let hi = if hi <= lo { lo + 1.0 } else { hi * 1.1 };
        let x = |t: f64| x0 + LEFT + plot_w * t / t_max;
        let y = |v: f64| y0 + TOP + plot_h * (1.0 - (v - lo) / (hi - lo));
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
            x0 + LEFT + plot_w / 2.0,
            y0 + TOP - 8.0,
            xml_escape(title)
        );
        if let Some(end) = samples.get(warmup.saturating_sub(1)) {
            let _ = writeln!(
                svg,
                r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{plot_h:.1}" fill="#f0f0f0"/>"##,
                x(0.0),
                y0 + TOP,
                x(end.at_s) - x(0.0)
            );
        }
        for (v, anchor) in [(lo, lo), (hi, hi), ((lo + hi) / 2.0, (lo + hi) / 2.0)] {
            let _ = writeln!(
                svg,
                r##"<line x1="{:.1}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                x(0.0),
                x(t_max),
                x(0.0) - 4.0,
                y(anchor) + 4.0,
                short(v),
                yy = y(anchor),
            );
        }
        for minute in 0..=(t_max / 60.0).floor() as u64 {
            let step = ((t_max / 60.0 / 6.0).ceil() as u64).max(1);
            if minute % step != 0 {
                continue;
            }
            let xx = x(minute as f64 * 60.0);
            let _ = writeln!(
                svg,
                r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{minute}</text>"#,
                y0 + TOP + plot_h + 14.0
            );
        }
        let _ = writeln!(
            svg,
            r##"<rect x="{:.1}" y="{:.1}" width="{plot_w:.1}" height="{plot_h:.1}" fill="none" stroke="#888"/>"##,
            x(0.0),
            y0 + TOP
        );
        // First- and last-third medians after the warm-up.
        let after: Vec<(f64, f64)> = samples
            .iter()
            .skip(warmup)
            .filter_map(|s| get(s).map(|v| (s.at_s, v)))
            .collect();
        let third = after.len() / 3;
        if third > 0 {
            for (part, color) in [
                (&after[..third], "#2ca02c"),
                (&after[after.len() - third..], "#d62728"),
            ] {
                let m = median(&values_of(part));
                let _ = writeln!(
                    svg,
                    r#"<line x1="{:.1}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="{color}" stroke-dasharray="4 3"/>"#,
                    x(part[0].0),
                    x(part[part.len() - 1].0),
                    yy = y(m)
                );
            }
        }
        let line: Vec<String> = points
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
            .collect();
        let _ = writeln!(
            svg,
            r##"<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{}"/>"##,
            line.join(" ")
        );
    }
    let _ = writeln!(svg, "</svg>");
    svg
}

fn values_of(points: &[(f64, f64)]) -> Vec<f64> {
    points.iter().map(|p| p.1).collect()
}

fn short(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(rss: &[f64]) -> Vec<Sample> {
        rss.iter()
            .enumerate()
            .map(|(i, &rss_mb)| Sample {
                at_s: i as f64 * 10.0,
                rss_mb,
                ..Sample::default()
            })
            .collect()
    }

    #[test]
    fn a_flat_series_with_noise_passes_and_a_growing_one_fails() {
        let flat = samples(&[90.0, 40.0, 41.0, 43.0, 40.0, 42.0, 41.0, 40.0, 43.0, 41.0]);
        assert_eq!(trend_row(&LIMITS[0], &flat, 2).pass, Some(true));
        let growing = samples(&[40.0, 40.0, 42.0, 46.0, 50.0, 54.0, 58.0, 62.0, 66.0, 70.0]);
        assert_eq!(trend_row(&LIMITS[0], &growing, 2).pass, Some(false));
    }

    #[test]
    fn too_few_samples_after_the_warm_up_is_no_verdict_and_fails() {
        let few = samples(&[40.0, 40.0, 40.0]);
        assert_eq!(trend_row(&LIMITS[0], &few, 1).pass, Some(false));
    }

    #[test]
    fn a_labelled_gauge_is_read_from_prometheus_text() {
        let text = "# TYPE chronicle_projection_lag_seconds gauge\n\
            chronicle_projection_lag_seconds{projection=\"audit\"} 0.5\n\
            chronicle_projection_lag_seconds{projection=\"tasks\"} 0.012\n\
            chronicle_relay_lag_seconds 0.003\n\
            chronicle_relay_lag_seconds_total 9\n";
        assert_eq!(
            metric(
                text,
                "chronicle_projection_lag_seconds",
                Some("projection=\"tasks\"")
            ),
            Some(0.012)
        );
        assert_eq!(
            metric(text, "chronicle_relay_lag_seconds", None),
            Some(0.003)
        );
    }
}
