//! The read models, one module each.

pub mod analytics;
pub mod auth_sessions;
pub mod chat_sessions;
pub mod files;
pub mod mcp_servers;
pub mod notifications;
pub mod projects;
pub mod tasks;
pub mod users;
