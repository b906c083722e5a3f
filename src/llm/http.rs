//! What every upstream shares: one `reqwest::Client` per provider with
//! connect and read timeouts, bounded retries before the first byte, and
//! error messages that never carry a key or an upstream's body.

use std::time::Duration;

use futures::StreamExt;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Client, RequestBuilder, Response, StatusCode};

use super::UpstreamError;
use crate::config::LlmSettings;

/// The longest `Retry-After` we honour; a longer one fails at once.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);
/// First backoff; doubled for each further attempt.
const BASE_BACKOFF: Duration = Duration::from_millis(200);
/// How much of an error body we read to find its error type.
const ERROR_BODY_LIMIT: usize = 8 * 1024;

/// The client of one provider, with the configured timeouts.
pub(crate) fn client(settings: &LlmSettings) -> Result<Client, UpstreamError> {
    Client::builder()
        .connect_timeout(settings.connect_timeout)
        .read_timeout(settings.idle_timeout)
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .map_err(|_| UpstreamError::failed("could not build the upstream HTTP client"))
}

/// How an upstream call is retried.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    pub retries: u32,
    /// A bound on the whole exchange up to the response head.
    pub head_timeout: Duration,
}

impl RetryPolicy {
    pub fn from_settings(settings: &LlmSettings) -> Self {
        Self {
            retries: settings.retries,
            // Connecting plus a silent wait for the head, per attempt.
            head_timeout: settings.connect_timeout + settings.idle_timeout,
        }
    }
}

/// Sends the request built by `build` until it answers 2xx, retrying
/// connect errors, 429 and 5xx at most `policy.retries` times. Nothing of
/// the body has been read when this returns, so no retry can repeat output.
pub(crate) async fn send(
    policy: RetryPolicy,
    provider: &'static str,
    build: impl Fn() -> RequestBuilder,
) -> Result<Response, UpstreamError> {
    let mut attempt = 0;
    loop {
        let outcome = tokio::time::timeout(policy.head_timeout, build().send()).await;
        let last = attempt >= policy.retries;
        let wait = match outcome {
            Err(_) => {
                return Err(UpstreamError::failed(format!(
                    "{provider} did not answer in time"
                )))
            }
            Ok(Ok(response)) if response.status().is_success() => return Ok(response),
            Ok(Ok(response)) => {
                let status = response.status();
                let retryable = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
                let wait = retry_after(response.headers()).unwrap_or(backoff(attempt));
                if !retryable || last || wait > MAX_RETRY_AFTER {
                    return Err(failure(provider, response).await);
                }
                tracing::warn!(
                    upstream = provider,
                    status = status.as_u16(),
                    attempt,
                    "upstream refused; retrying"
                );
                wait
            }
            Ok(Err(err)) if err.is_connect() && !last => {
                tracing::warn!(
                    upstream = provider,
                    attempt,
                    "cannot connect to upstream; retrying"
                );
                backoff(attempt)
            }
            Ok(Err(err)) => return Err(transport_error(provider, &err)),
        };
        metrics::counter!("chronicle_llm_retries_total", "provider" => provider).increment(1);
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

fn backoff(attempt: u32) -> Duration {
    BASE_BACKOFF * 2u32.saturating_pow(attempt.min(5))
}

/// The largest non-streamed answer we read.
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// A non-streamed answer as JSON, read up to [`MAX_ANSWER_BYTES`].
pub(crate) async fn json_answer<T: serde::de::DeserializeOwned>(
    provider: &str,
    response: Response,
) -> Result<T, UpstreamError> {
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|err| transport_error(provider, &err))?;
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(UpstreamError::failed(format!(
                "{provider} sent an answer over {MAX_ANSWER_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body)
        .map_err(|_| UpstreamError::failed(format!("{provider} sent an answer we cannot read")))
}

/// `Retry-After` in seconds (HTTP dates are not worth honouring here).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

/// A short reason for a transport failure; never the URL's query or any header.
pub(crate) fn transport_error(provider: &str, err: &reqwest::Error) -> UpstreamError {
    let reason = if err.is_connect() {
        "could not connect to"
    } else if err.is_timeout() {
        "timed out waiting for"
    } else if err.is_body() || err.is_decode() {
        "broke off the answer from"
    } else {
        "failed to reach"
    };
    UpstreamError::failed(format!("{reason} {provider}"))
}

/// The upstream's status and, when its body names one, its error type
/// (`overloaded_error`, `invalid_api_key`): a word, never its message,
/// which may quote the request or part of the key.
async fn failure(provider: &str, response: Response) -> UpstreamError {
    let status = response.status();
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Ok(Some(Ok(chunk))) =
        tokio::time::timeout(Duration::from_secs(2), chunks.next()).await
    {
        body.extend_from_slice(&chunk);
        if body.len() >= ERROR_BODY_LIMIT {
            break;
        }
    }
    let kind = error_kind(&body);
    tracing::warn!(
        upstream = provider,
        status = status.as_u16(),
        error.kind = kind.as_deref().unwrap_or("-"),
        "upstream answered an error"
    );
    let mut message = format!("{provider} answered {}", status.as_u16());
    if let Some(kind) = kind {
        message.push_str(&format!(" ({kind})"));
    }
    UpstreamError::Failed {
        status: Some(status.as_u16()),
        message,
    }
}

/// `error.type` or `error.code` when it is a plain identifier.
pub(crate) fn error_kind(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    let kind = [error.get("type"), error.get("code")]
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .find(|kind| {
            !kind.is_empty()
                && kind.len() <= 64
                && kind
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        })
        .map(str::to_string);
    kind
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_waits_follow_retry_after_seconds_or_a_doubling_backoff() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(
            retry_after(&headers),
            None,
            "dates fall back to the backoff"
        );
        assert_eq!(backoff(0), Duration::from_millis(200));
        assert_eq!(backoff(1), Duration::from_millis(400));
        assert_eq!(backoff(50), backoff(5), "the backoff is capped");
        assert!(backoff(5) < MAX_RETRY_AFTER);
    }

    #[test]
    fn only_an_identifier_is_taken_from_an_error_body() {
        assert_eq!(
            error_kind(br#"{"type":"error","error":{"type":"overloaded_error","message":"x"}}"#),
            Some("overloaded_error".into())
        );
        assert_eq!(
            error_kind(br#"{"error":{"message":"Incorrect API key sk-abc","type":null,"code":"invalid_api_key"}}"#),
            Some("invalid_api_key".into())
        );
        assert_eq!(
            error_kind(br#"{"error":{"type":"key sk-abc is wrong"}}"#),
            None
        );
        assert_eq!(error_kind(b"<html>bad gateway</html>"), None);
    }
}
