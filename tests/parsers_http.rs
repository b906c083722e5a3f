//! Proptest-driven fuzzing of the parsers of untrusted input through the
//! running application (docs/testing.md, "Parsers of untrusted input"): the
//! unit-level properties live next to each parser (`fuzz` modules); these
//! check, with a few cases each, that what reaches the server over HTTP
//! (credential headers, `?access_token=`, JSON and multipart bodies under
//! any content type) is answered with a 4xx in the API's error format, or
//! accepted, and never a 5xx. `PROPTEST_CASES` sets the number of cases.

mod common;

use common::{TestApp, TestUser};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::Value;

const BOUNDARY: &str = "fuzz-boundary-91c2";
const SECRET: &[u8] = b"SECRET-GPS";

fn cases(default: usize) -> usize {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default)
}

/// `cases` values of `strategy` (no shrinking: a failure prints the input).
fn samples<S: Strategy>(strategy: S, cases: usize) -> Vec<S::Value> {
    let mut runner = TestRunner::default();
    (0..cases)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect()
}

/// A refusal: a 4xx with `{"error": {"code", "message"}}`.
async fn check_answer(response: reqwest::Response, what: &str) -> (StatusCode, Value) {
    let status = response.status();
    let body = response.bytes().await.unwrap();
    assert!(!status.is_server_error(), "{what}: {status} {body:?}");
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if status.is_client_error() {
        assert!(body["error"]["code"].is_string(), "{what}: {status} {body}");
        assert!(
            body["error"]["message"].is_string(),
            "{what}: {status} {body}"
        );
    }
    (status, body)
}

fn header_bytes() -> impl Strategy<Value = Option<Vec<u8>>> {
    proptest::option::of(prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        "(Bearer|bearer|Basic|)[ \t]{0,2}(ck_|eyJ)?[!-~ ]{0,60}".prop_map(String::into_bytes),
    ])
}

#[tokio::test]
async fn any_credentials_are_answered_401_and_never_a_5xx() {
    let app = TestApp::spawn().await;
    let user = app.register("fuzz-credentials@example.com").await;
    let strategy = (
        header_bytes(),
        header_bytes(),
        proptest::option::of(any::<String>()),
    );
    for (authorization, api_key, access_token) in samples(strategy, cases(24)) {
        let what = format!("{authorization:?} {api_key:?} {access_token:?}");
        let mut tasks = app.client.get(app.url("/v1/tasks"));
        let mut ws = app.client.get(app.url("/v1/ws"));
        for (name, value) in [("authorization", &authorization), ("x-api-key", &api_key)] {
            if let Some(value) = value
                .as_deref()
                .and_then(|v| HeaderValue::from_bytes(v).ok())
            {
                tasks = tasks.header(HeaderName::from_static(name), value.clone());
                ws = ws.header(HeaderName::from_static(name), value);
            }
        }
        if let Some(token) = &access_token {
            ws = ws.query(&[("access_token", token)]);
        }
        for request in [tasks, ws] {
            let (status, body) = check_answer(request.send().await.unwrap(), &what).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        }
    }
    // The real token still works after all that.
    let response = app.send(Method::GET, "/v1/tasks", &user, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    app.stop().await;
}

/// A JPEG whose EXIF, comment and trailer say where it was taken.
fn jpeg_with_metadata() -> Vec<u8> {
    let segment = |marker: u8, payload: &[u8]| {
        let mut out = vec![0xFF, marker];
        out.extend(((payload.len() + 2) as u16).to_be_bytes());
        out.extend(payload);
        out
    };
    let mut jpeg = vec![0xFF, 0xD8];
    jpeg.extend(segment(0xE0, b"JFIF\0\x01\x01"));
    jpeg.extend(segment(0xE1, &[b"Exif\0\0", SECRET].concat()));
    jpeg.extend(segment(0xDA, b"\x01\x01\x00\x00\x3f\x00"));
    jpeg.extend(b"\x12\xff\x00\x34");
    jpeg.extend(segment(0xFE, SECRET));
    jpeg.extend(segment(0xDA, b"\x01\x01\x00\x00\x3f\x00"));
    jpeg.extend(b"\x56\xff\xd9");
    jpeg.extend(SECRET);
    jpeg
}

fn part_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<String>().prop_map(String::into_bytes),
        Just(jpeg_with_metadata()),
        (Just(jpeg_with_metadata()), any::<usize>())
            .prop_map(|(jpeg, cut)| jpeg[..cut % jpeg.len()].to_vec()),
        Just(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0".to_vec()),
        Just(b"RIFF\x04\0\0\0WEBP".to_vec()),
    ]
}

/// A multipart body: well-formed parts (any names, file names, bytes), cut
/// anywhere or not, or any bytes at all.
fn multipart_body() -> impl Strategy<Value = Vec<u8>> {
    let part = (
        prop_oneof![
            Just("photo".to_string()),
            Just("file".to_string()),
            "\\PC{0,8}"
        ],
        proptest::option::of(prop_oneof![
            "[a-z]{1,8}\\.(txt|png|jpg|json|pdf|exe)",
            "\\PC{0,12}"
        ]),
        part_bytes(),
    );
    let form = (
        proptest::collection::vec(part, 0..3),
        proptest::option::of(any::<usize>()),
    )
        .prop_map(|(parts, cut)| {
            let mut body = Vec::new();
            for (name, file_name, bytes) in parts {
                body.extend(
                    format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"")
                        .bytes(),
                );
                if let Some(file_name) = file_name {
                    body.extend(format!("; filename=\"{file_name}\"").bytes());
                }
                body.extend(b"\r\nContent-Type: application/octet-stream\r\n\r\n");
                body.extend(bytes);
                body.extend(b"\r\n");
            }
            body.extend(format!("--{BOUNDARY}--\r\n").bytes());
            if let Some(cut) = cut {
                body.truncate(cut % (body.len() + 1));
            }
            body
        });
    prop_oneof![3 => form, 1 => proptest::collection::vec(any::<u8>(), 0..128)]
}

fn upload_content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        4 => Just(Some(format!("multipart/form-data; boundary={BOUNDARY}"))),
        1 => Just(Some("multipart/form-data".to_string())),
        1 => Just(Some("multipart/form-data; boundary=other".to_string())),
        1 => Just(Some("multipart/form-data; boundary=\"\"".to_string())),
        1 => Just(Some("application/json".to_string())),
        1 => Just(None),
        1 => "[ -~]{0,40}".prop_map(Some),
    ]
}

fn json_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        "[ \\[\\]{}:,\"a-z0-9\\\\.eE+-]{0,64}".prop_map(String::into_bytes),
        (0usize..400).prop_map(|depth| format!(
            "{{\"title\":{}1{}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        )
        .into_bytes()),
        any::<String>()
            .prop_map(|title| serde_json::to_vec(&serde_json::json!({"title": title})).unwrap()),
        Just(b"{\"title\":\"a\\u0000b\"}".to_vec()),
    ]
}

async fn post(
    app: &TestApp,
    user: &TestUser,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url(path))
        .bearer_auth(&user.token)
        .body(body);
    if let Some(content_type) = content_type.and_then(|v| HeaderValue::from_str(v).ok()) {
        request = request.header("content-type", content_type);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn any_body_under_any_content_type_is_a_4xx_in_the_error_format_or_accepted_never_a_5xx() {
    let app = TestApp::spawn().await;
    let user = app.register("fuzz-bodies@example.com").await;
    // A well-formed photo with metadata everywhere first, so that the
    // accepted branch is always taken at least once.
    let mut photo = format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"a.jpg\"\r\n\r\n").into_bytes();
    photo.extend(jpeg_with_metadata());
    photo.extend(format!("\r\n--{BOUNDARY}--\r\n").bytes());
    let multipart = format!("multipart/form-data; boundary={BOUNDARY}");
    let response = post(
        &app,
        &user,
        "/v1/user/profile/photo",
        Some(&multipart),
        photo,
    )
    .await;
    assert!(response.status().is_success(), "{}", response.status());
    let stored = app
        .send(Method::GET, "/v1/user/profile/photo", &user, None)
        .await;
    let stored = stored.bytes().await.unwrap();
    assert!(
        stored.starts_with(b"\xff\xd8\xff") && !stored.windows(SECRET.len()).any(|w| w == SECRET)
    );
    let uploads = (upload_content_type(), multipart_body());
    for (content_type, body) in samples(uploads, cases(48)) {
        let what = format!("{content_type:?} {:?}", String::from_utf8_lossy(&body));
        for path in ["/v1/user/profile/photo", "/v1/files"] {
            let response = post(&app, &user, path, content_type.as_deref(), body.clone()).await;
            let (status, _) = check_answer(response, &format!("{path} {what}")).await;
            if path.ends_with("photo") && status.is_success() {
                let photo = app
                    .send(Method::GET, "/v1/user/profile/photo", &user, None)
                    .await;
                let photo = photo.bytes().await.unwrap();
                assert!(
                    !photo.windows(SECRET.len()).any(|w| w == SECRET),
                    "{what}: metadata kept"
                );
            }
        }
    }
    let json = (
        prop_oneof![
            3 => Just(Some("application/json".to_string())),
            1 => Just(None),
            1 => "[ -~]{0,30}".prop_map(Some),
        ],
        json_body(),
    );
    for (content_type, body) in samples(json, cases(48)) {
        let what = format!("{content_type:?} {:?}", String::from_utf8_lossy(&body));
        let response = post(&app, &user, "/v1/tasks", content_type.as_deref(), body).await;
        check_answer(response, &what).await;
    }
    app.stop().await;
}
