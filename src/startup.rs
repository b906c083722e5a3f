//! Builds the application from [`Settings`] and runs the chosen components:
//! the API, the relay, the projection workers, or all of them in one process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chronicle_nats::{Relay, RelayConfig};
use chronicle_projections::audit::{AuditConfig, CheckpointSigner};
use chronicle_projections::{all_projections_signed, ProjectionRunner, ReleaseRequests};
use secrecy::ExposeSecret;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use chronicle_aggregates::user::UserServices;

use crate::audit::stream::StreamBudget;
use crate::auth::{PasswordService, SigningKeys, TokenIssuer};
use crate::commands::CommandExecutor;
use crate::config::Settings;
use crate::consistency::{Consistency, TokenKeys, WaitLimits};
use crate::http::server::{serve, ServerLimits};
use crate::state::{AppState, Shared};
use crate::telemetry::metrics_handle;

/// Which parts run in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Components {
    pub api: bool,
    pub relay: bool,
    pub projections: bool,
}

impl Components {
    pub const ALL: Self = Self {
        api: true,
        relay: true,
        projections: true,
    };
}

/// A built, not yet running, Chronicle process.
pub struct Application {
    listener: Option<TcpListener>,
    state: AppState,
    tasks: JoinSet<()>,
    shutdown: CancellationToken,
    runners: Vec<ProjectionRunner>,
    relay: Option<Relay>,
    /// Signs the audit chain head on a timer, where the projections run.
    audit_checkpointer: Option<(Arc<dyn CheckpointSigner>, Duration)>,
}

/// How long start-up waits for a Postgres that is not up yet (starting,
/// restarting, unreachable) before it gives up.
pub const DATABASE_STARTUP_WAIT: Duration = Duration::from_secs(60);

/// Connects to Postgres with the configured pool size. A database that is
/// not up yet (refusing, unreachable, a name that does not resolve yet,
/// starting up) is tried again, with growing pauses, until
/// [`DATABASE_STARTUP_WAIT`] has passed (plus the attempt then running, at
/// most the pool's acquire timeout); anything else (a wrong password, a
/// database that does not exist) fails at once.
pub async fn connect_database(settings: &Settings) -> anyhow::Result<PgPool> {
    let options = PgPoolOptions::new()
        .max_connections(settings.database.max_connections)
        .acquire_timeout(settings.database.acquire_timeout);
    let url = settings.database.url.expose_secret();
    let deadline = tokio::time::Instant::now() + DATABASE_STARTUP_WAIT;
    let mut pause = Duration::from_millis(250);
    loop {
        match options.clone().connect(url).await {
            Ok(pool) => return Ok(pool),
            Err(err)
                if crate::http::error::is_database_unavailable(&err)
                    && tokio::time::Instant::now() + pause < deadline =>
            {
                tracing::warn!(
                    error = %err,
                    retry_in_ms = pause.as_millis() as u64,
                    "Postgres is not reachable yet; retrying"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(err) => return Err(err).context("connecting to Postgres (DATABASE_URL)"),
        }
    }
}

/// Applies the embedded migrations.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::migrate!("./migrations")
        .run(pool)
        .await
        .context("applying migrations")
}

/// Connects to NATS; the client reconnects on its own after an outage.
pub async fn connect_nats(settings: &Settings) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .name("chronicle")
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(&settings.nats.url)
        .await
        .context("connecting to NATS (NATS_URL)")
}

impl Application {
    /// Connects everything and binds the listener; nothing runs until [`Application::run`].
    pub async fn build(settings: Settings, components: Components) -> anyhow::Result<Self> {
        let settings = Arc::new(settings);
        let shutdown = CancellationToken::new();
        let pool = connect_database(&settings).await?;
        let nats = connect_nats(&settings).await?;
        let jetstream = async_nats::jetstream::new(nats.clone());

        let keys = Arc::new(
            SigningKeys::load_or_generate(&settings.auth, &settings.data_dir)
                .context("loading the signing key")?,
        );
        let signer: Arc<dyn CheckpointSigner> =
            Arc::new(crate::audit::ServerSigner::new(keys.clone()));
        let token_keys = TokenKeys::derive(&keys);
        let tokens = TokenIssuer::new(keys, &settings.auth);
        let passwords = PasswordService::new(pool.clone(), settings.auth.argon2)?;
        let consistency = Consistency::start(
            pool.clone(),
            WaitLimits {
                max_wait: settings.http.consistency_wait,
                max_waiters: settings.http.consistency_max_waiters,
                max_waiters_per_user: settings.http.consistency_max_waiters_per_user,
            },
            token_keys.clone(),
            shutdown.clone(),
        )
        .await?;

        let runners: Vec<ProjectionRunner> = if components.projections {
            let releases = ReleaseRequests::start(&pool, shutdown.clone())
                .await
                .context("listening for dead-letter releases")?;
            all_projections_signed(AuditConfig {
                signer: Some(signer.clone()),
                checkpoint_every: settings.audit.checkpoint_every,
            })
            .into_iter()
            .map(|projection| {
                ProjectionRunner::new(
                    pool.clone(),
                    jetstream.clone(),
                    settings.nats.stream.clone(),
                    projection,
                )
                .with_release_requests(releases.clone())
            })
            .collect()
        } else {
            Vec::new()
        };
        let projections = runners
            .iter()
            .map(|runner| (runner.name(), runner.status()))
            .collect();
        let relay = components.relay.then(|| {
            Relay::new(
                pool.clone(),
                settings.database.url.expose_secret().to_string(),
                jetstream.clone(),
                settings.nats.stream.clone(),
                RelayConfig::default(),
            )
        });

        let listener = if components.api {
            Some(
                TcpListener::bind(settings.http.addr)
                    .await
                    .with_context(|| format!("binding {}", settings.http.addr))?,
            )
        } else {
            None
        };
        let audit_checkpointer = components
            .projections
            .then(|| (signer, settings.audit.checkpoint_interval));
        let llm = crate::llm::Llm::from_settings(&settings.llm)
            .map_err(|err| anyhow::anyhow!("building the LLM upstream clients: {err}"))?;
        let state = AppState::new(Shared {
            llm: Arc::new(llm),
            users: Arc::new(
                CommandExecutor::new(pool.clone(), passwords.clone() as Arc<dyn UserServices>)
                    .issuing_tokens(token_keys.clone()),
            ),
            tasks: Arc::new(
                CommandExecutor::new(pool.clone(), ()).issuing_tokens(token_keys.clone()),
            ),
            auth_sessions: Arc::new(
                CommandExecutor::new(pool.clone(), ()).issuing_tokens(token_keys.clone()),
            ),
            projects: Arc::new(
                CommandExecutor::new(pool.clone(), ()).issuing_tokens(token_keys.clone()),
            ),
            chat_sessions: Arc::new(
                CommandExecutor::new(pool.clone(), ()).issuing_tokens(token_keys.clone()),
            ),
            mcp_servers: Arc::new(
                CommandExecutor::new(pool.clone(), ()).issuing_tokens(token_keys.clone()),
            ),
            notification_inboxes: Arc::new(
                CommandExecutor::new(pool.clone(), ()).issuing_tokens(token_keys.clone()),
            ),
            files: Arc::new(
                CommandExecutor::new(pool.clone(), ()).issuing_tokens(token_keys.clone()),
            ),
            secrets: crate::secrets::SecretBox::load(pool.clone(), &settings)
                .await
                .context("loading the master keys for sealed secrets")?,
            mcp: crate::mcp::McpClient::new(&settings.mcp)
                .context("building the MCP discovery client")?,
            audit_queries: Arc::new(
                CommandExecutor::new(pool.clone(), ()).issuing_tokens(token_keys),
            ),
            rate_limiter: Arc::default(),
            feeds: crate::llm::StreamLimiter::new(settings.http.max_feeds_per_user),
            streams: StreamBudget::new(settings.stream_slots(), settings.http.stream_send_timeout),
            settings,
            pool,
            nats,
            tokens,
            passwords,
            consistency,
            metrics: metrics_handle(),
            projections: Arc::new(projections),
        });
        Ok(Self {
            listener,
            state,
            tasks: JoinSet::new(),
            shutdown,
            runners,
            relay,
            audit_checkpointer,
        })
    }

    /// The address the API listens on (port 0 resolved), if it runs here.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Cancelling this token stops the application gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Runs every component until the shutdown token is cancelled, then waits
    /// for in-flight requests (at most `CHRONICLE_SHUTDOWN_GRACE_SECS`) and
    /// batches to finish.
    pub async fn run(mut self) -> anyhow::Result<()> {
        if let Some(relay) = self.relay.take() {
            self.tasks.spawn(relay.run(self.shutdown.clone()));
        }
        for runner in std::mem::take(&mut self.runners) {
            self.tasks.spawn(runner.run(self.shutdown.clone()));
        }
        if let Some((signer, interval)) = self.audit_checkpointer.take() {
            self.tasks.spawn(crate::audit::checkpointer::run(
                self.state.pool.clone(),
                signer,
                interval,
                self.shutdown.clone(),
            ));
        }
        let server = match self.listener.take() {
            Some(listener) => {
                if let Some(interval) = self.state.settings.files.sweep_interval {
                    self.tasks.spawn(crate::file_blobs::sweep_periodically(
                        self.state.pool.clone(),
                        self.state.settings.data_dir.clone(),
                        interval,
                        self.shutdown.clone(),
                    ));
                }
                let router = crate::http::router(self.state.clone());
                let shutdown = self.shutdown.clone();
                tracing::info!(addr = %listener.local_addr()?, "api listening");
                let limits = ServerLimits::from(&self.state.settings.http);
                Some(tokio::spawn(serve(listener, router, limits, shutdown)))
            }
            None => None,
        };
        self.shutdown.cancelled().await;
        if let Some(server) = server {
            server.await.context("api task")?;
        }
        while self.tasks.join_next().await.is_some() {}
        self.state.pool.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Cancels `token` on SIGTERM or Ctrl-C.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        token.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down");
        token.cancel();
    });
}
