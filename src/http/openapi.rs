//! `/openapi.json`: the OpenAPI 3.1 description of every route, generated from
//! the handlers' annotations so it cannot drift from the code.

use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::http::{admin, auth, profile, service, tasks};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "Chronicle API", description = "Event-sourced backend: users, tasks and more."),
    paths(
        service::index, service::health, service::ready, service::metrics, service::jwks,
        auth::register, auth::login, auth::refresh, auth::logout, auth::change_password,
        auth::verify_token, auth::me,
        profile::get_profile, profile::update_profile, profile::deactivate_profile,
        profile::reset_api_key, profile::upload_photo, profile::get_photo, profile::delete_photo,
        admin::list_users, admin::set_roles, admin::unlock_user, admin::analytics, admin::detailed_health,
        tasks::list_tasks, tasks::create_task, tasks::get_task, tasks::replace_task,
        tasks::patch_task, tasks::complete_task, tasks::delete_task, tasks::restore_task,
    ),
    modifiers(&BearerAuth),
    tags((name = "service"), (name = "auth"), (name = "profile"), (name = "admin"), (name = "tasks"))
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
    Router::new().route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
}
