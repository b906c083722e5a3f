//! Every audit query is itself an event (`AuditQueried` on a fresh
//! `AuditQuery` aggregate): who asked, which route, which filters.

use std::collections::{BTreeMap, HashMap};

use chronicle_aggregates::audit_query::{AuditQuery, AuditQueryCommand};
use uuid::Uuid;

use crate::commands::{now, CommandExecutor};

/// Records one query; the caller answers only once this succeeded.
pub async fn record_query(
    executor: &CommandExecutor<AuditQuery>,
    auditor_id: Option<Uuid>,
    route: &str,
    filters: BTreeMap<String, String>,
    metadata: HashMap<String, String>,
) -> anyhow::Result<()> {
    let command = AuditQueryCommand::Record {
        auditor_id,
        route: route.to_string(),
        filters,
        at: now(),
    };
    executor
        .execute(&Uuid::new_v4().to_string(), command, metadata)
        .await
        .map_err(|err| anyhow::anyhow!("recording the audit query: {err}"))?;
    Ok(())
}

/// Metadata for a query made from the command line: the operator's OS user.
pub fn cli_metadata() -> HashMap<String, String> {
    let request_id = Uuid::new_v4().to_string();
    let operator = std::env::var("USER").unwrap_or_default();
    HashMap::from([
        ("actor_id".to_string(), format!("cli:{operator}")),
        ("actor_roles".to_string(), String::new()),
        ("request_id".to_string(), request_id.clone()),
        ("correlation_id".to_string(), request_id.clone()),
        ("causation_id".to_string(), request_id),
        ("client_ip".to_string(), String::new()),
        (
            "user_agent".to_string(),
            format!("chronicle-cli/{}", env!("CARGO_PKG_VERSION")),
        ),
        (
            "occurred_at".to_string(),
            now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        ),
    ])
}
