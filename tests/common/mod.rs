//! Test harness: every test gets its own database, its own JetStream stream and
//! subject prefix, and the real application on a random port.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod fake_llm;
pub mod fake_mcp;
pub mod log_capture;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy};
use chronicle::config::{
    Argon2Settings, AuthSettings, DatabaseSettings, HttpSettings, LogSettings, NatsSettings,
    RateLimitSettings,
};
use chronicle::{Application, Components, Settings};
use chronicle_nats::{EventEnvelope, StreamSettings};
use futures::StreamExt;
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub fn admin_database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:55432/chronicle".into())
}

pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:54222".into())
}

pub fn signing_key_pem() -> String {
    static PEM: OnceLock<String> = OnceLock::new();
    PEM.get_or_init(|| chronicle::auth::keys::generate_private_key_pem().expect("rsa key"))
        .clone()
}

fn init_test_logging() {
    if std::env::var_os("TEST_LOG").is_some() {
        chronicle::telemetry::init_tracing(&LogSettings {
            filter: std::env::var("TEST_LOG").unwrap_or_else(|_| "info".into()),
            json: false,
        });
    }
}

/// A fresh database with migrations applied; returns its URL.
pub async fn create_test_database() -> String {
    let admin_url = admin_database_url();
    let name = format!("test_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .expect("connect to the admin database");
    sqlx::query(&format!("create database {name}"))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let url = match admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("DATABASE_URL has no database name"),
    };
    let pool = PgPool::connect(&url)
        .await
        .expect("connect to test database");
    chronicle::startup::migrate(&pool).await.expect("migrate");
    pool.close().await;
    url
}

/// Settings for a test: own database, own stream, own data dir, fast hashing.
pub async fn test_settings() -> Settings {
    let id = Uuid::new_v4().simple().to_string();
    let data_dir: PathBuf = std::env::temp_dir().join(format!("chronicle-test-{id}"));
    Settings {
        http: HttpSettings {
            addr: "127.0.0.1:0".parse().unwrap(),
            body_limit_bytes: 1024 * 1024,
            consistency_wait: Duration::from_secs(10),
            consistency_max_waiters: 256,
            consistency_max_waiters_per_user: 8,
            request_timeout: Duration::from_secs(30),
            cors_origins: vec!["capacitor://localhost".into(), "http://localhost".into()],
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(10),
            max_streams: None,
            stream_send_timeout: Duration::from_secs(30),
            max_feeds_per_user: 16,
            max_in_flight: 512,
            body_read_timeout: Duration::from_secs(20),
        },
        database: DatabaseSettings {
            url: SecretString::from(create_test_database().await),
            max_connections: 20,
            acquire_timeout: Duration::from_secs(3),
        },
        nats: NatsSettings {
            url: nats_url(),
            stream: StreamSettings {
                name: format!("TEST_{}", id.to_uppercase()),
                subject_prefix: format!("test_{id}.chronicle.events"),
                ..StreamSettings::default()
            },
        },
        auth: AuthSettings {
            private_key_file: None,
            private_key_pem: Some(SecretString::from(signing_key_pem())),
            issuer: "chronicle".into(),
            audience: "chronicle-api".into(),
            access_token_ttl: Duration::from_secs(900),
            refresh_token_ttl: Duration::from_secs(7 * 24 * 3600),
            argon2: Argon2Settings {
                memory_kib: 1024,
                iterations: 1,
                parallelism: 1,
            },
        },
        log: LogSettings {
            filter: "info".into(),
            json: false,
        },
        // Generous: tests hammer one app from one address; the rate-limit
        // test lowers these on purpose.
        rate_limit: RateLimitSettings {
            per_user_per_minute: 100_000,
            per_ip_per_minute: 100_000,
            auth_per_ip_per_minute: 10_000,
        },
        audit: chronicle::audit::AuditSettings::default(),
        data_dir,
        // No models: chat routes answer 503 unless a test points them at
        // a fake (`fake_llm::FakeLlm::configure`).
        llm: chronicle::config::LlmSettings::default(),
        // The fake MCP servers of the tests listen on loopback.
        mcp: chronicle::config::McpSettings {
            allow_private: true,
            ..chronicle::config::McpSettings::default()
        },
        secrets: chronicle::config::SecretsSettings::default(),
        files: chronicle::config::FilesSettings::default(),
    }
}

/// The running application and a client for it.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub settings: Settings,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// Whether dropping or stopping it removes its database, stream and data dir.
    owns_resources: bool,
}

/// The password of every user [`TestApp::register`] creates.
pub const TEST_PASSWORD: &str = "correct horse battery";

/// A signed-up user.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: Uuid,
    pub email: String,
    pub token: String,
    pub refresh_token: String,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(test_settings().await).await
    }

    pub async fn spawn_with(settings: Settings) -> Self {
        Self::spawn_components(settings, Components::ALL).await
    }

    /// Stops the application gracefully and waits for it, then removes its
    /// database, stream and data dir.
    pub async fn stop(mut self) {
        self.stop_running().await;
        if std::mem::take(&mut self.owns_resources) {
            remove_test_resources(&self.settings).await;
        }
    }

    /// Stops the application but keeps its database, stream and data dir,
    /// for a test that starts it again with the same settings (that
    /// application then owns them).
    pub async fn stop_keeping_data(mut self) {
        self.owns_resources = false;
        self.stop_running().await;
    }

    async fn stop_running(&mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle.await.expect("app task").expect("app run");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn register(&self, email: &str) -> TestUser {
        let response = self
            .post_anonymous(
                "/v1/auth/register",
                json!({"email": email, "password": TEST_PASSWORD}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "register {email}");
        let body: Value = response.json().await.unwrap();
        TestUser {
            id: body["user"]["id"].as_str().unwrap().parse().unwrap(),
            email: email.to_string(),
            token: body["access_token"].as_str().unwrap().to_string(),
            refresh_token: body["refresh_token"].as_str().unwrap().to_string(),
        }
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        user: &TestUser,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .request(method, self.url(path))
            .bearer_auth(&user.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("request")
    }

    /// Logs `email` in again (with the password [`TestApp::register`] uses).
    pub async fn login(&self, email: &str) -> TestUser {
        let response = self
            .post_anonymous(
                "/v1/auth/login",
                json!({"email": email, "password": TEST_PASSWORD}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK, "login {email}");
        let body: Value = response.json().await.unwrap();
        TestUser {
            id: body["user"]["id"].as_str().unwrap().parse().unwrap(),
            email: email.to_string(),
            token: body["access_token"].as_str().unwrap().to_string(),
            refresh_token: body["refresh_token"].as_str().unwrap().to_string(),
        }
    }

    /// Grants `role` (as `chronicle user grant-role` does) and returns the
    /// user with a fresh access token that carries it.
    pub async fn grant_role(&self, user: &TestUser, role: &str) -> TestUser {
        chronicle::accounts::grant_role(&self.pool, self.settings.auth.argon2, &user.email, role)
            .await
            .expect("grant role");
        self.login(&user.email).await
    }

    /// POSTs `body` without credentials.
    pub async fn post_anonymous(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    /// [`TestApp::send`], then the response body as JSON.
    pub async fn send_json<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        user: &TestUser,
        body: Option<Value>,
    ) -> T {
        self.send(method, path, user, body)
            .await
            .json()
            .await
            .expect("a JSON body")
    }

    pub async fn create_task(&self, user: &TestUser, title: &str) -> Value {
        let response = self
            .send(
                reqwest::Method::POST,
                "/v1/tasks",
                user,
                Some(json!({"title": title})),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }

    /// Waits until every stored event is applied by the projections that consume its type.
    pub async fn wait_for_projections(&self) {
        wait_for_projections(&self.pool).await
    }
}

/// A test that ends without [`TestApp::stop`] (a failed assertion) still
/// removes what it created.
impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if !self.owns_resources {
            return;
        }
        let settings = self.settings.clone();
        // Drop cannot await, and may run inside the test's runtime.
        let cleanup = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(remove_test_resources(&settings));
            }
        });
        let _ = cleanup.join();
    }
}

/// Removes a test's database, JetStream stream and data dir; what is
/// already gone is fine.
pub async fn remove_test_resources(settings: &Settings) {
    use secrecy::ExposeSecret;
    let connected = tokio::time::timeout(
        Duration::from_secs(5),
        async_nats::connect(&settings.nats.url),
    )
    .await;
    if let Ok(Ok(client)) = connected {
        let jetstream = async_nats::jetstream::new(client);
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            jetstream.delete_stream(&settings.nats.stream.name),
        )
        .await;
    }
    let url = settings.database.url.expose_secret();
    if let Some((_, name)) = url.rsplit_once('/') {
        if name.starts_with("test_") {
            if let Ok(mut admin) = PgConnection::connect(&admin_database_url()).await {
                let _ = sqlx::query(&format!("drop database if exists {name} with (force)"))
                    .execute(&mut admin)
                    .await;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&settings.data_dir);
}

/// Polls until the read models have applied every event in the store.
pub async fn wait_for_projections(pool: &PgPool) {
    // Every (aggregate type, projection) pair a read model consumes; the
    // audit trail has its own wait (`wait_for_audit`).
    let (types, projections): (Vec<&str>, Vec<&str>) = chronicle_projections::all_projections()
        .iter()
        .filter(|p| p.name() != chronicle_projections::audit::AUDIT_PROJECTION)
        .flat_map(|p| p.aggregate_types().iter().map(move |t| (*t, p.name())))
        .unzip();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let behind: i64 = sqlx::query_scalar(
            "with consumers as (select * from unnest($1::text[], $2::text[]) as c(aggregate_type, projection)), \
             latest as ( \
               select e.aggregate_type, e.aggregate_id, max(e.sequence) as last from events e \
               where e.aggregate_type in (select aggregate_type from consumers) group by 1, 2) \
             select count(*) from latest l join consumers c using (aggregate_type) \
             left join read.aggregate_versions v \
               on v.aggregate_type = l.aggregate_type and v.aggregate_id = l.aggregate_id \
              and v.projection = c.projection \
             where coalesce(v.version, 0) < l.last",
        )
        .bind(&types)
        .bind(&projections)
        .fetch_one(pool)
        .await
        .expect("projection progress");
        if behind == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "projections still {behind} aggregates behind"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every row of every read model, as JSON, in a stable order.
pub async fn read_model_rows(pool: &PgPool) -> Vec<Value> {
    let mut rows = Vec::new();
    for (table, order) in [
        ("tasks", "id"),
        ("users", "id"),
        ("auth_sessions", "id"),
        ("projects", "id"),
        ("chat_sessions", "id"),
        ("chat_messages", "id"),
        ("tool_executions", "id"),
        ("mcp_servers", "id"),
        ("mcp_tools", "server_id, position"),
        ("analytics_hourly", "metric, hour"),
        ("notifications", "id"),
        ("notification_sources", "aggregate_type, aggregate_id"),
        ("files", "id"),
    ] {
        let table_rows: Vec<Value> = sqlx::query_scalar(&format!(
            "select to_jsonb(t) from read.{table} t order by {order}"
        ))
        .fetch_all(pool)
        .await
        .unwrap();
        rows.extend(table_rows);
    }
    // Maintained counts: a count that dropped to 0 may keep its row live and
    // not in a rebuild; what a reader sees is the non-zero counts.
    let counts: Vec<Value> = sqlx::query_scalar(
        "select to_jsonb(t) from read.task_counts t where n <> 0 \
         order by owner_id, completed, is_deleted",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.extend(counts);
    rows
}

/// Rebuilds every projection from the event store and asserts nothing changed.
pub async fn assert_read_models_equal_rebuild(pool: &PgPool) {
    let trail = assert_audit_trail_complete(pool).await;
    let live = read_model_rows(pool).await;
    // As `chronicle replay --projection all` does: together, on one read.
    let projections = chronicle_projections::all_projections();
    let together: Vec<&dyn chronicle_projections::Projection> =
        projections.iter().map(|p| p.as_ref()).collect();
    chronicle_projections::replay::rebuild_together(pool, &together, &|_, _, _| {})
        .await
        .expect("rebuild");
    let rebuilt = read_model_rows(pool).await;
    assert_eq!(live, rebuilt, "live read models differ from a rebuild");
    assert_audit_rebuild_identical(pool, &trail).await;
}

/// Polls `check` every 20 ms until it returns `Some`, failing after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl TestApp {
    /// [`TestApp::spawn_with`], running only `components` (e.g. the API
    /// alone, when a test fills the event store itself and wants no relay).
    pub async fn spawn_components(settings: Settings, components: Components) -> Self {
        init_test_logging();
        let app = Application::build(settings.clone(), components)
            .await
            .expect("build app");
        let addr = app.local_addr().expect("api address");
        let shutdown = app.shutdown_token();
        let pool = app.state().pool.clone();
        let handle = tokio::spawn(app.run());
        let nats = async_nats::connect(&settings.nats.url).await.expect("nats");
        Self {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            pool,
            nats,
            settings,
            shutdown,
            handle: Some(handle),
            owns_resources: true,
        }
    }

    /// A user with `role` (registered, granted, logged in again).
    pub async fn user_with_role(&self, email: &str, role: &str) -> TestUser {
        let user = self.register(email).await;
        self.grant_role(&user, role).await
    }
}

/// Polls until every stored event has its entry in the newest generation of
/// the audit trail; returns the number of entries.
/// Holds projection `name` back: its live batches (and rebuilds) take this
/// advisory lock, so nothing more reaches its read model until the returned
/// connection unlocks it (`release_projection`) or is dropped.
pub async fn hold_projection(
    pool: &PgPool,
    name: &str,
) -> sqlx::pool::PoolConnection<sqlx::Postgres> {
    let mut holder = pool.acquire().await.unwrap();
    sqlx::query("select pg_advisory_lock($1)")
        .bind(chronicle_projections::projection::lock_key(name))
        .execute(&mut *holder)
        .await
        .unwrap();
    holder
}

/// Lets a projection held by [`hold_projection`] go on.
pub async fn release_projection(
    mut holder: sqlx::pool::PoolConnection<sqlx::Postgres>,
    name: &str,
) {
    sqlx::query("select pg_advisory_unlock($1)")
        .bind(chronicle_projections::projection::lock_key(name))
        .execute(&mut *holder)
        .await
        .unwrap();
}

pub async fn wait_for_audit(pool: &PgPool) -> i64 {
    eventually(Duration::from_secs(60), "the audit trail", || async {
        let (events, entries): (i64, i64) = sqlx::query_as(
            "select (select count(*) from events), \
                    (select count(*) from audit.entries \
                      where generation = (select max(generation) from audit.generations))",
        )
        .fetch_one(pool)
        .await
        .ok()?;
        (events == entries).then_some(entries)
    })
    .await
}

/// The entries of the newest audit generation as text (without the
/// generation number), by seq.
pub async fn audit_trail_rows(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "select (to_jsonb(e) - 'generation')::text from audit.entries e \
         where generation = (select max(generation) from audit.generations) order by seq",
    )
    .fetch_all(pool)
    .await
    .expect("audit entries")
}

/// Waits for the audit trail, then asserts it has exactly one entry per
/// stored event, in commit order, and that its chain verifies against the
/// event store. Returns its rows, for [`assert_audit_rebuild_identical`].
pub async fn assert_audit_trail_complete(pool: &PgPool) -> Vec<String> {
    wait_for_audit(pool).await;
    let events: Vec<(String, String, i64)> = sqlx::query_as(
        "select aggregate_type, aggregate_id, sequence from events \
         order by transaction_id, global_position",
    )
    .fetch_all(pool)
    .await
    .expect("events");
    let entries: Vec<(i64, String, String, i64)> = sqlx::query_as(
        "select seq, aggregate_type, aggregate_id, aggregate_sequence from audit.entries \
         where generation = (select max(generation) from audit.generations) order by seq",
    )
    .fetch_all(pool)
    .await
    .expect("audit entries");
    assert_eq!(entries.len(), events.len(), "one audit entry per event");
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
    assert!(
        report.failure.is_none(),
        "the audit chain verifies: {:?}",
        report.failure
    );
    audit_trail_rows(pool).await
}

/// After a rebuild: the new generation of the audit trail starts with
/// exactly the entries the live one had, byte for byte.
pub async fn assert_audit_rebuild_identical(pool: &PgPool, live: &[String]) {
    let rebuilt = audit_trail_rows(pool).await;
    assert!(rebuilt.len() >= live.len(), "the rebuilt trail is complete");
    assert_eq!(
        &rebuilt[..live.len()],
        live,
        "the rebuilt audit trail differs from the live one"
    );
}

/// A nats-server of the test's own, so stopping it disturbs no other test.
pub struct OwnNats {
    port: u16,
    store: std::path::PathBuf,
    /// Extra server configuration (nats-server's config file syntax).
    config: Option<String>,
    child: Option<Child>,
}

impl OwnNats {
    pub fn start(port: u16, store: std::path::PathBuf) -> Self {
        Self::start_with_config(port, store, None)
    }

    /// Starts it with `config` (e.g. `max_payload: 65536`) as its config file.
    pub fn start_with_config(port: u16, store: std::path::PathBuf, config: Option<String>) -> Self {
        let mut nats = Self {
            port,
            store,
            config,
            child: None,
        };
        nats.restart();
        nats
    }

    /// Replaces the configuration used by the next [`OwnNats::restart`].
    pub fn set_config(&mut self, config: Option<String>) {
        self.config = config;
    }

    pub fn restart(&mut self) {
        let binary =
            std::env::var("CHRONICLE_NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
        let child = Command::new(binary)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.store)
            .args(self.config_file())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server (set CHRONICLE_NATS_SERVER_BIN)");
        self.child = Some(child);
    }

    fn config_file(&self) -> Vec<std::ffi::OsString> {
        let Some(config) = &self.config else {
            return Vec::new();
        };
        std::fs::create_dir_all(&self.store).expect("nats store dir");
        let path = self.store.join("test.conf");
        std::fs::write(&path, config).expect("write nats config");
        vec!["-c".into(), path.into_os_string()]
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id while it runs (for SIGSTOP / SIGCONT).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Where it keeps its JetStream files.
    pub fn store_dir(&self) -> &std::path::Path {
        &self.store
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn wait_for_port(port: u16) {
    eventually(Duration::from_secs(20), "the port to open", || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
}

/// Every message on `filter` (deduplicated by `Nats-Msg-Id`), once `expected` distinct ones arrived.
pub async fn read_stream(
    nats: &async_nats::Client,
    stream: &StreamSettings,
    filter: String,
    expected: usize,
) -> Vec<(String, EventEnvelope)> {
    let jetstream = jetstream::new(nats.clone());
    let consumer = eventually(Duration::from_secs(30), "the events stream", || {
        let jetstream = jetstream.clone();
        let filter = filter.clone();
        async move {
            let stream = jetstream.get_stream(&stream.name).await.ok()?;
            stream
                .create_consumer(pull::Config {
                    filter_subject: filter,
                    ack_policy: AckPolicy::None,
                    ..Default::default()
                })
                .await
                .ok()
        }
    })
    .await;
    let mut messages = consumer.messages().await.expect("consume");
    let mut received = Vec::new();
    let mut seen = HashSet::new();
    while seen.len() < expected {
        let message = tokio::time::timeout(Duration::from_secs(60), messages.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {expected} events arrived", seen.len()))
            .expect("stream open")
            .expect("message");
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .expect("Nats-Msg-Id")
            .to_string();
        let envelope: EventEnvelope = serde_json::from_slice(&message.payload).expect("envelope");
        seen.insert(id.clone());
        received.push((id, envelope));
    }
    received
}

pub async fn stored_event_ids(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("select aggregate_type || ':' || aggregate_id || ':' || sequence from events order by global_position")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Asserts every stored event is on the stream exactly once; returns the
/// stream's messages in stream order.
pub async fn assert_stream_matches_store(
    pool: &PgPool,
    nats: &async_nats::Client,
    stream: &StreamSettings,
) -> Vec<(String, EventEnvelope)> {
    let stored = stored_event_ids(pool).await;
    let received = read_stream(
        nats,
        stream,
        format!("{}.>", stream.subject_prefix),
        stored.len(),
    )
    .await;
    let on_stream: Vec<&String> = received.iter().map(|(id, _)| id).collect();
    let distinct: HashSet<&String> = on_stream.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        on_stream.len(),
        "no event is on the stream twice"
    );
    let stored_set: HashSet<&String> = stored.iter().collect();
    assert_eq!(
        distinct, stored_set,
        "the stream holds exactly the stored events"
    );
    let info = jetstream::new(nats.clone())
        .get_stream(&stream.name)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(
        info.state.messages as usize,
        stored.len(),
        "the stream holds no duplicate"
    );
    received
}
