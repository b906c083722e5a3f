//! `/v1/notifications`: queries read `read.notifications` (projection
//! `notifications`, made of Task, User and AuthSession events); read/unread
//! and deletion are commands to the caller's `NotificationInbox` (aggregate
//! id = the caller's id), so each is an event like any other change.
//!
//! Every route first waits for the `notifications` projection to reach the
//! caller's token or last write, whatever aggregate that write was to (see
//! `consistency::projections_reading`): a client that just created a task
//! sees its `TASK_CREATED` here. Another user's notification answers 404; a
//! bulk delete deletes the caller's own among the ids and ignores the rest.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::{get, put};
use axum::Router;
use chronicle_aggregates::notification_inbox::{
    NotificationInbox, NotificationInboxCommand, NotificationInboxError, MAX_IDS,
};
use chrono::{DateTime, Utc};
use cqrs_es::AggregateError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::commands::{now, Executed};
use crate::http::error::{infrastructure_error, ApiError, Result};
use crate::http::extract::{AuthUser, ConsistencyHeader, IdPath, Json, Query, RequestContext};
use crate::http::write::{self, total_count, Page};
use crate::state::AppState;

const PROJECTION: &str = "notifications";

/// The columns of a [`NotificationResponse`].
const COLUMNS: &str = "id, type, title, message, is_read, read_at, created_at, \
     case when source_aggregate_type = 'Task' then source_aggregate_id::uuid end as task_id";

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/notifications",
            get(list_notifications).delete(delete_notifications),
        )
        .route("/v1/notifications/mark-all-read", put(mark_all_read))
        .route("/v1/notifications/unread/count", get(unread_count))
        .route(
            "/v1/notifications/{id}",
            get(get_notification)
                .put(update_notification)
                .delete(delete_notification),
        )
}

/// A notification as clients see it.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct NotificationResponse {
    pub id: Uuid,
    /// `TASK_CREATED`, `TASK_UPDATED`, `TASK_DELETED`, `TASK_COMPLETED`,
    /// `TASK_PENDING`, `SIGNUP`, `LOGIN`, `LOGOUT` or `PROFILE_UPDATED`.
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    pub kind: String,
    pub title: String,
    pub message: String,
    pub is_read: bool,
    pub read_at: Option<DateTime<Utc>>,
    /// When the event it tells of was recorded.
    pub created_at: DateTime<Utc>,
    /// The task it is about, for the `TASK_*` types.
    pub task_id: Option<Uuid>,
}

/// Oldest or newest first.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SortOrder {
    Asc,
    #[default]
    Desc,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListNotificationsQuery {
    /// 1–100, default 50.
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<i64>,
    /// ≥ 0, default 0.
    #[param(minimum = 0, maximum = 1_000_000_000, default = 0)]
    pub offset: Option<i64>,
    /// Only unread ones; default false.
    pub unread_only: Option<bool>,
    /// `asc` or `desc` (default) by creation time.
    #[param(inline)]
    pub sort: Option<SortOrder>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateNotificationRequest {
    pub is_read: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeleteNotificationsQuery {
    /// 1–100 notification ids (hyphenated UUIDs), comma-separated without spaces.
    #[param(
        value_type = String,
        required = true,
        pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(,[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}){0,99}$"
    )]
    pub ids: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MarkAllReadResponse {
    /// How many notifications became read.
    pub updated: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UnreadCountResponse {
    pub count: i64,
}

fn inbox_error(err: AggregateError<NotificationInboxError>) -> ApiError {
    match err {
        AggregateError::UserError(err) => ApiError::invalid_field("ids", err.to_string()),
        other => infrastructure_error(other),
    }
}

async fn run(
    state: &AppState,
    user: &AuthUser,
    context: &RequestContext,
    command: NotificationInboxCommand,
) -> Result<(HeaderMap, Executed<NotificationInbox>)> {
    write::execute(
        state,
        &state.notification_inboxes,
        user,
        context,
        user.id,
        command,
        inbox_error,
    )
    .await
}

async fn wait_for_read_model(
    state: &AppState,
    user: &AuthUser,
    token: ConsistencyHeader,
) -> Result<()> {
    write::wait_for_read_model(state, PROJECTION, user, token).await
}

async fn count_unread(state: &AppState, owner: Uuid) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "select count(*) from read.notifications where owner_id = $1 and not is_read",
    )
    .bind(owner)
    .fetch_one(&state.pool)
    .await?)
}

/// The caller's notification `id`, or 404.
async fn find(state: &AppState, owner: Uuid, id: Uuid) -> Result<NotificationResponse> {
    let found: Option<NotificationResponse> = sqlx::query_as(&format!(
        "select {COLUMNS} from read.notifications where id = $1 and owner_id = $2"
    ))
    .bind(id)
    .bind(owner)
    .fetch_optional(&state.pool)
    .await?;
    found.ok_or(ApiError::NotFound)
}

/// Lists the caller's notifications, newest first unless `sort=asc`.
#[utoipa::path(get, path = "/v1/notifications", tag = "notifications", security(("bearer" = [])), params(ListNotificationsQuery), responses(
    (status = 200, body = Vec<NotificationResponse>, headers(
        ("X-Total-Count" = i64, description = "Notifications matching the filter"),
        ("X-Unread-Count" = i64, description = "All unread notifications of the caller"),
    )),
    (status = 401), (status = 422, description = "Invalid page, sort or filter"),
    (status = 503, description = "Your last write is not readable yet"),
))]
pub async fn list_notifications(
    State(state): State<AppState>,
    user: AuthUser,
    token: ConsistencyHeader,
    Query(query): Query<ListNotificationsQuery>,
) -> Result<(HeaderMap, axum::Json<Vec<NotificationResponse>>)> {
    let page = Page::new(query.limit, query.offset)?;
    let unread_only = query.unread_only.unwrap_or(false);
    let direction = match query.sort.unwrap_or_default() {
        SortOrder::Asc => "asc",
        SortOrder::Desc => "desc",
    };
    wait_for_read_model(&state, &user, token).await?;
    let notifications: Vec<NotificationResponse> = sqlx::query_as(&format!(
        "select {COLUMNS} from read.notifications \
         where owner_id = $1 and (not $2 or not is_read) \
         order by created_at {direction}, id {direction} limit $3 offset $4"
    ))
    .bind(user.id)
    .bind(unread_only)
    .bind(page.limit)
    .bind(page.offset)
    .fetch_all(&state.pool)
    .await?;
    let (total, unread): (i64, i64) = sqlx::query_as(
        "select count(*) filter (where not $2 or not is_read), count(*) filter (where not is_read) \
         from read.notifications where owner_id = $1",
    )
    .bind(user.id)
    .bind(unread_only)
    .fetch_one(&state.pool)
    .await?;
    let mut headers = total_count(total);
    headers.insert("x-unread-count", HeaderValue::from(unread));
    Ok((headers, axum::Json(notifications)))
}

/// One notification of the caller's.
#[utoipa::path(get, path = "/v1/notifications/{id}", tag = "notifications", security(("bearer" = [])), params(("id" = Uuid, Path)), responses(
    (status = 200, body = NotificationResponse), (status = 401),
    (status = 404, description = "No such notification of yours"), (status = 422, description = "Id is not a UUID"),
    (status = 503, description = "Your last write is not readable yet"),
))]
pub async fn get_notification(
    State(state): State<AppState>,
    user: AuthUser,
    token: ConsistencyHeader,
    IdPath(id): IdPath,
) -> Result<axum::Json<NotificationResponse>> {
    wait_for_read_model(&state, &user, token).await?;
    Ok(axum::Json(find(&state, user.id, id).await?))
}

/// Marks one notification read or unread.
#[utoipa::path(put, path = "/v1/notifications/{id}", tag = "notifications", security(("bearer" = [])), params(("id" = Uuid, Path)), request_body = UpdateNotificationRequest, responses(
    (status = 200, body = NotificationResponse, headers(("X-Consistency-Token" = String, description = "Send back to read this write (absent when nothing changed)"))),
    (status = 400, description = "Body is not JSON"), (status = 401),
    (status = 404, description = "No such notification of yours"),
    (status = 422, description = "Id is not a UUID, or `is_read` missing or not a boolean"),
    (status = 503, description = "Your last write is not readable yet"),
))]
pub async fn update_notification(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    token: ConsistencyHeader,
    IdPath(id): IdPath,
    Json(request): Json<UpdateNotificationRequest>,
) -> Result<(HeaderMap, axum::Json<NotificationResponse>)> {
    wait_for_read_model(&state, &user, token).await?;
    let mut notification = find(&state, user.id, id).await?;
    if notification.is_read == request.is_read {
        return Ok((HeaderMap::new(), axum::Json(notification)));
    }
    let at = now();
    let command = if request.is_read {
        NotificationInboxCommand::MarkRead { ids: vec![id], at }
    } else {
        NotificationInboxCommand::MarkUnread { ids: vec![id], at }
    };
    let (headers, _) = run(&state, &user, &context, command).await?;
    notification.is_read = request.is_read;
    notification.read_at = request.is_read.then_some(at);
    Ok((headers, axum::Json(notification)))
}

/// Deletes one notification.
#[utoipa::path(delete, path = "/v1/notifications/{id}", tag = "notifications", security(("bearer" = [])), params(("id" = Uuid, Path)), responses(
    (status = 204, description = "Deleted", headers(("X-Consistency-Token" = String, description = "Send back to read this write"))),
    (status = 401), (status = 404, description = "No such notification of yours"),
    (status = 422, description = "Id is not a UUID"), (status = 503, description = "Your last write is not readable yet"),
))]
pub async fn delete_notification(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    token: ConsistencyHeader,
    IdPath(id): IdPath,
) -> Result<(StatusCode, HeaderMap)> {
    wait_for_read_model(&state, &user, token).await?;
    find(&state, user.id, id).await?;
    let command = NotificationInboxCommand::Delete {
        ids: vec![id],
        at: now(),
    };
    let (headers, _) = run(&state, &user, &context, command).await?;
    Ok((StatusCode::NO_CONTENT, headers))
}

/// `ids=a,b,…`: 1 to [`MAX_IDS`] hyphenated UUIDs, as the OpenAPI pattern says.
fn parse_ids(raw: Option<&str>) -> Result<Vec<Uuid>> {
    let raw = raw.unwrap_or_default();
    if raw.is_empty() {
        return Err(ApiError::invalid_field(
            "ids",
            format!("give 1 to {MAX_IDS} comma-separated notification ids"),
        ));
    }
    let parts: Vec<&str> = raw.split(',').collect();
    if parts.len() > MAX_IDS {
        return Err(ApiError::invalid_field(
            "ids",
            format!("at most {MAX_IDS} ids, {} given", parts.len()),
        ));
    }
    parts
        .into_iter()
        .map(|part| {
            Uuid::try_parse(part)
                .ok()
                .filter(|_| part.len() == 36)
                .ok_or_else(|| ApiError::invalid_field("ids", "every id must be a hyphenated UUID"))
        })
        .collect()
}

/// Deletes the caller's notifications among `ids`; ids that are not the
/// caller's (or no longer exist) are ignored, so the answer says nothing
/// about other users' notifications.
#[utoipa::path(delete, path = "/v1/notifications", tag = "notifications", security(("bearer" = [])), params(DeleteNotificationsQuery), responses(
    (status = 204, description = "The caller's notifications among `ids` are deleted", headers(("X-Consistency-Token" = String, description = "Send back to read this write (absent when nothing was deleted)"))),
    (status = 401), (status = 422, description = "`ids` missing, more than 100, or not UUIDs"),
    (status = 503, description = "Your last write is not readable yet"),
))]
pub async fn delete_notifications(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    token: ConsistencyHeader,
    Query(query): Query<DeleteNotificationsQuery>,
) -> Result<(StatusCode, HeaderMap)> {
    let ids = parse_ids(query.ids.as_deref())?;
    wait_for_read_model(&state, &user, token).await?;
    let mine: Vec<Uuid> = sqlx::query_scalar(
        "select id from read.notifications where owner_id = $1 and id = any($2) order by id",
    )
    .bind(user.id)
    .bind(&ids)
    .fetch_all(&state.pool)
    .await?;
    if mine.is_empty() {
        return Ok((StatusCode::NO_CONTENT, HeaderMap::new()));
    }
    let command = NotificationInboxCommand::Delete {
        ids: mine,
        at: now(),
    };
    let (headers, _) = run(&state, &user, &context, command).await?;
    Ok((StatusCode::NO_CONTENT, headers))
}

/// Marks every notification the caller has read.
///
/// "Every" is bounded by the newest unread one the caller could see when
/// asking (`AllNotificationsRead.up_to`): a notification that arrives meanwhile
/// stays unread, and a rebuild marks exactly the same rows.
#[utoipa::path(put, path = "/v1/notifications/mark-all-read", tag = "notifications", security(("bearer" = [])), responses(
    (status = 200, body = MarkAllReadResponse, headers(("X-Consistency-Token" = String, description = "Send back to read this write (absent when nothing was unread)"))),
    (status = 401), (status = 503, description = "Your last write is not readable yet"),
))]
pub async fn mark_all_read(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    token: ConsistencyHeader,
) -> Result<(HeaderMap, axum::Json<MarkAllReadResponse>)> {
    wait_for_read_model(&state, &user, token).await?;
    let (unread, newest): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
        "select count(*), max(created_at) from read.notifications \
         where owner_id = $1 and not is_read",
    )
    .bind(user.id)
    .fetch_one(&state.pool)
    .await?;
    let Some(up_to) = newest else {
        return Ok((
            HeaderMap::new(),
            axum::Json(MarkAllReadResponse { updated: 0 }),
        ));
    };
    let command = NotificationInboxCommand::MarkAllRead { up_to, at: now() };
    let (headers, _) = run(&state, &user, &context, command).await?;
    Ok((headers, axum::Json(MarkAllReadResponse { updated: unread })))
}

/// How many notifications of the caller's are unread.
#[utoipa::path(get, path = "/v1/notifications/unread/count", tag = "notifications", security(("bearer" = [])), responses(
    (status = 200, body = UnreadCountResponse), (status = 401),
    (status = 503, description = "Your last write is not readable yet"),
))]
pub async fn unread_count(
    State(state): State<AppState>,
    user: AuthUser,
    token: ConsistencyHeader,
) -> Result<axum::Json<UnreadCountResponse>> {
    wait_for_read_model(&state, &user, token).await?;
    Ok(axum::Json(UnreadCountResponse {
        count: count_unread(&state, user.id).await?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_be_one_to_one_hundred_uuids() {
        assert!(parse_ids(None).is_err());
        assert!(parse_ids(Some(" ")).is_err());
        assert!(parse_ids(Some("nope")).is_err());
        let one = Uuid::new_v4();
        assert_eq!(parse_ids(Some(&one.to_string())).unwrap(), vec![one]);
        // Exactly the OpenAPI pattern: no spaces, hyphenated UUIDs only.
        assert!(parse_ids(Some(&format!(" {one}"))).is_err());
        assert!(parse_ids(Some(&one.simple().to_string())).is_err());
        let hundred = vec![one.to_string(); 100].join(",");
        assert_eq!(parse_ids(Some(&hundred)).unwrap().len(), 100);
        let too_many = vec![one.to_string(); 101].join(",");
        assert!(parse_ids(Some(&too_many)).is_err());
    }
}
