//! An OpenAI chunk stream: `data: {chat.completion.chunk}` events until
//! `data: [DONE]`; with `include_usage` the usage comes in a last chunk
//! whose `choices` is empty.

use eventsource_stream::Event;
use serde::Deserialize;

use crate::llm::sse::{json, EventParser};
use crate::llm::{ChatChunk, UpstreamError, Usage};

const NAME: &str = "openai";

#[derive(Debug, Default)]
pub struct OpenAiEvents {
    finish_reason: Option<String>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
}

impl EventParser for OpenAiEvents {
    fn on_event(&mut self, event: &Event) -> Result<(Vec<ChatChunk>, bool), UpstreamError> {
        if event.data.trim() == "[DONE]" {
            return Ok((
                vec![ChatChunk::Finished {
                    finish_reason: self.finish_reason.take().unwrap_or_else(|| "stop".into()),
                    usage: self.usage.take(),
                }],
                true,
            ));
        }
        if event.event == "error" {
            return Err(UpstreamError::failed(format!(
                "{NAME} reported an error mid-stream"
            )));
        }
        let chunk: Chunk = json(NAME, event)?;
        if chunk.error.is_some() {
            let kind = crate::llm::http::error_kind(event.data.as_bytes());
            return Err(UpstreamError::failed(match kind {
                Some(kind) => format!("{NAME} reported an error mid-stream ({kind})"),
                None => format!("{NAME} reported an error mid-stream"),
            }));
        }
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        let mut out = Vec::new();
        if let Some(choice) = chunk.choices.into_iter().next() {
            if let Some(text) = choice
                .delta
                .and_then(|d| d.content)
                .filter(|t| !t.is_empty())
            {
                out.push(ChatChunk::Delta(text));
            }
            if choice.finish_reason.is_some() {
                self.finish_reason = choice.finish_reason;
            }
        }
        Ok((out, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(data: &str) -> Event {
        Event {
            data: data.into(),
            ..Event::default()
        }
    }

    #[test]
    fn deltas_then_finish_reason_and_usage_at_done() {
        let mut parser = OpenAiEvents::default();
        let (a, _) = parser
            .on_event(&data(
                r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"}}]}"#,
            ))
            .unwrap();
        let (b, _) = parser
            .on_event(&data(
                r#"{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#,
            ))
            .unwrap();
        let (c, _) = parser
            .on_event(&data(r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#))
            .unwrap();
        let (end, done) = parser.on_event(&data("[DONE]")).unwrap();
        assert_eq!(a, vec![ChatChunk::Delta("Hi".into())]);
        assert!(b.is_empty() && c.is_empty() && done);
        assert_eq!(
            end,
            vec![ChatChunk::Finished {
                finish_reason: "length".into(),
                usage: Some(Usage::new(3, 2))
            }]
        );
    }
}
