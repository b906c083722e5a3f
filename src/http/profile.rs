//! `/v1/user/profile`: the caller's own account: read, edit, deactivate, API
//! key, photo.

use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chronicle_aggregates::user::{PhotoInfo, UserCommand};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::refresh_tokens::{new_token, token_hash};
use crate::commands::now;
use crate::http::auth::{
    await_projection, claim_username, consistency_header, release_username, user_error,
};
use crate::http::error::{ApiError, Result};
use crate::http::extract::{AuthUser, ConsistencyHeader, Json, RequestContext};
use crate::http::identity::API_KEY_PREFIX;
use crate::state::AppState;

/// Largest accepted photo.
pub const MAX_PHOTO_BYTES: usize = 5 * 1024 * 1024;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/user/profile",
            get(get_profile)
                .put(update_profile)
                .delete(deactivate_profile),
        )
        .route("/v1/user/profile/reset-api-key", post(reset_api_key))
        .route(
            "/v1/user/profile/photo",
            get(get_photo)
                .post(upload_photo)
                .delete(delete_photo)
                // Room for the multipart framing around a maximal photo;
                // the photo itself is checked against MAX_PHOTO_BYTES.
                .layer(DefaultBodyLimit::max(MAX_PHOTO_BYTES + 64 * 1024)),
        )
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProfileUsage {
    /// Tasks, soft-deleted ones included.
    pub tasks: i64,
    /// Chat sessions not deleted.
    pub sessions: i64,
    /// Messages in those sessions, both roles.
    pub messages: i64,
    /// Tokens their exchanges used (prompt and completion).
    pub tokens: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProfileResponse {
    pub id: Uuid,
    pub email: String,
    pub username: Option<String>,
    pub name: Option<String>,
    pub roles: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub preferences: Value,
    pub photo_url: Option<String>,
    pub usage: ProfileUsage,
}

/// PUT: only the given fields change; `null` clears `username` or `name`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProfileRequest {
    /// 3–32 letters, digits, `_`, `.` or `-`; `null` clears it.
    #[serde(default, deserialize_with = "crate::http::extract::some_or_null")]
    #[schema(value_type = Option<String>, pattern = "^[A-Za-z0-9_.-]{3,32}$")]
    pub username: Option<Option<String>>,
    /// At most 100 characters; `null` or blank clears it.
    #[serde(default, deserialize_with = "crate::http::extract::some_or_null")]
    #[schema(value_type = Option<String>, max_length = 100)]
    pub name: Option<Option<String>>,
    /// A JSON object nested at most 16 levels, at most 16 KiB; `null` leaves it.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub preferences: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyResponse {
    /// Shown once; only its hash is kept.
    pub api_key: String,
    /// When the key stops working; `null`: never (until reset, a password
    /// change or deactivation).
    pub expires_at: Option<DateTime<Utc>>,
}

/// Optional body of `POST /v1/user/profile/reset-api-key`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetApiKeyRequest {
    /// 1–365; absent or `null`: the key does not expire.
    #[serde(default, deserialize_with = "crate::http::extract::whole_number")]
    #[schema(minimum = 1, maximum = 365)]
    pub expires_in_days: Option<i64>,
}

/// Longest lifetime an expiring API key may be given.
pub const MAX_API_KEY_DAYS: i64 = 365;

async fn load_profile(state: &AppState, user_id: Uuid) -> Result<ProfileResponse> {
    type Row = (
        Uuid,
        String,
        Option<String>,
        Option<String>,
        Vec<String>,
        DateTime<Utc>,
        Option<Value>,
        Option<Value>,
    );
    let row: Option<Row> = sqlx::query_as(
        "select id, email, username, name, roles, created_at, preferences, photo \
         from read.users where id = $1 and active",
    )
    .bind(user_id)
    .fetch_optional(&state.pool)
    .await?;
    let (id, email, username, name, roles, created_at, preferences, photo) =
        row.ok_or(ApiError::NotFound)?;
    let (tasks, sessions, messages, tokens): (i64, i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from read.tasks where owner_id = $1), \
           count(*), coalesce(sum(message_count), 0)::bigint, coalesce(sum(total_tokens), 0)::bigint \
         from read.chat_sessions where owner_id = $1 and not is_deleted",
    )
    .bind(user_id)
    .fetch_one(&state.pool)
    .await?;
    Ok(ProfileResponse {
        id,
        email,
        username,
        name,
        roles,
        created_at,
        preferences: preferences
            .filter(|p| !p.is_null())
            .unwrap_or_else(|| Value::Object(Default::default())),
        photo_url: photo.map(|_| "/v1/user/profile/photo".to_string()),
        usage: ProfileUsage {
            tasks,
            sessions,
            messages,
            tokens,
        },
    })
}

/// The caller's profile with usage statistics.
#[utoipa::path(get, path = "/v1/user/profile", tag = "profile", security(("bearer" = [])), responses(
    (status = 200, body = ProfileResponse), (status = 401),
))]
pub async fn get_profile(
    State(state): State<AppState>,
    user: AuthUser,
    ConsistencyHeader(token): ConsistencyHeader,
) -> Result<axum::Json<ProfileResponse>> {
    // The usage counts come from other read models: wait for them too.
    for projection in ["users", "tasks", "chat_sessions"] {
        state
            .consistency
            .wait(projection, Some(user.id), token.clone())
            .await
            .map_err(|err| ApiError::Unavailable(err.to_string()))?;
    }
    Ok(axum::Json(load_profile(&state, user.id).await?))
}

/// Changes username, name or preferences; roles cannot be set here.
#[utoipa::path(put, path = "/v1/user/profile", tag = "profile", security(("bearer" = [])), request_body = UpdateProfileRequest, responses(
    (status = 200, body = ProfileResponse), (status = 409, description = "Username taken"), (status = 422),
))]
pub async fn update_profile(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    Json(request): Json<UpdateProfileRequest>,
) -> Result<(HeaderMap, axum::Json<ProfileResponse>)> {
    let key = user.id.to_string();
    let before = state.users.load(&key).await.map_err(user_error)?;
    let wanted = match &request.username {
        Some(Some(username)) => chronicle_aggregates::validation::validate_username(username).ok(),
        _ => None,
    };
    let claimed = match &wanted {
        Some(username) if Some(username) != before.username.as_ref() => {
            claim_username(&state, username, user.id).await?
        }
        _ => None,
    };
    let command = UserCommand::UpdateProfile {
        username: request.username,
        name: request.name,
        preferences: request.preferences,
        at: now(),
    };
    let executed = match state
        .users
        .execute(&key, command, context.metadata(user.id, &user.roles))
        .await
    {
        Ok(executed) => executed,
        Err(err) => {
            if let Some(username) = claimed {
                release_username(&state, &username, user.id).await;
            }
            return Err(user_error(err));
        }
    };
    // The old username was released, and the new one confirmed, by the
    // event store in the transaction that stored the change (migration 0310).
    await_projection(&state, executed.token.as_ref()).await?;
    if let Some(token) = &executed.token {
        state.consistency.record_write(user.id, token);
    }
    Ok((
        consistency_header(executed.token.as_ref()),
        axum::Json(load_profile(&state, user.id).await?),
    ))
}

/// Deactivates the account: login and every token stop working; history stays.
#[utoipa::path(delete, path = "/v1/user/profile", tag = "profile", security(("bearer" = [])), responses(
    (status = 204, description = "Deactivated"),
))]
pub async fn deactivate_profile(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
) -> Result<StatusCode> {
    let executed = state
        .users
        .execute(
            &user.id.to_string(),
            UserCommand::Deactivate { at: now() },
            context.metadata(user.id, &user.roles),
        )
        .await
        .map_err(user_error)?;
    sqlx::query("delete from api_keys where user_id = $1")
        .bind(user.id)
        .execute(&state.pool)
        .await?;
    await_projection(&state, executed.token.as_ref()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Issues a new API key; the previous one stops working at once. With
/// `{"expires_in_days": N}` (1–365) the new key stops working N days from
/// now; without a body it does not expire.
#[utoipa::path(post, path = "/v1/user/profile/reset-api-key", tag = "profile", security(("bearer" = [])), request_body(content = Option<ResetApiKeyRequest>, description = "Optional; no body: the key does not expire"), responses(
    (status = 200, body = ApiKeyResponse),
    (status = 400, description = "The body is not JSON"),
    (status = 401, description = "AUTH_REQUIRED or INVALID_TOKEN"),
    (status = 422, description = "`expires_in_days` outside 1–365, not an object, or an unknown field"),
))]
pub async fn reset_api_key(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<axum::Json<ApiKeyResponse>> {
    let request: ResetApiKeyRequest = crate::http::extract::optional_json(&headers, &body)?;
    if let Some(days) = request.expires_in_days {
        if !(1..=MAX_API_KEY_DAYS).contains(&days) {
            return Err(ApiError::invalid_field(
                "expires_in_days",
                format!("must be between 1 and {MAX_API_KEY_DAYS}"),
            ));
        }
    }
    let api_key = new_token(API_KEY_PREFIX);
    let key_id = Uuid::new_v4();
    state
        .users
        .execute(
            &user.id.to_string(),
            UserCommand::ResetApiKey { key_id, at: now() },
            context.metadata(user.id, &user.roles),
        )
        .await
        .map_err(user_error)?;
    let expires_at: Option<DateTime<Utc>> = sqlx::query_scalar(
        "insert into api_keys (user_id, key_id, key_hash, expires_at) \
         values ($1, $2, $3, now() + make_interval(days => $4::int)) \
         on conflict (user_id) do update set key_id = excluded.key_id, key_hash = excluded.key_hash, \
           expires_at = excluded.expires_at, created_at = now() \
         returning expires_at",
    )
    .bind(user.id)
    .bind(key_id)
    .bind(token_hash(&api_key))
    .bind(request.expires_in_days.map(|days| days as i32))
    .fetch_one(&state.pool)
    .await?;
    Ok(axum::Json(ApiKeyResponse {
        api_key,
        expires_at,
    }))
}

/// The image type, judged from the bytes rather than the name or header.
pub(crate) fn sniff_image(bytes: &[u8]) -> Option<&'static str> {
    match bytes {
        [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => Some("image/png"),
        [0xFF, 0xD8, 0xFF, ..] => Some("image/jpeg"),
        [b'G', b'I', b'F', b'8', b'7' | b'9', b'a', ..] => Some("image/gif"),
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => Some("image/webp"),
        _ => None,
    }
}

/// A body that is not a multipart form, in the API's error format.
pub fn multipart_rejection(rejection: MultipartRejection) -> ApiError {
    match rejection {
        MultipartRejection::InvalidBoundary(_) => ApiError::UnsupportedMediaType(
            "expected Content-Type: multipart/form-data with a boundary".into(),
        ),
        other => ApiError::BadRequest(other.body_text()),
    }
}

/// The multipart form of a photo upload.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only: the form is read part by part
pub struct PhotoUpload {
    /// A JPEG, PNG, WebP or GIF of at most 5 MB, recognised by its bytes.
    #[schema(value_type = String, format = Binary, content_media_type = "image/*")]
    photo: Vec<u8>,
}

/// Uploads a JPEG, PNG, WebP or GIF (≤ 5 MB, checked by content) as `photo` (or `file`);
/// its metadata (EXIF with any GPS position, XMP, comments) is stripped.
#[utoipa::path(post, path = "/v1/user/profile/photo", tag = "profile", security(("bearer" = [])), request_body(content = PhotoUpload, content_type = "multipart/form-data"), responses(
    (status = 200, body = ProfileResponse),
    (status = 413, description = "PAYLOAD_TOO_LARGE: over 5 MB"),
    (status = 415, description = "UNSUPPORTED_MEDIA_TYPE: not multipart/form-data, or the bytes are not a JPEG, PNG, WebP or GIF that can be read"),
    (status = 422, description = "VALIDATION_ERROR: no `photo` (or `file`) part"),
))]
pub async fn upload_photo(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    multipart: std::result::Result<Multipart, MultipartRejection>,
) -> Result<axum::Json<ProfileResponse>> {
    let mut multipart = multipart.map_err(multipart_rejection)?;
    let mut photo: Option<Bytes> = None;
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        if matches!(field.name(), Some("photo" | "file")) {
            photo = Some(field.bytes().await.map_err(multipart_error)?);
            break;
        }
    }
    let bytes = photo
        .ok_or_else(|| ApiError::invalid_field("photo", "a multipart field `photo` is required"))?;
    if bytes.len() > MAX_PHOTO_BYTES {
        return Err(ApiError::PayloadTooLarge);
    }
    let content_type = sniff_image(&bytes).ok_or_else(|| {
        ApiError::UnsupportedMediaType("the photo must be a JPEG, PNG, WebP or GIF image".into())
    })?;
    // No GPS position, camera serial or comment leaves with the picture.
    let bytes = crate::http::photo_metadata::strip(content_type, &bytes)
        .map_err(|malformed| ApiError::UnsupportedMediaType(malformed.to_string()))?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    sqlx::query(
        "insert into profile_photos (user_id, content_type, bytes, sha256) values ($1, $2, $3, $4) \
         on conflict (user_id) do update set content_type = excluded.content_type, bytes = excluded.bytes, \
           sha256 = excluded.sha256, updated_at = now()",
    )
    .bind(user.id)
    .bind(content_type)
    .bind(bytes.as_slice())
    .bind(&sha256)
    .execute(&state.pool)
    .await?;
    let info = PhotoInfo {
        content_type: content_type.to_string(),
        size_bytes: bytes.len() as u64,
        sha256,
    };
    set_photo(&state, &user, &context, Some(info)).await?;
    Ok(axum::Json(load_profile(&state, user.id).await?))
}

/// Records the caller's new photo (or none) and waits until the profile shows it.
async fn set_photo(
    state: &AppState,
    user: &AuthUser,
    context: &RequestContext,
    photo: Option<PhotoInfo>,
) -> Result<()> {
    let executed = state
        .users
        .execute(
            &user.id.to_string(),
            UserCommand::SetPhoto { photo, at: now() },
            context.metadata(user.id, &user.roles),
        )
        .await
        .map_err(user_error)?;
    await_projection(state, executed.token.as_ref()).await
}

fn multipart_error(err: axum::extract::multipart::MultipartError) -> ApiError {
    if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge
    } else {
        ApiError::BadRequest(format!("malformed multipart body: {}", err.body_text()))
    }
}

/// The caller's photo, with its content type.
#[utoipa::path(get, path = "/v1/user/profile/photo", tag = "profile", security(("bearer" = [])), responses(
    (status = 200, description = "The image bytes"), (status = 404),
))]
pub async fn get_photo(State(state): State<AppState>, user: AuthUser) -> Result<Response> {
    let photo: Option<(String, Vec<u8>)> =
        sqlx::query_as("select content_type, bytes from profile_photos where user_id = $1")
            .bind(user.id)
            .fetch_optional(&state.pool)
            .await?;
    let (content_type, bytes) = photo.ok_or(ApiError::NotFound)?;
    Ok(([(header::CONTENT_TYPE, content_type)], bytes).into_response())
}

/// Removes the photo.
#[utoipa::path(delete, path = "/v1/user/profile/photo", tag = "profile", security(("bearer" = [])), responses(
    (status = 204, description = "Removed"),
))]
pub async fn delete_photo(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
) -> Result<StatusCode> {
    set_photo(&state, &user, &context, None).await?;
    sqlx::query("delete from profile_photos where user_id = $1")
        .bind(user.id)
        .execute(&state.pool)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::sniff_image;

    #[test]
    fn image_types_are_told_by_their_bytes() {
        assert_eq!(sniff_image(b"\x89PNG\r\n\x1a\nrest"), Some("image/png"));
        assert_eq!(sniff_image(b"\xff\xd8\xff\xe0rest"), Some("image/jpeg"));
        assert_eq!(sniff_image(b"GIF89a..."), Some("image/gif"));
        assert_eq!(sniff_image(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff_image(b"hello, I am a PNG"), None);
    }
}
