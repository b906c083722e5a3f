//! Typed settings, read once from the environment and validated at start-up.
//! Tests build a [`Settings`] directly instead of touching the process environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chronicle_nats::StreamSettings;
use secrecy::SecretString;

/// Everything Chronicle can be configured with (see `.env.example`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub http: HttpSettings,
    pub database: DatabaseSettings,
    pub nats: NatsSettings,
    pub auth: AuthSettings,
    pub log: LogSettings,
    pub rate_limit: RateLimitSettings,
    /// When the audit chain head is signed.
    pub audit: crate::audit::AuditSettings,
    /// Where generated keys and local state live.
    pub data_dir: PathBuf,
    /// The language-model upstreams behind the chat routes.
    pub llm: LlmSettings,
    /// MCP server configurations: discovery limits and per-user quota.
    pub mcp: McpSettings,
    /// The master keys that wrap the per-user data keys sealing secrets.
    pub secrets: SecretsSettings,
    /// Workspace files: size limit and allowed extensions.
    pub files: FilesSettings,
}

/// What `POST /v1/files` accepts (see `docs/files.md`).
#[derive(Debug, Clone)]
pub struct FilesSettings {
    /// Largest file, in bytes (`CHRONICLE_FILES_MAX_BYTES`, 10 MiB).
    pub max_bytes: u64,
    /// Lower-case extensions a file name may end with
    /// (`CHRONICLE_FILES_ALLOWED_EXTENSIONS`, comma-separated); each must be
    /// one whose content the server can check.
    pub allowed_extensions: Vec<String>,
    /// How often the API sweeps orphaned blobs and abandoned uploads
    /// (`CHRONICLE_FILES_SWEEP_INTERVAL_SECS`, an hour; 0: never).
    pub sweep_interval: Option<Duration>,
}

/// The extensions allowed when `CHRONICLE_FILES_ALLOWED_EXTENSIONS` is unset.
pub const DEFAULT_FILE_EXTENSIONS: &str =
    "txt,md,json,csv,log,yaml,yml,toml,rs,py,js,ts,swift,pdf,png,jpg,jpeg,gif,webp";

impl Default for FilesSettings {
    fn default() -> Self {
        Self {
            max_bytes: 10 * 1024 * 1024,
            allowed_extensions: parse_extensions(DEFAULT_FILE_EXTENSIONS),
            sweep_interval: Some(Duration::from_secs(3600)),
        }
    }
}

fn parse_extensions(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(|ext| ext.trim().trim_start_matches('.').to_ascii_lowercase())
        .filter(|ext| !ext.is_empty())
        .collect()
}

/// How `POST /v1/mcp/servers/{id}/discover` reaches MCP servers, and how many
/// servers a user may configure.
#[derive(Debug, Clone)]
pub struct McpSettings {
    /// Let discovery connect to private, loopback and link-local addresses
    /// (`CHRONICLE_MCP_ALLOW_PRIVATE`); off by default, against SSRF.
    pub allow_private: bool,
    /// The whole discovery exchange, connection included.
    pub discovery_timeout: Duration,
    /// The most bytes read from one answer of an MCP server.
    pub max_response_bytes: usize,
    /// Servers one user may have configured at once; more answer 422.
    pub max_servers_per_user: u32,
}

impl Default for McpSettings {
    fn default() -> Self {
        Self {
            allow_private: false,
            discovery_timeout: Duration::from_secs(15),
            max_response_bytes: 4 * 1024 * 1024,
            max_servers_per_user: 50,
        }
    }
}

/// Master keys for sealed secrets (see `docs/mcp.md`).
#[derive(Debug, Clone, Default)]
pub struct SecretsSettings {
    /// `CHRONICLE_MASTER_KEYS`: base64 of 32-byte keys, comma-separated, the
    /// first one wrapping new data keys. Empty: keys are generated into and
    /// read from `<data dir>/master-keys/`.
    pub master_keys: Vec<SecretString>,
}

/// Which models the chat routes offer and how their upstreams are reached.
#[derive(Debug, Clone)]
pub struct LlmSettings {
    /// `CHRONICLE_MODELS`, in the order given.
    pub models: Vec<ModelSpec>,
    pub anthropic: ProviderSettings,
    pub openai: ProviderSettings,
    /// Establishing a TCP (and TLS) connection to an upstream.
    pub connect_timeout: Duration,
    /// The longest silence between two reads from an upstream.
    pub idle_timeout: Duration,
    /// Further attempts after a connect error, 429 or 5xx, before the first byte only.
    pub retries: u32,
    /// Streamed chat answers one user may hold open at once; more answer 429.
    pub max_streams_per_user: usize,
    /// Upstream tokens one user may use per minute; past it, 429 (0: no limit).
    pub tokens_per_minute: u64,
}

impl Default for LlmSettings {
    /// No models: every chat route answers 503 `UPSTREAM_NOT_CONFIGURED`.
    fn default() -> Self {
        Self {
            models: Vec::new(),
            anthropic: ProviderSettings {
                base_url: DEFAULT_ANTHROPIC_BASE_URL.into(),
                api_key: None,
            },
            openai: ProviderSettings {
                base_url: DEFAULT_OPENAI_BASE_URL.into(),
                api_key: None,
            },
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            retries: 2,
            max_streams_per_user: 4,
            tokens_per_minute: 0,
        }
    }
}

pub const DEFAULT_ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";
pub const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

/// One upstream API. `Debug` shows no key (`SecretString` redacts it).
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// Without a trailing slash.
    pub base_url: String,
    pub api_key: Option<SecretString>,
}

/// Which API a model is reached through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    Anthropic,
    OpenAi,
}

impl ProviderKind {
    /// The name in `CHRONICLE_MODELS` and in `owned_by`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Anthropic => "anthropic",
            Self::OpenAi => "openai",
        }
    }
}

/// `<id>=<anthropic|openai>:<upstream model>` from `CHRONICLE_MODELS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// What clients send as `model`.
    pub id: String,
    pub provider: ProviderKind,
    /// What the upstream is asked for.
    pub upstream_model: String,
}

/// Parses `CHRONICLE_MODELS`: a comma list of `<id>=<anthropic|openai>:<upstream model>`.
pub fn parse_models(raw: &str) -> Result<Vec<ModelSpec>, String> {
    let mut models: Vec<ModelSpec> = Vec::new();
    for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let shape = || format!("`{entry}` is not `<id>=<anthropic|openai>:<upstream model>`");
        let (id, target) = entry.split_once('=').ok_or_else(shape)?;
        let (provider, upstream) = target.split_once(':').ok_or_else(shape)?;
        let (id, provider, upstream) = (id.trim(), provider.trim(), upstream.trim());
        let valid_id = !id.is_empty()
            && id.len() <= 128
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._:/-".contains(c));
        if !valid_id {
            return Err(format!(
                "model id `{id}` must be 1-128 characters of letters, digits and . _ : / -"
            ));
        }
        let provider = match provider {
            "anthropic" => ProviderKind::Anthropic,
            "openai" => ProviderKind::OpenAi,
            other => {
                return Err(format!(
                    "`{other}` in `{entry}` is neither `anthropic` nor `openai`"
                ))
            }
        };
        if upstream.is_empty() || upstream.len() > 256 || upstream.chars().any(char::is_whitespace)
        {
            return Err(format!("`{entry}` names no upstream model"));
        }
        if models.iter().any(|m| m.id == id) {
            return Err(format!("model id `{id}` is listed twice"));
        }
        models.push(ModelSpec {
            id: id.to_string(),
            provider,
            upstream_model: upstream.to_string(),
        });
    }
    Ok(models)
}

#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub addr: SocketAddr,
    pub body_limit_bytes: usize,
    /// How long a query waits for the read model to reflect the caller's last command.
    pub consistency_wait: Duration,
    /// Queries that may wait for a read model at once in this process; more answer 503.
    pub consistency_max_waiters: usize,
    /// Of those, queries of one user.
    pub consistency_max_waiters_per_user: usize,
    pub request_timeout: Duration,
    /// Browser origins admitted by CORS.
    pub cors_origins: Vec<String>,
    /// How long a client has to send a complete request head, counted from
    /// when the server starts waiting for it (so it also bounds the pause
    /// before the next request on a kept-alive connection).
    pub header_read_timeout: Duration,
    /// A connection on which no byte moves either way for this long is closed
    /// (a request body that stalls, a response its client does not read).
    pub idle_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// After a shutdown signal, how long open connections may finish before
    /// they are dropped.
    pub shutdown_grace: Duration,
    /// Streamed answers (exports, NDJSON) running at once, each holding a
    /// database connection; `None`: a quarter of the pool, at least 1.
    pub max_streams: Option<u32>,
    /// A streamed answer whose reader takes no chunk for this long is abandoned.
    pub stream_send_timeout: Duration,
    /// Event feeds (`/v1/sessions/{id}/events`, `/v1/ws`) one user may hold
    /// open at once, each a NATS consumer; more answer 429.
    pub max_feeds_per_user: usize,
    /// Requests being handled at once (until their answer's head; a stream's
    /// body does not count); more answer 503 at once. `/health`, `/ready`
    /// and `/metrics` are exempt.
    pub max_in_flight: usize,
    /// A request body must have arrived this long after its head, or the
    /// answer is 503 and the connection is closed (a trickling client).
    pub body_read_timeout: Duration,
}

impl Settings {
    /// Streamed answers allowed at once (see [`HttpSettings::max_streams`]).
    pub fn stream_slots(&self) -> usize {
        let slots = self
            .http
            .max_streams
            .unwrap_or(self.database.max_connections / 4);
        slots.max(1) as usize
    }
}

/// Requests per minute; 0 switches a limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitSettings {
    /// Per authenticated user, every `/v1` route.
    pub per_user_per_minute: u32,
    /// Per client IP, every `/v1` route.
    pub per_ip_per_minute: u32,
    /// Per client IP, on register, login, refresh and verify-token.
    pub auth_per_ip_per_minute: u32,
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
    /// How long a request waits for a pooled connection before it answers
    /// 503 `UNAVAILABLE`.
    pub acquire_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct NatsSettings {
    pub url: String,
    pub stream: StreamSettings,
}

#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub private_key_file: Option<PathBuf>,
    /// A PEM given directly (tests); takes precedence over files and the data dir.
    pub private_key_pem: Option<SecretString>,
    pub issuer: String,
    pub audience: String,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub argon2: Argon2Settings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Settings {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub filter: String,
    pub json: bool,
}

/// A setting that is missing or malformed, named so the operator can fix it.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {name}: {problem}")]
pub struct ConfigError {
    pub name: &'static str,
    pub problem: String,
}

impl Settings {
    /// Reads the `CHRONICLE_*`, `DATABASE_URL` and `NATS_URL` variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, so parsing can be tested without the environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &'static str| lookup(name).filter(|value| !value.trim().is_empty());
        let parse = |name: &'static str, default: &str| -> Result<String, ConfigError> {
            Ok(get(name).unwrap_or_else(|| default.to_string()))
        };
        fn number<T: std::str::FromStr>(name: &'static str, raw: String) -> Result<T, ConfigError> {
            raw.trim().parse().map_err(|_| ConfigError {
                name,
                problem: format!("`{raw}` is not a valid number"),
            })
        }

        fn boolean(name: &'static str, raw: String) -> Result<bool, ConfigError> {
            match raw.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                _ => Err(ConfigError {
                    name,
                    problem: format!("`{raw}` is neither `true` nor `false`"),
                }),
            }
        }

        let database_url = get("DATABASE_URL").ok_or(ConfigError {
            name: "DATABASE_URL",
            problem: "is required (e.g. postgres://postgres@127.0.0.1:55432/chronicle)".into(),
        })?;
        let addr_raw = parse("CHRONICLE_ADDR", "127.0.0.1:8080")?;
        let addr = addr_raw.parse().map_err(|_| ConfigError {
            name: "CHRONICLE_ADDR",
            problem: format!("`{addr_raw}` is not a socket address like 127.0.0.1:8080"),
        })?;
        let log_format = parse("CHRONICLE_LOG_FORMAT", "pretty")?;
        let json = match log_format.as_str() {
            "json" => true,
            "pretty" => false,
            other => {
                return Err(ConfigError {
                    name: "CHRONICLE_LOG_FORMAT",
                    problem: format!("`{other}` is neither `pretty` nor `json`"),
                })
            }
        };
        let settings = Self {
            http: HttpSettings {
                addr,
                body_limit_bytes: number(
                    "CHRONICLE_BODY_LIMIT_BYTES",
                    parse("CHRONICLE_BODY_LIMIT_BYTES", "1048576")?,
                )?,
                consistency_wait: Duration::from_millis(number(
                    "CHRONICLE_CONSISTENCY_WAIT_MS",
                    parse("CHRONICLE_CONSISTENCY_WAIT_MS", "5000")?,
                )?),
                consistency_max_waiters: number(
                    "CHRONICLE_CONSISTENCY_MAX_WAITERS",
                    parse("CHRONICLE_CONSISTENCY_MAX_WAITERS", "256")?,
                )?,
                consistency_max_waiters_per_user: number(
                    "CHRONICLE_CONSISTENCY_MAX_WAITERS_PER_USER",
                    parse("CHRONICLE_CONSISTENCY_MAX_WAITERS_PER_USER", "8")?,
                )?,
                request_timeout: Duration::from_secs(30),
                cors_origins: parse(
                    "CHRONICLE_CORS_ORIGINS",
                    "capacitor://localhost,ionic://localhost,http://localhost",
                )?
                .split(',')
                .map(|origin| origin.trim().to_string())
                .filter(|origin| !origin.is_empty())
                .collect(),
                header_read_timeout: Duration::from_secs(number(
                    "CHRONICLE_HTTP_HEADER_READ_TIMEOUT_SECS",
                    parse("CHRONICLE_HTTP_HEADER_READ_TIMEOUT_SECS", "10")?,
                )?),
                idle_timeout: Duration::from_secs(number(
                    "CHRONICLE_HTTP_IDLE_TIMEOUT_SECS",
                    parse("CHRONICLE_HTTP_IDLE_TIMEOUT_SECS", "60")?,
                )?),
                max_connections: number(
                    "CHRONICLE_HTTP_MAX_CONNECTIONS",
                    parse("CHRONICLE_HTTP_MAX_CONNECTIONS", "1024")?,
                )?,
                shutdown_grace: Duration::from_secs(number(
                    "CHRONICLE_SHUTDOWN_GRACE_SECS",
                    parse("CHRONICLE_SHUTDOWN_GRACE_SECS", "10")?,
                )?),
                max_streams: get("CHRONICLE_HTTP_MAX_STREAMS")
                    .map(|raw| number("CHRONICLE_HTTP_MAX_STREAMS", raw))
                    .transpose()?,
                stream_send_timeout: Duration::from_secs(number(
                    "CHRONICLE_HTTP_STREAM_SEND_TIMEOUT_SECS",
                    parse("CHRONICLE_HTTP_STREAM_SEND_TIMEOUT_SECS", "30")?,
                )?),
                max_feeds_per_user: number(
                    "CHRONICLE_HTTP_MAX_FEEDS_PER_USER",
                    parse("CHRONICLE_HTTP_MAX_FEEDS_PER_USER", "16")?,
                )?,
                max_in_flight: number(
                    "CHRONICLE_HTTP_MAX_IN_FLIGHT",
                    parse("CHRONICLE_HTTP_MAX_IN_FLIGHT", "512")?,
                )?,
                body_read_timeout: Duration::from_secs(number(
                    "CHRONICLE_HTTP_BODY_READ_TIMEOUT_SECS",
                    parse("CHRONICLE_HTTP_BODY_READ_TIMEOUT_SECS", "20")?,
                )?),
            },
            database: DatabaseSettings {
                url: SecretString::from(database_url),
                max_connections: number(
                    "CHRONICLE_DB_MAX_CONNECTIONS",
                    parse("CHRONICLE_DB_MAX_CONNECTIONS", "20")?,
                )?,
                acquire_timeout: Duration::from_millis(number(
                    "CHRONICLE_DB_ACQUIRE_TIMEOUT_MS",
                    parse("CHRONICLE_DB_ACQUIRE_TIMEOUT_MS", "5000")?,
                )?),
            },
            nats: NatsSettings {
                url: parse("NATS_URL", "nats://127.0.0.1:54222")?,
                stream: StreamSettings {
                    name: parse("CHRONICLE_STREAM", "CHRONICLE_EVENTS")?,
                    subject_prefix: parse("CHRONICLE_SUBJECT_PREFIX", "chronicle.events")?,
                    ..StreamSettings::default()
                },
            },
            auth: AuthSettings {
                private_key_file: get("CHRONICLE_JWT_PRIVATE_KEY_FILE").map(PathBuf::from),
                private_key_pem: None,
                issuer: parse("CHRONICLE_JWT_ISSUER", "chronicle")?,
                audience: parse("CHRONICLE_JWT_AUDIENCE", "chronicle-api")?,
                access_token_ttl: Duration::from_secs(number(
                    "CHRONICLE_ACCESS_TOKEN_TTL_SECS",
                    parse("CHRONICLE_ACCESS_TOKEN_TTL_SECS", "900")?,
                )?),
                refresh_token_ttl: Duration::from_secs(number(
                    "CHRONICLE_REFRESH_TOKEN_TTL_SECS",
                    parse("CHRONICLE_REFRESH_TOKEN_TTL_SECS", "604800")?,
                )?),
                argon2: Argon2Settings {
                    memory_kib: number(
                        "CHRONICLE_ARGON2_MEMORY_KIB",
                        parse("CHRONICLE_ARGON2_MEMORY_KIB", "19456")?,
                    )?,
                    iterations: number(
                        "CHRONICLE_ARGON2_ITERATIONS",
                        parse("CHRONICLE_ARGON2_ITERATIONS", "2")?,
                    )?,
                    parallelism: number(
                        "CHRONICLE_ARGON2_PARALLELISM",
                        parse("CHRONICLE_ARGON2_PARALLELISM", "1")?,
                    )?,
                },
            },
            log: LogSettings {
                filter: parse("CHRONICLE_LOG", "info")?,
                json,
            },
            rate_limit: RateLimitSettings {
                per_user_per_minute: number(
                    "CHRONICLE_RATE_LIMIT_USER_PER_MINUTE",
                    parse("CHRONICLE_RATE_LIMIT_USER_PER_MINUTE", "600")?,
                )?,
                per_ip_per_minute: number(
                    "CHRONICLE_RATE_LIMIT_IP_PER_MINUTE",
                    parse("CHRONICLE_RATE_LIMIT_IP_PER_MINUTE", "1200")?,
                )?,
                auth_per_ip_per_minute: number(
                    "CHRONICLE_RATE_LIMIT_AUTH_PER_MINUTE",
                    parse("CHRONICLE_RATE_LIMIT_AUTH_PER_MINUTE", "20")?,
                )?,
            },
            audit: crate::audit::AuditSettings {
                checkpoint_every: number(
                    "CHRONICLE_AUDIT_CHECKPOINT_EVERY",
                    parse("CHRONICLE_AUDIT_CHECKPOINT_EVERY", "1000")?,
                )?,
                checkpoint_interval: Duration::from_secs(number(
                    "CHRONICLE_AUDIT_CHECKPOINT_INTERVAL_SECS",
                    parse("CHRONICLE_AUDIT_CHECKPOINT_INTERVAL_SECS", "60")?,
                )?),
            },
            data_dir: PathBuf::from(parse("CHRONICLE_DATA_DIR", ".data")?),
            llm: LlmSettings {
                models: parse_models(&parse("CHRONICLE_MODELS", "")?).map_err(|problem| {
                    ConfigError {
                        name: "CHRONICLE_MODELS",
                        problem,
                    }
                })?,
                anthropic: ProviderSettings {
                    base_url: parse("ANTHROPIC_BASE_URL", DEFAULT_ANTHROPIC_BASE_URL)?
                        .trim()
                        .trim_end_matches('/')
                        .to_string(),
                    api_key: get("ANTHROPIC_API_KEY").map(|key| SecretString::from(key.trim())),
                },
                openai: ProviderSettings {
                    base_url: parse("OPENAI_BASE_URL", DEFAULT_OPENAI_BASE_URL)?
                        .trim()
                        .trim_end_matches('/')
                        .to_string(),
                    api_key: get("OPENAI_API_KEY").map(|key| SecretString::from(key.trim())),
                },
                connect_timeout: Duration::from_secs(number(
                    "CHRONICLE_LLM_CONNECT_TIMEOUT_SECS",
                    parse("CHRONICLE_LLM_CONNECT_TIMEOUT_SECS", "5")?,
                )?),
                idle_timeout: Duration::from_secs(number(
                    "CHRONICLE_LLM_IDLE_TIMEOUT_SECS",
                    parse("CHRONICLE_LLM_IDLE_TIMEOUT_SECS", "60")?,
                )?),
                retries: number(
                    "CHRONICLE_LLM_RETRIES",
                    parse("CHRONICLE_LLM_RETRIES", "2")?,
                )?,
                max_streams_per_user: number(
                    "CHRONICLE_CHAT_MAX_STREAMS_PER_USER",
                    parse("CHRONICLE_CHAT_MAX_STREAMS_PER_USER", "4")?,
                )?,
                tokens_per_minute: number(
                    "CHRONICLE_CHAT_TOKENS_PER_MINUTE",
                    parse("CHRONICLE_CHAT_TOKENS_PER_MINUTE", "100000")?,
                )?,
            },
            mcp: McpSettings {
                allow_private: boolean(
                    "CHRONICLE_MCP_ALLOW_PRIVATE",
                    parse("CHRONICLE_MCP_ALLOW_PRIVATE", "false")?,
                )?,
                discovery_timeout: Duration::from_secs(number(
                    "CHRONICLE_MCP_DISCOVERY_TIMEOUT_SECS",
                    parse("CHRONICLE_MCP_DISCOVERY_TIMEOUT_SECS", "15")?,
                )?),
                max_response_bytes: number(
                    "CHRONICLE_MCP_MAX_RESPONSE_BYTES",
                    parse("CHRONICLE_MCP_MAX_RESPONSE_BYTES", "4194304")?,
                )?,
                max_servers_per_user: number(
                    "CHRONICLE_MCP_MAX_SERVERS_PER_USER",
                    parse("CHRONICLE_MCP_MAX_SERVERS_PER_USER", "50")?,
                )?,
            },
            secrets: SecretsSettings {
                master_keys: get("CHRONICLE_MASTER_KEYS")
                    .map(|keys| {
                        keys.split(',')
                            .map(str::trim)
                            .filter(|key| !key.is_empty())
                            .map(SecretString::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            files: FilesSettings {
                max_bytes: number(
                    "CHRONICLE_FILES_MAX_BYTES",
                    parse("CHRONICLE_FILES_MAX_BYTES", "10485760")?,
                )?,
                allowed_extensions: parse_extensions(&parse(
                    "CHRONICLE_FILES_ALLOWED_EXTENSIONS",
                    DEFAULT_FILE_EXTENSIONS,
                )?),
                sweep_interval: Some(Duration::from_secs(number(
                    "CHRONICLE_FILES_SWEEP_INTERVAL_SECS",
                    parse("CHRONICLE_FILES_SWEEP_INTERVAL_SECS", "3600")?,
                )?))
                .filter(|interval| !interval.is_zero()),
            },
        };
        settings.validate()?;
        Ok(settings)
    }

    /// Checks the relations between settings that parsing alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |name, problem: &str| {
            Err(ConfigError {
                name,
                problem: problem.to_string(),
            })
        };
        if self.http.body_limit_bytes < 1024 {
            return fail("CHRONICLE_BODY_LIMIT_BYTES", "must be at least 1024");
        }
        if self.database.max_connections == 0 {
            return fail("CHRONICLE_DB_MAX_CONNECTIONS", "must be at least 1");
        }
        if self.http.consistency_max_waiters == 0 {
            return fail("CHRONICLE_CONSISTENCY_MAX_WAITERS", "must be at least 1");
        }
        if self.http.consistency_max_waiters_per_user == 0 {
            return fail(
                "CHRONICLE_CONSISTENCY_MAX_WAITERS_PER_USER",
                "must be at least 1",
            );
        }
        let http = &self.http;
        if http.header_read_timeout.is_zero() {
            return fail(
                "CHRONICLE_HTTP_HEADER_READ_TIMEOUT_SECS",
                "must be at least 1",
            );
        }
        if http.idle_timeout < http.request_timeout {
            // Otherwise a handler still working within its request timeout
            // (no bytes moving yet) would lose its connection.
            return fail(
                "CHRONICLE_HTTP_IDLE_TIMEOUT_SECS",
                "must be at least the request timeout (30)",
            );
        }
        if http.max_connections == 0 || http.max_connections > u32::MAX as usize {
            return fail("CHRONICLE_HTTP_MAX_CONNECTIONS", "must be at least 1");
        }
        if http
            .max_streams
            .is_some_and(|streams| streams == 0 || streams >= self.database.max_connections)
        {
            return fail(
                "CHRONICLE_HTTP_MAX_STREAMS",
                "must be at least 1 and less than CHRONICLE_DB_MAX_CONNECTIONS",
            );
        }
        if http.max_in_flight == 0 {
            return fail("CHRONICLE_HTTP_MAX_IN_FLIGHT", "must be at least 1");
        }
        if http.body_read_timeout.is_zero() || http.body_read_timeout > http.request_timeout {
            // Beyond the request timeout the handler is cut first (503).
            return fail(
                "CHRONICLE_HTTP_BODY_READ_TIMEOUT_SECS",
                "must be at least 1 and at most the request timeout (30)",
            );
        }
        if self.database.acquire_timeout < Duration::from_millis(100)
            || self.database.acquire_timeout >= http.request_timeout
        {
            // Beyond the request timeout a waiting request would be cut by
            // it instead, with a less precise answer.
            return fail(
                "CHRONICLE_DB_ACQUIRE_TIMEOUT_MS",
                "must be at least 100 and less than the request timeout (30000)",
            );
        }
        if http.max_feeds_per_user == 0 {
            return fail("CHRONICLE_HTTP_MAX_FEEDS_PER_USER", "must be at least 1");
        }
        if http.stream_send_timeout.is_zero() {
            return fail(
                "CHRONICLE_HTTP_STREAM_SEND_TIMEOUT_SECS",
                "must be at least 1",
            );
        }
        if self.mcp.discovery_timeout.is_zero() {
            return fail("CHRONICLE_MCP_DISCOVERY_TIMEOUT_SECS", "must be at least 1");
        }
        if self.mcp.max_response_bytes < 1024 {
            return fail("CHRONICLE_MCP_MAX_RESPONSE_BYTES", "must be at least 1024");
        }
        if self.mcp.max_servers_per_user == 0 {
            return fail("CHRONICLE_MCP_MAX_SERVERS_PER_USER", "must be at least 1");
        }
        if self.auth.access_token_ttl < Duration::from_secs(30) {
            return fail("CHRONICLE_ACCESS_TOKEN_TTL_SECS", "must be at least 30");
        }
        let argon2 = self.auth.argon2;
        if argon2::Params::new(
            argon2.memory_kib,
            argon2.iterations,
            argon2.parallelism,
            None,
        )
        .is_err()
        {
            return fail(
                "CHRONICLE_ARGON2_MEMORY_KIB",
                "argon2 parameters are out of range (memory ≥ 8 × parallelism KiB, iterations ≥ 1)",
            );
        }
        for origin in &self.http.cors_origins {
            if axum::http::HeaderValue::from_str(origin).is_err() || !origin.contains("://") {
                return fail(
                    "CHRONICLE_CORS_ORIGINS",
                    "each origin must look like scheme://host[:port]",
                );
            }
        }
        if self.files.max_bytes == 0 || self.files.max_bytes > 1024 * 1024 * 1024 {
            return fail(
                "CHRONICLE_FILES_MAX_BYTES",
                "must be between 1 and 1073741824",
            );
        }
        if let Some(unknown) = self
            .files
            .allowed_extensions
            .iter()
            .find(|ext| crate::http::files::sniff::kind_of(ext).is_none())
        {
            return Err(ConfigError {
                name: "CHRONICLE_FILES_ALLOWED_EXTENSIONS",
                problem: format!(
                    "`{unknown}` is not an extension whose content the server can check"
                ),
            });
        }
        if self.audit.checkpoint_every == 0 {
            return fail("CHRONICLE_AUDIT_CHECKPOINT_EVERY", "must be at least 1");
        }
        if self.audit.checkpoint_interval.is_zero() {
            return fail(
                "CHRONICLE_AUDIT_CHECKPOINT_INTERVAL_SECS",
                "must be at least 1",
            );
        }
        self.validate_llm()?;
        let stream = &self.nats.stream;
        if stream.name.is_empty() || stream.name.contains(['.', ' ', '*', '>']) {
            return fail(
                "CHRONICLE_STREAM",
                "must be a stream name without '.', ' ', '*' or '>'",
            );
        }
        if stream.subject_prefix.is_empty() || stream.subject_prefix.contains(['*', '>', ' ']) {
            return fail(
                "CHRONICLE_SUBJECT_PREFIX",
                "must be a subject without wildcards or spaces",
            );
        }
        Ok(())
    }

    fn validate_llm(&self) -> Result<(), ConfigError> {
        let fail = |name, problem: &str| {
            Err(ConfigError {
                name,
                problem: problem.to_string(),
            })
        };
        let llm = &self.llm;
        for (name, base) in [
            ("ANTHROPIC_BASE_URL", &llm.anthropic.base_url),
            ("OPENAI_BASE_URL", &llm.openai.base_url),
        ] {
            let scheme_ok = base.starts_with("https://") || base.starts_with("http://");
            if !scheme_ok || reqwest::Url::parse(base).is_err() {
                return fail(name, "must be an http:// or https:// URL");
            }
        }
        if !llm.openai.base_url.ends_with("/v1") {
            return fail(
                "OPENAI_BASE_URL",
                "must end in /v1 (e.g. https://api.openai.com/v1)",
            );
        }
        if llm.connect_timeout.is_zero() {
            return fail("CHRONICLE_LLM_CONNECT_TIMEOUT_SECS", "must be at least 1");
        }
        if llm.idle_timeout.is_zero() {
            return fail("CHRONICLE_LLM_IDLE_TIMEOUT_SECS", "must be at least 1");
        }
        if llm.retries > 10 {
            return fail("CHRONICLE_LLM_RETRIES", "must be at most 10");
        }
        if llm.max_streams_per_user == 0 {
            return fail("CHRONICLE_CHAT_MAX_STREAMS_PER_USER", "must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults_apply_when_only_the_database_is_given() {
        let settings = settings(&[("DATABASE_URL", "postgres://x@127.0.0.1/db")]).unwrap();
        assert_eq!(settings.http.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(settings.nats.stream.name, "CHRONICLE_EVENTS");
        assert_eq!(settings.auth.access_token_ttl, Duration::from_secs(900));
        assert_eq!(settings.http.header_read_timeout, Duration::from_secs(10));
        assert_eq!(settings.http.idle_timeout, Duration::from_secs(60));
        assert_eq!(settings.http.max_connections, 1024);
        assert_eq!(settings.http.shutdown_grace, Duration::from_secs(10));
        assert_eq!(
            settings.stream_slots(),
            5,
            "a quarter of the 20-connection pool"
        );
        assert_eq!(settings.http.stream_send_timeout, Duration::from_secs(30));
        assert_eq!(settings.http.max_in_flight, 512);
        assert_eq!(settings.http.body_read_timeout, Duration::from_secs(20));
        assert_eq!(settings.database.acquire_timeout, Duration::from_secs(5));
    }

    #[test]
    fn load_shedding_limits_are_validated() {
        let base = ("DATABASE_URL", "postgres://x");
        let err = settings(&[base, ("CHRONICLE_HTTP_MAX_IN_FLIGHT", "0")]).unwrap_err();
        assert_eq!(err.name, "CHRONICLE_HTTP_MAX_IN_FLIGHT");
        let err = settings(&[base, ("CHRONICLE_HTTP_BODY_READ_TIMEOUT_SECS", "31")]).unwrap_err();
        assert_eq!(err.name, "CHRONICLE_HTTP_BODY_READ_TIMEOUT_SECS");
        let err = settings(&[base, ("CHRONICLE_DB_ACQUIRE_TIMEOUT_MS", "30000")]).unwrap_err();
        assert_eq!(err.name, "CHRONICLE_DB_ACQUIRE_TIMEOUT_MS");
        let ok = settings(&[
            base,
            ("CHRONICLE_HTTP_MAX_IN_FLIGHT", "8"),
            ("CHRONICLE_HTTP_BODY_READ_TIMEOUT_SECS", "5"),
            ("CHRONICLE_DB_ACQUIRE_TIMEOUT_MS", "250"),
        ])
        .unwrap();
        assert_eq!(ok.http.max_in_flight, 8);
        assert_eq!(ok.http.body_read_timeout, Duration::from_secs(5));
        assert_eq!(ok.database.acquire_timeout, Duration::from_millis(250));
    }

    #[test]
    fn stream_slots_are_a_quarter_of_the_pool_at_least_one_or_as_configured() {
        let small = settings(&[
            ("DATABASE_URL", "postgres://x"),
            ("CHRONICLE_DB_MAX_CONNECTIONS", "3"),
        ])
        .unwrap();
        assert_eq!(small.stream_slots(), 1);
        let configured = settings(&[
            ("DATABASE_URL", "postgres://x"),
            ("CHRONICLE_HTTP_MAX_STREAMS", "7"),
        ])
        .unwrap();
        assert_eq!(configured.stream_slots(), 7);
        let err = settings(&[
            ("DATABASE_URL", "postgres://x"),
            ("CHRONICLE_HTTP_MAX_STREAMS", "20"),
        ])
        .unwrap_err();
        assert_eq!(err.name, "CHRONICLE_HTTP_MAX_STREAMS");
    }

    #[test]
    fn an_idle_timeout_shorter_than_the_request_timeout_is_refused() {
        let err = settings(&[
            ("DATABASE_URL", "postgres://x"),
            ("CHRONICLE_HTTP_IDLE_TIMEOUT_SECS", "5"),
        ])
        .unwrap_err();
        assert_eq!(err.name, "CHRONICLE_HTTP_IDLE_TIMEOUT_SECS");
    }

    #[test]
    fn a_missing_database_url_is_named_in_the_error() {
        let err = settings(&[]).unwrap_err();
        assert_eq!(err.name, "DATABASE_URL");
    }

    #[test]
    fn file_limits_default_to_ten_mib_hourly_sweeps_and_unknown_extensions_are_refused() {
        let defaults = settings(&[("DATABASE_URL", "postgres://x")]).unwrap();
        assert_eq!(defaults.files.max_bytes, 10 * 1024 * 1024);
        assert!(defaults
            .files
            .allowed_extensions
            .contains(&"png".to_string()));
        let custom = settings(&[
            ("DATABASE_URL", "postgres://x"),
            ("CHRONICLE_FILES_MAX_BYTES", "2048"),
            ("CHRONICLE_FILES_ALLOWED_EXTENSIONS", " .TXT, pdf ,"),
        ])
        .unwrap();
        assert_eq!(custom.files.max_bytes, 2048);
        assert_eq!(custom.files.allowed_extensions, ["txt", "pdf"]);
        assert_eq!(
            defaults.files.sweep_interval,
            Some(Duration::from_secs(3600))
        );
        let never = settings(&[
            ("DATABASE_URL", "postgres://x"),
            ("CHRONICLE_FILES_SWEEP_INTERVAL_SECS", "0"),
        ])
        .unwrap();
        assert_eq!(never.files.sweep_interval, None);
        for (name, value) in [
            ("CHRONICLE_FILES_ALLOWED_EXTENSIONS", "txt,exe"),
            ("CHRONICLE_FILES_MAX_BYTES", "0"),
        ] {
            let err = settings(&[("DATABASE_URL", "postgres://x"), (name, value)]).unwrap_err();
            assert_eq!(err.name, name);
        }
    }

    #[test]
    fn a_malformed_number_is_refused_with_its_variable_name() {
        let err = settings(&[
            ("DATABASE_URL", "postgres://x"),
            ("CHRONICLE_BODY_LIMIT_BYTES", "lots"),
        ])
        .unwrap_err();
        assert_eq!(err.name, "CHRONICLE_BODY_LIMIT_BYTES");
    }

    #[test]
    fn models_are_parsed_in_order_and_keys_stay_secret() {
        let settings = settings(&[
            ("DATABASE_URL", "postgres://x"),
            (
                "CHRONICLE_MODELS",
                " claude=anthropic:claude-sonnet-4-5 , gpt-4o=openai:gpt-4o-2024-08-06",
            ),
            ("ANTHROPIC_API_KEY", "sk-ant-very-secret"),
            ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/"),
        ])
        .unwrap();
        let models = &settings.llm.models;
        assert_eq!(models.len(), 2);
        assert_eq!(models[0].id, "claude");
        assert_eq!(models[0].provider, ProviderKind::Anthropic);
        assert_eq!(models[1].upstream_model, "gpt-4o-2024-08-06");
        assert_eq!(settings.llm.openai.base_url, "http://127.0.0.1:9/v1");
        assert_eq!(settings.llm.anthropic.base_url, DEFAULT_ANTHROPIC_BASE_URL);
        assert!(!format!("{settings:?}").contains("very-secret"));
        assert_eq!(settings.llm.retries, 2);
        assert_eq!(settings.llm.max_streams_per_user, 4);
    }

    #[test]
    fn malformed_model_lists_and_urls_are_refused_naming_the_variable() {
        for bad in [
            "claude",
            "claude=anthropic",
            "claude=gemini:x",
            "=anthropic:x",
            "a=openai:",
            "a=openai:x,a=anthropic:y",
            "bad id=openai:x",
        ] {
            let err = settings(&[("DATABASE_URL", "postgres://x"), ("CHRONICLE_MODELS", bad)])
                .unwrap_err();
            assert_eq!(err.name, "CHRONICLE_MODELS", "{bad}");
        }
        let err = settings(&[
            ("DATABASE_URL", "postgres://x"),
            ("OPENAI_BASE_URL", "https://api.openai.com"),
        ])
        .unwrap_err();
        assert_eq!(err.name, "OPENAI_BASE_URL");
        let err = settings(&[
            ("DATABASE_URL", "postgres://x"),
            ("ANTHROPIC_BASE_URL", "ftp://x"),
        ])
        .unwrap_err();
        assert_eq!(err.name, "ANTHROPIC_BASE_URL");
    }

    #[test]
    fn an_unknown_log_format_is_refused() {
        let err = settings(&[
            ("DATABASE_URL", "postgres://x"),
            ("CHRONICLE_LOG_FORMAT", "xml"),
        ])
        .unwrap_err();
        assert_eq!(err.name, "CHRONICLE_LOG_FORMAT");
    }
}
