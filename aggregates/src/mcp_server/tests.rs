use std::collections::BTreeMap;

use cqrs_es::test::TestFramework;
use serde_json::json;

use super::*;

const OWNER: Uuid = Uuid::from_u128(0xA);
const STRANGER: Uuid = Uuid::from_u128(0xB);

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
}

fn server() -> TestFramework<McpServer> {
    TestFramework::with(())
}

fn sealed(value: &str) -> SealedSecret {
    SealedSecret::new(format!("sealed:test:{value}"))
}

fn http_input(token: SecretInput) -> McpServerInput {
    McpServerInput {
        name: "github".into(),
        transport: McpTransport::Http,
        command: None,
        args: Vec::new(),
        env: BTreeMap::new(),
        url: Some("https://mcp.example.com/mcp".into()),
        headers: BTreeMap::from([("Authorization".to_string(), token)]),
        project_id: None,
    }
}

fn http_config(token: &str) -> McpServerConfig {
    McpServerConfig {
        name: "github".into(),
        transport: McpTransport::Http,
        command: None,
        args: Vec::new(),
        env: BTreeMap::new(),
        url: Some("https://mcp.example.com/mcp".into()),
        headers: BTreeMap::from([("Authorization".to_string(), sealed(token))]),
        project_id: None,
    }
}

fn configured() -> McpServerEvent {
    McpServerEvent::McpServerConfigured {
        owner_id: OWNER,
        config: http_config("one"),
        enabled: true,
        configured_at: at(0),
    }
}

fn configure(input: McpServerInput) -> McpServerCommand {
    McpServerCommand::Configure {
        owner_id: OWNER,
        input,
        enabled: true,
        at: at(0),
    }
}

fn update(actor: Uuid, input: McpServerInput, enabled: Option<bool>) -> McpServerCommand {
    McpServerCommand::Update {
        actor,
        input,
        enabled,
        at: at(10),
    }
}

fn invalid_fields(error: McpServerError) -> Vec<&'static str> {
    match error {
        McpServerError::Invalid(errors) => errors.iter().map(|e| e.field).collect(),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn error_of(given: Vec<McpServerEvent>, command: McpServerCommand) -> McpServerError {
    let mut aggregate = McpServer::default();
    for event in given {
        aggregate.apply(event);
    }
    let sink = cqrs_es::event_sink::EventSink::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime
        .block_on(aggregate.handle(command, &(), &sink))
        .expect_err("the command should be refused")
}

#[test]
fn configuring_an_http_server_records_its_sealed_headers() {
    server()
        .given_no_previous_events()
        .when(configure(http_input(SecretInput::Sealed(sealed("one")))))
        .then_expect_events(vec![configured()]);
}

#[test]
fn a_stdio_server_needs_a_command_and_may_not_have_a_url_or_headers() {
    let input = McpServerInput {
        transport: McpTransport::Stdio,
        ..http_input(SecretInput::Sealed(sealed("one")))
    };
    let fields = invalid_fields(error_of(vec![], configure(input)));
    assert_eq!(fields, vec!["command", "url", "headers"]);
}

#[test]
fn a_remote_server_needs_an_http_url_and_may_not_have_a_command_args_or_env() {
    for (url, problem) in [
        (None, "missing"),
        (Some("ftp://example.com/"), "not http"),
        (Some("https://user:pw@example.com/"), "credentials"),
        (Some("not a url"), "unparseable"),
    ] {
        let input = McpServerInput {
            url: url.map(Into::into),
            ..http_input(SecretInput::Sealed(sealed("one")))
        };
        assert_eq!(
            invalid_fields(error_of(vec![], configure(input))),
            vec!["url"],
            "{problem}"
        );
    }
    let input = McpServerInput {
        command: Some("npx".into()),
        args: vec!["x".into()],
        env: BTreeMap::from([("TOKEN".into(), SecretInput::Sealed(sealed("t")))]),
        ..http_input(SecretInput::Sealed(sealed("one")))
    };
    assert_eq!(
        invalid_fields(error_of(vec![], configure(input))),
        vec!["command", "args", "env"]
    );
}

#[test]
fn names_are_short_and_made_of_letters_digits_dashes_and_underscores() {
    for name in ["", "has space", "dot.ted", "ünïcode", &"x".repeat(65)] {
        let input = McpServerInput {
            name: name.into(),
            ..http_input(SecretInput::Sealed(sealed("one")))
        };
        assert_eq!(
            invalid_fields(error_of(vec![], configure(input))),
            vec!["name"],
            "{name:?}"
        );
    }
}

#[test]
fn bad_secret_names_reserved_headers_and_unsealed_values_are_refused() {
    let bad_env = McpServerInput {
        transport: McpTransport::Stdio,
        command: Some("npx".into()),
        url: None,
        headers: BTreeMap::new(),
        env: BTreeMap::from([("1BAD".into(), SecretInput::Sealed(sealed("v")))]),
        ..http_input(SecretInput::Keep)
    };
    assert_eq!(
        invalid_fields(error_of(vec![], configure(bad_env))),
        vec!["env"]
    );
    let reserved = McpServerInput {
        headers: BTreeMap::from([("Host".into(), SecretInput::Sealed(sealed("v")))]),
        ..http_input(SecretInput::Keep)
    };
    assert_eq!(
        invalid_fields(error_of(vec![], configure(reserved))),
        vec!["headers"]
    );
    let clear = http_input(SecretInput::Sealed(SealedSecret::new(
        "Bearer clear".into(),
    )));
    assert_eq!(
        invalid_fields(error_of(vec![], configure(clear))),
        vec!["headers"]
    );
}

#[test]
fn a_clear_secret_value_is_checked_without_being_quoted() {
    let error = spec::check_secret_value("headers", "Authorization", "Bearer a\r\nX-Evil: 1")
        .expect("a header value with a line break is refused");
    assert!(!error.message.contains("Bearer"), "{}", error.message);
    assert!(spec::check_secret_value("env", "TOKEN", &"x".repeat(9000)).is_some());
    assert!(spec::check_secret_value("env", "TOKEN", "fine").is_none());
}

#[test]
fn three_stars_keep_the_stored_value_and_are_refused_where_nothing_is_stored() {
    // "***" under the stored key: nothing changed, nothing recorded.
    server()
        .given(vec![configured()])
        .when(update(OWNER, http_input(SecretInput::Keep), None))
        .then_expect_events(vec![]);
    // A new value replaces it.
    server()
        .given(vec![configured()])
        .when(update(
            OWNER,
            http_input(SecretInput::Sealed(sealed("two"))),
            None,
        ))
        .then_expect_events(vec![McpServerEvent::McpServerUpdated {
            config: http_config("two"),
            updated_at: at(10),
        }]);
    // "***" on creation, or under a key never stored, keeps nothing.
    assert_eq!(
        invalid_fields(error_of(vec![], configure(http_input(SecretInput::Keep)))),
        vec!["headers"]
    );
    let other_key = McpServerInput {
        headers: BTreeMap::from([("X-Other".into(), SecretInput::Keep)]),
        ..http_input(SecretInput::Keep)
    };
    assert_eq!(
        invalid_fields(error_of(vec![configured()], update(OWNER, other_key, None))),
        vec!["headers"]
    );
}

#[test]
fn a_put_that_leaves_out_a_header_removes_it() {
    let input = McpServerInput {
        headers: BTreeMap::new(),
        ..http_input(SecretInput::Keep)
    };
    server()
        .given(vec![configured()])
        .when(update(OWNER, input, None))
        .then_expect_events(vec![McpServerEvent::McpServerUpdated {
            config: McpServerConfig {
                headers: BTreeMap::new(),
                ..http_config("one")
            },
            updated_at: at(10),
        }]);
}

#[test]
fn enabling_and_disabling_record_only_changes() {
    server()
        .given(vec![configured()])
        .when(McpServerCommand::Enable {
            actor: OWNER,
            at: at(5),
        })
        .then_expect_events(vec![]);
    server()
        .given(vec![configured()])
        .when(McpServerCommand::Disable {
            actor: OWNER,
            at: at(5),
        })
        .then_expect_events(vec![McpServerEvent::McpServerDisabled {
            disabled_at: at(5),
        }]);
    server()
        .given(vec![configured()])
        .when(update(OWNER, http_input(SecretInput::Keep), Some(false)))
        .then_expect_events(vec![McpServerEvent::McpServerDisabled {
            disabled_at: at(10),
        }]);
}

#[test]
fn someone_elses_or_a_removed_server_is_not_found_for_every_command() {
    let removed = McpServerEvent::McpServerRemoved { removed_at: at(5) };
    let commands = |actor| {
        vec![
            update(actor, http_input(SecretInput::Keep), None),
            McpServerCommand::Enable { actor, at: at(9) },
            McpServerCommand::Disable { actor, at: at(9) },
            McpServerCommand::Remove { actor, at: at(9) },
            McpServerCommand::RecordDiscoveryFailure {
                actor,
                reason: "x".into(),
                at: at(9),
            },
        ]
    };
    for command in commands(STRANGER) {
        assert_eq!(
            error_of(vec![configured()], command),
            McpServerError::NotFound
        );
    }
    for command in commands(OWNER) {
        assert_eq!(
            error_of(vec![configured(), removed.clone()], command),
            McpServerError::NotFound
        );
    }
}

#[test]
fn discovered_tools_are_recorded_and_stdio_servers_cannot_be_discovered() {
    let tool = McpTool {
        name: "search".into(),
        description: Some("Searches".into()),
        input_schema: json!({"type": "object"}),
    };
    let discovery = |actor| McpServerCommand::RecordDiscovery {
        actor,
        tools: vec![tool.clone()],
        protocol_version: "2025-06-18".into(),
        server_name: Some("fake".into()),
        server_version: None,
        at: at(20),
    };
    server()
        .given(vec![configured()])
        .when(discovery(OWNER))
        .then_expect_events(vec![McpServerEvent::McpToolsDiscovered {
            tools: vec![tool.clone()],
            protocol_version: "2025-06-18".into(),
            server_name: Some("fake".into()),
            server_version: None,
            discovered_at: at(20),
        }]);
    let stdio = McpServerEvent::McpServerConfigured {
        owner_id: OWNER,
        config: McpServerConfig {
            transport: McpTransport::Stdio,
            command: Some("npx".into()),
            url: None,
            headers: BTreeMap::new(),
            ..http_config("one")
        },
        enabled: true,
        configured_at: at(0),
    };
    assert_eq!(
        error_of(vec![stdio], discovery(OWNER)),
        McpServerError::NotDiscoverable
    );
}

#[test]
fn a_tool_list_too_large_for_one_event_is_refused() {
    let tools: Vec<McpTool> = (0..TOOLS_MAX + 1)
        .map(|i| McpTool {
            name: format!("tool{i}"),
            description: None,
            input_schema: json!({"type": "object"}),
        })
        .collect();
    assert!(check_discovered_tools(&tools).is_err());
    let big = vec![
        McpTool {
            name: "big".into(),
            description: Some("d".repeat(TOOLS_MAX_BYTES)),
            input_schema: json!({"type": "object"}),
        };
        1
    ];
    assert!(check_discovered_tools(&big).is_err());
    let not_an_object = vec![McpTool {
        name: "odd".into(),
        description: None,
        input_schema: json!([1]),
    }];
    assert!(check_discovered_tools(&not_an_object).is_err());
}
