//! The benchmark's own world: a fresh database, its own stream, the release
//! server as a child process on a free port, and an RSS sampler watching it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hyper::Method;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::process::{Child, Command};

use crate::load::{once, Req};

/// Names shared by everything one benchmark run creates.
pub struct World {
    pub admin_url: String,
    pub nats_url: String,
    pub database: String,
    pub database_url: String,
    pub stream: String,
    pub subject_prefix: String,
    pub chronicle: PathBuf,
    pub out_dir: PathBuf,
    /// The fake chat upstream's `OPENAI_BASE_URL`, when one runs.
    pub upstream: Option<String>,
}

impl World {
    pub fn new(chronicle: PathBuf, out_dir: PathBuf, run_id: &str) -> anyhow::Result<Self> {
        let admin_url = std::env::var("DATABASE_URL").context(
            "DATABASE_URL must name the admin database (eval \"$(deploy/dev-services.sh env)\")",
        )?;
        let nats_url =
            std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:54222".into());
        let database = format!("chronicle_bench_{run_id}");
        Ok(Self {
            database_url: database_url_for(&admin_url, &database)?,
            admin_url,
            nats_url,
            database,
            stream: format!("BENCH_{}", run_id.to_uppercase()),
            subject_prefix: format!("bench_{run_id}.chronicle.events"),
            chronicle,
            out_dir,
            upstream: None,
        })
    }
}

/// `admin_url` with its database name replaced.
pub fn database_url_for(admin_url: &str, database: &str) -> anyhow::Result<String> {
    let (base, rest) = admin_url
        .rsplit_once('/')
        .context("DATABASE_URL has no database name")?;
    let query = rest
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    Ok(format!("{base}/{database}{query}"))
}

/// Creates `database` and migrates it with `chronicle migrate`.
pub async fn create_database(world: &World, database: &str) -> anyhow::Result<String> {
    let mut admin = PgConnection::connect(&world.admin_url)
        .await
        .context("connecting to the admin database")?;
    sqlx::query(&format!("create database {database}"))
        .execute(&mut admin)
        .await
        .with_context(|| format!("creating database {database}"))?;
    let url = database_url_for(&world.admin_url, database)?;
    let output = Command::new(&world.chronicle)
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .env("CHRONICLE_LOG", "warn")
        .output()
        .await
        .context("running chronicle migrate")?;
    if !output.status.success() {
        bail!(
            "chronicle migrate failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(url)
}

pub async fn drop_database(world: &World, database: &str) -> anyhow::Result<()> {
    let mut admin = PgConnection::connect(&world.admin_url).await?;
    sqlx::query(&format!("drop database if exists {database} with (force)"))
        .execute(&mut admin)
        .await?;
    Ok(())
}

/// A free port on 127.0.0.1 (the tiny race with another process is acceptable here).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// The running `chronicle serve --all` and its memory figures.
pub struct Server {
    pub addr: SocketAddr,
    child: Child,
    pub pid: u32,
    pub rss: Arc<RssSampler>,
}

/// Environment of every chronicle process the bench starts.
pub fn chronicle_env(world: &World, database_url: &str) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", database_url.to_string()),
        ("NATS_URL", world.nats_url.clone()),
        ("CHRONICLE_STREAM", world.stream.clone()),
        ("CHRONICLE_SUBJECT_PREFIX", world.subject_prefix.clone()),
        ("CHRONICLE_LOG", "warn".into()),
        ("CHRONICLE_LOG_FORMAT", "json".into()),
        (
            "CHRONICLE_DATA_DIR",
            world.out_dir.join("data").display().to_string(),
        ),
        // One run may outlast the default 15-minute access token.
        ("CHRONICLE_ACCESS_TOKEN_TTL_SECS", "7200".into()),
        // Every request comes from 127.0.0.1 and a handful of users: the
        // per-IP and per-user limits would measure the limiter, not the system.
        ("CHRONICLE_RATE_LIMIT_USER_PER_MINUTE", "0".into()),
        ("CHRONICLE_RATE_LIMIT_IP_PER_MINUTE", "0".into()),
        ("CHRONICLE_RATE_LIMIT_AUTH_PER_MINUTE", "0".into()),
        // Likewise the per-user cap on read-your-writes waits: a handful of
        // users stand for many.
        ("CHRONICLE_CONSISTENCY_MAX_WAITERS_PER_USER", "256".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The chat upstream (the bench's fake) and limits sized for the chat
/// scenarios: 16 clients on eight users, 1,000 open event streams.
fn chat_env(world: &World) -> Vec<(&'static str, String)> {
    let Some(base_url) = &world.upstream else {
        return Vec::new();
    };
    vec![
        (
            "CHRONICLE_MODELS",
            format!(
                "{}=openai:{}",
                crate::chat::MODEL,
                crate::fake_upstream::UPSTREAM_MODEL
            ),
        ),
        ("OPENAI_BASE_URL", base_url.clone()),
        ("OPENAI_API_KEY", "sk-bench-not-a-secret".into()),
        // Tokens per user and minute, and streams per user: a handful of
        // users stand for many, as with the rate limits.
        ("CHRONICLE_CHAT_TOKENS_PER_MINUTE", "0".into()),
        ("CHRONICLE_CHAT_MAX_STREAMS_PER_USER", "1024".into()),
        // 1,000 event streams plus the other clients: above the default 1,024.
        ("CHRONICLE_HTTP_MAX_CONNECTIONS", "2048".into()),
        // The sse scenario opens 1,000 feeds for a few users.
        ("CHRONICLE_HTTP_MAX_FEEDS_PER_USER", "1024".into()),
    ]
}

impl Server {
    /// Starts the server and waits until `/ready` answers 200.
    pub async fn start(world: &World) -> anyhow::Result<Self> {
        let addr = free_addr()?;
        let log =
            std::fs::File::create(world.out_dir.join(format!("{}.server.log", world.database)))?;
        let mut command = Command::new(&world.chronicle);
        command
            .args(["serve", "--all"])
            .envs(chronicle_env(world, &world.database_url))
            .env("CHRONICLE_ADDR", addr.to_string())
            .envs(chat_env(world))
            // Whatever the caller's shell has (e.g. CHRONICLE_DB_MAX_CONNECTIONS)
            // still applies, as with `make run`.
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = command.spawn().context("starting chronicle serve --all")?;
        let pid = child.id().context("server pid")?;
        let rss = RssSampler::start(pid);
        let server = Self {
            addr,
            child,
            pid,
            rss,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = once(
                addr,
                &Req {
                    method: Method::GET,
                    path: "/ready".into(),
                    token: None,
                    body: None,
                    group: 0,
                },
            )
            .await;
            if matches!(&ready, Ok(reply) if reply.status.is_success()) {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!("the server did not become ready in 60 s (see its server.log in the output directory)");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then wait (SIGKILL after 20 s).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        match tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => self.child.kill().await?,
        }
        self.rss.stop();
        Ok(())
    }
}

/// Samples a process's resident set every 100 ms and keeps the peak.
pub struct RssSampler {
    peak_kib: AtomicU64,
    current_kib: AtomicU64,
    hwm_kib: AtomicU64,
    stopped: std::sync::atomic::AtomicBool,
}

impl RssSampler {
    fn start(pid: u32) -> Arc<Self> {
        let sampler = Arc::new(Self {
            peak_kib: AtomicU64::new(0),
            current_kib: AtomicU64::new(0),
            hwm_kib: AtomicU64::new(0),
            stopped: Default::default(),
        });
        let s = sampler.clone();
        tokio::spawn(async move {
            let path = format!("/proc/{pid}/status");
            while !s.stopped.load(Ordering::Relaxed) {
                if let Ok(status) = std::fs::read_to_string(&path) {
                    if let Some(rss) = status_kib(&status, "VmRSS:") {
                        s.current_kib.store(rss, Ordering::Relaxed);
                        s.peak_kib.fetch_max(rss, Ordering::Relaxed);
                    }
                    if let Some(hwm) = status_kib(&status, "VmHWM:") {
                        s.hwm_kib.fetch_max(hwm, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        sampler
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// Peak resident set in MiB: the kernel's high-water mark, or our highest sample.
    pub fn peak_mib(&self) -> f64 {
        let kib = self
            .hwm_kib
            .load(Ordering::Relaxed)
            .max(self.peak_kib.load(Ordering::Relaxed));
        kib as f64 / 1024.0
    }

    pub fn current_mib(&self) -> f64 {
        self.current_kib.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find(|line| line.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A registered user and the `Authorization` value of its access token.
#[derive(Clone)]
pub struct User {
    pub auth: Arc<str>,
}

pub async fn register(addr: SocketAddr, n: usize, run_id: &str) -> anyhow::Result<User> {
    let email = format!("bench{n}-{run_id}@example.com");
    let req = Req {
        method: Method::POST,
        path: "/v1/auth/register".into(),
        token: None,
        body: None,
        group: 0,
    }
    .json(json!({"email": email, "password": "a long bench passphrase 42"}));
    let reply = once(addr, &req).await?;
    if reply.status.as_u16() != 201 {
        bail!(
            "register answered {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
    }
    let body: Value = serde_json::from_slice(&reply.body)?;
    let token = body["access_token"]
        .as_str()
        .context("no access_token in the register answer")?;
    Ok(User {
        auth: Arc::from(format!("Bearer {token}")),
    })
}

/// A pool on the bench database for checks and setup.
pub async fn pool(url: &str) -> anyhow::Result<PgPool> {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(url)
        .await
        .context("connecting to the bench database")
}

/// `program --version`-like one-liners for the report.
pub async fn command_line(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output().await {
        Ok(output) => String::from_utf8_lossy(&output.stdout).trim().to_string(),
        Err(_) => String::new(),
    }
}

pub fn read_trimmed(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Raises this process's soft open-file limit to `needed` (at most the hard
/// limit) with `prlimit`, so that the server started next inherits it.
/// Best effort: the sse scenario reports streams that fail to open.
pub async fn raise_open_files(needed: u64) {
    let limits = read_trimmed("/proc/self/limits");
    let Some((soft, hard)) = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| {
            let mut numbers = line.split_whitespace().skip(3);
            Some((numbers.next()?.to_string(), numbers.next()?.to_string()))
        })
    else {
        return;
    };
    let soft: u64 = soft.parse().unwrap_or(u64::MAX);
    if soft >= needed {
        return;
    }
    // `hard` may be `unlimited`, which prlimit also understands.
    let target = needed.min(hard.parse().unwrap_or(u64::MAX));
    let pid = std::process::id().to_string();
    let raised = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={target}:{hard}")])
        .status()
        .await;
    if !matches!(raised, Ok(status) if status.success()) {
        eprintln!("bench: open-file limit {soft} (could not raise it to {target} with prlimit)");
    }
}

/// The main process of the Postgres server behind `pool` (the parent of its
/// backends), if this machine runs it.
pub async fn postmaster_pid(pool: &PgPool) -> Option<u32> {
    let backend: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(pool)
        .await
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{backend}/stat")).ok()?;
    // After "(name) state": the parent's pid.
    stat.get(stat.rfind(')')? + 2..)?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
