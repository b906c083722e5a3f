//! Anthropic's stream: `message_start` (input usage), `content_block_delta`
//! (`text_delta`), `message_delta` (stop reason, output usage),
//! `message_stop`; `ping` and block start/stop carry nothing for us.

use eventsource_stream::Event;
use serde::Deserialize;

use crate::llm::sse::{json, EventParser};
use crate::llm::{finish_reason_from_anthropic, ChatChunk, UpstreamError, Usage};

const NAME: &str = "anthropic";

/// What the stream has told so far.
#[derive(Debug, Default)]
pub struct AnthropicEvents {
    input_tokens: u32,
    output_tokens: u32,
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct MessageStart {
    message: StartedMessage,
}

#[derive(Deserialize)]
struct StartedMessage {
    #[serde(default)]
    usage: Option<Tokens>,
}

#[derive(Deserialize, Default)]
struct Tokens {
    #[serde(default)]
    input_tokens: Option<u32>,
    #[serde(default)]
    output_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct BlockDelta {
    delta: TextDelta,
}

#[derive(Deserialize)]
struct TextDelta {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: String,
}

#[derive(Deserialize)]
struct MessageDelta {
    delta: StopDelta,
    #[serde(default)]
    usage: Option<Tokens>,
}

#[derive(Deserialize)]
struct StopDelta {
    #[serde(default)]
    stop_reason: Option<String>,
}

impl EventParser for AnthropicEvents {
    fn on_event(&mut self, event: &Event) -> Result<(Vec<ChatChunk>, bool), UpstreamError> {
        match event.event.as_str() {
            "message_start" => {
                let start: MessageStart = json(NAME, event)?;
                let usage = start.message.usage.unwrap_or_default();
                self.input_tokens = usage.input_tokens.unwrap_or(0);
                self.output_tokens = usage.output_tokens.unwrap_or(0);
                Ok((Vec::new(), false))
            }
            "content_block_delta" => {
                let delta: BlockDelta = json(NAME, event)?;
                let chunks = (delta.delta.kind == "text_delta" && !delta.delta.text.is_empty())
                    .then_some(ChatChunk::Delta(delta.delta.text))
                    .into_iter()
                    .collect();
                Ok((chunks, false))
            }
            "message_delta" => {
                let delta: MessageDelta = json(NAME, event)?;
                if let Some(reason) = delta.delta.stop_reason {
                    self.stop_reason = Some(reason);
                }
                if let Some(output) = delta.usage.and_then(|u| u.output_tokens) {
                    self.output_tokens = output;
                }
                Ok((Vec::new(), false))
            }
            "message_stop" => Ok((
                vec![ChatChunk::Finished {
                    finish_reason: finish_reason_from_anthropic(
                        self.stop_reason.as_deref().unwrap_or("end_turn"),
                    ),
                    usage: Some(Usage::new(self.input_tokens, self.output_tokens)),
                }],
                true,
            )),
            "error" => {
                let kind = super::super::http::error_kind(event.data.as_bytes());
                Err(UpstreamError::failed(match kind {
                    Some(kind) => format!("{NAME} reported an error mid-stream ({kind})"),
                    None => format!("{NAME} reported an error mid-stream"),
                }))
            }
            // ping, content_block_start, content_block_stop, and event types added later.
            _ => Ok((Vec::new(), false)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, data: &str) -> Event {
        Event {
            event: name.into(),
            data: data.into(),
            ..Event::default()
        }
    }

    #[test]
    fn a_stream_yields_text_then_the_mapped_finish_with_usage() {
        let mut parser = AnthropicEvents::default();
        let mut out = Vec::new();
        for (name, data) in [
            (
                "message_start",
                r#"{"type":"message_start","message":{"usage":{"input_tokens":12,"output_tokens":1}}}"#,
            ),
            ("ping", r#"{"type":"ping"}"#),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lo"}}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"output_tokens":7}}"#,
            ),
        ] {
            let (chunks, done) = parser.on_event(&event(name, data)).unwrap();
            assert!(!done);
            out.extend(chunks);
        }
        let (last, done) = parser.on_event(&event("message_stop", "{}")).unwrap();
        assert!(done);
        assert_eq!(
            out,
            vec![
                ChatChunk::Delta("Hel".into()),
                ChatChunk::Delta("lo".into())
            ]
        );
        assert_eq!(
            last,
            vec![ChatChunk::Finished {
                finish_reason: "length".into(),
                usage: Some(Usage::new(12, 7))
            }]
        );
    }
}
