//! Property tests of every aggregate (issue 16): for any sequence of
//! commands, valid and invalid mixed,
//! (a) replaying the accepted events from `Default` gives the state handling reached,
//! (b) a snapshot after any event, stored and read back, plus the tail equals the full replay,
//! (c) every event reads back as itself from its stored JSON,
//! (d) `handle` never panics on any command in any state reached,
//! and every event matches its schema in `docs/schemas/`, and loading any stored JSON is total.
//! See `docs/testing.md`. `PROPTEST_CASES` sets the number of cases (128 by default).

mod gen;
mod harness;
mod schema;

mod task {
    use chronicle_aggregates::{Task, TaskCommand};

    use crate::gen::*;

    fn command() -> impl Strategy<Value = TaskCommand> {
        prop_oneof![
            2 => (actor(), text(200), opt(text(1000)), opt(id()), opt(at()), at()).prop_map(
                |(actor_id, title, description, project_id, due_at, at)| TaskCommand::Create {
                    actor_id, title, description, project_id, due_at, at,
                }
            ),
            1 => (actor(), text(200), opt(text(1000)), opt(id()), opt(at()), opt(any::<bool>()), at())
                .prop_map(|(actor_id, title, description, project_id, due_at, completed, at)| {
                    TaskCommand::Replace { actor_id, title, description, project_id, due_at, completed, at }
                }),
            1 => (actor(), opt(text(200)), opt(opt(text(1000))), opt(opt(id())), opt(opt(at())), opt(any::<bool>()), at())
                .prop_map(|(actor_id, title, description, project_id, due_at, completed, at)| {
                    TaskCommand::Patch { actor_id, title, description, project_id, due_at, completed, at }
                }),
            1 => (actor(), any::<bool>(), at())
                .prop_map(|(actor_id, completed, at)| TaskCommand::SetCompleted { actor_id, completed, at }),
            1 => (actor(), at()).prop_map(|(actor_id, at)| TaskCommand::Delete { actor_id, at }),
            1 => (actor(), at()).prop_map(|(actor_id, at)| TaskCommand::Restore { actor_id, at }),
            1 => (actor(), at()).prop_map(|(actor_id, at)| TaskCommand::Purge { actor_id, at }),
        ]
    }

    crate::aggregate_properties!(
        Task,
        proptest::collection::vec(command(), 0..24),
        (),
        [
            "TaskCreated",
            "TaskUpdated",
            "TaskCompleted",
            "TaskReopened",
            "TaskDeleted",
            "TaskRestored",
            "TaskPurged"
        ]
    );
}

mod project {
    use chronicle_aggregates::{Project, ProjectCommand};

    use crate::gen::*;

    fn command() -> impl Strategy<Value = ProjectCommand> {
        prop_oneof![
            1 => (actor(), text(100), opt(text(1000)), opt(json_object()), at()).prop_map(
                |(owner_id, name, description, settings, at)| ProjectCommand::CreateProject {
                    owner_id, name, description, settings, at,
                }
            ),
            2 => (actor(), text(100), opt(text(1000)), opt(json_object()), at()).prop_map(
                |(actor, name, description, settings, at)| ProjectCommand::UpdateProject {
                    actor, name, description, settings, at,
                }
            ),
            1 => (actor(), at()).prop_map(|(actor, at)| ProjectCommand::DeleteProject { actor, at }),
        ]
    }

    crate::aggregate_properties!(
        Project,
        proptest::collection::vec(command(), 0..16),
        (),
        ["ProjectCreated", "ProjectUpdated", "ProjectDeleted"]
    );
}

mod chat_session {
    use chronicle_aggregates::chat_session::{Role, ToolStatus, ToolType, Usage};
    use chronicle_aggregates::{ChatSession, ChatSessionCommand};

    use crate::gen::*;

    fn model() -> impl Strategy<Value = String> {
        prop_oneof![4 => "[a-z0-9.:/-]{1,20}", 1 => text(100)]
    }

    fn usage() -> impl Strategy<Value = Usage> {
        (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
            |(prompt_tokens, completion_tokens, total_tokens)| Usage {
                prompt_tokens,
                completion_tokens,
                total_tokens,
            },
        )
    }

    fn command() -> impl Strategy<Value = ChatSessionCommand> {
        let role = prop_oneof![Just(Role::User), Just(Role::Assistant), Just(Role::System)];
        let tool_type = prop_oneof![Just(ToolType::Mcp), Just(ToolType::Builtin)];
        let status = prop_oneof![
            Just(ToolStatus::Success),
            Just(ToolStatus::Error),
            Just(ToolStatus::Running)
        ];
        prop_oneof![
            2 => (actor(), opt(id()), opt(text(200)), model(), opt(text(20_000)), at()).prop_map(
                |(owner_id, project_id, title, model, system_prompt, at)| {
                    ChatSessionCommand::StartChatSession { owner_id, project_id, title, model, system_prompt, at }
                }
            ),
            1 => (actor(), opt(opt(text(200))), opt(opt(id())), opt(model()), opt(opt(text(20_000))), at()).prop_map(
                |(actor, title, project_id, model, system_prompt, at)| {
                    ChatSessionCommand::UpdateChatSession { actor, title, project_id, model, system_prompt, at }
                }
            ),
            1 => (actor(), at()).prop_map(|(actor, at)| ChatSessionCommand::DeleteChatSession { actor, at }),
            3 => (actor(), id(), role, text(1000), opt(model()), opt(usage()), at()).prop_map(
                |(actor, message_id, role, content, model, usage, at)| {
                    ChatSessionCommand::AddMessage { actor, message_id, role, content, model, usage, at }
                }
            ),
            1 => (actor(), text(2000), model(), at()).prop_map(|(actor, reason, model, at)| {
                ChatSessionCommand::RecordExchangeFailure { actor, reason, model, at }
            }),
            2 => (actor(), id(), text(200), tool_type, json(), opt(json()), status, opt(any::<u64>()), at())
                .prop_map(|(actor, execution_id, tool_name, tool_type, input, output, status, duration_ms, at)| {
                    ChatSessionCommand::RecordToolExecution {
                        actor, execution_id, tool_name, tool_type, input, output, status, duration_ms, at,
                    }
                }),
        ]
    }

    crate::aggregate_properties!(
        ChatSession,
        proptest::collection::vec(command(), 0..20),
        (),
        [
            "ChatSessionStarted",
            "ChatSessionUpdated",
            "ChatSessionDeleted",
            "MessageAdded",
            "ExchangeFailed",
            "ToolExecutionRecorded"
        ]
    );
}

mod user {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use chronicle_aggregates::user::PhotoInfo;
    use chronicle_aggregates::{ServiceFailure, User, UserCommand, UserServices};
    use uuid::Uuid;

    use crate::gen::*;

    /// Passwords kept in clear; storing `fail-store…` fails, and a
    /// credential whose password contains `rehash` asks to be stored again.
    #[derive(Default)]
    struct Passwords {
        stored: Mutex<HashMap<Uuid, String>>,
    }

    #[async_trait]
    impl UserServices for Passwords {
        async fn store_password(&self, password: &str) -> Result<Uuid, ServiceFailure> {
            if password.starts_with("fail-store") {
                return Err(ServiceFailure("store down".into()));
            }
            let mut stored = self.stored.lock().unwrap();
            let id = Uuid::from_u128(stored.len() as u128 + 1);
            stored.insert(id, password.to_owned());
            Ok(id)
        }

        async fn verify_password(&self, id: Uuid, password: &str) -> Result<bool, ServiceFailure> {
            Ok(self.stored.lock().unwrap().get(&id).map(String::as_str) == Some(password))
        }

        async fn needs_rehash(&self, id: Uuid) -> Result<bool, ServiceFailure> {
            Ok(self
                .stored
                .lock()
                .unwrap()
                .get(&id)
                .is_some_and(|password| password.contains("rehash")))
        }
    }

    pub fn services() -> Arc<dyn UserServices> {
        Arc::new(Passwords::default())
    }

    fn password() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => Just("correct horse".to_owned()),
            2 => Just("wrong password".to_owned()),
            1 => Just("rehash me please".to_owned()),
            1 => Just("fail-store!".to_owned()),
            1 => Just("short".to_owned()),
            1 => text(128),
        ]
    }

    fn photo() -> impl Strategy<Value = PhotoInfo> {
        (
            prop_oneof![Just("image/png"), Just("image/jpeg")],
            0u64..10_000_000,
            "[0-9a-f]{64}",
        )
            .prop_map(|(content_type, size_bytes, sha256)| PhotoInfo {
                content_type: content_type.to_owned(),
                size_bytes,
                sha256,
            })
    }

    fn command() -> impl Strategy<Value = UserCommand> {
        let email = prop_oneof![
            4 => Just("Ada@Example.org ".to_owned()),
            1 => text(254),
        ];
        let username = || prop_oneof![3 => "[a-z][a-z0-9_]{2,10}", 1 => text(32)];
        let role = prop_oneof![
            Just("user".to_owned()),
            Just("admin".to_owned()),
            Just("auditor".to_owned()),
            Just("analyst".to_owned()),
            Just("developer".to_owned()),
            Just("root".to_owned()),
        ];
        prop_oneof![
            2 => (email, opt(username()), opt(text(100)), password(), at()).prop_map(
                |(email, username, name, password, at)| UserCommand::Register { email, username, name, password, at }
            ),
            3 => (password(), at()).prop_map(|(password, at)| UserCommand::LogIn { password, at }),
            1 => at().prop_map(|at| UserCommand::Unlock { at }),
            1 => (password(), password(), at()).prop_map(|(current_password, new_password, at)| {
                UserCommand::ChangePassword { current_password, new_password, at }
            }),
            1 => (proptest::collection::vec(role, 0..4), at())
                .prop_map(|(roles, at)| UserCommand::SetRoles { roles, at }),
            1 => (opt(opt(username())), opt(opt(text(100))), opt(json_object()), at()).prop_map(
                |(username, name, preferences, at)| UserCommand::UpdateProfile { username, name, preferences, at }
            ),
            1 => (id(), at()).prop_map(|(key_id, at)| UserCommand::ResetApiKey { key_id, at }),
            1 => (opt(photo()), at()).prop_map(|(photo, at)| UserCommand::SetPhoto { photo, at }),
            1 => at().prop_map(|at| UserCommand::Deactivate { at }),
        ]
    }

    crate::aggregate_properties!(
        User,
        proptest::collection::vec(command(), 0..24),
        services(),
        [
            "UserRegistered",
            "UserLoggedIn",
            "LoginFailed",
            "AccountLocked",
            "AccountUnlocked",
            "PasswordChanged",
            "PasswordRehashed",
            "RolesChanged",
            "ProfileUpdated",
            "ApiKeyReset",
            "ProfilePhotoChanged",
            "UserDeactivated"
        ]
    );
}

mod auth_session {
    use chronicle_aggregates::auth_session::{AuthSession, AuthSessionCommand};

    use crate::gen::*;

    fn command() -> impl Strategy<Value = AuthSessionCommand> {
        prop_oneof![
            1 => (id(), at()).prop_map(|(user_id, at)| AuthSessionCommand::Start { user_id, at }),
            4 => (prop_oneof![4 => 0u32..6, 1 => any::<u32>()], at())
                .prop_map(|(generation, at)| AuthSessionCommand::Refresh { generation, at }),
            1 => (text(200), at()).prop_map(|(reason, at)| AuthSessionCommand::Revoke { reason, at }),
        ]
    }

    crate::aggregate_properties!(
        AuthSession,
        proptest::collection::vec(command(), 0..16),
        (),
        [
            "SessionStarted",
            "SessionRefreshed",
            "RefreshTokenReused",
            "SessionRevoked"
        ]
    );
}

mod mcp_server {
    use std::collections::BTreeMap;

    use chronicle_aggregates::mcp_server::{
        McpServerInput, McpTool, McpTransport, SealedSecret, SecretInput,
    };
    use chronicle_aggregates::{McpServer, McpServerCommand};

    use crate::gen::*;

    fn secrets(header: bool) -> BoxedStrategy<BTreeMap<String, SecretInput>> {
        let key = if header {
            prop_oneof![4 => Just("X-Api-Key".to_owned()), 1 => Just("Host".to_owned()), 1 => text(20)].boxed()
        } else {
            prop_oneof![4 => Just("API_KEY".to_owned()), 1 => Just("1BAD".to_owned()), 1 => text(20)].boxed()
        };
        let value = prop_oneof![
            4 => "[a-zA-Z0-9]{1,12}".prop_map(|v| SecretInput::Sealed(SealedSecret::new(format!("sealed:{v}")))),
            2 => Just(SecretInput::Keep),
            1 => Just(SecretInput::Sealed(SealedSecret::new("clear value".to_owned()))),
        ];
        proptest::collection::btree_map(key, value, 0..3).boxed()
    }

    fn input() -> BoxedStrategy<McpServerInput> {
        let stdio = (
            prop_oneof![4 => "[a-z][a-z0-9_-]{0,10}", 1 => text(64)],
            opt(prop_oneof![4 => Just("npx".to_owned()), 1 => text(1024)]),
            proptest::collection::vec(text(40), 0..3),
            secrets(false),
            opt(id()),
        )
            .prop_map(|(name, command, args, env, project_id)| McpServerInput {
                name,
                transport: McpTransport::Stdio,
                command,
                args,
                env,
                url: None,
                headers: BTreeMap::new(),
                project_id,
            });
        let remote = (
            prop_oneof![4 => "[a-z][a-z0-9_-]{0,10}", 1 => text(64)],
            prop_oneof![Just(McpTransport::Http), Just(McpTransport::Sse)],
            opt(prop_oneof![
                4 => Just("https://mcp.example.org/v1".to_owned()),
                1 => Just("ftp://nope".to_owned()),
                1 => text(100)
            ]),
            secrets(true),
            opt(id()),
        )
            .prop_map(
                |(name, transport, url, headers, project_id)| McpServerInput {
                    name,
                    transport,
                    command: None,
                    args: Vec::new(),
                    env: BTreeMap::new(),
                    url,
                    headers,
                    project_id,
                },
            );
        // Any mix of fields, mostly wrong for the transport.
        let mixed = (
            text(64),
            prop_oneof![
                Just(McpTransport::Stdio),
                Just(McpTransport::Http),
                Just(McpTransport::Sse)
            ],
            opt(text(100)),
            proptest::collection::vec(text(20), 0..3),
            secrets(false),
            opt(text(100)),
            secrets(true),
        )
            .prop_map(|(name, transport, command, args, env, url, headers)| {
                McpServerInput {
                    name,
                    transport,
                    command,
                    args,
                    env,
                    url,
                    headers,
                    project_id: None,
                }
            });
        prop_oneof![3 => stdio.boxed(), 3 => remote.boxed(), 1 => mixed.boxed()].boxed()
    }

    fn tool() -> BoxedStrategy<McpTool> {
        (
            prop_oneof![4 => "[a-z_]{1,12}", 1 => text(200)],
            opt(text(100)),
            json_object(),
        )
            .prop_map(|(name, description, input_schema)| McpTool {
                name,
                description,
                input_schema,
            })
            .boxed()
    }

    fn command() -> impl Strategy<Value = McpServerCommand> {
        prop_oneof![
            2 => (actor(), input(), any::<bool>(), at()).prop_map(|(owner_id, input, enabled, at)| {
                McpServerCommand::Configure { owner_id, input, enabled, at }
            }),
            2 => (actor(), input(), opt(any::<bool>()), at()).prop_map(|(actor, input, enabled, at)| {
                McpServerCommand::Update { actor, input, enabled, at }
            }),
            1 => (actor(), at()).prop_map(|(actor, at)| McpServerCommand::Enable { actor, at }),
            1 => (actor(), at()).prop_map(|(actor, at)| McpServerCommand::Disable { actor, at }),
            2 => (actor(), proptest::collection::vec(tool(), 0..4), text(20), opt(text(50)), opt(text(50)), at())
                .prop_map(|(actor, tools, protocol_version, server_name, server_version, at)| {
                    McpServerCommand::RecordDiscovery { actor, tools, protocol_version, server_name, server_version, at }
                }),
            1 => (actor(), text(2000), at()).prop_map(|(actor, reason, at)| {
                McpServerCommand::RecordDiscoveryFailure { actor, reason, at }
            }),
            1 => (actor(), at()).prop_map(|(actor, at)| McpServerCommand::Remove { actor, at }),
        ]
    }

    crate::aggregate_properties!(
        McpServer,
        proptest::collection::vec(command(), 0..16),
        (),
        [
            "McpServerConfigured",
            "McpServerUpdated",
            "McpServerEnabled",
            "McpServerDisabled",
            "McpToolsDiscovered",
            "McpDiscoveryFailed",
            "McpServerRemoved"
        ]
    );
}

mod notification_inbox {
    use chronicle_aggregates::notification_inbox::{NotificationInbox, NotificationInboxCommand};
    use uuid::Uuid;

    use crate::gen::*;

    fn ids() -> impl Strategy<Value = Vec<Uuid>> {
        prop_oneof![
            4 => proptest::collection::vec(id(), 0..5),
            1 => (90u128..110).prop_map(|n| (0..n).map(Uuid::from_u128).collect()),
        ]
    }

    fn command() -> impl Strategy<Value = NotificationInboxCommand> {
        prop_oneof![
            (ids(), at()).prop_map(|(ids, at)| NotificationInboxCommand::MarkRead { ids, at }),
            (ids(), at()).prop_map(|(ids, at)| NotificationInboxCommand::MarkUnread { ids, at }),
            (at(), at())
                .prop_map(|(up_to, at)| NotificationInboxCommand::MarkAllRead { up_to, at }),
            (ids(), at()).prop_map(|(ids, at)| NotificationInboxCommand::Delete { ids, at }),
        ]
    }

    crate::aggregate_properties!(
        NotificationInbox,
        proptest::collection::vec(command(), 0..16),
        (),
        [
            "NotificationsRead",
            "NotificationsUnread",
            "AllNotificationsRead",
            "NotificationsDeleted"
        ]
    );
}

mod audit_query {
    use chronicle_aggregates::audit_query::{AuditQuery, AuditQueryCommand};

    use crate::gen::*;

    fn command() -> impl Strategy<Value = AuditQueryCommand> {
        (
            opt(id()),
            text(200),
            prop_oneof![
                4 => proptest::collection::btree_map(text(500), text(500), 0..4),
                1 => proptest::collection::btree_map("[a-z]{1,8}", Just("v".to_owned()), 30..36),
            ],
            at(),
        )
            .prop_map(
                |(auditor_id, route, filters, at)| AuditQueryCommand::Record {
                    auditor_id,
                    route,
                    filters,
                    at,
                },
            )
    }

    crate::aggregate_properties!(
        AuditQuery,
        proptest::collection::vec(command(), 0..4),
        (),
        ["AuditQueried"]
    );
}
