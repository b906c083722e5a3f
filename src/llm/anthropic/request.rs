//! Our [`ChatRequest`] as a Messages API request, and its non-streamed answer.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::llm::{finish_reason_from_anthropic, ChatRequest, Completion, Role, Usage};

/// Anthropic requires `max_tokens`; this applies when the client gave none.
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

/// The request body: system messages go to the top-level `system` field.
pub fn body(upstream_model: &str, request: &ChatRequest, stream: bool) -> Value {
    let system: Vec<&str> = request
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| m.content.as_str())
        .collect();
    let messages: Vec<Value> = request
        .messages
        .iter()
        .filter(|m| m.role != Role::System)
        .map(|m| json!({"role": m.role, "content": m.content}))
        .collect();
    let mut body = Map::new();
    body.insert("model".into(), json!(upstream_model));
    body.insert(
        "max_tokens".into(),
        json!(request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)),
    );
    body.insert("messages".into(), Value::Array(messages));
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    if let Some(temperature) = request.temperature {
        body.insert("temperature".into(), json!(temperature));
    }
    if let Some(top_p) = request.top_p {
        body.insert("top_p".into(), json!(top_p));
    }
    if !request.stop.is_empty() {
        body.insert("stop_sequences".into(), json!(request.stop));
    }
    if stream {
        body.insert("stream".into(), json!(true));
    }
    Value::Object(body)
}

/// A non-streamed answer.
#[derive(Debug, Deserialize)]
pub struct MessageResponse {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub content: Vec<ContentBlock>,
    #[serde(default)]
    pub stop_reason: Option<String>,
    #[serde(default)]
    pub usage: AnthropicUsage,
}

#[derive(Debug, Deserialize)]
pub struct ContentBlock {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct AnthropicUsage {
    #[serde(default)]
    pub input_tokens: u32,
    #[serde(default)]
    pub output_tokens: u32,
}

impl MessageResponse {
    pub fn into_completion(self, upstream_model: &str) -> Completion {
        let content = self
            .content
            .iter()
            .filter(|block| block.kind == "text")
            .filter_map(|block| block.text.as_deref())
            .collect::<String>();
        Completion {
            content,
            finish_reason: finish_reason_from_anthropic(
                self.stop_reason.as_deref().unwrap_or("end_turn"),
            ),
            usage: Usage::new(self.usage.input_tokens, self.usage.output_tokens),
            model: self.model.unwrap_or_else(|| upstream_model.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ChatMessage;

    #[test]
    fn system_messages_move_to_the_system_field_and_max_tokens_is_always_set() {
        let request = ChatRequest {
            model: "claude".into(),
            messages: vec![
                ChatMessage {
                    role: Role::System,
                    content: "Be brief.".into(),
                },
                ChatMessage {
                    role: Role::User,
                    content: "Hi".into(),
                },
            ],
            stop: vec!["END".into()],
            ..ChatRequest::default()
        };
        let body = body("claude-x", &request, true);
        assert_eq!(body["system"], "Be brief.");
        assert_eq!(body["messages"], json!([{"role": "user", "content": "Hi"}]));
        assert_eq!(body["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(body["stop_sequences"], json!(["END"]));
        assert_eq!(body["stream"], true);
        assert_eq!(body["model"], "claude-x");
    }
}
