//! Anthropic's Messages API: `POST {ANTHROPIC_BASE_URL}/v1/messages` with
//! `x-api-key` and `anthropic-version`.

mod request;
mod streamer;

use async_trait::async_trait;
use reqwest::Client;
use secrecy::{ExposeSecret, SecretString};

use super::http::{self, RetryPolicy};
use super::{ChatRequest, ChunkStream, Completion, Provider, UpstreamError};
use crate::config::LlmSettings;

const NAME: &str = "anthropic";
/// The API version this mapping is written against.
pub const API_VERSION: &str = "2023-06-01";

/// The Anthropic upstream.
pub struct Anthropic {
    client: Client,
    endpoint: String,
    key: SecretString,
    policy: RetryPolicy,
}

impl Anthropic {
    pub fn new(
        base_url: &str,
        key: SecretString,
        settings: &LlmSettings,
    ) -> Result<Self, UpstreamError> {
        Ok(Self {
            client: http::client(settings)?,
            endpoint: format!("{}/v1/messages", base_url.trim_end_matches('/')),
            key,
            policy: RetryPolicy::from_settings(settings),
        })
    }

    async fn send(&self, body: &serde_json::Value) -> Result<reqwest::Response, UpstreamError> {
        http::send(self.policy, NAME, || {
            let mut key = reqwest::header::HeaderValue::from_str(self.key.expose_secret())
                .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static(""));
            key.set_sensitive(true);
            self.client
                .post(&self.endpoint)
                .header("x-api-key", key)
                .header("anthropic-version", API_VERSION)
                .json(body)
        })
        .await
    }
}

#[async_trait]
impl Provider for Anthropic {
    async fn complete(
        &self,
        upstream_model: &str,
        request: &ChatRequest,
    ) -> Result<Completion, UpstreamError> {
        let body = request::body(upstream_model, request, false);
        let response = self.send(&body).await?;
        let reply: request::MessageResponse = http::json_answer(NAME, response).await?;
        Ok(reply.into_completion(upstream_model))
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
            streamer::AnthropicEvents::default(),
        ))
    }
}
