//! The JSON Schemas in `docs/schemas/` describe the payloads the aggregates
//! actually write: every event, serialised as the event store keeps it, is
//! checked against `<event_type>.v1.json`. A field added, renamed or made
//! nullable in Rust without its schema (or the other way round) fails here.
//!
//! The checker covers the part of JSON Schema the payload schemas use
//! (`type`, `enum`, `minLength`, `minimum`, `properties`, `required`,
//! `additionalProperties: false`); the full schemas, envelope included, are
//! checked by any draft 2020-12 validator.

use chronicle_aggregates::chat_session::{ChatSessionEvent, Role, ToolStatus, ToolType, Usage};
use chronicle_aggregates::{ProjectEvent, TaskEvent};
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

// The same checker the aggregate properties use (`problems` is theirs).
#[path = "properties/schema.rs"]
#[allow(dead_code)]
mod checker;
use checker::{schema, violations};

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + seconds, 123_456_000).unwrap()
}

/// Checks one event's payload (the enum's inner object, as the relay
/// publishes it) against its schema, and that the schema lists exactly the
/// payload's fields as required.
fn check<E: DomainEvent + Serialize>(event: &E) {
    let event_type = event.event_type();
    assert_eq!(event.event_version(), "1.0");
    let stored = serde_json::to_value(event).unwrap();
    let payload = &stored[&event_type];
    assert!(payload.is_object(), "{event_type}: {stored}");
    let schema = schema(&event_type);
    let problems = violations(&schema, payload, &event_type);
    assert!(
        problems.is_empty(),
        "{}\npayload: {payload}",
        problems.join("\n")
    );
    let mut required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut fields: Vec<&str> = payload
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    required.sort_unstable();
    fields.sort_unstable();
    assert_eq!(
        required, fields,
        "{event_type}: required fields differ from the payload"
    );
}

const OWNER: Uuid = Uuid::from_u128(0x02fa_81bb);
const PROJECT: Uuid = Uuid::from_u128(0x044b_50ba);

#[test]
fn project_events_match_their_published_schemas() {
    for event in [
        ProjectEvent::ProjectCreated {
            owner_id: OWNER,
            name: "Chronicle".into(),
            description: Some("the backend".into()),
            settings: json!({"default_model": "claude", "n": [1, 2.5]}),
            created_at: at(0),
        },
        ProjectEvent::ProjectCreated {
            owner_id: OWNER,
            name: "Chronicle".into(),
            description: None,
            settings: json!({}),
            created_at: at(0),
        },
        ProjectEvent::ProjectUpdated {
            name: "Chronicle".into(),
            description: None,
            settings: json!({}),
            updated_at: at(1),
        },
        ProjectEvent::ProjectDeleted { deleted_at: at(2) },
    ] {
        check(&event);
    }
}

#[test]
fn chat_session_events_match_their_published_schemas() {
    let full_and_empty = [
        ChatSessionEvent::ChatSessionStarted {
            owner_id: OWNER,
            project_id: Some(PROJECT),
            title: Some("Trip".into()),
            model: "claude-sonnet".into(),
            system_prompt: Some("Be brief.".into()),
            created_at: at(0),
        },
        ChatSessionEvent::ChatSessionStarted {
            owner_id: OWNER,
            project_id: None,
            title: None,
            model: "gpt".into(),
            system_prompt: None,
            created_at: at(0),
        },
        ChatSessionEvent::ChatSessionUpdated {
            title: Some("Trip".into()),
            project_id: Some(PROJECT),
            model: "gpt".into(),
            system_prompt: Some("Be brief.".into()),
            updated_at: at(1),
        },
        ChatSessionEvent::ChatSessionUpdated {
            title: None,
            project_id: None,
            model: "gpt".into(),
            system_prompt: None,
            updated_at: at(1),
        },
        ChatSessionEvent::ChatSessionDeleted { deleted_at: at(2) },
        ChatSessionEvent::ExchangeFailed {
            reason: "upstream answered 529".into(),
            model: "claude-sonnet".into(),
            failed_at: at(3),
        },
    ];
    let messages =
        [Role::User, Role::Assistant, Role::System].map(|role| ChatSessionEvent::MessageAdded {
            message_id: Uuid::from_u128(7),
            role,
            content: "Lisbon.".into(),
            model: (role == Role::Assistant).then(|| "claude-sonnet".into()),
            usage: (role == Role::Assistant).then_some(Usage {
                prompt_tokens: 52,
                completion_tokens: 14,
                total_tokens: 66,
            }),
            created_at: at(4),
        });
    let tools = [
        (
            ToolType::Mcp,
            ToolStatus::Success,
            json!({"path": "a"}),
            Some(json!("x")),
            Some(84),
        ),
        (
            ToolType::Builtin,
            ToolStatus::Error,
            json!(null),
            Some(json!(null)),
            Some(0),
        ),
        (
            ToolType::Builtin,
            ToolStatus::Running,
            json!([1, "two"]),
            None,
            None,
        ),
    ]
    .map(|(tool_type, status, input, output, duration_ms)| {
        ChatSessionEvent::ToolExecutionRecorded {
            execution_id: Uuid::from_u128(8),
            tool_name: "read_file".into(),
            tool_type,
            input: input.into(),
            output: output.map(Into::into),
            status,
            duration_ms,
            recorded_at: at(5),
        }
    });
    for event in full_and_empty.iter().chain(&messages).chain(&tools) {
        check(event);
    }
}

#[test]
fn task_events_match_their_published_schemas() {
    for event in [
        TaskEvent::TaskCreated {
            owner_id: OWNER,
            title: "Buy milk".into(),
            description: Some("semi-skimmed".into()),
            project_id: Some(PROJECT),
            due_at: Some(at(86_400)),
            created_at: at(0),
        },
        TaskEvent::TaskUpdated {
            title: "Buy milk".into(),
            description: None,
            project_id: None,
            due_at: None,
            updated_at: at(1),
        },
        TaskEvent::TaskCompleted {
            completed_at: at(2),
        },
        TaskEvent::TaskReopened { reopened_at: at(3) },
        TaskEvent::TaskDeleted { deleted_at: at(4) },
        TaskEvent::TaskRestored { restored_at: at(5) },
        TaskEvent::TaskPurged { purged_at: at(6) },
    ] {
        check(&event);
    }
}

#[test]
fn the_checker_catches_a_payload_that_breaks_its_schema() {
    let schema = schema("MessageAdded");
    let payload = json!({
        "message_id": Uuid::nil(), "role": "robot", "content": "",
        "model": 3, "usage": {"prompt_tokens": -1, "completion_tokens": 1, "total_tokens": 1},
        "created_at": "2026-03-14T09:41:15Z", "extra": true
    });
    let problems = violations(&schema, &payload, "MessageAdded");
    for expected in [
        ".role:",
        ".content:",
        ".model:",
        ".usage.prompt_tokens:",
        ".extra:",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{expected} not reported in {problems:?}"
        );
    }
    let missing = violations(&schema, &json!({}), "MessageAdded");
    assert_eq!(missing.len(), 6, "{missing:?}");
}

#[test]
fn workspace_file_events_match_their_published_schemas() {
    use chronicle_aggregates::workspace_file::WorkspaceFileEvent;
    for event in [
        WorkspaceFileEvent::FileUploaded {
            owner_id: OWNER,
            name: "passwd.txt".into(),
            size: 1280,
            sha256: "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824".into(),
            content_type: "text/plain; charset=utf-8".into(),
            uploaded_at: at(0),
        },
        WorkspaceFileEvent::FileDeleted { deleted_at: at(1) },
    ] {
        check(&event);
    }
}
