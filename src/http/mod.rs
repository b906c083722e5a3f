//! The HTTP API: one module per resource, assembled here with the layers every
//! route shares (request id, panics, tracing, metrics, load shedding,
//! timeout, body limit and body read deadline).

pub mod admin;
pub mod analytics;
pub mod audit;
pub mod auth;
pub mod chat;
pub mod chat_sessions;
pub mod diagnostics;
pub mod environment;
pub mod error;
pub mod event_feed;
pub mod extract;
pub mod files;
pub mod identity;
pub mod mcp;
pub mod notifications;
pub mod openapi;
pub mod openapi_errors;
pub mod overload;
pub mod photo_metadata;
pub mod profile;
pub mod projects;
pub mod rate_limit;
pub mod request_id;
pub mod schema;
pub mod server;
pub mod service;
pub mod tasks;
pub mod write;
pub mod ws;

use std::time::Instant;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::state::AppState;
use error::ApiError;

/// The whole API with its middleware.
pub fn router(state: AppState) -> Router {
    let body_limit = state.settings.http.body_limit_bytes;
    let timeout = state.settings.http.request_timeout;
    let body_read_timeout = state.settings.http.body_read_timeout;
    let in_flight = overload::InFlight::new(state.settings.http.max_in_flight);
    Router::new()
        .merge(service::router())
        .merge(auth::router())
        .merge(tasks::router())
        .merge(projects::router())
        .merge(notifications::router())
        .merge(files::router(&state.settings.files))
        .merge(chat_sessions::router())
        .merge(mcp::router())
        .merge(ws::router())
        .merge(environment::router())
        .merge(chat::router())
        .merge(profile::router())
        .merge(admin::router())
        .merge(audit::router())
        .merge(openapi::router())
        .fallback(|| async { ApiError::NotFound })
        .layer(middleware::from_fn_with_state(state.clone(), identity::resolve_identity))
        .with_state(state.clone())
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(body_read_timeout, overload::body_read_deadline))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, timeout))
        // Outside the timeout, so that a slot covers all of a request's time;
        // inside the OpenAI layer, so that a shed chat request carries `type`.
        .layer(middleware::from_fn_with_state(in_flight, overload::shed_beyond_in_flight_cap))
        // Outside the timeout, so that its bare 503 gets the error format too.
        .layer(middleware::map_response(error_format_for_bare_errors))
        // Outside everything that can answer a chat route (rate limits,
        // timeout, routing), so that every error there carries OpenAI's `type`.
        .layer(middleware::from_fn(chat::openai_error_type))
        .layer(middleware::from_fn(record_metrics))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            let route = request
                .extensions()
                .get::<MatchedPath>()
                .map(MatchedPath::as_str)
                .unwrap_or("unmatched");
            tracing::info_span!("http", method = %request.method(), route, request_id = %request_id::current_request_id())
        }))
        .layer(CatchPanicLayer::custom(|_panic: Box<dyn std::any::Any + Send>| {
            ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
        }))
        .layer(middleware::from_fn(request_id::assign_request_id))
        // No sniffing, no framing, no caching of API answers, no referrer leaks.
        .layer(always(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(always(header::X_FRAME_OPTIONS, "DENY"))
        .layer(always(header::REFERRER_POLICY, "no-referrer"))
        .layer(always(header::CONTENT_SECURITY_POLICY, "default-src 'none'; frame-ancestors 'none'"))
        .layer(always(header::CACHE_CONTROL, "no-store"))
        .layer(cors(&state.settings.http.cors_origins))
}

/// Browser origins from configuration; `Authorization` and our headers allowed.
fn cors(origins: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    let name = |n: &'static str| HeaderName::from_static(n);
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            name("x-request-id"),
            name("x-consistency-token"),
            name("x-api-key"),
            name("last-event-id"),
            header::IF_NONE_MATCH,
        ])
        .expose_headers([
            name("x-request-id"),
            name("x-consistency-token"),
            name("x-total-count"),
            name("x-ratelimit-limit"),
            name("x-ratelimit-remaining"),
            name("x-ratelimit-reset"),
            header::RETRY_AFTER,
            // File downloads: the name to save as, and the tag to revalidate with.
            header::CONTENT_DISPOSITION,
            header::ETAG,
        ])
        .max_age(std::time::Duration::from_secs(600))
}

/// A header every response carries unless the handler set it.
fn always(name: HeaderName, value: &'static str) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value))
}

/// Responses produced by axum or tower themselves (405 with `Allow`, a
/// timeout) carry no body; give them the error format like every other error.
async fn error_format_for_bare_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.headers().contains_key(header::CONTENT_TYPE)
    {
        return response;
    }
    let error = match status {
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
        StatusCode::NOT_FOUND => ApiError::NotFound,
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::REQUEST_TIMEOUT => {
            ApiError::Unavailable("the request took too long".into())
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ApiError::UnsupportedMediaType("unsupported content type".into())
        }
        other if other.is_client_error() => ApiError::BadRequest(
            other
                .canonical_reason()
                .unwrap_or("bad request")
                .to_string(),
        ),
        _ => ApiError::Internal(anyhow::anyhow!("bare {status} response")),
    };
    let (mut parts, _) = response.into_parts();
    let formatted = error.into_response();
    parts.status = formatted.status();
    let (formatted_parts, body) = formatted.into_parts();
    for (name, value) in formatted_parts.headers.iter() {
        parts.headers.insert(name, value.clone());
    }
    Response::from_parts(parts, Body::new(body))
}

/// The `method` label: the standard methods by name, anything else as
/// `OTHER`. A label taken from the request as sent would let any client
/// create new series without bound (every value is kept until restart).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Counts and times every request by method, route and status; all three
/// come from small fixed sets (route: the matched route template or
/// `unmatched`, never the path as sent).
async fn record_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [
        ("method", method.to_string()),
        ("route", route),
        ("status", status),
    ];
    metrics::counter!("chronicle_http_requests_total", &labels).increment(1);
    metrics::histogram!("chronicle_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_method_label_is_one_of_a_fixed_set() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::OPTIONS), "OPTIONS");
        assert_eq!(method_label(&Method::TRACE), "OTHER");
        assert_eq!(
            method_label(&Method::from_bytes(b"X1234").unwrap()),
            "OTHER"
        );
    }
}
