//! Commands accepted by the [`AuditQuery`](super::AuditQuery) aggregate.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A request to record an audit query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditQueryCommand {
    /// Record that `auditor_id` asked `route` with `filters`.
    Record {
        /// The authenticated caller; `None` for the operator's command line.
        auditor_id: Option<Uuid>,
        /// What was asked, e.g. `GET /v1/audit/events`.
        route: String,
        /// The filters as given (query parameters or CLI options).
        filters: BTreeMap<String, String>,
        /// When the query was made.
        at: DateTime<Utc>,
    },
}
