//! What a valid MCP server configuration is.
//!
//! A configuration arrives as [`McpServerInput`] (secret values already
//! sealed by the caller, or marked [`SecretInput::Keep`]) and leaves
//! [`validate`] as an [`McpServerConfig`], the form events carry. Every rule
//! here reads only clear, non-secret fields: secret values are checked by
//! [`check_secret_value`] before they are sealed, and are opaque afterwards.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::validation::{FieldError, FieldErrors};

/// Longest server name, in characters.
pub const NAME_MAX_CHARS: usize = 64;
/// Longest `command`, in characters.
pub const COMMAND_MAX_CHARS: usize = 1024;
/// Most `args`.
pub const ARGS_MAX: usize = 64;
/// Longest single argument, in characters.
pub const ARG_MAX_CHARS: usize = 4096;
/// Most entries in `env`, and in `headers`.
pub const SECRET_ENTRIES_MAX: usize = 64;
/// Longest `env` variable or header name, in characters.
pub const SECRET_KEY_MAX_CHARS: usize = 128;
/// Longest clear `env` or header value, in characters.
pub const SECRET_VALUE_MAX_CHARS: usize = 8192;
/// Longest `url`, in characters.
pub const URL_MAX_CHARS: usize = 2048;

/// The prefix every sealed value starts with. The aggregate refuses anything
/// else in `env` and `headers`, so a clear value can never reach an event.
pub const SEALED_PREFIX: &str = "sealed:";

/// Headers the HTTP client sets itself; configuring them would break or
/// smuggle requests.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
    "content-type",
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
];

/// How an MCP client reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum McpTransport {
    /// A local process the client starts (`command`, `args`, `env`); never
    /// run by Chronicle.
    Stdio,
    /// The legacy HTTP+SSE transport (protocol 2024-11-05).
    Sse,
    /// Streamable HTTP.
    Http,
}

impl McpTransport {
    /// The name clients and the API use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdio => "stdio",
            Self::Sse => "sse",
            Self::Http => "http",
        }
    }

    /// Whether the server is reached over the network (and can be discovered).
    pub fn is_remote(self) -> bool {
        !matches!(self, Self::Stdio)
    }
}

/// A secret value, sealed (encrypted) by the caller; the aggregate never
/// sees it in the clear. `Debug` does not print it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SealedSecret(String);

impl SealedSecret {
    /// Wraps an already sealed value.
    pub fn new(sealed: String) -> Self {
        Self(sealed)
    }

    /// The sealed form, to store or to open.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealedSecret(..)")
    }
}

/// A secret's value as a command carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretInput {
    /// Keep the value stored under this key (the client sent `"***"`).
    Keep,
    /// A new value, already sealed.
    Sealed(SealedSecret),
}

/// A configuration as the caller asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpServerInput {
    pub name: String,
    pub transport: McpTransport,
    pub command: Option<String>,
    pub args: Vec<String>,
    pub env: BTreeMap<String, SecretInput>,
    pub url: Option<String>,
    pub headers: BTreeMap<String, SecretInput>,
    pub project_id: Option<Uuid>,
}

/// A valid configuration, as events carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpServerConfig {
    /// Unique among the owner's servers; letters, digits, `-` and `_`.
    pub name: String,
    pub transport: McpTransport,
    /// `stdio` only: the program clients start.
    pub command: Option<String>,
    /// `stdio` only: its arguments.
    pub args: Vec<String>,
    /// `stdio` only: environment variables, values sealed.
    pub env: BTreeMap<String, SealedSecret>,
    /// `http` and `sse` only: the server's address.
    pub url: Option<String>,
    /// `http` and `sse` only: request headers, values sealed.
    pub headers: BTreeMap<String, SealedSecret>,
    /// The project it belongs to, if any.
    pub project_id: Option<Uuid>,
}

/// Checks one clear secret value before it is sealed. The message names the
/// key, never the value.
pub fn check_secret_value(field: &'static str, key: &str, value: &str) -> Option<FieldError> {
    let problem = if value.chars().count() > SECRET_VALUE_MAX_CHARS {
        format!("at most {SECRET_VALUE_MAX_CHARS} characters")
    } else if field == "headers" && value.chars().any(|c| c.is_control() && c != '\t') {
        "must not contain control characters (line breaks included)".to_string()
    } else if value.contains('\0') {
        "must not contain NUL".to_string()
    } else {
        return None;
    };
    Some(FieldError::new(
        field,
        format!("the value of `{}`: {problem}", printable(key)),
    ))
}

/// Validates `input`; `stored` holds the secrets `"***"` may keep (the
/// server's current configuration, if it has one). Reports every bad field.
pub fn validate(
    input: McpServerInput,
    stored: Option<&McpServerConfig>,
) -> Result<McpServerConfig, Vec<FieldError>> {
    let mut errors = FieldErrors::default();
    let name = errors.check(validate_name(&input.name));
    let remote = input.transport.is_remote();
    let transport = input.transport.as_str();
    let wrong_transport = |field: &'static str, wanted: &str| {
        FieldError::new(
            field,
            format!("is for {wanted} servers only; a `{transport}` server must not have it"),
        )
    };

    let command = if remote {
        if input.command.is_some() {
            errors.check::<()>(Err(wrong_transport("command", "stdio")));
        }
        Some(None)
    } else {
        errors.check(validate_command(input.command.as_deref()))
    };
    if remote && !input.args.is_empty() {
        errors.check::<()>(Err(wrong_transport("args", "stdio")));
    }
    let args = errors.check(validate_args(&input.args));
    if remote && !input.env.is_empty() {
        errors.check::<()>(Err(wrong_transport("env", "stdio")));
    }
    let env = errors.check(resolve_secrets(
        "env",
        input.env,
        stored.map(|s| &s.env),
        is_env_name,
        "a letter or `_` followed by letters, digits or `_`",
    ));

    let url = if remote {
        errors.check(validate_url(input.url.as_deref()))
    } else {
        if input.url.is_some() {
            errors.check::<()>(Err(wrong_transport("url", "http and sse")));
        }
        Some(None)
    };
    if !remote && !input.headers.is_empty() {
        errors.check::<()>(Err(wrong_transport("headers", "http and sse")));
    }
    let headers = errors.check(resolve_secrets(
        "headers",
        input.headers,
        stored.map(|s| &s.headers),
        is_header_name,
        "an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)",
    ));
    if let Some(headers) = &headers {
        if let Some(reserved) = headers
            .keys()
            .find(|key| RESERVED_HEADERS.contains(&key.to_ascii_lowercase().as_str()))
        {
            errors.check::<()>(Err(FieldError::new(
                "headers",
                format!("`{reserved}` is set by the MCP client itself and cannot be configured"),
            )));
        }
    }

    let errors = errors.into_vec();
    match (name, command, args, env, url, headers) {
        (Some(name), Some(command), Some(args), Some(env), Some(url), Some(headers))
            if errors.is_empty() =>
        {
            Ok(McpServerConfig {
                name,
                transport: input.transport,
                command,
                args,
                env,
                url,
                headers,
                project_id: input.project_id,
            })
        }
        _ => Err(errors),
    }
}

fn validate_name(name: &str) -> Result<String, FieldError> {
    let len = name.chars().count();
    if len == 0 || len > NAME_MAX_CHARS {
        return Err(FieldError::new(
            "name",
            format!("name must be 1 to {NAME_MAX_CHARS} characters"),
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(FieldError::new(
            "name",
            "name may contain only letters, digits, `-` and `_` (it is a key of the exported \
             `mcpServers` document and a prefix of tool names)",
        ));
    }
    Ok(name.to_owned())
}

fn validate_command(command: Option<&str>) -> Result<Option<String>, FieldError> {
    let Some(command) = command.map(str::trim).filter(|c| !c.is_empty()) else {
        return Err(FieldError::new(
            "command",
            "is required for a `stdio` server: the program MCP clients start",
        ));
    };
    if command.chars().count() > COMMAND_MAX_CHARS || command.chars().any(char::is_control) {
        return Err(FieldError::new(
            "command",
            format!("must be at most {COMMAND_MAX_CHARS} characters, without control characters"),
        ));
    }
    Ok(Some(command.to_owned()))
}

fn validate_args(args: &[String]) -> Result<Vec<String>, FieldError> {
    if args.len() > ARGS_MAX {
        return Err(FieldError::new(
            "args",
            format!("at most {ARGS_MAX} arguments"),
        ));
    }
    if let Some(index) = args
        .iter()
        .position(|arg| arg.chars().count() > ARG_MAX_CHARS || arg.contains('\0'))
    {
        return Err(FieldError::new(
            "args",
            format!("argument {index} must be at most {ARG_MAX_CHARS} characters, without NUL"),
        ));
    }
    Ok(args.to_vec())
}

fn validate_url(url: Option<&str>) -> Result<Option<String>, FieldError> {
    let Some(url) = url.map(str::trim).filter(|u| !u.is_empty()) else {
        return Err(FieldError::new(
            "url",
            "is required for `http` and `sse` servers",
        ));
    };
    let invalid = |why: &str| Err(FieldError::new("url", why.to_string()));
    if url.chars().count() > URL_MAX_CHARS {
        return invalid(&format!("must be at most {URL_MAX_CHARS} characters"));
    }
    let Ok(parsed) = url::Url::parse(url) else {
        return invalid("must be an absolute http(s) URL");
    };
    if !matches!(parsed.scheme(), "http" | "https") {
        return invalid("must be an http or https URL");
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return invalid("must name a host");
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return invalid("must not carry credentials; put them in `headers`, which are sealed");
    }
    if parsed.fragment().is_some() {
        return invalid("must not have a fragment");
    }
    Ok(Some(parsed.to_string()))
}

/// Resolves `"***"` to the stored value and checks every key.
fn resolve_secrets(
    field: &'static str,
    input: BTreeMap<String, SecretInput>,
    stored: Option<&BTreeMap<String, SealedSecret>>,
    valid_key: fn(&str) -> bool,
    key_rule: &str,
) -> Result<BTreeMap<String, SealedSecret>, FieldError> {
    if input.len() > SECRET_ENTRIES_MAX {
        return Err(FieldError::new(
            field,
            format!("at most {SECRET_ENTRIES_MAX} entries"),
        ));
    }
    let mut resolved = BTreeMap::new();
    for (key, value) in input {
        if key.chars().count() > SECRET_KEY_MAX_CHARS || !valid_key(&key) {
            return Err(FieldError::new(
                field,
                format!(
                    "`{}` is not a valid name: at most {SECRET_KEY_MAX_CHARS} characters, {key_rule}",
                    printable(&key)
                ),
            ));
        }
        let sealed = match value {
            SecretInput::Sealed(sealed) if sealed.as_str().starts_with(SEALED_PREFIX) => sealed,
            SecretInput::Sealed(_) => {
                // A programming error upstream, never a client's: refuse to
                // record what may be a clear value.
                return Err(FieldError::new(
                    field,
                    format!("the value of `{key}` was not sealed"),
                ));
            }
            SecretInput::Keep => match stored.and_then(|stored| stored.get(&key)) {
                Some(sealed) => sealed.clone(),
                None => {
                    return Err(FieldError::new(
                        field,
                        format!(
                            "`{key}` is \"***\", which keeps a stored value, and none is stored \
                             under that name"
                        ),
                    ))
                }
            },
        };
        resolved.insert(key, sealed);
    }
    Ok(resolved)
}

fn is_env_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An RFC 9110 token.
fn is_header_name(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
}

/// A key as an error message may quote it: cut short, controls escaped.
fn printable(key: &str) -> String {
    let cut: String = key.chars().take(SECRET_KEY_MAX_CHARS).collect();
    cut.escape_debug().to_string()
}
