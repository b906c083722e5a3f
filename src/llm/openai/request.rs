//! Our [`ChatRequest`] as an OpenAI chat completion request, and its answer.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::llm::{ChatRequest, Completion, UpstreamError, Usage};

pub fn body(upstream_model: &str, request: &ChatRequest, stream: bool) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(upstream_model));
    body.insert("messages".into(), json!(request.messages));
    if let Some(max_tokens) = request.max_tokens {
        body.insert("max_tokens".into(), json!(max_tokens));
    }
    if let Some(temperature) = request.temperature {
        body.insert("temperature".into(), json!(temperature));
    }
    if let Some(top_p) = request.top_p {
        body.insert("top_p".into(), json!(top_p));
    }
    if !request.stop.is_empty() {
        body.insert("stop".into(), json!(request.stop));
    }
    if stream {
        body.insert("stream".into(), json!(true));
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Value::Object(body)
}

#[derive(Debug, Deserialize)]
pub struct CompletionResponse {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub choices: Vec<Choice>,
    #[serde(default)]
    pub usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
pub struct Choice {
    pub message: Message,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    #[serde(default)]
    pub content: Option<String>,
}

impl CompletionResponse {
    pub fn into_completion(self, upstream_model: &str) -> Result<Completion, UpstreamError> {
        let choice = self
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| UpstreamError::failed("openai answered without a choice"))?;
        Ok(Completion {
            content: choice.message.content.unwrap_or_default(),
            finish_reason: choice.finish_reason.unwrap_or_else(|| "stop".into()),
            usage: self.usage.unwrap_or_default(),
            model: self.model.unwrap_or_else(|| upstream_model.to_string()),
        })
    }
}
