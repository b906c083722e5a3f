//! `/v1/tasks`: commands go to the Task aggregate, queries read `read.tasks`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, patch, post};
use axum::Router;
use chronicle_aggregates::task::{Task, TaskCommand, TaskError};
use chrono::{DateTime, Utc};
use cqrs_es::AggregateError;
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, Postgres, QueryBuilder, Row};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::commands::{micros, now, Executed};
use crate::http::error::{infrastructure_error, ApiError, Result};
use crate::http::extract::{AuthUser, ConsistencyHeader, IdPath, Json, Query, RequestContext};
use crate::http::projects::check_project;
use crate::http::write::{self, total_count, Page};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/tasks", get(list_tasks).post(create_task))
        .route(
            "/v1/tasks/{id}",
            get(get_task)
                .put(replace_task)
                .patch(patch_task)
                .delete(delete_task),
        )
        .route("/v1/tasks/{id}/complete", patch(complete_task))
        .route("/v1/tasks/{id}/restore", post(restore_task))
}

/// A task as clients see it.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow, PartialEq)]
pub struct TaskResponse {
    pub id: Uuid,
    pub title: String,
    pub description: Option<String>,
    pub completed: bool,
    pub is_deleted: bool,
    pub deleted_at: Option<DateTime<Utc>>,
    pub project_id: Option<Uuid>,
    pub due_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Number of events in the task's history.
    pub version: i64,
}

impl TaskResponse {
    fn from_aggregate(id: Uuid, task: &Task) -> Self {
        let created_at = task.created_at.unwrap_or_else(Utc::now);
        Self {
            id,
            title: task.title.clone(),
            description: task.description.clone(),
            completed: task.completed,
            is_deleted: task.is_deleted,
            deleted_at: task.deleted_at,
            project_id: task.project_id,
            due_at: task.due_at,
            created_at,
            updated_at: task.updated_at.unwrap_or(created_at),
            version: task.version as i64,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTaskRequest {
    /// 1–200 characters, not blank; stored trimmed.
    #[schema(min_length = 1, max_length = 200, pattern = "[^ \\t\\n\\r]")]
    pub title: String,
    /// At most 1000 characters.
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub description: Option<String>,
    #[serde(default)]
    pub project_id: Option<Uuid>,
    #[serde(default)]
    pub due_at: Option<DateTime<Utc>>,
}

/// PUT replaces the task: `title` required; `description`, `project_id` and
/// `due_at` absent become null; `completed` absent stays as it is.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplaceTaskRequest {
    /// 1–200 characters, not blank; stored trimmed.
    #[schema(min_length = 1, max_length = 200, pattern = "[^ \\t\\n\\r]")]
    pub title: String,
    /// At most 1000 characters.
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub description: Option<String>,
    #[serde(default)]
    pub project_id: Option<Uuid>,
    #[serde(default)]
    pub due_at: Option<DateTime<Utc>>,
    /// Absent: unchanged.
    #[serde(default, deserialize_with = "crate::http::extract::not_null")]
    #[schema(nullable = false)]
    pub completed: Option<bool>,
}

/// PATCH: only the fields to change; `null` clears an optional field.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchTaskRequest {
    /// 1–200 characters, not blank; cannot be cleared.
    #[serde(default, deserialize_with = "crate::http::extract::some_or_null")]
    #[schema(value_type = String, required = false, min_length = 1, max_length = 200, pattern = "[^ \\t\\n\\r]")]
    pub title: Option<Option<String>>,
    /// At most 1000 characters; `null` clears it.
    #[serde(default, deserialize_with = "crate::http::extract::some_or_null")]
    #[schema(value_type = Option<String>, max_length = 1000)]
    pub description: Option<Option<String>>,
    #[serde(default, deserialize_with = "crate::http::extract::some_or_null")]
    #[schema(value_type = Option<Uuid>)]
    pub project_id: Option<Option<Uuid>>,
    #[serde(default, deserialize_with = "crate::http::extract::some_or_null")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub due_at: Option<Option<DateTime<Utc>>>,
    #[serde(default, deserialize_with = "crate::http::extract::not_null")]
    #[schema(nullable = false)]
    pub completed: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteTaskRequest {
    pub completed: bool,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StatusFilter {
    All,
    Pending,
    Completed,
    Deleted,
    /// Not a client value: what applies when `status` is absent.
    #[default]
    #[serde(skip)]
    NotDeleted,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListTasksQuery {
    /// `all`, `pending`, `completed` or `deleted`; default: every task not deleted.
    #[serde(default)]
    #[param(inline, required = false)]
    pub status: StatusFilter,
    /// Created at or after.
    pub date_from: Option<DateTime<Utc>>,
    /// Created at or before (before `date_from`: nothing matches).
    pub date_to: Option<DateTime<Utc>>,
    /// Also list soft-deleted tasks.
    #[serde(default)]
    pub include_deleted: bool,
    pub project_id: Option<Uuid>,
    /// 1–100, default 50.
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<i64>,
    /// ≥ 0, default 0.
    #[param(minimum = 0, maximum = 1_000_000_000, default = 0)]
    pub offset: Option<i64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeleteTaskQuery {
    /// Remove the task from every read model (its history stays).
    #[serde(default)]
    pub permanent: bool,
}

fn task_error(err: AggregateError<TaskError>) -> ApiError {
    match err {
        AggregateError::UserError(TaskError::NotFound) => ApiError::NotFound,
        AggregateError::UserError(TaskError::AlreadyExists) => {
            ApiError::Conflict("task already exists".into())
        }
        AggregateError::UserError(TaskError::Deleted) => {
            ApiError::Conflict("task is deleted; restore it first".into())
        }
        AggregateError::UserError(TaskError::NotDeleted) => {
            ApiError::BadRequest("task is not deleted".into())
        }
        AggregateError::UserError(TaskError::Invalid(errors)) => ApiError::invalid_fields(&errors),
        other => infrastructure_error(other),
    }
}

/// Runs a task command and remembers the write for the caller's next query.
async fn run(
    state: &AppState,
    user: &AuthUser,
    context: &RequestContext,
    id: Uuid,
    command: TaskCommand,
) -> Result<(HeaderMap, Executed<Task>)> {
    write::execute(state, &state.tasks, user, context, id, command, task_error).await
}

/// [`run`] for a command that names `project_id` for the task. A task may
/// be moved only into a live project of the caller's; keeping the project it
/// has is always allowed (a client that sends a task back as it read it must
/// not fail because its project was deleted since). The task is loaded once,
/// for the check, and the command commits from that load.
async fn run_naming_project(
    state: &AppState,
    user: &AuthUser,
    context: &RequestContext,
    id: Uuid,
    project_id: Option<Uuid>,
    command: TaskCommand,
) -> Result<(HeaderMap, Executed<Task>)> {
    if project_id.is_none() {
        return run(state, user, context, id, command).await;
    }
    let at = state
        .tasks
        .load_at(&id.to_string())
        .await
        .map_err(infrastructure_error)?;
    if at.aggregate.project_id != project_id {
        check_project(state, user, project_id).await?;
    }
    write::execute_at(
        state,
        &state.tasks,
        user,
        context,
        id,
        command,
        at,
        task_error,
    )
    .await
}

async fn wait_for_read_model(
    state: &AppState,
    user: &AuthUser,
    token: ConsistencyHeader,
) -> Result<()> {
    write::wait_for_read_model(state, "tasks", user, token).await
}

/// Creates a task.
#[utoipa::path(post, path = "/v1/tasks", tag = "tasks", security(("bearer" = [])), request_body = CreateTaskRequest, responses(
    (status = 201, body = TaskResponse, headers(("X-Consistency-Token" = String, description = "Send back to read this write"))),
    (status = 404, description = "`project_id` is not one of your projects"),
    (status = 422, description = "Invalid field"),
))]
pub async fn create_task(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    Json(request): Json<CreateTaskRequest>,
) -> Result<(StatusCode, HeaderMap, axum::Json<TaskResponse>)> {
    check_project(&state, &user, request.project_id).await?;
    let id = Uuid::new_v4();
    let command = TaskCommand::Create {
        actor_id: user.id,
        title: request.title,
        description: request.description,
        project_id: request.project_id,
        due_at: request.due_at.map(micros),
        at: now(),
    };
    // A fresh id: nothing to load.
    let (headers, executed) = write::execute_new(
        &state,
        &state.tasks,
        &user,
        &context,
        id,
        command,
        task_error,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        headers,
        axum::Json(TaskResponse::from_aggregate(id, &executed.aggregate)),
    ))
}

/// Lists the caller's tasks, newest first.
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", security(("bearer" = [])), params(ListTasksQuery), responses(
    (status = 200, body = Vec<TaskResponse>, headers(("X-Total-Count" = i64))),
    (status = 422, description = "Invalid filter or page"),
))]
pub async fn list_tasks(
    State(state): State<AppState>,
    user: AuthUser,
    token: ConsistencyHeader,
    Query(query): Query<ListTasksQuery>,
) -> Result<(HeaderMap, axum::Json<Vec<TaskResponse>>)> {
    // A `date_from` after `date_to` is an empty range, answered as such.
    let Page { limit, offset } = Page::new(query.limit, query.offset)?;
    wait_for_read_model(&state, &user, token).await?;

    // One filter for both the page and the count.
    let (completed, deleted): (Option<bool>, Option<bool>) =
        match (query.status, query.include_deleted) {
            (StatusFilter::All, _) => (None, None),
            (StatusFilter::Deleted, _) => (None, Some(true)),
            (StatusFilter::Pending, include) => (Some(false), (!include).then_some(false)),
            (StatusFilter::Completed, include) => (Some(true), (!include).then_some(false)),
            (StatusFilter::NotDeleted, include) => (None, (!include).then_some(false)),
        };
    // Only the filters that are set go into the SQL, each with its own
    // parameter: every combination is then a prepared statement whose generic
    // plan Postgres reuses. With `($n is null or …)` for the absent ones, the
    // generic plan looked costlier than a custom one and the list was planned
    // on every call, 70 % of its time in Postgres (docs/performance.md,
    // change 20).
    let push_state_filters = |statement: &mut QueryBuilder<'static, Postgres>| {
        statement.push(" where owner_id = ").push_bind(user.id);
        if let Some(completed) = completed {
            statement.push(" and completed = ").push_bind(completed);
        }
        if let Some(deleted) = deleted {
            statement.push(" and is_deleted = ").push_bind(deleted);
        }
    };
    let push_filters = |statement: &mut QueryBuilder<'static, Postgres>| {
        push_state_filters(statement);
        if let Some(date_from) = query.date_from {
            statement.push(" and created_at >= ").push_bind(date_from);
        }
        if let Some(date_to) = query.date_to {
            statement.push(" and created_at <= ").push_bind(date_to);
        }
        if let Some(project_id) = query.project_id {
            statement.push(" and project_id = ").push_bind(project_id);
        }
    };
    // The total and the page in one round trip (and one snapshot): one row
    // per task, each with the total, or a single row without a task when
    // the page is empty.
    let mut statement = QueryBuilder::new("select total.n as total, page.* from (");
    // Filtered by state only, the total is a sum of the maintained counts
    // (migration 0900), not a count of every row.
    if query.date_from.is_none() && query.date_to.is_none() && query.project_id.is_none() {
        statement.push("select coalesce(sum(n), 0)::bigint from read.task_counts");
        push_state_filters(&mut statement);
    } else {
        statement.push("select count(*) from read.tasks");
        push_filters(&mut statement);
    }
    statement.push(
        ") as total(n) left join lateral ( \
           select id, title, description, completed, is_deleted, deleted_at, project_id, due_at, \
             created_at, updated_at, version \
           from read.tasks",
    );
    push_filters(&mut statement);
    statement
        .push(" order by created_at desc, id desc limit ")
        .push_bind(limit)
        .push(" offset ")
        .push_bind(offset)
        .push(") page on true");
    let rows = statement.build().fetch_all(&state.pool).await?;
    let mut total = 0;
    let mut tasks = Vec::with_capacity(rows.len());
    for row in &rows {
        total = row.try_get("total")?;
        if row.try_get::<Option<Uuid>, _>("id")?.is_some() {
            tasks.push(TaskResponse::from_row(row)?);
        }
    }
    Ok((total_count(total), axum::Json(tasks)))
}

/// One task of the caller's, soft-deleted ones included.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", security(("bearer" = [])), params(("id" = Uuid, Path)), responses(
    (status = 200, body = TaskResponse),
    (status = 404, description = "No such task of yours"),
))]
pub async fn get_task(
    State(state): State<AppState>,
    user: AuthUser,
    token: ConsistencyHeader,
    IdPath(id): IdPath,
) -> Result<axum::Json<TaskResponse>> {
    wait_for_read_model(&state, &user, token).await?;
    let task: Option<TaskResponse> = sqlx::query_as(
        "select id, title, description, completed, is_deleted, deleted_at, project_id, due_at, \
           created_at, updated_at, version \
         from read.tasks where id = $1 and owner_id = $2",
    )
    .bind(id)
    .bind(user.id)
    .fetch_optional(&state.pool)
    .await?;
    task.map(axum::Json).ok_or(ApiError::NotFound)
}

/// Replaces every editable field.
#[utoipa::path(put, path = "/v1/tasks/{id}", tag = "tasks", security(("bearer" = [])), params(("id" = Uuid, Path)), request_body = ReplaceTaskRequest, responses(
    (status = 200, body = TaskResponse),
    (status = 404, description = "No such task of yours, or `project_id` is not one of your projects"), (status = 409, description = "Deleted, or changed concurrently"), (status = 422),
))]
pub async fn replace_task(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    IdPath(id): IdPath,
    Json(request): Json<ReplaceTaskRequest>,
) -> Result<(HeaderMap, axum::Json<TaskResponse>)> {
    let project_id = request.project_id;
    let command = TaskCommand::Replace {
        actor_id: user.id,
        title: request.title,
        description: request.description,
        project_id: request.project_id,
        due_at: request.due_at.map(micros),
        completed: request.completed,
        at: now(),
    };
    let (headers, executed) =
        run_naming_project(&state, &user, &context, id, project_id, command).await?;
    Ok((
        headers,
        axum::Json(TaskResponse::from_aggregate(id, &executed.aggregate)),
    ))
}

/// Changes only the given fields.
#[utoipa::path(patch, path = "/v1/tasks/{id}", tag = "tasks", security(("bearer" = [])), params(("id" = Uuid, Path)), request_body = PatchTaskRequest, responses(
    (status = 200, body = TaskResponse),
    (status = 404, description = "No such task of yours, or `project_id` is not one of your projects"), (status = 409, description = "Deleted, or changed concurrently"), (status = 422),
))]
pub async fn patch_task(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    IdPath(id): IdPath,
    Json(request): Json<PatchTaskRequest>,
) -> Result<(HeaderMap, axum::Json<TaskResponse>)> {
    let title = match request.title {
        Some(None) => return Err(ApiError::invalid_field("title", "cannot be null")),
        Some(Some(title)) => Some(title),
        None => None,
    };
    // Clearing the project (`null`) names none to check.
    let project_id = request.project_id.flatten();
    let command = TaskCommand::Patch {
        actor_id: user.id,
        title,
        description: request.description,
        project_id: request.project_id,
        due_at: request.due_at.map(|due| due.map(micros)),
        completed: request.completed,
        at: now(),
    };
    let (headers, executed) =
        run_naming_project(&state, &user, &context, id, project_id, command).await?;
    Ok((
        headers,
        axum::Json(TaskResponse::from_aggregate(id, &executed.aggregate)),
    ))
}

/// Marks a task completed or pending.
#[utoipa::path(patch, path = "/v1/tasks/{id}/complete", tag = "tasks", security(("bearer" = [])), params(("id" = Uuid, Path)), request_body = CompleteTaskRequest, responses(
    (status = 200, body = TaskResponse), (status = 404), (status = 409), (status = 422),
))]
pub async fn complete_task(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    IdPath(id): IdPath,
    Json(request): Json<CompleteTaskRequest>,
) -> Result<(HeaderMap, axum::Json<TaskResponse>)> {
    let command = TaskCommand::SetCompleted {
        actor_id: user.id,
        completed: request.completed,
        at: now(),
    };
    let (headers, executed) = run(&state, &user, &context, id, command).await?;
    Ok((
        headers,
        axum::Json(TaskResponse::from_aggregate(id, &executed.aggregate)),
    ))
}

/// Soft-deletes a task, or with `permanent=true` purges it from every read model.
#[utoipa::path(delete, path = "/v1/tasks/{id}", tag = "tasks", security(("bearer" = [])), params(("id" = Uuid, Path), DeleteTaskQuery), responses(
    (status = 204, description = "Deleted"), (status = 404),
))]
pub async fn delete_task(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    IdPath(id): IdPath,
    Query(query): Query<DeleteTaskQuery>,
) -> Result<(StatusCode, HeaderMap)> {
    let at = now();
    let command = if query.permanent {
        TaskCommand::Purge {
            actor_id: user.id,
            at,
        }
    } else {
        TaskCommand::Delete {
            actor_id: user.id,
            at,
        }
    };
    let (headers, _) = run(&state, &user, &context, id, command).await?;
    Ok((StatusCode::NO_CONTENT, headers))
}

/// Brings back a soft-deleted task.
#[utoipa::path(post, path = "/v1/tasks/{id}/restore", tag = "tasks", security(("bearer" = [])), params(("id" = Uuid, Path)), responses(
    (status = 200, body = TaskResponse), (status = 400, description = "Task is not deleted"), (status = 404),
))]
pub async fn restore_task(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    IdPath(id): IdPath,
) -> Result<(HeaderMap, axum::Json<TaskResponse>)> {
    let command = TaskCommand::Restore {
        actor_id: user.id,
        at: now(),
    };
    let (headers, executed) = run(&state, &user, &context, id, command).await?;
    Ok((
        headers,
        axum::Json(TaskResponse::from_aggregate(id, &executed.aggregate)),
    ))
}
