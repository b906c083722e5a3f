//! The `AuditQuery` aggregate: one query of the audit trail or the event
//! history, recorded as an event so that who looked at what is itself audited.
//!
//! One aggregate per query, not per auditor: queries share no invariant, so a
//! per-auditor stream would only add optimistic-concurrency conflicts between
//! an auditor's parallel requests and make every load read their whole
//! history. A query's aggregate holds exactly one event.

mod command;
mod error;
mod event;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use command::AuditQueryCommand;
pub use error::AuditQueryError;
pub use event::AuditQueryEvent;

use crate::validation::FieldError;

/// Longest route description recorded, in characters.
pub const ROUTE_MAX_CHARS: usize = 200;
/// Most filters recorded for one query.
pub const FILTERS_MAX: usize = 32;
/// Longest filter name or value recorded, in characters.
pub const FILTER_MAX_CHARS: usize = 500;

/// A recorded audit query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditQuery {
    pub recorded: bool,
    /// The authenticated caller; `None` for the operator's command line.
    pub auditor_id: Option<Uuid>,
    /// What was asked, e.g. `GET /v1/audit/events` or `cli audit export`.
    pub route: String,
    /// The filters as given.
    pub filters: BTreeMap<String, String>,
    pub queried_at: Option<DateTime<Utc>>,
}

impl Aggregate for AuditQuery {
    const TYPE: &'static str = "AuditQuery";
    type Command = AuditQueryCommand;
    type Event = AuditQueryEvent;
    type Error = AuditQueryError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            AuditQueryCommand::Record {
                auditor_id,
                route,
                filters,
                at,
            } => {
                if self.recorded {
                    return Err(AuditQueryError::AlreadyRecorded);
                }
                let mut errors = Vec::new();
                let route = route.trim().to_string();
                if route.is_empty() || route.chars().count() > ROUTE_MAX_CHARS {
                    errors.push(FieldError::new(
                        "route",
                        format!("must be 1 to {ROUTE_MAX_CHARS} characters"),
                    ));
                }
                if filters.len() > FILTERS_MAX
                    || filters.iter().any(|(name, value)| {
                        name.chars().count() > FILTER_MAX_CHARS
                            || value.chars().count() > FILTER_MAX_CHARS
                    })
                {
                    errors.push(FieldError::new(
                        "filters",
                        format!(
                            "at most {FILTERS_MAX} filters of at most {FILTER_MAX_CHARS} characters"
                        ),
                    ));
                }
                if !errors.is_empty() {
                    return Err(AuditQueryError::Invalid(errors));
                }
                sink.write(
                    AuditQueryEvent::AuditQueried {
                        auditor_id,
                        route,
                        filters,
                        queried_at: at,
                    },
                    self,
                )
                .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            AuditQueryEvent::AuditQueried {
                auditor_id,
                route,
                filters,
                queried_at,
            } => {
                self.recorded = true;
                self.auditor_id = auditor_id;
                self.route = route;
                self.filters = filters;
                self.queried_at = Some(queried_at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;
    use cqrs_es::DomainEvent;

    use super::*;

    type Given = TestFramework<AuditQuery>;

    fn at() -> DateTime<Utc> {
        "2026-05-01T12:00:00Z".parse().unwrap()
    }

    fn filters() -> BTreeMap<String, String> {
        BTreeMap::from([("aggregate_type".to_string(), "Task".to_string())])
    }

    fn record(route: &str, filters: BTreeMap<String, String>) -> AuditQueryCommand {
        AuditQueryCommand::Record {
            auditor_id: Some(Uuid::nil()),
            route: route.into(),
            filters,
            at: at(),
        }
    }

    #[test]
    fn a_query_is_recorded_with_who_which_route_and_which_filters() {
        Given::with(())
            .given_no_previous_events()
            .when(record(" GET /v1/audit/events ", filters()))
            .then_expect_events(vec![AuditQueryEvent::AuditQueried {
                auditor_id: Some(Uuid::nil()),
                route: "GET /v1/audit/events".into(),
                filters: filters(),
                queried_at: at(),
            }]);
    }

    #[test]
    fn a_query_is_recorded_once() {
        Given::with(())
            .given(vec![AuditQueryEvent::AuditQueried {
                auditor_id: None,
                route: "cli audit verify".into(),
                filters: BTreeMap::new(),
                queried_at: at(),
            }])
            .when(record("GET /v1/audit/log", BTreeMap::new()))
            .then_expect_error(AuditQueryError::AlreadyRecorded);
    }

    #[test]
    fn an_empty_route_or_oversized_filters_are_refused() {
        let huge = BTreeMap::from([("x".to_string(), "y".repeat(FILTER_MAX_CHARS + 1))]);
        Given::with(())
            .given_no_previous_events()
            .when(record("  ", huge))
            .then_expect_error(AuditQueryError::Invalid(vec![
                FieldError::new(
                    "route",
                    format!("must be 1 to {ROUTE_MAX_CHARS} characters"),
                ),
                FieldError::new(
                    "filters",
                    format!(
                        "at most {FILTERS_MAX} filters of at most {FILTER_MAX_CHARS} characters"
                    ),
                ),
            ]));
    }

    #[test]
    fn the_event_has_a_stable_name_and_version() {
        let event = AuditQueryEvent::AuditQueried {
            auditor_id: None,
            route: "r".into(),
            filters: BTreeMap::new(),
            queried_at: at(),
        };
        assert_eq!(event.event_type(), "AuditQueried");
        assert_eq!(event.event_version(), "1.0");
    }
}
