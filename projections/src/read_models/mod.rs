//! The read models, one module each.

pub mod sessions;
pub mod tasks;
pub mod users;
