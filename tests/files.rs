//! `/v1/files`: uploads streamed into a per-user, content-addressed
//! workspace; downloads with their headers; limits, sniffing, isolation.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{assert_read_models_equal_rebuild, TestApp, TestUser};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};

const BOUNDARY: &str = "chronicle-test-boundary-7f3a";
const TEN_MIB: usize = 10 * 1024 * 1024;
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0";

/// A multipart body of `(field name, file name, bytes)` parts.
fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, file_name, bytes) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        let disposition = match file_name {
            Some(file_name) => {
                format!("Content-Disposition: form-data; name=\"{field}\"; filename=\"{file_name}\"\r\n")
            }
            None => format!("Content-Disposition: form-data; name=\"{field}\"\r\n"),
        };
        body.extend_from_slice(disposition.as_bytes());
        body.extend_from_slice(b"Content-Type: application/octet-stream\r\n\r\n");
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn multipart_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

async fn post_body(
    app: &TestApp,
    user: &TestUser,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    app.client
        .post(app.url("/v1/files"))
        .bearer_auth(&user.token)
        .header("content-type", multipart_type())
        .body(body)
        .send()
        .await
        .expect("request")
}

async fn upload(app: &TestApp, user: &TestUser, name: &str, bytes: &[u8]) -> reqwest::Response {
    post_body(app, user, multipart(&[("file", Some(name), bytes)])).await
}

/// Uploads and expects 201; the new file's metadata.
async fn uploaded(app: &TestApp, user: &TestUser, name: &str, bytes: &[u8]) -> Value {
    let response = upload(app, user, name, bytes).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

/// The error code of a 4xx in the API error format, after checking its status.
async fn error_code(response: reqwest::Response, status: StatusCode, what: &str) -> String {
    assert_eq!(response.status(), status, "{what}");
    let body: Value = response.json().await.unwrap();
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: not the error format: {body}"))
        .to_string()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn workspace(app: &TestApp, user: &TestUser) -> PathBuf {
    app.settings
        .data_dir
        .join("files")
        .join(user.id.to_string())
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

async fn file_events(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from events where aggregate_type = 'WorkspaceFile'")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn downloaded_bytes_equal_the_uploaded_ones_with_type_disposition_and_etag() {
    let app = TestApp::spawn().await;
    let user = app.register("ada@example.com").await;
    let text = "Grüße, world\n".repeat(1000);
    let file = uploaded(&app, &user, "Résumé v2.txt", text.as_bytes()).await;
    let sha = sha256_hex(text.as_bytes());
    assert_eq!(file["name"], "Résumé v2.txt");
    assert_eq!(file["size"], text.len());
    assert_eq!(file["sha256"], sha);
    assert_eq!(file["content_type"], "text/plain; charset=utf-8");
    let id = file["id"].as_str().unwrap();

    // Read-your-writes: the very next query sees it, no token sent.
    let response = app
        .send(Method::GET, &format!("/v1/files/{id}"), &user, None)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let metadata: Value = response.json().await.unwrap();
    assert_eq!(metadata, file);

    let response = app
        .send(
            Method::GET,
            &format!("/v1/files/{id}?download=true"),
            &user,
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(
        headers["content-disposition"],
        "attachment; filename=\"R_sum_ v2.txt\"; filename*=UTF-8''R%C3%A9sum%C3%A9%20v2.txt"
    );
    let etag = headers["etag"].to_str().unwrap().to_string();
    assert_eq!(etag, format!("\"{sha}\""));
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(response.bytes().await.unwrap(), text.as_bytes());

    let response = app
        .client
        .get(app.url(&format!("/v1/files/{id}?download=true")))
        .bearer_auth(&user.token)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(response.headers()["etag"], etag.as_str());

    let png = uploaded(&app, &user, "dot.PNG", PNG).await;
    let response = app
        .send(
            Method::GET,
            &format!("/v1/files/{}?download=true", png["id"].as_str().unwrap()),
            &user,
            None,
        )
        .await;
    assert_eq!(response.headers()["content-type"], "image/png");
    assert_eq!(response.bytes().await.unwrap(), PNG);

    // Files are not among the notifying events: the inbox holds only the signup.
    let notifications: Vec<Value> = app
        .send_json(Method::GET, "/v1/notifications", &user, None)
        .await;
    let types: Vec<&str> = notifications
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["SIGNUP"]);
    app.stop().await;
}

#[tokio::test]
async fn the_same_bytes_twice_are_one_blob_removed_when_no_file_has_them_any_more() {
    let app = TestApp::spawn().await;
    let user = app.register("ada@example.com").await;
    let bytes = b"{\"same\": true}";
    let first = uploaded(&app, &user, "a.json", bytes).await;
    let second = uploaded(&app, &user, "b.json", bytes).await;
    assert_ne!(first["id"], second["id"]);
    let blob = workspace(&app, &user).join(sha256_hex(bytes));
    assert_eq!(
        files_under(&app.settings.data_dir.join("files")),
        std::slice::from_ref(&blob)
    );

    let path = format!("/v1/files/{}", first["id"].as_str().unwrap());
    let response = app.send(Method::DELETE, &path, &user, None).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(blob.exists(), "b.json still has these bytes");
    let response = app.send(Method::GET, &path, &user, None).await;
    assert_eq!(
        error_code(response, StatusCode::NOT_FOUND, "deleted").await,
        "NOT_FOUND"
    );
    let response = app.send(Method::DELETE, &path, &user, None).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND, "deleting twice");

    let path = format!("/v1/files/{}", second["id"].as_str().unwrap());
    let response = app.send(Method::DELETE, &path, &user, None).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(!blob.exists(), "no file has these bytes any more");
    app.wait_for_projections().await;
    assert_read_models_equal_rebuild(&app.pool).await;
    let response = app
        .send(Method::GET, &format!("{path}?download=true"), &user, None)
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}

/// Resident set size and its peak, in bytes, of this process (which runs
/// the server); the peak is reset first when the kernel allows.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test]
async fn ten_mib_and_one_byte_are_refused_with_413_memory_flat_and_nothing_stored() {
    let app = TestApp::spawn().await;
    let user = app.register("ada@example.com").await;
    // Warm up the route (and the allocator) with a small upload.
    uploaded(&app, &user, "warm.txt", b"warm").await;
    let before_events = file_events(&app).await;
    let before_files = files_under(&app.settings.data_dir);

    // Reset the peak RSS to the current RSS (Linux ≥ 4.0).
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let (rss_before, _) = memory();

    // A body from a generator, 64 KiB at a time, no Content-Length: the
    // server can only count as it reads.
    let head = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.txt\"\r\n\r\n"
    );
    let tail = format!("\r\n--{BOUNDARY}--\r\n");
    let total = TEN_MIB + 1;
    let chunk = bytes::Bytes::from(vec![b'a'; 64 * 1024]);
    let mut chunks: Vec<bytes::Bytes> = vec![bytes::Bytes::from(head)];
    let mut left = total;
    while left > 0 {
        let take = left.min(chunk.len());
        chunks.push(chunk.slice(..take));
        left -= take;
    }
    chunks.push(bytes::Bytes::from(tail));
    let stream = futures::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
    let response = post_body(&app, &user, reqwest::Body::wrap_stream(stream)).await;
    assert_eq!(
        error_code(response, StatusCode::PAYLOAD_TOO_LARGE, "10 MiB + 1").await,
        "PAYLOAD_TOO_LARGE"
    );

    let (rss_after, peak) = memory();
    let grown = if reset { peak } else { rss_after }.saturating_sub(rss_before);
    assert!(
        grown < 5 * 1024 * 1024,
        "the server's memory grew by {grown} bytes for a refused 10 MiB upload"
    );
    assert_eq!(file_events(&app).await, before_events, "no event");
    assert_eq!(
        files_under(&app.settings.data_dir),
        before_files,
        "no blob, no temp file"
    );

    // Exactly the limit is accepted.
    let body = vec![b'a'; TEN_MIB];
    let file = uploaded(&app, &user, "max.txt", &body).await;
    assert_eq!(file["size"], TEN_MIB);
    app.stop().await;
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_before_the_body_is_read() {
    let app = TestApp::spawn().await;
    let user = app.register("ada@example.com").await;
    // Sends its first bytes, then nothing, ever: only an answer given
    // without reading the body can come back.
    let first = bytes::Bytes::from(format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.txt\"\r\n\r\naaaa"
    ));
    let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(first) })
        .chain(futures::stream::pending());
    let response = tokio::time::timeout(
        Duration::from_secs(20),
        app.client
            .post(app.url("/v1/files"))
            .bearer_auth(&user.token)
            .header("content-type", multipart_type())
            .header("content-length", (20 * 1024 * 1024).to_string())
            .body(reqwest::Body::wrap_stream(stream))
            .send(),
    )
    .await
    .expect("an answer without the body")
    .expect("request");
    assert_eq!(
        error_code(response, StatusCode::PAYLOAD_TOO_LARGE, "declared 20 MiB").await,
        "PAYLOAD_TOO_LARGE"
    );
    assert_eq!(file_events(&app).await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_png_holding_text_is_refused_and_nothing_is_stored() {
    let app = TestApp::spawn().await;
    let user = app.register("ada@example.com").await;
    for (name, bytes) in [
        (
            "picture.png",
            &b"I am only text pretending to be a picture"[..],
        ),
        ("doc.pdf", b"not a pdf at all"),
        ("notes.txt", PNG),
        ("data.csv", b"a,b\n\xff\xfe,c\n"),
    ] {
        let response = upload(&app, &user, name, bytes).await;
        assert_eq!(
            error_code(response, StatusCode::UNPROCESSABLE_ENTITY, name).await,
            "VALIDATION_ERROR"
        );
    }
    assert_eq!(file_events(&app).await, 0);
    assert!(files_under(&app.settings.data_dir.join("files")).is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_traversal_name_is_stored_as_its_last_part_and_nothing_lands_outside_the_workspace() {
    let app = TestApp::spawn().await;
    let user = app.register("ada@example.com").await;
    let outside = app.settings.data_dir.parent().unwrap().join("etc");
    let before_outside = files_under(&outside);
    for (name, shown) in [
        ("../../etc/passwd.txt", "passwd.txt"),
        ("..\\..\\windows\\win.txt", "win.txt"),
        ("/abs/olute.txt", "olute.txt"),
    ] {
        let file = uploaded(&app, &user, name, name.as_bytes()).await;
        assert_eq!(file["name"], shown, "{name}");
    }
    let workspace = workspace(&app, &user);
    let stored = files_under(&app.settings.data_dir.join("files"));
    assert_eq!(stored.len(), 3);
    for path in &stored {
        assert_eq!(path.parent().unwrap(), workspace, "{}", path.display());
        let leaf = path.file_name().unwrap().to_str().unwrap();
        assert!(
            leaf.len() == 64 && leaf.bytes().all(|b| b.is_ascii_hexdigit()),
            "{leaf}"
        );
    }
    assert_eq!(files_under(&outside), before_outside);
    app.stop().await;
}

#[tokio::test]
async fn another_users_file_is_not_found_to_read_download_or_delete() {
    let app = TestApp::spawn().await;
    let owner = app.register("ada@example.com").await;
    let other = app.register("bob@example.com").await;
    let file = uploaded(&app, &owner, "secret.md", b"# mine").await;
    let path = format!("/v1/files/{}", file["id"].as_str().unwrap());
    for (method, path) in [
        (Method::GET, path.clone()),
        (Method::GET, format!("{path}?download=true")),
        (Method::DELETE, path.clone()),
    ] {
        let response = app.send(method.clone(), &path, &other, None).await;
        assert_eq!(
            error_code(response, StatusCode::NOT_FOUND, &format!("{method} {path}")).await,
            "NOT_FOUND"
        );
    }
    let listed: Vec<Value> = app.send_json(Method::GET, "/v1/files", &other, None).await;
    assert!(listed.is_empty());
    let response = app.send(Method::GET, &path, &owner, None).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "still there for its owner"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_list_is_paged_newest_first_with_the_total_count() {
    let app = TestApp::spawn().await;
    let user = app.register("ada@example.com").await;
    for name in ["1.txt", "2.txt", "3.txt"] {
        uploaded(&app, &user, name, name.as_bytes()).await;
    }
    let response = app
        .send(Method::GET, "/v1/files?limit=2", &user, None)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-total-count"], "3");
    let page: Vec<Value> = response.json().await.unwrap();
    let names: Vec<&str> = page.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["3.txt", "2.txt"]);
    let response = app
        .send(Method::GET, "/v1/files?limit=2&offset=2", &user, None)
        .await;
    assert_eq!(response.headers()["x-total-count"], "3");
    let page: Vec<Value> = response.json().await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0]["name"], "1.txt");

    for query in ["limit=0", "limit=101", "offset=-1", "limit=x", "colour=red"] {
        let response = app
            .send(Method::GET, &format!("/v1/files?{query}"), &user, None)
            .await;
        assert_eq!(
            error_code(response, StatusCode::UNPROCESSABLE_ENTITY, query).await,
            "VALIDATION_ERROR"
        );
    }
    let response = app
        .send(Method::GET, "/v1/files/not-a-uuid", &user, None)
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    app.stop().await;
}

#[tokio::test]
async fn malformed_uploads_get_a_clear_4xx_in_the_error_format_and_store_nothing() {
    let app = TestApp::spawn().await;
    let user = app.register("ada@example.com").await;
    let long_name = format!("{}.txt", "n".repeat(252));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("no file part", multipart(&[("other", Some("a.txt"), b"x")])),
        ("no parts at all", multipart(&[])),
        (
            "two file parts",
            multipart(&[("file", Some("a.txt"), b"x"), ("file", Some("b.txt"), b"y")]),
        ),
        (
            "a part besides the file",
            multipart(&[("file", Some("a.txt"), b"x"), ("note", None, b"hi")]),
        ),
        ("no file name", multipart(&[("file", None, b"x")])),
        ("an empty file", multipart(&[("file", Some("a.txt"), b"")])),
        (
            "an extension not allowed",
            multipart(&[("file", Some("run.exe"), b"MZ")]),
        ),
        ("no extension", multipart(&[("file", Some("README"), b"x")])),
        (
            "a name of 256 bytes",
            multipart(&[("file", Some(&long_name), b"x")]),
        ),
        (
            "a name that is only dots",
            multipart(&[("file", Some(".."), b"x")]),
        ),
    ];
    for (what, body) in cases {
        let response = post_body(&app, &user, body).await;
        assert_eq!(
            error_code(response, StatusCode::UNPROCESSABLE_ENTITY, what).await,
            "VALIDATION_ERROR",
            "{what}"
        );
    }
    let ok_name = format!("{}.txt", "n".repeat(251));
    uploaded(&app, &user, &ok_name, b"255 bytes of name").await;

    let response = app
        .send(
            Method::POST,
            "/v1/files",
            &user,
            Some(serde_json::json!({"file": "x"})),
        )
        .await;
    assert_eq!(
        error_code(response, StatusCode::UNSUPPORTED_MEDIA_TYPE, "JSON body").await,
        "UNSUPPORTED_MEDIA_TYPE"
    );
    let response = app
        .client
        .post(app.url("/v1/files"))
        .bearer_auth(&user.token)
        .header("content-type", "multipart/form-data")
        .body("no boundary")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error());
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["code"].is_string(), "{body}");
    let response = app
        .client
        .post(app.url("/v1/files"))
        .bearer_auth(&user.token)
        .header("content-type", multipart_type())
        .body("garbage that is not multipart")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error());
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["code"].is_string(), "{body}");
    let response = app
        .client
        .post(app.url("/v1/files"))
        .header("content-type", multipart_type())
        .body(multipart(&[("file", Some("a.txt"), b"x")]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    assert_eq!(file_events(&app).await, 1, "only the valid upload");
    assert_eq!(files_under(&app.settings.data_dir.join("files")).len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn the_openapi_description_covers_the_files_routes_and_the_environment_announces_them() {
    let app = TestApp::spawn().await;
    let spec: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (path, method, statuses) in [
        ("/v1/files", "get", &["200", "401", "422", "503"][..]),
        (
            "/v1/files",
            "post",
            &["201", "400", "401", "413", "415", "422", "503"],
        ),
        (
            "/v1/files/{id}",
            "get",
            &["200", "304", "401", "404", "422", "503"],
        ),
        (
            "/v1/files/{id}",
            "delete",
            &["204", "401", "404", "422", "503"],
        ),
    ] {
        let operation = &spec["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is documented");
        let declared = operation["responses"].as_object().unwrap();
        for status in statuses {
            assert!(
                declared.contains_key(*status),
                "{method} {path} does not declare {status}"
            );
        }
        assert!(
            operation["security"].is_array(),
            "{method} {path} needs a token"
        );
    }
    let post = &spec["paths"]["/v1/files"]["post"];
    let body = &post["requestBody"]["content"]["multipart/form-data"]["schema"];
    let schema = match body["$ref"].as_str() {
        Some(reference) => &spec["components"]["schemas"][reference.rsplit('/').next().unwrap()],
        None => body,
    };
    assert_eq!(schema["properties"]["file"]["format"], "binary", "{schema}");
    assert!(schema["required"]
        .as_array()
        .unwrap()
        .contains(&Value::from("file")));
    let described = post["requestBody"]["description"].as_str().unwrap();
    assert!(
        described.contains("10 MiB") && described.contains("png"),
        "{described}"
    );
    let headers = &spec["paths"]["/v1/files"]["get"]["responses"]["200"]["headers"];
    assert!(headers["X-Total-Count"].is_object());

    let environment: Value = app
        .client
        .get(app.url("/v1/environment"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(environment["features"]["files"], true);
    app.stop().await;
}

/// One sweep of the app's data dir, as the API runs it.
async fn sweep_now(pool: &sqlx::PgPool, data_dir: &Path) -> chronicle::file_blobs::Swept {
    chronicle::file_blobs::sweep(pool, data_dir, chronicle::file_blobs::ABANDONED_UPLOAD_AGE)
        .await
        .unwrap()
}

/// Older than the sweep's `ABANDONED_UPLOAD_AGE` (an hour).
const TWO_HOURS: Duration = Duration::from_secs(2 * 3600);

/// An app whose API never sweeps by itself, so that a test's own sweep is
/// the only one.
async fn app_without_its_own_sweeps() -> TestApp {
    let mut settings = common::test_settings().await;
    settings.files.sweep_interval = None;
    TestApp::spawn_with(settings).await
}

/// Writes `bytes` at `path`, creating its directory, dated `age` ago.
fn write_aged(path: &Path, bytes: &[u8], age: Duration) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(std::time::SystemTime::now() - age)
        .unwrap();
}

#[tokio::test]
async fn the_sweep_removes_orphaned_blobs_and_abandoned_uploads_and_keeps_everything_in_use() {
    let app = app_without_its_own_sweeps().await;
    let ada = app.register("ada@example.com").await;
    let bob = app.register("bob@example.com").await;
    let live_bytes = b"kept: a live file has these bytes";
    let live = uploaded(&app, &ada, "live.txt", live_bytes).await;
    // A file deleted by a process that died before removing its blob: the
    // delete is recorded, the blob is back on disk.
    let deleted_bytes = b"a deleted file had these bytes";
    let deleted = uploaded(&app, &ada, "deleted.txt", deleted_bytes).await;
    let path = format!("/v1/files/{}", deleted["id"].as_str().unwrap());
    let response = app.send(Method::DELETE, &path, &ada, None).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let ada_dir = workspace(&app, &ada);
    let undeleted = ada_dir.join(sha256_hex(deleted_bytes));
    write_aged(&undeleted, deleted_bytes, TWO_HOURS);
    // A blob stored by an upload that died before recording its file.
    let unrecorded = ada_dir.join(sha256_hex(b"never recorded"));
    write_aged(&unrecorded, b"never recorded", TWO_HOURS);
    // Ada's bytes in Bob's workspace: Bob has no file with them.
    let not_bobs = workspace(&app, &bob).join(sha256_hex(live_bytes));
    write_aged(&not_bobs, live_bytes, TWO_HOURS);
    // An unrecorded blob stored a minute ago: perhaps an upload still running.
    let young = ada_dir.join(sha256_hex(b"young"));
    write_aged(&young, b"young", Duration::from_secs(60));
    // Upload files: one cut off two hours ago, one that may still be running.
    let abandoned = ada_dir.join(".upload-abandoned");
    write_aged(&abandoned, b"partial", TWO_HOURS);
    let running = ada_dir.join(".upload-running");
    write_aged(&running, b"partial", Duration::from_secs(60));
    // Whatever the server did not name is not its to remove.
    let files = app.settings.data_dir.join("files");
    let foreign = [
        ada_dir.join("notes.txt"),
        files.join("not-a-user").join(sha256_hex(b"x")),
        // A UUID, but not as the server spells one.
        files
            .join(ada.id.to_string().to_uppercase())
            .join(sha256_hex(b"x")),
        // A file where a workspace would be.
        files.join(uuid::Uuid::new_v4().to_string()),
    ];
    for path in &foreign {
        write_aged(path, b"x", TWO_HOURS);
    }

    let swept = sweep_now(&app.pool, &app.settings.data_dir).await;
    assert_eq!(
        (swept.blobs, swept.uploads),
        (3, 1),
        "three orphaned blobs and one abandoned upload"
    );
    let mut left = files_under(&app.settings.data_dir.join("files"));
    left.sort();
    let mut expected = vec![ada_dir.join(sha256_hex(live_bytes)), running, young];
    expected.extend(foreign);
    expected.sort();
    assert_eq!(left, expected);
    let response = app
        .send(
            Method::GET,
            &format!("/v1/files/{}?download=true", live["id"].as_str().unwrap()),
            &ada,
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap().as_ref(), live_bytes);

    let again = sweep_now(&app.pool, &app.settings.data_dir).await;
    assert_eq!(
        (again.blobs, again.uploads),
        (0, 0),
        "nothing left to sweep"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_blob_recorded_while_the_sweep_waits_for_its_lock_is_kept() {
    let app = app_without_its_own_sweeps().await;
    let ada = app.register("ada@example.com").await;
    let bytes = b"stored, then recorded while the sweep waited";
    let digest = sha256_hex(bytes);
    let blob = workspace(&app, &ada).join(&digest);
    write_aged(&blob, bytes, TWO_HOURS);

    // Stand in for an upload between storing the blob and recording it: it
    // holds the blob's lock. The sweep finds the blob unrecorded and waits.
    let upload = chronicle::file_blobs::lock_blob(&app.pool, ada.id, &digest)
        .await
        .unwrap();
    let sweep = tokio::spawn({
        let pool = app.pool.clone();
        let data_dir = app.settings.data_dir.clone();
        async move { sweep_now(&pool, &data_dir).await }
    });
    common::eventually(
        Duration::from_secs(10),
        "the sweep waiting for the lock",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "select count(*) from pg_locks where locktype = 'advisory' and not granted \
               and database = (select oid from pg_database where datname = current_database())",
            )
            .fetch_one(&app.pool)
            .await
            .unwrap();
            (waiting == 1).then_some(())
        },
    )
    .await;
    // The upload records its file (as the command would), then lets go.
    let metadata: Value = sqlx::query_scalar("select metadata from events limit 1")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let payload = serde_json::json!({"FileUploaded": {
        "owner_id": ada.id, "name": "late.txt", "size": bytes.len(), "sha256": digest,
        "content_type": "text/plain; charset=utf-8", "uploaded_at": "2026-12-07T04:00:00Z",
    }});
    sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
           payload, metadata) values ('WorkspaceFile', $1, 1, 'FileUploaded', '1.0', $2, $3)",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(payload)
    .bind(metadata)
    .execute(&app.pool)
    .await
    .unwrap();
    upload.commit().await.unwrap();

    let swept = sweep.await.unwrap();
    assert_eq!(swept.blobs, 0, "checked again under the lock");
    assert!(blob.exists(), "the recorded file's blob is kept");
    app.stop().await;
}

#[tokio::test]
async fn the_api_sweeps_on_its_own_every_interval() {
    let mut settings = common::test_settings().await;
    settings.files.sweep_interval = Some(Duration::from_millis(50));
    let app = TestApp::spawn_with(settings).await;
    let ada = app.register("ada@example.com").await;
    let orphan = workspace(&app, &ada).join(sha256_hex(b"orphan"));
    write_aged(&orphan, b"orphan", TWO_HOURS);
    common::eventually(Duration::from_secs(10), "the orphan swept", || async {
        (!orphan.exists()).then_some(())
    })
    .await;
    app.stop().await;
}
