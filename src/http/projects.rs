//! `/v1/projects`: commands go to the Project aggregate, queries read `read.projects`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use chronicle_aggregates::project::{Project, ProjectCommand, ProjectError};
use chrono::{DateTime, Utc};
use cqrs_es::AggregateError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::commands::{now, Executed};
use crate::http::error::{infrastructure_error, ApiError, Result};
use crate::http::extract::{AuthUser, ConsistencyHeader, IdPath, Json, Query, RequestContext};
use crate::http::write::{self, total_count, Page};
use crate::state::AppState;

const PROJECTION: &str = "projects";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/projects", get(list_projects).post(create_project))
        .route(
            "/v1/projects/{id}",
            get(get_project).put(replace_project).delete(delete_project),
        )
}

/// A project as clients see it.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct ProjectResponse {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    /// A JSON object of the client's choosing.
    #[schema(value_type = Object)]
    pub settings: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ProjectResponse {
    fn from_aggregate(id: Uuid, project: &Project) -> Self {
        let created_at = project.created_at.unwrap_or_else(Utc::now);
        Self {
            id,
            name: project.name.as_str().to_string(),
            description: project.description.as_ref().map(|d| d.as_str().to_string()),
            settings: project.settings.clone(),
            created_at,
            updated_at: project.updated_at.unwrap_or(created_at),
        }
    }
}

/// POST and PUT: PUT replaces every field (absent ones become null or `{}`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectRequest {
    /// 1–100 characters, not blank; stored trimmed.
    #[schema(min_length = 1, max_length = 100, pattern = "[^ \\t\\n\\r]")]
    pub name: String,
    /// At most 1000 characters.
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub description: Option<String>,
    /// A JSON object, nested at most 16 levels, at most 16 KiB.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub settings: Option<Value>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListProjectsQuery {
    /// 1–100, default 50.
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<i64>,
    /// ≥ 0, default 0.
    #[param(minimum = 0, maximum = 1_000_000_000, default = 0)]
    pub offset: Option<i64>,
}

fn project_error(err: AggregateError<ProjectError>) -> ApiError {
    match err {
        AggregateError::UserError(ProjectError::NotFound) => ApiError::NotFound,
        AggregateError::UserError(ProjectError::AlreadyExists) => {
            ApiError::Conflict("project already exists".into())
        }
        AggregateError::UserError(ProjectError::Deleted) => ApiError::NotFound,
        AggregateError::UserError(ProjectError::Invalid(errors)) => {
            ApiError::invalid_fields(&errors)
        }
        other => infrastructure_error(other),
    }
}

async fn run(
    state: &AppState,
    user: &AuthUser,
    context: &RequestContext,
    id: Uuid,
    command: ProjectCommand,
) -> Result<(HeaderMap, Executed<Project>)> {
    write::execute(
        state,
        &state.projects,
        user,
        context,
        id,
        command,
        project_error,
    )
    .await
}

/// Creates a project.
#[utoipa::path(post, path = "/v1/projects", tag = "projects", security(("bearer" = [])), request_body = ProjectRequest, responses(
    (status = 201, body = ProjectResponse, headers(("X-Consistency-Token" = String, description = "Send back to read this write"))),
    (status = 400, description = "Body is not JSON"), (status = 401), (status = 422, description = "Invalid field"),
))]
pub async fn create_project(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    Json(request): Json<ProjectRequest>,
) -> Result<(StatusCode, HeaderMap, axum::Json<ProjectResponse>)> {
    let id = Uuid::new_v4();
    let command = ProjectCommand::CreateProject {
        owner_id: user.id,
        name: request.name,
        description: request.description,
        settings: request.settings,
        at: now(),
    };
    let (headers, executed) = run(&state, &user, &context, id, command).await?;
    Ok((
        StatusCode::CREATED,
        headers,
        axum::Json(ProjectResponse::from_aggregate(id, &executed.aggregate)),
    ))
}

/// Lists the caller's projects, newest first.
#[utoipa::path(get, path = "/v1/projects", tag = "projects", security(("bearer" = [])), params(ListProjectsQuery), responses(
    (status = 200, body = Vec<ProjectResponse>, headers(("X-Total-Count" = i64))),
    (status = 401), (status = 422, description = "Invalid page"), (status = 503, description = "Your last write is not readable yet"),
))]
pub async fn list_projects(
    State(state): State<AppState>,
    user: AuthUser,
    token: ConsistencyHeader,
    Query(query): Query<ListProjectsQuery>,
) -> Result<(HeaderMap, axum::Json<Vec<ProjectResponse>>)> {
    let page = Page::new(query.limit, query.offset)?;
    write::wait_for_read_model(&state, PROJECTION, &user, token).await?;
    let projects: Vec<ProjectResponse> = sqlx::query_as(
        "select id, name, description, settings, created_at, updated_at from read.projects \
         where owner_id = $1 and not is_deleted order by created_at desc, id desc limit $2 offset $3",
    )
    .bind(user.id)
    .bind(page.limit)
    .bind(page.offset)
    .fetch_all(&state.pool)
    .await?;
    let total: i64 = sqlx::query_scalar(
        "select count(*) from read.projects where owner_id = $1 and not is_deleted",
    )
    .bind(user.id)
    .fetch_one(&state.pool)
    .await?;
    Ok((total_count(total), axum::Json(projects)))
}

/// One project of the caller's.
#[utoipa::path(get, path = "/v1/projects/{id}", tag = "projects", security(("bearer" = [])), params(("id" = Uuid, Path)), responses(
    (status = 200, body = ProjectResponse), (status = 401),
    (status = 404, description = "No such project of yours"), (status = 422, description = "Id is not a UUID"),
    (status = 503, description = "Your last write is not readable yet"),
))]
pub async fn get_project(
    State(state): State<AppState>,
    user: AuthUser,
    token: ConsistencyHeader,
    IdPath(id): IdPath,
) -> Result<axum::Json<ProjectResponse>> {
    write::wait_for_read_model(&state, PROJECTION, &user, token).await?;
    let project: Option<ProjectResponse> = sqlx::query_as(
        "select id, name, description, settings, created_at, updated_at from read.projects \
         where id = $1 and owner_id = $2 and not is_deleted",
    )
    .bind(id)
    .bind(user.id)
    .fetch_optional(&state.pool)
    .await?;
    project.map(axum::Json).ok_or(ApiError::NotFound)
}

/// Replaces name, description and settings.
#[utoipa::path(put, path = "/v1/projects/{id}", tag = "projects", security(("bearer" = [])), params(("id" = Uuid, Path)), request_body = ProjectRequest, responses(
    (status = 200, body = ProjectResponse), (status = 400, description = "Body is not JSON"), (status = 401),
    (status = 404), (status = 409, description = "Changed concurrently"), (status = 422),
))]
pub async fn replace_project(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    IdPath(id): IdPath,
    Json(request): Json<ProjectRequest>,
) -> Result<(HeaderMap, axum::Json<ProjectResponse>)> {
    let command = ProjectCommand::UpdateProject {
        actor: user.id,
        name: request.name,
        description: request.description,
        settings: request.settings,
        at: now(),
    };
    let (headers, executed) = run(&state, &user, &context, id, command).await?;
    Ok((
        headers,
        axum::Json(ProjectResponse::from_aggregate(id, &executed.aggregate)),
    ))
}

/// Deletes a project (its history stays).
#[utoipa::path(delete, path = "/v1/projects/{id}", tag = "projects", security(("bearer" = [])), params(("id" = Uuid, Path)), responses(
    (status = 204, description = "Deleted"), (status = 401), (status = 404), (status = 409, description = "Changed concurrently"), (status = 422),
))]
pub async fn delete_project(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    IdPath(id): IdPath,
) -> Result<(StatusCode, HeaderMap)> {
    let command = ProjectCommand::DeleteProject {
        actor: user.id,
        at: now(),
    };
    let (headers, _) = run(&state, &user, &context, id, command).await?;
    Ok((StatusCode::NO_CONTENT, headers))
}

/// A project id must name one of the caller's live projects; any other is
/// a 404, as the project itself would answer.
pub(crate) async fn check_project(
    state: &AppState,
    user: &AuthUser,
    project_id: Option<Uuid>,
) -> Result<()> {
    let Some(project_id) = project_id else {
        return Ok(());
    };
    let project = state
        .projects
        .load(&project_id.to_string())
        .await
        .map_err(infrastructure_error)?;
    if project.owner_id != Some(user.id) || project.is_deleted {
        return Err(ApiError::MissingReference {
            field: "project_id",
            message: "no such project of yours".into(),
        });
    }
    Ok(())
}
