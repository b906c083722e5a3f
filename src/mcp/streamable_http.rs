//! MCP's Streamable HTTP transport (spec 2025-03-26 and later): every
//! message is a POST to one URL, answered with JSON or an SSE stream that
//! ends with the response; the session is kept in `Mcp-Session-Id`.

use futures::StreamExt;
use reqwest::header::{HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::{Response, Url};
use serde_json::Value;

use super::discovery::Transport;
use super::error::DiscoveryError;
use super::wire::{self, Budget, Exchange};

const SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
const PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");

pub(crate) struct StreamableHttp<'a> {
    exchange: &'a Exchange,
    url: Url,
    session_id: Option<HeaderValue>,
    protocol_version: Option<HeaderValue>,
    next_id: u64,
}

impl<'a> StreamableHttp<'a> {
    pub fn new(exchange: &'a Exchange, url: Url) -> Self {
        Self {
            exchange,
            url,
            session_id: None,
            protocol_version: None,
            next_id: 1,
        }
    }

    /// The configured headers plus the session's.
    fn headers(&self) -> reqwest::header::HeaderMap {
        let mut headers = self.exchange.headers.clone();
        if let Some(session_id) = &self.session_id {
            headers.insert(SESSION_ID, session_id.clone());
        }
        if let Some(version) = &self.protocol_version {
            headers.insert(PROTOCOL_VERSION, version.clone());
        }
        headers
    }

    async fn post(&self, message: &Value) -> Result<Response, DiscoveryError> {
        let mut headers = self.headers();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        let response = self
            .exchange
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(message.to_string())
            .send()
            .await
            .map_err(|err| self.exchange.transport_error(&err))?;
        self.exchange.check_status(&response)?;
        Ok(response)
    }
}

impl Transport for StreamableHttp<'_> {
    async fn request(
        &mut self,
        method: &'static str,
        params: Value,
    ) -> Result<Value, DiscoveryError> {
        let id = self.next_id;
        self.next_id += 1;
        let response = self.post(&wire::request(id, method, params)).await?;
        if self.session_id.is_none() {
            self.session_id = response.headers().get(SESSION_ID).cloned();
        }
        match wire::media_type(&response).as_str() {
            "application/json" => {
                let message = wire::read_json(self.exchange, response).await?;
                wire::find_response(&message, id).cloned().ok_or_else(|| {
                    DiscoveryError::NotMcp(format!("the answer to {method} is not its response"))
                })
            }
            "text/event-stream" => {
                let mut events = wire::events(response, Budget::new(self.exchange.limit));
                while let Some(event) = events.next().await {
                    let event = event.map_err(|err| self.exchange.event_error(err))?;
                    // Server notifications and requests may come first: skip them.
                    let Ok(message) = serde_json::from_str::<Value>(&event.data) else {
                        continue;
                    };
                    if let Some(response) = wire::find_response(&message, id) {
                        return Ok(response.clone());
                    }
                }
                Err(DiscoveryError::NotMcp(format!(
                    "the server ended its event stream without answering {method}"
                )))
            }
            "" => Err(DiscoveryError::NotMcp(format!(
                "the server answered {method} without a body"
            ))),
            other => Err(DiscoveryError::NotMcp(format!(
                "the server answered {method} with {}",
                self.exchange.redactor.clean(other)
            ))),
        }
    }

    async fn notify(&mut self, method: &'static str) -> Result<(), DiscoveryError> {
        // 202 Accepted, no body; what a body there may be is not read.
        self.post(&wire::notification(method)).await.map(drop)
    }

    fn negotiated(&mut self, version: &str) {
        self.protocol_version = HeaderValue::from_str(version).ok();
    }

    async fn close(&mut self) {
        if self.session_id.is_none() {
            return;
        }
        // Best effort: a server may not support ending sessions (405).
        let _ = self
            .exchange
            .client
            .delete(self.url.clone())
            .headers(self.headers())
            .send()
            .await;
    }
}
