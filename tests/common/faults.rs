//! The fault injection harness (`make test-faults`, `tests/faults.rs`): the
//! real binary as three processes (API, relay, projection worker) against
//! the test's own database and its own nats-server, a steady mixed load, a
//! seeded plan of faults, and the checks run after each one.
//!
//! Deterministic by seed: `CHRONICLE_FAULTS_SEED` (or a random one, printed)
//! orders the faults and picks when each strikes (after how many
//! acknowledged commands) and how long an outage lasts.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chronicle::Settings;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::RwLock;

use crate::common::fake_llm::{FakeLlm, ANTHROPIC_KEY};
use crate::common::TEST_PASSWORD;

/// splitmix64: small, fast, and the same on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low + 1)
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

/// `CHRONICLE_FAULTS_SEED`, or a fresh one.
pub fn seed_from_env() -> u64 {
    match std::env::var("CHRONICLE_FAULTS_SEED") {
        Ok(raw) => raw
            .trim()
            .parse()
            .expect("CHRONICLE_FAULTS_SEED is a number"),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            Rng::new(nanos ^ u64::from(std::process::id())).next_u64() % 1_000_000_000
        }
    }
}

/// What happened, when (since the start), and how each check ended.
pub struct Report {
    started: Instant,
    seed: u64,
    lines: Mutex<Vec<String>>,
    failures: Mutex<Vec<String>>,
}

impl Report {
    pub fn new(seed: u64) -> Self {
        Self {
            started: Instant::now(),
            seed,
            lines: Mutex::default(),
            failures: Mutex::default(),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Records (and prints) one line.
    pub fn note(&self, line: impl Into<String>) {
        let line = format!("t+{:>6.1}s  {}", self.elapsed().as_secs_f64(), line.into());
        println!("faults: {line}");
        self.lines.lock().unwrap().push(line);
    }

    /// Runs one check; a panic inside it is recorded as its failure, and the
    /// run goes on so that the report shows every check.
    pub async fn check<F>(&self, fault: &str, name: &str, check: F)
    where
        F: std::future::Future<Output = String>,
    {
        use futures::FutureExt;
        let started = Instant::now();
        let outcome = std::panic::AssertUnwindSafe(check).catch_unwind().await;
        let took = started.elapsed().as_secs_f64();
        match outcome {
            Ok(detail) => self.note(format!("  check {name}: ok ({detail}; {took:.1}s)")),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into());
                self.note(format!("  check {name}: FAILED: {message}"));
                self.failures
                    .lock()
                    .unwrap()
                    .push(format!("after {fault}: {name}: {message}"));
            }
        }
    }

    pub fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }

    /// Writes the report as Markdown and returns where.
    pub fn write(&self, path: &Path) -> PathBuf {
        let mut text = String::new();
        let _ = writeln!(text, "# Fault injection report\n");
        let _ = writeln!(
            text,
            "Seed {seed}: replay with `CHRONICLE_FAULTS_SEED={seed} make test-faults`.\n",
            seed = self.seed
        );
        let _ = writeln!(text, "```");
        for line in self.lines.lock().unwrap().iter() {
            let _ = writeln!(text, "{line}");
        }
        let _ = writeln!(text, "```\n");
        let failures = self.failures();
        if failures.is_empty() {
            let _ = writeln!(text, "Every check passed.");
        } else {
            let _ = writeln!(text, "{} failed checks:\n", failures.len());
            for failure in failures {
                let _ = writeln!(text, "- {failure}");
            }
        }
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(path, text).expect("write the faults report");
        path.to_path_buf()
    }
}

/// The three process roles of the binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Api,
    Relay,
    Projector,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Api => "api (chronicle serve)",
            Role::Relay => "relay (chronicle relay)",
            Role::Projector => "projection worker (chronicle project)",
        }
    }

    /// The name of its log file.
    pub fn log_name(self) -> &'static str {
        match self {
            Role::Api => "api.log",
            Role::Relay => "relay.log",
            Role::Projector => "project.log",
        }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Role::Api => &["serve"],
            Role::Relay => &["relay"],
            Role::Projector => &["project"],
        }
    }
}

/// The environment every child gets: the test's database, NATS, stream,
/// data dir (shared signing keys), fast hashing, the fake upstream.
pub fn child_env(settings: &Settings, llm: &FakeLlm, port: u16) -> Vec<(String, String)> {
    [
        (
            "DATABASE_URL",
            settings.database.url.expose_secret().to_string(),
        ),
        ("NATS_URL", settings.nats.url.clone()),
        ("CHRONICLE_STREAM", settings.nats.stream.name.clone()),
        (
            "CHRONICLE_SUBJECT_PREFIX",
            settings.nats.stream.subject_prefix.clone(),
        ),
        ("CHRONICLE_ADDR", format!("127.0.0.1:{port}")),
        (
            "CHRONICLE_DATA_DIR",
            settings.data_dir.display().to_string(),
        ),
        ("CHRONICLE_ARGON2_MEMORY_KIB", "1024".into()),
        ("CHRONICLE_ARGON2_ITERATIONS", "1".into()),
        ("CHRONICLE_RATE_LIMIT_USER_PER_MINUTE", "100000".into()),
        ("CHRONICLE_RATE_LIMIT_IP_PER_MINUTE", "100000".into()),
        ("CHRONICLE_RATE_LIMIT_AUTH_PER_MINUTE", "100000".into()),
        (
            "CHRONICLE_MODELS",
            "claude-test=anthropic:claude-upstream-1".into(),
        ),
        ("ANTHROPIC_BASE_URL", llm.url()),
        ("ANTHROPIC_API_KEY", ANTHROPIC_KEY.into()),
        // Into each child's log file (`Process::start`); CHRONICLE_FAULTS_LOG overrides.
        (
            "CHRONICLE_LOG",
            std::env::var("CHRONICLE_FAULTS_LOG").unwrap_or_else(|_| "warn".into()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// One child process of the real binary, restartable; its output (every
/// incarnation's) goes to `log`.
pub struct Process {
    pub role: Role,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    pub fn start(role: Role, env: Vec<(String, String)>, log: PathBuf) -> Self {
        let _ = std::fs::remove_file(&log);
        let mut process = Self {
            role,
            env,
            log,
            child: None,
        };
        process.restart();
        process
    }

    pub fn restart(&mut self) {
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the child's log");
        let errors = output.try_clone().expect("clone the log handle");
        let child = Command::new(env!("CARGO_BIN_EXE_chronicle"))
            .args(self.role.args())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::from(output))
            .stderr(Stdio::from(errors))
            .spawn()
            .expect("start chronicle");
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// SIGKILL: no shutdown hook runs.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
    }

    /// Whether it died on its own (it must not).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `signal` (`STOP`, `CONT`) to `pid`.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Bytes under `dir`, recursively.
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_size(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Every acknowledged (2xx) command, and what was tried.
#[derive(Default)]
pub struct Acks {
    /// Aggregate id -> the least sequence the store must hold for it (one
    /// per acknowledged command that appends to it).
    pub min_sequence: Mutex<BTreeMap<String, i64>>,
    pub commands: AtomicU64,
    pub refused: AtomicU64,
    pub failed: AtomicU64,
    pub by_kind: Mutex<BTreeMap<&'static str, u64>>,
}

impl Acks {
    fn ack(&self, kind: &'static str, aggregate: Option<&str>) {
        if let Some(id) = aggregate {
            *self
                .min_sequence
                .lock()
                .unwrap()
                .entry(id.to_string())
                .or_default() += 1;
        }
        *self.by_kind.lock().unwrap().entry(kind).or_default() += 1;
        self.commands.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.commands.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    pub fn summary(&self) -> String {
        let kinds: Vec<String> = self
            .by_kind
            .lock()
            .unwrap()
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        format!(
            "{} acknowledged ({}), {} refused, {} failed in transit",
            self.count(),
            kinds.join(", "),
            self.refused.load(Ordering::Relaxed),
            self.failed()
        )
    }
}

/// The steady mixed load: tokio tasks that keep sending commands until
/// stopped; each operation holds a read lock on `pause`, so a checker that
/// takes the write lock sees the system quiet.
pub struct Load {
    pub acks: Arc<Acks>,
    pub pause: Arc<RwLock<()>>,
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

/// The outcome of one request.
enum Sent {
    Ok(Value),
    Refused,
    Failed,
}

struct Worker {
    base: String,
    client: reqwest::Client,
    acks: Arc<Acks>,
}

impl Worker {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> Sent {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let Ok(response) = request.send().await else {
            self.acks.failed.fetch_add(1, Ordering::Relaxed);
            return Sent::Failed;
        };
        let status = response.status();
        if !status.is_success() {
            self.acks.refused.fetch_add(1, Ordering::Relaxed);
            return Sent::Refused;
        }
        match response.json::<Value>().await {
            Ok(body) => Sent::Ok(body),
            // The answer was 2xx but its body was cut: not known to be acknowledged.
            Err(_) => {
                self.acks.failed.fetch_add(1, Ordering::Relaxed);
                Sent::Failed
            }
        }
    }

    /// Registers a user (retrying until the API answers); returns its tokens.
    async fn register(&self, email: &str) -> Option<(String, String)> {
        let body = json!({"email": email, "password": TEST_PASSWORD});
        match self
            .send(reqwest::Method::POST, "/v1/auth/register", None, body)
            .await
        {
            Sent::Ok(user) => {
                self.acks.ack("register", user["user"]["id"].as_str());
                Some((
                    user["access_token"].as_str()?.to_string(),
                    user["refresh_token"].as_str()?.to_string(),
                ))
            }
            _ => None,
        }
    }
}

impl Load {
    /// Starts the workers against `base`; `name` keeps their emails apart
    /// from other runs.
    pub fn start(base: &str, name: &str) -> Self {
        let acks = Arc::new(Acks::default());
        let pause = Arc::new(RwLock::new(()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for kind in ["tasks-0", "tasks-1", "auth", "chat"] {
            let worker = Worker {
                base: base.to_string(),
                client: reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap(),
                acks: acks.clone(),
            };
            let (pause, stop, name) = (pause.clone(), stop.clone(), name.to_string());
            workers.push(tokio::spawn(async move {
                run_worker(worker, kind, &name, pause, stop).await;
            }));
        }
        Self {
            acks,
            pause,
            stop,
            workers,
        }
    }

    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            let _ = worker.await;
        }
    }
}

async fn run_worker(
    worker: Worker,
    kind: &'static str,
    name: &str,
    pause: Arc<RwLock<()>>,
    stop: Arc<AtomicBool>,
) {
    use reqwest::Method;
    let mut n: u64 = 0;
    let mut tokens: Option<(String, String)> = None;
    let mut session: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        {
            let _running = pause.read().await;
            if tokens.is_none() {
                tokens = worker
                    .register(&format!("{kind}-{n}-{name}@example.com"))
                    .await;
            } else if let Some((token, _)) = tokens.clone() {
                match kind {
                    "auth" => {
                        // A new user, a login, and a refresh of the new session.
                        let email = format!("auth-{n}-{name}@example.com");
                        if let Some((_, refresh)) = worker.register(&email).await {
                            let login = json!({"email": email, "password": TEST_PASSWORD});
                            if let Sent::Ok(_) = worker
                                .send(Method::POST, "/v1/auth/login", None, login)
                                .await
                            {
                                worker.acks.ack("login", None);
                            }
                            let body = json!({"refresh_token": refresh});
                            if let Sent::Ok(_) = worker
                                .send(Method::POST, "/v1/auth/refresh", None, body)
                                .await
                            {
                                worker.acks.ack("refresh", None);
                            }
                        }
                    }
                    "chat" => {
                        if session.is_none() || n.is_multiple_of(5) {
                            if let Sent::Ok(created) = worker
                                .send(Method::POST, "/v1/sessions", Some(&token), json!({}))
                                .await
                            {
                                let id = created["id"].as_str().map(str::to_string);
                                worker.acks.ack("chat session", id.as_deref());
                                session = id;
                            }
                        }
                        if let Some(id) = &session {
                            let path = format!("/v1/sessions/{id}/messages");
                            let body = json!({"content": format!("message {n}")});
                            if let Sent::Ok(_) =
                                worker.send(Method::POST, &path, Some(&token), body).await
                            {
                                worker.acks.ack("chat message", Some(id));
                            }
                        }
                    }
                    _ => {
                        let body = json!({"title": format!("{kind} task {n}")});
                        if let Sent::Ok(task) = worker
                            .send(Method::POST, "/v1/tasks", Some(&token), body)
                            .await
                        {
                            let id = task["id"].as_str().unwrap_or_default().to_string();
                            worker.acks.ack("task create", Some(&id));
                            let path = format!("/v1/tasks/{id}");
                            let body = json!({"title": format!("{kind} task {n} renamed")});
                            if let Sent::Ok(_) =
                                worker.send(Method::PATCH, &path, Some(&token), body).await
                            {
                                worker.acks.ack("task update", Some(&id));
                                let path = format!("/v1/tasks/{id}/complete");
                                let body = json!({"completed": true});
                                if let Sent::Ok(_) =
                                    worker.send(Method::PATCH, &path, Some(&token), body).await
                                {
                                    worker.acks.ack("task complete", Some(&id));
                                }
                            }
                        }
                    }
                }
            }
        }
        // Pacing, not waiting: a modest, steady load.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The stored events as `aggregate_id -> max(sequence)`.
pub async fn stored_sequences(pool: &PgPool) -> HashMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "select aggregate_id, max(sequence) from events group by aggregate_id",
    )
    .fetch_all(pool)
    .await
    .expect("stored sequences")
    .into_iter()
    .collect()
}

/// Polls until every aggregate a projection consumes is applied up to its
/// last event, except those that projection or the relay parked (open dead
/// letters).
pub async fn wait_for_projections_except_parked(pool: &PgPool, within: Duration) {
    let (types, projections): (Vec<&str>, Vec<&str>) = chronicle_projections::all_projections()
        .iter()
        .filter(|p| p.name() != chronicle_projections::audit::AUDIT_PROJECTION)
        .flat_map(|p| p.aggregate_types().iter().map(move |t| (*t, p.name())))
        .unzip();
    crate::common::eventually(within, "the projections to catch up", || async {
        let behind: i64 = sqlx::query_scalar(
            "with consumers as (select * from unnest($1::text[], $2::text[]) as c(aggregate_type, projection)), \
             latest as ( \
               select e.aggregate_type, e.aggregate_id, max(e.sequence) as last from events e \
               where e.aggregate_type in (select aggregate_type from consumers) group by 1, 2) \
             select count(*) from latest l join consumers c using (aggregate_type) \
             left join read.aggregate_versions v \
               on v.aggregate_type = l.aggregate_type and v.aggregate_id = l.aggregate_id \
              and v.projection = c.projection \
             where coalesce(v.version, 0) < l.last \
               and not exists (select 1 from dead_letters d where d.released_at is null \
                 and d.stage in (c.projection, 'relay') and d.aggregate_type = l.aggregate_type \
                 and d.aggregate_id = l.aggregate_id)",
        )
        .bind(&types)
        .bind(&projections)
        .fetch_one(pool)
        .await
        .ok()?;
        (behind == 0).then_some(())
    })
    .await
}

/// The events the relay parked and nobody released, as
/// `aggregate_type:aggregate_id:sequence` (the stream's message ids).
pub async fn open_relay_parks(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "select aggregate_type || ':' || aggregate_id || ':' || sequence from dead_letters \
         where stage = 'relay' and released_at is null order by aggregate_type, aggregate_id, sequence",
    )
    .fetch_all(pool)
    .await
    .expect("relay dead letters")
}

/// Asserts every stored event but those parked at the relay is on the
/// stream exactly once (`assert_stream_matches_store` less the parked
/// ones); returns the stream's messages in stream order.
pub async fn assert_stream_matches_store_but_relay_parks(
    pool: &PgPool,
    nats: &async_nats::Client,
    stream: &chronicle_nats::StreamSettings,
) -> Vec<(String, chronicle_nats::EventEnvelope)> {
    use std::collections::HashSet;
    let parked: HashSet<String> = open_relay_parks(pool).await.into_iter().collect();
    let stored: HashSet<String> = crate::common::stored_event_ids(pool)
        .await
        .into_iter()
        .collect();
    let expected: HashSet<&String> = stored.difference(&parked).collect();
    let received = crate::common::read_stream(
        nats,
        stream,
        format!("{}.>", stream.subject_prefix),
        expected.len(),
    )
    .await;
    let on_stream: Vec<&String> = received.iter().map(|(id, _)| id).collect();
    let distinct: HashSet<&String> = on_stream.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        on_stream.len(),
        "no event is on the stream twice"
    );
    assert_eq!(
        distinct, expected,
        "the stream holds exactly the stored events but the relay-parked ones"
    );
    let info = async_nats::jetstream::new(nats.clone())
        .get_stream(&stream.name)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(
        info.state.messages as usize,
        expected.len(),
        "the stream holds no duplicate and no parked event"
    );
    received
}

/// While events are parked at the relay the audit trail has not seen them
/// (`docs/architecture.md`, "Poison events"): asserts it has one entry per
/// other event, in commit order, and that the verifier's first finding is
/// the first parked event, missing. Returns the trail's rows.
pub async fn assert_audit_trail_complete_but_relay_parks(pool: &PgPool) -> Vec<String> {
    let parked = open_relay_parks(pool).await;
    let events: Vec<(String, String, i64)> = sqlx::query_as(
        "select aggregate_type, aggregate_id, sequence from events e \
         where not exists (select 1 from dead_letters d where d.stage = 'relay' \
           and d.released_at is null and d.aggregate_type = e.aggregate_type \
           and d.aggregate_id = e.aggregate_id and d.sequence = e.sequence) \
         order by transaction_id, global_position",
    )
    .fetch_all(pool)
    .await
    .expect("events");
    let entries = crate::common::eventually(Duration::from_secs(60), "the audit trail", || async {
        let entries: Vec<(i64, String, String, i64)> = sqlx::query_as(
            "select seq, aggregate_type, aggregate_id, aggregate_sequence from audit.entries \
                 where generation = (select max(generation) from audit.generations) order by seq",
        )
        .fetch_all(pool)
        .await
        .ok()?;
        (entries.len() >= events.len()).then_some(entries)
    })
    .await;
    assert_eq!(
        entries.len(),
        events.len(),
        "one audit entry per published event"
    );
    for (index, ((seq, kind, id, sequence), event)) in entries.iter().zip(&events).enumerate() {
        assert_eq!(*seq, index as i64 + 1, "audit seq without gaps");
        assert_eq!(
            &(kind.clone(), id.clone(), *sequence),
            event,
            "audit entry {seq} in commit order"
        );
    }
    let report = chronicle_projections::audit::verify::verify_chain(pool, Default::default())
        .await
        .expect("verify the audit chain");
    if let Some(first) = parked.first() {
        let failure = format!("{:?}", report.failure);
        assert!(
            failure.contains(&format!("event {first} ")) && failure.contains("has no audit entry"),
            "the verifier's first finding is the parked event {first}: {failure}"
        );
    } else {
        assert!(
            report.failure.is_none(),
            "the audit chain verifies: {:?}",
            report.failure
        );
    }
    crate::common::audit_trail_rows(pool).await
}

/// The read models equal a rebuild while events are parked at the relay: a
/// rebuild leaves out what the live side left out, and the rebuilt audit
/// trail is the live one.
pub async fn assert_read_models_equal_rebuild_but_relay_parks(pool: &PgPool) {
    let trail = assert_audit_trail_complete_but_relay_parks(pool).await;
    let live = crate::common::read_model_rows(pool).await;
    for projection in chronicle_projections::all_projections() {
        chronicle_projections::replay::rebuild(pool, projection.as_ref(), &|_, _| {})
            .await
            .expect("rebuild");
    }
    assert_eq!(
        live,
        crate::common::read_model_rows(pool).await,
        "live read models differ from a rebuild"
    );
    crate::common::assert_audit_rebuild_identical(pool, &trail).await;
}

/// Polls until the stream holds as many messages as the store has events
/// (less those parked at the relay).
pub async fn wait_for_relay(
    pool: &PgPool,
    nats: &async_nats::Client,
    stream: &chronicle_nats::StreamSettings,
    within: Duration,
) {
    let jetstream = async_nats::jetstream::new(nats.clone());
    crate::common::eventually(within, "the relay to publish every event", || async {
        let stored: i64 = sqlx::query_scalar(
            "select (select count(*) from events) - (select count(*) from dead_letters \
             where stage = 'relay' and released_at is null)",
        )
        .fetch_one(pool)
        .await
        .ok()?;
        let mut stream = jetstream.get_stream(&stream.name).await.ok()?;
        let on_stream = stream.info().await.ok()?.state.messages as i64;
        (on_stream >= stored).then_some(())
    })
    .await
}

/// Appends an event to an aggregate directly, as an old build or a bug
/// might have stored it (as `tests/poison.rs` does); returns its sequence.
pub async fn append_raw(
    pool: &PgPool,
    aggregate_type: &str,
    id: &str,
    event_type: &str,
    payload: &str,
) -> i64 {
    sqlx::query_scalar(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         values ($1, $2, (select coalesce(max(sequence), 0) + 1 from events where aggregate_type = $1 and aggregate_id = $2), \
                 $3, '1.0', $4::jsonb, '{}') returning sequence",
    )
    .bind(aggregate_type)
    .bind(id)
    .bind(event_type)
    .bind(payload)
    .fetch_one(pool)
    .await
    .expect("append a raw event")
}

/// A Postgres of the harness's own (initdb in a temp dir, as the `postgres`
/// OS user when run as root, as `deploy/dev-services.sh` does), so that a
/// restart disturbs no other test. `None` when no server binaries exist.
pub struct PrivatePostgres {
    root: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres_user: bool,
}

impl PrivatePostgres {
    /// `CHRONICLE_PG_BIN`, or the newest `/usr/lib/postgresql/<version>/bin` with initdb.
    fn find_bin() -> Option<PathBuf> {
        if let Ok(dir) = std::env::var("CHRONICLE_PG_BIN") {
            return Some(PathBuf::from(dir));
        }
        let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .filter_map(|entry| {
                let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = entry.path().join("bin");
                bin.join("initdb").exists().then_some((version, bin))
            })
            .collect();
        found.sort();
        found.pop().map(|(_, bin)| bin)
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// initdb and start; `Err` says why it cannot run here.
    pub fn start(port: u16) -> Result<Self, String> {
        let bin = Self::find_bin().ok_or("no Postgres binaries (set CHRONICLE_PG_BIN)")?;
        let root = std::env::temp_dir().join(format!(
            "chronicle-faults-pg-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&root).map_err(|e| format!("create {}: {e}", root.display()))?;
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let postgres = Self {
            root,
            bin,
            port,
            as_postgres_user: is_root,
        };
        if is_root {
            let chown = Command::new("chown")
                .arg("postgres:")
                .arg(&postgres.root)
                .status()
                .map_err(|e| format!("chown: {e}"))?;
            if !chown.success() {
                return Err("chown to the postgres user failed".into());
            }
        }
        let initdb = postgres
            .command("initdb")
            .arg("-D")
            .arg(postgres.data())
            .args([
                "--auth=trust",
                "-U",
                "postgres",
                "--encoding=UTF8",
                "--no-locale",
            ])
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !initdb.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&initdb.stderr)
            ));
        }
        let config = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nmax_connections = 200\n",
            postgres.root.display()
        );
        let conf = postgres.data().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).map_err(|e| format!("read conf: {e}"))?;
        text.push_str(&config);
        std::fs::write(&conf, text).map_err(|e| format!("write conf: {e}"))?;
        postgres.start_server()?;
        Ok(postgres)
    }

    pub fn start_server(&self) -> Result<(), String> {
        let output = self
            .command("pg_ctl")
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(self.data())
            .arg("-l")
            .arg(self.root.join("postgres.log"))
            .output()
            .map_err(|e| format!("pg_ctl start: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// `pg_ctl stop -m immediate`: every server process quits at once, no
    /// shutdown checkpoint; the next start recovers from the WAL, as after a crash.
    pub fn stop_immediately(&self) {
        let _ = self
            .command("pg_ctl")
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(self.data())
            .output();
    }

    /// Makes every new transaction read-only (`ALTER SYSTEM SET
    /// default_transaction_read_only`, then `pg_reload_conf()`, which the
    /// running sessions pick up too), or lifts it: writes fail with SQLSTATE
    /// 25006 while reads go on, as they would on a full disk (which cannot
    /// be made without root-only tricks; see docs/testing.md).
    pub async fn set_read_only(&self, on: bool) {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .expect("connect to the private postgres");
        let statement = if on {
            "alter system set default_transaction_read_only = on"
        } else {
            "alter system reset default_transaction_read_only"
        };
        sqlx::query(statement)
            .execute(&mut admin)
            .await
            .expect("alter system");
        sqlx::query("select pg_reload_conf()")
            .execute(&mut admin)
            .await
            .expect("reload the configuration");
        let _ = admin.close().await;
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop_immediately();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
