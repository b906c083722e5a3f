//! Chronicle's aggregates: the commands, events, errors and business rules
//! of the write side, as pure domain logic.
//!
//! Nothing here talks to a database, a message broker or HTTP; the only
//! outside capability, password storage, is injected through
//! [`user::UserServices`]. That keeps every rule testable with
//! `cqrs_es::test::TestFramework` and replayable from the event log.

#![forbid(unsafe_code)]

pub mod audit_query;
pub mod auth_session;
pub mod chat_session;
pub mod mcp_server;
pub mod notification_inbox;
pub mod personal;
pub mod project;
pub mod task;
pub mod user;
pub mod validation;
pub mod workspace_file;

pub use chat_session::{ChatSession, ChatSessionCommand, ChatSessionError, ChatSessionEvent};
pub use mcp_server::{McpServer, McpServerCommand, McpServerError, McpServerEvent};
pub use personal::{Personal, PersonalJson, PersonalText};
pub use project::{Project, ProjectCommand, ProjectError, ProjectEvent};
pub use task::{Task, TaskCommand, TaskError, TaskEvent};
pub use user::{
    user_id_for_email, ServiceFailure, User, UserCommand, UserError, UserEvent, UserServices,
    USER_NAMESPACE,
};
pub use validation::FieldError;
