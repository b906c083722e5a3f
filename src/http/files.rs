//! `/v1/files`: files in the caller's workspace. An upload streams to disk
//! (never whole in memory), hashed as it goes, and is stored under its
//! SHA-256 in the caller's own directory; its metadata is a `WorkspaceFile`
//! aggregate and queries read `read.files`. See `docs/files.md`.
//!
//! On disk a blob is `<data dir>/files/<owner uuid>/<sha256 hex>`: both parts
//! come from the server (the caller's id, the digest it computed), never from
//! the client, so no name a client sends can reach another path.

pub mod sniff;

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::multipart::{Field, MultipartError};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chronicle_aggregates::workspace_file::{
    display_name, WorkspaceFile, WorkspaceFileCommand, WorkspaceFileError,
};
use chrono::{DateTime, Utc};
use cqrs_es::AggregateError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::commands::{now, Executed};
use crate::config::FilesSettings;
use crate::file_blobs::{self, UPLOAD_PREFIX};
use crate::http::error::{infrastructure_error, ApiError, Result};
use crate::http::extract::{AuthUser, ConsistencyHeader, IdPath, Query, RequestContext};
use crate::http::write::{self, total_count, Page};
use crate::state::AppState;
use sniff::{extension, kind_of, Sniffer};

/// Room for the multipart framing (boundaries, part headers) around a
/// maximal file; the file itself is counted byte by byte.
pub const MULTIPART_OVERHEAD_BYTES: u64 = 64 * 1024;

/// The multipart field that carries the file.
pub const FILE_FIELD: &str = "file";

pub fn router(settings: &FilesSettings) -> Router<AppState> {
    let limit =
        usize::try_from(settings.max_bytes + MULTIPART_OVERHEAD_BYTES).unwrap_or(usize::MAX);
    Router::new()
        .route(
            "/v1/files",
            get(list_files)
                .post(upload_file)
                .layer(DefaultBodyLimit::max(limit)),
        )
        .route("/v1/files/{id}", get(get_file).delete(delete_file))
}

/// A file's metadata as clients see it.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow, PartialEq)]
pub struct FileResponse {
    pub id: Uuid,
    /// The client's name without directories or control characters; for
    /// display only.
    pub name: String,
    /// Size in bytes.
    pub size: i64,
    /// Lower-case hex SHA-256 of the bytes (also the download's `ETag`).
    pub sha256: String,
    /// Judged from the bytes and the extension.
    pub content_type: String,
    pub created_at: DateTime<Utc>,
}

impl FileResponse {
    fn from_aggregate(id: Uuid, file: &WorkspaceFile) -> Self {
        Self {
            id,
            name: file.name.clone(),
            size: i64::try_from(file.size).unwrap_or(i64::MAX),
            sha256: file.sha256.clone(),
            content_type: file.content_type.clone(),
            created_at: file.created_at.unwrap_or_else(Utc::now),
        }
    }
}

/// The multipart form of an upload.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only: the body is read as a stream
pub struct UploadFileForm {
    /// Exactly one file part, with a file name (1–255 bytes; directories
    /// are dropped) whose extension is allowed (default: txt, md, json, csv,
    /// log, yaml, yml, toml, rs, py, js, ts, swift, pdf, png, jpg, jpeg, gif,
    /// webp; `CHRONICLE_FILES_ALLOWED_EXTENSIONS`), 1 byte to 10 MiB
    /// (`CHRONICLE_FILES_MAX_BYTES`). Text extensions must hold UTF-8 without
    /// NUL; image and PDF extensions must carry their format's signature.
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListFilesQuery {
    /// 1–100, default 50.
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<i64>,
    /// ≥ 0, default 0.
    #[param(minimum = 0, maximum = 1_000_000_000, default = 0)]
    pub offset: Option<i64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct GetFileQuery {
    /// `true`: answer the bytes instead of the metadata.
    #[serde(default)]
    pub download: bool,
}

fn file_error(err: AggregateError<WorkspaceFileError>) -> ApiError {
    match err {
        AggregateError::UserError(WorkspaceFileError::NotFound) => ApiError::NotFound,
        AggregateError::UserError(WorkspaceFileError::AlreadyExists) => {
            ApiError::Conflict("file already exists".into())
        }
        AggregateError::UserError(WorkspaceFileError::Invalid(errors)) => {
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
    command: WorkspaceFileCommand,
) -> Result<(HeaderMap, Executed<WorkspaceFile>)> {
    write::execute(state, &state.files, user, context, id, command, file_error).await
}

/// Where the caller's blob with `sha256` lives.
fn blob_path(data_dir: &Path, owner_id: Uuid, sha256: &str) -> Result<PathBuf> {
    file_blobs::blob_path(data_dir, owner_id, sha256)
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("a file's digest is not hex")))
}

/// A temporary upload file, removed unless [`TempFile::keep`] is called
/// (an error, a refused upload, or a client that leaves mid-way).
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What streaming a file part produced.
struct Received {
    temp: TempFile,
    size: u64,
    sha256: String,
    content_type: &'static str,
}

fn io_error(what: &'static str) -> impl FnOnce(std::io::Error) -> ApiError {
    move |err| ApiError::Internal(anyhow::Error::new(err).context(what))
}

fn multipart_error(err: MultipartError) -> ApiError {
    if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge
    } else {
        ApiError::BadRequest(format!("malformed multipart body: {}", err.body_text()))
    }
}

/// Writes the part chunk by chunk into a temporary file next to the blobs,
/// hashing, counting and checking the bytes as they come; stops at the first
/// byte over the limit or the first byte that cannot be right.
async fn receive(
    dir: &Path,
    mut field: Field<'_>,
    mut sniffer: Sniffer,
    max_bytes: u64,
) -> Result<Received> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(io_error("creating the workspace directory"))?;
    let temp = TempFile {
        path: dir.join(format!("{UPLOAD_PREFIX}{}", Uuid::new_v4().simple())),
        keep: false,
    };
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp.path)
        .await
        .map_err(io_error("creating an upload file"))?;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        size += chunk.len() as u64;
        if size > max_bytes {
            return Err(ApiError::PayloadTooLarge);
        }
        sniffer
            .feed(&chunk)
            .map_err(|problem| ApiError::invalid_field(FILE_FIELD, problem))?;
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(io_error("writing an upload file"))?;
    }
    if size == 0 {
        return Err(ApiError::invalid_field(FILE_FIELD, "the file is empty"));
    }
    let content_type = sniffer
        .finish()
        .map_err(|problem| ApiError::invalid_field(FILE_FIELD, problem))?;
    file.sync_all()
        .await
        .map_err(io_error("syncing an upload file"))?;
    Ok(Received {
        temp,
        size,
        sha256: hex::encode(hasher.finalize()),
        content_type,
    })
}

fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("multipart/form-data"))
}

/// Uploads one file into the caller's workspace.
///
/// Refused before any byte of the body is read: a `Content-Type` other than
/// `multipart/form-data` (415) and a `Content-Length` beyond the limit plus
/// the multipart framing (413). While streaming: more bytes than the limit
/// (413, at the first byte over), content that does not match the
/// extension (422).
#[utoipa::path(post, path = "/v1/files", tag = "files", security(("bearer" = [])),
    request_body(content = UploadFileForm, content_type = "multipart/form-data",
        description = "One part named `file`, with a file name. At most 10 MiB by default (`CHRONICLE_FILES_MAX_BYTES`); allowed extensions by default: txt, md, json, csv, log, yaml, yml, toml, rs, py, js, ts, swift, pdf, png, jpg, jpeg, gif, webp (`CHRONICLE_FILES_ALLOWED_EXTENSIONS`)."),
    responses(
        (status = 201, body = FileResponse, headers(("X-Consistency-Token" = String, description = "Send back to read this write"))),
        (status = 400, description = "BAD_REQUEST: a malformed multipart body"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the file is over the limit"),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE: the body is not multipart/form-data"),
        (status = 422, description = "VALIDATION_ERROR: no `file` part, two of them, another part, no or a too long file name, an extension not allowed, an empty file, or content that does not match the extension"),
))]
pub async fn upload_file(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    request: Request,
) -> Result<(StatusCode, HeaderMap, axum::Json<FileResponse>)> {
    let settings = &state.settings.files;
    if !is_multipart(request.headers()) {
        return Err(ApiError::UnsupportedMediaType(
            "the body must be multipart/form-data with a `file` part".into(),
        ));
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > settings.max_bytes + MULTIPART_OVERHEAD_BYTES) {
        return Err(ApiError::PayloadTooLarge);
    }
    let mut multipart = Multipart::from_request(request, &state)
        .await
        .map_err(|rejection| ApiError::UnsupportedMediaType(rejection.body_text()))?;

    let field = multipart
        .next_field()
        .await
        .map_err(multipart_error)?
        .ok_or_else(|| ApiError::invalid_field(FILE_FIELD, "a part named `file` is required"))?;
    if field.name() != Some(FILE_FIELD) {
        return Err(ApiError::invalid_field(
            FILE_FIELD,
            "the only part allowed is one named `file`",
        ));
    }
    let raw_name = field
        .file_name()
        .ok_or_else(|| ApiError::invalid_field(FILE_FIELD, "the part needs a file name"))?;
    let name = display_name(raw_name).map_err(|error| ApiError::invalid_fields(&[error]))?;
    let kind = extension(&name)
        .filter(|ext| settings.allowed_extensions.contains(ext))
        .and_then(|ext| kind_of(&ext))
        .ok_or_else(|| {
            ApiError::invalid_field(
                FILE_FIELD,
                format!(
                    "the file name must end with one of: {}",
                    settings.allowed_extensions.join(", ")
                ),
            )
        })?;
    let dir = file_blobs::workspace_dir(&state.settings.data_dir, user.id);
    let received = receive(&dir, field, Sniffer::new(kind), settings.max_bytes).await?;
    match multipart.next_field().await.map_err(multipart_error)? {
        None => {}
        Some(extra) if extra.name() == Some(FILE_FIELD) => {
            return Err(ApiError::invalid_field(FILE_FIELD, "one file per upload"))
        }
        Some(_) => {
            return Err(ApiError::invalid_field(
                FILE_FIELD,
                "the only part allowed is one named `file`",
            ))
        }
    }

    let Received {
        temp,
        size,
        sha256,
        content_type,
    } = received;
    let blob = blob_path(&state.settings.data_dir, user.id, &sha256)?;
    let lock = file_blobs::lock_blob(&state.pool, user.id, &sha256).await?;
    // Same bytes, same blob: a second upload only adds metadata.
    let existed = tokio::fs::try_exists(&blob)
        .await
        .map_err(io_error("checking for a blob"))?;
    if existed {
        drop(temp);
    } else {
        tokio::fs::rename(&temp.path, &blob)
            .await
            .map_err(io_error("storing a blob"))?;
        temp.keep();
    }
    let id = Uuid::new_v4();
    let command = WorkspaceFileCommand::Upload {
        actor_id: user.id,
        name,
        size,
        sha256,
        content_type: content_type.to_string(),
        at: now(),
    };
    let (headers, executed) = match run(&state, &user, &context, id, command).await {
        Ok(done) => done,
        Err(err) => {
            // Refused (4xx): nothing was recorded, so the new blob goes. A
            // server-side failure may have recorded the file before it broke
            // (a connection lost at commit): the blob stays, and the sweep
            // removes it within the hour if nothing references it.
            if !existed && err.status().is_client_error() {
                let _ = tokio::fs::remove_file(&blob).await;
            }
            return Err(err);
        }
    };
    // Hold the lock until the file is readable, so that a delete of another
    // file with these bytes sees this one and keeps the blob.
    state
        .consistency
        .wait("files", Some(user.id), executed.token.clone())
        .await
        .map_err(|err| ApiError::Unavailable(err.to_string()))?;
    lock.commit().await?;
    Ok((
        StatusCode::CREATED,
        headers,
        axum::Json(FileResponse::from_aggregate(id, &executed.aggregate)),
    ))
}

/// Lists the caller's files, newest first.
#[utoipa::path(get, path = "/v1/files", tag = "files", security(("bearer" = [])), params(ListFilesQuery), responses(
    (status = 200, body = Vec<FileResponse>, headers(("X-Total-Count" = i64, description = "Files of yours, all pages"))),
    (status = 422, description = "VALIDATION_ERROR: `limit` outside 1–100, a negative `offset`, or an unknown parameter"),
))]
pub async fn list_files(
    State(state): State<AppState>,
    user: AuthUser,
    token: ConsistencyHeader,
    Query(query): Query<ListFilesQuery>,
) -> Result<(HeaderMap, axum::Json<Vec<FileResponse>>)> {
    let Page { limit, offset } = Page::new(query.limit, query.offset)?;
    write::wait_for_read_model(&state, "files", &user, token).await?;
    let files: Vec<FileResponse> = sqlx::query_as(
        "select id, name, size, sha256, content_type, created_at from read.files \
         where owner_id = $1 and not is_deleted \
         order by created_at desc, id desc limit $2 offset $3",
    )
    .bind(user.id)
    .bind(limit)
    .bind(offset)
    .fetch_all(&state.pool)
    .await?;
    let total: i64 = sqlx::query_scalar(
        "select count(*) from read.files where owner_id = $1 and not is_deleted",
    )
    .bind(user.id)
    .fetch_one(&state.pool)
    .await?;
    Ok((total_count(total), axum::Json(files)))
}

/// `attachment` with the name twice: an ASCII fallback (anything else, and
/// `"` and `\`, as `_`) and the exact name percent-encoded (RFC 6266, 5987).
fn content_disposition(name: &str) -> HeaderValue {
    let fallback: String = name
        .chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '_',
        })
        .collect();
    let mut encoded = String::with_capacity(name.len() * 3);
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    HeaderValue::from_str(&format!(
        "attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// Whether `If-None-Match` names `etag` (weak or strong) or is `*`.
fn matches_etag(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim())
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

/// One file of the caller's: its metadata, or with `download=true` its bytes
/// (`ETag` is the quoted SHA-256; `If-None-Match` with it answers 304).
#[utoipa::path(get, path = "/v1/files/{id}", tag = "files", security(("bearer" = [])), params(("id" = Uuid, Path), GetFileQuery), responses(
    (status = 200, description = "The metadata, or with `download=true` the bytes with `Content-Type`, `Content-Disposition: attachment` and `ETag`",
        content(
            (FileResponse = "application/json"),
            ("text/*"), ("image/*"), ("application/pdf"), ("application/yaml"), ("application/octet-stream"),
        ),
        headers(("ETag" = String, description = "With `download=true`: the quoted SHA-256"), ("Content-Disposition" = String, description = "With `download=true`: attachment; filename=…; filename*=UTF-8''…"))),
    (status = 304, description = "With `download=true`: `If-None-Match` names the current `ETag`"),
    (status = 404, description = "NOT_FOUND: no such file of yours"),
))]
pub async fn get_file(
    State(state): State<AppState>,
    user: AuthUser,
    token: ConsistencyHeader,
    IdPath(id): IdPath,
    Query(query): Query<GetFileQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    write::wait_for_read_model(&state, "files", &user, token).await?;
    let file: Option<FileResponse> = sqlx::query_as(
        "select id, name, size, sha256, content_type, created_at from read.files \
         where id = $1 and owner_id = $2 and not is_deleted",
    )
    .bind(id)
    .bind(user.id)
    .fetch_optional(&state.pool)
    .await?;
    let file = file.ok_or(ApiError::NotFound)?;
    if !query.download {
        return Ok(axum::Json(file).into_response());
    }
    let etag = format!("\"{}\"", file.sha256);
    let etag_value = HeaderValue::from_str(&etag)
        .map_err(|_| ApiError::Internal(anyhow::anyhow!("a file's digest is not a header")))?;
    // Private, and revalidated each time with the ETag.
    let cache = HeaderValue::from_static("private, no-cache");
    if matches_etag(&headers, &etag) {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, etag_value), (header::CACHE_CONTROL, cache)],
        )
            .into_response());
    }
    let path = blob_path(&state.settings.data_dir, user.id, &file.sha256)?;
    let blob = tokio::fs::File::open(&path)
        .await
        .map_err(io_error("opening a blob"))?;
    let content_type = HeaderValue::from_str(&file.content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_LENGTH, HeaderValue::from(file.size)),
            (header::CONTENT_DISPOSITION, content_disposition(&file.name)),
            (header::ETAG, etag_value),
            (header::CACHE_CONTROL, cache),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(blob)),
    )
        .into_response())
}

/// Deletes a file. Its blob is removed once no file of yours has the same
/// bytes; the metadata's history stays in the event log.
#[utoipa::path(delete, path = "/v1/files/{id}", tag = "files", security(("bearer" = [])), params(("id" = Uuid, Path)), responses(
    (status = 204, description = "Deleted"),
    (status = 404, description = "NOT_FOUND: no such file of yours (or already deleted)"),
))]
pub async fn delete_file(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    IdPath(id): IdPath,
) -> Result<(StatusCode, HeaderMap)> {
    let command = WorkspaceFileCommand::Delete {
        actor_id: user.id,
        at: now(),
    };
    let (headers, executed) = run(&state, &user, &context, id, command).await?;
    let sha256 = executed.aggregate.sha256.clone();
    let lock = file_blobs::lock_blob(&state.pool, user.id, &sha256).await?;
    state
        .consistency
        .wait("files", Some(user.id), executed.token.clone())
        .await
        .map_err(|err| ApiError::Unavailable(err.to_string()))?;
    let referenced: bool = sqlx::query_scalar(
        "select exists (select 1 from read.files \
           where owner_id = $1 and sha256 = $2 and not is_deleted)",
    )
    .bind(user.id)
    .bind(&sha256)
    .fetch_one(&state.pool)
    .await?;
    if !referenced {
        match tokio::fs::remove_file(blob_path(&state.settings.data_dir, user.id, &sha256)?).await {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_error("removing a blob")(err)),
        }
    }
    lock.commit().await?;
    Ok((StatusCode::NO_CONTENT, headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_download_name_is_quoted_safely_and_exactly() {
        let value = content_disposition("résumé \"final\".pdf");
        assert_eq!(
            value.to_str().unwrap(),
            "attachment; filename=\"r_sum_ _final_.pdf\"; \
             filename*=UTF-8''r%C3%A9sum%C3%A9%20%22final%22.pdf"
        );
    }

    #[test]
    fn if_none_match_accepts_lists_weak_tags_and_star() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"abc\""),
        );
        assert!(matches_etag(&headers, "\"abc\""));
        assert!(!matches_etag(&headers, "\"abd\""));
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(matches_etag(&headers, "\"abd\""));
        assert!(!matches_etag(&HeaderMap::new(), "\"abc\""));
    }
}
