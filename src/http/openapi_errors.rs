//! Makes every operation of `/openapi.json` declare the error answers the
//! shared layers can give it (authentication, body parsing, path and query
//! extraction, rate limits, timeouts, load shedding, internal errors), each with the error
//! body's schema. Handlers declare what is theirs (404 of a missing thing,
//! 409, 422 of a field rule); this adds what every route of a kind shares,
//! so no route can forget one.

use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::schema::{Schema, SchemaType, Type};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, PartialSchema};

/// The body of every error answer.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // a schema only: answers are built as JSON in `error.rs`
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// `AUTH_REQUIRED`, `INVALID_TOKEN`, `INVALID_CREDENTIALS`, `TOKEN_REUSED`,
    /// `FORBIDDEN`, `NOT_FOUND`, `METHOD_NOT_ALLOWED`, `CONFLICT`,
    /// `PAYLOAD_TOO_LARGE`, `UNSUPPORTED_MEDIA_TYPE`, `VALIDATION_ERROR`,
    /// `BAD_REQUEST`, `ACCOUNT_LOCKED`, `RATE_LIMITED`, `UPSTREAM_ERROR`,
    /// `UPSTREAM_NOT_CONFIGURED`, `UNAVAILABLE`, `INTERNAL_ERROR`.
    pub code: String,
    pub message: String,
    /// Per-field problems of a `VALIDATION_ERROR` (`{field, message}`), or
    /// the failing components of an `UNAVAILABLE`.
    #[schema(value_type = Vec<Object>)]
    pub details: Vec<serde_json::Value>,
    /// Equals the answer's `X-Request-ID`.
    pub request_id: String,
}

/// Routes anyone may call (API.md "Conventions", and `/v1/auth/verify-token`,
/// public by its own row there).
const PUBLIC: &[&str] = &[
    "/",
    "/health",
    "/ready",
    "/metrics",
    "/.well-known/jwks.json",
    "/v1/environment",
    "/v1/auth/register",
    "/v1/auth/login",
    "/v1/auth/refresh",
    "/v1/auth/verify-token",
];

fn description(status: &str) -> &'static str {
    match status {
        "400" => "BAD_REQUEST: the body is not JSON",
        "401" => "AUTH_REQUIRED or INVALID_TOKEN",
        "403" => "FORBIDDEN: no role that may do this",
        "404" => "NOT_FOUND: no such resource of yours",
        "409" => "CONFLICT: changed concurrently, or in a state that refuses this",
        "413" => "PAYLOAD_TOO_LARGE",
        "415" => "UNSUPPORTED_MEDIA_TYPE: Content-Type is not application/json",
        "422" => "VALIDATION_ERROR: a field, a parameter or the body's shape is invalid",
        "429" => "RATE_LIMITED (Retry-After)",
        "500" => "INTERNAL_ERROR",
        "502" => "UPSTREAM_ERROR",
        "503" => "UNAVAILABLE: overloaded, timed out, the database cannot take it right now, or your last write is not readable yet (Retry-After)",
        _ => "Error",
    }
}

fn error_response(status: &str, text: Option<&str>) -> Response {
    ResponseBuilder::new()
        .description(
            text.filter(|t| !t.is_empty())
                .unwrap_or(description(status)),
        )
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

pub struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components
            .schemas
            .insert("ErrorBody".into(), ErrorBody::schema());
        components
            .schemas
            .insert("ErrorDetail".into(), ErrorDetail::schema());
        for (path, item) in openapi.paths.paths.iter_mut() {
            for (writes, operation) in operations(item) {
                complete(path, writes, operation);
            }
        }
    }
}

/// Each operation of `item`, and whether it writes (any method but GET).
fn operations(item: &mut PathItem) -> impl Iterator<Item = (bool, &mut Operation)> {
    [
        (false, item.get.as_mut()),
        (true, item.put.as_mut()),
        (true, item.post.as_mut()),
        (true, item.delete.as_mut()),
        (true, item.patch.as_mut()),
    ]
    .into_iter()
    .filter_map(|(writes, operation)| Some((writes, operation?)))
}

/// An optional JSON body (declared `Option<T>`) is absent or a `T`, never
/// `null`, which is refused like any body that is not an object: its schema
/// becomes `T` itself, and `required` stays unset (false).
fn optional_body_is_never_null(operation: &mut Operation) {
    let Some(body) = operation.request_body.as_mut() else {
        return;
    };
    for content in body.content.values_mut() {
        let Some(RefOr::T(Schema::OneOf(one_of))) = &content.schema else {
            continue;
        };
        let is_null = |item: &RefOr<Schema>| {
            matches!(item, RefOr::T(Schema::Object(object))
                if object.schema_type == SchemaType::Type(Type::Null))
        };
        if let [first, second] = one_of.items.as_slice() {
            let not_null = match (is_null(first), is_null(second)) {
                (true, false) => second.clone(),
                (false, true) => first.clone(),
                _ => continue,
            };
            content.schema = Some(not_null);
        }
    }
}

fn complete(path: &str, writes: bool, operation: &mut Operation) {
    optional_body_is_never_null(operation);
    let mut shared = vec!["500", "503"];
    // The per-address limits count every path but these.
    if !crate::http::identity::UNLIMITED_PATHS.contains(&path) {
        shared.push("429");
    }
    if !PUBLIC.contains(&path) {
        shared.push("401");
        // A command that still meets a concurrent change of its aggregate
        // after its retries (several servers writing one record at once).
        if writes {
            shared.push("409");
        }
    }
    if operation.request_body.is_some() {
        shared.extend(["400", "413", "415", "422"]);
    }
    if operation
        .parameters
        .as_ref()
        .is_some_and(|parameters| !parameters.is_empty())
    {
        shared.push("422");
    }
    if path.contains('{') {
        shared.push("404");
    }
    let responses = &mut operation.responses.responses;
    // Error answers declared bare get the error body's schema.
    for (status, response) in responses.iter_mut() {
        if let RefOr::T(declared) = response {
            let is_error = status.starts_with('4') || status.starts_with('5');
            if is_error && declared.content.is_empty() {
                *declared = error_response(status, Some(&declared.description));
            }
        }
    }
    for status in shared {
        responses
            .entry(status.to_string())
            .or_insert_with(|| RefOr::T(error_response(status, None)));
    }
}
