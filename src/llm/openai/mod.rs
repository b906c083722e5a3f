//! Any OpenAI-compatible server: `POST {OPENAI_BASE_URL}/chat/completions`
//! with `Authorization: Bearer`.

mod request;
mod streamer;

use async_trait::async_trait;
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::Client;
use secrecy::{ExposeSecret, SecretString};

use super::http::{self, RetryPolicy};
use super::{ChatRequest, ChunkStream, Completion, Provider, UpstreamError};
use crate::config::LlmSettings;

const NAME: &str = "openai";

/// An OpenAI-compatible upstream.
pub struct OpenAi {
    client: Client,
    endpoint: String,
    key: SecretString,
    policy: RetryPolicy,
}

impl OpenAi {
    /// `base_url` ends in `/v1`.
    pub fn new(
        base_url: &str,
        key: SecretString,
        settings: &LlmSettings,
    ) -> Result<Self, UpstreamError> {
        Ok(Self {
            client: http::client(settings)?,
            endpoint: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            key,
            policy: RetryPolicy::from_settings(settings),
        })
    }

    async fn send(&self, body: &serde_json::Value) -> Result<reqwest::Response, UpstreamError> {
        http::send(self.policy, NAME, || {
            let mut auth = HeaderValue::from_str(&format!("Bearer {}", self.key.expose_secret()))
                .unwrap_or_else(|_| HeaderValue::from_static(""));
            auth.set_sensitive(true);
            self.client
                .post(&self.endpoint)
                .header(AUTHORIZATION, auth)
                .json(body)
        })
        .await
    }
}

#[async_trait]
impl Provider for OpenAi {
    async fn complete(
        &self,
        upstream_model: &str,
        request: &ChatRequest,
    ) -> Result<Completion, UpstreamError> {
        let body = request::body(upstream_model, request, false);
        let response = self.send(&body).await?;
        let reply: request::CompletionResponse = http::json_answer(NAME, response).await?;
        reply.into_completion(upstream_model)
    }

    async fn stream(
        &self,
        upstream_model: &str,
        request: &ChatRequest,
    ) -> Result<ChunkStream, UpstreamError> {
        let body = request::body(upstream_model, request, true);
        let response = self.send(&body).await?;
        Ok(super::sse::chunks(
            NAME,
            response,
            streamer::OpenAiEvents::default(),
        ))
    }
}
