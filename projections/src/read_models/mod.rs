//! The read models, one module each.

pub mod auth_sessions;
pub mod tasks;
pub mod users;
