//! The language-model upstreams: one [`Provider`] trait in OpenAI's shapes
//! (our wire format), one module per upstream API with its request mapping
//! and its streamer apart, and the [`Llm`] registry that maps our model ids
//! (`CHRONICLE_MODELS`) to a provider and its upstream model.

pub mod anthropic;
mod http;
pub mod limits;
pub mod openai;
mod sse;

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::config::{LlmSettings, ModelSpec, ProviderKind};
pub use limits::{StreamLimiter, StreamPermit, TokenBudget};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

/// What we ask a model, whatever its upstream.
#[derive(Debug, Clone, Default)]
pub struct ChatRequest {
    /// Our model id (see [`Llm::models`]).
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Sequences that end the reply.
    pub stop: Vec<String>,
}

/// Token counts as the upstream reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

impl Usage {
    pub fn new(prompt_tokens: u32, completion_tokens: u32) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
        }
    }
}

/// A whole reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub content: String,
    /// OpenAI's vocabulary: `stop`, `length`, `tool_calls`, `content_filter`.
    pub finish_reason: String,
    pub usage: Usage,
    /// The upstream model that answered.
    pub model: String,
}

/// One piece of a streamed reply.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatChunk {
    /// More text.
    Delta(String),
    /// The reply is complete; always the last item of a stream that did not fail.
    Finished {
        finish_reason: String,
        usage: Option<Usage>,
    },
}

/// Why asking the model failed. No variant ever holds a key or an
/// upstream's body: messages are short reasons we composed ourselves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// No model is configured at all, or this model's provider has no key:
    /// 503 `UPSTREAM_NOT_CONFIGURED`.
    #[error("{0}")]
    NotConfigured(String),
    /// A model id that is not configured: 404, on `/v1/models/{id}` and in a
    /// request (naming the field `model`).
    #[error("unknown model `{0}`")]
    UnknownModel(String),
    /// The upstream answered an error, broke off or could not be reached: 502 `UPSTREAM_ERROR`.
    #[error("{message}")]
    Failed {
        /// The upstream's HTTP status, if it answered.
        status: Option<u16>,
        message: String,
    },
}

impl UpstreamError {
    pub(crate) fn failed(message: impl Into<String>) -> Self {
        Self::Failed {
            status: None,
            message: message.into(),
        }
    }
}

/// A stream of reply pieces, ending with [`ChatChunk::Finished`] or an error.
pub type ChunkStream = BoxStream<'static, Result<ChatChunk, UpstreamError>>;

/// One upstream API.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Asks for the whole reply at once.
    async fn complete(
        &self,
        upstream_model: &str,
        request: &ChatRequest,
    ) -> Result<Completion, UpstreamError>;

    /// Asks for the reply piece by piece. Resolves once the upstream accepted
    /// the request (retries happen before that, never after); the stream then
    /// yields pieces as they arrive.
    async fn stream(
        &self,
        upstream_model: &str,
        request: &ChatRequest,
    ) -> Result<ChunkStream, UpstreamError>;
}

/// A model as `/v1/models` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub id: String,
    /// The provider's name (`anthropic`, `openai`).
    pub owned_by: &'static str,
}

struct Entry {
    info: ModelInfo,
    upstream_model: String,
    /// `None`: the provider has no key.
    provider: Option<Arc<dyn Provider>>,
}

/// The configured models and their providers; one HTTP client per provider.
pub struct Llm {
    entries: Vec<Entry>,
    /// Unix seconds this registry was built: every model's `created`.
    pub created: i64,
    /// Streamed replies open per user.
    pub streams: StreamLimiter,
    /// Upstream tokens per user and minute.
    pub tokens: TokenBudget,
}

impl Llm {
    /// Builds the providers that have a key and maps every configured model.
    pub fn from_settings(settings: &LlmSettings) -> Result<Self, UpstreamError> {
        let anthropic: Option<Arc<dyn Provider>> = match &settings.anthropic.api_key {
            Some(key) => Some(Arc::new(anthropic::Anthropic::new(
                &settings.anthropic.base_url,
                key.clone(),
                settings,
            )?)),
            None => None,
        };
        let openai: Option<Arc<dyn Provider>> = match &settings.openai.api_key {
            Some(key) => Some(Arc::new(openai::OpenAi::new(
                &settings.openai.base_url,
                key.clone(),
                settings,
            )?)),
            None => None,
        };
        let models = settings.models.iter().map(|spec| {
            let provider = match spec.provider {
                ProviderKind::Anthropic => anthropic.clone(),
                ProviderKind::OpenAi => openai.clone(),
            };
            (spec.clone(), provider)
        });
        let mut llm = Self::from_parts(models, settings.max_streams_per_user);
        llm.tokens = TokenBudget::new(settings.tokens_per_minute);
        Ok(llm)
    }

    /// A registry over given providers (tests may pass their own).
    pub fn from_parts(
        models: impl IntoIterator<Item = (ModelSpec, Option<Arc<dyn Provider>>)>,
        max_streams_per_user: usize,
    ) -> Self {
        let entries = models
            .into_iter()
            .map(|(spec, provider)| Entry {
                info: ModelInfo {
                    id: spec.id,
                    owned_by: spec.provider.name(),
                },
                upstream_model: spec.upstream_model,
                provider,
            })
            .collect();
        Self {
            entries,
            created: chrono::Utc::now().timestamp(),
            streams: StreamLimiter::new(max_streams_per_user),
            // Unlimited unless configured (`from_settings`).
            tokens: TokenBudget::new(0),
        }
    }

    /// Every configured model, in configuration order.
    pub fn models(&self) -> impl Iterator<Item = &ModelInfo> {
        self.entries.iter().map(|entry| &entry.info)
    }

    /// The configured model `id`, if any.
    pub fn model(&self, id: &str) -> Option<&ModelInfo> {
        self.models().find(|model| model.id == id)
    }

    /// Fails unless at least one model is configured.
    pub fn ensure_configured(&self) -> Result<(), UpstreamError> {
        if self.entries.is_empty() {
            return Err(UpstreamError::NotConfigured(
                "no language model is configured (CHRONICLE_MODELS)".into(),
            ));
        }
        Ok(())
    }

    /// The provider serving model `id` and the upstream model to ask for.
    pub fn resolve(&self, id: &str) -> Result<(Arc<dyn Provider>, &str), UpstreamError> {
        self.ensure_configured()?;
        let entry = self
            .entries
            .iter()
            .find(|entry| entry.info.id == id)
            .ok_or_else(|| UpstreamError::UnknownModel(id.to_string()))?;
        let provider = entry.provider.clone().ok_or_else(|| {
            UpstreamError::NotConfigured(format!(
                "model `{id}` needs the {} upstream, which has no API key configured",
                entry.info.owned_by
            ))
        })?;
        Ok((provider, &entry.upstream_model))
    }

    /// Asks the model `request.model` for the whole reply.
    pub async fn complete(&self, request: &ChatRequest) -> Result<Completion, UpstreamError> {
        let (provider, upstream_model) = self.resolve(&request.model)?;
        provider.complete(upstream_model, request).await
    }

    /// Asks the model `request.model` for the reply piece by piece.
    pub async fn stream(&self, request: &ChatRequest) -> Result<ChunkStream, UpstreamError> {
        let (provider, upstream_model) = self.resolve(&request.model)?;
        provider.stream(upstream_model, request).await
    }
}

/// OpenAI's `finish_reason` for Anthropic's `stop_reason`.
pub fn finish_reason_from_anthropic(stop_reason: &str) -> String {
    match stop_reason {
        "end_turn" | "stop_sequence" => "stop",
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, provider: ProviderKind) -> ModelSpec {
        ModelSpec {
            id: id.into(),
            provider,
            upstream_model: format!("{id}-upstream"),
        }
    }

    #[test]
    fn resolving_tells_unconfigured_from_unknown_models() {
        let empty = Llm::from_parts([], 1);
        assert!(matches!(
            empty.resolve("x"),
            Err(UpstreamError::NotConfigured(_))
        ));
        let keyless = Llm::from_parts([(spec("claude", ProviderKind::Anthropic), None)], 1);
        assert!(matches!(
            keyless.resolve("claude"),
            Err(UpstreamError::NotConfigured(_))
        ));
        assert_eq!(
            keyless.resolve("gpt").err(),
            Some(UpstreamError::UnknownModel("gpt".into()))
        );
        assert_eq!(keyless.model("claude").unwrap().owned_by, "anthropic");
    }

    #[test]
    fn anthropic_stop_reasons_map_to_openai_finish_reasons() {
        assert_eq!(finish_reason_from_anthropic("end_turn"), "stop");
        assert_eq!(finish_reason_from_anthropic("max_tokens"), "length");
        assert_eq!(finish_reason_from_anthropic("stop_sequence"), "stop");
        assert_eq!(finish_reason_from_anthropic("tool_use"), "tool_calls");
    }
}
