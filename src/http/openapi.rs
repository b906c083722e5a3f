//! `/openapi.json`: the OpenAPI 3.1 description of every route, generated from
//! the handlers' annotations so it cannot drift from the code.

use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::http::{auth, service, tasks};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "Chronicle API", description = "Event-sourced backend: users, tasks and more."),
    paths(
        service::index, service::health, service::ready, service::metrics, service::jwks,
        auth::register, auth::login, auth::me,
        tasks::list_tasks, tasks::create_task, tasks::get_task, tasks::replace_task,
        tasks::patch_task, tasks::complete_task, tasks::delete_task, tasks::restore_task,
    ),
    modifiers(&BearerAuth),
    tags((name = "service"), (name = "auth"), (name = "tasks"))
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
