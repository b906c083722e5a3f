//! The one parser of the audit routes' query strings: the filters every audit
//! query takes are declared once ([`AuditFilterParams`], which is also what
//! the OpenAPI document lists) and validated once into [`Filters`]; each route
//! adds only its own parameters (page, format).

use std::collections::HashSet;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::audit::Filters;
use crate::http::error::{ApiError, Result};
use crate::http::extract::Query;

/// Which events or entries an audit query is about; an empty value is no filter.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditFilterParams {
    /// e.g. `Task`, `User`.
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<String>,
    /// The id of the user who caused the event (`metadata.actor_id`).
    pub actor_id: Option<String>,
    /// e.g. `TaskCreated` (the audit entry's action).
    pub event_type: Option<String>,
    /// Recorded at or after (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Recorded at or before (RFC 3339); before `from`, nothing matches.
    pub to: Option<DateTime<Utc>>,
    /// Only events with a greater global position (for paging).
    #[param(minimum = 0)]
    pub after_position: Option<i64>,
}

impl AuditFilterParams {
    fn validate(self) -> Result<Filters> {
        if self.after_position.is_some_and(|p| p < 0) {
            return Err(ApiError::invalid_field(
                "after_position",
                "must be 0 or more",
            ));
        }
        let nonempty = |value: Option<String>| value.filter(|v| !v.is_empty());
        Ok(Filters {
            aggregate_type: nonempty(self.aggregate_type),
            aggregate_id: nonempty(self.aggregate_id),
            actor_id: nonempty(self.actor_id),
            event_type: nonempty(self.event_type),
            from: self.from,
            to: self.to,
            after_position: self.after_position,
        })
    }
}

/// An audit route's query: the validated filters and the route's own
/// parameters `P`. A parameter that neither declares is a 422, so the
/// OpenAPI document's list of parameters is exactly what is accepted.
pub struct AuditQuery<P> {
    pub filters: Filters,
    pub params: P,
}

impl<P, S> FromRequestParts<S> for AuditQuery<P>
where
    P: DeserializeOwned + IntoParams + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        let known: HashSet<String> = AuditFilterParams::into_params(|| None)
            .into_iter()
            .chain(P::into_params(|| None))
            .map(|parameter| parameter.name)
            .collect();
        let Query(given) = Query::<Vec<(String, String)>>::from_request_parts(parts, state).await?;
        if let Some((unknown, _)) = given.iter().find(|(name, _)| !known.contains(name)) {
            return Err(ApiError::invalid_field(unknown, "unknown query parameter"));
        }
        let Query(filters) = Query::<AuditFilterParams>::from_request_parts(parts, state).await?;
        let Query(params) = Query::<P>::from_request_parts(parts, state).await?;
        Ok(Self {
            filters: filters.validate()?,
            params,
        })
    }
}
