//! `POST /v1/chat/completions`: OpenAI's request and answer shapes, mapped to
//! our [`ChatRequest`] and asked of the configured upstream.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use std::sync::Arc;

use super::stream::{sse_relay, stream_completion, stream_permit, SseRelay};
use crate::http::chat_sessions::exchange::Exchange;
use crate::http::chat_sessions::load_own_session;
use crate::http::error::{ApiError, Result};
use crate::http::extract::{AuthUser, Json, RequestContext};
use crate::http::request_id::current_request_id;
use crate::llm::{ChatMessage, ChatRequest, Completion, Provider, Role, Usage};
use crate::state::AppState;

/// OpenAI's request. Fields we do not use are ignored, as SDKs send extras.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// A model id from `/v1/models` (another one is a 404).
    #[schema(min_length = 1)]
    pub model: String,
    /// At least one.
    #[schema(min_items = 1)]
    pub messages: Vec<RequestMessage>,
    /// Answer as SSE `chat.completion.chunk` events ending `data: [DONE]`.
    #[serde(default)]
    pub stream: Option<bool>,
    /// At least 1.
    #[serde(default, deserialize_with = "crate::http::extract::whole_number")]
    #[schema(minimum = 1, maximum = 4294967295_u32)]
    pub max_tokens: Option<u32>,
    /// OpenAI's newer name for `max_tokens`.
    #[serde(default, deserialize_with = "crate::http::extract::whole_number")]
    #[schema(minimum = 1, maximum = 4294967295_u32)]
    pub max_completion_tokens: Option<u32>,
    /// 0–2.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f32>,
    /// 0–1.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1)]
    pub top_p: Option<f32>,
    /// A string or up to 4 strings.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub stop: Option<Value>,
    /// Only 1 is supported.
    #[serde(default, deserialize_with = "crate::http::extract::whole_number")]
    #[schema(minimum = 1, maximum = 1)]
    pub n: Option<u32>,
    /// One of your chat sessions: the last message (the user's) and the
    /// reply are recorded in it (404 for a session that is not yours).
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub session_id: Option<Value>,
}

/// A message: `content` is a string or an array of `{"type":"text","text"}` parts.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RequestMessage {
    /// `system`, `developer` (taken as `system`), `user` or `assistant`.
    #[schema(schema_with = message_role_schema)]
    pub role: String,
    #[schema(value_type = Object)]
    pub content: Value,
}

fn message_role_schema() -> utoipa::openapi::schema::Object {
    crate::http::schema::string_enum(&["system", "developer", "user", "assistant"])
}

/// The non-streamed answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    /// Always `chat.completion`.
    pub object: &'static str,
    pub created: i64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: Usage,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CompletionChoice {
    pub index: u32,
    pub message: ChatMessage,
    /// `stop`, `length`, `tool_calls` or `content_filter`.
    pub finish_reason: String,
}

/// Asks the model; with `stream: true` the reply comes as SSE.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "chat", security(("bearer" = [])),
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, body = ChatCompletion, description = "The reply; with `stream: true` a `text/event-stream` of `chat.completion.chunk` objects ending `data: [DONE]`, or `event: error` if the upstream fails mid-stream"),
        (status = 400, description = "Malformed JSON"),
        (status = 401, description = "No or invalid credentials"),
        (status = 413, description = "Body too large"),
        (status = 415, description = "Not JSON"),
        (status = 404, description = "`model` is not one of the configured models (OpenAI's `model_not_found`), or `session_id` names no session of yours"),
        (status = 409, description = "The session changed concurrently"),
        (status = 422, description = "Invalid request, or a `session_id` that is not a UUID or whose exchange does not end with a user message"),
        (status = 429, description = "Rate limited, too many streams open for this user, or this minute's upstream tokens spent"),
        (status = 502, description = "The upstream failed (`UPSTREAM_ERROR`)"),
        (status = 503, description = "No upstream configured for this model (`UPSTREAM_NOT_CONFIGURED`)"),
    ))]
pub async fn create_chat_completion(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    Json(body): Json<ChatCompletionRequest>,
) -> Result<Response> {
    let streamed = body.stream.unwrap_or(false);
    let session_id = match &body.session_id {
        None | Some(Value::Null) => None,
        Some(value) => Some(
            value
                .as_str()
                .and_then(|text| Uuid::parse_str(text).ok())
                .ok_or_else(|| ApiError::invalid_field("session_id", "must be a UUID"))?,
        ),
    };
    let request = chat_request(body)?;
    state.llm.ensure_configured()?;
    super::check_token_budget(&state, &user)?;
    let (provider, upstream_model) = state.llm.resolve(&request.model)?;
    let id = format!("chatcmpl-{}", Uuid::new_v4().simple());
    let created = chrono::Utc::now().timestamp();
    if let Some(session_id) = session_id {
        let loaded = load_own_session(&state, &user, session_id).await?;
        let upstream_model = upstream_model.to_string();
        let exchange = Exchange::new(
            state.clone(),
            user,
            context,
            session_id,
            request.model.clone(),
            loaded,
        );
        return in_session(
            exchange,
            provider,
            &upstream_model,
            request,
            streamed,
            id,
            created,
        )
        .await;
    }
    if streamed {
        return stream_completion(
            &state,
            &user,
            provider,
            upstream_model,
            request,
            id,
            created,
        )
        .await;
    }
    let completion = provider.complete(upstream_model, &request).await?;
    state
        .llm
        .tokens
        .spend(user.id, u64::from(completion.usage.total_tokens));
    Ok(completion_response(id, created, request.model, completion).into_response())
}

fn completion_response(
    id: String,
    created: i64,
    model: String,
    completion: Completion,
) -> axum::Json<ChatCompletion> {
    axum::Json(ChatCompletion {
        id,
        object: "chat.completion",
        created,
        model,
        choices: vec![CompletionChoice {
            index: 0,
            message: ChatMessage {
                role: Role::Assistant,
                content: completion.content,
            },
            finish_reason: completion.finish_reason,
        }],
        usage: completion.usage,
    })
}

/// A completion recorded in a session: the request's last message (the
/// user's) is stored first, then the reply (or the failure). Streamed, the
/// upstream is read to its end and the reply stored even if the client leaves.
async fn in_session(
    exchange: Exchange,
    provider: Arc<dyn Provider>,
    upstream_model: &str,
    request: ChatRequest,
    streamed: bool,
    id: String,
    created: i64,
) -> Result<Response> {
    let Some(last) = request.messages.last().filter(|m| m.role == Role::User) else {
        return Err(ApiError::invalid_field(
            "messages",
            "must end with the user's message to be recorded in a session",
        ));
    };
    // A stream's slot is taken before anything is stored: a 429 changes nothing.
    let permit = match streamed {
        true => Some(stream_permit(&exchange.state, &exchange.user)?),
        false => None,
    };
    let (headers, _) = exchange.add_user_message(last.content.clone()).await?;
    if let Some(permit) = permit {
        let upstream = match provider.stream(upstream_model, &request).await {
            Ok(upstream) => upstream,
            Err(err) => {
                exchange.record_failure(&err).await;
                return Err(err.into());
            }
        };
        let relay = SseRelay {
            id,
            created,
            model: request.model,
            request_id: current_request_id(),
            send_timeout: exchange.state.settings.http.stream_send_timeout,
            finish_after_client_leaves: true,
            on_finished: Some(Box::new(move |outcome| {
                Box::pin(async move { exchange.finish_stream(outcome).await })
            })),
        };
        let mut response = sse_relay(upstream, permit, relay);
        response.headers_mut().extend(headers);
        return Ok(response);
    }
    let completion = match provider.complete(upstream_model, &request).await {
        Ok(completion) => completion,
        Err(err) => {
            exchange.record_failure(&err).await;
            return Err(err.into());
        }
    };
    let (reply_headers, _) = exchange
        .store_reply(completion.content.clone(), completion.usage)
        .await?;
    let mut response = completion_response(id, created, request.model, completion).into_response();
    response.headers_mut().extend(reply_headers);
    Ok(response)
}

/// Validates the OpenAI request and maps it to ours.
pub fn chat_request(body: ChatCompletionRequest) -> Result<ChatRequest> {
    if body.model.trim().is_empty() {
        return Err(ApiError::invalid_field("model", "is required"));
    }
    if body.messages.is_empty() {
        return Err(ApiError::invalid_field("messages", "must not be empty"));
    }
    if body.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid_field("n", "only 1 is supported"));
    }
    if body.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return Err(ApiError::invalid_field(
            "temperature",
            "must be between 0 and 2",
        ));
    }
    if body.top_p.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
        return Err(ApiError::invalid_field("top_p", "must be between 0 and 1"));
    }
    let max_tokens = body.max_completion_tokens.or(body.max_tokens);
    if max_tokens == Some(0) {
        return Err(ApiError::invalid_field("max_tokens", "must be at least 1"));
    }
    let stop = match body.stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(one)) => vec![one],
        Some(Value::Array(many)) if many.len() <= 4 && many.iter().all(Value::is_string) => many
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(_) => {
            return Err(ApiError::invalid_field(
                "stop",
                "must be a string or an array of up to 4 strings",
            ))
        }
    };
    let messages = body
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| message(i, m))
        .collect::<Result<Vec<_>>>()?;
    Ok(ChatRequest {
        model: body.model,
        messages,
        max_tokens,
        temperature: body.temperature,
        top_p: body.top_p,
        stop,
    })
}

fn message(index: usize, message: RequestMessage) -> Result<ChatMessage> {
    let field = |name: &str| format!("messages[{index}].{name}");
    let role = match message.role.as_str() {
        "system" | "developer" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        _ => {
            return Err(ApiError::invalid_field(
                &field("role"),
                "must be system, developer, user or assistant",
            ))
        }
    };
    let content = match message.content {
        Value::String(text) => text,
        Value::Array(parts) => parts
            .iter()
            .map(|part| match (part.get("type"), part.get("text")) {
                (Some(Value::String(kind)), Some(Value::String(text))) if kind == "text" => {
                    Ok(text.as_str())
                }
                _ => Err(ApiError::invalid_field(
                    &field("content"),
                    "only text parts are supported",
                )),
            })
            .collect::<Result<String>>()?,
        Value::Null if role == Role::Assistant => String::new(),
        _ => {
            return Err(ApiError::invalid_field(
                &field("content"),
                "must be a string or an array of text parts",
            ))
        }
    };
    Ok(ChatMessage { role, content })
}
