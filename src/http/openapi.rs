//! `/openapi.json`: the OpenAPI 3.1 description of every route, generated from
//! the handlers' annotations so it cannot drift from the code.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::http::{
    admin, audit, auth, chat, chat_sessions, environment, mcp, notifications, profile, projects,
    service, tasks, ws,
};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "Chronicle API", description = "Event-sourced backend: users, tasks and more."),
    paths(
        service::index, service::health, service::ready, service::metrics, service::jwks,
        environment::environment,
        auth::register, auth::login, auth::refresh, auth::logout, auth::change_password,
        auth::verify_token, auth::me,
        profile::get_profile, profile::update_profile, profile::deactivate_profile,
        profile::reset_api_key, profile::upload_photo, profile::get_photo, profile::delete_photo,
        admin::list_users, admin::set_roles, admin::unlock_user, admin::analytics, admin::detailed_health,
        tasks::list_tasks, tasks::create_task, tasks::get_task, tasks::replace_task,
        tasks::patch_task, tasks::complete_task, tasks::delete_task, tasks::restore_task,
        projects::list_projects, projects::create_project, projects::get_project,
        projects::replace_project, projects::delete_project,
        notifications::list_notifications, notifications::get_notification,
        notifications::update_notification, notifications::delete_notification,
        notifications::mark_all_read, notifications::delete_notifications,
        notifications::unread_count,
        chat_sessions::list_sessions, chat_sessions::create_session, chat_sessions::get_session,
        chat_sessions::patch_session, chat_sessions::delete_session,
        chat_sessions::messages::list_messages, chat_sessions::exchange::send_message,
        chat_sessions::tools::list_tool_executions, chat_sessions::tools::record_tool_execution,
        chat_sessions::events::session_events, ws::open_feed,
        mcp::servers::list_servers, mcp::servers::create_server, mcp::servers::get_server,
        mcp::servers::replace_server, mcp::servers::remove_server, mcp::servers::enable_server,
        mcp::servers::disable_server, mcp::discovery::discover_tools, mcp::discovery::list_tools,
        mcp::export::export_servers,
        audit::list_audit_events, audit::list_audit_log, audit::verify_audit_trail,
        audit::list_audit_checkpoints, audit::get_audit_aggregate, audit::export_audit_trail,
        chat::list_models, chat::get_model, chat::create_chat_completion,
    ),
    modifiers(&BearerAuth),
    tags((name = "service"), (name = "auth"), (name = "profile"), (name = "admin"), (name = "tasks"), (name = "projects"), (name = "notifications"), (name = "sessions"), (name = "audit"), (name = "chat"), (name = "mcp"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
        .route(
            "/docs",
            get(|| docs_file("text/html; charset=utf-8", DOCS_HTML)),
        )
        .route(
            "/docs/docs.js",
            get(|| docs_file("text/javascript; charset=utf-8", DOCS_JS)),
        )
        .route(
            "/docs/docs.css",
            get(|| docs_file("text/css; charset=utf-8", DOCS_CSS)),
        )
}

// `/docs` is a small viewer of its own, embedded in the binary, so that it
// renders without any network access beyond this server.
const DOCS_HTML: &str = include_str!("docs/index.html");
const DOCS_JS: &str = include_str!("docs/docs.js");
const DOCS_CSS: &str = include_str!("docs/docs.css");

async fn docs_file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Our own script, style and spec only.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
        ],
        body,
    )
}
