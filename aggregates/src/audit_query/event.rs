//! Events recorded by the [`AuditQuery`](super::AuditQuery) aggregate.
//!
//! Variant and field names are part of the stored format and of the public
//! contract with projections; do not rename them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Something that happened to an audit query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AuditQueryEvent {
    /// Someone queried the audit trail or the event history.
    AuditQueried {
        /// The authenticated caller; `None` for the operator's command line.
        auditor_id: Option<Uuid>,
        /// What was asked, e.g. `GET /v1/audit/events`.
        route: String,
        /// The filters as given.
        filters: BTreeMap<String, String>,
        /// When the query was made.
        queried_at: DateTime<Utc>,
    },
}

impl DomainEvent for AuditQueryEvent {
    fn event_type(&self) -> String {
        match self {
            Self::AuditQueried { .. } => "AuditQueried",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}
