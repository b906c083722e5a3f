//! The filters every audit query takes, and how they become SQL.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, QueryBuilder};

use chronicle_projections::audit::entry::format_time;

/// Which events (or entries) a query is about; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<String>,
    pub actor_id: Option<String>,
    pub event_type: Option<String>,
    /// `recorded_at` at or after.
    pub from: Option<DateTime<Utc>>,
    /// `recorded_at` at or before.
    pub to: Option<DateTime<Utc>>,
    /// `global_position` strictly after.
    pub after_position: Option<i64>,
}

impl Filters {
    /// The filters that were given, as recorded in `AuditQueried`.
    pub fn describe(&self) -> BTreeMap<String, String> {
        let mut given = BTreeMap::new();
        let mut put = |name: &str, value: Option<String>| {
            if let Some(value) = value {
                given.insert(name.to_string(), value);
            }
        };
        put("aggregate_type", self.aggregate_type.clone());
        put("aggregate_id", self.aggregate_id.clone());
        put("actor_id", self.actor_id.clone());
        put("event_type", self.event_type.clone());
        put("from", self.from.as_ref().map(format_time));
        put("to", self.to.as_ref().map(format_time));
        put("after_position", self.after_position.map(|p| p.to_string()));
        given
    }

    /// ` and …` conditions on the events table aliased `e`.
    pub fn push_event_conditions(&self, query: &mut QueryBuilder<'static, Postgres>) {
        if let Some(value) = &self.aggregate_type {
            query
                .push(" and e.aggregate_type = ")
                .push_bind(value.clone());
        }
        if let Some(value) = &self.aggregate_id {
            query
                .push(" and e.aggregate_id = ")
                .push_bind(value.clone());
        }
        if let Some(value) = &self.actor_id {
            query
                .push(" and e.metadata ->> 'actor_id' = ")
                .push_bind(value.clone());
        }
        if let Some(value) = &self.event_type {
            query.push(" and e.event_type = ").push_bind(value.clone());
        }
        if let Some(value) = self.from {
            query.push(" and e.recorded_at >= ").push_bind(value);
        }
        if let Some(value) = self.to {
            query.push(" and e.recorded_at <= ").push_bind(value);
        }
        if let Some(value) = self.after_position {
            query.push(" and e.global_position > ").push_bind(value);
        }
    }

    /// ` and …` conditions on `audit.entries` aliased `a`.
    pub fn push_entry_conditions(&self, query: &mut QueryBuilder<'static, Postgres>) {
        if let Some(value) = &self.aggregate_type {
            query
                .push(" and a.aggregate_type = ")
                .push_bind(value.clone());
        }
        if let Some(value) = &self.aggregate_id {
            query
                .push(" and a.aggregate_id = ")
                .push_bind(value.clone());
        }
        if let Some(value) = &self.actor_id {
            query.push(" and a.actor_id = ").push_bind(value.clone());
        }
        if let Some(value) = &self.event_type {
            query.push(" and a.action = ").push_bind(value.clone());
        }
        if let Some(value) = self.from {
            query.push(" and a.recorded_at >= ").push_bind(value);
        }
        if let Some(value) = self.to {
            query.push(" and a.recorded_at <= ").push_bind(value);
        }
        if let Some(value) = self.after_position {
            query.push(" and a.global_position > ").push_bind(value);
        }
    }
}

/// The newest generation of the trail, as a SQL expression.
pub const CURRENT_GENERATION: &str = "(select max(generation) from audit.generations)";
