//! MCP's legacy HTTP+SSE transport (spec 2024-11-05): a GET opens an SSE
//! stream whose first `endpoint` event names where to POST messages; the
//! responses come back as `message` events on the stream.

use futures::StreamExt;
use reqwest::header::{HeaderValue, ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use reqwest::Url;
use serde_json::Value;

use super::address_guard;
use super::discovery::Transport;
use super::error::DiscoveryError;
use super::wire::{self, Budget, Events, Exchange};

pub(crate) struct LegacySse<'a> {
    exchange: &'a Exchange,
    endpoint: Url,
    events: Events,
    /// The stream's budget, started again for each request's answer.
    budget: Budget,
    next_id: u64,
}

impl<'a> LegacySse<'a> {
    /// Opens the SSE stream at `url` and waits for its `endpoint` event.
    pub async fn connect(
        exchange: &'a Exchange,
        url: Url,
        guard: bool,
    ) -> Result<Self, DiscoveryError> {
        let mut headers = exchange.headers.clone();
        headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        let response = exchange
            .client
            .get(url.clone())
            .headers(headers)
            .send()
            .await
            .map_err(|err| exchange.transport_error(&err))?;
        exchange.check_status(&response)?;
        if wire::media_type(&response) != "text/event-stream" {
            return Err(DiscoveryError::NotMcp(
                "the SSE URL does not answer with an event stream".into(),
            ));
        }
        let budget = Budget::new(exchange.limit);
        let mut events = wire::events(response, budget.clone());
        let endpoint = loop {
            let Some(event) = events.next().await else {
                return Err(DiscoveryError::NotMcp(
                    "the event stream ended before its endpoint event".into(),
                ));
            };
            let event = event.map_err(|err| exchange.event_error(err))?;
            if event.event == "endpoint" {
                break endpoint(&url, event.data.trim(), guard)?;
            }
        };
        Ok(Self {
            exchange,
            endpoint,
            events,
            budget,
            next_id: 1,
        })
    }

    async fn post(
        exchange: &Exchange,
        endpoint: &Url,
        message: &Value,
    ) -> Result<(), DiscoveryError> {
        let mut headers = exchange.headers.clone();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let response = exchange
            .client
            .post(endpoint.clone())
            .headers(headers)
            .body(message.to_string())
            .send()
            .await
            .map_err(|err| exchange.transport_error(&err))?;
        // 202 Accepted (some servers 200 with a body we do not need).
        exchange.check_status(&response)
    }
}

/// The message endpoint `data` names, resolved against the SSE URL; it must
/// be on the same origin, so the server cannot point us elsewhere.
fn endpoint(sse_url: &Url, data: &str, guard: bool) -> Result<Url, DiscoveryError> {
    let endpoint = sse_url
        .join(data)
        .map_err(|_| DiscoveryError::NotMcp("the endpoint event does not hold a URL".into()))?;
    let same_origin = endpoint.scheme() == sse_url.scheme()
        && endpoint.host_str() == sse_url.host_str()
        && endpoint.port_or_known_default() == sse_url.port_or_known_default();
    if !same_origin || !endpoint.username().is_empty() || endpoint.password().is_some() {
        return Err(DiscoveryError::ForeignEndpoint);
    }
    if guard {
        address_guard::check_url(&endpoint)?;
    }
    Ok(endpoint)
}

impl Transport for LegacySse<'_> {
    async fn request(
        &mut self,
        method: &'static str,
        params: Value,
    ) -> Result<Value, DiscoveryError> {
        let id = self.next_id;
        self.next_id += 1;
        self.budget.reset();
        let message = wire::request(id, method, params);
        let Self {
            exchange,
            endpoint,
            events,
            ..
        } = self;
        let exchange: &Exchange = exchange;
        // The response may arrive on the stream before the POST's 202.
        let wait = async {
            while let Some(event) = events.next().await {
                let event = event.map_err(|err| exchange.event_error(err))?;
                if !(event.event.is_empty() || event.event == "message") {
                    continue;
                }
                let Ok(message) = serde_json::from_str::<Value>(&event.data) else {
                    continue;
                };
                if let Some(response) = wire::find_response(&message, id) {
                    return Ok(response.clone());
                }
            }
            Err(DiscoveryError::NotMcp(format!(
                "the event stream ended without answering {method}"
            )))
        };
        let ((), response) = tokio::try_join!(Self::post(exchange, endpoint, &message), wait)?;
        Ok(response)
    }

    async fn notify(&mut self, method: &'static str) -> Result<(), DiscoveryError> {
        Self::post(self.exchange, &self.endpoint, &wire::notification(method)).await
    }

    fn negotiated(&mut self, _version: &str) {}

    async fn close(&mut self) {
        // Dropping the stream closes the session.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_is_resolved_against_the_sse_url_and_kept_on_its_origin() {
        let sse = Url::parse("https://mcp.example.com/sse?key=1").unwrap();
        let relative = endpoint(&sse, "/messages?session_id=abc", true).unwrap();
        assert_eq!(
            relative.as_str(),
            "https://mcp.example.com/messages?session_id=abc"
        );
        let absolute = endpoint(&sse, "https://mcp.example.com:443/m", true).unwrap();
        assert_eq!(absolute.as_str(), "https://mcp.example.com/m");
        for foreign in [
            "https://evil.example.com/messages",
            "http://mcp.example.com/messages",
            "https://mcp.example.com:8443/messages",
            "//169.254.169.254/latest",
            "https://user@mcp.example.com/messages",
        ] {
            assert!(
                matches!(
                    endpoint(&sse, foreign, true),
                    Err(DiscoveryError::ForeignEndpoint)
                ),
                "{foreign}"
            );
        }
    }
}
