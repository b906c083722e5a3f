//! The state every handler shares; cheap to clone.

use std::ops::Deref;
use std::sync::Arc;

use chronicle_aggregates::audit_query::AuditQuery;
use chronicle_aggregates::auth_session::AuthSession;
use chronicle_aggregates::chat_session::ChatSession;
use chronicle_aggregates::mcp_server::McpServer;
use chronicle_aggregates::notification_inbox::NotificationInbox;
use chronicle_aggregates::project::Project;
use chronicle_aggregates::task::Task;
use chronicle_aggregates::user::User;
use chronicle_aggregates::workspace_file::WorkspaceFile;
use chronicle_projections::ProjectionStatus;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

use crate::audit::stream::StreamBudget;
use crate::auth::{PasswordService, TokenIssuer};
use crate::commands::CommandExecutor;
use crate::config::Settings;
use crate::consistency::Consistency;
use crate::http::rate_limit::RateLimiter;
use crate::llm::Llm;

/// What every handler shares, behind one `Arc`.
///
/// axum clones the state for every extractor and every `from_fn_with_state`
/// layer of every request. Cloned field by field (two dozen `Arc`s, a pool,
/// the NATS client with its channel sender), that was over a quarter of the
/// server's CPU per GET in a profile (`docs/performance.md`, change 16); one
/// reference count is all a clone costs now.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub settings: Arc<Settings>,
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub tokens: TokenIssuer,
    pub passwords: Arc<PasswordService>,
    pub users: Arc<CommandExecutor<User>>,
    pub tasks: Arc<CommandExecutor<Task>>,
    pub auth_sessions: Arc<CommandExecutor<AuthSession>>,
    pub projects: Arc<CommandExecutor<Project>>,
    pub chat_sessions: Arc<CommandExecutor<ChatSession>>,
    pub mcp_servers: Arc<CommandExecutor<McpServer>>,
    pub notification_inboxes: Arc<CommandExecutor<NotificationInbox>>,
    pub files: Arc<CommandExecutor<WorkspaceFile>>,
    /// Seals and opens the secret values of MCP server configurations.
    pub secrets: crate::secrets::SecretBox,
    /// Speaks MCP to the servers users configure, for discovery.
    pub mcp: crate::mcp::McpClient,
    /// Records every audit query as an event.
    pub audit_queries: Arc<CommandExecutor<AuditQuery>>,
    pub rate_limiter: Arc<RateLimiter>,
    pub consistency: Arc<Consistency>,
    pub metrics: PrometheusHandle,
    /// Slots for streamed answers, each of which holds a database connection.
    pub streams: StreamBudget,
    /// The language-model upstreams behind the chat routes.
    pub llm: Arc<Llm>,
    /// Event feeds open per user (`CHRONICLE_HTTP_MAX_FEEDS_PER_USER`).
    pub feeds: crate::llm::StreamLimiter,
    /// Projections running in this process, for `/ready`.
    pub projections: Arc<Vec<(&'static str, Arc<ProjectionStatus>)>>,
}
