//! The scenarios. Each one is bounded in time and returns its figures as JSON
//! plus the histograms the chart draws.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use hyper::Method;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::cpu::{CpuPerRequest, CpuSample};
use crate::env::{chronicle_env, create_database, drop_database, User, World};
use crate::load::{closed_loop, paced, Limits, Plan, Reply, Req, Stats};

/// How long things run.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub warmup: Duration,
    pub measure: Duration,
    pub ceiling_secs: u64,
    pub history_small_tasks: usize,
    pub history_large_tasks: usize,
    pub history_requests_per_group: u64,
    pub lag_seconds: u64,
    pub rebuild_events: u64,
    pub rebuild_timeout: Duration,
}

impl Sizes {
    pub fn quick() -> Self {
        Self {
            warmup: Duration::from_secs(1),
            measure: Duration::from_secs(3),
            ceiling_secs: 3,
            history_small_tasks: 40,
            history_large_tasks: 2,
            history_requests_per_group: 200,
            lag_seconds: 4,
            rebuild_events: 100_000,
            rebuild_timeout: Duration::from_secs(90),
        }
    }

    pub fn full() -> Self {
        Self {
            warmup: Duration::from_secs(2),
            measure: Duration::from_secs(10),
            ceiling_secs: 10,
            history_small_tasks: 100,
            history_large_tasks: 4,
            history_requests_per_group: 500,
            lag_seconds: 10,
            rebuild_events: 1_000_000,
            rebuild_timeout: Duration::from_secs(300),
        }
    }

    pub fn timed(&self) -> Limits {
        Limits::timed(self.warmup, self.measure)
    }
}

/// Shared by the scenarios.
pub struct Bench {
    pub addr: SocketAddr,
    pub users: Vec<User>,
    pub sizes: Sizes,
    pub pool: PgPool,
    /// For the CPU per request ([`crate::cpu`]).
    pub server_pid: u32,
    pub postgres: Option<crate::cpu::Postgres>,
}

impl Bench {
    fn cpu(&self) -> CpuSample {
        CpuSample::take(self.server_pid, self.postgres.as_ref())
    }
}

// ------------------------------------------------------------------ ceiling --

/// One pgbench run.
#[derive(Debug, Clone)]
pub struct Pgbench {
    pub clients: usize,
    pub tps: f64,
    pub latency_ms: f64,
}

/// pgbench inserting one event-shaped row per transaction into a copy of the
/// events table (same columns, defaults, identity and indexes; no triggers).
pub async fn ceiling(b: &Bench, world: &World) -> anyhow::Result<Vec<Pgbench>> {
    sqlx::query(
        "create table bench_ceiling (like events including defaults including identity including indexes)",
    )
    .execute(&b.pool)
    .await?;
    let payload = json!({"TaskCreated": {
        "owner_id": "6b1f6a8e-0000-4000-8000-000000000001",
        "title": "bench task 12-345", "description": "created by the benchmark",
        "project_id": null, "due_at": null, "created_at": "2030-01-01T00:00:00.000001Z"}});
    let metadata = json!({
        "actor_id": "6b1f6a8e-0000-4000-8000-000000000001", "actor_roles": "user",
        "request_id": "6b1f6a8e-0000-4000-8000-000000000002",
        "correlation_id": "6b1f6a8e-0000-4000-8000-000000000002",
        "causation_id": "6b1f6a8e-0000-4000-8000-000000000002",
        "client_ip": "127.0.0.1", "user_agent": "",
        "occurred_at": "2030-01-01T00:00:00.000001Z"});
    // Payload and metadata are bound parameters, as the API binds them
    // (pgbench -D), which also keeps pgbench from reading `:…` inside them.
    let script = "insert into bench_ceiling (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         values ('Task', gen_random_uuid()::text, 1, 'TaskCreated', '1.0', :payload, :metadata);\n";
    let script_path = world.out_dir.join("ceiling.sql");
    std::fs::write(&script_path, script)?;
    let pgbench = std::env::var("PGBENCH").unwrap_or_else(|_| "pgbench".into());
    let mut results = Vec::new();
    for clients in [1usize, 16, 64] {
        let output = Command::new(&pgbench)
            .args(["-n", "-M", "prepared", "-f"])
            .arg(&script_path)
            .args(["-c", &clients.to_string()])
            .args(["-j", &clients.min(2).to_string()])
            .args(["-T", &b.sizes.ceiling_secs.to_string()])
            .arg("-D")
            .arg(format!("payload={payload}"))
            .arg("-D")
            .arg(format!("metadata={metadata}"))
            .arg(&world.database_url)
            .output()
            .await
            .context("running pgbench (set PGBENCH to its path)")?;
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        if !output.status.success() {
            bail!(
                "pgbench -c {clients} failed: {}{}",
                text,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let tps = figure_after(&text, "tps = ").context("pgbench printed no tps")?;
        let latency_ms = figure_after(&text, "latency average = ").unwrap_or(0.0);
        results.push(Pgbench {
            clients,
            tps,
            latency_ms,
        });
    }
    sqlx::query("drop table bench_ceiling")
        .execute(&b.pool)
        .await?;
    Ok(results)
}

fn figure_after(text: &str, marker: &str) -> Option<f64> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let number: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    number.parse().ok()
}

// ------------------------------------------------------------------- create --

/// `POST /v1/tasks`, worker `w` acting as user `w % users`; created ids are kept per user.
pub struct CreatePlan {
    users: Vec<User>,
    pub ids: Mutex<Vec<Vec<String>>>,
    /// Sends `(id, answered)` to the lag monitor when set.
    answered: Option<mpsc::UnboundedSender<(String, Instant)>>,
}

impl CreatePlan {
    pub fn new(users: &[User]) -> Self {
        Self {
            users: users.to_vec(),
            ids: Mutex::new(vec![Vec::new(); users.len()]),
            answered: None,
        }
    }
}

impl Plan for CreatePlan {
    fn next(&self, worker: usize, iteration: u64) -> Req {
        let user = &self.users[worker % self.users.len()];
        Req::new(Method::POST, "/v1/tasks", &user.auth)
            .json(json!({"title": format!("bench task {worker}-{iteration}"), "description": "created by the benchmark"}))
            .group(worker % self.users.len())
    }

    fn done(&self, req: &Req, reply: &Reply, at: Instant) {
        if reply.status.as_u16() != 201 {
            return;
        }
        if let Some(id) = created_id(&reply.body) {
            if let Some(tx) = &self.answered {
                let _ = tx.send((id.clone(), at));
            }
            if let Ok(mut ids) = self.ids.lock() {
                ids[req.group].push(id);
            }
        }
    }
}

/// The `id` of a task answer, without parsing the whole body.
fn created_id(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("\"id\":\"")? + 6;
    text.get(start..start + 36).map(str::to_string)
}

pub struct CreateRun {
    pub clients: usize,
    pub stats: Stats,
    pub cpu: CpuPerRequest,
}

pub async fn create(b: &Bench, plan: &Arc<CreatePlan>) -> Vec<CreateRun> {
    let mut runs = Vec::new();
    for clients in [1usize, 16, 64] {
        let before = b.cpu();
        let groups = closed_loop(
            b.addr,
            clients,
            b.sizes.timed(),
            b.users.len(),
            plan.clone(),
        )
        .await;
        let mut stats = Stats::new();
        stats.elapsed = groups[0].elapsed;
        for group in &groups {
            stats.latency_us.add(&group.latency_us).ok();
            stats.ok += group.ok;
            for (status, n) in &group.errors {
                *stats.errors.entry(*status).or_default() += n;
            }
        }
        let cpu = before.per_request(&b.cpu(), stats.ok);
        runs.push(CreateRun {
            clients,
            stats,
            cpu,
        });
    }
    runs
}

// ------------------------------------------------------------------ history --

/// PATCHes with a fresh title (so each one records an event) on a fixed task
/// list; group 0 draws from `small`, group 1 from `large`, alternately.
struct PatchPlan {
    auth: Arc<str>,
    small: Vec<String>,
    large: Vec<String>,
    /// Setup: worker `w` patches only `large[w]` (no conflicts).
    owned: bool,
    tag: &'static str,
}

impl Plan for PatchPlan {
    fn next(&self, worker: usize, iteration: u64) -> Req {
        let (group, id) = if self.owned {
            (1, &self.large[worker % self.large.len()])
        } else if self.small.is_empty() {
            (
                0,
                &self.large[(worker + iteration as usize) % self.large.len()],
            )
        } else if iteration.is_multiple_of(2) {
            (0, &self.small[(iteration / 2) as usize % self.small.len()])
        } else {
            (1, &self.large[(iteration / 2) as usize % self.large.len()])
        };
        Req::new(Method::PATCH, format!("/v1/tasks/{id}"), &self.auth)
            .json(json!({"title": format!("{} {worker}-{iteration}", self.tag)}))
            .group(group)
    }
}

/// Creates `n` tasks for `user` and returns their ids.
async fn create_tasks(b: &Bench, user: &User, n: usize) -> anyhow::Result<Vec<String>> {
    let plan = Arc::new(CreatePlan::new(std::slice::from_ref(user)));
    let per_worker = n.div_ceil(8) as u64;
    closed_loop(
        b.addr,
        8,
        Limits::count(per_worker, Duration::from_secs(120)),
        1,
        plan.clone(),
    )
    .await;
    let mut ids = plan
        .ids
        .lock()
        .map(|ids| ids[0].clone())
        .unwrap_or_default();
    ids.truncate(n);
    if ids.len() < n {
        bail!("created only {} of {n} tasks", ids.len());
    }
    Ok(ids)
}

/// Brings every task in `ids` to `events` events, one worker per task.
async fn grow(b: &Bench, user: &User, ids: &[String], events: u64) -> anyhow::Result<()> {
    for chunk in ids.chunks(16) {
        let plan = Arc::new(PatchPlan {
            auth: user.auth.clone(),
            small: Vec::new(),
            large: chunk.to_vec(),
            owned: true,
            tag: "grow",
        });
        let stats = closed_loop(
            b.addr,
            chunk.len(),
            Limits::count(events - 1, Duration::from_secs(300)),
            2,
            plan,
        )
        .await;
        let errors: u64 = stats.iter().map(Stats::error_count).sum();
        if errors > 0 {
            bail!("{errors} PATCHes failed while growing history");
        }
    }
    Ok(())
}

pub struct HistoryRun {
    pub small_events: u64,
    pub large_events: u64,
    pub small: Stats,
    pub large: Stats,
}

pub async fn history(b: &Bench) -> anyhow::Result<HistoryRun> {
    let user = &b.users[b.users.len() - 1];
    let small = create_tasks(b, user, b.sizes.history_small_tasks).await?;
    let large = create_tasks(b, user, b.sizes.history_large_tasks).await?;
    grow(b, user, &small, 10).await?;
    grow(b, user, &large, 1000).await?;
    let plan = Arc::new(PatchPlan {
        auth: user.auth.clone(),
        small,
        large,
        owned: false,
        tag: "history",
    });
    // Warm the path (connections, statement caches) outside the measurement.
    closed_loop(
        b.addr,
        1,
        Limits::count(40, Duration::from_secs(30)),
        2,
        plan.clone(),
    )
    .await;
    let per_group = b.sizes.history_requests_per_group;
    let mut stats = closed_loop(
        b.addr,
        1,
        Limits::count(2 * per_group, Duration::from_secs(120)),
        2,
        plan,
    )
    .await;
    let large_stats = stats.pop().expect("two groups");
    let small_stats = stats.pop().expect("two groups");
    Ok(HistoryRun {
        small_events: 10,
        large_events: 1000,
        small: small_stats,
        large: large_stats,
    })
}

// ----------------------------------------------------------------- hot keys --

pub async fn hot_keys(b: &Bench) -> anyhow::Result<Stats> {
    let user = &b.users[0];
    let ids = create_tasks(b, user, 8).await?;
    let plan = Arc::new(PatchPlan {
        auth: user.auth.clone(),
        small: Vec::new(),
        large: ids,
        owned: false,
        tag: "hot",
    });
    let mut stats = closed_loop(b.addr, 64, b.sizes.timed(), 1, plan).await;
    Ok(stats.pop().expect("one group"))
}

// ---------------------------------------------------------------------- lag --

/// Command answered → event applied, for one projection.
pub struct Lag {
    pub projection: String,
    pub lag_us: Histogram<u64>,
    /// Events not applied within the wait after the run.
    pub missing: u64,
}

pub struct LagRun {
    pub rate: f64,
    pub commands: Stats,
    pub lags: Vec<Lag>,
    /// Why the audit trail was not measured, if it was not.
    pub audit_note: Option<String>,
}

pub async fn lag(b: &Bench, world: &World, rate: f64) -> anyhow::Result<LagRun> {
    let mut projections = vec!["tasks".to_string()];
    let audit_note = match chronicle_projections::projection_named("audit") {
        // No aggregate types means every type.
        Some(audit)
            if audit.aggregate_types().is_empty() || audit.aggregate_types().contains(&"Task") =>
        {
            projections.push("audit".into());
            None
        }
        Some(_) => Some("the audit projection does not consume Task events".to_string()),
        None => Some("no projection named `audit` in this build".to_string()),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let plan = Arc::new(CreatePlan {
        users: b.users.clone(),
        ids: Mutex::new(vec![Vec::new(); b.users.len()]),
        answered: Some(tx),
    });

    // Wake when a watched projection commits (each notifies
    // `chronicle_projected` with its name), and every 5 ms in case one does
    // not notify. Not on the other projections' commits: the polls they would
    // cause take CPU from the pipeline being measured.
    let wake = Arc::new(tokio::sync::Notify::new());
    let mut listener = sqlx::postgres::PgListener::connect(&world.database_url).await?;
    listener
        .listen(chronicle_projections::PROJECTED_CHANNEL)
        .await?;
    let notifier = wake.clone();
    let watched = projections.clone();
    let listening = tokio::spawn(async move {
        while let Ok(notification) = listener.recv().await {
            if watched.iter().any(|name| name == notification.payload()) {
                notifier.notify_one();
            }
        }
    });

    let finished = Arc::new(AtomicU64::new(0));
    let pool = b.pool.clone();
    let monitor_projections = projections.clone();
    let done_flag = finished.clone();
    let monitor = tokio::spawn(async move {
        let mut pending: Vec<HashMap<String, Instant>> =
            vec![HashMap::new(); monitor_projections.len()];
        let mut lags: Vec<Histogram<u64>> = (0..monitor_projections.len())
            .map(|_| Histogram::new_with_bounds(1, 600_000_000, 3).expect("bounds"))
            .collect();
        let mut give_up: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
            let now = Instant::now();
            while let Ok((id, at)) = rx.try_recv() {
                for map in &mut pending {
                    map.insert(id.clone(), at);
                }
            }
            for (i, projection) in monitor_projections.iter().enumerate() {
                if pending[i].is_empty() {
                    continue;
                }
                let ids: Vec<String> = pending[i].keys().cloned().collect();
                // One primary-key probe per pending id. As `aggregate_id =
                // any($2)`, the generic plan Postgres settled on after five
                // polls walked every version of the projection and filtered
                // (15–35 ms a poll, every 5 ms, growing with the table): the
                // instrument took the CPU the pipeline it measures needed
                // (docs/performance.md, change 24).
                let applied: Vec<String> = sqlx::query_scalar(
                    "select k.aggregate_id from unnest($2::text[]) as k(aggregate_id) \
                     cross join lateral ( \
                       select 1 from read.aggregate_versions v \
                        where v.projection = $1 and v.aggregate_type = 'Task' \
                          and v.aggregate_id = k.aggregate_id \
                        limit 1) v",
                )
                .bind(projection)
                .bind(&ids)
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
                for id in applied {
                    if let Some(at) = pending[i].remove(&id) {
                        let us = now.saturating_duration_since(at).as_micros() as u64;
                        lags[i].saturating_record(us.max(1));
                    }
                }
            }
            if done_flag.load(Ordering::Relaxed) == 1 {
                let limit = *give_up.get_or_insert(now + Duration::from_secs(15));
                if pending.iter().all(HashMap::is_empty) || now > limit {
                    break;
                }
            }
        }
        let missing: Vec<u64> = pending.iter().map(|m| m.len() as u64).collect();
        (lags, missing)
    });

    let commands = paced(
        b.addr,
        32,
        rate,
        Duration::from_secs(b.sizes.lag_seconds),
        plan.clone(),
    )
    .await;
    drop(plan);
    finished.store(1, Ordering::Relaxed);
    let (histograms, missing) = monitor.await?;
    listening.abort();
    let lags = projections
        .into_iter()
        .zip(histograms)
        .zip(missing)
        .map(|((projection, lag_us), missing)| Lag {
            projection,
            lag_us,
            missing,
        })
        .collect();
    Ok(LagRun {
        rate,
        commands,
        lags,
        audit_note,
    })
}

// --------------------------------------------------------------------- read --

/// GETs of one user's tasks by id, or list pages.
struct ReadPlan {
    auth: Arc<str>,
    ids: Vec<String>,
    list: bool,
}

impl Plan for ReadPlan {
    fn next(&self, worker: usize, iteration: u64) -> Req {
        if self.list {
            return Req::new(Method::GET, "/v1/tasks?limit=20", &self.auth);
        }
        let n = (worker as u64 * 7_919 + iteration * 104_729) as usize % self.ids.len();
        Req::new(
            Method::GET,
            format!("/v1/tasks/{}", self.ids[n]),
            &self.auth,
        )
    }
}

pub struct ReadRun {
    pub get: Stats,
    pub get_cpu: CpuPerRequest,
    pub list: Stats,
    pub list_cpu: CpuPerRequest,
    pub tasks_of_user: usize,
}

pub async fn read(b: &Bench, ids: Vec<String>) -> anyhow::Result<ReadRun> {
    if ids.is_empty() {
        bail!("no tasks to read");
    }
    let tasks_of_user = ids.len();
    // Statistics as autovacuum would have gathered them on a database that
    // has run for a while: without them, whether the list's plan walks the
    // index depends on whether autovacuum happened to analyse this fresh
    // database yet (one run measured 3.4 ms of Postgres CPU per list
    // instead of 0.4-0.7 ms).
    sqlx::query("analyze").execute(&b.pool).await?;
    let auth = b.users[0].auth.clone();
    let before = b.cpu();
    let get = closed_loop(
        b.addr,
        16,
        b.sizes.timed(),
        1,
        Arc::new(ReadPlan {
            auth: auth.clone(),
            ids: ids.clone(),
            list: false,
        }),
    )
    .await
    .pop()
    .expect("one group");
    let get_cpu = before.per_request(&b.cpu(), get.ok);
    let before = b.cpu();
    let list = closed_loop(
        b.addr,
        16,
        b.sizes.timed(),
        1,
        Arc::new(ReadPlan {
            auth,
            ids,
            list: true,
        }),
    )
    .await
    .pop()
    .expect("one group");
    let list_cpu = before.per_request(&b.cpu(), list.ok);
    Ok(ReadRun {
        get,
        get_cpu,
        list,
        list_cpu,
        tasks_of_user,
    })
}

// ------------------------------------------------------------------ rebuild --

pub struct RebuildRun {
    pub events: u64,
    pub insert_seconds: f64,
    pub replay_seconds: f64,
    /// `(projection, events, seconds)` as `chronicle replay` printed them.
    pub projections: Vec<(String, u64, f64)>,
    pub integrity: crate::checks::Integrity,
    /// Entries `chronicle audit verify` checked afterwards, and its time.
    pub verified: u64,
    pub verify_seconds: f64,
}

/// A separate database filled with valid Task histories by SQL (ten events a
/// task: created, eight updates, completed), then `chronicle replay
/// --projection all`, then `chronicle audit verify` of the trail it wrote.
pub async fn rebuild(
    world: &World,
    events: u64,
    timeout: Duration,
    keep: bool,
) -> anyhow::Result<RebuildRun> {
    let database = format!("{}_rebuild", world.database);
    let url = create_database(world, &database).await?;
    let result = rebuild_in(world, &url, events, timeout).await;
    if !keep {
        drop_database(world, &database).await.ok();
    }
    result
}

async fn rebuild_in(
    world: &World,
    url: &str,
    events: u64,
    timeout: Duration,
) -> anyhow::Result<RebuildRun> {
    let pool = crate::env::pool(url).await?;
    let tasks = events.div_ceil(10);
    let started = Instant::now();
    let chunk = 20_000u64;
    let mut first = 0u64;
    while first < tasks {
        let last = (first + chunk).min(tasks) - 1;
        sqlx::query(INSERT_HISTORIES)
            .bind(first as i64)
            .bind(last as i64)
            .execute(&pool)
            .await
            .context("inserting task histories")?;
        first = last + 1;
    }
    sqlx::query("analyze events").execute(&pool).await?;
    let insert_seconds = started.elapsed().as_secs_f64();
    let total: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&pool)
        .await?;

    let (stdout, replay_seconds) = run_chronicle(
        world,
        url,
        &["replay", "--projection", "all"],
        timeout,
        "replay",
    )
    .await?;
    // Lines look like `tasks: 1000000 events in 8.12s (123153 events/s)`.
    let projections = stdout
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(": ")?;
            let count: u64 = rest.split_whitespace().next()?.parse().ok()?;
            let seconds = figure_after(rest, " in ")?;
            Some((name.trim().to_string(), count, seconds))
        })
        .collect();
    let integrity = crate::checks::check(&pool, None, "", Duration::from_secs(1)).await?;
    pool.close().await;
    // The trail the replay just wrote, verified against the store.
    let (stdout, verify_seconds) =
        run_chronicle(world, url, &["audit", "verify"], timeout, "verify").await?;
    // `1000000 entries of generation 2 checked in 3.21s (…)`.
    let verified = stdout
        .lines()
        .find_map(|line| {
            line.split_once(" entries of generation ")?
                .0
                .trim()
                .parse()
                .ok()
        })
        .context("`chronicle audit verify` printed no entry count (see verify.log)")?;
    Ok(RebuildRun {
        events: total as u64,
        insert_seconds,
        replay_seconds,
        projections,
        integrity,
        verified,
        verify_seconds,
    })
}

/// Runs `chronicle <args>` on the database at `url` and waits for it (at
/// most `timeout`); returns its standard output and how long it took. Both
/// outputs go to `<out>/<name>.log`.
async fn run_chronicle(
    world: &World,
    url: &str,
    args: &[&str],
    timeout: Duration,
    name: &str,
) -> anyhow::Result<(String, f64)> {
    let started = Instant::now();
    let mut child = Command::new(&world.chronicle)
        .args(args)
        .envs(chronicle_env(world, url))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("running chronicle {name}"))?;
    let mut stdout_pipe = child.stdout.take().context("stdout")?;
    let mut stderr_pipe = child.stderr.take().context("stderr")?;
    let reader = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut out = String::new();
        let mut err = String::new();
        let _ = tokio::join!(
            stdout_pipe.read_to_string(&mut out),
            stderr_pipe.read_to_string(&mut err)
        );
        (out, err)
    });
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => Some(status?),
        Err(_) => {
            child.kill().await.ok();
            None
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let (stdout, stderr) = reader.await.unwrap_or_default();
    std::fs::write(
        world.out_dir.join(format!("{name}.log")),
        format!("{stdout}{stderr}"),
    )
    .ok();
    match status {
        None => bail!(
            "chronicle {name} did not finish within {} s; its output so far: [{}] (see {name}.log)",
            timeout.as_secs(),
            stdout.lines().collect::<Vec<_>>().join("; ")
        ),
        Some(status) if !status.success() => {
            let last = stderr.lines().last().unwrap_or_default().to_string();
            bail!("chronicle {name} failed: {last} (see {name}.log)")
        }
        Some(_) => Ok((stdout, seconds)),
    }
}

/// Tasks `$1..=$2`, ten events each, with the payload and metadata shapes the
/// API writes (`{"TaskCreated": {...}}`, string metadata).
const INSERT_HISTORIES: &str = "\
insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
select 'Task', t.id::text, s.seq,
       case when s.seq = 1 then 'TaskCreated' when s.seq = 10 then 'TaskCompleted' else 'TaskUpdated' end,
       '1.0',
       case when s.seq = 1 then jsonb_build_object('TaskCreated', jsonb_build_object(
                'owner_id', t.owner, 'title', 'rebuild task ' || t.n, 'description', 'generated',
                'project_id', null, 'due_at', null, 'created_at', '2030-01-01T00:00:00.000001Z'))
            when s.seq = 10 then jsonb_build_object('TaskCompleted', jsonb_build_object(
                'completed_at', '2030-01-01T00:00:10.000001Z'))
            else jsonb_build_object('TaskUpdated', jsonb_build_object(
                'title', 'rebuild task ' || t.n || ' v' || s.seq, 'description', 'generated',
                'project_id', null, 'due_at', null,
                'updated_at', '2030-01-01T00:00:0' || s.seq || '.000001Z')) end,
       jsonb_build_object('actor_id', t.owner, 'actor_roles', 'user',
                'request_id', t.id, 'correlation_id', t.id, 'causation_id', t.id,
                'client_ip', '127.0.0.1', 'user_agent', 'chronicle-bench',
                'occurred_at', '2030-01-01T00:00:00.000001Z')
  from (select n, gen_random_uuid() as id,
               ('6b1f6a8e-0000-4000-8000-' || lpad((n % 1000)::text, 12, '0'))::uuid as owner
          from generate_series($1::bigint, $2::bigint) as n) t
 cross join generate_series(1, 10) as s(seq)
 order by t.n, s.seq";

pub fn lag_json(lag: &Lag) -> Value {
    json!({
        "projection": lag.projection,
        "samples": lag.lag_us.len(),
        "missing": lag.missing,
        "p50_ms": lag.lag_us.value_at_quantile(0.5) as f64 / 1000.0,
        "p99_ms": lag.lag_us.value_at_quantile(0.99) as f64 / 1000.0,
        "max_ms": lag.lag_us.max() as f64 / 1000.0,
    })
}
