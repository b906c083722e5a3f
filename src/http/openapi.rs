//! `/openapi.json`: the OpenAPI 3.1 description of every route, generated from
//! the handlers' annotations so it cannot drift from the code.

use axum::http::{header, HeaderValue};
use axum::Router;
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use crate::http::openapi_errors::CommonErrors;
use crate::http::{
    admin, analytics, audit, auth, chat, chat_sessions, diagnostics, environment, files, mcp,
    notifications, profile, projects, service, tasks, ws,
};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "Chronicle API", description = "Event-sourced backend: users, tasks and more. Every string, in a body or a query, is refused (422) if it holds U+0000, which the event store cannot keep. A field that names something the caller does not have (a `project_id`, a `model`) answers 404 with that field in `details`."),
    paths(
        service::index, service::health, service::ready, service::metrics, service::jwks,
        environment::environment,
        auth::register, auth::login, auth::refresh, auth::logout, auth::change_password,
        auth::verify_token, auth::me,
        profile::get_profile, profile::update_profile, profile::deactivate_profile,
        profile::reset_api_key, profile::upload_photo, profile::get_photo, profile::delete_photo,
        admin::list_users, admin::set_roles, admin::unlock_user, analytics::analytics, diagnostics::detailed_health,
        tasks::list_tasks, tasks::create_task, tasks::get_task, tasks::replace_task,
        tasks::patch_task, tasks::complete_task, tasks::delete_task, tasks::restore_task,
        projects::list_projects, projects::create_project, projects::get_project,
        projects::replace_project, projects::delete_project,
        notifications::list_notifications, notifications::get_notification,
        notifications::update_notification, notifications::delete_notification,
        notifications::mark_all_read, notifications::delete_notifications,
        notifications::unread_count,
        files::list_files, files::upload_file, files::get_file, files::delete_file,
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
    modifiers(&BearerAuth, &CommonErrors),
    tags((name = "service"), (name = "auth"), (name = "profile"), (name = "admin"), (name = "tasks"), (name = "projects"), (name = "notifications"), (name = "files"), (name = "sessions"), (name = "audit"), (name = "chat"), (name = "mcp"))
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
                    .description(Some(
                        "An access token from /v1/auth/login, or an API key `ck_…` \
                         (also accepted in `X-API-Key`)",
                    ))
                    .build(),
            ),
        );
    }
}

pub fn router() -> Router<AppState> {
    // Swagger UI, its assets vendored into the binary: `/docs` works with no
    // network beyond this server; "Authorize" takes an access token or a
    // `ck_` key, and "Try it out" calls this server.
    Router::new()
        .merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(DOCS_CONTENT_SECURITY_POLICY),
        ))
}

/// The API's own `default-src 'none'` would stop the viewer from running at
/// all: its scripts, styles and icons (data: URIs) come from this server,
/// and "Try it out" calls it; nothing else is allowed.
const DOCS_CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
     frame-ancestors 'none'";
