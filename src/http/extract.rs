//! Extractors whose rejections come out in the API's error format, plus the
//! caller's identity and the metadata every command records.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRef, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use uuid::Uuid;

use crate::consistency::{ConsistencyToken, NotAToken};
use crate::http::error::ApiError;
use crate::http::identity::Identity;
use crate::http::request_id::RequestId;
use crate::state::AppState;

/// `axum::Json` with our error format: 415 without a JSON content type, 400
/// for malformed JSON, 422 for a body that is JSON but not an object (serde
/// would otherwise read `["title"]` into a struct field by field), for wrong
/// types, missing or unknown fields, 413 over the body limit.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json_content_type(request.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "expected Content-Type: application/json".into(),
            ));
        }
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge
                } else {
                    ApiError::BadRequest(rejection.body_text())
                }
            })?;
        refuse_nul_escapes(&bytes)?;
        let is_object = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        if !is_object && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok() {
            return Err(ApiError::Validation {
                message: "the body must be a JSON object".into(),
                details: Vec::new(),
            });
        }
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// `application/json` or any `application/*+json`, parameters ignored.
fn is_json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(content_type) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.split_once('/') {
        Some(("application", subtype)) => subtype == "json" || subtype.ends_with("+json"),
        _ => false,
    }
}

/// A JSON body that may be left out: no body (or only whitespace) is
/// `T::default()`; a body sent without a JSON `Content-Type` is a 415, one
/// that is not JSON a 400, one that is not an object or has the wrong
/// fields a 422.
pub fn optional_json<T: DeserializeOwned + Default>(
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    if !is_json_content_type(headers) {
        return Err(ApiError::UnsupportedMediaType(
            "expected Content-Type: application/json".into(),
        ));
    }
    refuse_nul_escapes(body)?;
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|err| ApiError::BadRequest(format!("malformed JSON: {err}")))?;
    if !value.is_object() {
        return Err(ApiError::Validation {
            message: "the body must be a JSON object".into(),
            details: Vec::new(),
        });
    }
    serde_json::from_value(value).map_err(|err| ApiError::Validation {
        message: format!("invalid body: {err}"),
        details: Vec::new(),
    })
}

/// Postgres stores neither text nor `jsonb` with U+0000 in it, so a string
/// holding one could never be recorded: it is refused at the door (422)
/// instead of failing in the event store. JSON can carry it only as the
/// escape `\u0000` (raw control characters are malformed JSON); an escape is
/// one whose backslash is not itself escaped, i.e. preceded by an even run of
/// backslashes.
fn refuse_nul_escapes(body: &[u8]) -> Result<(), ApiError> {
    const ESCAPE: &[u8] = b"\\u0000";
    let found = body.windows(ESCAPE.len()).enumerate().any(|(at, window)| {
        window == ESCAPE
            && body[..at]
                .iter()
                .rev()
                .take_while(|&&byte| byte == b'\\')
                .count()
                % 2
                == 0
    });
    if found {
        return Err(ApiError::Validation {
            message: "strings must not contain U+0000 (NUL)".into(),
            details: Vec::new(),
        });
    }
    Ok(())
}

pub fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::UnsupportedMediaType("expected Content-Type: application/json".into())
        }
        JsonRejection::JsonSyntaxError(err) => {
            ApiError::BadRequest(format!("malformed JSON: {}", err.body_text()))
        }
        JsonRejection::JsonDataError(err) => ApiError::Validation {
            message: err.body_text(),
            details: Vec::new(),
        },
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        other => ApiError::BadRequest(other.body_text()),
    }
}

/// `axum::extract::Query` whose rejection is a 422.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        // `%00` decodes to U+0000, which no text column can hold (see
        // `refuse_nul_escapes`).
        if parts.uri.query().is_some_and(|query| query.contains("%00")) {
            return Err(ApiError::Validation {
                message: "query parameters must not contain U+0000 (NUL)".into(),
                details: Vec::new(),
            });
        }
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|rejection: QueryRejection| ApiError::Validation {
                message: rejection.body_text(),
                details: Vec::new(),
            })
    }
}

/// A resource id in the path; anything but a UUID is a 422.
pub struct IdPath(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<Uuid>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(id)| Self(id))
            .map_err(|_: PathRejection| ApiError::invalid_field("id", "must be a UUID"))
    }
}

/// The authenticated caller, resolved by [`crate::http::identity`].
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: Uuid,
    pub roles: Vec<String>,
    /// The login session of an access token; `None` for an API key.
    pub auth_session_id: Option<Uuid>,
}

impl<S: Send + Sync> FromRequestParts<S> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        match parts.extensions.get::<Identity>() {
            Some(Identity::User(user)) => Ok(user.clone()),
            Some(Identity::Invalid) => Err(ApiError::InvalidToken),
            Some(Identity::Unknown) => Err(ApiError::Unavailable(
                "cannot check credentials right now".into(),
            )),
            Some(Identity::Anonymous) | None => Err(ApiError::AuthRequired),
        }
    }
}

impl AuthUser {
    /// 403 unless the caller holds one of `roles`.
    pub fn require_any_role(&self, roles: &[&str]) -> Result<(), ApiError> {
        if self.roles.iter().any(|held| roles.contains(&held.as_str())) {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

/// Who asked, from where, as part of which request: the metadata of every event.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    pub correlation_id: String,
    pub causation_id: String,
    pub client_ip: String,
    pub user_agent: String,
}

impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let header_text = |name: &str, max: usize| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.chars().take(max).collect::<String>())
                .filter(|v| !v.is_empty())
        };
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map(|id| id.0.clone())
            .unwrap_or_else(|| Uuid::new_v4().to_string());
        let client_ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_string())
            .unwrap_or_default();
        Ok(Self {
            correlation_id: header_text("x-correlation-id", 128)
                .unwrap_or_else(|| request_id.clone()),
            causation_id: header_text("x-causation-id", 128).unwrap_or_else(|| request_id.clone()),
            user_agent: header_text("user-agent", 512).unwrap_or_default(),
            client_ip,
            request_id,
        })
    }
}

impl RequestContext {
    /// The event metadata for a command by `actor` (or by an anonymous caller,
    /// who becomes the actor once identified, e.g. at registration).
    pub fn metadata(&self, actor_id: Uuid, actor_roles: &[String]) -> HashMap<String, String> {
        HashMap::from([
            ("actor_id".to_string(), actor_id.to_string()),
            ("actor_roles".to_string(), actor_roles.join(",")),
            ("request_id".to_string(), self.request_id.clone()),
            ("correlation_id".to_string(), self.correlation_id.clone()),
            ("causation_id".to_string(), self.causation_id.clone()),
            ("client_ip".to_string(), self.client_ip.clone()),
            ("user_agent".to_string(), self.user_agent.clone()),
            (
                "occurred_at".to_string(),
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            ),
        ])
    }
}

/// `X-Consistency-Token` sent back by a client: `Some` only for a token issued
/// to this caller ([`crate::consistency::Consistency::accept`]). One issued to
/// someone else, or forged, is treated as absent, never as an error: a
/// different answer would tell the caller something about the token's
/// aggregate. Text that is not a token at all is a 422.
pub struct ConsistencyHeader(pub Option<ConsistencyToken>);

pub const CONSISTENCY_HEADER: &str = "x-consistency-token";

impl<S: Send + Sync> FromRequestParts<S> for ConsistencyHeader
where
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(CONSISTENCY_HEADER) else {
            return Ok(Self(None));
        };
        let caller = match parts.extensions.get::<Identity>() {
            Some(Identity::User(user)) => Some(user.id),
            _ => None,
        };
        let state = AppState::from_ref(state);
        value
            .to_str()
            .map_err(|_| NotAToken)
            .and_then(|raw| state.consistency.accept(caller, raw))
            .map(Self)
            .map_err(|err| ApiError::invalid_field(CONSISTENCY_HEADER, err.to_string()))
    }
}

/// An optional field that may be absent but not `null` (the document
/// declares it non-nullable), with `#[serde(default)]`.
pub fn not_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// An optional integer field that also takes a number with a zero fraction
/// (`111.0`): JSON Schema counts it as an integer, and so do clients that
/// write every number as a float.
pub fn whole_number<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::de::Error;
    let Some(number) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    let whole = match (number.as_i64(), number.as_f64()) {
        (Some(value), _) => Some(value),
        (None, Some(value)) if value.fract() == 0.0 && value.abs() < 9.0e15 => Some(value as i64),
        _ => None,
    };
    whole
        .and_then(|value| T::try_from(value).ok())
        .map(Some)
        .ok_or_else(|| {
            D::Error::custom(format!(
                "invalid value: {number}, expected a whole number in range"
            ))
        })
}

/// Tells "absent" (outer `None`, with `#[serde(default)]`) from "null" (`Some(None)`).
pub fn some_or_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Proptest-driven fuzzing of the JSON body extractors (docs/testing.md,
/// "Parsers of untrusted input"), and the reader of the corpora in
/// `tests/corpus/` that the other parsers' fuzz modules share.
#[cfg(test)]
pub(crate) mod fuzz {
    use axum::body::Body;
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    /// The files of `tests/corpus/<target>/`, by name, each with its bytes;
    /// a name starts with `ok-` or `err-` for what the parser must do.
    pub(crate) fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/corpus")
            .join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
            .map(|entry| {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&path).unwrap())
            })
            .collect();
        files.sort();
        assert!(files.iter().any(|(name, _)| name.starts_with("ok-")));
        assert!(files.iter().any(|(name, _)| name.starts_with("err-")));
        for (name, _) in &files {
            assert!(
                name.starts_with("ok-") || name.starts_with("err-"),
                "{target}/{name} must be named ok-… or err-…"
            );
        }
        files
    }

    /// Cases per property: `PROPTEST_CASES`, else `default`.
    pub(crate) fn config(default: u32) -> ProptestConfig {
        let cases = std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|cases| cases.parse().ok())
            .unwrap_or(default);
        ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// A body a command might take: the shapes every handler's body has.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Probe {
        title: Option<String>,
        #[serde(default, deserialize_with = "whole_number")]
        limit: Option<u32>,
        tags: Option<Vec<String>>,
        extra: Option<Value>,
    }

    fn is_client_error(err: &ApiError) -> bool {
        [400, 413, 415, 422].contains(&err.status().as_u16())
    }

    fn json_headers() -> axum::http::HeaderMap {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        );
        headers
    }

    fn extract(content_type: Option<&[u8]>, body: Vec<u8>) -> Result<Probe, ApiError> {
        let mut request = Request::builder().method("POST").uri("/");
        if let Some(value) = content_type.and_then(|v| axum::http::HeaderValue::from_bytes(v).ok())
        {
            request = request.header(axum::http::header::CONTENT_TYPE, value);
        }
        let request = request.body(Body::from(body)).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime
            .block_on(Json::<Probe>::from_request(request, &()))
            .map(|Json(probe)| probe)
    }

    /// JSON text nested `depth` deep in arrays and objects, alternating.
    fn nested(depth: usize) -> String {
        let mut text = String::new();
        for level in 0..depth {
            text.push_str(if level % 2 == 0 { "{\"extra\":" } else { "[" });
        }
        text.push('1');
        for level in (0..depth).rev() {
            text.push(if level % 2 == 0 { '}' } else { ']' });
        }
        text
    }

    /// Bytes that look like JSON bodies more often than uniform bytes do.
    fn bodyish() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            "[ \\[\\]{}:,\"a-z0-9\\\\.eE+-]{0,64}".prop_map(String::into_bytes),
            any::<String>().prop_map(|text| serde_json::to_vec(&Value::String(text)).unwrap()),
            (0usize..300).prop_map(|depth| nested(depth).into_bytes()),
            json_value().prop_map(|value| serde_json::to_vec(&value).unwrap()),
            json_value().prop_map(|value| serde_json::to_vec(
                &serde_json::json!({"title": value, "limit": value})
            )
            .unwrap()),
            Just(b"{\"title\": \"a\\u0000b\"}".to_vec()),
        ]
    }

    pub(crate) fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z]{0,6}", inner, 0..4)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    fn content_type() -> impl Strategy<Value = Option<Vec<u8>>> {
        prop_oneof![
            Just(Some(b"application/json".to_vec())),
            Just(Some(b"Application/JSON; charset=utf-8".to_vec())),
            Just(Some(b"application/problem+json".to_vec())),
            Just(Some(b"text/plain".to_vec())),
            Just(Some(b"multipart/form-data; boundary=x".to_vec())),
            Just(None),
            proptest::collection::vec(any::<u8>(), 0..32).prop_map(Some),
            "[a-z/+;= ]{0,24}".prop_map(|text| Some(text.into_bytes())),
        ]
    }

    proptest! {
        #![proptest_config(config(256))]

        /// Any body under any content type: a value, or a 4xx in our format.
        #[test]
        fn any_body_under_any_content_type_is_read_or_refused_with_a_4xx(
            content_type in content_type(),
            body in bodyish(),
        ) {
            if let Err(err) = extract(content_type.as_deref(), body) {
                prop_assert!(is_client_error(&err), "{err:?} answers {}", err.status());
            }
        }

        /// `optional_json`: any bytes, a value or a 400/422, never a panic;
        /// whitespace alone is the default.
        #[test]
        fn an_optional_body_is_read_or_refused_with_a_4xx(body in bodyish()) {
            let read = optional_json::<Probe>(&json_headers(), &body);
            if body.iter().all(u8::is_ascii_whitespace) {
                prop_assert!(read.is_ok());
            }
            if let Err(err) = read {
                prop_assert!(is_client_error(&err), "{err:?}");
            }
        }

        /// A string is refused for NUL exactly when it holds U+0000, however
        /// the producer escaped it (minimal, or every character `\uXXXX`).
        #[test]
        fn a_string_is_refused_for_nul_exactly_when_it_holds_one(
            text in "(\\PC|\\x{0}|\\\\|\\\\u0000|u|0|\")*",
        ) {
            let minimal = serde_json::to_vec(&serde_json::json!({"title": text})).unwrap();
            let mut escaped = String::from("{\"title\":\"");
            for unit in text.encode_utf16() {
                escaped.push_str(&format!("\\u{unit:04x}"));
            }
            escaped.push_str("\"}");
            let holds_nul = text.contains('\0');
            for body in [minimal, escaped.into_bytes()] {
                prop_assert_eq!(refuse_nul_escapes(&body).is_err(), holds_nul);
                let read = extract(Some(b"application/json"), body);
                prop_assert_eq!(read.is_err(), holds_nul);
                if let Ok(probe) = read {
                    prop_assert_eq!(probe.title.as_deref(), Some(text.as_str()));
                }
            }
        }
    }

    #[test]
    fn nesting_far_past_the_parsers_limit_is_a_4xx_not_a_stack_overflow() {
        for depth in [127, 128, 129, 1_000, 100_000] {
            for body in [nested(depth), "[".repeat(depth), "{\"a\":".repeat(depth)] {
                let past_the_limit = depth > 128;
                for read in [
                    extract(Some(b"application/json"), body.clone().into_bytes()),
                    optional_json::<Probe>(&json_headers(), body.as_bytes()),
                ] {
                    match read {
                        Ok(_) => assert!(!past_the_limit, "depth {depth} was read"),
                        Err(err) => assert!(is_client_error(&err), "depth {depth}: {err:?}"),
                    }
                }
            }
        }
    }

    /// `tests/corpus/json_body/`: `ok-*` read as a body, `err-*` are a 4xx.
    #[test]
    fn the_corpus_of_json_bodies_is_read_or_refused_as_named() {
        for (name, body) in corpus("json_body") {
            let read = extract(Some(b"application/json"), body);
            match &read {
                Ok(_) => assert!(name.starts_with("ok-"), "{name} was read"),
                Err(err) => {
                    assert!(name.starts_with("err-"), "{name} refused: {err:?}");
                    assert!(is_client_error(err), "{name}: {err:?}");
                }
            }
        }
    }
}
