//! Chronicle's projection runtime and read models.
//!
//! A projection consumes the events stream through a durable JetStream
//! consumer, applies each batch in one Postgres transaction together with its
//! checkpoint, and acknowledges only after commit. A per-aggregate version
//! guard makes redelivery harmless. [`replay`] rebuilds a projection from the
//! event store alone.
#![forbid(unsafe_code)]

pub mod audit;
pub mod error;
pub mod projection;
pub mod read_models;
pub mod replay;
pub mod runtime;

use std::sync::Arc;

pub use error::ProjectionError;
pub use projection::{apply_guarded, Projection};
pub use runtime::{ProjectionRunner, ProjectionStatus, ReleaseRequests};

/// Postgres channel notified whenever a projection commits a batch, so that
/// queries waiting for read-your-writes wake up at once.
pub const PROJECTED_CHANNEL: &str = "chronicle_projected";

/// Every projection this build knows, by name.
pub fn all_projections() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(read_models::users::UsersProjection),
        Arc::new(read_models::auth_sessions::AuthSessionsProjection),
        Arc::new(read_models::tasks::TasksProjection),
        Arc::new(read_models::projects::ProjectsProjection),
        Arc::new(read_models::chat_sessions::ChatSessionsProjection),
        Arc::new(read_models::mcp_servers::McpServersProjection),
        Arc::new(read_models::analytics::AnalyticsUsersProjection),
        Arc::new(read_models::analytics::AnalyticsTasksProjection),
        Arc::new(read_models::analytics::AnalyticsChatProjection),
        Arc::new(read_models::notifications::NotificationsProjection),
        Arc::new(read_models::files::FilesProjection),
        Arc::new(audit::AuditProjection::default()),
    ]
}

/// [`all_projections`], with the audit trail taking signed checkpoints as
/// `audit` says (the plain list signs none: `chronicle replay` has no key).
pub fn all_projections_signed(audit: audit::AuditConfig) -> Vec<Arc<dyn Projection>> {
    all_projections()
        .into_iter()
        .map(|projection| match projection.name() {
            audit::AUDIT_PROJECTION => {
                Arc::new(audit::AuditProjection::new(audit.clone())) as Arc<dyn Projection>
            }
            _ => projection,
        })
        .collect()
}

/// The projection called `name`, if there is one.
pub fn projection_named(name: &str) -> Option<Arc<dyn Projection>> {
    all_projections().into_iter().find(|p| p.name() == name)
}
