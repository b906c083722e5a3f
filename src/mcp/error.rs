//! Why a discovery failed, in words fit for an API error message.
//!
//! No variant holds a configured header value, the URL's query or its
//! userinfo: hosts come from `Url::host_str`, and text the server chose (a
//! JSON-RPC error message, a protocol version) goes through
//! [`Redactor::clean`] first, which blanks the header values in case a
//! server echoes them.

use std::error::Error as _;
use std::time::Duration;

use reqwest::StatusCode;

use super::address_guard::RefusedAddress;

/// Why `McpClient::discover` failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DiscoveryError {
    /// The configuration cannot be used as given (URL, scheme, header).
    #[error("{0}")]
    InvalidTarget(String),
    /// The SSRF guard refused the address (see `CHRONICLE_MCP_ALLOW_PRIVATE`).
    #[error(transparent)]
    RefusedAddress(#[from] RefusedAddress),
    /// No connection: name unknown, connection refused, TLS failure.
    #[error("{0}")]
    Unreachable(String),
    /// The connection broke off or the request failed in flight.
    #[error("{0}")]
    Transport(String),
    #[error("timed out after {} s", .0.as_secs_f64())]
    Timeout(Duration),
    /// A non-2xx answer; a 3xx is one too since redirects are not followed.
    #[error("the server answered {status}{}", if .status.is_redirection() { "; redirects are not followed" } else { "" })]
    Status { status: StatusCode },
    #[error("the server's answer exceeds {limit} bytes")]
    TooLarge { limit: usize },
    /// The server does not speak MCP as expected.
    #[error("not an MCP server: {0}")]
    NotMcp(String),
    /// A JSON-RPC error answered one of our requests.
    #[error("the server refused {method}: {message}")]
    Refused {
        method: &'static str,
        code: i64,
        message: String,
    },
    #[error("unsupported protocol version {0}")]
    UnsupportedProtocol(String),
    /// The legacy transport's `endpoint` event points to another origin.
    #[error("the server's message endpoint is not on the origin of its SSE URL")]
    ForeignEndpoint,
    #[error("the server lists more than {0} tools")]
    TooManyTools(usize),
    #[error("the server's tool list runs over more than {0} pages")]
    TooManyPages(usize),
}

impl DiscoveryError {
    /// Whether the SSRF guard refused the server's address.
    pub fn is_refused_address(&self) -> bool {
        matches!(self, Self::RefusedAddress(_))
    }

    /// A short reason for a failed request to `host`, read from the error's
    /// causes (never its Display, which may hold the URL).
    pub(crate) fn from_reqwest(host: &str, err: &reqwest::Error) -> Self {
        let mut source = err.source();
        while let Some(cause) = source {
            if let Some(refused) = cause.downcast_ref::<RefusedAddress>() {
                return Self::RefusedAddress(refused.clone());
            }
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::ConnectionRefused {
                    return Self::Unreachable(format!("connection refused by {host}"));
                }
            }
            if cause
                .downcast_ref::<super::address_guard::Unresolved>()
                .is_some()
            {
                return Self::Unreachable(format!("could not resolve {host}"));
            }
            source = cause.source();
        }
        if err.is_connect() {
            Self::Unreachable(format!("could not connect to {host}"))
        } else if err.is_timeout() {
            Self::Unreachable(format!("timed out connecting to {host}"))
        } else if err.is_body() || err.is_decode() {
            Self::Transport(format!("the connection to {host} broke off"))
        } else {
            Self::Transport(format!("the request to {host} failed"))
        }
    }
}

/// The most characters of server-chosen text an error quotes.
const MAX_QUOTE_CHARS: usize = 200;

/// Blanks secrets out of text a server chose, before an error quotes it.
#[derive(Clone, Default)]
pub(crate) struct Redactor {
    secrets: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

impl Redactor {
    pub(crate) fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut secrets: Vec<String> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        // Longest first, so a secret containing another is blanked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self { secrets }
    }

    /// `text` with the secrets blanked, control characters dropped and
    /// cut to [`MAX_QUOTE_CHARS`].
    pub(crate) fn clean(&self, text: &str) -> String {
        let mut text = text.to_string();
        for secret in &self.secrets {
            text = text.replace(secret.as_str(), "[redacted]");
        }
        let mut cleaned: String = text
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_QUOTE_CHARS)
            .collect();
        if text.chars().filter(|c| !c.is_control()).count() > MAX_QUOTE_CHARS {
            cleaned.push('…');
        }
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_short_reasons() {
        assert_eq!(
            DiscoveryError::Timeout(Duration::from_secs(15)).to_string(),
            "timed out after 15 s"
        );
        assert_eq!(
            DiscoveryError::Timeout(Duration::from_millis(1500)).to_string(),
            "timed out after 1.5 s"
        );
        assert_eq!(
            DiscoveryError::Status {
                status: StatusCode::UNAUTHORIZED
            }
            .to_string(),
            "the server answered 401 Unauthorized"
        );
        assert_eq!(
            DiscoveryError::Status {
                status: StatusCode::FOUND
            }
            .to_string(),
            "the server answered 302 Found; redirects are not followed"
        );
        assert_eq!(
            DiscoveryError::TooLarge { limit: 4194304 }.to_string(),
            "the server's answer exceeds 4194304 bytes"
        );
    }

    #[test]
    fn quoted_server_text_loses_secrets_control_characters_and_length() {
        let redactor = Redactor::new(["Bearer tok-123".to_string(), "tok".to_string()]);
        assert_eq!(
            redactor.clean("bad key Bearer tok-123\n(tok)"),
            "bad key [redacted]([redacted])"
        );
        let long = "x".repeat(500);
        let cleaned = redactor.clean(&long);
        assert_eq!(cleaned.chars().count(), MAX_QUOTE_CHARS + 1);
        assert!(cleaned.ends_with('…'));
    }
}
