//! `POST /v1/sessions/{id}/messages`: one exchange with the model. The user
//! message is stored, the system prompt and the conversation so far go
//! upstream, and the reply is stored with its usage, or the failure is.
//!
//! Streamed (`stream: true`), the reply comes as SSE in OpenAI's chunk
//! format. The upstream call and the storing run in a task of their own: a
//! client that leaves mid-stream still gets its reply stored.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chronicle_aggregates::chat_session::{
    ChatSession, ChatSessionCommand, ChatSessionEvent, Role, Usage,
};
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::messages::MessageResponse;
use std::sync::Mutex;

use super::{load_own_session, run_at, TokenUsage};
use crate::commands::{now, Executed, Loaded};
use crate::http::chat::{self, SseRelay, StreamOutcome};
use crate::http::error::{ApiError, Result};
use crate::http::extract::{AuthUser, IdPath, Json, RequestContext};
use crate::http::request_id::current_request_id;
use crate::llm::{self, ChatMessage, ChatRequest, StreamPermit, UpstreamError};
use crate::state::AppState;

/// How much of the conversation goes upstream, in estimated tokens (four
/// characters each). The system prompt and the new message always go; older
/// turns are dropped first.
pub const HISTORY_TOKEN_BUDGET: usize = 16_000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessageRequest {
    /// 1–100,000 characters, not blank.
    #[schema(min_length = 1, max_length = 100000, pattern = "[^ \\t\\n\\r]")]
    pub content: String,
    /// Answer as Server-Sent Events in OpenAI's chunk format.
    #[serde(default)]
    pub stream: bool,
}

/// Both messages of an exchange.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExchangeResponse {
    pub user_message: MessageResponse,
    pub assistant_message: MessageResponse,
}

/// Sends a message and stores the model's reply.
#[utoipa::path(post, path = "/v1/sessions/{id}/messages", tag = "sessions", security(("bearer" = [])), params(("id" = Uuid, Path)), request_body = SendMessageRequest, responses(
    (status = 201, body = ExchangeResponse, description = "Without `stream`: both messages"),
    (status = 200, content_type = "text/event-stream", description = "With `stream: true`: OpenAI chunks, then `data: [DONE]`; a failure mid-stream is an `event: error`"),
    (status = 400, description = "Body is not JSON"), (status = 401), (status = 404, description = "No such session of yours, or its model is no longer configured (field `model`)"),
    (status = 409, description = "Changed concurrently"), (status = 422, description = "Invalid content"),
    (status = 429, description = "Too many streams at once, or this minute's upstream tokens are spent"),
    (status = 502, description = "The model's upstream failed"), (status = 503, description = "No upstream configured for the session's model"),
))]
pub async fn send_message(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    IdPath(id): IdPath,
    Json(request): Json<SendMessageRequest>,
) -> Result<Response> {
    // The session and its history come from the event store, which always
    // holds the caller's previous exchange: no read-your-writes wait. Both
    // reads go at once (the history is not used unless the session is the
    // caller's).
    let budget = HISTORY_TOKEN_BUDGET.saturating_sub(estimated_tokens(&request.content));
    let (loaded, history) = tokio::try_join!(
        load_own_session(&state, &user, id),
        load_history(&state, id, budget)
    )?;
    let session = loaded.aggregate.clone();
    state.llm.resolve(&session.model).map_err(ApiError::from)?;
    chat::check_token_budget(&state, &user)?;
    let exchange = Exchange::new(state, user, context, id, session.model.clone(), loaded);
    // A stream's slot is taken before anything is stored: a 429 changes nothing.
    let permit = match request.stream {
        true => Some(chat::stream_permit(&exchange.state, &exchange.user)?),
        false => None,
    };
    let (headers, user_message) = exchange.add_user_message(request.content).await?;
    let mut messages = Vec::with_capacity(history.len() + 2);
    if let Some(prompt) = session.system_prompt {
        messages.push(ChatMessage {
            role: llm::Role::System,
            content: prompt.as_str().to_owned(),
        });
    }
    messages.extend(history);
    messages.push(ChatMessage {
        role: llm::Role::User,
        content: user_message.content.clone(),
    });
    let upstream = ChatRequest {
        model: session.model,
        messages,
        ..ChatRequest::default()
    };
    if let Some(permit) = permit {
        exchange.stream(upstream, permit, headers).await
    } else {
        exchange.complete(upstream, user_message, headers).await
    }
}

/// One exchange recorded in a session, by this route or by
/// `/v1/chat/completions` with a `session_id`. It owns what storing the
/// reply needs, so that it can outlive the request.
pub(crate) struct Exchange {
    pub state: AppState,
    pub user: AuthUser,
    pub context: RequestContext,
    pub session_id: Uuid,
    /// The model id asked.
    pub model: String,
    /// Where the session stood after this exchange's last read or command:
    /// the next command commits from there without loading the session
    /// again (a conflict loads and retries; see `CommandExecutor::execute_at`).
    known: Mutex<Option<Loaded<ChatSession>>>,
}

impl Exchange {
    pub(crate) fn new(
        state: AppState,
        user: AuthUser,
        context: RequestContext,
        session_id: Uuid,
        model: String,
        loaded: Loaded<ChatSession>,
    ) -> Self {
        Self {
            state,
            user,
            context,
            session_id,
            model,
            known: Mutex::new(Some(loaded)),
        }
    }

    /// Runs `command` on the session from where this exchange last saw it.
    async fn run(&self, command: ChatSessionCommand) -> Result<(HeaderMap, Executed<ChatSession>)> {
        let at = self.known.lock().unwrap_or_else(|e| e.into_inner()).take();
        let (headers, mut executed) = run_at(
            &self.state,
            &self.user,
            &self.context,
            self.session_id,
            command,
            at,
        )
        .await?;
        *self.known.lock().unwrap_or_else(|e| e.into_inner()) = executed.next.take();
        Ok((headers, executed))
    }

    /// Stores the user's message; returns its consistency header and the message.
    pub(crate) async fn add_user_message(
        &self,
        content: String,
    ) -> Result<(HeaderMap, MessageResponse)> {
        let (headers, executed) = self
            .run(ChatSessionCommand::AddMessage {
                actor: self.user.id,
                message_id: Uuid::new_v4(),
                role: Role::User,
                content,
                model: None,
                usage: None,
                at: now(),
            })
            .await?;
        Ok((headers, recorded_message(executed.events.last())?))
    }

    async fn complete(
        self,
        upstream: ChatRequest,
        user_message: MessageResponse,
        headers: HeaderMap,
    ) -> Result<Response> {
        let completion = match self.state.llm.complete(&upstream).await {
            Ok(completion) => completion,
            Err(err) => {
                self.record_failure(&err).await;
                return Err(ApiError::from(err));
            }
        };
        let (reply_headers, assistant_message) = self
            .store_reply(completion.content, completion.usage)
            .await?;
        let mut headers = headers;
        headers.extend(reply_headers);
        Ok((
            StatusCode::CREATED,
            headers,
            axum::Json(ExchangeResponse {
                user_message,
                assistant_message,
            }),
        )
            .into_response())
    }

    async fn stream(
        self,
        upstream: ChatRequest,
        permit: StreamPermit,
        headers: HeaderMap,
    ) -> Result<Response> {
        // Failures before the first byte are plain errors (502, 503).
        let chunks = match self.state.llm.stream(&upstream).await {
            Ok(chunks) => chunks,
            Err(err) => {
                self.record_failure(&err).await;
                return Err(ApiError::from(err));
            }
        };
        let relay = SseRelay {
            id: format!("chatcmpl-{}", Uuid::new_v4().simple()),
            created: chrono::Utc::now().timestamp(),
            model: self.model.clone(),
            request_id: current_request_id(),
            send_timeout: self.state.settings.http.stream_send_timeout,
            // The reply is the user's: it is read to its end and stored even
            // when the client has left.
            finish_after_client_leaves: true,
            on_finished: Some(Box::new(move |outcome| {
                Box::pin(async move { self.finish_stream(outcome).await })
            })),
        };
        let mut response = chat::sse_relay(chunks, permit, relay);
        response.headers_mut().extend(headers);
        Ok(response)
    }

    /// Stores what a stream ended with: the reply, or the failure.
    pub(crate) async fn finish_stream(
        self,
        outcome: StreamOutcome,
    ) -> std::result::Result<(), UpstreamError> {
        if let Some(err) = outcome.error {
            self.record_failure(&err).await;
            return Ok(());
        }
        let usage = outcome.usage.unwrap_or_default();
        match self.store_reply(outcome.content, usage).await {
            Ok(_) => Ok(()),
            Err(err) => {
                tracing::error!(error = %err, "a streamed reply could not be stored");
                Err(UpstreamError::failed("the reply could not be stored"))
            }
        }
    }

    /// Stores the assistant's reply; returns its consistency header and the message.
    pub(crate) async fn store_reply(
        &self,
        content: String,
        usage: llm::Usage,
    ) -> Result<(HeaderMap, MessageResponse)> {
        self.state
            .llm
            .tokens
            .spend(self.user.id, u64::from(usage.total_tokens));
        // A message may not be blank: an empty reply is the upstream's failure.
        if content.trim().is_empty() {
            let err = UpstreamError::failed("the model returned an empty reply");
            self.record_failure(&err).await;
            return Err(ApiError::from(err));
        }
        let usage = Usage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.total_tokens,
        };
        let (headers, executed) = self
            .run(ChatSessionCommand::AddMessage {
                actor: self.user.id,
                message_id: Uuid::new_v4(),
                role: Role::Assistant,
                content,
                model: Some(self.model.clone()),
                usage: Some(usage),
                at: now(),
            })
            .await?;
        Ok((headers, recorded_message(executed.events.last())?))
    }

    pub(crate) async fn record_failure(&self, err: &UpstreamError) {
        let recorded = self
            .run(ChatSessionCommand::RecordExchangeFailure {
                actor: self.user.id,
                reason: err.to_string(),
                model: self.model.clone(),
                at: now(),
            })
            .await;
        if let Err(err) = recorded {
            tracing::error!(error = %err, "a failed exchange could not be recorded");
        }
    }
}

/// The message a `MessageAdded` recorded.
fn recorded_message(event: Option<&ChatSessionEvent>) -> Result<MessageResponse> {
    match event {
        Some(ChatSessionEvent::MessageAdded {
            message_id,
            role,
            content,
            model,
            usage,
            created_at,
        }) => Ok(MessageResponse {
            id: *message_id,
            role: role.as_str().to_string(),
            content: content.as_str().to_string(),
            model: model.clone(),
            usage: usage.map(|u| TokenUsage {
                prompt_tokens: i64::from(u.prompt_tokens),
                completion_tokens: i64::from(u.completion_tokens),
                total_tokens: i64::from(u.total_tokens),
            }),
            created_at: *created_at,
        }),
        _ => Err(ApiError::Internal(anyhow::anyhow!(
            "a message command recorded no message"
        ))),
    }
}

/// A text's cost against [`HISTORY_TOKEN_BUDGET`]: about four characters a
/// token. [`load_history`] computes the same in SQL.
fn estimated_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

/// The session's newest messages whose estimated tokens fit `budget`
/// together, oldest first; the first message that does not fit ends the
/// history (older ones are dropped even if they are short), and at most the
/// newest 1,000 are considered. Read from its `MessageAdded` events in one
/// index walk of the event store, which needs no wait for the read model.
///
/// The cut is made in Postgres (a running sum of each message's estimate,
/// newest first), so only the role and text of the messages kept leave it:
/// a long session no longer sends the server every payload to decode and
/// drop (docs/performance.md, "Session 11"). This reads the message text out
/// of the stored JSON, past `PersonalText`'s serde: sealing personal content
/// must change this query too (`aggregates/src/personal.rs`).
async fn load_history(
    state: &AppState,
    session_id: Uuid,
    budget: usize,
) -> Result<Vec<ChatMessage>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "select role, content from ( \
           select sequence, message->>'role' as role, message->>'content' as content, \
             sum((char_length(message->>'content') + 3) / 4) \
               over (order by sequence desc) as newest_tokens \
           from (select sequence, payload->'MessageAdded' as message from events \
                 where aggregate_type = $1 and aggregate_id = $2 \
                   and event_type = 'MessageAdded' \
                 order by sequence desc limit 1000) as recent) as costed \
         where newest_tokens <= $3 order by sequence",
    )
    .bind(ChatSession::TYPE)
    .bind(session_id.to_string())
    .bind(i64::try_from(budget).unwrap_or(i64::MAX))
    .fetch_all(&state.pool)
    .await?;
    rows.into_iter()
        .map(|(role, content)| {
            let role = match role.as_str() {
                "user" => llm::Role::User,
                "assistant" => llm::Role::Assistant,
                "system" => llm::Role::System,
                other => {
                    return Err(ApiError::Internal(anyhow::anyhow!(
                        "a MessageAdded of chat session {session_id} has the role {other:?}"
                    )))
                }
            };
            Ok(ChatMessage { role, content })
        })
        .collect()
}
